"""export: the bare backbone as timm weights (BB/model.safetensors + BB/config.json).

The file holds every key of `timm.create_model(name)`, so `load_state_dict(strict=True)` works.
The head was never trained (pretraining has no labels): its weights are timm's fresh
initialisation (seed 0) and config.json lists them under `untrained_keys`; replace the head
for your task (`model.reset_classifier(K)`) or build the model with `num_classes=0` and load
with strict=False.
"""

from __future__ import annotations

import json
from pathlib import Path

import timm
import torch
from safetensors.torch import load_file, save_file

from dreamteacher.errors import UserError
from dreamteacher.runfiles import atomic_json, atomic_write
from dreamteacher.student import Backbone


def is_export(folder: Path) -> bool:
    """Whether `folder` holds a backbone export (config.json naming an architecture)."""
    try:
        meta = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(meta, dict) and "architecture" in meta and "source_run" in meta


def check_out(out: Path, force: bool) -> bool:
    """An export goes to a new or empty folder, or replaces an earlier export (returns True);
    any other non-empty folder is written into only with `force`."""
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is an existing file; name a folder for the export")
    if not out.is_dir() or not any(out.iterdir()):
        return False
    if is_export(out):
        return True
    if not force:
        held = ", ".join(sorted(p.name for p in out.iterdir())[:3])
        raise UserError(
            f"--out {out} is not empty and not an export (it holds {held}, ...); choose a new "
            "folder, or pass --force to write model.safetensors and config.json into it"
        )
    return False


def export(run: str | Path, out: str | Path, force: bool = False) -> Path:
    """Write `run`'s backbone to `out` (see the module's docstring); returns `out`."""
    run, out = Path(run), Path(out)
    replacing = check_out(out, force)
    final = run / "final.pt"
    if not final.exists():
        raise UserError(f"{final} not found; finish `dreamteacher pretrain --out {run}` first")
    try:
        state = torch.load(final, map_location="cpu", weights_only=False)
        name, strides, size = state["backbone"], state["strides"], state["image_size"]
        weights = state["backbone_state"]
    except Exception as e:  # noqa: BLE001 - truncated or foreign file
        raise UserError(
            f"{final} is unreadable ({type(e).__name__}); re-run pretrain with "
            "--resume to rewrite it"
        ) from None
    # what pretraining trains: the model without the head that Backbone prunes (fc for a
    # ResNet; norm + fc for a ConvNeXt; conv_head, bn2 and classifier for an EfficientNet)
    trained = set(Backbone(name, strides).model.state_dict())
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False)
    missing, unexpected = model.load_state_dict(weights, strict=False)
    bad = [k for k in missing if k in trained]
    if unexpected or bad:
        raise UserError(
            f"{final} does not match timm '{name}' (missing {bad[:3]}, unexpected "
            f"{list(unexpected)[:3]}); re-run pretrain with this timm version"
        )
    if replacing:
        print(f"replacing the export in {out}")
    tensors = {k: v.contiguous() for k, v in model.state_dict().items()}
    atomic_write(
        out / "model.safetensors", lambda tmp: save_file(tensors, tmp, metadata={"format": "pt"})
    )
    atomic_json(
        {
            "architecture": name,
            "num_classes": model.num_classes,
            "num_features": model.num_features,
            "untrained_keys": sorted(missing),
            "method": state.get("method", "dreamteacher"),
            "feature_strides": strides,
            "image_size": size,
            "source_run": str(run.resolve()),
        },
        out / "config.json",
    )
    print(
        f"exported {name} to {out / 'model.safetensors'}; load with "
        f"timm.create_model('{name}', pretrained=True, "
        f"pretrained_cfg_overlay=dict(file='{out / 'model.safetensors'}'))"
    )
    return out


def read_exported(path: str | Path) -> tuple[str, dict[str, torch.Tensor]]:
    """(timm name, state dict) of an exported backbone folder."""
    path = Path(path)
    cfg, weights = path / "config.json", path / "model.safetensors"
    if not cfg.exists() or not weights.exists():
        raise UserError(
            f"{path} is not an exported backbone (needs model.safetensors and "
            "config.json); run `dreamteacher export RUN --out DIR` first"
        )
    return json.loads(cfg.read_text())["architecture"], load_file(str(weights))


def load_backbone(path: str | Path, **timm_kwargs) -> torch.nn.Module:
    """timm model with the exported weights (strict)."""
    name, sd = read_exported(path)
    model = timm.create_model(name, pretrained=False)
    model.load_state_dict(sd, strict=True)
    if "num_classes" in timm_kwargs:
        model.reset_classifier(timm_kwargs.pop("num_classes"))
    return model
