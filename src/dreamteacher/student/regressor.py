"""Feature regressor: UPerNet decoder + one 1x1 conv per level to the teacher's channels, and
for label/mix distillation a logit head on the same decoder (docs/method.md, "Student and
regressor" and "Label distillation and mix distillation"). Thrown away after pretraining."""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from dreamteacher.config import LOGIT_HEADS
from dreamteacher.errors import UserError
from dreamteacher.student.decoder import FusedLogits, LevelwiseLogits, UPerDecoder


class RegressorOutput(NamedTuple):
    features: list[torch.Tensor]  # level l # B, teacher_channels[l], H/s_l, W/s_l ([] if none)
    logits: torch.Tensor | None  # B, K, H/4, W/4 when the regressor has a logit head


class FeatureRegressor(nn.Module):
    """`teacher_channels` empty: no feature heads (label distillation only); `num_classes`:
    add a logit head for the interpreter's soft labels on the same decoder: `logit_head`
    "uper" (UPerNet's fusion, FusedLogits) or "light" (LevelwiseLogits). It has no dropout:
    every random choice in pretraining is keyed by sample, so a K-rank run matches a
    one-process run with the same global batch (dropout draws from a per-process stream)."""

    def __init__(
        self,
        in_channels: list[int],
        teacher_channels: list[int],
        ch: int = 256,
        num_classes: int | None = None,
        logit_head: str = "uper",
    ):
        super().__init__()
        if logit_head not in LOGIT_HEADS:
            raise UserError(
                f"unknown logit_head '{logit_head}'; choose one of {', '.join(LOGIT_HEADS)}"
            )
        self.decoder = UPerDecoder(in_channels, ch)
        self.heads = nn.ModuleList(nn.Conv2d(ch, c, 1) for c in teacher_channels)
        self.logit_head: nn.Module | None = None
        if num_classes and logit_head == "uper":
            self.logit_head = FusedLogits(ch, len(in_channels), num_classes, dropout=0.0)
        elif num_classes:
            self.logit_head = LevelwiseLogits(ch, len(in_channels), num_classes)

    def forward(self, feats: list[torch.Tensor]) -> RegressorOutput:
        """[C2..C5] -> predictions of the teacher maps (and class logits)."""
        ps = self.decoder(feats)
        preds = [head(p) for head, p in zip(self.heads, ps, strict=False)]
        return RegressorOutput(preds, self.logit_head(ps) if self.logit_head else None)


class Student(nn.Module):
    """Backbone + regressor: the module trained by feature/label distillation."""

    def __init__(self, backbone: nn.Module, regressor: FeatureRegressor):
        super().__init__()
        self.backbone, self.regressor = backbone, regressor

    def forward(self, x: torch.Tensor, with_backbone: bool = False):
        """The regressor's output; with `with_backbone`, (output, [C2..C5])."""
        feats = self.backbone(x)
        out = self.regressor(feats)
        return (out, feats) if with_backbone else out
