"""The optimizer loop that every training command runs (train-teacher, pretrain, the SSL
baselines, finetune and the segmenters that share its loop).

A step, top to bottom: warm-up + cosine lr; the rank's batch split into micro-batches, each
moved to the device and handed to the command's `MicroStep` under autocast (and DDP's
`no_sync` but for the last), its loss backpropagated divided by their number; the gradient
norm clipped; the update skipped if the loss or the norm is NaN/inf; an EMA update; the
logged terms averaged over micro-batches and ranks; a checkpoint every `save_every` steps.
What one micro-batch computes comes from the command."""

from __future__ import annotations

import copy
import math
import time
import warnings
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

from dreamteacher.engine import dist
from dreamteacher.errors import UserError
from dreamteacher.randomness import sample_keys
from dreamteacher.runfiles import Run, progress
from dreamteacher.runtime import autocast

# (model as wrapped for the run, this micro-batch's tensors on the device (the loader's items
# after the dataset index), one key per sample (mix(seed, step, index)), step)
#   -> {"loss": the loss to backpropagate, other terms to log}
MicroStep = Callable[[nn.Module, tuple[torch.Tensor, ...], list[int], int], dict[str, torch.Tensor]]


def lr_at(step: int, total: int, warmup: int, base: float, final_frac: float = 0.0) -> float:
    """Linear warm-up for `warmup` steps, then cosine decay to final_frac * base."""
    if warmup > 0 and step < warmup:
        return base * (step + 1) / warmup
    p = (step - warmup) / max(1, total - warmup)
    return base * (final_frac + (1 - final_frac) * 0.5 * (1 + math.cos(math.pi * min(1.0, p))))


# the most of a run the linear warm-up may take: a run cut short (max_steps, few steps) still
# reaches its peak lr early and decays from it
WARMUP_CAP = 0.25


def cap_warmup(warmup: int, total: int, warn: bool = True) -> int:
    """`warmup` steps, or WARMUP_CAP of the `total` steps run when that is fewer (with a
    warning naming both)."""
    cap = int(WARMUP_CAP * total)
    if warmup <= cap:
        return warmup
    if warn:
        warnings.warn(
            f"warm-up of {warmup} steps cut to {cap}, {WARMUP_CAP:.0%} of the {total} steps "
            "run (set fewer warm-up steps or epochs, or more steps)",
            stacklevel=2,
        )
    return cap


