"""torchrun / DDP support. `torchrun --nproc_per_node K -m dreamteacher pretrain ...` sets
RANK, WORLD_SIZE and LOCAL_RANK; every command reads them here. Without them, one process.

Global batch per optimizer step = batch_size x world_size x accum_steps. Each rank reads
its share of the same global batch (ResumableBatchSampler with rank/world_size), trains the
student (and regressor / head) under DistributedDataParallel, and only rank 0 logs, writes
checkpoints and final files. The teacher is replicated per rank, frozen, never wrapped.
"""

from __future__ import annotations

import os
from contextlib import nullcontext
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from dreamteacher.errors import UserError
from dreamteacher.runtime import resolve_device

# how long the other ranks wait at the end of a command for rank 0's export and evaluation
FINISH_TIMEOUT = timedelta(hours=24)


@dataclass
class DistEnv:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    finish_group: Any = None  # a gloo group for the end-of-command barrier (finish_group())

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def setup(device_name: str = "auto") -> tuple[DistEnv, torch.device]:
    """Join the process group if launched by torchrun; pick this rank's device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    device = resolve_device(device_name)
    if world <= 1:
        return DistEnv(), device
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        torch.cuda.set_device(local)
        device = torch.device("cuda", local)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return DistEnv(rank, world, local, finish_group()), device


def finish_group():
    """A gloo group over all ranks with a long timeout (FINISH_TIMEOUT): `teardown` waits in
    it for rank 0, whose work after training (export, evaluation) would outlast the default
    group's collective timeout (10 minutes on NCCL, 30 on gloo). Called by every rank."""
    return dist.new_group(backend="gloo", timeout=FINISH_TIMEOUT)


def wrap(
    model: nn.Module,
    env: DistEnv,
    device: torch.device,
    sync_bn: bool = False,
    compile: bool = False,
    backend: str = "inductor",
) -> nn.Module:
    """DDP over `model` (no find_unused_parameters: every parameter gets a gradient), then
    torch.compile (with `backend`) when asked. One process: the model itself (compiled if
    asked)."""
    if env.enabled:
        model = _ddp(model, env, device, sync_bn)
    return torch.compile(model, backend=backend) if compile else model


def _ddp(model: nn.Module, env: DistEnv, device: torch.device, sync_bn: bool) -> nn.Module:
    if sync_bn:
        if device.type != "cuda":
            raise UserError("sync_bn=true needs CUDA (PyTorch's SyncBatchNorm has no CPU kernel)")
        model = convert_sync_bn(model)
    ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids)


def convert_sync_bn(model: nn.Module) -> nn.Module:
    """BatchNorm layers -> SyncBatchNorm, keeping what timm fuses into its norm layers: its
    BatchNormAct2d (EfficientNet, RegNet, MobileNetV3, ...) carries the activation, which
    torch's own convert_sync_batchnorm would drop; timm's converter keeps it."""
    from timm.layers import convert_sync_batchnorm

    return convert_sync_batchnorm(model)


def no_sync(model: nn.Module, sync: bool):
    """Skip the gradient all-reduce on micro-batches before the last of an accumulation
    (`model` as `wrap` returns it: DDP, or torch.compile over DDP)."""
    ddp = getattr(model, "_orig_mod", model)  # torch.compile's wrapper keeps the module here
    if sync or not isinstance(ddp, nn.parallel.DistributedDataParallel):
        return nullcontext()
    return ddp.no_sync()


def mean_over_ranks(values: dict[str, float], env: DistEnv) -> dict[str, float]:
    if not env.enabled or not values:
        return values
    t = torch.tensor(list(values.values()), dtype=torch.float64)
    if dist.get_backend() == "nccl":
        t = t.cuda()
    dist.all_reduce(t)
    return dict(zip(values, (t / env.world_size).tolist(), strict=True))


def teardown(env: DistEnv) -> None:
    """End a command on every rank together: the others wait for rank 0 to finish what it
    does alone after training (final files, export, evaluation), in a CPU barrier of the
    finish group, so that neither a collective's timeout cuts that wait short nor a rank
    starts the next command (reading those files) before they exist. Then leave the group."""
    if env.enabled and dist.is_initialized():
        if env.finish_group is not None:
            dist.barrier(group=env.finish_group)
        dist.destroy_process_group()
