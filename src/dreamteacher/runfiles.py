"""A run's files: atomic writes (a reader never sees half a file, a failed write keeps the old
one), the run folder (config.yaml, metrics.jsonl, checkpoints with resume) and progress bars."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch
import yaml

from dreamteacher.errors import UserError
from dreamteacher.runtime import rng_state


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
        state = dict(state, step=step, rng=rng_state(), config=dataclasses.asdict(self.cfg))
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
        now = dataclasses.asdict(self.cfg)
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


def track(iterable, desc: str = ""):
    from tqdm.auto import tqdm

    return tqdm(
        iterable, desc=desc, leave=False, dynamic_ncols=True, file=sys.stderr, mininterval=1.0
    )


def save_config(cfg: Any, path: str | Path) -> None:
    """A resolved config (a dataclass) as YAML, in field order."""
    text = yaml.safe_dump(dataclasses.asdict(cfg), sort_keys=False)
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))
