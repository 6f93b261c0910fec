"""DDPM-seg (Baranchuk et al., "Label-Efficient Semantic Segmentation with Diffusion Models",
ICLR 2022) as a baseline: the teacher's feature maps at several diffusion steps t, upsampled
(bilinear) to the image size and concatenated, give every pixel a D-dim descriptor; an ensemble
of MLPs classifies pixels independently; prediction = mean of the members' softmax.

Their code collects every labelled pixel's descriptor in RAM first (about 200 GB for 50
images). Here descriptors are computed per batch of images, on the fly, and a random subset of
each image's labelled pixels trains each member; nothing is kept between steps, so memory is
that of one batch whatever the number of images (and each step sees fresh noise).
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from dreamteacher.randomness import mix
from dreamteacher.teachers.base import OnTeacher, Teacher


def pixel_mlp(d: int, hidden: list[int], num_classes: int) -> nn.Sequential:
    """Linear -> ReLU -> BatchNorm per hidden layer, then a linear classifier (their MLP)."""
    layers: list[nn.Module] = []
    for h in hidden:
        layers += [nn.Linear(d, h), nn.ReLU(), nn.BatchNorm1d(h)]
        d = h
    return nn.Sequential(*layers, nn.Linear(d, num_classes))


@contextmanager
def _at_step(teacher: Teacher, t: int):
    saved = teacher.t
    teacher.t = [t]
    try:
        yield
    finally:
        teacher.t = saved


class DDPMSeg(OnTeacher):
    """images # B, 3, H, W -> logits # B, K, H, W (log of the ensemble's mean probability).
    In training mode with masks, forward returns per member (pixel logits # P, K, labels # P)."""

    def __init__(
        self,
        teacher: Teacher,
        ts: list[int],
        num_classes: int,
        ensemble: int = 10,
        hidden: list[int] = (256, 128),
        pixels: int = 1024,
        ignore_index: int = 255,
        chunk: int = 16384,
    ):
        super().__init__(teacher)  # frozen, not saved
        self.ts, self.pixels, self.ignore_index, self.chunk = list(ts), pixels, ignore_index, chunk
        self.dim = len(self.ts) * sum(teacher.channels)
        self.members = nn.ModuleList(
            pixel_mlp(self.dim, list(hidden), num_classes) for _ in range(ensemble)
        )

    def descriptors(self, x: torch.Tensor, keys: list[int] | None = None) -> torch.Tensor:
        """# B, 3, H, W -> B, D, H, W: every tapped map at every t, upsampled and concatenated.
        With keys, the noise of step t for sample b comes from mix(key_b, t)."""
        out = []
        for t in self.ts:
            k = None if keys is None else [mix(key, t) for key in keys]
            with _at_step(self.teacher, t):
                feats = self.teacher(x, k)
            out += [
                F.interpolate(f.float(), x.shape[-2:], mode="bilinear", align_corners=False)
                for f in feats
            ]
        return torch.cat(out, 1)

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None, keys=None):
        d = self.descriptors(x, keys)  # B, D, H, W (no gradient: the teacher is frozen)
        if self.training and y is not None:
            flat, labels = d.permute(0, 2, 3, 1).reshape(-1, self.dim), y.reshape(-1)
            valid = (labels != self.ignore_index).nonzero().squeeze(1)
            n = min(len(valid), self.pixels * x.shape[0])
            outs = []
            for mlp in self.members:  # each member its own random labelled pixels
                pick = valid[torch.randperm(len(valid), device=valid.device)[:n]]
                outs.append((mlp(flat[pick]), labels[pick]))
            return outs
        return self.predict(d)

    def predict(self, d: torch.Tensor) -> torch.Tensor:
        """# B, D, H, W descriptors -> B, K, H, W log mean probability, in pixel chunks."""
        b, _, h, w = d.shape
        flat = d.permute(0, 2, 3, 1).reshape(-1, self.dim)
        out = []
        for c in flat.split(self.chunk):
            p = torch.stack([F.softmax(m(c), 1) for m in self.members]).mean(0)
            out.append(p.clamp_min(1e-8).log())
        return torch.cat(out).view(b, h, w, -1).permute(0, 3, 1, 2)
