"""What every training loop shares: device, run folder, metrics log, atomic checkpoints with
resume, RNG state, the warm-up + cosine schedule."""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import sys
import tempfile
import warnings
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dreamteacher.config import save_config
from dreamteacher.errors import UserError


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError("--device cuda was asked for but no CUDA GPU is visible; use --device cpu")
    if name not in ("cpu",) and not name.startswith("cuda"):
        raise UserError(f"--device {name} is unknown; use cpu, cuda or auto")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    st = {
        "torch": torch.get_rng_state(),
        "numpy": np.random.get_state(),
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        st["cuda"] = torch.cuda.get_rng_state_all()
    return st


def set_rng_state(st: dict[str, Any]) -> None:
    torch.set_rng_state(st["torch"])
    np.random.set_state(st["numpy"])
    random.setstate(st["python"])
    if "cuda" in st and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(st["cuda"])


def lr_at(step: int, total: int, warmup: int, base: float, final_frac: float = 0.0) -> float:
    """Linear warm-up for `warmup` steps, then cosine decay to final_frac * base."""
    if warmup > 0 and step < warmup:
        return base * (step + 1) / warmup
    p = (step - warmup) / max(1, total - warmup)
    return base * (final_frac + (1 - final_frac) * 0.5 * (1 + math.cos(math.pi * min(1.0, p))))


def epoch_schedule(n: int, global_batch: int, cfg: Any) -> tuple[int, int, int]:
    """(steps per epoch, total steps, warm-up steps) for an epoch-based run over n samples:
    cfg.epochs (capped by cfg.max_steps) and cfg.warmup_epochs, in optimizer steps."""
    steps_per_epoch = max(1, n // global_batch)
    total = cfg.epochs * steps_per_epoch
    if cfg.max_steps is not None:
        total = min(total, cfg.max_steps)
    return steps_per_epoch, total, int(round(cfg.warmup_epochs * steps_per_epoch))


def loop_state(sampler, total: int, warmup: int) -> dict[str, Any]:
    """What a checkpoint records about the data order and the lr schedule besides the step
    (both are functions of the step, so resuming at step k replays them exactly)."""
    return {
        "sampler": {
            "seed": sampler.seed,
            "batch_size": sampler.batch_size,
            "world_size": sampler.world_size,
            "steps_per_epoch": sampler.steps_per_epoch,
        },
        "lr_schedule": {"kind": "warmup_cosine", "total_steps": total, "warmup_steps": warmup},
        "grad_scaler": None,  # fp32 training: no loss scaling
    }


def _umask() -> int:
    """The process's umask, read without changing it where /proc says it (Linux)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o077)  # elsewhere: set and restore (0o077: nothing made meanwhile is open)
    os.umask(mask)
    return mask


def atomic_write(path: str | Path, write_fn) -> None:
    """write_fn(tmp_path) then fsync and rename over `path`: readers never see a partial file,
    and a failed write (disk full, no permission) leaves the previous file untouched and is
    reported as a one-line UserError."""
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.close(fd)
        write_fn(tmp)  # (which may write a new file of its own at tmp)
        with contextlib.suppress(OSError):  # some network file systems refuse chmod
            os.chmod(tmp, 0o666 & ~_umask())  # mkstemp's 0600 would make outputs owner-only
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except Exception as e:  # noqa: BLE001 - OSError, torch's RuntimeError, SafetensorError...
        _remove_quietly(tmp)
        kept = f"the previous {path.name} is intact" if path.exists() else "nothing was written"
        why = getattr(e, "strerror", None) or f"{type(e).__name__}: {str(e).splitlines()[0]}"[:120]
        raise UserError(
            f"could not write {path} ({why}); {kept}. Free disk "
            "space or fix the folder's permissions, then run again (with --resume)"
        ) from None
    except BaseException:
        _remove_quietly(tmp)
        raise
    try:
        dfd = os.open(path.parent, os.O_RDONLY)
        os.fsync(dfd)
        os.close(dfd)
    except OSError:
        pass


def _remove_quietly(path: str | None) -> None:
    if path and os.path.exists(path):
        try:
            os.remove(path)
        except OSError:
            pass


def atomic_save(obj: Any, path: str | Path) -> None:
    atomic_write(path, lambda tmp: torch.save(obj, tmp))


def atomic_json(obj: Any, path: str | Path) -> None:
    def w(tmp: str) -> None:
        Path(tmp).write_text(json.dumps(obj, indent=2) + "\n")

    atomic_write(path, w)


class NonFiniteGuard:
    """Skips a step whose loss (or gradient norm) is NaN/inf, with a warning; after
    `max_bad` such steps in a row the run stops and its last checkpoint stays as it was."""

    def __init__(self, max_bad: int, run: Run, model: torch.nn.Module | None = None):
        self.max_bad, self.run, self.streak = max_bad, run, 0
        self.model, self._buffers = model, []

    def begin(self) -> None:
        """Before the forward pass: remember the buffers (BatchNorm running statistics), which
        a bad forward pass would otherwise corrupt even though its update is skipped."""
        if self.model is not None:
            self._buffers = [b.detach().clone() for b in self.model.buffers()]

    def ok(self, step: int, *values: torch.Tensor) -> bool:
        finite = torch.stack([v.detach().float().reshape(()) for v in values]).isfinite()
        if bool(finite.all()):  # one host sync per step
            self.streak = 0
            return True
        with torch.no_grad():
            for b, saved in zip(self.model.buffers() if self.model else [], self._buffers):
                b.copy_(saved)
        self.streak += 1
        bad = ", ".join(f"{v.item():g}" for v in values if v.numel() == 1)
        warnings.warn(
            f"step {step + 1}: non-finite loss/gradient ({bad}); step skipped "
            f"({self.streak}/{self.max_bad} in a row)",
            stacklevel=2,
        )
        if self.streak >= self.max_bad:
            last = self.run.checkpoints()
            where = f"the last good checkpoint {last[-1]} is intact" if last else "no checkpoint"
            raise UserError(
                f"loss was NaN/inf for {self.streak} steps in a row (up to step {step + 1}); "
                f"stopped, {where}. Lower the lr (or check the data), then --resume"
            )
        return False


class Run:
    """A run folder: config.yaml, metrics.jsonl, checkpoints/step_*.pt."""

    def __init__(
        self, out: str | Path, cfg: Any, keep: int = 2, rank: int = 0, world_size: int = 1
    ):
        if not out:
            raise UserError("no output folder; pass --out DIR")
        self.dir = Path(out)
        self.cfg, self.keep, self.rank = cfg, max(1, keep), rank
        self.world_size = world_size  # a run resumes on as many processes as it started on
        self.ckpt_dir = self.dir / "checkpoints"
        self.metrics_path = self.dir / "metrics.jsonl"
        if self.checkpoints() and not getattr(cfg, "resume", False):  # checked on every rank
            raise UserError(
                f"{self.dir} already holds checkpoints of a run; pass --resume to continue "
                "it, or choose another --out"
            )
        if self.rank == 0:
            self.dir.mkdir(parents=True, exist_ok=True)
            if not getattr(cfg, "resume", False):
                self.metrics_path.unlink(missing_ok=True)  # a fresh run starts a fresh log
            save_config(cfg, self.dir / "config.yaml")
            for stale in self.ckpt_dir.glob(".*.tmp") if self.ckpt_dir.exists() else []:
                stale.unlink(missing_ok=True)  # left by a run killed while writing

    def checkpoints(self) -> list[Path]:
        return sorted(self.ckpt_dir.glob("step_*.pt")) if self.ckpt_dir.exists() else []

    def log(self, record: dict[str, Any]) -> None:
        if self.rank != 0:
            return
        with open(self.metrics_path, "a") as f:
            f.write(json.dumps(record) + "\n")

    def save_checkpoint(self, step: int, state: dict[str, Any]) -> None:
        if self.rank != 0:
            return
        state = dict(state, step=step, rng=rng_state(), config=asdict(self.cfg))
        atomic_save(state, self.ckpt_dir / f"step_{step:08d}.pt")
        for old in self.checkpoints()[: -self.keep]:
            old.unlink(missing_ok=True)

    def load_checkpoint(self, map_location: Any = "cpu") -> dict[str, Any] | None:
        """The newest readable checkpoint (a corrupt one is skipped with a warning), or None.
        metrics.jsonl lines logged after it are dropped so the log matches the weights."""
        for path in reversed(self.checkpoints()):
            try:
                state = torch.load(path, map_location=map_location, weights_only=False)
            except Exception as e:  # noqa: BLE001 - any unreadable file: fall back
                warnings.warn(
                    f"checkpoint {path} is unreadable ({type(e).__name__}); "
                    "falling back to the previous one",
                    stacklevel=2,
                )
                continue
            self._check_same_settings(state.get("config", {}), path)
            self._check_same_world(state, path)
            self._truncate_metrics(state["step"])
            return state
        self._truncate_metrics(0)  # nothing to resume from: the run starts over
        return None

    # settings that may change between a run and its resumption (they change no result)
    _RESUMABLE = {
        "resume",
        "device",
        "save_every",
        "log_every",
        "num_workers",
        "out",
        "keep_checkpoints",
        "strict",
        "max_bad_steps",
        "compile",
    }

    def _check_same_settings(self, saved: dict[str, Any], path: Path) -> None:
        now = asdict(self.cfg)
        diff = [k for k in now if k not in self._RESUMABLE and k in saved and saved[k] != now[k]]
        if diff:
            k = diff[0]
            raise UserError(
                f"{path} was made with {k}={saved[k]!r}, now {k}={now[k]!r}; resume with the "
                "same settings, or start a new run in another --out"
            )

    def _check_same_world(self, state: dict[str, Any], path: Path) -> None:
        """The global batch, the steps per epoch and each rank's share of the data order
        all follow from the number of processes (the loop's state records it with the
        sampler's), so a run resumes on as many."""
        saved = state.get("sampler", {}).get("world_size", 1)
        if saved != self.world_size:
            how = (
                "in one process, without torchrun"
                if saved == 1
                else f"under torchrun with {saved} in all (--nnodes x --nproc_per_node)"
            )
            raise UserError(
                f"{path} was made by {saved} process(es), now {self.world_size}; resume {how}, "
                "or start a new run in another --out"
            )

    def _truncate_metrics(self, step: int) -> None:
        if self.rank != 0 or not self.metrics_path.exists():
            return
        keep = []
        for line in self.metrics_path.read_text().splitlines():
            try:
                if json.loads(line).get("step", 0) <= step:
                    keep.append(line)
            except json.JSONDecodeError:
                continue
        self.metrics_path.write_text("".join(x + "\n" for x in keep))


def progress(total: int, initial: int = 0, desc: str = "", disable: bool = False):
    from tqdm.auto import tqdm

    return tqdm(
        total=total,
        initial=initial,
        desc=desc,
        disable=disable,
        dynamic_ncols=True,
        file=sys.stderr,
        mininterval=1.0,
    )


def restore(
    run: Run,
    resume: bool,
    model: torch.nn.Module,
    opt: torch.optim.Optimizer,
    ema: torch.nn.Module | None = None,
) -> int:
    """With --resume, load the newest checkpoint into model, optimizer (and EMA) and restore
    the RNG states; returns the step to continue from (0 for a fresh run)."""
    if not resume or (state := run.load_checkpoint()) is None:
        return 0
    model.load_state_dict(state["model"])
    opt.load_state_dict(state["optimizer"])
    if ema is not None:
        ema.load_state_dict(state["ema"])
    set_rng_state(state["rng"])
    if run.rank == 0:
        print(f"resumed {run.dir} at step {state['step']}")
    return int(state["step"])


def track(iterable, desc: str = ""):
    from tqdm.auto import tqdm

    return tqdm(
        iterable, desc=desc, leave=False, dynamic_ncols=True, file=sys.stderr, mininterval=1.0
    )


def resolve_precision(device: torch.device, precision: str = "auto") -> str:
    """'bf16' or 'fp32': auto is bf16 on CUDA, fp32 elsewhere."""
    if precision not in ("auto", "fp32", "bf16"):
        raise UserError(f"precision must be auto, fp32 or bf16, got '{precision}'")
    bf16 = precision == "bf16" or (precision == "auto" and device.type == "cuda")
    return "bf16" if bf16 else "fp32"


def autocast(device: torch.device, precision: str = "auto"):
    """bf16 autocast on CUDA by default; fp32 on CPU unless precision='bf16'."""
    use = resolve_precision(device, precision) == "bf16"
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=use)


def loader_workers(num_workers: int, device: torch.device) -> int:
    """`num_workers`, or for -1 (auto) up to 8 per GPU (half the cores), 0 on CPU."""
    if num_workers >= 0:
        return num_workers
    return min(8, max(1, (os.cpu_count() or 2) // 2)) if device.type == "cuda" else 0


def make_loader(dataset, sampler, num_workers: int, device: torch.device, seed: int):
    """DataLoader over an index-returning dataset; pinned memory and workers on CUDA."""
    num_workers = loader_workers(num_workers, device)
    return torch.utils.data.DataLoader(
        dataset,
        batch_sampler=sampler,
        num_workers=num_workers,
        pin_memory=device.type == "cuda",
        persistent_workers=num_workers > 0,
        generator=torch.Generator().manual_seed(seed),  # keeps the global RNG untouched
    )


def training_loader(
    dataset,
    cfg: Any,
    env: Any,
    device: torch.device,
    start: int,
    total: int,
    step_keyed: bool = False,
):
    """(sampler, loader) for a training loop: this rank's share of each global batch of
    batch_size x accum_steps x world_size samples, from step `start` to `total`; items carry
    their dataset index (it keys their randomness). `step_keyed`: the dataset itself takes
    (step, index) keys and returns the index first (teachers/cache.py CachedTargets)."""
    from dreamteacher.data import Indexed, ResumableBatchSampler, StepTagged

    sampler = ResumableBatchSampler(
        len(dataset),
        cfg.batch_size * cfg.accum_steps,
        cfg.seed,
        start,
        total,
        rank=env.rank,
        world_size=env.world_size,
    )
    if step_keyed:
        return sampler, make_loader(dataset, StepTagged(sampler), cfg.num_workers, device, cfg.seed)
    return sampler, make_loader(Indexed(dataset), sampler, cfg.num_workers, device, cfg.seed)


def micro_batches(accum: int, *tensors: torch.Tensor):
    """Split a rank's batch into `accum` interleaved micro-batches (m::accum), the same
    grouping a DDP run over `accum` ranks would see."""
    for m in range(accum):
        yield m, tuple(t[m::accum] for t in tensors)


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """No weight decay on biases and norm parameters (1-d tensors)."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 else decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def resolve_teacher(cfg: Any):
    """The frozen teacher at cfg.t / cfg.strides, and cfg.image_size defaulted to the
    teacher's training resolution (checked against the UNet's total stride)."""
    from dreamteacher.teachers import load_teacher
    from dreamteacher.teachers.diffusion import teacher_image_size

    if not cfg.teacher:
        raise UserError("no teacher given; pass --teacher RUN (a train-teacher output folder)")
    teacher = load_teacher(cfg.teacher, t=cfg.t, strides=cfg.strides)
    if cfg.image_size is None:
        cfg.image_size = teacher_image_size(cfg.teacher)
        if cfg.image_size is None:
            raise UserError("the teacher folder does not say its resolution; pass --image-size")
    if any(v % teacher.min_divisor for v in cfg.image_size):
        raise UserError(
            f"--image-size {cfg.image_size[0]} {cfg.image_size[1]} is not divisible by "
            f"{teacher.min_divisor}, the teacher UNet's total stride; pick a multiple of it"
        )
    return teacher
