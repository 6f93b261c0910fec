"""Read side of the teacher-feature cache: how fast the pretrain loader delivers batches of
cached targets, and whether reading the whole cache grows the reader's resident memory.

    python bench/cache_read.py [--images 128] [--draws 2] [--batch 64] [--workers 0 2]
        [--levels 256x64x80 256x32x40 512x16x20 512x8x10] [--rounds 12] [--out FILE.json]

The default levels are those of the base UNet's taps at 256x320 (the GPU throughput bench):
3.6 MB of fp16 targets per draw. A cache of random values in the real layout is written to a
temporary folder (or --dir), then, for each worker count, the loader that pretrain uses
(CachedTargets over StepTagged batches; images are a constant tensor, so only the cache is
read) is iterated and the median interval between batches is kept. The loader goes over the
cache several times, so these intervals are reads from the OS page cache (memory), not from
the disk. The disk is in `full_pass_mb_per_s`: one process reads every draw of every image
once with the cache's files dropped from the page cache first (`cold`, posix_fadvise
DONTNEED after fsync; Linux), then once more (`warm`). Last, one process reads the whole
cache again and its RSS (VmRSS, Linux) is compared before and after.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from dreamteacher.data import ResumableBatchSampler, StepTagged
from dreamteacher.teachers.cache import CachedTargets, FeatureCache, random_cache


class _Blank(torch.utils.data.Dataset):
    """n constant images: the loader's time is the cache's."""

    def __init__(self, n: int, h: int, w: int):
        self.n, self.x = n, torch.zeros(3, h, w)

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.x


def rss_mb() -> float | None:
    status = Path("/proc/self/status")
    if not status.exists():
        return None
    for line in status.read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return None


def drop_from_page_cache(folder: Path) -> bool:
    """Ask the OS to forget the cached pages of every file in `folder` (written back first);
    False where posix_fadvise is missing (then a "cold" read may come from memory)."""
    if not hasattr(os, "posix_fadvise"):
        return False
    for f in folder.iterdir():
        fd = os.open(f, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
    return True


def full_pass_s(path: Path, images: int, draws: int) -> float:
    """Seconds for a fresh reader to read every draw of every image once, in order."""
    reader, t = FeatureCache(path), time.perf_counter()
    for i in range(images):
        for j in range(draws):
            reader.read(i, j)
    return time.perf_counter() - t


def loader_interval(cache: FeatureCache, images: int, batch: int, workers: int, rounds: int):
    """Median seconds between batches of the pretrain loader (after 2 warm-up batches)."""
    c, h, w = cache.levels[0]
    items = CachedTargets(_Blank(images, 4 * h, 4 * w), cache, seed=0)
    sampler = StepTagged(ResumableBatchSampler(images, batch, seed=0, total_steps=rounds + 2))
    loader = torch.utils.data.DataLoader(items, batch_sampler=sampler, num_workers=workers)
    times, t = [], time.perf_counter()
    for _ in loader:
        now = time.perf_counter()
        times.append(now - t)
        t = now
    return float(np.median(times[2:]))


def run(
    images: int = 128,
    draws: int = 2,
    batch: int = 64,
    levels: list[tuple[int, int, int]] | None = None,
    workers: list[int] | None = None,
    rounds: int = 12,
    folder: str | None = None,
) -> dict:
    levels = levels or [(256, 64, 80), (256, 32, 40), (512, 16, 20), (512, 8, 10)]
    workers = [0, 2] if workers is None else workers
    with tempfile.TemporaryDirectory(dir=folder) as tmp:
        path = random_cache(Path(tmp) / "cache", images, draws, levels)
        cache = FeatureCache(path)
        per_draw = cache.meta["bytes_per_image"] / draws
        res: dict = {
            "host": f"{platform.machine()}, {torch.get_num_threads()} threads",
            "settings": {"images": images, "draws": draws, "batch": batch, "levels": levels},
            "cache_mb": images * draws * per_draw / 1e6,
            "batch_mb": batch * per_draw / 1e6,
            "seconds_per_batch": {},
        }
        res["page_cache_dropped"] = drop_from_page_cache(path)
        passes = {"cold": full_pass_s(path, images, draws)}
        passes["warm"] = full_pass_s(path, images, draws)
        res["full_pass_mb_per_s"] = {k: res["cache_mb"] / v for k, v in passes.items()}
        for w in workers:
            res["seconds_per_batch"][str(w)] = loader_interval(cache, images, batch, w, rounds)
        res["batch_mb_per_s"] = {
            k: res["batch_mb"] / v for k, v in res["seconds_per_batch"].items()
        }
        reader = FeatureCache(path)
        reader.read(0, 0)
        before = rss_mb()
        for i in range(images):
            for j in range(draws):
                reader.read(i, j)
        after = rss_mb()
        res["rss_mb"] = None if before is None else {"before": before, "after": after}
    return res


def format_result(r: dict) -> str:
    s = r["settings"]
    lines = [
        f"host: {r['host']}; cache {r['cache_mb']:.1f} MB ({s['images']} images x "
        f"{s['draws']} draws), batch {s['batch']} = {r['batch_mb']:.1f} MB of fp16 targets"
    ]
    fp = r["full_pass_mb_per_s"]
    cold = "cold" if r["page_cache_dropped"] else "cold (page cache not dropped: no fadvise)"
    lines.append(
        f"  one pass over the cache: {cold} {fp['cold']:.0f} MB/s, warm {fp['warm']:.0f} MB/s"
    )
    for k, v in r["seconds_per_batch"].items():
        lines.append(
            f"  {k} workers: a batch every {v * 1e3:7.1f} ms ({r['batch_mb_per_s'][k]:.0f} MB/s"
            ", page cache)"
        )
    if r["rss_mb"]:
        m = r["rss_mb"]
        lines.append(
            f"  RSS reading the whole cache: {m['before']:.0f} -> {m['after']:.0f} MB "
            f"({m['after'] - m['before']:+.0f} MB for {r['cache_mb']:.0f} MB read)"
        )
    return "\n".join(lines)


def _level(text: str) -> tuple[int, int, int]:
    c, h, w = (int(v) for v in text.split("x"))
    return c, h, w


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--images", type=int, default=128)
    ap.add_argument("--draws", type=int, default=2)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--levels", type=_level, nargs="+", help="CxHxW per level")
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    ap.add_argument("--rounds", type=int, default=12)
    ap.add_argument("--dir", default=None, help="where the temporary cache goes")
    ap.add_argument("--out", default="bench/results/cache_read.json")
    args = ap.parse_args(argv)
    r = run(args.images, args.draws, args.batch, args.levels, args.workers, args.rounds, args.dir)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(r, indent=2) + "\n")
    print(format_result(r))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
