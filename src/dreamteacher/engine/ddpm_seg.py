"""train-ddpm-seg: the DDPM-seg baseline (baselines/ddpm_seg.py) on N labelled images, in the
loop every segmentation command shares, then its test-split evaluation (RUN/metrics.json)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from dreamteacher.baselines.ddpm_seg import DDPMSeg
from dreamteacher.config import DDPMSegConfig
from dreamteacher.engine import dist
from dreamteacher.engine.common import Run, atomic_save, resolve_teacher, seed_everything
from dreamteacher.engine.supervised import LabelledData, evaluate_and_report, fit


def train_ddpm_seg(cfg: DDPMSegConfig) -> dict:
    env, device = dist.setup(cfg.device)
    teacher = resolve_teacher(cfg)
    data = LabelledData(cfg)
    folder = data.folder
    seed_everything(cfg.seed)  # same init on every rank
    net = DDPMSeg(
        teacher,
        cfg.t,
        folder.num_classes,
        cfg.ensemble,
        cfg.hidden,
        cfg.pixels,
        folder.ignore_index,
    ).to(device)
    run = Run(cfg.out, cfg, cfg.keep_checkpoints, env.rank, env.world_size)
    data.save_ids(run, cfg.seed)
    if env.main:
        print(
            f"train-ddpm-seg: {cfg.ensemble} MLPs on {net.dim}-dim pixel descriptors of teacher "
            f"{cfg.teacher} at t={cfg.t}; {len(data.train_ids)} labelled images, {cfg.steps} "
            f"steps of {cfg.batch_size} images x {cfg.pixels} pixels, device {device}"
        )

    def step(model, x, y, keys):
        outs = model(x, y, keys)  # per member: (pixel logits # P, K, labels # P)
        ce = torch.stack([F.cross_entropy(z.float(), lab) for z, lab in outs]).mean()
        return {"loss": ce}

    train_time = fit(
        cfg,
        net,
        step,
        data.train,
        run,
        env,
        device,
        cfg.steps,
        cfg.warmup_steps,
        desc="ddpm-seg",
    )
    if not env.main:
        dist.teardown(env)
        return {}
    atomic_save(net.state_dict(), run.dir / "model.pt")
    metrics = evaluate_and_report(
        net,
        data,
        cfg,
        run,
        device,
        teacher=cfg.teacher,
        t=cfg.t,
        ensemble=cfg.ensemble,
        steps=cfg.steps,
        train_time_s=train_time,
    )
    dist.teardown(env)
    return metrics
