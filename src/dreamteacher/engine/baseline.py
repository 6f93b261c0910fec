"""pretrain-baseline: a self-supervised baseline (baselines/ssl.py) on the same images, the same
backbone and the same loop conventions as pretrain; RUN/final.pt exports with `export`.

Augmentations are lightly's (random per call), so a resumed run continues from its last
checkpoint but is not bit-identical to an uninterrupted one (pretrain's is). With
accum_steps > 1 a rank's batch_size x accum_steps images go through in one pass (a contrastive
loss wants its negatives together, a momentum encoder moves once per step), so accumulation
keeps the global batch here but does not lower memory."""

from __future__ import annotations

from pathlib import Path

import torch

from dreamteacher.baselines.ssl import build_method
from dreamteacher.config import BaselineConfig
from dreamteacher.data import unlabeled_images
from dreamteacher.engine.loop import epoch_schedule
from dreamteacher.engine.session import Session
from dreamteacher.runfiles import atomic_save
from dreamteacher.runtime import seed_everything


class Views(torch.utils.data.Dataset):
    """Two augmented views per image: (view0 # 3, H, W, view1 # 3, H, W), values in [0, 1]."""

    def __init__(self, images, transform):
        self.images, self.transform = images, transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, ...]:
        return tuple(self.transform(self.images.pil(i)))


def default_memory_bank(n_images: int, batch: int) -> int:
    """A MoCo queue no longer than half the data set (else it holds the positives' own past
    keys as negatives), a multiple of the batch, at most MoCo's 4096."""
    return max(batch, min(4096, (n_images // 2) // batch * batch))


def pretrain_baseline(cfg: BaselineConfig) -> Path:
    """Train; writes RUN/final.pt (the backbone, as pretrain does) and returns the run folder."""
    with Session(cfg) as s:
        images = unlabeled_images(cfg.data, cfg.image_size, cfg.splits, cfg.strict)
        seed_everything(cfg.seed)
        # every step enqueues the keys of the whole global batch (all ranks', gathered)
        bank = cfg.memory_bank or default_memory_bank(len(images), s.global_batch)
        net = build_method(
            cfg.method,
            cfg.backbone,
            cfg.image_size,
            momentum=cfg.momentum,
            temperature=cfg.temperature,
            memory_bank=bank,
        ).to(s.device)
        data = Views(images, net.views)
        run = s.open_run()
        steps_per_epoch, total, warmup = epoch_schedule(len(data), s.global_batch, cfg)
        if s.main:
            print(
                f"pretrain-baseline {cfg.method}: {cfg.backbone} on {len(data)} images at "
                f"{cfg.image_size[0]}x{cfg.image_size[1]}, {total} steps "
                f"({total / steps_per_epoch:g} epochs) of global batch {s.global_batch}, "
                f"device {s.device}"
            )

        def micro_step(model, views, keys, step) -> dict[str, torch.Tensor]:
            # views: 2 x (B, 3, H, W). The forward is the method's loss; momentum encoders
            # are frozen, DDP skips them
            loss = model(list(views), step / max(1, total - 1))
            return {"loss": loss.float()}

        # the rank's batch_size x accum_steps images in one pass (accum=1): a contrastive
        # loss needs its negatives together, and a momentum encoder moves once per step
        train_s = s.fit(
            net, micro_step, data, run, total=total, warmup=warmup,
            desc=f"pretrain {cfg.method}", steps_per_epoch=steps_per_epoch, accum=1,
        )  # fmt: skip
        if s.main:
            atomic_save(
                {
                    "backbone": cfg.backbone,
                    "method": cfg.method,
                    "strides": net.backbone.strides,
                    "backbone_state": net.backbone.state_dict_for_export(),
                    "image_size": cfg.image_size,
                    "steps": total,
                    "train_time_s": train_s,
                },
                run.dir / "final.pt",
            )
            print(f"wrote {run.dir / 'final.pt'}; export it with `dreamteacher export {run.dir}`")
        return run.dir
