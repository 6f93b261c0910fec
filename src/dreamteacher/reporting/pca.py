"""Feature maps as colour images: the first three principal components of a set of maps,
mapped to RGB (the feature pictures of the DreamTeacher paper)."""

from __future__ import annotations

import torch


def _pixels(f: torch.Tensor) -> torch.Tensor:
    """# B, C, h, w -> # B*h*w, C (float64)."""
    return f.detach().permute(0, 2, 3, 1).reshape(-1, f.shape[1]).double().cpu()


def pca_rgb(
    fit: torch.Tensor, *others: torch.Tensor, quantiles: tuple[float, float] = (0.01, 0.99)
) -> list[torch.Tensor]:
    """Project `fit` (# B, C, h, w) and each of `others` (# B', C, h', w', the same channels)
    on the first three principal components of `fit`'s pixels (all images together), so that
    one colour means one feature direction in every map. Each component is scaled so that its
    `quantiles` over `fit` land on 0 and 255. Returns one # B, h, w, 3 uint8 tensor per map;
    colours without a component (fewer than three channels, or no spread along it) are 0."""
    x = _pixels(fit)
    mean = x.mean(0)
    centred = x - mean
    cov = centred.T @ centred / max(len(x) - 1, 1)  # C, C
    vals, vecs = torch.linalg.eigh(cov)  # ascending
    comps = vecs[:, torch.argsort(vals, descending=True)[:3]]  # C, k (k <= 3)
    # a component's sign is arbitrary: fix it so its largest weight is positive
    comps = comps * torch.sign(comps.gather(0, comps.abs().argmax(0, keepdim=True)))
    proj = centred @ comps
    lo = torch.quantile(proj, quantiles[0], dim=0)
    hi = torch.quantile(proj, quantiles[1], dim=0)
    spread = hi - lo
    keep = spread > 1e-6 * spread.max().clamp(min=1e-30)  # a flat component stays black
    comps, lo, scale = comps[:, keep], lo[keep], spread[keep]

    def rgb(f: torch.Tensor) -> torch.Tensor:
        b, _, h, w = f.shape
        y = ((_pixels(f) - mean) @ comps - lo) / scale  # B*h*w, k in [0, 1] (mostly)
        y = torch.cat([y, y.new_zeros(len(y), 3 - y.shape[1])], 1)
        return (y.clamp(0, 1) * 255).round().to(torch.uint8).reshape(b, h, w, 3)

    return [rgb(fit)] + [rgb(o) for o in others]
