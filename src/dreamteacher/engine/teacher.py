"""train-teacher: a DDPM on every image of a folder (epsilon prediction, EMA weights)."""

from __future__ import annotations

import copy
import shutil
from pathlib import Path

import torch
import torch.nn.functional as F
from torchvision.utils import save_image

from dreamteacher.config import TeacherConfig
from dreamteacher.data import unlabeled_images
from dreamteacher.engine import dist
from dreamteacher.engine.common import (
    Run,
    atomic_json,
    atomic_write,
    autocast,
    micro_batches,
    restore,
    seed_everything,
    training_loader,
)
from dreamteacher.engine.loop import optimize
from dreamteacher.engine.randomness import keyed_hflip, keyed_randint, keyed_randn, sample_keys
from dreamteacher.errors import UserError
from dreamteacher.teachers.diffusion import build_scheduler, build_unet, sample_images


@torch.no_grad()
def ema_update(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    for e, p in zip(ema.parameters(), model.parameters(), strict=True):
        e.lerp_(p, 1 - decay)
    for e, b in zip(ema.buffers(), model.buffers(), strict=True):
        e.copy_(b)


def train_teacher(cfg: TeacherConfig) -> Path:
    """Train the DDPM; writes RUN/unet (EMA, diffusers format), RUN/scheduler,
    RUN/teacher.json, RUN/samples.png. Returns the run folder. Runs under torchrun too."""
    env, device = dist.setup(cfg.device)
    # checked before anything is written
    data = unlabeled_images(cfg.data, cfg.image_size, cfg.splits, cfg.strict)
    unet_overrides = {
        "block_out_channels": cfg.block_out_channels,
        "layers_per_block": cfg.layers_per_block,
        "attention_levels": cfg.attention_levels,
    }
    seed_everything(cfg.seed)  # same init on every rank
    unet = build_unet(cfg.image_size, cfg.preset, **unet_overrides).to(device)
    run = Run(cfg.out, cfg, cfg.keep_checkpoints, env.rank, env.world_size)
    ema = copy.deepcopy(unet).eval().requires_grad_(False)
    scheduler = build_scheduler(cfg.num_train_timesteps, cfg.beta_schedule)
    acp = scheduler.alphas_cumprod.to(device)
    opt = torch.optim.AdamW(unet.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    global_batch = cfg.batch_size * env.world_size * cfg.accum_steps

    start = restore(run, cfg.resume, unet, opt, ema)
    # no BatchNorm in the UNet: nothing to sync
    model = dist.wrap(unet, env, device, sync_bn=False, compile=cfg.compile)

    sampler, loader = training_loader(data, cfg, env, device, start, cfg.steps)
    if env.main:
        n_params = sum(p.numel() for p in unet.parameters())
        print(
            f"train-teacher: {len(data)} images at {cfg.image_size[0]}x{cfg.image_size[1]}, "
            f"UNet {cfg.preset} {n_params / 1e6:.1f}M params, {cfg.steps} steps of global batch "
            f"{global_batch}, device {device}"
        )

    def step_fn(step: int, batch) -> dict[str, torch.Tensor]:
        idx, x = batch  # B, and B, 3, H, W: this rank's share of the global batch
        step_loss = torch.zeros((), device=device)
        for m, (idx_m, x_m) in micro_batches(cfg.accum_steps, idx, x):
            keys = sample_keys(cfg.seed, step, idx_m)
            (x_m,) = keyed_hflip(keys, x_m.to(device, non_blocking=True))
            x0 = x_m * 2 - 1  # B, 3, H, W in [-1, 1]
            noise = keyed_randn(keys, tuple(x0.shape[1:]), device)
            t = keyed_randint(keys, cfg.num_train_timesteps).to(device)
            ab = acp[t].view(-1, 1, 1, 1)
            xt = ab.sqrt() * x0 + (1 - ab).sqrt() * noise
            with (
                autocast(device, cfg.precision),
                dist.no_sync(model, sync=m == cfg.accum_steps - 1),
            ):
                pred = model(xt, t).sample
                loss = F.mse_loss(pred.float(), noise)  # epsilon prediction
                (loss / cfg.accum_steps).backward()
            step_loss += loss.detach() / cfg.accum_steps
        return {"loss": step_loss}

    def update_ema(step: int) -> None:
        # EMA with warm-up, so short runs are not dominated by the random init
        ema_update(ema, unet, min(cfg.ema_decay, (1 + step) / (10 + step)))

    optimize(
        loader,
        sampler,
        step_fn,
        unet,
        opt,
        run,
        env,
        cfg,
        start=start,
        total=cfg.steps,
        warmup=cfg.warmup_steps,
        desc="train-teacher",
        lr_final_frac=0.1,
        max_grad_norm=1.0,
        after_update=update_ema,
        extra_state=lambda: {"ema": ema.state_dict()},
    )
    if env.main:
        save_teacher(run.dir, ema, scheduler, cfg)
        grid = sample_images(
            ema,
            scheduler,
            cfg.num_samples,
            cfg.image_size,
            cfg.sample_steps,
            seed=cfg.seed,
            device=device,
        )
        atomic_write(
            run.dir / "samples.png",
            lambda tmp: save_image(grid, tmp, nrow=int(cfg.num_samples**0.5), format="png"),
        )
        print(f"teacher saved to {run.dir / 'unet'}; samples in {run.dir / 'samples.png'}")
    dist.teardown(env)
    return run.dir


def save_teacher(out: Path, unet, scheduler, cfg: TeacherConfig) -> None:
    """diffusers format (UNet2DModel.from_pretrained(out / 'unet')), swapped in atomically."""
    for name, obj in (("unet", unet), ("scheduler", scheduler)):
        tmp, old = out / f".{name}.tmp", out / f".{name}.old"
        try:
            shutil.rmtree(tmp, ignore_errors=True)
            obj.save_pretrained(tmp)  # a failure here leaves out/<name> untouched
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
    atomic_json(
        {
            "type": "diffusion",
            "image_size": list(cfg.image_size),
            "preset": cfg.preset,
            "steps": cfg.steps,
            "data": str(cfg.data),
        },
        out / "teacher.json",
    )
