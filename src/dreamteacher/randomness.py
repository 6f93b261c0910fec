"""Per-sample randomness keyed by (seed, step, dataset index).

Every random choice about a sample (its flip, its diffusion step t, its noise) is drawn from a
generator seeded by a hash of (seed, step, index). So a sample is treated the same whether it
lands on rank 0 or rank 3, in micro-batch 1 or 2, in an uninterrupted run or a resumed one:
DDP runs match single-process runs with the same global batch, and resume is exact.
"""

from __future__ import annotations

import torch

_MASK = (1 << 64) - 1


def _splitmix64(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & _MASK
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK
    return x ^ (x >> 31)


def mix(*values: int) -> int:
    """A 63-bit hash of integers (usable as a torch seed)."""
    h = 0
    for v in values:
        h = _splitmix64(h ^ (int(v) & _MASK))
    return h >> 1


def sample_keys(seed: int, step: int, indices: torch.Tensor) -> list[int]:
    """One key per sample of a batch (indices = dataset indices # B)."""
    return [mix(seed, step, i) for i in indices.tolist()]


def keyed_hflip(keys: list[int], x: torch.Tensor, *others: torch.Tensor):
    """Flip sample b horizontally iff bit 0 of mix(key_b, 1) is set (p = 0.5); the same flip
    for x (# B, C, H, W) and `others` (e.g. masks # B, H, W)."""
    flip = torch.tensor([mix(k, 1) & 1 for k in keys], dtype=torch.bool)
    outs = []
    for t in (x, *others):
        f = flip.to(t.device).view(-1, *([1] * (t.ndim - 1)))
        outs.append(torch.where(f, t.flip(-1), t))
    return tuple(outs)


def keyed_randn(keys: list[int], shape: tuple[int, ...], device, salt: int = 2) -> torch.Tensor:
    """Standard normal noise # B, *shape, sample b drawn from a generator seeded by its key."""
    device = torch.device(device)
    out = []
    for k in keys:
        g = torch.Generator(device=device).manual_seed(mix(k, salt))
        out.append(torch.randn(shape, generator=g, device=device))
    return torch.stack(out)


def keyed_rand(keys: list[int], shape: tuple[int, ...], device, salt: int = 4) -> torch.Tensor:
    """Uniform [0, 1) numbers # B, *shape, sample b drawn from a generator seeded by its key."""
    device = torch.device(device)
    out = []
    for k in keys:
        g = torch.Generator(device=device).manual_seed(mix(k, salt))
        out.append(torch.rand(shape, generator=g, device=device))
    return torch.stack(out)


def keyed_randint(keys: list[int], high: int, salt: int = 3) -> torch.Tensor:
    """Integers in [0, high) # B, one per key."""
    return torch.tensor([mix(k, salt) % high for k in keys], dtype=torch.long)
