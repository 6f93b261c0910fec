"""Cached benchmark cells: a teacher, a pretrained backbone, or one evaluation run.

A cell's folder is named by a hash of everything that determines its result (its settings
and the keys of the cells it builds on), so re-running after a change recomputes only the
cells the change touches. A finished cell has `cell.json`; an unfinished one is resumed from
its run's checkpoints."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dreamteacher.runfiles import atomic_json


class CellRef(os.PathLike):
    """A finished cell's subfolder (a teacher's run, an exported backbone) named in another
    cell's settings: a path where the settings are passed on as a command's arguments, the
    cell's key where they are hashed into a key (so a moved cells folder keeps its keys)."""

    def __init__(self, record: dict[str, Any], sub: str = ""):
        self.key = record["key"]
        self.path = Path(record["folder"]) / sub if sub else Path(record["folder"])

    def __fspath__(self) -> str:
        return str(self.path)

    __str__ = __fspath__

    def __repr__(self) -> str:
        return f"CellRef({self.key!r}, {str(self.path)!r})"


def _hashable(value: Any) -> Any:
    return value.key if isinstance(value, CellRef) else str(value)


def files_key(files: list[Path], root: Path) -> str:
    """Stable hash of files' paths (relative to `root`) and contents: the key of an input
    that is not a cell (a teacher given as a folder), the same wherever the folder lies."""
    h = hashlib.sha1()
    for f in sorted(files):
        h.update(f.relative_to(root).as_posix().encode() + b"\0")
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
        h.update(b"\0")
    return h.hexdigest()[:10]


def cell_key(params: dict[str, Any]) -> str:
    """Stable 10-hex-digit hash of a cell's settings (JSON, keys sorted; a CellRef counts as
    its cell's key)."""
    blob = json.dumps(params, sort_keys=True, separators=(",", ":"), default=_hashable)
    return hashlib.sha1(blob.encode()).hexdigest()[:10]


class Cells:
    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.computed: list[str] = []  # names of the cells run (not cached) this time

    def folder(self, name: str, params: dict[str, Any]) -> Path:
        return self.root / f"{name}-{cell_key(params)}"

    def get(
        self,
        name: str,
        params: dict[str, Any],
        fn: Callable[[Path], dict[str, Any]],
        cleanup: list[str] = (),
    ) -> dict[str, Any]:
        """The cell's record: read from `cell.json`, or computed by `fn(folder)` (which must
        resume from whatever the folder holds) and then saved. `cleanup` names files or
        folders inside the cell deleted once it is done (checkpoints, say)."""
        d = self.folder(name, params)
        done = d / "cell.json"
        if done.exists():
            try:
                return {**json.loads(done.read_text()), "folder": str(d)}  # moved folders work
            except json.JSONDecodeError:
                pass  # written atomically, so only a hand edit gets here: recompute
        d.mkdir(parents=True, exist_ok=True)
        t = time.time()
        result = fn(d)
        record = {
            "name": name,
            "key": cell_key(params),
            "folder": str(d),
            "params": json.loads(json.dumps(params, default=_hashable)),
            "wall_s": time.time() - t,
            **result,
        }
        atomic_json(record, done)
        for c in cleanup:
            p = d / c
            if p.is_dir():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)
        self.computed.append(name)
        return record
