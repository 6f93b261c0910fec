"""`dreamteacher benchmark`: the label-efficient segmentation benchmark (METHOD.md §6).

  teacher ──> dreamteacher pretrain ──────────────────┐
  simclr / mocov2 / byol / densecl ───────────────────┼─> for protocol, N, seed:
  scratch ────────────────────────────────────────────┤   finetune/frozen -> test mIoU
  teacher + N labels ─> interpreter ─> dt-mix/dt-label┘
                        interpreter, ddpm-seg ─────────> test mIoU (teacher-side rows)

It runs method by method (its backbone, then its evaluations), in `methods` order.

Every method uses the same backbone, resolution, pretraining epochs and batch, and sees only
the `pretrain_splits` images (train and val); test images are used for evaluation only.
Each stage is a cached cell (cells.py). Writes OUT/results.json, results.md,
miou_vs_labels.png and OUT/subsets/ (the labelled ids per N and seed).
"""

from __future__ import annotations

import dataclasses
import json
import platform
import subprocess
import time
from functools import cache, partial
from pathlib import Path
from typing import Any

import torch

from dreamteacher import api
from dreamteacher.benchmarking.cells import Cells
from dreamteacher.benchmarking.config import (
    LABEL_DISTILLED,
    PRETRAINED,
    TEACHER_SIDE,
    BenchmarkConfig,
)
from dreamteacher.benchmarking.report import (
    TEACHER_SIDE_PROTOCOL,
    aggregate,
    cost_table,
    plot,
    results_table,
)
from dreamteacher.config import save_config
from dreamteacher.data import MaskFolder, select_labeled
from dreamteacher.engine.common import atomic_json, atomic_write
from dreamteacher.errors import UserError


def labelled_subsets(folder: MaskFolder, labels: list[int], seeds: list[int]) -> dict:
    """{(N, seed): ids}: N train images picked by seed (the whole train split when N >= its
    size). Checked to be disjoint from the evaluation split."""
    train = folder.splits.get("train") or []
    if not train:
        raise UserError(f"{folder.root}/splits.json has no train ids; add a 'train' list")
    held_out = set(folder.splits.get(folder.eval_split("auto"), []))
    both = sorted(set(train) & held_out)
    if both:
        raise UserError(
            f"{folder.root}/splits.json lists {both[0]} in both train and the evaluation "
            "split; make the splits disjoint"
        )
    return {(n, s): select_labeled(train, n, s) for n in labels for s in seeds}


