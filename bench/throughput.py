"""Throughput of a full pretrain step and of its parts, measured separately in one run.

    python bench/throughput.py [--device cpu|cuda] [--quick] [--out FILE.json]

Parts: data loading alone; teacher forward alone (inference); student + regressor forward
and backward + optimizer step alone (targets precomputed); and the full step (data -> teacher
-> student -> loss -> backward -> step) through the same function the pretrain loop uses.
Prints images/s and the overhead ratio step / (teacher + student); on CUDA also TFLOP/s
(counted with torch.utils.flop_counter) against the device's dense bf16 peak.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

from dreamteacher.data import Indexed, ResumableBatchSampler, unlabeled_images
from dreamteacher.data.synthetic import make_scenes
from dreamteacher.engine.common import autocast, make_loader, param_groups
from dreamteacher.engine.pretrain import distill_forward_backward
from dreamteacher.engine.randomness import sample_keys
from dreamteacher.losses import feature_distillation_loss
from dreamteacher.student import Backbone, FeatureRegressor, Student
from dreamteacher.teachers import create_teacher

PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L40S": 362.0, "A10": 125.0}

PROFILES = {
    "quick": {
        "image_size": [32, 32],
        "batch": 4,
        "preset": "tiny",
        "backbone": "resnet18",
        "iters": 3,
        "warmup": 1,
        "images": 16,
    },
    "cpu": {
        "image_size": [64, 80],
        "batch": 16,
        "preset": "small",
        "backbone": "resnet18",
        "iters": 8,
        "warmup": 2,
        "images": 128,
    },
    "cuda": {
        "image_size": [256, 320],
        "batch": 64,
        "preset": "base",
        "backbone": "resnet50",
        "iters": 20,
        "warmup": 5,
        "images": 256,
    },
}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _timeit(fn, iters: int, warmup: int, device: torch.device) -> float:
    """Seconds per call (median of `iters`, after `warmup` calls)."""
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(iters):
        t = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t)
    return sorted(times)[len(times) // 2]


def device_label(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cpu = platform.processor() or platform.machine()
    return f"cpu ({cpu}, {torch.get_num_threads()} threads)"


def peak_tflops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), None)


def run(device_name: str = "cpu", quick: bool = False, overrides: dict | None = None) -> dict:
    device = torch.device(device_name)
    p = dict(PROFILES["quick" if quick else ("cuda" if device.type == "cuda" else "cpu")])
    p.update(overrides or {})
    h, w = p["image_size"]
    B = p["batch"]
    channels_last = device.type == "cuda"
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = make_scenes(Path(tmp) / "data", n=p["images"], image_size=(h, w), seed=0)
        data = unlabeled_images(data_dir / "images", [h, w])
        sampler = ResumableBatchSampler(len(data), B, seed=0)
        loader = make_loader(Indexed(data), sampler, -1, device, 0)
        batches = iter(loader)

        teacher = create_teacher("diffusion", image_size=[h, w], preset=p["preset"]).to(device)
        backbone = Backbone(p["backbone"])
        student = Student(backbone, FeatureRegressor(backbone.channels, teacher.channels))
        student = student.to(device)
        if channels_last:
            student = student.to(memory_format=torch.channels_last)
        opt = torch.optim.AdamW(param_groups(student, 0.05), lr=1e-4, betas=(0.9, 0.95))
        idx0, x0 = next(batches)
        keys0 = sample_keys(0, 0, idx0)
        xd = x0.to(device)
        if channels_last:
            xd = xd.contiguous(memory_format=torch.channels_last)
        with autocast(device):
            targets = [f.clone() for f in teacher(xd, keys0)]

        def data_only():
            idx, x = next(batches)
            x.to(device, non_blocking=True)

        def teacher_only():
            with autocast(device):
                teacher(xd, keys0)

        def student_only():
            opt.zero_grad(set_to_none=True)
            with autocast(device):
                loss = feature_distillation_loss(student(xd).features, targets)["loss"]
            loss.backward()
            opt.step()

        step_no = [0]

        def full_step():
            idx, x = next(batches)
            opt.zero_grad(set_to_none=True)
            distill_forward_backward(
                student,
                teacher,
                x,
                sample_keys(0, step_no[0], idx),
                device,
                channels_last=channels_last,
            )
            opt.step()
            step_no[0] += 1

        # the same step reading targets from a feature cache (K = 2 encodings per image)
        from dreamteacher.teachers.cache import FeatureCache, build_cache

        t = time.perf_counter()
        cache_dir = build_cache(
            teacher, data, Path(tmp) / "cache", draws=2, batch_size=B, device=device
        )
        t_build = time.perf_counter() - t
        cache = FeatureCache(cache_dir, data)

        def cached_step():
            idx, x = next(batches)
            opt.zero_grad(set_to_none=True)
            distill_forward_backward(
                student,
                None,
                x,
                sample_keys(0, step_no[0], idx),
                device,
                channels_last=channels_last,
                cache=cache,
                indices=idx,
            )
            opt.step()
            step_no[0] += 1

        it, wu = p["iters"], p["warmup"]
        t_data = _timeit(data_only, it, wu, device)
        t_teacher = _timeit(teacher_only, it, wu, device)
        t_student = _timeit(student_only, it, wu, device)
        t_step = _timeit(full_step, it, wu, device)
        t_cached = _timeit(cached_step, it, wu, device)

        flops = None
        if device.type == "cuda":
            from torch.utils.flop_counter import FlopCounterMode

            counter = FlopCounterMode(display=False)
            with counter:
                full_step()
            flops = counter.get_total_flops()

    res = {
        "device": device_label(device),
        "torch": torch.__version__,
        "settings": p,
        "images_per_s": {
            "data": B / t_data,
            "teacher": B / t_teacher,
            "student": B / t_student,
            "step": B / t_step,
            "cached_step": B / t_cached,
        },
        "seconds_per_batch": {
            "data": t_data,
            "teacher": t_teacher,
            "student": t_student,
            "step": t_step,
            "cached_step": t_cached,
        },
        "overhead_ratio": t_step / (t_teacher + t_student),
        "cache": {
            "speedup": t_step / t_cached,
            "bytes_per_image": cache.meta["bytes_per_image"],
            "draws": 2,
            "build_s_per_image": t_build / p["images"],
        },
        "teacher_share_of_step": t_teacher / t_step,
    }
    if flops is not None:
        achieved = flops / t_step / 1e12
        res["tflops_per_step"] = flops / 1e12
        res["achieved_tflops"] = achieved
        peak = peak_tflops(device)
        res["peak_bf16_tflops"] = peak
        res["fraction_of_peak"] = achieved / peak if peak else None
    return res


def format_result(r: dict) -> str:
    ips = r["images_per_s"]
    lines = [
        f"device: {r['device']}  ({r['settings']['backbone']} <- {r['settings']['preset']} "
        f"UNet, {r['settings']['image_size'][0]}x{r['settings']['image_size'][1]}, "
        f"batch {r['settings']['batch']})"
    ]
    for k in ("data", "teacher", "student", "step", "cached_step"):
        lines.append(
            f"  {k:<11} {ips[k]:9.1f} img/s   {r['seconds_per_batch'][k] * 1e3:8.1f} ms/batch"
        )
    lines.append(
        f"  overhead ratio step / (teacher + student) = {r['overhead_ratio']:.3f} (target <= 1.10)"
    )
    c = r["cache"]
    lines.append(
        f"  feature cache: step {c['speedup']:.2f}x faster, "
        f"{c['bytes_per_image'] / 1024:.1f} KiB per image for {c['draws']} encodings"
    )
    if "achieved_tflops" in r:
        peak = r["peak_bf16_tflops"]
        lines.append(
            f"  {r['achieved_tflops']:.1f} TFLOP/s achieved"
            + (f" = {100 * r['fraction_of_peak']:.1f} % of {peak:.0f} peak" if peak else "")
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--quick", action="store_true", help="tiny sizes (seconds on a CPU)")
    ap.add_argument("--out", default=None, help="JSON file to write")
    ap.add_argument("--batch", type=int)
    ap.add_argument("--image-size", type=int, nargs=2)
    args = ap.parse_args(argv)
    ov = {k: v for k, v in (("batch", args.batch), ("image_size", args.image_size)) if v}
    r = run(args.device, args.quick, ov)
    print(format_result(r))
    out = Path(args.out or f"bench/results/throughput_{args.device}{'_quick' * args.quick}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(r, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
