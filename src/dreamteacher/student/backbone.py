"""The student: any timm CNN with feature maps at strides 4, 8, 16, 32 (C2..C5)."""

from __future__ import annotations

import timm
import torch
from torch import nn

from dreamteacher.config import STRIDES
from dreamteacher.errors import UserError


class Backbone(nn.Module):
    """A full timm model (its own module names, so its weights export without prefixes) whose
    classifier head is pruned; forward returns the maps at `strides`."""

    def __init__(self, name: str, strides: list[int] = tuple(STRIDES), **timm_kwargs):
        super().__init__()
        try:
            model = timm.create_model(name, pretrained=False, **timm_kwargs)
        except RuntimeError as e:
            if "Unknown model" in str(e):
                raise UserError(
                    f"unknown backbone '{name}'; pick a timm model name, e.g. resnet50, "
                    "convnext_tiny (see timm.list_models())"
                ) from None
            raise
        if not hasattr(model, "forward_intermediates") or not hasattr(model, "feature_info"):
            raise UserError(f"backbone '{name}' has no multi-scale features in timm; pick a CNN")
        info = model.feature_info
        reductions = [int(f["reduction"]) for f in info]
        self.indices, self.channels = [], []
        for s in strides:
            if s not in reductions:
                raise UserError(
                    f"backbone '{name}' has feature strides {reductions}, not {s}; pick a CNN "
                    "with stages at strides 4, 8, 16 and 32"
                )
            k = len(reductions) - 1 - reductions[::-1].index(s)  # last stage at that stride
            self.indices.append(k)
            self.channels.append(int(info[k]["num_chs"]))
        self.name = name
        self.strides = list(strides)
        self.timm_kwargs = dict(timm_kwargs)
        model.prune_intermediate_layers(self.indices, prune_head=True)
        self.model = model
        cfg = model.pretrained_cfg
        self.register_buffer(
            "mean",
            torch.tensor(cfg.get("mean", (0.485, 0.456, 0.406))).view(1, 3, 1, 1),
            persistent=False,
        )
        self.register_buffer(
            "std",
            torch.tensor(cfg.get("std", (0.229, 0.224, 0.225))).view(1, 3, 1, 1),
            persistent=False,
        )

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """x # B, 3, H, W in [0, 1] -> [C2 # B, c2, H/4, W/4, ..., C5 # B, c5, H/32, W/32]."""
        x = (x - self.mean) / self.std
        return self.model.forward_intermediates(x, indices=self.indices, intermediates_only=True)

    def state_dict_for_export(self) -> dict[str, torch.Tensor]:
        """The timm model's weights under timm's own names (no `model.` prefix)."""
        return {k: v.detach().cpu().contiguous() for k, v in self.model.state_dict().items()}