def _commit() -> str | None:
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
            cwd=Path(__file__).parent,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def run_benchmark(cfg: BenchmarkConfig) -> dict[str, Any]:
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "config.yaml")
    folder = MaskFolder(cfg.data)
    subsets = labelled_subsets(folder, cfg.labels, cfg.seeds)
    for (n, s), ids in subsets.items():
        atomic_json({"labels": n, "seed": s, "ids": ids}, out / "subsets" / f"N{n}_seed{s}.json")
    cells = Cells(cfg.cells_dir or out / "cells")
    data = str(Path(cfg.data).resolve())
    size = list(cfg.image_size)
    base = {"data": data, "image_size": size, "device": cfg.device, "precision": cfg.precision}
    run_opts = {"device": cfg.device, "precision": cfg.precision, "resume": True}
    t_start = time.time()
    costs: list[dict[str, Any]] = []

    # 1. the teacher
    weights: dict[Any, str] = {"scratch": "scratch"}  # method or (method, N, seed) -> backbone
    pre_keys: dict[Any, str] = {"scratch": "scratch"}
    uses_teacher = [m for m in cfg.methods if m not in PRETRAINED or m == "dreamteacher"]
    if uses_teacher:
        tp = {
            **base,
            "splits": cfg.pretrain_splits,
            "preset": cfg.teacher_preset,
            "steps": cfg.teacher_steps,
            "batch_size": cfg.teacher_batch_size,
            "lr": cfg.teacher_lr,
        }

        def train_teacher(d: Path) -> dict:
            api.train_teacher(
                data=data,
                out=str(d / "run"),
                splits=cfg.pretrain_splits,
                image_size=size,
                preset=cfg.teacher_preset,
                steps=cfg.teacher_steps,
                batch_size=cfg.teacher_batch_size,
                lr=cfg.teacher_lr,
                warmup_steps=min(100, cfg.teacher_steps // 10),
                save_every=max(1, cfg.teacher_steps // 5),
                **run_opts,
            )
            return {"images_seen": cfg.teacher_steps * cfg.teacher_batch_size}

        print(f"benchmark: teacher ({cfg.teacher_preset}, {cfg.teacher_steps} steps)")
        teacher = cells.get("teacher", tp, train_teacher, cleanup=["run/checkpoints"])
        teacher_run = str(Path(teacher["folder"]) / "run")
        costs.append({"stage": "teacher (train-teacher)", **_cost(teacher)})

    # 2. pretraining, the same epochs and batch for every method
    common = {
        **base,
        "backbone": cfg.backbone,
        "splits": cfg.pretrain_splits,
        "epochs": cfg.pretrain_epochs,
        "max_steps": cfg.pretrain_max_steps,
        "batch_size": cfg.pretrain_batch_size,
    }
    pre_kw = {  # the same for every method
        "data": data,
        "splits": cfg.pretrain_splits,
        "backbone": cfg.backbone,
        "image_size": size,
        "epochs": cfg.pretrain_epochs,
        "max_steps": cfg.pretrain_max_steps,
        "batch_size": cfg.pretrain_batch_size,
        "warmup_epochs": 1.0,
        "save_every": 200,
        **run_opts,
    }

    def pretrain_cell(name: str, params: dict, train) -> dict:
        def fn(d: Path) -> dict:
            run = train(out=str(d / "run"))
            api.export(run, d / "backbone")
            return {"images_seen": _images_seen(run)}

        print(f"benchmark: pretrain {name}")
        rec = cells.get(f"pretrain-{name}", params, fn, cleanup=["run/checkpoints"])
        costs.append({"stage": f"{name} pretraining", **_cost(rec)})
        return rec

    dt_params = {**common, "lr": cfg.dt_lr, "t": cfg.dt_t} if uses_teacher else {}
    dt_kw = {"teacher": teacher_run, "lr": cfg.dt_lr, "t": cfg.dt_t} if uses_teacher else {}

    @cache
    def feature_cache() -> dict:
        """K encodings per pretraining image (dt_feature_cache=K), computed once for the
        dreamteacher, dt-mix and dt-label rows."""
        cp = {**base, "teacher": teacher["key"], "splits": cfg.pretrain_splits, "t": cfg.dt_t}
        cp |= {"draws": cfg.dt_feature_cache, "batch_size": cfg.pretrain_batch_size}

        def fn(d: Path) -> dict:
            path = api.cache_features(
                data=data,
                teacher=teacher_run,
                out=str(d / "cache"),
                splits=cfg.pretrain_splits,
                image_size=size,
                t=cfg.dt_t,
                draws=cfg.dt_feature_cache,
                batch_size=cfg.pretrain_batch_size,
                **run_opts,  # resume=True: a stopped build continues
            )
            meta = json.loads((path / "meta.json").read_text())
            return {
                "images_seen": meta["images"] * meta["draws"],
                "bytes_per_image": meta["bytes_per_image"],
            }

        print(f"benchmark: feature cache ({cfg.dt_feature_cache} encodings per image)")
        rec = cells.get("feature-cache", cp, fn)
        costs.append({"stage": "feature cache (cache-features)", **_cost(rec)})
        return rec

    def distilled(pp: dict, train: partial) -> tuple[dict, partial]:
        """A distillation cell's parameters and trainer, reading the feature cache when
        dt_feature_cache > 0 (the key is added only then: online cells keep theirs)."""
        if not cfg.dt_feature_cache:
            return pp, train
        cache = feature_cache()
        path = str(Path(cache["folder"]) / "cache")
        return {**pp, "feature_cache": cache["key"]}, partial(train, feature_cache=path)

    def pretrained_backbone(method: str) -> None:
        if method == "dreamteacher":
            pp = {**dt_params, "teacher": teacher["key"]}
            pp, train = distilled(pp, partial(api.pretrain, **dt_kw, **pre_kw))
        else:
            pp = {**common, "method": method, "lr": cfg.ssl_lr}
            train = partial(api.pretrain_baseline, method=method, lr=cfg.ssl_lr, **pre_kw)
        rec = pretrain_cell(method, pp, train)
        weights[method] = str(Path(rec["folder"]) / "backbone")
        pre_keys[method] = rec["key"]

    # teacher-side segmenters on the (N, seed) subset (interpreter, DDPM-seg)
    runs: list[dict[str, Any]] = []
    side = {**base, "teacher": teacher["key"]} if uses_teacher else {}

    def side_cell(name, n, seed, train_fn, settings, batch, cleanup, **extra) -> dict:
        """A segmenter trained on the teacher's features of the (N, seed) subset and
        evaluated: `settings` are both its cell's parameters and train_fn's keywords."""

        def fn(d: Path) -> dict:
            m = train_fn(
                data=data,
                teacher=teacher_run,
                out=str(d / "run"),
                labels=n,
                seed=seed,
                image_size=size,
                **settings,
                **extra,
                **run_opts,
            )
            return _eval_record(m, m["steps"] * batch)

        print(f"benchmark: {name} N{n}-seed{seed}")
        params = {**side, "labels": n, "seed": seed, **settings}
        rec = cells.get(f"{name}-N{n}-seed{seed}", params, fn, cleanup=cleanup)
        costs.append({"stage": f"{name} N{n}-seed{seed}", **_cost(rec)})
        return rec

    interpreters: dict[tuple[int, int], dict] = {}

    def interpreter(n: int, seed: int) -> dict:
        """The interpreter of one subset, computed once (dt-mix, dt-label and its own row)."""
        if (n, seed) not in interpreters:
            settings = {
                "epochs": cfg.interpreter_epochs,
                "max_steps": cfg.interpreter_max_steps,
                "channels": cfg.interpreter_channels,
                "batch_size": cfg.finetune_batch_size,
            }
            interpreters[(n, seed)] = side_cell(
                "interpreter",
                n,
                seed,
                api.train_interpreter,
                settings,
                cfg.finetune_batch_size,
                ["run/checkpoints"],
                eval_batch_size=cfg.eval_batch_size,
            )
        return interpreters[(n, seed)]

    def label_distilled_backbone(method: str, n: int, seed: int) -> None:
        """dt-mix / dt-label: distilled from the interpreter of the (N, seed) subset."""
        interp = interpreter(n, seed)
        mode = method.removeprefix("dt-")
        pp = {**dt_params, "teacher": teacher["key"], "interpreter": interp["key"]}
        pp.update(mode=mode, lambda_ld=cfg.lambda_ld, tau=cfg.tau)
        head = {"logit_head": cfg.dt_logit_head} if cfg.dt_logit_head != "uper" else {}
        pp.update(head)  # the default head's cells keep their keys
        train = partial(
            api.pretrain,
            **dt_kw,
            **pre_kw,
            mode=mode,
            interpreter=str(Path(interp["folder"]) / "run"),
            lambda_ld=cfg.lambda_ld,
            tau=cfg.tau,
            **head,
        )
        pp, train = distilled(pp, train)
        rec = pretrain_cell(f"{method}-N{n}-seed{seed}", pp, train)
        weights[(method, n, seed)] = str(Path(rec["folder"]) / "backbone")
        pre_keys[(method, n, seed)] = rec["key"]

    def ddpm_seg(n: int, seed: int) -> dict:
        settings = {
            "t": cfg.ddpm_seg_t,
            "steps": cfg.ddpm_seg_steps,
            "ensemble": cfg.ddpm_seg_ensemble,
            "pixels": cfg.ddpm_seg_pixels,
        }
        cleanup = ["run/checkpoints", "run/model.pt"]
        return side_cell("ddpm-seg", n, seed, api.train_ddpm_seg, settings, 4, cleanup)

    # evaluation of a backbone: fine-tune or frozen, with N labels of seed's subset
    evals = [(p, n, s) for p in cfg.protocols for n in cfg.labels for s in cfg.seeds]
    n_jobs = len(evals) * sum(m not in TEACHER_SIDE for m in cfg.methods)

    def evaluate(method: str, protocol: str, n: int, seed: int) -> None:
        frozen = protocol == "frozen"
        steps = cfg.frozen_steps if frozen else cfg.finetune_steps
        lr = cfg.frozen_lr if frozen else cfg.finetune_lr
        which = (method, n, seed) if method in LABEL_DISTILLED else method
        ep = {
            **base,
            "backbone": cfg.backbone,
            "pretrained": pre_keys[which],
            "protocol": protocol,
            "labels": n,
            "seed": seed,
            "steps": steps,
            "lr": lr,
            "batch_size": cfg.finetune_batch_size,
            "head_channels": cfg.head_channels,
        }

        def fn(d: Path) -> dict:
            m = api.finetune(
                data=data,
                out=str(d / "run"),
                backbone=cfg.backbone,
                weights=weights[which],
                labels=n,
                seed=seed,
                image_size=size,
                steps=steps,
                lr=lr,
                batch_size=cfg.finetune_batch_size,
                head_channels=cfg.head_channels,
                warmup_steps=min(50, steps // 10),
                freeze_backbone=frozen,
                eval_batch_size=cfg.eval_batch_size,
                save_every=max(1, steps // 2),
                **run_opts,
            )
            return {"miou": m["miou"], "per_class_iou": m["per_class_iou"]}

        cleanup = [] if cfg.keep_weights else ["run/checkpoints", "run/model.pt"]
        rec = cells.get(f"eval-{method}-{protocol}-N{n}-seed{seed}", ep, fn, cleanup=cleanup)
        runs.append(_run_row(method, protocol, n, subsets[(n, seed)], seed, rec))
        done = sum(r["protocol"] != TEACHER_SIDE_PROTOCOL for r in runs)
        print(
            f"benchmark [{done}/{n_jobs}] {method:>12} {protocol:>8} N={n:<4} seed={seed}: "
            f"mIoU {rec['miou']:.1f}"
        )
        write_results(out, cfg, runs, costs, cells, t_start, final=False)  # partial tables

    # 3. method by method: its backbone(s), then its rows, so that a run stopped early (a time
    # budget, as in bench/gpu.sh) has whole rows for the first methods: scratch, dreamteacher..
    for method in cfg.methods:
        if method in PRETRAINED and method != "scratch":
            pretrained_backbone(method)
        for n, seed in subsets:
            if method in LABEL_DISTILLED:
                label_distilled_backbone(method, n, seed)
            elif method in TEACHER_SIDE:
                rec = interpreter(n, seed) if method == "interpreter" else ddpm_seg(n, seed)
                ids = subsets[(n, seed)]
                runs.append(_run_row(method, TEACHER_SIDE_PROTOCOL, n, ids, seed, rec))
                write_results(out, cfg, runs, costs, cells, t_start, final=False)
        if method not in TEACHER_SIDE:
            for protocol, n, seed in evals:
                evaluate(method, protocol, n, seed)
    return write_results(out, cfg, runs, costs, cells, t_start, final=True)


def _eval_record(m: dict[str, Any], images_seen: int) -> dict[str, Any]:
    return {"miou": m["miou"], "per_class_iou": m["per_class_iou"], "images_seen": images_seen}


def _run_row(method, protocol, n, ids, seed, rec) -> dict[str, Any]:
    return {
        "method": method,
        "protocol": protocol,
        "labels": n,
        "labelled_images": len(ids),
        "seed": seed,
        "miou": rec["miou"],
        "per_class_iou": rec["per_class_iou"],
        "wall_s": rec["wall_s"],
        "cell": rec["folder"],
    }


def write_results(
    out: Path,
    cfg: BenchmarkConfig,
    runs: list[dict[str, Any]],
    costs: list[dict[str, Any]],
    cells: Cells,
    t_start: float,
    final: bool,
) -> dict[str, Any]:
    """results.json and results.md (and, when final, the plot) from the runs so far."""
    agg = aggregate(runs)
    results = {
        "complete": final,
        "config": dataclasses.asdict(cfg),
        "commit": _commit(),
        "device": _device_name(cfg.device),
        "runs": runs,
        "summary": [{"method": m, "protocol": p, "labels": n, **v} for (m, p, n), v in agg.items()],
        "costs": costs,
        "cells_computed": len(cells.computed),
        "wall_s": time.time() - t_start,
    }
    atomic_json(results, out / "results.json")
    text = format_results(results)
    atomic_write(out / "results.md", lambda tmp: Path(tmp).write_text(text))
    if final:
        plot(runs, out / "miou_vs_labels.png", cfg.methods)
        print("\n" + text)
    return results


def format_results(r: dict[str, Any]) -> str:
    c = r["config"]
    head = (
        f"# Label-efficient segmentation benchmark ({c['profile']} profile)\n\n"
        f"{c['backbone']} at {c['image_size'][0]}x{c['image_size'][1]} on {c['data']}; "
        f"{c['pretrain_epochs']} pretraining epochs for every method; seeds {c['seeds']}; "
        f"device {r['device']}; commit {r['commit']}.\n\n"
    )
    if c.get("dt_feature_cache"):
        head += (
            "The DreamTeacher rows' targets were read from a feature cache of "
            f"{c['dt_feature_cache']} encodings per image (`dt_feature_cache`), not encoded "
            "at every step.\n\n"
        )
    if c.get("dt_logit_head", "uper") != "uper":
        head += (
            f"The dt-mix and dt-label students' logit head was `{c['dt_logit_head']}` "
            "(`dt_logit_head`), not UPerNet's 3x3 fusion.\n\n"
        )
    if not r["complete"]:
        head += f"**Partial**: {len(r['runs'])} evaluation runs so far.\n\n"
    runs_md = results_table(r["runs"], c["methods"])
    return (
        head
        + runs_md
        + "\n**cost** (wall time of the last computation of each cell)\n\n"
        + cost_table(r["costs"])
        + f"\n\n{r['cells_computed']} cells computed in this invocation, "
        f"{r['wall_s']:.0f} s in all.\n"
    )


def _cost(rec: dict[str, Any]) -> dict[str, Any]:
    return {"wall_s": rec["wall_s"], "images_seen": rec["images_seen"]}


def _images_seen(run: Path) -> int:
    last = 0
    path = Path(run) / "metrics.jsonl"
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                last = max(last, int(json.loads(line).get("images_seen", 0)))
            except (json.JSONDecodeError, ValueError):
                continue
    return last


def _device_name(device: str) -> str:
    if device in ("auto", "cuda") and torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
