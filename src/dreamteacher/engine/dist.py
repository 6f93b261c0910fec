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

import torch
import torch.distributed as dist
from torch import nn

from dreamteacher.engine.common import resolve_device
from dreamteacher.errors import UserError


@dataclass
class DistEnv:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

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
    return DistEnv(rank, world, local), device


def wrap(
    model: nn.Module,
    env: DistEnv,
    device: torch.device,
    sync_bn: bool = False,
    compile: bool = False,
) -> nn.Module:
    """DDP over `model` (no find_unused_parameters: every parameter gets a gradient), then
    torch.compile when asked. One process: the model itself (compiled if asked)."""
    if env.enabled:
        model = _ddp(model, env, device, sync_bn)
    return torch.compile(model) if compile else model


def _ddp(model: nn.Module, env: DistEnv, device: torch.device, sync_bn: bool) -> nn.Module:
    if sync_bn:
        if device.type != "cuda":
            raise UserError("sync_bn=true needs CUDA (PyTorch's SyncBatchNorm has no CPU kernel)")
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids)


def no_sync(model: nn.Module, sync: bool):
    """Skip the gradient all-reduce on micro-batches before the last of an accumulation."""
    if sync or not isinstance(model, nn.parallel.DistributedDataParallel):
        return nullcontext()
    return model.no_sync()


def mean_over_ranks(values: dict[str, float], env: DistEnv) -> dict[str, float]:
    if not env.enabled or not values:
        return values
    t = torch.tensor(list(values.values()), dtype=torch.float64)
    if dist.get_backend() == "nccl":
        t = t.cuda()
    dist.all_reduce(t)
    return dict(zip(values, (t / env.world_size).tolist(), strict=True))


def barrier(env: DistEnv) -> None:
    if env.enabled:
        dist.barrier()


def teardown(env: DistEnv) -> None:
    if env.enabled and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
