"""Feature regressor: UPerNet decoder + one 1x1 conv per level to the teacher's channels.
Thrown away after pretraining (METHOD.md section 2)."""

from __future__ import annotations

import torch
from torch import nn

from dreamteacher.student.decoder import UPerDecoder


class FeatureRegressor(nn.Module):
    def __init__(self, in_channels: list[int], teacher_channels: list[int], ch: int = 256):
        super().__init__()
        self.decoder = UPerDecoder(in_channels, ch)
        self.heads = nn.ModuleList(nn.Conv2d(ch, c, 1) for c in teacher_channels)

    def forward(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        """[C2..C5] -> predictions of the teacher maps, level l # B, teacher_channels[l], h, w."""
        return [head(p) for head, p in zip(self.heads, self.decoder(feats), strict=True)]


class Student(nn.Module):
    """Backbone + regressor: the module trained by feature distillation."""

    def __init__(self, backbone: nn.Module, regressor: FeatureRegressor):
        super().__init__()
        self.backbone, self.regressor = backbone, regressor

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.regressor(self.backbone(x))
