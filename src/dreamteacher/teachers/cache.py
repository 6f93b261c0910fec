"""Teacher-feature cache: K stochastic encodings per image written once (fp16, one .npy per
level), read back during pretraining instead of running the teacher. Both sides use plain
file reads and writes, not memory maps, so neither process's RSS grows with the cache: pages
of a memory map stay counted in the RSS of the process that touched them (the OS page cache
still keeps what fits).

Draw j of image i is encoded with the image flipped iff j is odd (so K >= 2 covers both
orientations) and with t and noise keyed by (seed, i, j). During pretraining each sample
picks one of its K draws from its (seed, step, index) key, and the student sees the image
flipped the same way as that draw. The reads happen in the DataLoader (`CachedTargets`; in
its workers on CUDA): a batch arrives with its targets in fp16, pinned on CUDA, and they are
widened to fp32 on the device. Layout of a cache folder:

    meta.json          N, K, levels (channels, h, w), image list, teacher, t, image size
    level{l}.npy       # N, K, C_l, h_l, w_l  float16 (np.load(..., mmap_mode="r"))

While it is built the folder is OUT.partial, with progress.json (the images its level files
hold for certain) for `--resume`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from dreamteacher.errors import UserError
from dreamteacher.randomness import mix
from dreamteacher.runfiles import atomic_json
from dreamteacher.runtime import autocast, resolve_precision


def build_cache(
    teacher,
    dataset,
    out: str | Path,
    draws: int = 4,
    batch_size: int = 32,
    device: str | torch.device = "cpu",
    seed: int = 0,
    meta: dict | None = None,
    progress=None,
    precision: str = "auto",
    num_workers: int = 0,
    save_every: int = 50,
    resume: bool = False,
) -> Path:
    """Encode every image of `dataset` (an ImageFolder) `draws` times; returns the folder.
    `precision`: auto | fp32 | bf16, as in pretrain (auto = bf16 autocast on CUDA), so the
    stored targets are the ones online encoding on that device would give (meta.json
    records which); `num_workers` decode images; `meta`: more settings to record and check
    (teacher, t, strides, image size).

    The cache is written into `out`.partial and renamed when complete. Every `save_every`
    batches the files written so far are synced and progress.json records how many images
    they hold; `resume=True` continues an interrupted build from there. With the same
    settings on the same device the files come out byte-identical to an uninterrupted
    build's; the settings are checked, the device is not."""
    device = torch.device(device)
    precision = resolve_precision(device, precision)  # checked before anything is written
    out = Path(out)
    n = len(dataset)
    if n == 0:
        raise UserError(f"{dataset.root} holds no images to encode; point --data at images")
    names = [str(p.relative_to(dataset.root)) for p in dataset.files]
    settings = {
        "images": n,
        "draws": draws,
        "seed": seed,
        "precision": precision,
        "batch_size": batch_size,  # batches of another size could round differently
        **(meta or {}),
        "files_sha256": hashlib.sha256("\n".join(names).encode()).hexdigest(),
    }
    settings = json.loads(json.dumps(settings))  # as it reads back from JSON
    if (out / "meta.json").exists():
        saved = _read_json(out / "meta.json", f"delete {out} and build the cache again")
        if resume and _first_difference(saved, settings) is None:
            print(f"{out} is already a complete feature cache; nothing to resume")
            return out
        raise UserError(f"{out} already holds a feature cache; choose another --out or delete it")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):  # never replaced: not ours
        raise UserError(f"{out} exists and is not a feature cache; choose another --out")
    tmp = out.with_name(out.name + ".partial")
    started = (tmp / "progress.json").exists() or (tmp / "meta.json").exists()
    if started and not resume:
        raise UserError(
            f"{tmp} holds an interrupted build of this cache; pass --resume to continue it, "
            "or delete it to start over"
        )
    if started and (tmp / "meta.json").exists():  # complete, stopped before the rename
        _check_settings(_read_json(tmp / "meta.json", f"delete {tmp}"), settings, tmp)
        tmp.rename(out)
        print(f"{tmp} was complete; renamed to {out}")
        return out
    record = _resume_point(tmp, settings) if started else None
    if record is None:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    done = record["done"] if record else 0
    shapes = [tuple(c) for c in record["levels"]] if record else []
    spent = record["build_s"] if record else 0.0
    rest = dataset if not done else torch.utils.data.Subset(dataset, range(done, n))
    loader = torch.utils.data.DataLoader(
        rest, batch_size, num_workers=num_workers, pin_memory=device.type == "cuda"
    )
    files: list = []  # one open level file each, written in order, batch after batch
    blocks: list[np.ndarray] = []  # B, K, C_l, h_l, w_l float16: one batch's draws
    t0 = time.time()
    s = done  # index of the batch's first image
    with contextlib.ExitStack() as opened:

        def open_files() -> list:
            return [
                opened.enter_context(_open_level(tmp / f"level{lvl}.npy", (n, draws, *c), done))
                for lvl, c in enumerate(shapes)
            ]

        first = done // batch_size + 1  # batches are numbered as in an uninterrupted build
        for batch, x in enumerate(progress(loader) if progress else loader, start=first):
            x = x.to(device, non_blocking=True)  # B, 3, H, W
            idx = range(s, s + len(x))
            for j in range(draws):
                xj = x.flip(-1) if j % 2 else x
                keys = [mix(seed, 99991, i, j) for i in idx]
                with autocast(device, precision):
                    feats = teacher(xj, keys)
                if not files:  # opened at the first batch, whose levels give their shapes
                    got = [tuple(f.shape[1:]) for f in feats]
                    if done and got != shapes:  # checked before the files are touched
                        raise UserError(
                            f"{tmp} holds levels {shapes}, the teacher now gives {got}; "
                            "resume with the same teacher settings, or delete it to start over"
                        )
                    shapes = got
                    files = open_files()
                    blocks = [np.empty((len(x), draws, *c), np.float16) for c in shapes]
                    if done:
                        print(f"resumed {tmp} at image {done} of {n}")
                for b, f in zip(blocks, feats, strict=True):
                    b[: len(x), j] = f.to(torch.float16).cpu().numpy()
            for fh, b in zip(files, blocks, strict=True):
                fh.write(b[: len(x)].data)  # images s .. s+B-1: the next block of the file
            s += len(x)
            if save_every > 0 and batch % save_every == 0 and s < n:
                _sync(files)  # the files hold at least what progress.json says
                now = {"done": s, "levels": shapes, "build_s": spent + time.time() - t0}
                atomic_json(now | {"settings": settings}, tmp / "progress.json")
        _sync(files)  # on disk before meta.json marks the cache complete
    info = {
        **settings,
        "build_s": spent + time.time() - t0,
        "levels": [list(c) for c in shapes],
        "bytes_per_image": int(sum(np.prod(c) for c in shapes) * draws * 2),
        "files": names,
    }
    atomic_json(info, tmp / "meta.json")  # marks the cache complete
    (tmp / "progress.json").unlink(missing_ok=True)
    try:
        tmp.replace(out)  # onto nothing, or onto an empty folder (a non-empty one was refused)
    except OSError:
        raise UserError(
            f"{out} is no longer empty, so the complete cache stays in {tmp}; "
            f"move it to another folder and pass that as feature_cache"
        ) from None
    return out


