"""train-ddpm-seg: the DDPM-seg baseline (baselines/ddpm_seg.py) on N labelled images, in the
loop every segmentation command shares, then its test-split evaluation (RUN/metrics.json)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from dreamteacher.baselines.ddpm_seg import DDPMSeg
from dreamteacher.config import DDPMSegConfig
from dreamteacher.engine.session import Session
from dreamteacher.engine.supervised import LabelledData, evaluate_and_report
from dreamteacher.randomness import keyed_hflip
from dreamteacher.runfiles import atomic_save
from dreamteacher.runtime import seed_everything
from dreamteacher.teachers import resolve_teacher


def train_ddpm_seg(cfg: DDPMSegConfig) -> dict:
    with Session(cfg) as s:
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
        ).to(s.device)
        run = s.open_run()
        data.save_ids(run, cfg.seed)
        if s.main:
            print(
                f"train-ddpm-seg: {cfg.ensemble} MLPs on {net.dim}-dim pixel descriptors of "
                f"teacher {cfg.teacher} at t={cfg.t}; {len(data.train_ids)} labelled images, "
                f"{cfg.steps} steps of {cfg.batch_size} images x {cfg.pixels} pixels, "
                f"device {s.device}"
            )

        def micro_step(model, batch, keys, step):
            x, y = keyed_hflip(keys, *batch)  # B, 3, H, W and B, H, W
            outs = model(x, y, keys)  # per member: (pixel logits # P, K, labels # P)
            ce = torch.stack([F.cross_entropy(z.float(), lab) for z, lab in outs]).mean()
            return {"loss": ce}

        train_time = s.fit(
            net, micro_step, data.train, run, total=cfg.steps, warmup=cfg.warmup_steps,
            desc="ddpm-seg", reseed=True,
        )  # fmt: skip
        if not s.main:
            return {}
        atomic_save(net.state_dict(), run.dir / "model.pt")
        return evaluate_and_report(
            net,
            data,
            cfg,
            run,
            s.device,
            teacher=cfg.teacher,
            t=cfg.t,
            ensemble=cfg.ensemble,
            steps=cfg.steps,
            train_time_s=train_time,
        )
