"""`dreamteacher demo`: every stage on procedurally generated scenes, DreamTeacher vs scratch.

Sized to finish in about 10 minutes on 2 CPU cores. Every stage's folder keeps its resolved
config.yaml and metrics.jsonl; the teacher's sample grid is teacher/samples.png; the summary is
results.json / results.md.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dreamteacher.config import build_config


@dataclass
class DemoConfig:
    """`demo`: its settings, checked like every command's (`key=value` overrides)."""

    out: str = "runs/demo"
    image_size: list[int] = field(default_factory=lambda: [48, 48])
    num_images: int = 600  # 75 % train (unlabeled pool), 25 % test
    labels: int = 20
    backbone: str = "resnet18"
    teacher_steps: int = 700
    teacher_batch_size: int = 16
    teacher_lr: float = 1e-3  # 9 mIoU above 2e-4 at this budget (docs/benchmarks.md, demo)
    pretrain_epochs: int = 20
    finetune_steps: int = 300
    batch_size: int = 16
    seed: int = 0
    device: str = "auto"


def demo(
    out: str | None = None,
    *,
    config: str | None = None,
    overrides: list[str] | dict[str, Any] | None = None,
    **kwargs: Any,
) -> dict:
    """The whole pipeline on procedurally generated scenes; returns results.json's content."""
    return run_demo(build_config(DemoConfig, config, overrides, out=out, **kwargs))


def run_demo(s: DemoConfig) -> dict:
    import torch  # late: the command line's help and argument checks import no torch

    from dreamteacher import api
    from dreamteacher.data.synthetic import make_scenes
    from dreamteacher.runfiles import atomic_json

    out = Path(s.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    times: dict[str, float] = {}
    common = {"seed": s.seed, "device": s.device, "resume": True}

    t = time.time()
    data = make_scenes(out / "data", n=s.num_images, image_size=s.image_size, seed=s.seed)
    times["make-data"] = time.time() - t

    t = time.time()
    teacher = api.train_teacher(
        data=str(data),
        out=str(out / "teacher"),
        splits=["train", "val"],  # every image but the test split's
        image_size=s.image_size,
        preset="tiny",
        steps=s.teacher_steps,
        batch_size=s.teacher_batch_size,
        lr=s.teacher_lr,
        save_every=max(1, s.teacher_steps // 4),
        warmup_steps=50,
        **common,
    )
    times["train-teacher"] = time.time() - t

    t = time.time()
    pre = api.pretrain(
        data=str(data),
        teacher=str(teacher),
        out=str(out / "pretrain"),
        splits=["train", "val"],  # every image but the test split's
        backbone=s.backbone,
        epochs=s.pretrain_epochs,
        batch_size=s.batch_size,
        warmup_epochs=1,
        save_every=200,
        **common,
    )
    times["pretrain"] = time.time() - t

    t = time.time()
    bb = api.export(pre, out / "backbone")
    times["export"] = time.time() - t

    results: dict[str, Any] = {"settings": dataclasses.asdict(s), "runs": {}}
    for name, weights in (("dreamteacher", str(bb)), ("scratch", "scratch")):
        t = time.time()
        m = api.finetune(
            data=str(data),
            out=str(out / f"finetune_{name}"),
            backbone=s.backbone,
            weights=weights,
            labels=s.labels,
            image_size=s.image_size,
            steps=s.finetune_steps,
            batch_size=s.batch_size,
            warmup_steps=20,
            save_every=s.finetune_steps,
            **common,
        )
        times[f"finetune-{name}"] = time.time() - t
        results["runs"][name] = {"miou": m["miou"], "per_class_iou": m["per_class_iou"]}
    results["times_s"] = times
    results["total_s"] = sum(times.values())
    atomic_json(results, out / "results.json")
    table = format_results(results)
    (out / "results.md").write_text(table + "\n")
    print("\n" + table)
    runs = ["teacher", "pretrain", "finetune_dreamteacher", "finetune_scratch"]
    print("\nreports: " + ", ".join(str(out / r / "report.html") for r in runs))
    return results


def format_results(r: dict) -> str:
    s = r["settings"]
    lines = [
        f"DreamTeacher demo: {s['backbone']} at {s['image_size'][0]}x{s['image_size'][1]}, "
        f"{s['labels']} labelled images",
        "",
        "| backbone init | test mIoU (%) |",
        "|---|---|",
    ]
    for name, v in r["runs"].items():
        lines.append(f"| {name} | {v['miou']:.1f} |")
    lines += ["", "| stage | time (s) |", "|---|---|"]
    lines += [f"| {k} | {v:.0f} |" for k, v in r["times_s"].items()]
    lines.append(f"| total | {r['total_s']:.0f} |")
    return "\n".join(lines)


def load_results(out: str | Path) -> dict:
    return json.loads((Path(out) / "results.json").read_text())
