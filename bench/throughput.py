"""Throughput of a full pretrain step and of its parts, measured separately in one run.

    python bench/throughput.py [--device cpu|cuda] [--quick] [--compile] [--out FILE.json]

Parts: data loading alone; teacher forward alone (inference); student + regressor forward
and backward + optimizer step alone (targets precomputed); and the full step (data -> teacher
-> student -> loss -> backward -> step) through the same function the pretrain loop uses.
Prints images/s and the overhead ratio step / (teacher + student); on CUDA also TFLOP/s
(counted with torch.utils.flop_counter) against the device's dense bf16 peak. Then, in rounds
of their own with the step: the step reading its targets from a feature cache through the
loader, and that loader alone. With --compile,
the teacher alone and the full step again with torch.compile (`compile_teacher=true` and
`compile=true`), and the seconds the first compiled calls took.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from dreamteacher.data import Indexed, ResumableBatchSampler, unlabeled_images
from dreamteacher.data.synthetic import make_scenes
from dreamteacher.engine.loop import forward_backward
from dreamteacher.engine.pretrain import distill_losses
from dreamteacher.engine.session import param_groups
from dreamteacher.losses import feature_distillation_loss
from dreamteacher.randomness import sample_keys
from dreamteacher.runtime import autocast, make_loader
from dreamteacher.student import Backbone, FeatureRegressor, Student
from dreamteacher.teachers import DiffusionTeacher, create_teacher

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
        "iters": 10,
        "warmup": 3,
        "images": 128,  # 2 batches; the feature cache holds 3.6 MB per encoding here
    },
}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _time_interleaved(fns: dict, iters: int, warmup: int, device: torch.device) -> dict:
    """Seconds per call of each fn: the median over `iters` rounds (after `warmup` rounds),
    each round calling every fn once in turn, so that a drift of the machine's speed (a
    shared CPU) hits every part alike and the ratios between parts stay meaningful."""
    times = {k: [] for k in fns}
    for r in range(warmup + iters):
        for k, fn in fns.items():
            _sync(device)
            t = time.perf_counter()
            fn()
            _sync(device)
            if r >= warmup:
                times[k].append(time.perf_counter() - t)
    return {k: sorted(v)[len(v) // 2] for k, v in times.items()}


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


def run(
    device_name: str = "cpu",
    quick: bool = False,
    overrides: dict | None = None,
    compile_backend: str | None = None,
    on_result: Callable[[dict], None] | None = None,
) -> dict:
    """`compile_backend` (e.g. "inductor"): also time the compiled teacher and step.
    `on_result` gets the result as soon as the eager figures are in, then again with the
    feature cache's and then the compiled ones, so a run stopped while compiling keeps the
    figures before."""
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
        batches = [iter(loader)]  # cleared at the end: stops the loader's workers

        teacher = create_teacher("diffusion", image_size=[h, w], preset=p["preset"]).to(device)
        backbone = Backbone(p["backbone"])
        student = Student(backbone, FeatureRegressor(backbone.channels, teacher.channels))
        student = student.to(device)
        if channels_last:
            student = student.to(memory_format=torch.channels_last)
        opt = torch.optim.AdamW(param_groups(student, 0.05), lr=1e-4, betas=(0.9, 0.95))
        idx0, x0 = next(batches[0])
        keys0 = sample_keys(0, 0, idx0)
        xd = x0.to(device)
        if channels_last:
            xd = xd.contiguous(memory_format=torch.channels_last)
        with autocast(device):
            targets = [f.clone() for f in teacher(xd, keys0)]

        def data_only():
            idx, x = next(batches[0])
            x.to(device, non_blocking=True)

        def teacher_only(teacher=teacher):
            with autocast(device):
                teacher(xd, keys0)

        def student_only():
            opt.zero_grad(set_to_none=True)
            with autocast(device):
                loss = feature_distillation_loss(student(xd).features, targets)["loss"]
            loss.backward()
            opt.step()

        step_no = [0]

        def full_step(model=student, teacher=teacher, source=0):
            """source 0: the image loader; 1: the loader with cached targets (below). The
            forward and backward passes are the pretrain loop's (one micro-batch)."""

            def micro(model, batch, keys, step):
                x, *cached = batch
                return distill_losses(
                    model, teacher, x, keys, channels_last=channels_last, cached=cached or None
                )

            opt.zero_grad(set_to_none=True)
            batch = next(batches[source])
            forward_backward(micro, model, batch, step_no[0], 1, 0, device, "auto")
            opt.step()
            step_no[0] += 1

        parts = {
            "data": data_only,
            "teacher": teacher_only,
            "student": student_only,
            "step": full_step,
        }
        sec = _time_interleaved(parts, p["iters"], p["warmup"], device)
        t_teacher, t_student = sec["teacher"], sec["student"]
        t_step = sec["step"]

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
            "images_per_s": {k: B / v for k, v in sec.items()},
            "seconds_per_batch": sec,
            "overhead_ratio": t_step / (t_teacher + t_student),
            "teacher_share_of_step": t_teacher / t_step,
        }
        if flops is not None:
            achieved = flops / t_step / 1e12
            res["tflops_per_step"] = flops / 1e12
            res["achieved_tflops"] = achieved
            peak = peak_tflops(device)
            res["peak_bf16_tflops"] = peak
            res["fraction_of_peak"] = achieved / peak if peak else None
        if on_result:  # the eager figures are kept if a later part is stopped or fails
            on_result(res)

        # the same step reading its targets from a feature cache (K = 2 encodings per image)
        # through a loader as in pretrain (on CUDA its workers read the cache). Timed in rounds
        # of its own against the step; a failure (a worker out of shared memory, say) costs
        # the cache figures only.
        from dreamteacher.data import StepTagged
        from dreamteacher.teachers.cache import CachedTargets, FeatureCache, build_cache

        def cached_data():
            idx, x, *cached = next(batches[1])
            x.to(device, non_blocking=True)
            for c in cached:
                c.to(device, non_blocking=True).float()

        def cached_step():
            full_step(student, None, source=1)

        try:
            t = time.perf_counter()
            cache_dir = build_cache(
                teacher, data, Path(tmp) / "cache", draws=2, batch_size=B, device=device
            )
            t_build = time.perf_counter() - t
            cache = FeatureCache(cache_dir, data)
            items = CachedTargets(data, cache, 0)
            tagged = StepTagged(ResumableBatchSampler(len(data), B, seed=0))
            batches.append(iter(make_loader(items, tagged, -1, device, 0)))
            rounds = {"step": full_step, "data": cached_data, "step_cached": cached_step}
            c = _time_interleaved(rounds, p["iters"], p["warmup"], device)
        except Exception as e:
            error = f"{type(e).__name__}: {e}"[:1000]
            print(f"feature cache part failed, other figures kept: {error}", file=sys.stderr)
            res["cache"] = {"error": error}
        else:
            res["cache"] = {
                "seconds_per_batch": c,
                "images_per_s": {k: B / v for k, v in c.items()},
                "speedup": c["step"] / c["step_cached"],
                "bytes_per_image": cache.meta["bytes_per_image"],
                "draws": 2,
                "build_s_per_image": t_build / p["images"],
            }
        if on_result:
            on_result(res)
        if compile_backend:
            # a second teacher on the same UNet, compiled; the student too. Timed in rounds of
            # their own against the eager teacher and step, so each speed-up is in one run.
            try:
                cteacher = DiffusionTeacher(teacher.unet, teacher.scheduler, teacher.t)
                cteacher = cteacher.to(device).compile_features(backend=compile_backend)
                cstudent = torch.compile(student, backend=compile_backend)
                compiled = {
                    "teacher": lambda: teacher_only(cteacher),
                    "step": lambda: full_step(cstudent, cteacher),
                }
                compile_s = {}
                for k, fn in compiled.items():
                    t = time.perf_counter()
                    fn()  # compiles
                    _sync(device)
                    compile_s[k] = time.perf_counter() - t
                rounds = {"teacher": teacher_only, "step": full_step}
                rounds |= {f"compiled_{k}": fn for k, fn in compiled.items()}
                sec = _time_interleaved(rounds, p["iters"], p["warmup"], device)
            except Exception as e:  # a broken compiler must not cost the eager figures
                error = f"{type(e).__name__}: {e}"[:1000]
                print(f"torch.compile failed, eager figures only: {error}", file=sys.stderr)
                res["compiled"] = {"backend": compile_backend, "error": error}
            else:
                c = {k: sec[f"compiled_{k}"] for k in compiled}
                res["compiled"] = {
                    "backend": compile_backend,
                    "images_per_s": {k: B / v for k, v in c.items()},
                    "seconds_per_batch": c,
                    "eager_seconds_per_batch": {k: sec[k] for k in compiled},
                    "compile_s": compile_s,
                    "speedup": {k: sec[k] / v for k, v in c.items()},
                }
        batches.clear()  # the workers stop before their image folder is deleted
    if on_result and compile_backend:
        on_result(res)
    return res


