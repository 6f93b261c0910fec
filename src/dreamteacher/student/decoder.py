"""The UPerNet decoder (PPM on C5 + FPN top-down over C2..C5), shared by the feature regressor
(docs/method.md, "Student and regressor") and the segmentation head, UPerNet's fused
class-logit head, and a light variant of that head for label distillation."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def conv_bn_relu(cin: int, cout: int, k: int = 3) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, k, padding=k // 2, bias=False), nn.BatchNorm2d(cout), nn.ReLU(True)
    )


class PPM(nn.Module):
    """Pyramid Pooling Module: pool C5 at scales (1, 2, 3, 6), 1x1 conv, upsample, concat."""

    def __init__(self, cin: int, ch: int, scales: tuple[int, ...] = (1, 2, 3, 6)):
        super().__init__()
        self.scales = scales
        self.branches = nn.ModuleList(conv_bn_relu(cin, ch, 1) for _ in scales)
        self.bottleneck = conv_bn_relu(cin + len(scales) * ch, ch, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # B, cin, h, w -> B, ch, h, w
        h, w = x.shape[-2:]
        outs = [x]
        for s, branch in zip(self.scales, self.branches, strict=True):
            y = branch(F.adaptive_avg_pool2d(x, s))
            outs.append(F.interpolate(y, (h, w), mode="bilinear", align_corners=False))
        return self.bottleneck(torch.cat(outs, 1))


class UPerDecoder(nn.Module):
    """[C2..C5] -> [P2..P5], each # B, ch, H/s, W/s (ch = 256 by default)."""

    def __init__(self, in_channels: list[int], ch: int = 256):
        super().__init__()
        self.ppm = PPM(in_channels[-1], ch)
        self.lateral = nn.ModuleList(conv_bn_relu(c, ch, 1) for c in in_channels[:-1])
        self.fpn = nn.ModuleList(conv_bn_relu(ch, ch, 3) for _ in in_channels[:-1])

    def forward(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        top = self.ppm(feats[-1])
        outs = [top]
        for i in range(len(feats) - 2, -1, -1):  # coarse -> fine
            lat = self.lateral[i](feats[i])
            top = lat + F.interpolate(top, lat.shape[-2:], mode="bilinear", align_corners=False)
            outs.insert(0, self.fpn[i](top))
        return outs


class FusedLogits(nn.Module):
    """UPerNet's fusion: upsample P3..P5 to P2, concat, 3x3 conv, dropout, 1x1 to class logits.
    [P2..P5] (each # B, ch, H/s, W/s) -> # B, K, H/4, W/4."""

    def __init__(self, ch: int, levels: int, num_classes: int, dropout: float = 0.1):
        super().__init__()
        self.fuse = conv_bn_relu(ch * levels, ch, 3)
        self.dropout = nn.Dropout2d(dropout)
        self.cls = nn.Conv2d(ch, num_classes, 1)

    def forward(self, ps: list[torch.Tensor]) -> torch.Tensor:
        size = ps[0].shape[-2:]
        ps = [ps[0]] + [
            F.interpolate(p, size, mode="bilinear", align_corners=False) for p in ps[1:]
        ]
        return self.cls(self.dropout(self.fuse(torch.cat(ps, 1))))


class LevelwiseLogits(nn.Module):
    """UPerNet's fusion with a 1x1 instead of a 3x3 kernel, computed level by level before
    upsampling. Exact: a 1x1 conv mixes channels at each pixel and bilinear upsampling mixes
    pixels within each channel with weights that sum to 1, so the two commute, and
    sum_l up(W_l P_l) is the 1x1 conv W = [W_2 .. W_5] of concat(P2, up(P3), up(P4), up(P5)).
    Then BatchNorm, ReLU, 1x1 to class logits. Each level costs ch x ch MACs per pixel at its
    own resolution, against 9 x levels x ch x ch at stride 4 for FusedLogits: about 26x less
    for 4 levels (the fused 3x3 conv is most of a mix-distillation step: docs/benchmarks.md).
    [P2..P5] (each # B, ch, H/s, W/s) -> # B, K, H/4, W/4."""

    def __init__(self, ch: int, levels: int, num_classes: int):
        super().__init__()
        self.proj = nn.ModuleList(nn.Conv2d(ch, ch, 1, bias=False) for _ in range(levels))
        self.norm = nn.BatchNorm2d(ch)
        self.cls = nn.Conv2d(ch, num_classes, 1)

    def forward(self, ps: list[torch.Tensor]) -> torch.Tensor:
        size = ps[0].shape[-2:]
        y = self.proj[0](ps[0])  # B, ch, H/4, W/4
        for proj, p in zip(self.proj[1:], ps[1:], strict=True):
            y = y + F.interpolate(proj(p), size, mode="bilinear", align_corners=False)
        return self.cls(F.relu(self.norm(y)))