def _sync(files: list) -> None:
    for f in files:
        f.flush()
        os.fsync(f.fileno())


def _read_json(path: Path, fix: str) -> dict:
    try:
        d = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise UserError(f"{path} cannot be read ({e}); {fix}") from None
    if not isinstance(d, dict):
        raise UserError(f"{path} is not a JSON object; {fix}")
    return d


def _first_difference(saved: dict, settings: dict) -> str | None:
    """The first of `settings` whose value `saved` does not hold, or None."""
    return next((k for k, v in settings.items() if saved.get(k) != v), None)


def _check_settings(saved: dict, settings: dict, tmp: Path) -> None:
    """Refuse to continue a build started with other settings, naming the first that differs."""
    k = _first_difference(saved, settings)
    if k is not None:
        v = settings[k]
        what = "another image list" if k == "files_sha256" else f"{k}={saved.get(k)!r}, now {v!r}"
        raise UserError(
            f"{tmp} was started with {what}; resume with the same settings, or delete it to "
            "start over"
        )


def _resume_point(tmp: Path, settings: dict) -> dict:
    """The last progress record of the interrupted build in `tmp`: done (images its level
    files hold), levels (their shapes), build_s (seconds spent), settings (checked)."""
    record = _read_json(tmp / "progress.json", f"delete {tmp} to start over")
    if not {"done", "levels", "build_s", "settings"} <= record.keys():
        raise UserError(f"{tmp / 'progress.json'} is damaged; delete {tmp} to start over")
    _check_settings(record["settings"], settings, tmp)
    return record


def _open_level(path: Path, shape: tuple[int, ...], done: int = 0):
    """A level file of a float16 array of `shape`, open for the array's bytes to be appended
    in C order: a new file holding the .npy header only, or (done > 0) the file of an
    interrupted build, cut back to its first `done` images."""
    if not done:
        f = open(path, "wb")  # noqa: SIM115 (closed by the caller)
        header = {"descr": np.lib.format.dtype_to_descr(np.dtype(np.float16))}
        np.lib.format.write_array_header_1_0(f, header | {"fortran_order": False, "shape": shape})
        return f
    fix = f"delete {path.parent} to start over"
    end = _data_offset(path, shape, complete=False, fix=fix) + done * int(np.prod(shape[1:])) * 2
    if path.stat().st_size < end:
        raise UserError(f"{path} is shorter than its progress record; {fix}")
    f = open(path, "r+b")  # noqa: SIM115 (closed by the caller)
    f.truncate(end)  # what was written after the record goes
    f.seek(end)
    return f


