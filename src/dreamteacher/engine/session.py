"""What every training command does around its loop, written once: join the process group
(torchrun) and pick the device; open the run folder; build the optimizer, resume, wrap the
model for DDP / torch.compile and make the resumable loader; run the loop; at the end wait
for rank 0 and leave the group.

    with Session(cfg) as s:                    # dist setup; teardown when the block ends
        ...build the model on s.device...
        run = s.open_run()                     # RUN/config.yaml; refuses a finished run
        seconds = s.fit(net, micro_step, dataset, run, total=..., warmup=..., desc=...)
        if s.main: ...final files...
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from dreamteacher.data import Indexed, ResumableBatchSampler, StepTagged
from dreamteacher.engine import dist
from dreamteacher.engine.loop import EMA, MicroStep, optimize
from dreamteacher.errors import UserError
from dreamteacher.reporting import write_report
from dreamteacher.runfiles import Run
from dreamteacher.runtime import make_loader, seed_everything, set_rng_state


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """No weight decay on biases and norm parameters (1-d tensors)."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 else decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def make_optimizer(net: nn.Module, cfg: Any) -> torch.optim.AdamW:
    """AdamW over `net`'s trainable parameters at cfg.lr, cfg.betas and cfg.weight_decay."""
    betas = (float(cfg.betas[0]), float(cfg.betas[1]))
    return torch.optim.AdamW(param_groups(net, cfg.weight_decay), lr=cfg.lr, betas=betas)


def restore(
    run: Run, resume: bool, model: nn.Module, opt: torch.optim.Optimizer, ema: EMA | None = None
) -> int:
    """With --resume, load the newest checkpoint into model, optimizer (and EMA) and restore
    the RNG states; returns the step to continue from (0 for a fresh run)."""
    if not resume:
        return 0
    if (state := run.load_checkpoint()) is None:
        if run.rank == 0:
            print(f"--resume: no checkpoint in {run.dir} yet; starting at step 0")
        return 0
    try:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
    except (RuntimeError, ValueError) as e:  # another model, or other parameter groups
        first = str(e).strip().splitlines()[0]
        raise UserError(
            f"{run.dir}: its last checkpoint does not fit this model ({first}); resume with "
            "the settings it was written with, or start a fresh --out"
        ) from None
    if ema is not None:
        ema.module.load_state_dict(state["ema"])
    set_rng_state(state["rng"])
    if run.rank == 0:
        print(f"resumed {run.dir} at step {state['step']}")
    return int(state["step"])


def training_loader(
    dataset,
    cfg: Any,
    env: dist.DistEnv,
    device: torch.device,
    start: int,
    total: int,
    step_keyed: bool = False,
):
    """(sampler, loader) for a training loop: this rank's share of each global batch of
    batch_size x accum_steps x world_size samples, from step `start` to `total`; items carry
    their dataset index first (it keys their randomness). `step_keyed`: the dataset itself
    takes (step, index) keys and returns the index first (teachers/cache.py CachedTargets)."""
    sampler = ResumableBatchSampler(
        len(dataset),
        cfg.batch_size * cfg.accum_steps,
        cfg.seed,
        start,
        total,
        rank=env.rank,
        world_size=env.world_size,
    )
    if step_keyed:
        return sampler, make_loader(dataset, StepTagged(sampler), cfg.num_workers, device, cfg.seed)
    return sampler, make_loader(Indexed(dataset), sampler, cfg.num_workers, device, cfg.seed)


class Session:
    """One training command's process: `env` (rank, world size), `device`, and `cfg` (a
    config with the run options of config.TrainOptions)."""

    def __init__(self, cfg: Any):
        self.cfg = cfg
        self.env, self.device = dist.setup(cfg.device)
        self.run: Run | None = None

    @property
    def main(self) -> bool:
        return self.env.main

    @property
    def global_batch(self) -> int:
        return self.cfg.batch_size * self.env.world_size * self.cfg.accum_steps

    def __enter__(self) -> Session:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:  # on an error each rank stops on its own
            dist.teardown(self.env)
            if self.main and self.run is not None and getattr(self.cfg, "report", False):
                path = write_report(self.run.dir)
                print(f"report: {path}")

    def open_run(self) -> Run:
        """The run folder at cfg.out: config.yaml written (by rank 0), checkpoints kept; with
        cfg.report, RUN/report.html is written from it when the command's block ends."""
        cfg, env = self.cfg, self.env
        self.run = Run(cfg.out, cfg, cfg.keep_checkpoints, env.rank, env.world_size)
        return self.run

    def fit(
        self,
        net: nn.Module,
        micro_step: MicroStep,
        dataset,
        run: Run,
        *,
        total: int,
        warmup: int,
        desc: str,
        steps_per_epoch: int | None = None,
        lr_final_frac: float = 0.0,
        max_grad_norm: float = math.inf,
        ema: EMA | None = None,
        accum: int | None = None,
        step_keyed: bool = False,
        reseed: bool = False,
        sync_bn: bool | None = None,
        on_checkpoint: Callable[[int], None] | None = None,
    ) -> float:
        """Train `net` (on the device) for `total` steps with `micro_step` (engine/loop.py)
        over `dataset`, resuming from `run`'s last checkpoint with --resume. `reseed`: a
        fresh run seeds the global RNG with seed + rank first (dropout, random pixel picks:
        each rank its own stream). `sync_bn`: None follows cfg.sync_bn (a UNet has no
        BatchNorm: train-teacher passes False). `on_checkpoint(step)`: called on rank 0
        after each checkpoint. Returns the wall time of the steps run, in
        seconds."""
        cfg, env, device = self.cfg, self.env, self.device
        opt = make_optimizer(net, cfg)
        start = restore(run, cfg.resume, net, opt, ema)
        if reseed and start == 0:
            seed_everything(cfg.seed + env.rank)
        sync_bn = cfg.sync_bn if sync_bn is None else sync_bn
        model = dist.wrap(net, env, device, sync_bn, cfg.compile)
        sampler, loader = training_loader(dataset, cfg, env, device, start, total, step_keyed)
        return optimize(
            loader,
            sampler,
            micro_step,
            net,
            model,
            opt,
            run,
            env,
            device,
            cfg,
            start=start,
            total=total,
            warmup=warmup,
            desc=desc,
            accum=accum,
            lr_final_frac=lr_final_frac,
            max_grad_norm=max_grad_norm,
            steps_per_epoch=steps_per_epoch,
            ema=ema,
            on_checkpoint=on_checkpoint,
        )
