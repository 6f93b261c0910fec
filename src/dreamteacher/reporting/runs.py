"""`dreamteacher report`: one HTML page for a run folder (train-teacher, pretrain,
pretrain-baseline, finetune, train-interpreter, train-ddpm-seg) or a benchmark folder, built
from the folder's files alone."""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from dreamteacher.errors import UserError
from dreamteacher.reporting import figures
from dreamteacher.reporting.html import Page, esc, markdown_html

REPORT = "report.html"  # the file name in a run or benchmark folder
FEATURES = "features.npz"  # pretrain: PCA colours of teacher and student maps (engine/pretrain.py)
EXAMPLES = "examples.npz"  # segmentation: images, ground truth, predictions (engine/supervised.py)
SAMPLES = "samples"  # train-teacher: samples/step_*.png, a grid at every checkpoint

TERMS = ("loss", "mse", "at", "ld", "ce", "dice", "g", "d", "r1")  # the summed terms a loop logs
PER_LEVEL = re.compile(r"^(mse|at)_l(\d+)$")


def read_records(path: Path) -> list[dict[str, Any]]:
    """metrics.jsonl's records (unreadable lines skipped)."""
    out = []
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return out


def _json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def _config(folder: Path) -> dict[str, Any]:
    try:
        return yaml.safe_load((folder / "config.yaml").read_text()) or {}
    except (OSError, yaml.YAMLError):
        return {}


def kind(folder: Path) -> str:
    """What made `folder`: benchmark, train-teacher, pretrain, pretrain-baseline, finetune,
    train-interpreter, train-ddpm-seg, or run (any other folder with a config or a log)."""
    cfg = _config(folder)
    if isinstance((_json(folder / "results.json") or {}).get("runs"), list):
        return "benchmark"
    if (folder / "teacher.json").exists():
        return "train-teacher"
    if (folder / "metrics.json").exists():
        if (folder / "interpreter.pt").exists():
            return "train-interpreter"
        return "train-ddpm-seg" if "ensemble" in cfg else "finetune"
    if "mode" in cfg and "teacher" in cfg:
        return "pretrain"
    if "method" in cfg and "temperature" in cfg:
        return "pretrain-baseline"
    if cfg or (folder / "metrics.jsonl").exists():
        return "run"
    raise UserError(
        f"{folder} is not a run or benchmark folder (no config.yaml, metrics.jsonl or "
        "results.json); pass the --out folder of a dreamteacher command"
    )


def wall_time(records: list[dict[str, Any]]) -> float:
    """Seconds of training in the log: `time` restarts at 0 when a run resumes, so each
    invocation's last time is added up."""
    total, last = 0.0, 0.0
    for r in records:
        t = float(r.get("time", 0.0))
        if t < last:
            total += last
        last = t
    return total + last


def throughput(records: list[dict[str, Any]]) -> tuple[list[float], list[float]]:
    """(steps, images per second) between consecutive records of one invocation."""
    xs, ys = [], []
    for a, b in zip(records, records[1:]):
        dt = float(b.get("time", 0)) - float(a.get("time", 0))
        di = float(b.get("images_seen", 0)) - float(a.get("images_seen", 0))
        if dt > 0 and di > 0:
            xs.append(b["step"])
            ys.append(di / dt)
    return xs, ys


def _series(records, keys) -> dict[str, tuple[list[float], list[float]]]:
    out = {}
    for k in keys:
        pts = [(r["step"], r[k]) for r in records if isinstance(r.get(k), int | float)]
        if pts and all(math.isfinite(v) for _, v in pts):
            out[k] = ([p[0] for p in pts], [p[1] for p in pts])
    return out


