"""train-teacher: a DDPM on every image of a folder (epsilon prediction, EMA weights)."""

from __future__ import annotations

import copy
import shutil
from pathlib import Path

import torch
import torch.nn.functional as F
from torchvision.utils import make_grid, save_image

from dreamteacher.config import TEACHER_BETAS, TEACHER_KINDS, TEACHER_LR, TeacherConfig
from dreamteacher.data import unlabeled_images
from dreamteacher.engine.gan import train_gan
from dreamteacher.engine.loop import EMA
from dreamteacher.engine.session import Session
from dreamteacher.errors import UserError
from dreamteacher.randomness import keyed_hflip, keyed_randint, keyed_randn
from dreamteacher.reporting import SAMPLES
from dreamteacher.runfiles import atomic_json, atomic_write, make_readable
from dreamteacher.runtime import seed_everything
from dreamteacher.teachers.diffusion import (
    DiffusionTeacher,
    build_scheduler,
    build_unet,
    sample_images,
)


def train_teacher(cfg: TeacherConfig) -> Path:
    """Train the DDPM; writes RUN/unet (EMA, diffusers format), RUN/scheduler,
    RUN/teacher.json, RUN/samples.png. Returns the run folder. Runs under torchrun too.
    kind=gan trains a StyleGAN2 instead (engine/gan.py)."""
    if cfg.kind not in TEACHER_KINDS:
        raise UserError(f"unknown --kind '{cfg.kind}'; choose one of {', '.join(TEACHER_KINDS)}")
    cfg.lr = TEACHER_LR[cfg.kind] if cfg.lr is None else cfg.lr
    cfg.betas = list(TEACHER_BETAS[cfg.kind]) if cfg.betas is None else cfg.betas
    if cfg.kind == "gan":
        return train_gan(cfg)
    with Session(cfg) as s:
        # checked before anything is written
        data = unlabeled_images(cfg.data, cfg.image_size, cfg.splits, cfg.strict)
        unet_overrides = {
            "block_out_channels": cfg.block_out_channels,
            "layers_per_block": cfg.layers_per_block,
            "attention_levels": cfg.attention_levels,
        }
        seed_everything(cfg.seed)  # same init on every rank
        unet = build_unet(cfg.image_size, cfg.preset, **unet_overrides).to(s.device)
        run = s.open_run()
        ema = EMA(unet, cfg.ema_decay)
        scheduler = build_scheduler(cfg.num_train_timesteps, cfg.beta_schedule)
        acp = scheduler.alphas_cumprod.to(s.device)
        if s.main:
            n_params = sum(p.numel() for p in unet.parameters())
            print(
                f"train-teacher: {len(data)} images at {cfg.image_size[0]}x{cfg.image_size[1]}, "
                f"UNet {cfg.preset} {n_params / 1e6:.1f}M params, {cfg.steps} steps of global "
                f"batch {s.global_batch}, device {s.device}"
            )

        def micro_step(model, batch, keys, step) -> dict[str, torch.Tensor]:
            (x,) = keyed_hflip(keys, *batch)  # B, 3, H, W in [0, 1]
            x0 = x * 2 - 1
            noise = keyed_randn(keys, tuple(x0.shape[1:]), s.device)
            t = keyed_randint(keys, cfg.num_train_timesteps).to(s.device)
            ab = acp[t].view(-1, 1, 1, 1)
            xt = ab.sqrt() * x0 + (1 - ab).sqrt() * noise
            pred = model(xt, t).sample
            return {"loss": F.mse_loss(pred.float(), noise)}  # epsilon prediction

        def samples(step: int, path: Path) -> None:
            """A grid of the EMA weights' samples (fixed noise: the grids of a run compare)."""
            grid = sample_images(
                ema.module,
                scheduler,
                cfg.num_samples,
                cfg.image_size,
                cfg.sample_steps,
                seed=cfg.seed,
                device=s.device,
            )
            nrow = int(cfg.num_samples**0.5)
            run.log_image("samples", make_grid(grid, nrow=nrow), step)
            atomic_write(path, lambda tmp: save_image(grid, tmp, nrow=nrow, format="png"))

        def at_checkpoint(step: int) -> None:  # the last one's grid is samples.png
            if cfg.checkpoint_samples and step < cfg.steps:
                samples(step, run.dir / SAMPLES / f"step_{step:08d}.png")

        seconds = s.fit(
            unet,
            micro_step,
            data,
            run,
            total=cfg.steps,
            warmup=cfg.warmup_steps,
            desc="train-teacher",
            lr_final_frac=0.1,
            max_grad_norm=1.0,
            ema=ema,
            sync_bn=False,
            on_checkpoint=at_checkpoint,
        )
        if s.main:
            save_teacher(run.dir, ema.module, scheduler, cfg, seconds)
            samples(cfg.steps, run.dir / "samples.png")
            print(f"teacher saved to {run.dir / 'unet'}; samples in {run.dir / 'samples.png'}")
        return run.dir


def save_teacher(out: Path, unet, scheduler, cfg: TeacherConfig, seconds: float = 0.0) -> None:
    """diffusers format (UNet2DModel.from_pretrained(out / 'unet')), swapped in atomically;
    teacher.json says what it is, its levels (as read at the default strides) and its size."""
    for name, obj in (("unet", unet), ("scheduler", scheduler)):
        tmp, old = out / f".{name}.tmp", out / f".{name}.old"
        try:
            shutil.rmtree(tmp, ignore_errors=True)
            obj.save_pretrained(tmp)  # a failure here leaves out/<name> untouched
            make_readable(tmp)  # safetensors writes its files owner-only
        except OSError as e:
            shutil.rmtree(tmp, ignore_errors=True)
            raise UserError(
                f"could not write {out / name} ({e.strerror or type(e).__name__}); the previous "
                "files are intact. Free disk space or fix permissions, then run with --resume"
            ) from None
        shutil.rmtree(old, ignore_errors=True)
        if (out / name).exists():
            (out / name).rename(old)
        tmp.rename(out / name)
        shutil.rmtree(old, ignore_errors=True)
    levels = DiffusionTeacher(copy.deepcopy(unet), scheduler, image_size=cfg.image_size)
    atomic_json(
        {
            "type": "diffusion",
            "image_size": list(cfg.image_size),
            "preset": cfg.preset,
            "steps": cfg.steps,
            "data": str(cfg.data),
            "parameters": sum(p.numel() for p in unet.parameters()),
            "levels": {"strides": levels.strides, "channels": levels.channels},
            "train_time_s": round(seconds, 1),  # this invocation's steps (a resumed run: since)
        },
        out / "teacher.json",
    )
