"""A run's files: atomic writes (a reader never sees half a file, a failed write keeps the old
one), the run folder (config.yaml, metrics.jsonl, optional TensorBoard events, checkpoints with
resume) and progress bars."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import os
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from PIL import Image

from dreamteacher.dataspec import split_data
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


def make_readable(path: str | Path) -> None:
    """Give a file written through a private temporary (mode 0600), or every file under a
    folder, the mode a plain open() would have given it (0666 less the umask)."""
    path = Path(path)
    files = [p for p in path.rglob("*") if p.is_file()] if path.is_dir() else [path]
    for f in files:
        with contextlib.suppress(OSError):  # some network file systems refuse chmod
            os.chmod(f, 0o666 & ~_umask())


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
        make_readable(tmp)  # mkstemp's 0600 would make outputs owner-only
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


LOGGERS = ("jsonl", "tensorboard")  # what `logger=` takes; jsonl is always written


def _summary_writer() -> Any:
    """torch's TensorBoard writer class (a one-line error without the tensorboard package)."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise UserError(
            "logger=tensorboard needs the tensorboard package: pip install tensorboard (or "
            "pip install 'dreamteacher[tensorboard]'), or set logger=jsonl"
        ) from None
    return SummaryWriter


class Run:
    """A run folder: config.yaml, metrics.jsonl, checkpoints/step_*.pt, and with
    `logger=tensorboard` the same scalars (and images) as TensorBoard events in tensorboard/."""

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
        self.logger = getattr(cfg, "logger", "jsonl")
        if self.logger not in LOGGERS:
            raise UserError(f"unknown logger '{self.logger}'; choose one of {', '.join(LOGGERS)}")
        if self.logger == "tensorboard":
            _summary_writer()  # fail now, not at the first log
        self.board_dir = self.dir / "tensorboard"
        self._board: Any = None
        self._purge_step: int | None = None  # events from this step on are dropped (resume)
        if self.checkpoints() and not getattr(cfg, "resume", False):  # checked on every rank
            raise UserError(
                f"{self.dir} already holds checkpoints of a run; pass --resume to continue "
                "it, or choose another --out"
            )
        if self.rank == 0:
            try:
                self.dir.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise UserError(
                    f"cannot create --out {self.dir} ({e.strerror or type(e).__name__}); "
                    "choose a folder you can write to"
                ) from None
            if not getattr(cfg, "resume", False):
                self.metrics_path.unlink(missing_ok=True)  # a fresh run starts a fresh log
                shutil.rmtree(self.board_dir, ignore_errors=True)
            save_config(cfg, self.dir / "config.yaml")
            for stale in self.ckpt_dir.glob(".*.tmp") if self.ckpt_dir.exists() else []:
                stale.unlink(missing_ok=True)  # left by a run killed while writing

    def checkpoints(self) -> list[Path]:
        return sorted(self.ckpt_dir.glob("step_*.pt")) if self.ckpt_dir.exists() else []

    def log(self, record: dict[str, Any]) -> None:
        """One line of metrics.jsonl; with logger=tensorboard each number also as a scalar at
        the record's step."""
        if self.rank != 0:
            return
        with open(self.metrics_path, "a") as f:
            f.write(json.dumps(record) + "\n")
        board = self.board()
        if board is not None:
            step = int(record.get("step", 0))
            for k, v in record.items():
                if k != "step" and isinstance(v, int | float) and not isinstance(v, bool):
                    board.add_scalar(k, v, step)
            board.flush()

    def log_image(self, tag: str, image: torch.Tensor | bytes, step: int) -> None:
        """An image (# 3, H, W in [0, 1], or PNG bytes) in the TensorBoard events (nothing
        with jsonl: images are files of the run folder)."""
        board = self.board() if self.rank == 0 else None
        if board is not None:
            if isinstance(image, bytes):
                rgb = np.asarray(Image.open(io.BytesIO(image)).convert("RGB"))  # H, W, 3
                image = torch.from_numpy(rgb.copy()).permute(2, 0, 1).float() / 255
            board.add_image(tag, image.clamp(0, 1), step)
            board.flush()

    def board(self) -> Any:
        """The TensorBoard writer (rank 0, logger=tensorboard), else None."""
        if self.logger != "tensorboard" or self.rank != 0:
            return None
        if self._board is None:
            self._board = _summary_writer()(str(self.board_dir), purge_step=self._purge_step)
        return self._board

    def save_checkpoint(self, step: int, state: dict[str, Any]) -> None:
        if self.rank != 0:
            return
        state = dict(state, step=step, rng=rng_state(), config=dataclasses.asdict(self.cfg))
        state["cwd"] = os.getcwd()  # what the config's relative paths are relative to
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
            self._check_same_settings(state.get("config", {}), path, state.get("cwd"))
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
        "logger",
        "report",
        "checkpoint_samples",
    }

    # settings that name a file or folder: compared as resolved paths, so that a run resumes
    # from another working folder (data='seg' then data='probe/seg')
    _PATHS = {"data", "teacher", "interpreter", "weights", "feature_cache"}

    def _check_same_settings(self, saved: dict[str, Any], path: Path, cwd: str | None) -> None:
        now = dataclasses.asdict(self.cfg)

        def same(k: str) -> bool:
            if saved[k] == now[k]:
                return True
            if k in self._PATHS and isinstance(saved[k], str) and isinstance(now[k], str):
                (kind0, then), (kind1, here) = split_data(saved[k]), split_data(now[k])
                then_path = (Path(cwd or os.getcwd()) / then).resolve() if then else None
                here_path = Path(here).resolve() if here else None
                return kind0 == kind1 and then_path == here_path
            return False

        diff = [k for k in now if k not in self._RESUMABLE and k in saved and not same(k)]
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
        self._purge_step = step + 1  # TensorBoard: drop the events logged after `step` too
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