def training_section(page: Page, folder: Path) -> list[dict[str, Any]]:
    """Loss terms, per-level terms, learning rate and throughput over steps; wall time."""
    records = [r for r in read_records(folder / "metrics.jsonl") if "step" in r]
    page.heading("Training")
    if not records:
        page.para("No metrics.jsonl records.", muted=True)
        return records
    last = records[-1]
    page.table(
        ["steps", "images seen", "wall time (s)", "last loss"],
        [
            [
                last["step"],
                f"{int(last.get('images_seen', 0)):,}",
                f"{wall_time(records):.0f}",
                f"{last.get('loss', float('nan')):.4g}",
            ]
        ],
    )
    charts = []
    present = {k for r in records for k in r}  # (a lazy term, e.g. a GAN's R1, now and then)
    terms = _series(records, [k for k in TERMS if k in present])
    if terms:
        charts.append((figures.lines(terms, "step", "loss", log_y=True), "loss terms"))
    levels = sorted(
        {k for r in records for k in r if PER_LEVEL.match(k)},
        key=lambda k: (k.split("_")[0], int(k.split("_l")[1])),
    )
    if levels:
        png = figures.lines(_series(records, levels), "step", "loss", log_y=True)
        charts.append((png, "per-level terms (l0 = the finest level)"))
    lr = _series(records, ["lr"])
    if lr:
        charts.append((figures.lines(lr, "step", "learning rate"), "learning rate"))
    xs, ys = throughput(records)
    if xs:
        png = figures.lines({"images/s": (xs, ys)}, "step", "images per second")
        charts.append((png, "throughput (the time of checkpoints and sample grids included)"))
    page.images(charts)
    return records


def config_section(page: Page, folder: Path) -> None:
    cfg = _config(folder)
    if cfg:
        rows = "".join(f"<tr><td>{esc(k)}</td><td>{esc(v)}</td></tr>" for k, v in cfg.items())
        page.raw(f"<details><summary>config.yaml</summary><table>{rows}</table></details>")


def teacher_report(page: Page, folder: Path) -> None:
    info = _json(folder / "teacher.json") or {}
    page.heading("Teacher")
    rows = [[k, v] for k, v in info.items() if k not in ("levels",)]
    page.table([], rows)
    if info.get("levels"):
        lv = info["levels"]
        page.table(["stride", "channels"], list(zip(lv["strides"], lv["channels"], strict=True)))
    records = training_section(page, folder)
    page.para(
        f"Training cost: {wall_time(records):.0f} s of training steps for "
        f"{int(records[-1].get('images_seen', 0)) if records else 0:,} images seen "
        "(checkpoints and their sample grids included; start-up and the final grid not)."
    )
    page.heading("Samples over training")
    grids = sorted((folder / SAMPLES).glob("step_*.png")) if (folder / SAMPLES).exists() else []
    shown = [(g.read_bytes(), f"step {int(g.stem.split('_')[1])}") for g in grids]
    if (folder / "samples.png").exists():
        shown.append(((folder / "samples.png").read_bytes(), "final"))
    page.images(shown, pixels=True)
    page.para("EMA weights, the same noise for every grid.", muted=True)


def pretrain_report(page: Page, folder: Path, baseline: bool) -> None:
    cfg = _config(folder)
    page.heading("Setting")
    keys = (
        ("method", "backbone", "image_size", "epochs", "batch_size", "lr")
        if baseline
        else (
            "teacher",
            "mode",
            "backbone",
            "t",
            "strides",
            "image_size",
            "epochs",
            "lambda_at",
            "at_source",
            "interpreter",
            "feature_cache",
        )
    )
    page.table([], [[k, cfg[k]] for k in keys if cfg.get(k) is not None])
    training_section(page, folder)
    feats = folder / FEATURES
    if feats.exists():
        with np.load(feats) as z:
            strides = [int(s) for s in z["strides"]]
            levels = [
                {"stride": s, "teacher": z[f"teacher_{i}"], "student": z[f"student_{i}"]}
                for i, s in enumerate(strides)
            ]
            png = figures.feature_pca(z["images"], levels)
        page.heading("Teacher and student features")
        page.image(
            png,
            "first three principal components of the teacher's whitened maps "
            "(the regression targets) and of the student's predictions, projected on "
            "the same components, as RGB",
        )


