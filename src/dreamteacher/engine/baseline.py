"""pretrain-baseline: a self-supervised baseline (baselines/ssl.py) on the same images, the same
backbone and the same loop conventions as pretrain; RUN/final.pt exports with `export`.

Augmentations are lightly's (random per call), so a resumed run continues from its last
checkpoint but is not bit-identical to an uninterrupted one (pretrain's is)."""

from __future__ import annotations

import time
from pathlib import Path

import torch

from dreamteacher.baselines.ssl import build_method
from dreamteacher.config import BaselineConfig
from dreamteacher.data import unlabeled_images
from dreamteacher.engine import dist
from dreamteacher.engine.common import (
    NonFiniteGuard,
    Run,
    atomic_save,
    autocast,
    epoch_schedule,
    loop_state,
    lr_at,
    param_groups,
    progress,
    restore,
    seed_everything,
    training_loader,
)


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
    env, device = dist.setup(cfg.device)
    images = unlabeled_images(cfg.data, cfg.image_size, cfg.splits, cfg.strict)
    seed_everything(cfg.seed)
    bank = cfg.memory_bank or default_memory_bank(len(images), cfg.batch_size)
    net = build_method(
        cfg.method,
        cfg.backbone,
        cfg.image_size,
        momentum=cfg.momentum,
        temperature=cfg.temperature,
        memory_bank=bank,
    ).to(device)
    data = Views(images, net.views)
    run = Run(cfg.out, cfg, keep=cfg.keep_checkpoints, rank=env.rank)
    opt = torch.optim.AdamW(param_groups(net, cfg.weight_decay), lr=cfg.lr, betas=(0.9, 0.95))
    global_batch = cfg.batch_size * env.world_size * cfg.accum_steps
    steps_per_epoch, total, warmup = epoch_schedule(len(data), global_batch, cfg)
    start = restore(run, cfg.resume, net, opt)
    model = dist.wrap(net, env, device, cfg.sync_bn, cfg.compile)
    sampler, loader = training_loader(data, cfg, env, device, start, total)
    if env.main:
        print(
            f"pretrain-baseline {cfg.method}: {cfg.backbone} on {len(data)} images at "
            f"{cfg.image_size[0]}x{cfg.image_size[1]}, {total} steps "
            f"({total / steps_per_epoch:g} epochs) of global batch {global_batch}, device {device}"
        )
    model.train()
    guard = NonFiniteGuard(cfg.max_bad_steps, run, net)
    with progress(total, start, f"pretrain {cfg.method}", disable=not env.main) as bar:
        t0 = time.time()
        for step, (_idx, *views) in zip(range(start, total), loader):
            lr = lr_at(step, total, warmup, cfg.lr)
            for g in opt.param_groups:
                g["lr"] = lr
            opt.zero_grad(set_to_none=True)
            guard.begin()
            views = [v.to(device, non_blocking=True) for v in views]  # 2 x (B, 3, H, W)
            with autocast(device, cfg.precision):
                # forward = the method's loss; momentum encoders are frozen, DDP skips them
                loss = model(views, step / max(1, total - 1))
            loss.float().backward()
            gnorm = torch.nn.utils.clip_grad_norm_(net.parameters(), float("inf"))
            ok = guard.ok(step, loss.detach(), gnorm)
            if ok:
                opt.step()
            bar.update(1)
            done = step + 1
            if done % cfg.log_every == 0 or done == total:
                logs = dist.mean_over_ranks({"loss": loss.item()}, env)
                bar.set_postfix(loss=f"{logs['loss']:.4f}")
                if ok:
                    run.log(
                        {
                            "step": done,
                            "epoch": done / steps_per_epoch,
                            "lr": lr,
                            **logs,
                            "images_seen": done * global_batch,
                            "time": time.time() - t0,
                        }
                    )
            if done % cfg.save_every == 0 or done == total:
                run.save_checkpoint(
                    done,
                    {
                        "model": net.state_dict(),
                        "optimizer": opt.state_dict(),
                        **loop_state(sampler, total, warmup),
                    },
                )
    if env.main:
        atomic_save(
            {
                "backbone": cfg.backbone,
                "method": cfg.method,
                "strides": net.backbone.strides,
                "backbone_state": net.backbone.state_dict_for_export(),
                "image_size": cfg.image_size,
                "steps": total,
                "train_time_s": time.time() - t0,
            },
            run.dir / "final.pt",
        )
        print(f"wrote {run.dir / 'final.pt'}; export it with `dreamteacher export {run.dir}`")
    dist.teardown(env)
    return run.dir
