"""finetune: semantic segmentation (UPerNet head, all weights trainable) and its evaluation."""

from __future__ import annotations

import json
from pathlib import Path

import torch.nn.functional as F

from dreamteacher.config import FinetuneConfig
from dreamteacher.engine.session import Session
from dreamteacher.engine.supervised import LabelledData, evaluate_and_report
from dreamteacher.errors import UserError
from dreamteacher.exporting import read_exported
from dreamteacher.randomness import keyed_hflip
from dreamteacher.runfiles import atomic_save
from dreamteacher.runtime import seed_everything
from dreamteacher.student import Backbone, Segmenter


def build_segmenter(backbone: str, weights: str, num_classes: int, ch: int = 256) -> Segmenter:
    bb = Backbone(backbone)
    if weights != "scratch":
        name, sd = read_exported(weights)
        if name != backbone:
            raise UserError(
                f"--weights {weights} holds a {name} but --backbone is {backbone}; "
                f"pass --backbone {name}"
            )
        own = bb.model.state_dict()
        missing = [k for k in own if k not in sd]
        if missing:
            raise UserError(f"{weights}/model.safetensors lacks {missing[0]}; re-export it")
        bb.model.load_state_dict({k: sd[k] for k in own}, strict=True)
    return Segmenter(bb, num_classes, ch)


def finetune(cfg: FinetuneConfig) -> dict:
    """Train, evaluate on the test split (val if none), write RUN/metrics.json; return it.
    Runs under torchrun too (DDP over backbone + head; evaluation on rank 0)."""
    with Session(cfg) as s:
        data = LabelledData(cfg)
        folder = data.folder
        seed_everything(cfg.seed)  # same init on every rank
        net = build_segmenter(cfg.backbone, cfg.weights, folder.num_classes, cfg.head_channels)
        if cfg.freeze_backbone:
            net.freeze_backbone()
        net = net.to(s.device)
        run = s.open_run()
        data.save_ids(run, cfg.seed)
        if s.main:
            print(
                f"finetune{' (frozen backbone)' if cfg.freeze_backbone else ''}: "
                f"{cfg.backbone} ({cfg.weights}) on {len(data.train_ids)} labelled images, "
                f"{folder.num_classes} classes, {cfg.steps} steps of global batch "
                f"{s.global_batch} at {cfg.image_size[0]}x{cfg.image_size[1]}, device {s.device}"
            )

        def micro_step(model, batch, keys, step):
            x, y = keyed_hflip(keys, *batch)  # B, 3, H, W and B, H, W
            logits = model(x)  # B, K, H, W
            return {"loss": F.cross_entropy(logits.float(), y, ignore_index=folder.ignore_index)}

        train_time = s.fit(
            net, micro_step, data.train, run, total=cfg.steps, warmup=cfg.warmup_steps,
            desc="finetune", reseed=True,
        )  # fmt: skip
        if not s.main:
            return {}
        metrics = evaluate_and_report(
            net,
            data,
            cfg,
            run,
            s.device,
            backbone=cfg.backbone,
            weights=cfg.weights,
            steps=cfg.steps,
            freeze_backbone=cfg.freeze_backbone,
            train_time_s=train_time,
        )
        atomic_save(net.state_dict(), run.dir / "model.pt")
        return metrics


def load_metrics(run: str | Path) -> dict:
    return json.loads((Path(run) / "metrics.json").read_text())
