"""pretrain: feature distillation of a frozen teacher into a timm backbone (METHOD.md 1-3, 5)."""

from __future__ import annotations

import time
from pathlib import Path

import torch

from dreamteacher.config import PretrainConfig
from dreamteacher.data import ResumableBatchSampler, unlabeled_images
from dreamteacher.engine.common import (
    NonFiniteGuard,
    Run,
    atomic_save,
    loop_state,
    lr_at,
    param_groups,
    progress,
    resolve_device,
    seed_everything,
    set_rng_state,
)
from dreamteacher.engine.teacher import hflip_batch
from dreamteacher.errors import UserError
from dreamteacher.losses import feature_distillation_loss
from dreamteacher.student import Backbone, FeatureRegressor, Student
from dreamteacher.teachers import load_teacher
from dreamteacher.teachers.diffusion import teacher_image_size


def pretrain(cfg: PretrainConfig) -> Path:
    """Distil; writes RUN/final.pt (backbone + regressor weights) and returns the run folder."""
    device = resolve_device(cfg.device)
    if not cfg.teacher:
        raise UserError("no teacher given; pass --teacher RUN (a train-teacher output folder)")
    teacher = load_teacher(cfg.teacher, t=cfg.t, strides=cfg.strides).to(device)
    if cfg.image_size is None:
        cfg.image_size = teacher_image_size(cfg.teacher)
        if cfg.image_size is None:
            raise UserError("the teacher folder does not say its resolution; pass --image-size")
    if any(v % teacher.min_divisor for v in cfg.image_size):
        raise UserError(
            f"--image-size {cfg.image_size[0]} {cfg.image_size[1]} is not divisible by "
            f"{teacher.min_divisor}, the teacher UNet's total stride; pick a multiple of it"
        )
    data = unlabeled_images(cfg.data, cfg.image_size, cfg.splits, cfg.strict)
    seed_everything(cfg.seed)
    backbone = Backbone(cfg.backbone, cfg.strides)
    student = Student(
        backbone, FeatureRegressor(backbone.channels, teacher.channels, cfg.regressor_channels)
    ).to(device)
    run = Run(cfg.out, cfg, keep=cfg.keep_checkpoints)
    opt = torch.optim.AdamW(
        param_groups(student, cfg.weight_decay), lr=cfg.lr, betas=tuple(cfg.betas)
    )
    steps_per_epoch = max(1, len(data) // cfg.batch_size)
    total = cfg.epochs * steps_per_epoch
    warmup = int(round(cfg.warmup_epochs * steps_per_epoch))

    start = 0
    if cfg.resume and (state := run.load_checkpoint()) is not None:
        student.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        set_rng_state(state["rng"])
        start = state["step"]
        print(f"resumed {run.dir} at step {start}")

    sampler = ResumableBatchSampler(len(data), cfg.batch_size, cfg.seed, start, total)
    loader = torch.utils.data.DataLoader(
        data,
        batch_sampler=sampler,
        num_workers=cfg.num_workers,
        generator=torch.Generator().manual_seed(cfg.seed),
    )  # keeps the global RNG untouched
    print(
        f"pretrain: {cfg.backbone} <- teacher {cfg.teacher} (t={cfg.t}); "
        f"{len(data)} images at {cfg.image_size[0]}x{cfg.image_size[1]}, {cfg.epochs} epochs = "
        f"{total} steps, device {device}"
    )
    for line in getattr(teacher, "tap_description", lambda: [])():
        print(f"  teacher {line}")
    student.train()
    guard = NonFiniteGuard(cfg.max_bad_steps, run, student)
    with progress(total, start, "pretrain") as bar:  # closed even if a step raises
        t0 = time.time()
        for step, x in zip(range(start, total), loader):
            x = hflip_batch(x.to(device, non_blocking=True))[0]  # B, 3, H, W; flip is the only aug
            # frozen teacher under inference mode; clone() turns its outputs into normal tensors
            guard.begin()
            targets = [f.clone() for f in teacher(x)]
            preds = student(x)
            losses = feature_distillation_loss(preds, targets, cfg.lambda_at)
            lr = lr_at(step, total, warmup, cfg.lr)
            for g in opt.param_groups:
                g["lr"] = lr
            opt.zero_grad(set_to_none=True)
            losses["loss"].backward()
            ok = guard.ok(step, losses["loss"])  # a NaN/inf step is skipped
            if ok:
                opt.step()
            bar.update(1)
            bar.set_postfix(loss=f"{losses['loss'].item():.4f}")
            done = step + 1
            if ok and (done % cfg.log_every == 0 or done == total):
                run.log(
                    {
                        "step": done,
                        "epoch": done / steps_per_epoch,
                        "lr": lr,
                        **{k: v.item() for k, v in losses.items()},
                        "images_seen": done * cfg.batch_size,
                        "time": time.time() - t0,
                    }
                )
            if done % cfg.save_every == 0 or done == total:
                run.save_checkpoint(
                    done,
                    {
                        "model": student.state_dict(),
                        "optimizer": opt.state_dict(),
                        **loop_state(sampler, total, warmup),
                    },
                )
    atomic_save(
        {
            "backbone": cfg.backbone,
            "strides": cfg.strides,
            "backbone_state": backbone.state_dict_for_export(),
            "regressor_state": student.regressor.state_dict(),
            "teacher_channels": teacher.channels,
            "image_size": cfg.image_size,
        },
        run.dir / "final.pt",
    )
    print(
        f"pretrained backbone in {run.dir / 'final.pt'}; export it with "
        f"`dreamteacher export {run.dir} --out BB`"
    )
    return run.dir
