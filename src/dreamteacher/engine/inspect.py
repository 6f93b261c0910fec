"""`inspect-teacher`: what a teacher is (kind, size, schedule, levels) and what one encoding
costs on this device, per level.

Level i's cost is that of an encoding that stops after level i (the pass runs coarse to fine
and stops after the finest level read), so the finest level's row is the cost of reading all
of them. Memory is the peak of tensor bytes allocated during the encoding beyond what was
held before it (weights and input excluded): the CUDA allocator's peak on a GPU, the live
tensors' bytes counted op by op elsewhere.
"""

from __future__ import annotations

import statistics
import time
import weakref
from pathlib import Path
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from dreamteacher.config import InspectConfig
from dreamteacher.runfiles import atomic_json
from dreamteacher.runtime import autocast, resolve_device, resolve_precision
from dreamteacher.teachers import DiffusionTeacher, Teacher, load_teacher


class PeakTensorBytes(TorchDispatchMode):
    """Counts the bytes of the storages that ops create while active and are still alive; `peak`
    is the largest total seen. Views of a counted storage are not counted again."""

    def __init__(self) -> None:
        super().__init__()
        self.live = 0
        self.peak = 0
        self._ptrs: set[int] = set()

    def _free(self, ptr: int, n: int) -> None:
        self._ptrs.discard(ptr)
        self.live -= n

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if not isinstance(t, torch.Tensor) or t.device.type == "meta":
                continue
            storage = t.untyped_storage()
            ptr, n = storage.data_ptr(), storage.nbytes()
            if n == 0 or ptr in self._ptrs:
                continue
            self._ptrs.add(ptr)
            self.live += n
            self.peak = max(self.peak, self.live)
            weakref.finalize(t, self._free, ptr, n)
        return out


def _level_view(teacher: Teacher, stride: int) -> Teacher:
    """The same teacher read at one stride only: its pass stops after that level."""
    if isinstance(teacher, DiffusionTeacher):
        return teacher.view([stride])
    return teacher  # a teacher without early exit: every level costs a whole encoding


def measure_level(
    teacher: Teacher, stride: int, x: torch.Tensor, repeats: int, precision: str
) -> dict[str, float]:
    """`measure` of an encoding that stops after the level at `stride`; the view's hooks (on
    a UNet read through hooks) are removed afterwards."""
    view = _level_view(teacher, stride)
    try:
        return measure(view, x, repeats, precision)
    finally:
        if view is not teacher:
            for hook in getattr(view, "_hooks", []):
                hook.remove()


def measure(
    teacher: Teacher,
    x: torch.Tensor,
    repeats: int = 5,
    precision: str = "auto",
) -> dict[str, float]:
    """Median seconds over `repeats` encodings of `x` (after one warm-up) and the peak
    bytes one encoding allocates."""
    device = x.device
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    keys = list(range(len(x)))
    with autocast(device, precision):
        teacher(x, keys)  # warm-up
        sync()
        times = []
        for _ in range(max(1, repeats)):
            start = time.perf_counter()
            teacher(x, keys)
            sync()
            times.append(time.perf_counter() - start)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
            held = torch.cuda.memory_allocated(device)
            teacher(x, keys)
            sync()
            peak = torch.cuda.max_memory_allocated(device) - held
        else:
            with PeakTensorBytes() as mode:
                teacher(x, keys)
            peak = mode.peak
    return {"seconds": statistics.median(times), "peak_bytes": int(peak)}


def inspect_teacher(cfg: InspectConfig) -> dict[str, Any]:
    """Describe the teacher `cfg.teacher` and time one encoding per level; printed, and
    written to `cfg.json` when given."""
    device = resolve_device(cfg.device)
    teacher = load_teacher(cfg.teacher, t=cfg.t, strides=cfg.strides).to(device)
    size = teacher.input_size(cfg.image_size)
    x = torch.rand(cfg.batch_size, 3, *size, generator=torch.Generator().manual_seed(0))
    x = x.to(device)
    info: dict[str, Any] = {
        "teacher": str(cfg.teacher),
        "kind": teacher.source.split(" ", 1)[0] or type(teacher).__name__,
        "model": type(getattr(teacher, "unet", teacher)).__name__,
        "parameters": sum(p.numel() for p in teacher.parameters()),
        "weights_bytes": sum(p.numel() * p.element_size() for p in teacher.parameters()),
        "trained_size": teacher.image_size,
        "image_size": size,
        "batch_size": cfg.batch_size,
        "t": list(getattr(teacher, "t", cfg.t)),
        "device": str(device),
        "precision": resolve_precision(device, cfg.precision),
    }
    scheduler = getattr(teacher, "scheduler", None)
    if scheduler is not None:
        c = scheduler.config
        info["scheduler"] = {
            "class": type(scheduler).__name__,
            "steps": int(c.num_train_timesteps),
            "beta_schedule": c.get("beta_schedule"),
            "prediction_type": c.get("prediction_type", "epsilon"),
        }
    described = getattr(teacher, "tap_description", lambda: [""] * len(teacher.strides))()
    levels = []
    for s, ch, where in zip(teacher.strides, teacher.channels, described, strict=True):
        cost = measure_level(teacher, s, x, cfg.repeats, cfg.precision)
        h, w = -(-size[0] // s), -(-size[1] // s)
        layer = where.split(": ", 1)[-1]
        levels.append({"stride": s, "channels": ch, "map": [h, w], "layer": layer, **cost})
    info["levels"] = levels
    print(format_inspection(info))
    if cfg.json:
        atomic_json(info, Path(cfg.json))
    return info


def _mib(n: float) -> str:
    return f"{n / 2**20:.1f} MiB"


def format_inspection(info: dict[str, Any]) -> str:
    """The report as printed: a header, then one line per level."""
    lines = [
        f"teacher: {info['teacher']} ({info['kind']}, {info['model']}, "
        f"{info['parameters'] / 1e6:.2f} M parameters, {_mib(info['weights_bytes'])})",
        f"trained at: {info['trained_size'] or 'unknown'}; read at t = {info['t']}",
    ]
    if "scheduler" in info:
        s = info["scheduler"]
        lines.append(
            f"schedule: {s['class']}, {s['steps']} steps, {s['beta_schedule']}, predicts "
            f"{s['prediction_type']}"
        )
    lines.append(
        f"one encoding of {info['batch_size']} x {info['image_size'][0]}x"
        f"{info['image_size'][1]} on {info['device']} ({info['precision']}), up to each level:"
    )
    lines.append("  stride  channels  map       ms      peak memory  layer")
    for lv in info["levels"]:
        hw = f"{lv['map'][0]}x{lv['map'][1]}"
        lines.append(
            f"  {lv['stride']:>6}  {lv['channels']:>8}  {hw:<8}  {lv['seconds'] * 1e3:>6.1f}  "
            f"{_mib(lv['peak_bytes']):>11}  {lv['layer']}"
        )
    return "\n".join(lines)