def epoch_schedule(n: int, global_batch: int, cfg: Any) -> tuple[int, int, int]:
    """(steps per epoch, total steps, warm-up steps) for an epoch-based run over n samples:
    cfg.epochs (capped by cfg.max_steps) and cfg.warmup_epochs, in optimizer steps."""
    steps_per_epoch = max(1, n // global_batch)
    total = cfg.epochs * steps_per_epoch
    if cfg.max_steps is not None:
        total = min(total, cfg.max_steps)
    return steps_per_epoch, total, int(round(cfg.warmup_epochs * steps_per_epoch))


def loop_state(sampler, total: int, warmup: int) -> dict[str, Any]:
    """What a checkpoint records about the data order and the lr schedule besides the step
    (both are functions of the step, so resuming at step k replays them exactly)."""
    return {
        "sampler": {
            "seed": sampler.seed,
            "batch_size": sampler.batch_size,
            "world_size": sampler.world_size,
            "steps_per_epoch": sampler.steps_per_epoch,
        },
        "lr_schedule": {"kind": "warmup_cosine", "total_steps": total, "warmup_steps": warmup},
        "grad_scaler": None,  # fp32 training: no loss scaling
    }


class EMA:
    """An exponential moving average of a model's weights (buffers copied), with a warm-up
    so that short runs are not dominated by the random init: decay min(d, (1+k)/(10+k))."""

    def __init__(self, model: nn.Module, decay: float, part: str | None = None):
        """`part`: average only this submodule of the trained model (a GAN's generator)."""
        self.part = part
        self.module = copy.deepcopy(self._of(model)).eval().requires_grad_(False)
        self.decay = decay

    def _of(self, model: nn.Module) -> nn.Module:
        return getattr(model, self.part) if self.part else model

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        d = min(self.decay, (1 + step) / (10 + step))
        model = self._of(model)
        for e, p in zip(self.module.parameters(), model.parameters(), strict=True):
            e.lerp_(p, 1 - d)
        for e, b in zip(self.module.buffers(), model.buffers(), strict=True):
            e.copy_(b)


class NonFiniteGuard:
    """Skips a step whose loss (or gradient norm) is NaN/inf, with a warning; after
    `max_bad` such steps in a row the run stops and its last checkpoint stays as it was."""

    def __init__(self, max_bad: int, run: Run, model: nn.Module | None = None):
        self.max_bad, self.run, self.streak = max_bad, run, 0
        self.model, self._buffers = model, []

    def begin(self) -> None:
        """Before the forward pass: remember the buffers (BatchNorm running statistics), which
        a bad forward pass would otherwise corrupt even though its update is skipped."""
        if self.model is not None:
            self._buffers = [b.detach().clone() for b in self.model.buffers()]

    def ok(self, step: int, *values: torch.Tensor) -> bool:
        finite = torch.stack([v.detach().float().reshape(()) for v in values]).isfinite()
        if bool(finite.all()):  # one host sync per step
            self.streak = 0
            return True
        with torch.no_grad():
            for b, saved in zip(self.model.buffers() if self.model else [], self._buffers):
                b.copy_(saved)
        self.streak += 1
        bad = ", ".join(f"{v.item():g}" for v in values if v.numel() == 1)
        warnings.warn(
            f"step {step + 1}: non-finite loss/gradient ({bad}); step skipped "
            f"({self.streak}/{self.max_bad} in a row)",
            stacklevel=2,
        )
        if self.streak >= self.max_bad:
            last = self.run.checkpoints()
            where = f"the last good checkpoint {last[-1]} is intact" if last else "no checkpoint"
            raise UserError(
                f"loss was NaN/inf for {self.streak} steps in a row (up to step {step + 1}); "
                f"stopped, {where}. Lower the lr (or check the data), then --resume"
            )
        return False


def forward_backward(
    micro_step: MicroStep,
    model: nn.Module,
    batch: tuple[torch.Tensor, ...],
    step: int,
    accum: int,
    seed: int,
    device: torch.device,
    precision: str,
) -> dict[str, torch.Tensor]:
    """One step's forward and backward passes over a rank's batch (dataset indices first):
    `accum` interleaved micro-batches (rows m::accum, the grouping a DDP run over `accum`
    ranks would see), gradients summed into .grad (all-reduced with the last under DDP).
    Returns each term averaged over the micro-batches."""
    terms: dict[str, torch.Tensor] = {}
    idx, *tensors = batch  # B; then B, ... each
    for m in range(accum):
        keys = sample_keys(seed, step, idx[m::accum])
        part = tuple(t[m::accum].to(device, non_blocking=True) for t in tensors)
        with dist.no_sync(model, sync=m == accum - 1):
            with autocast(device, precision):
                losses = micro_step(model, part, keys, step)
            (losses["loss"] / accum).backward()  # outside autocast, as torch.amp advises
        for k, v in losses.items():
            terms[k] = terms.get(k, 0.0) + v.detach().float() / accum
    return terms


def optimize(
    loader: Iterable[Any],
    sampler: Any,
    micro_step: MicroStep,
    net: nn.Module,
    model: nn.Module,
    opt: torch.optim.Optimizer,
    run: Run,
    env: dist.DistEnv,
    device: torch.device,
    cfg: Any,
    *,
    start: int,
    total: int,
    warmup: int,
    desc: str,
    accum: int | None = None,
    lr_final_frac: float = 0.0,
    max_grad_norm: float = math.inf,
    steps_per_epoch: int | None = None,
    ema: EMA | None = None,
    on_checkpoint: Callable[[int], None] | None = None,
) -> float:
    """Steps `start` .. `total` - 1 of `net` (the unwrapped module; `model` is `net` as
    wrapped for the run: DDP, compiled). `accum`: micro-batches per step (default
    cfg.accum_steps). Every cfg.log_every steps rank 0 logs the terms averaged over ranks;
    every cfg.save_every steps (and at the end) it writes a checkpoint of net, optimizer,
    EMA and the loop's state, then calls `on_checkpoint(step)` there (e.g. to draw samples).
    Returns the wall time of these steps in seconds."""
    accum = cfg.accum_steps if accum is None else accum
    warmup = cap_warmup(warmup, total, warn=env.main and start < total)
    global_batch = cfg.batch_size * env.world_size * cfg.accum_steps
    trainable = [p for p in net.parameters() if p.requires_grad]
    net.train()
    guard = NonFiniteGuard(cfg.max_bad_steps, run, net)
    t0 = time.time()
    with progress(total, start, desc, disable=not env.main) as bar:
        for step, batch in zip(range(start, total), loader):
            lr = lr_at(step, total, warmup, cfg.lr, lr_final_frac)
            for g in opt.param_groups:
                g["lr"] = lr
            opt.zero_grad(set_to_none=True)
            guard.begin()
            terms = forward_backward(
                micro_step, model, batch, step, accum, cfg.seed, device, cfg.precision
            )
            # under DDP the gradients are all-reduced, so every rank takes the same decision
            gnorm = torch.nn.utils.clip_grad_norm_(trainable, max_grad_norm)
            ok = guard.ok(step, terms["loss"], gnorm)  # a NaN/inf step is skipped
            if ok:
                opt.step()
                if ema is not None:
                    ema.update(net, step)
            bar.update(1)
            done = step + 1
            if done % cfg.log_every == 0 or done == total:  # host syncs only when logging
                logs = dist.mean_over_ranks({k: float(v) for k, v in terms.items()}, env)
                rate = (done - start) * global_batch / max(time.time() - t0, 1e-9)
                bar.set_postfix(loss=f"{logs['loss']:.4f}", img_s=f"{rate:.1f}")
                if ok:
                    record: dict[str, Any] = {"step": done, "lr": lr, **logs}
                    if steps_per_epoch:
                        record["epoch"] = done / steps_per_epoch
                    if max_grad_norm < math.inf:
                        record["grad_norm"] = gnorm.item()
                    run.log(record | {"images_seen": done * global_batch, "time": time.time() - t0})
            if done % cfg.save_every == 0 or done == total:
                state = {"model": net.state_dict(), "optimizer": opt.state_dict()}
                if ema is not None:
                    state["ema"] = ema.module.state_dict()
                run.save_checkpoint(done, state | loop_state(sampler, total, warmup))
                if on_checkpoint is not None and env.main:
                    on_checkpoint(done)
    return time.time() - t0