def random_cache(
    out: str | Path, images: int, draws: int, levels: list[tuple[int, int, int]], seed: int = 0
) -> Path:
    """A cache folder in the real layout holding random values (no teacher, no images; its
    file list is empty): for benchmarks and tests of the read side."""
    out = Path(out)
    out.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for lvl, s in enumerate(levels):
        with _open_level(out / f"level{lvl}.npy", (images, draws, *s)) as f:
            for _ in range(images):
                f.write(rng.standard_normal((draws, *s), dtype=np.float32).astype(np.float16).data)
    meta = {
        "images": images,
        "draws": draws,
        "levels": [list(s) for s in levels],
        "bytes_per_image": int(sum(np.prod(s) for s in levels) * draws * 2),
        "files": [],
    }
    (out / "meta.json").write_text(json.dumps(meta))
    return out


def pick_draw(key: int, draws: int) -> int:
    """The cached draw that the sample with this (seed, step, index) key reads; odd = flipped."""
    return mix(key, 5) % draws


class FeatureCache:
    """Read side: `read(i, j)` -> draw j of image i, one # C_l, h_l, w_l float16 array per
    level. Each draw is one contiguous block of each level file, read with a positioned read
    into a fresh array: unlike reading through a memory map, the pages read are not mapped
    into the process, so its RSS does not grow with the part of the cache it has read (the
    OS page cache still keeps what fits). Files are opened lazily in each process and are
    not pickled, so a DataLoader worker (forked or spawned) opens its own: a file inherited
    through fork would share its read offset with the parent."""

    def __init__(self, path: str | Path, dataset=None):
        self.path = Path(path)
        meta = self.path / "meta.json"
        if not meta.exists():
            raise UserError(
                f"{self.path} is not a complete feature cache (no meta.json); run "
                "`dreamteacher cache-features` again"
            )
        self.meta = _read_json(meta, "run `dreamteacher cache-features` again")
        self.draws = int(self.meta["draws"])
        self.levels = [tuple(int(d) for d in s) for s in self.meta["levels"]]
        self.channels = [s[0] for s in self.levels]
        n = int(self.meta["images"])
        self.offsets = [
            _data_offset(self._level(lvl), (n, self.draws, *s)) for lvl, s in enumerate(self.levels)
        ]
        self._files: list | None = None  # opened by the process that reads (self._pid)
        self._pid = os.getpid()
        if dataset is not None:
            files = [str(p.relative_to(dataset.root)) for p in dataset.files]
            if files != self.meta["files"]:
                raise UserError(
                    f"feature cache {self.path} was built for another set of images "
                    f"({len(self.meta['files'])} vs {len(files)} now); rebuild it"
                )

    def _level(self, lvl: int) -> Path:
        return self.path / f"level{lvl}.npy"

    def __getstate__(self) -> dict:
        return self.__dict__ | {"_files": None}

    def read(self, i: int, j: int) -> list[np.ndarray]:
        if self._files is None or self._pid != os.getpid():  # a forked worker: own offsets
            self._pid = os.getpid()
            self._files = [open(self._level(lvl), "rb") for lvl in range(len(self.levels))]  # noqa: SIM115
        out = []
        for f, start, shape in zip(self._files, self.offsets, self.levels, strict=True):
            a = np.empty(shape, np.float16)
            f.seek(start + (i * self.draws + j) * a.nbytes)
            if f.readinto(a) != a.nbytes:
                raise UserError(f"feature cache {self.path} is truncated; rebuild it")
            out.append(a)
        return out


def _data_offset(
    npy: Path, shape: tuple[int, ...], complete: bool = True, fix: str = "rebuild the feature cache"
) -> int:
    """Where the array data of a level file starts (after its .npy header), checking that it
    holds float16 draws of this shape (N, K, C, h, w) and, if `complete`, all their bytes."""
    fmt = np.lib.format
    try:
        with open(npy, "rb") as f:
            version = fmt.read_magic(f)
            read = fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0
            got, fortran, dtype = read(f)
            start = f.tell()
    except (OSError, ValueError) as e:
        raise UserError(f"{npy} cannot be read ({e}); {fix}") from None
    if dtype != np.float16 or got != shape or fortran:
        raise UserError(f"{npy} holds {dtype} {got}, not float16 {shape}; {fix}")
    if complete and npy.stat().st_size < start + int(np.prod(shape)) * 2:
        raise UserError(f"{npy} is truncated; {fix}")
    return start


class CachedTargets(torch.utils.data.Dataset):
    """Training items with their cached targets, for `StepTagged` batch samplers: item
    (step, i) -> (i, x, *targets), x # 3, H, W flipped like the draw it reads and targets
    # C_l, h_l, w_l float16, the draw picked by the key mix(seed, step, i) that online
    encoding would use for that sample."""

    def __init__(self, dataset, cache: FeatureCache, seed: int):
        self.dataset, self.cache, self.seed = dataset, cache, seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]):
        step, i = key
        j = pick_draw(mix(self.seed, step, i), self.cache.draws)
        x = self.dataset[i]  # 3, H, W
        if j % 2:
            x = x.flip(-1)
        return (i, x, *(torch.from_numpy(a) for a in self.cache.read(i, j)))
