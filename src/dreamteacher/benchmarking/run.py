"""`dreamteacher benchmark`: the label-efficient segmentation benchmark (docs/method.md,
"Fine-tuning and evaluation").

  teacher ──> dreamteacher pretrain ──────────────────┐
  simclr / mocov2 / byol / densecl ───────────────────┼─> for protocol, N, seed:
  scratch ────────────────────────────────────────────┤   finetune/frozen -> test mIoU
  teacher + N labels ─> interpreter ─> dt-mix/dt-label┘
                        interpreter, ddpm-seg ─────────> test mIoU (teacher-side rows)

It runs method by method (its backbone, then its evaluations), in `methods` order.

Every method uses the same backbone, resolution, pretraining epochs and batch, and sees only
the `pretrain_splits` images (by default every split but test); test images are used for
evaluation only. Evaluations score the `eval_split`: val while settings are chosen, test once
for the reported table.
Each stage is a cached cell (cells.py) whose settings are the keyword arguments of the API
command that computes it, so one dict is both the cell's key and the call. Writes
OUT/results.json, results.md, miou_vs_labels.png and OUT/subsets/ (the labelled ids per N
and seed).
"""

from __future__ import annotations

import dataclasses
import json
import math
import platform
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from dreamteacher import api
from dreamteacher.baselines.ssl import METHODS
from dreamteacher.benchmarking.cells import CellRef, Cells, files_key
from dreamteacher.benchmarking.config import (
    EQUAL_COMPUTE,
    EVAL_SPLITS,
    GAN_DISTILLED,
    LABEL_DISTILLED,
    PRETRAINED,
    TEACHER_SIDE,
    BenchmarkConfig,
    build_benchmark_config,
)
from dreamteacher.benchmarking.report import (
    TEACHER_SIDE_PROTOCOL,
    aggregate,
    cost_table,
    plot,
    results_table,
)
from dreamteacher.config import STRIDES
from dreamteacher.data import MaskFolder, select_labeled
from dreamteacher.dataspec import resolved_data
from dreamteacher.errors import UserError
from dreamteacher.reporting import write_report
from dreamteacher.runfiles import atomic_json, atomic_write, save_config
from dreamteacher.teachers import teacher_files

Record = dict[str, Any]  # a finished cell: key, folder, wall_s, images_seen, its results


def benchmark(
    data: str | None = None,
    out: str | None = None,
    *,
    profile: str = "cpu",
    config: str | None = None,
    overrides: list[str] | dict[str, Any] | None = None,
    **kwargs: Any,
) -> dict:
    """The label-efficient benchmark (DreamTeacher vs baselines); returns results.json's
    content. Finished cells in `out` are reused."""
    cfg = build_benchmark_config(profile, config, overrides, data=data, out=out, **kwargs)
    return Benchmark(cfg).run()


def labelled_subsets(folder: MaskFolder, labels: list[int], seeds: list[int]) -> dict:
    """{(N, seed): ids}: N train images picked by seed (the whole train split when N is as
    large or larger, said in one line). Checked to be disjoint from the val and test splits."""
    train = folder.splits.get("train") or []
    if not train:
        raise UserError(f"{folder.root}/splits.json has no train ids; add a 'train' list")
    for split in EVAL_SPLITS:
        both = sorted(set(train) & set(folder.splits.get(split, [])))
        if both:
            raise UserError(
                f"{folder.root}/splits.json lists {both[0]} in both train and {split}; make "
                "the splits disjoint"
            )
    for n in sorted({n for n in labels if n > len(train)}):
        print(
            f"benchmark: N = {n} is more than the {len(train)} train images of {folder.root}; "
            f"its rows use all {len(train)} (labelled_images in results.json)"
        )
    return {(n, s): select_labeled(train, min(n, len(train)), s) for n in labels for s in seeds}