def segmentation_report(page: Page, folder: Path) -> None:
    m = _json(folder / "metrics.json") or {}
    page.heading("Result")
    page.table(
        ["mIoU (%)", "pixel accuracy (%)", "split", "images scored", "labelled images", "seed"],
        [
            [
                f"{m.get('miou', float('nan')):.1f}",
                f"{m.get('pixel_accuracy', float('nan')):.1f}",
                m.get("split"),
                m.get("eval_images"),
                m.get("labels"),
                m.get("seed"),
            ]
        ],
    )
    per_class = m.get("per_class_iou") or {}
    if per_class:
        page.image(figures.iou_bars(per_class), "IoU per class")
    if m.get("confusion"):
        page.image(
            figures.confusion(np.array(m["confusion"]), list(per_class)),
            "confusion matrix, each true class's row normalised",
        )
    ex = folder / EXAMPLES
    if ex.exists():
        with np.load(ex) as z:
            shown = len(z["images"])
            png = figures.segmentation_examples(
                z["images"], z["truth"], z["pred"], list(per_class), int(z["ignore_index"])
            )
        page.image(
            png,
            f"the first {shown} images of the {m.get('split')} split: ground truth and prediction",
        )
    training_section(page, folder)


def _link(target: Path, start: Path, text: str) -> str:
    if not target.exists():
        return "-"
    return f'<a href="{esc(os.path.relpath(target, start))}">{esc(text)}</a>'


def _pretraining_cell(eval_cell: Path) -> Path | None:
    """The pretraining cell an evaluation cell read its backbone from (by the key in its
    settings), when it lies beside it."""
    key = ((_json(eval_cell / "cell.json") or {}).get("params") or {}).get("weights")
    if not isinstance(key, str) or not re.fullmatch(r"[0-9a-f]{10}", key):
        return None
    found = sorted(eval_cell.parent.glob(f"*-{key}"))
    return found[0] if found else None


def benchmark_report(page: Page, folder: Path, at: Path) -> None:
    """The plot, results.md's tables (equal epochs, equal compute, cost), and a row per
    evaluation linking to the reports of its cells: the evaluation, the pretraining and the
    teacher it distilled (a cell's report is built when missing)."""
    r = _json(folder / "results.json") or {}
    if (folder / "miou_vs_labels.png").exists():
        page.image((folder / "miou_vs_labels.png").read_bytes(), "mIoU against labelled images")
    if (folder / "results.md").exists():
        page.raw(markdown_html((folder / "results.md").read_text()))
    runs = r.get("runs", [])
    if not runs:
        return
    page.heading("Cells")
    rows = []
    for run in runs:
        cell = Path(run["cell"])
        pre = _pretraining_cell(cell)
        teacher = _config(pre / "run").get("teacher") if pre else None
        trained = teacher and (Path(teacher) / "teacher.json").exists()  # not a given folder
        reports = [cell / "run", pre / "run" if pre else None, Path(teacher) if trained else None]
        for folder_ in reports:
            if folder_ is not None and folder_.is_dir() and not (folder_ / REPORT).exists():
                write_report(folder_)
        ev, pr, te = (f / REPORT if f is not None else None for f in reports)
        rows.append(
            [
                esc(run["method"]),
                esc(run["protocol"]),
                run["labels"],
                run["seed"],
                f"{run['miou']:.1f}",
                _link(ev, at, "evaluation"),
                _link(pr, at, "pretraining") if pr else "-",
                _link(te, at, "teacher") if te else "-",
            ]
        )
    header = ["method", "protocol", "N", "seed", "mIoU", "evaluation", "pretraining", "teacher"]
    page.table(header, rows, raw=True)


def build_report(folder: str | Path, at: str | Path | None = None) -> Page:
    """The report page of a run or benchmark folder; `at`: the folder the HTML will be written
    in (for the relative links of a benchmark's cells)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"{folder} is not a folder; pass a run or benchmark --out folder")
    k = kind(folder)
    page = Page(f"{k}: {folder.name}")
    page.para(f"{folder.resolve()}", muted=True)
    if k == "benchmark":
        benchmark_report(page, folder, Path(at or folder).resolve())
    elif k == "train-teacher":
        teacher_report(page, folder)
    elif k in ("pretrain", "pretrain-baseline"):
        pretrain_report(page, folder, baseline=k == "pretrain-baseline")
    elif k in ("finetune", "train-interpreter", "train-ddpm-seg"):
        segmentation_report(page, folder)
    else:
        training_section(page, folder)
    config_section(page, folder)
    return page


def write_report(folder: str | Path, out: str | Path | None = None) -> Path:
    """Build the report of `folder` and write it to `out` (default FOLDER/report.html)."""
    out = Path(out) if out else Path(folder) / REPORT
    return build_report(folder, at=out.parent).write(out)
