"""The feature interpreter: a small segmentation head on a frozen teacher's features
(docs/method.md, "Label distillation and mix distillation"), trained on a few labelled images
by `train-interpreter`. It is "the teacher itself as a segmenter", and in label/mix
distillation it soft-labels every image.

    coarsest map ─1x1─up─┐
                 finer map┴─cat─dwsep 3x3─GN─SiLU ─1x1─up─┐
                                             finer map ───┴─cat─ ... ─dropout─1x1─> logits

Each input map is whitened first (the non-learnable per-pixel LayerNorm of the feature loss), so
raw UNet activations of any scale enter on an equal footing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from dreamteacher.errors import UserError
from dreamteacher.losses import whiten
from dreamteacher.runfiles import atomic_save
from dreamteacher.teachers.base import OnTeacher, Teacher


def _groups(ch: int) -> int:
    return next(g for g in (32, 16, 8, 4, 2, 1) if ch % g == 0)


class Fuse(nn.Module):
    """1x1 conv on the coarser map, bilinear upsample to the finer map, concat, depthwise-
    separable 3x3 conv, GroupNorm(32) + SiLU.
    # B, c_in, h, w  and  B, c_fine, 2h, 2w  ->  B, ch, 2h, 2w"""

    def __init__(self, c_in: int, c_fine: int, ch: int):
        super().__init__()
        self.proj = nn.Conv2d(c_in, ch, 1)
        self.depthwise = nn.Conv2d(ch + c_fine, ch + c_fine, 3, padding=1, groups=ch + c_fine)
        self.pointwise = nn.Conv2d(ch + c_fine, ch, 1, bias=False)
        self.norm = nn.GroupNorm(_groups(ch), ch)

    def forward(self, coarse: torch.Tensor, fine: torch.Tensor) -> torch.Tensor:
        y = F.interpolate(self.proj(coarse), fine.shape[-2:], mode="bilinear", align_corners=False)
        y = self.pointwise(self.depthwise(torch.cat([y, fine], 1)))
        return F.silu(self.norm(y))


class FeatureInterpreter(nn.Module):
    """Teacher maps (finest first, as teachers return them) -> class logits at the finest
    map's stride (# B, K, H/4, W/4 for strides 4..32)."""

    def __init__(self, channels: list[int], num_classes: int, ch: int = 256, dropout: float = 0.1):
        super().__init__()
        if len(channels) < 2:
            raise UserError(f"the interpreter needs at least 2 teacher levels, got {channels}")
        self.channels, self.num_classes = list(channels), num_classes
        rev = self.channels[::-1]  # coarse -> fine
        self.fuses = nn.ModuleList(
            Fuse(rev[0] if i == 0 else ch, c_fine, ch) for i, c_fine in enumerate(rev[1:])
        )
        self.dropout = nn.Dropout2d(dropout)
        self.cls = nn.Conv2d(ch, num_classes, 1)

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        if [f.shape[1] for f in feats] != self.channels:
            raise UserError(
                f"the interpreter expects teacher channels {self.channels}, got "
                f"{[f.shape[1] for f in feats]}; use the teacher it was trained on"
            )
        fs = [whiten(f.float()) for f in feats[::-1]]  # coarse -> fine
        y = fs[0]
        for fuse, fine in zip(self.fuses, fs[1:], strict=True):
            y = fuse(y, fine)
        return self.cls(self.dropout(y))


class TeacherSegmenter(OnTeacher):
    """A frozen teacher + its interpreter as one image -> logits model (# B, K, H, W), so the
    segmentation loop and evaluation of `finetune` serve it too. Only the interpreter trains;
    `state_dict()` holds only the interpreter (the teacher stays in its own folder)."""

    def __init__(self, teacher: Teacher, interpreter: FeatureInterpreter):
        super().__init__(teacher)
        self.interpreter = interpreter

    def forward(self, x: torch.Tensor, keys: list[int] | None = None) -> torch.Tensor:
        feats = [f.clone() for f in self.teacher(x, keys)]  # inference mode -> normal tensors
        logits = self.interpreter(feats)
        return F.interpolate(logits, x.shape[-2:], mode="bilinear", align_corners=False)


def save_interpreter(path: str | Path, interp: FeatureInterpreter, meta: dict[str, Any]) -> None:
    atomic_save(
        {
            "state": interp.state_dict(),
            "channels": interp.channels,
            "num_classes": interp.num_classes,
            "ch": interp.cls.in_channels,
            **meta,
        },
        path,
    )


def load_interpreter(run: str | Path) -> tuple[FeatureInterpreter, dict[str, Any]]:
    """(interpreter in eval mode, its metadata: teacher, t, strides, image_size, class_names)
    from a `train-interpreter` output folder."""
    path = Path(run) / "interpreter.pt"
    if not path.exists():
        raise UserError(
            f"{path} not found; pass the --out folder of a finished "
            "`dreamteacher train-interpreter` run"
        )
    try:
        meta = torch.load(path, map_location="cpu", weights_only=False)
        interp = FeatureInterpreter(meta["channels"], meta["num_classes"], meta["ch"])
        interp.load_state_dict(meta.pop("state"))
    except (KeyError, RuntimeError, OSError, EOFError) as e:
        raise UserError(
            f"{path} is unreadable ({type(e).__name__}); re-run train-interpreter"
        ) from None
    return interp.eval().requires_grad_(False), meta
