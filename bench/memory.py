"""Peak RSS (and GPU memory) of `pretrain` against the dataset's size (must not grow with it).

    python bench/memory.py [--sizes 1000 10000] [--steps 20] [--device cpu|cuda]
                           [--feature-cache K] [--workers N] [--out FILE]

For each size: generate that many 32x32 scenes, run `dreamteacher pretrain` for a fixed
number of steps in a fresh process (random-init tiny teacher, resnet18), and read that
process's own peak RSS (getrusage) at exit, and the largest peak of its DataLoader workers
(they decode the images and read the cache; `--workers`, default the run's own choice: none
on CPU, up to 8 on CUDA); on CUDA also torch's peak allocated and reserved GPU memory.
With `--feature-cache K`, `dreamteacher cache-features draws=K` first encodes every image K
times in a fresh process of its own (its peak RSS, time and the cache's size are reported
too), and pretrain reads its targets from that cache.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml

CHILD = """
import resource, sys
from dreamteacher.cli import main
code = main(sys.argv[1:])
print("PEAK_RSS_KB", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
import torch
if torch.cuda.is_initialized():
    print("PEAK_GPU_BYTES", torch.cuda.max_memory_allocated(), torch.cuda.max_memory_reserved())
sys.exit(code)
"""


def make_teacher(out: Path, size: int) -> Path:
    from dreamteacher.teachers import create_teacher

    torch.manual_seed(0)
    t = create_teacher("diffusion", image_size=[size, size], preset="tiny")
    t.unet.save_pretrained(out / "unet")
    t.scheduler.save_pretrained(out / "scheduler")
    (out / "teacher.json").write_text(json.dumps({"type": "diffusion", "image_size": [size] * 2}))
    return out


def children_peak_kb(pid: int) -> int:
    """The largest peak RSS (VmHWM) among the live child processes of `pid` (its DataLoader
    workers), from /proc; 0 where there are none or no /proc."""
    peak = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) != pid:  # field 4: ppid
                continue
            for line in (stat.parent / "status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    peak = max(peak, int(line.split()[1]))
        except (OSError, IndexError, ValueError):  # the process ended meanwhile
            continue
    return peak


def run_child(args: list[str]) -> dict[str, list[str]]:
    """Run the CLI with `args` in a fresh process; its PEAK_* lines, and PEAK_WORKER_RSS_KB:
    its children's (the loader workers') largest peak RSS, read every 0.2 s while it runs."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        p = subprocess.Popen(
            [sys.executable, "-c", CHILD, *args], stdout=out, stderr=err, text=True
        )
        workers = 0
        while p.poll() is None:
            workers = max(workers, children_peak_kb(p.pid))
            time.sleep(0.2)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    if p.returncode != 0:
        raise RuntimeError(stderr[-2000:])
    lines = [x.split() for x in stdout.splitlines() if x.startswith("PEAK_")]
    return {x[0]: x[1:] for x in lines} | {"PEAK_WORKER_RSS_KB": [str(workers)]}


def measure(
    n: int,
    steps: int,
    tmp: Path,
    teacher: Path,
    size: int,
    device: str = "cpu",
    draws: int = 0,
    workers: int = -1,
) -> dict:
    from dreamteacher.data.synthetic import make_scenes

    t = time.time()
    data = make_scenes(tmp / f"data_{n}", n=n, image_size=(size, size), seed=0)
    gen = time.time() - t
    row: dict = {"images": n, "steps": steps, "device": device, "generate_s": gen}
    row["num_workers"] = workers  # -1: the run's default
    extra = []
    if draws:
        cache = tmp / f"cache_{n}"
        t = time.time()
        peaks = run_child(
            ["cache-features", "--data", str(data / "images"), "--teacher", str(teacher)]
            + ["--out", str(cache), "--device", device, f"draws={draws}"]
            + [f"num_workers={workers}"]
        )
        row |= {
            "cache_draws": draws,
            "cache_peak_rss_mb": int(peaks["PEAK_RSS_KB"][0]) / 1024,
            "cache_s": time.time() - t,
            "cache_mb": sum(f.stat().st_size for f in cache.iterdir()) / 1e6,
        }
        extra = [f"feature_cache={cache}"]
    args = [
        "pretrain",
        "--data",
        str(data / "images"),
        "--teacher",
        str(teacher),
        "--backbone",
        "resnet18",
        "--out",
        str(tmp / f"run_{n}"),
        "--batch-size",
        "16",
        "--device",
        device,
        f"max_steps={steps}",
        "epochs=1000",
        "warmup_epochs=0",
        f"num_workers={workers}",
        *extra,
    ]
    t = time.time()
    lines = run_child(args)
    row |= {"peak_rss_mb": int(lines["PEAK_RSS_KB"][0]) / 1024, "run_s": time.time() - t}
    row["worker_peak_rss_mb"] = int(lines["PEAK_WORKER_RSS_KB"][0]) / 1024  # 0: no workers
    saved = yaml.safe_load((tmp / f"run_{n}" / "config.yaml").read_text())
    row["feature_cache_read"] = bool(saved.get("feature_cache"))  # as the run resolved it
    if "PEAK_GPU_BYTES" in lines:
        alloc, reserved = (int(v) / 2**20 for v in lines["PEAK_GPU_BYTES"])
        row |= {"peak_gpu_allocated_mb": alloc, "peak_gpu_reserved_mb": reserved}
    return row


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--image-size", type=int, default=32)
    ap.add_argument("--device", default="cpu", help="cpu | cuda (also reports GPU memory)")
    ap.add_argument(
        "--feature-cache",
        type=int,
        default=0,
        metavar="K",
        help="build a cache of K encodings per image first and pretrain from it (0: online)",
    )
    ap.add_argument(
        "--workers", type=int, default=-1, help="DataLoader workers (-1: the run's default)"
    )
    ap.add_argument("--out", default="bench/results/memory.json")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        teacher = make_teacher(tmp / "teacher", args.image_size)
        rows = [
            measure(
                n,
                args.steps,
                tmp,
                teacher,
                args.image_size,
                args.device,
                args.feature_cache,
                args.workers,
            )
            for n in args.sizes
        ]
    for r in rows:
        more = ""
        if "peak_gpu_allocated_mb" in r:
            more = (
                f", GPU peak {r['peak_gpu_allocated_mb']:.1f} MB allocated "
                f"({r['peak_gpu_reserved_mb']:.1f} MB reserved)"
            )
        if "cache_draws" in r:
            print(
                f"{r['images']:>7} images: cache-features draws={r['cache_draws']}: peak RSS "
                f"{r['cache_peak_rss_mb']:7.1f} MB ({r['cache_mb']:.1f} MB written in "
                f"{r['cache_s']:.1f} s)"
            )
        mode = " from the cache" if "cache_draws" in r else ""
        if r["worker_peak_rss_mb"]:
            more += f", largest worker peak RSS {r['worker_peak_rss_mb']:.1f} MB"
        print(
            f"{r['images']:>7} images: pretrain{mode}: peak RSS {r['peak_rss_mb']:7.1f} MB{more} "
            f"({r['steps']} steps in {r['run_s']:.1f} s on {r['device']})"
        )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(rows, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
