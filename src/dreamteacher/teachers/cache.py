"""Teacher-feature cache: K stochastic encodings per image written once (fp16, memory-mapped
.npy per level), read back during pretraining instead of running the teacher.

Draw j of image i is encoded with the image flipped iff j is odd (so K >= 2 covers both
orientations) and with t and noise keyed by (seed, i, j). During pretraining each sample
picks one of its K draws from its (seed, step, index) key, and the student sees the image
flipped the same way as that draw. Layout of a cache folder:

    meta.json          N, K, levels (channels, h, w), image list, teacher, t, image size
    level{l}.npy       # N, K, C_l, h_l, w_l  float16 (np.load(..., mmap_mode="r"))
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from dreamteacher.engine.randomness import mix
from dreamteacher.errors import UserError


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
) -> Path:
    """Encode every image of `dataset` (an ImageFolder) `draws` times; returns the folder."""
    out = Path(out)
    if (out / "meta.json").exists():
        raise UserError(f"{out} already holds a feature cache; choose another --out or delete it")
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    n = len(dataset)
    device = torch.device(device)
    x0 = dataset[0].unsqueeze(0).to(device)
    shapes = [tuple(f.shape[1:]) for f in teacher(x0, [0])]
    arrays = [
        np.lib.format.open_memmap(
            tmp / f"level{lvl}.npy", mode="w+", dtype=np.float16, shape=(n, draws, *s)
        )
        for lvl, s in enumerate(shapes)
    ]
    t0 = time.time()
    starts = range(0, n, batch_size)
    for s in progress(starts) if progress else starts:
        idx = list(range(s, min(n, s + batch_size)))
        x = torch.stack([dataset[i] for i in idx]).to(device)  # B, 3, H, W
        for j in range(draws):
            xj = x.flip(-1) if j % 2 else x
            keys = [mix(seed, 99991, i, j) for i in idx]
            for lvl, f in enumerate(teacher(xj, keys)):
                arrays[lvl][idx[0] : idx[-1] + 1, j] = f.float().cpu().numpy().astype(np.float16)
    for a in arrays:
        a.flush()
    info = {
        "images": n,
        "draws": draws,
        "seed": seed,
        "build_s": time.time() - t0,
        "levels": [list(s) for s in shapes],
        "bytes_per_image": int(sum(np.prod(s) for s in shapes) * draws * 2),
        "files": [str(p.relative_to(dataset.root)) for p in dataset.files],
        **(meta or {}),
    }
    (tmp / "meta.json").write_text(json.dumps(info, indent=1))  # written last: marks complete
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out


class FeatureCache:
    """Read side: `lookup(indices, keys)` -> (list of # B, C_l, h_l, w_l tensors, flips # B)."""

    def __init__(self, path: str | Path, dataset=None):
        self.path = Path(path)
        meta = self.path / "meta.json"
        if not meta.exists():
            raise UserError(
                f"{self.path} is not a complete feature cache (no meta.json); run "
                "`dreamteacher cache-features` again"
            )
        self.meta = json.loads(meta.read_text())
        self.draws = int(self.meta["draws"])
        self.arrays = [
            np.load(self.path / f"level{lvl}.npy", mmap_mode="r")
            for lvl in range(len(self.meta["levels"]))
        ]
        self.channels = [int(s[0]) for s in self.meta["levels"]]
        if dataset is not None:
            files = [str(p.relative_to(dataset.root)) for p in dataset.files]
            if files != self.meta["files"]:
                raise UserError(
                    f"feature cache {self.path} was built for another set of images "
                    f"({len(self.meta['files'])} vs {len(files)} now); rebuild it"
                )

    def lookup(self, indices: torch.Tensor, keys: list[int]):
        j = np.array([mix(k, 5) % self.draws for k in keys])
        i = indices.numpy()
        feats = [torch.from_numpy(np.ascontiguousarray(a[i, j])).float() for a in self.arrays]
        flips = torch.from_numpy(j % 2 == 1)
        return feats, flips
