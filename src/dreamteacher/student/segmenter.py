"""Segmentation model for fine-tuning: backbone + UPerNet head (PPM + FPN, fused)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from dreamteacher.student.decoder import FusedLogits, UPerDecoder


class UPerHead(nn.Module):
    """UPerNet: decoder, upsample P2..P5 to stride 4, concat, 3x3 conv, 1x1 to class logits."""

    def __init__(self, in_channels: list[int], num_classes: int, ch: int = 256):
        super().__init__()
        self.decoder = UPerDecoder(in_channels, ch)
        self.logits = FusedLogits(ch, len(in_channels), num_classes)

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        return self.logits(self.decoder(feats))  # B, K, H/4, W/4


class Segmenter(nn.Module):
    """backbone + UPerHead. `freeze_backbone()` makes it a readout: the backbone's weights and
    BatchNorm statistics stay fixed and only the head trains."""

    def __init__(self, backbone: nn.Module, num_classes: int, ch: int = 256):
        super().__init__()
        self.backbone = backbone
        self.head = UPerHead(backbone.channels, num_classes, ch)
        self.frozen = False

    def freeze_backbone(self) -> Segmenter:
        self.frozen = True
        self.backbone.requires_grad_(False)
        self.backbone.eval()
        return self

    def train(self, mode: bool = True) -> Segmenter:
        super().train(mode)
        if self.frozen:
            self.backbone.eval()  # BatchNorm uses (and keeps) the pretrained statistics
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x # B, 3, H, W in [0, 1] -> logits # B, K, H, W."""
        logits = self.head(self.backbone(x))
        return F.interpolate(logits, x.shape[-2:], mode="bilinear", align_corners=False)
