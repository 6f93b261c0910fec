"""Peak RSS of the DDPM-seg baseline against the number of labelled images (it must not grow).

    python bench/ddpm_seg_memory.py [--data SEGDIR] [--teacher RUN] [--labels 10 40]
                                    [--steps 20] [--image-size H W] [--out FILE.json]

For each N: run `dreamteacher train-ddpm-seg --labels N` for a fixed number of steps in a
fresh process and read that process's own peak RSS (getrusage) at exit. Also printed: the RAM
the reference implementation's approach would need to hold every labelled pixel's descriptor
(N x H x W x D float32), the thing this implementation avoids. Without --data, 60 generated
32x32 scenes; without --teacher, a random-init tiny teacher.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from memory import CHILD, make_teacher  # bench/memory.py


def measure(data: Path, teacher: Path, n: int, steps: int, size: list[int], out: Path) -> dict:
    args = [
        "train-ddpm-seg",
        *("--data", str(data), "--teacher", str(teacher), "--labels", str(n)),
        *("--out", str(out), "--steps", str(steps), "--device", "cpu"),
        *("--image-size", str(size[0]), str(size[1])),
        "eval_split=val",
    ]
    t = time.time()
    p = subprocess.run([sys.executable, "-c", CHILD, *args], capture_output=True, text=True)
    if p.returncode != 0:
        raise RuntimeError(p.stderr[-2000:])
    kb = int(next(x for x in p.stdout.splitlines() if x.startswith("PEAK_RSS_KB")).split()[1])
    dim = next(
        int(x.split(" MLPs on ")[1].split("-dim")[0])
        for x in p.stdout.splitlines()
        if " MLPs on " in x
    )
    return {
        "labels": n,
        "steps": steps,
        "image_size": size,
        "descriptor_dim": dim,
        "peak_rss_mb": kb / 1024,
        "all_pixels_in_ram_mb": n * size[0] * size[1] * dim * 4 / 2**20,
        "miou": json.loads((out / "metrics.json").read_text())["miou"],
        "run_s": time.time() - t,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--data")
    ap.add_argument("--teacher")
    ap.add_argument("--labels", type=int, nargs="+", default=[10, 40])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--image-size", type=int, nargs=2, default=[32, 32])
    ap.add_argument("--out", default="bench/results/ddpm_seg_memory.json")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = Path(args.data) if args.data else None
        if data is None:
            from dreamteacher.data.synthetic import make_scenes

            data = make_scenes(
                tmp / "scenes",
                n=60,
                image_size=args.image_size,
                seed=0,
                splits={"train": 5 / 6, "val": 1 / 6},
            )
        teacher = Path(args.teacher) if args.teacher else None
        if teacher is None:
            assert args.image_size[0] == args.image_size[1], "a generated teacher is square"
            teacher = make_teacher(tmp / "teacher", args.image_size[0])
        rows = [
            measure(data, teacher, n, args.steps, args.image_size, tmp / f"run_{n}")
            for n in args.labels
        ]
    for r in rows:
        print(
            f"{r['labels']:>4} labelled images: peak RSS {r['peak_rss_mb']:7.1f} MB "
            f"({r['steps']} steps in {r['run_s']:.1f} s; holding every pixel's "
            f"{r['descriptor_dim']}-dim descriptor would take {r['all_pixels_in_ram_mb']:.0f} MB)"
        )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(rows, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