class Benchmark:
    """The stages of one benchmark run, each a cached cell: `teacher`, `feature_cache`,
    `pretrained` (a backbone per method), `interpreter`, `label_distilled` and `ddpm_seg`
    (per labelled subset), `evaluate` (per method, protocol, N and seed)."""

    def __init__(self, cfg: BenchmarkConfig):
        self.cfg = cfg
        self.out = Path(cfg.out)
        self.cells = Cells(cfg.cells_dir or self.out / "cells")
        self.costs: list[dict[str, Any]] = []
        self.runs: list[dict[str, Any]] = []
        self.t_start = time.time()
        self._memo: dict[Any, Any] = {}
        self.records: dict[str, Record] = {}  # pretraining cells by name, for their cost
        self.commit = _commit()  # the code this run imported (not the checkout's later HEAD)
        self.folder = MaskFolder(cfg.data)
        self.folder.eval_split(cfg.eval_split)  # one line naming the folder if it has none
        if cfg.teacher:
            teacher_files(cfg.teacher)  # one line now if the folder holds no teacher
        # the unlabeled images every pretraining sees: by default every image but the test's
        self.splits = cfg.pretrain_splits or [s for s in self.folder.splits if s != "test"]
        # every cell's settings start with these
        self.base = {
            "data": resolved_data(cfg.data),
            "image_size": list(cfg.image_size),
            "device": cfg.device,
            "precision": cfg.precision,
        }
        # pretraining: the same images, backbone, epochs and batch for every method
        self.pretraining = {
            **self.base,
            "splits": self.splits,
            "backbone": cfg.backbone,
            "epochs": cfg.pretrain_epochs,
            "max_steps": cfg.pretrain_max_steps,
            "batch_size": cfg.pretrain_batch_size,
            "warmup_epochs": 1.0,
            "save_every": 200,
        }

    def _cell(
        self,
        name: str,
        command: Callable,
        kw: dict,
        stage: str | None,
        sub: str = "run",
        cleanup=(),
        after=None,
    ) -> Record:
        """The cell `name` with settings `kw`: `command(out=CELL/sub, resume=True, **kw)` (a
        stopped cell resumes), then `after(CELL, command's result)` adds to its record. Its
        cost is a row of the cost table under `stage` (none for an evaluation)."""

        def compute(d: Path) -> Record:
            result = command(out=str(d / sub), resume=True, **kw)
            extra = after(d, result) if after else {}
            return {"images_seen": _images_seen(d / "run"), **extra}

        rec = self.cells.get(name, kw, compute, cleanup=list(cleanup))
        if stage is not None:
            cost = {"stage": stage, "wall_s": rec["wall_s"], "images_seen": rec["images_seen"]}
            self.costs.append(cost)
        return rec

    def _once(self, key: Any, make: Callable[[], Any]) -> Any:
        if key not in self._memo:
            self._memo[key] = make()
        return self._memo[key]

    # the stages

    def teacher(self) -> Record:
        """The teacher's record: a train-teacher cell, or the folder given as `teacher` (keyed
        by its files, no cost: it was not trained here)."""
        cfg = self.cfg

        def given() -> Record:
            folder = Path(cfg.teacher).resolve()
            key = "files-" + files_key(teacher_files(folder), folder)
            print(f"benchmark: teacher {folder} (given; key {key})")
            return {"key": key, "folder": str(folder), "wall_s": 0.0, "given": True}

        def make() -> Record:
            if cfg.teacher:
                return given()
            print(f"benchmark: teacher ({cfg.teacher_preset}, {cfg.teacher_steps} steps)")
            kw = {
                **self.base,
                "splits": self.splits,
                "preset": cfg.teacher_preset,
                "steps": cfg.teacher_steps,
                "batch_size": cfg.teacher_batch_size,
                "lr": cfg.teacher_lr,
                "warmup_steps": min(100, cfg.teacher_steps // 10),
                "save_every": max(1, cfg.teacher_steps // 5),
            }
            if cfg.teacher_sample_steps is not None:  # (absent otherwise: cell keys unchanged)
                kw["sample_steps"] = cfg.teacher_sample_steps
            stage = "teacher (train-teacher)"
            return self._cell("teacher", api.train_teacher, kw, stage, cleanup=["run/checkpoints"])

        return self._once("teacher", make)

    def gan_teacher(self) -> Record:
        """The dt-gan row's teacher: a train-teacher --kind gan cell on the same images."""
        cfg = self.cfg

        def make() -> Record:
            print(f"benchmark: GAN teacher ({cfg.gan_preset}, {cfg.gan_steps} steps)")
            kw = {
                **self.base,
                "kind": "gan",
                "splits": self.splits,
                "preset": cfg.gan_preset,
                "steps": cfg.gan_steps,
                "batch_size": cfg.gan_batch_size,
                "warmup_steps": 0,
                "save_every": max(1, cfg.gan_steps // 5),
            }
            stage = "GAN teacher (train-teacher --kind gan)"
            return self._cell(
                "teacher-gan", api.train_teacher, kw, stage, cleanup=["run/checkpoints"]
            )

        return self._once("teacher-gan", make)

    def teacher_ref(self) -> CellRef:
        """The teacher folder other cells read, hashed into their keys as its key."""
        rec = self.teacher()
        return CellRef(rec) if rec.get("given") else CellRef(rec, "run")

    def levels(self) -> dict[str, Any]:
        """The teacher-reading cells' `strides`, named only when not the default (so the
        keys of cells computed before dt_strides existed are unchanged)."""
        strides = list(self.cfg.dt_strides)
        return {} if strides == list(STRIDES) else {"strides": strides}

    def feature_cache(self) -> Record:
        """K encodings per pretraining image (dt_feature_cache=K), computed once for the
        dreamteacher, dt-mix and dt-label rows."""
        cfg = self.cfg

        def make() -> Record:
            print(f"benchmark: feature cache ({cfg.dt_feature_cache} encodings per image)")
            kw = {
                **self.base,
                "teacher": self.teacher_ref(),
                "splits": self.splits,
                "t": cfg.dt_t,
                **self.levels(),
                "draws": cfg.dt_feature_cache,
                "batch_size": cfg.pretrain_batch_size,
            }

            def size(d: Path, _out) -> dict:
                meta = json.loads((d / "cache" / "meta.json").read_text())
                return {
                    "images_seen": meta["images"] * meta["draws"],
                    "bytes_per_image": meta["bytes_per_image"],
                }

            stage = "feature cache (cache-features)"
            return self._cell("feature-cache", api.cache_features, kw, stage, "cache", after=size)

        return self._once("feature-cache", make)

    def _distillation(self) -> dict[str, Any]:
        """The settings every DreamTeacher distillation (dreamteacher, dt-mix, dt-label)
        shares; with dt_feature_cache > 0 it reads the feature cache."""
        cfg = self.cfg
        kw = {
            **self.pretraining,
            "teacher": self.teacher_ref(),
            "lr": cfg.dt_lr,
            "t": cfg.dt_t,
            **self.levels(),
            "lambda_at": cfg.dt_lambda_at,
            "at_source": cfg.dt_at_source,
        }
        if cfg.dt_feature_cache:
            kw["feature_cache"] = CellRef(self.feature_cache(), "cache")
        return kw

    def _pretrain_cell(self, name: str, command: Callable, kw: dict) -> CellRef:
        """A pretraining cell, exported: the backbone folder an evaluation fine-tunes."""

        def export(d: Path, run) -> dict:
            api.export(run, d / "backbone")
            return {}

        print(f"benchmark: pretrain {name}")
        stage = f"{name.removesuffix(EQUAL_COMPUTE)} pretraining"
        if name.endswith(EQUAL_COMPUTE):
            stage += " (equal compute)"
        rec = self._cell(
            f"pretrain-{name}", command, kw, stage, after=export, cleanup=["run/checkpoints"]
        )
        self.records[name] = rec
        return CellRef(rec, "backbone")

    def pretrained(self, method: str) -> CellRef | str:
        """The backbone of a method pretrained once on the unlabeled images."""
        cfg = self.cfg
        if method == "scratch":
            return "scratch"

        def make() -> CellRef:
            if method == "dreamteacher":
                return self._pretrain_cell(method, api.pretrain, self._distillation())
            if method == "dt-gan":  # feature distillation on the GAN's own images
                kw = {
                    **self.pretraining,
                    "teacher": CellRef(self.gan_teacher(), "run"),
                    "lr": cfg.dt_lr,
                    **self.levels(),
                    "lambda_at": cfg.dt_lambda_at,
                    "at_source": cfg.dt_at_source,
                    "truncation_psi": cfg.gan_psi,
                }
                return self._pretrain_cell(method, api.pretrain, kw)
            kw = {**self.pretraining, "method": method, "lr": self.ssl_lr(method)}
            return self._pretrain_cell(method, api.pretrain_baseline, kw)

        return self._once(method, make)

    def ssl_lr(self, method: str) -> float:
        """The lr of SSL `method`: its own `<method>_lr` when set, else ssl_lr."""
        own = getattr(self.cfg, f"{method}_lr")
        return self.cfg.ssl_lr if own is None else own

    def dreamteacher_seconds(self) -> float:
        """What DreamTeacher's backbone cost in all: the wall time of the teacher, the feature
        cache (when used) and the distillation cells, start-up and export included. A given
        teacher (`teacher=PATH`) counts 0 s: it was trained elsewhere."""
        self.pretrained("dreamteacher")
        parts = [self.teacher(), self.records["dreamteacher"]]
        if self.cfg.dt_feature_cache:
            parts.append(self.feature_cache())
        return sum(p["wall_s"] for p in parts)

    def equal_compute(self, method: str) -> CellRef:
        """SSL `method` pretrained for as long as DreamTeacher took (dreamteacher_seconds):
        its equal-epochs cell gives its seconds per image, the budget its number of steps."""

        def make() -> CellRef:
            self.pretrained(method)
            rec, batch = self.records[method], self.cfg.pretrain_batch_size
            seconds_per_image = rec["wall_s"] / max(1, rec["images_seen"])
            steps = max(1, round(self.dreamteacher_seconds() / seconds_per_image / batch))
            n_images = sum(len(self.folder.splits[s]) for s in self.splits)
            per_epoch = max(1, n_images // batch)  # whole batches only
            kw = {
                **self.pretraining,
                "method": method,
                "lr": self.ssl_lr(method),
                "epochs": math.ceil(steps / per_epoch) + 1,  # max_steps ends it
                "max_steps": steps,
            }
            return self._pretrain_cell(method + EQUAL_COMPUTE, api.pretrain_baseline, kw)

        return self._once(method + EQUAL_COMPUTE, make)

    def _teacher_side(self, name: str, command: Callable, n: int, seed: int, kw: dict, cleanup):
        """A segmenter on the teacher's features of the (N, seed) subset, evaluated."""
        print(f"benchmark: {name} N{n}-seed{seed}")
        teacher = self.teacher_ref()
        kw = {**self.base, "teacher": teacher, "labels": self.labelled(n), "seed": seed, **kw}
        kw |= self.levels()
        kw["eval_split"] = self.cfg.eval_split
        key, stage = f"{name}-N{n}-seed{seed}", f"{name} N{n}-seed{seed}"
        return self._cell(key, command, kw, stage, cleanup=cleanup, after=_metrics)

    def interpreter(self, n: int, seed: int) -> Record:
        """The interpreter of one subset, computed once (dt-mix, dt-label and its own row)."""
        cfg = self.cfg
        kw = {
            "epochs": cfg.interpreter_epochs,
            "max_steps": cfg.interpreter_max_steps,
            "channels": cfg.interpreter_channels,
            "batch_size": cfg.finetune_batch_size,
            "eval_batch_size": cfg.eval_batch_size,
        }
        make = lambda: self._teacher_side(
            "interpreter", api.train_interpreter, n, seed, kw, ["run/checkpoints"]
        )
        return self._once(("interpreter", n, seed), make)

    def ddpm_seg(self, n: int, seed: int) -> Record:
        cfg = self.cfg
        kw = {
            "t": cfg.ddpm_seg_t,
            "steps": cfg.ddpm_seg_steps,
            "ensemble": cfg.ddpm_seg_ensemble,
            "pixels": cfg.ddpm_seg_pixels,
        }
        cleanup = ["run/checkpoints", "run/model.pt"]
        return self._teacher_side("ddpm-seg", api.train_ddpm_seg, n, seed, kw, cleanup)

    def label_distilled(self, method: str, n: int, seed: int) -> CellRef:
        """dt-mix / dt-label: distilled from the interpreter of the (N, seed) subset."""
        cfg = self.cfg
        kw = {
            **self._distillation(),
            "mode": method.removeprefix("dt-"),
            "interpreter": CellRef(self.interpreter(n, seed), "run"),
            "lambda_ld": cfg.lambda_ld,
            "tau": cfg.tau,
            "logit_head": cfg.dt_logit_head,
        }
        return self._pretrain_cell(f"{method}-N{n}-seed{seed}", api.pretrain, kw)

    def evaluate(self, method: str, weights: CellRef | str, protocol: str, n: int, seed: int):
        """Fine-tune (all weights) or train a head on the frozen backbone, with the N labelled
        images of seed's subset; one row of the results."""
        cfg = self.cfg
        frozen = protocol == "frozen"
        steps = cfg.frozen_steps if frozen else cfg.finetune_steps
        kw = {
            **self.base,
            "backbone": cfg.backbone,
            "weights": weights,
            "freeze_backbone": frozen,
            "labels": self.labelled(n),
            "seed": seed,
            "steps": steps,
            "lr": cfg.frozen_lr if frozen else cfg.finetune_lr,
            "batch_size": cfg.finetune_batch_size,
            "head_channels": cfg.head_channels,
            "warmup_steps": min(50, steps // 10),
            "eval_batch_size": cfg.eval_batch_size,
            "eval_split": cfg.eval_split,
            "save_every": max(1, steps // 2),
        }
        cleanup = [] if cfg.keep_weights else ["run/checkpoints", "run/model.pt"]
        name = f"eval-{method}-{protocol}-N{n}-seed{seed}"
        rec = self._cell(name, api.finetune, kw, None, cleanup=cleanup, after=_metrics)
        self.add_row(method, protocol, n, seed, rec)
        rows = sum(m not in TEACHER_SIDE for m in cfg.methods)
        rows += cfg.ssl_equal_compute * sum(m in METHODS for m in cfg.methods)
        n_jobs = len(self.evaluations) * rows
        done = sum(r["protocol"] != TEACHER_SIDE_PROTOCOL for r in self.runs)
        print(
            f"benchmark [{done}/{n_jobs}] {method:>12} {protocol:>8} N={n:<4} seed={seed}: "
            f"mIoU {rec['miou']:.1f}"
        )

    # the whole run

    @property
    def evaluations(self) -> list[tuple[str, int, int]]:
        c = self.cfg
        return [(p, n, s) for p in c.protocols for n in c.labels for s in c.seeds]

    def labelled(self, n: int) -> int:
        """The number of labelled images behind the rows of N = n: n, or all of train when
        n is more (labelled_subsets says so)."""
        return len(self.subsets[(n, self.cfg.seeds[0])])

    def add_row(self, method: str, protocol: str, n: int, seed: int, rec: Record) -> None:
        self.runs.append(
            {
                "method": method,
                "protocol": protocol,
                "labels": n,
                "labelled_images": len(self.subsets[(n, seed)]),
                "seed": seed,
                "miou": rec["miou"],
                "per_class_iou": rec["per_class_iou"],
                "wall_s": rec["wall_s"],
                "cell": rec["folder"],
            }
        )
        self.write_results(final=False)  # partial tables after every row

    def run(self) -> dict[str, Any]:
        """Method by method: its backbone(s), then its rows, so that a run stopped early (a
        time budget, as in bench/gpu.sh) has whole rows for the first methods."""
        cfg = self.cfg
        self.out.mkdir(parents=True, exist_ok=True)
        save_config(cfg, self.out / "config.yaml")
        self.subsets = labelled_subsets(self.folder, cfg.labels, cfg.seeds)
        for (n, s), ids in self.subsets.items():
            atomic_json(
                {"labels": n, "seed": s, "ids": ids}, self.out / "subsets" / f"N{n}_seed{s}.json"
            )
        if self.folder.carved_val:  # the folder had no val split: record the one made
            val = {"split": "val", "carved_from": "train", "ids": self.folder.carved_val}
            atomic_json(val, self.out / "subsets" / "val.json")
        for method in cfg.methods:
            if method in PRETRAINED or method in GAN_DISTILLED:
                weights = self.pretrained(method)
                for protocol, n, seed in self.evaluations:
                    self.evaluate(method, weights, protocol, n, seed)
                if method in METHODS and cfg.ssl_equal_compute:
                    weights = self.equal_compute(method)
                    for protocol, n, seed in self.evaluations:
                        self.evaluate(method + EQUAL_COMPUTE, weights, protocol, n, seed)
            elif method in LABEL_DISTILLED:
                each = {(n, s): self.label_distilled(method, n, s) for n, s in self.subsets}
                for protocol, n, seed in self.evaluations:
                    self.evaluate(method, each[(n, seed)], protocol, n, seed)
            else:  # TEACHER_SIDE: a segmenter of its own, one row per subset
                for n, seed in self.subsets:
                    side = self.interpreter if method == "interpreter" else self.ddpm_seg
                    self.add_row(method, TEACHER_SIDE_PROTOCOL, n, seed, side(n, seed))
        return self.write_results(final=True)

    def write_results(self, final: bool) -> dict[str, Any]:
        """results.json and results.md (and, when final, the plot) from the runs so far."""
        agg = aggregate(self.runs)
        results = {
            "complete": final,
            "config": dataclasses.asdict(self.cfg),
            "commit": self.commit,
            "device": _device_name(self.cfg.device),
            "runs": self.runs,
            "summary": [
                {"method": m, "protocol": p, "labels": n, **v} for (m, p, n), v in agg.items()
            ],
            "costs": self.costs,
            "cells_computed": len(self.cells.computed),
            "wall_s": time.time() - self.t_start,
        }
        atomic_json(results, self.out / "results.json")
        text = format_results(results)
        atomic_write(self.out / "results.md", lambda tmp: Path(tmp).write_text(text))
        if final:
            png = self.out / "miou_vs_labels.png"
            plot(self.runs, png, self.cfg.methods, self.cfg.eval_split)
            print("\n" + text)
            if self.cfg.report:
                print(f"report: {write_report(self.out)}")
        return results


def format_results(r: dict[str, Any]) -> str:
    c = r["config"]
    head = (
        f"# Label-efficient segmentation benchmark ({c['profile']} profile)\n\n"
        f"{c['backbone']} at {c['image_size'][0]}x{c['image_size'][1]} on {c['data']}; "
        f"{c['pretrain_epochs']} pretraining epochs for every method; seeds {c['seeds']}; "
        f"mIoU on the {c.get('eval_split', 'test')} split; device {r['device']}; "
        f"commit {r['commit']}.\n\n"
    )
    if c.get("teacher"):
        head += (
            f"Teacher: the folder {c['teacher']}, given (not trained here: its cost is not in "
            "the cost table nor in the equal-compute budget).\n\n"
        )
    if c.get("dt_feature_cache"):
        head += (
            "The DreamTeacher rows' targets were read from a feature cache of "
            f"{c['dt_feature_cache']} encodings per image (`dt_feature_cache`), not encoded "
            "at every step.\n\n"
        )
    distilled = set(c["methods"]) & {"dt-mix", "dt-label"}
    if distilled and c.get("dt_logit_head", "uper") != "uper":
        head += (
            f"The dt-mix and dt-label students' logit head was `{c['dt_logit_head']}` "
            "(`dt_logit_head`), not UPerNet's 3x3 fusion.\n\n"
        )
    if not r["complete"]:
        head += f"**Partial**: {len(r['runs'])} evaluation runs so far.\n\n"
    runs_md = results_table(r["runs"], c["methods"], c.get("eval_split", "test"))
    return (
        head
        + runs_md
        + "\n**cost** (wall time of the last computation of each cell)\n\n"
        + cost_table(r["costs"])
        + f"\n\n{r['cells_computed']} cells computed in this invocation, "
        f"{r['wall_s']:.0f} s in all.\n"
    )


def _metrics(_cell: Path, metrics: dict) -> dict:
    """What an evaluated cell records of its command's metrics."""
    return {"miou": metrics["miou"], "per_class_iou": metrics["per_class_iou"]}


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


def _images_seen(run: Path) -> int:
    """Images the run's training steps saw (its last metrics.jsonl record), 0 if none."""
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
