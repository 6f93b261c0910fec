"""The optimizer loop that every training command runs: train-teacher, pretrain, the SSL
baselines, and finetune with the heads that share its loop. The schedule, the non-finite
guard, gradient clipping, logging and checkpoints live here once; what one step computes
(forward and backward over its micro-batches) comes from the caller as `step_fn`."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from typing import Any

import torch

from dreamteacher.engine import dist
from dreamteacher.engine.common import NonFiniteGuard, Run, loop_state, lr_at, progress

# (step, the rank's batch from the loader) -> {"loss": ..., other logged terms}, each the
# mean over the step's micro-batches; the gradients are left in the parameters' .grad
StepFn = Callable[[int, Any], dict[str, torch.Tensor]]


def optimize(
    loader: Iterable[Any],
    sampler: Any,
    step_fn: StepFn,
    net: torch.nn.Module,
    opt: torch.optim.Optimizer,
    run: Run,
    env: dist.DistEnv,
    cfg: Any,
    *,
    start: int,
    total: int,
    warmup: int,
    desc: str,
    lr_final_frac: float = 0.0,
    max_grad_norm: float = math.inf,
    steps_per_epoch: int | None = None,
    after_update: Callable[[int], None] | None = None,
    extra_state: Callable[[], dict[str, Any]] | None = None,
) -> float:
    """Steps `start` .. `total` - 1 of `net` (the unwrapped module; `step_fn` runs the DDP
    or compiled wrapper). Each step: warm-up + cosine lr, `step_fn`, gradient norm clipped
    to `max_grad_norm` (inf: measured only), optimizer step unless the loss or the norm is
    NaN/inf, then `after_update(step)` (an EMA, say). Every cfg.log_every steps rank 0 logs
    the terms averaged over ranks; every cfg.save_every steps (and at the end) it writes a
    checkpoint of net, optimizer, `extra_state()` and the loop's state.
    Returns the wall time of these steps in seconds."""
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
            terms = step_fn(step, batch)
            # under DDP the gradients are all-reduced, so every rank takes the same decision
            gnorm = torch.nn.utils.clip_grad_norm_(trainable, max_grad_norm)
            ok = guard.ok(step, terms["loss"], gnorm)  # a NaN/inf step is skipped
            if ok:
                opt.step()
                if after_update is not None:
                    after_update(step)
            bar.update(1)
            done = step + 1
            if done % cfg.log_every == 0 or done == total:  # host syncs only when logging
                logs = dist.mean_over_ranks({k: float(v) for k, v in terms.items()}, env)
                bar.set_postfix(loss=f"{logs['loss']:.4f}")
                if ok:
                    record: dict[str, Any] = {"step": done, "lr": lr, **logs}
                    if steps_per_epoch:
                        record["epoch"] = done / steps_per_epoch
                    if max_grad_norm < math.inf:
                        record["grad_norm"] = gnorm.item()
                    run.log(record | {"images_seen": done * global_batch, "time": time.time() - t0})
            if done % cfg.save_every == 0 or done == total:
                state = {"model": net.state_dict(), "optimizer": opt.state_dict()}
                if extra_state is not None:
                    state |= extra_state()
                run.save_checkpoint(done, state | loop_state(sampler, total, warmup))
    return time.time() - t0
