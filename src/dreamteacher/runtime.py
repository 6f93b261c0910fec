"""Where and how a command computes: the device, the precision, the global RNG, data loaders."""

from __future__ import annotations

import os
import random
from typing import Any

import numpy as np
import torch

from dreamteacher.errors import UserError

PRECISIONS = ("auto", "fp32", "bf16")


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError("--device cuda was asked for but no CUDA GPU is visible; use --device cpu")
    if name not in ("cpu",) and not name.startswith("cuda"):
        raise UserError(f"--device {name} is unknown; use cpu, cuda or auto")
    return torch.device(name)


def resolve_precision(device: torch.device, precision: str = "auto") -> str:
    """'bf16' or 'fp32': auto is bf16 on CUDA, fp32 elsewhere."""
    if precision not in PRECISIONS:
        raise UserError(f"precision must be auto, fp32 or bf16, got '{precision}'")
    bf16 = precision == "bf16" or (precision == "auto" and device.type == "cuda")
    return "bf16" if bf16 else "fp32"


def autocast(device: torch.device, precision: str = "auto"):
    """bf16 autocast on CUDA by default; fp32 on CPU unless precision='bf16'."""
    use = resolve_precision(device, precision) == "bf16"
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=use)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    st = {
        "torch": torch.get_rng_state(),
        "numpy": np.random.get_state(),
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        st["cuda"] = torch.cuda.get_rng_state_all()
    return st


def set_rng_state(st: dict[str, Any]) -> None:
    torch.set_rng_state(st["torch"])
    np.random.set_state(st["numpy"])
    random.setstate(st["python"])
    if "cuda" in st and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(st["cuda"])


def loader_workers(num_workers: int, device: torch.device) -> int:
    """`num_workers`, or for -1 (auto) up to 8 per GPU (half the cores), 0 on CPU."""
    if num_workers >= 0:
        return num_workers
    return min(8, max(1, (os.cpu_count() or 2) // 2)) if device.type == "cuda" else 0


def make_loader(dataset, sampler, num_workers: int, device: torch.device, seed: int):
    """DataLoader over an index-returning dataset; pinned memory and workers on CUDA."""
    num_workers = loader_workers(num_workers, device)
    return torch.utils.data.DataLoader(
        dataset,
        batch_sampler=sampler,
        num_workers=num_workers,
        pin_memory=device.type == "cuda",
        persistent_workers=num_workers > 0,
        generator=torch.Generator().manual_seed(seed),  # keeps the global RNG untouched
    )