def format_result(r: dict) -> str:
    ips = r["images_per_s"]
    lines = [
        f"device: {r['device']}  ({r['settings']['backbone']} <- {r['settings']['preset']} "
        f"UNet, {r['settings']['image_size'][0]}x{r['settings']['image_size'][1]}, "
        f"batch {r['settings']['batch']})"
    ]
    for k in ("data", "teacher", "student", "step"):
        lines.append(
            f"  {k:<11} {ips[k]:9.1f} img/s   {r['seconds_per_batch'][k] * 1e3:8.1f} ms/batch"
        )
    lines.append(
        f"  overhead ratio step / (teacher + student) = {r['overhead_ratio']:.3f} (target <= 1.10)"
    )
    c = r.get("cache", {})
    if "error" in c:
        lines.append(f"  feature cache part failed: {c['error'][:200]}")
    elif c:
        ips, sec = c["images_per_s"], c["seconds_per_batch"]
        for k, name in (("data", "cache loader"), ("step_cached", "cached step")):
            lines.append(f"  {name:<14} {ips[k]:9.1f} img/s   {sec[k] * 1e3:8.1f} ms/batch")
        lines.append(
            f"  feature cache: step {c['speedup']:.2f}x faster (against the step timed in the "
            f"same rounds), {c['bytes_per_image'] / 1024:.1f} KiB per image for "
            f"{c['draws']} encodings"
        )
    c = r.get("compiled", {})
    if "error" in c:
        lines.append(f"  torch.compile ({c['backend']}) failed: {c['error'][:200]}")
    elif c:
        for k in ("teacher", "step"):
            lines.append(
                f"  compiled {k:<8} {c['images_per_s'][k]:9.1f} img/s   "
                f"{c['speedup'][k]:.2f}x eager ({c['backend']}; first call "
                f"{c['compile_s'][k]:.1f} s)"
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
    ap.add_argument("--compile", action="store_true", help="also time torch.compile'd parts")
    ap.add_argument(
        "--compile-backend", default="inductor", help="torch.compile backend (tests: aot_eager)"
    )
    args = ap.parse_args(argv)
    ov = {k: v for k, v in (("batch", args.batch), ("image_size", args.image_size)) if v}
    out = Path(args.out or f"bench/results/throughput_{args.device}{'_quick' * args.quick}.json")
    out.parent.mkdir(parents=True, exist_ok=True)

    def write(r: dict) -> None:
        tmp = out.with_name(out.name + ".tmp")
        tmp.write_text(json.dumps(r, indent=2) + "\n")
        tmp.replace(out)
        print(format_result(r), flush=True)

    run(args.device, args.quick, ov, args.compile_backend if args.compile else None, write)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
