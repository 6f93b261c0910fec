"""`dreamteacher demo`: every stage on procedurally generated scenes, DreamTeacher vs scratch.

Sized to finish in about 10 minutes on 2 CPU cores. Every stage's folder keeps its resolved
config.yaml and metrics.jsonl; the teacher's sample grid is teacher/samples.png; the summary is
results.json / results.md.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch

from dreamteacher import api
from dreamteacher.data.synthetic import make_scenes
from dreamteacher.engine.common import atomic_json

DEFAULTS: dict[str, Any] = {
    "image_size": [48, 48],
    "num_images": 600,  # 75 % train (unlabeled pool), 25 % test
    "labels": 20,
    "backbone": "resnet18",
    "teacher_steps": 700,
    "teacher_batch_size": 16,
    "teacher_lr": 1e-3,  # at this short budget 1e-3 beat 2e-4 (docs/benchmarks.md)
    "pretrain_epochs": 20,
    "finetune_steps": 300,
    "batch_size": 16,
    "seed": 0,
    "device": "auto",
}


def run_demo(out: str | Path = "runs/demo", **overrides: Any) -> dict:
    s = dict(DEFAULTS)
    unknown = set(overrides) - set(s)
    if unknown:
        from dreamteacher.errors import UserError

        raise UserError(f"unknown demo setting '{sorted(unknown)[0]}'; valid: {', '.join(s)}")
    for k, v in overrides.items():
        if v is None:
            continue
        want = type(s[k])
        if want is list:
            v = [v, v] if isinstance(v, int) else v
            ok = isinstance(v, list) and len(v) == 2 and all(isinstance(x, int) for x in v)
        else:
            ok = isinstance(v, want) or (want is float and isinstance(v, int))
        if not ok or isinstance(v, bool) != (want is bool):
            from dreamteacher.errors import UserError

            raise UserError(f"demo setting '{k}' must be like {s[k]!r}, got {v!r}")
        s[k] = v
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    times: dict[str, float] = {}
    common = {"seed": s["seed"], "device": s["device"], "resume": True}

    t = time.time()
    data = make_scenes(out / "data", n=s["num_images"], image_size=s["image_size"], seed=s["seed"])
    times["make-data"] = time.time() - t

    t = time.time()
    teacher = api.train_teacher(
        data=str(data),
        out=str(out / "teacher"),
        splits=["train"],
        image_size=s["image_size"],
        preset="tiny",
        steps=s["teacher_steps"],
        batch_size=s["teacher_batch_size"],
        save_every=max(1, s["teacher_steps"] // 4),
        warmup_steps=50,
        **common,
    )
    times["train-teacher"] = time.time() - t

    t = time.time()
    pre = api.pretrain(
        data=str(data),
        teacher=str(teacher),
        out=str(out / "pretrain"),
        splits=["train"],
        backbone=s["backbone"],
        epochs=s["pretrain_epochs"],
        batch_size=s["batch_size"],
        warmup_epochs=1,
        save_every=200,
        **common,
    )
    times["pretrain"] = time.time() - t

    t = time.time()
    bb = api.export(pre, out / "backbone")
    times["export"] = time.time() - t

    results: dict[str, Any] = {"settings": s, "runs": {}}
    for name, weights in (("dreamteacher", str(bb)), ("scratch", "scratch")):
        t = time.time()
        m = api.finetune(
            data=str(data),
            out=str(out / f"finetune_{name}"),
            backbone=s["backbone"],
            weights=weights,
            labels=s["labels"],
            image_size=s["image_size"],
            steps=s["finetune_steps"],
            batch_size=s["batch_size"],
            warmup_steps=20,
            save_every=s["finetune_steps"],
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
