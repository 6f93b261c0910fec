"""Benchmark results: mean ± std over seeds, the Markdown tables and the mIoU-vs-labels plot."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from dreamteacher.benchmarking.config import EQUAL_COMPUTE

# the protocol of rows that segment with the teacher's features (no backbone to fine-tune or
# freeze): shown in every protocol's table and panel
TEACHER_SIDE_PROTOCOL = "teacher-side"


def aggregate(runs: list[dict[str, Any]]) -> dict[tuple[str, str, int], dict[str, float]]:
    """{(method, protocol, labels): {mean, std, n}} over seeds; std is the sample standard
    deviation (n - 1), 0 for a single seed."""
    groups: dict[tuple[str, str, int], list[float]] = {}
    for r in runs:
        groups.setdefault((r["method"], r["protocol"], int(r["labels"])), []).append(r["miou"])
    out = {}
    for k, v in groups.items():
        mean = sum(v) / len(v)
        var = sum((x - mean) ** 2 for x in v) / (len(v) - 1) if len(v) > 1 else 0.0
        out[k] = {"mean": mean, "std": math.sqrt(var), "n": len(v)}
    return out


def _order(values, preferred):
    return [m for m in preferred if m in values] + sorted(set(values) - set(preferred))


def _protocols(agg) -> list[str]:
    """The backbone protocols; teacher-side rows alone make a table of their own."""
    ps = {k[1] for k in agg} - {TEACHER_SIDE_PROTOCOL}
    return _order(ps, ["finetune", "frozen"]) or ([TEACHER_SIDE_PROTOCOL] if agg else [])


def _cell(agg, m: str, protocol: str, n: int) -> dict[str, float] | None:
    return agg.get((m, protocol, n)) or agg.get((m, TEACHER_SIDE_PROTOCOL, n))


def results_table(
    runs: list[dict[str, Any]], methods: list[str] | None = None, split: str = "test"
) -> str:
    """One Markdown table per protocol: a row per method, a column per N, `mean ± std`; the
    best mean of each column in bold. With SSL rows at equal compute (`<method>@compute`) the
    tables come twice: at equal epochs, and at equal compute (those rows in place of the SSL
    rows at equal epochs)."""
    compute = {r["method"] for r in runs if r["method"].endswith(EQUAL_COMPUTE)}
    if not compute:
        return _tables(runs, methods or [], split, "")
    ssl = {m.removesuffix(EQUAL_COMPUTE) for m in compute}
    order = [x for m in methods or [] for x in (m, m + EQUAL_COMPUTE)]
    epochs = [r for r in runs if r["method"] not in compute]
    at_compute = [r for r in runs if r["method"] not in ssl]
    return _tables(epochs, order, split, ", equal epochs") + _tables(
        at_compute, order, split, ", equal compute"
    )


def _over(agg: dict) -> str:
    seeds = {c["n"] for c in agg.values()}
    return "one seed" if seeds == {1} else "mean ± std over seeds"


def _tables(runs: list[dict[str, Any]], methods: list[str], split: str, budget: str) -> str:
    agg = aggregate(runs)
    methods = _order({k[0] for k in agg}, methods)
    side = sorted({k[0] for k in agg if k[1] == TEACHER_SIDE_PROTOCOL})
    lines = []
    for protocol in _protocols(agg):
        ns = sorted({k[2] for k in agg if k[1] in (protocol, TEACHER_SIDE_PROTOCOL)})
        best = {n: max(c["mean"] for m in methods if (c := _cell(agg, m, protocol, n))) for n in ns}
        lines += [
            f"**{protocol}**{budget} ({split} mIoU %, {_over(agg)})",
            "",
            "| method | " + " | ".join(f"N = {n}" for n in ns) + " |",
            "|---|" + "---|" * len(ns),
        ]
        for m in methods:
            cells = []
            for n in ns:
                a = _cell(agg, m, protocol, n)
                if a is None:
                    cells.append("-")
                    continue
                # one seed has no spread to show
                s = f"{a['mean']:.1f}" + (f" ± {a['std']:.1f}" if a["n"] > 1 else "")
                cells.append(f"**{s}**" if a["mean"] == best[n] else s)
            lines.append(f"| {m} | " + " | ".join(cells) + " |")
        lines.append("")
    if side:
        lines += [
            f"{', '.join(side)}: segmenters on the teacher's features (teacher-side), no "
            "backbone; the same numbers appear under every protocol.",
            "",
        ]
    return "\n".join(lines) + ("\n" if budget else "")


def cost_table(costs: list[dict[str, Any]]) -> str:
    lines = ["| stage | wall time (s) | images seen |", "|---|---|---|"]
    for c in costs:
        lines.append(f"| {c['stage']} | {c['wall_s']:.0f} | {c['images_seen']:,} |")
    return "\n".join(lines)


def plot(
    runs: list[dict[str, Any]],
    path: str | Path,
    methods: list[str] | None = None,
    split: str = "test",
) -> Path:
    """miou_vs_labels.png: one panel per protocol, one line per method with std error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    agg = aggregate(runs)
    protocols = _protocols(agg)
    methods = _order({k[0] for k in agg}, methods or [])
    fig, axes = plt.subplots(1, len(protocols), figsize=(5.5 * len(protocols), 4), squeeze=False)
    for ax, protocol in zip(axes[0], protocols):
        for m in methods:
            ns = sorted(
                k[2] for k in agg if k[0] == m and k[1] in (protocol, TEACHER_SIDE_PROTOCOL)
            )
            if not ns:
                continue
            ys = [_cell(agg, m, protocol, n)["mean"] for n in ns]
            es = [_cell(agg, m, protocol, n)["std"] for n in ns]
            style = {"linewidth": 2.5, "zorder": 3} if m == "dreamteacher" else {}
            if any(k == (m, TEACHER_SIDE_PROTOCOL, ns[0]) for k in agg):
                style["linestyle"] = "--"  # teacher-side
            ax.errorbar(ns, ys, yerr=es, marker="o", capsize=3, label=m, **style)
        ax.set_xscale("log")
        ns_all = sorted({k[2] for k in agg if k[1] in (protocol, TEACHER_SIDE_PROTOCOL)})
        ax.set_xticks(ns_all, [str(n) for n in ns_all])
        ax.minorticks_off()
        ax.set_xlabel("labelled training images (N)")
        ax.set_ylabel(f"{split} mIoU (%)")
        ax.set_title(protocol)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