LOG_EVERY_S = 30.0  # seconds between progress lines when stderr is not a terminal


class LineProgress:
    """Progress for a log file: a plain line every `every` seconds and one at the end, instead
    of a bar's carriage-return updates. The part of tqdm's interface the loops use."""

    def __init__(self, total: int | None, initial: int = 0, desc: str = "", every: float = 0.0):
        self.total, self.n, self.desc = total, initial, desc
        self.every = every or LOG_EVERY_S
        self.start_n, self.shown_n, self.postfix = initial, initial, ""
        self.t0 = self.last = time.monotonic()

    def _line(self) -> str:
        dt = time.monotonic() - self.t0
        rate = (self.n - self.start_n) / dt if dt > 0 else 0.0
        done = f"{self.n}/{self.total}" if self.total else str(self.n)
        return f"{self.desc}: {done}, {rate:.2f} it/s, {dt:.0f} s{self.postfix}"

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.monotonic()
        if now - self.last >= self.every:
            self.last, self.shown_n = now, self.n
            print(self._line(), file=sys.stderr, flush=True)

    def set_postfix(self, **kw: Any) -> None:
        self.postfix = "".join(f", {k}={v}" for k, v in kw.items())

    def close(self) -> None:
        if self.n > self.shown_n:  # the last count, unless it was just shown
            print(self._line(), file=sys.stderr, flush=True)
        self.shown_n = self.n  # closing twice prints once

    def __enter__(self) -> LineProgress:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _terminal() -> bool:
    return sys.stderr.isatty()


def progress(total: int, initial: int = 0, desc: str = "", disable: bool = False):
    """A progress bar on a terminal, plain periodic lines in a log (LineProgress)."""
    if not disable and not _terminal():
        return LineProgress(total, initial, desc)
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
    """`iterable` with progress: a bar on a terminal, periodic lines in a log."""
    if not _terminal():
        return _tracked(iterable, desc)
    from tqdm.auto import tqdm

    return tqdm(
        iterable, desc=desc, leave=False, dynamic_ncols=True, file=sys.stderr, mininterval=1.0
    )


def _tracked(iterable, desc: str):
    total = len(iterable) if hasattr(iterable, "__len__") else None
    with LineProgress(total, 0, desc) as bar:
        for item in iterable:
            yield item
            bar.update(1)


def save_config(cfg: Any, path: str | Path) -> None:
    """A resolved config (a dataclass) as YAML, in field order."""
    text = yaml.safe_dump(dataclasses.asdict(cfg), sort_keys=False)
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))
