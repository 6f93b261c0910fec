"""The UPerNet decoder (PPM on C5 + FPN top-down over C2..C5), shared by the feature regressor
(METHOD.md section 2) and the segmentation head."""

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
