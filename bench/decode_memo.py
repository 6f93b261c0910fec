"""What decoding each image once saves (data.folder.Memo): reads and whole fine-tunings.

    python bench/decode_memo.py [--data DIR] [--quick] [--out FILE.json]

1. Reads: seconds per item of the labelled training set (N images with their masks) and of
   the unlabeled pretraining images, in a first epoch (decoding) and a second one, with the
   memo and without it (MEMO_BYTES = 0: every read decodes).
2. A benchmark evaluation cell (`finetune` at the cpu profile's settings: resnet18 from
   scratch, N = 46, 200 steps of batch 8, 64x80, scored on val) with and without the memo, in
   interleaved rounds (median wall time, and CPU time of all threads: less moved by other
   load on the host); the mIoU of every run must be equal (the memo returns the same
   bits).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from throughput import device_label  # bench/ is the script's folder

import dreamteacher.data.folder as folder_mod
from dreamteacher import api
from dreamteacher.data import MaskFolder, select_labeled
from dreamteacher.data.synthetic import make_scenes
from dreamteacher.data.unlabeled import unlabeled_images

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = {
    "cpu": {"image_size": [64, 80], "labels": 46, "steps": 200, "batch": 8, "rounds": 3},
    "quick": {"image_size": [32, 48], "labels": 6, "steps": 4, "batch": 2, "rounds": 1},
}


def _epoch(ds) -> float:
    t = time.perf_counter()
    for i in range(len(ds)):
        ds[i]
    return (time.perf_counter() - t) / len(ds)


def reads(data: Path, s: dict) -> dict:
    """Seconds per item, epochs 1 and 2, memo on and off, for the two kinds of dataset."""
    folder = MaskFolder(data)
    labelled = select_labeled(folder.splits["train"], s["labels"], 0)
    splits = [k for k in folder.splits if k != "test"]
    out = {}
    for memo, limit in (("memo", folder_mod.MEMO_BYTES), ("no_memo", 0)):
        saved, folder_mod.MEMO_BYTES = folder_mod.MEMO_BYTES, limit
        try:
            for name, ds in (
                ("labelled", folder.dataset(labelled, s["image_size"])),
                ("unlabeled", unlabeled_images(data, s["image_size"], splits=splits)),
            ):
                out[f"{name}_{memo}"] = {
                    "items": len(ds), "epoch1_s_per_item": _epoch(ds),
                    "epoch2_s_per_item": _epoch(ds), "memo_bytes": ds.memo.bytes,
                }  # fmt: skip
        finally:
            folder_mod.MEMO_BYTES = saved
    return out


def finetunes(data: Path, s: dict, tmp: Path) -> dict:
    """Wall time and mIoU of one evaluation cell, memo on and off, interleaved rounds."""
    kw = {
        "data": str(data), "image_size": s["image_size"], "device": "cpu",
        "backbone": "resnet18", "weights": "scratch", "labels": s["labels"], "seed": 0,
        "steps": s["steps"], "batch_size": s["batch"], "head_channels": 128,
        "warmup_steps": min(50, s["steps"] // 10), "eval_batch_size": 32, "eval_split": "val",
        "report": False,
    }  # fmt: skip
    runs: dict[str, list] = {"memo": [], "no_memo": []}
    for r in range(s["rounds"]):
        for memo, limit in (("memo", folder_mod.MEMO_BYTES), ("no_memo", 0)):
            saved, folder_mod.MEMO_BYTES = folder_mod.MEMO_BYTES, limit
            try:
                t, c = time.perf_counter(), time.process_time()
                m = api.finetune(out=str(tmp / f"{memo}-{r}"), **kw)
                wall, cpu = time.perf_counter() - t, time.process_time() - c
                runs[memo].append({"wall_s": wall, "cpu_s": cpu, "miou": m["miou"]})
            finally:
                folder_mod.MEMO_BYTES = saved
    med = {k: statistics.median(x["wall_s"] for x in v) for k, v in runs.items()}
    cpu = {k: statistics.median(x["cpu_s"] for x in v) for k, v in runs.items()}
    mious = {x["miou"] for v in runs.values() for x in v}
    return {"runs": runs, "median_wall_s": med, "speedup": med["no_memo"] / med["memo"],
            "median_cpu_s": cpu, "cpu_speedup": cpu["no_memo"] / cpu["memo"],
            "same_miou": len(mious) == 1}  # fmt: skip


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "datasets" / "camvid"))
    ap.add_argument("--quick", action="store_true", help="generated scenes, tiny sizes")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "decode_memo_cpu.json"))
    a = ap.parse_args(argv)
    s = SETTINGS["quick" if a.quick else "cpu"]
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(a.data)
        if a.quick:
            data = make_scenes(Path(tmp) / "scenes", n=30, image_size=(40, 60), seed=0)
        res = {
            "device": device_label(torch.device("cpu")), "settings": s, "data": str(a.data),
            "reads": reads(data, s), "finetune": finetunes(data, s, Path(tmp)),
        }  # fmt: skip
    for name, r in res["reads"].items():
        print(f"  {name:18s} {r['items']:4d} items  epoch 1 {r['epoch1_s_per_item'] * 1e3:6.2f}"
              f" ms/item  epoch 2 {r['epoch2_s_per_item'] * 1e3:6.2f} ms/item"
              f"  kept {r['memo_bytes'] / 1e6:.1f} MB")  # fmt: skip
    f = res["finetune"]
    w, c = f["median_wall_s"], f["median_cpu_s"]
    print(
        f"  finetune cell: {w['memo']:.1f} s with the memo, {w['no_memo']:.1f} s without: "
        f"{f['speedup']:.2f}x; CPU time of all threads {c['memo']:.1f} s and "
        f"{c['no_memo']:.1f} s: {f['cpu_speedup']:.2f}x; same mIoU: {f['same_miou']}"
    )
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(res, indent=2))
    print(f"wrote {a.out}")
    return res


if __name__ == "__main__":
    sys.exit(0 if main()["finetune"]["same_miou"] else 1)
