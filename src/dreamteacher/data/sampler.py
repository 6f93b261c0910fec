"""A deterministic, resumable batch order: epoch e is a permutation seeded by (seed, e).

Resuming at global step k continues with exactly the batches an uninterrupted run would see.
With `world_size > 1` each rank takes every world_size-th index of the same permutation.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch


class ResumableBatchSampler(torch.utils.data.Sampler[list[int]]):
    def __init__(
        self,
        n: int,
        batch_size: int,
        seed: int = 0,
        start_step: int = 0,
        total_steps: int | None = None,
        rank: int = 0,
        world_size: int = 1,
    ):
        if n <= 0:
            raise ValueError("empty dataset")
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.rank, self.world_size = rank, world_size
        self.start_step, self.total_steps = start_step, total_steps
        global_batch = batch_size * world_size
        # drop_last when possible; tiny datasets repeat indices to fill one batch
        self.steps_per_epoch = max(1, n // global_batch)

    def _epoch_order(self, epoch: int) -> list[int]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        gb = self.batch_size * self.world_size
        need = self.steps_per_epoch * gb
        order = torch.randperm(self.n, generator=g)
        while order.numel() < need:
            order = torch.cat([order, torch.randperm(self.n, generator=g)])
        return order[:need].tolist()

    def batch(self, step: int) -> list[int]:
        epoch, pos = divmod(step, self.steps_per_epoch)
        gb = self.batch_size * self.world_size
        chunk = self._epoch_order(epoch)[pos * gb : (pos + 1) * gb]
        return chunk[self.rank :: self.world_size]

    def __iter__(self) -> Iterator[list[int]]:
        step = self.start_step
        cache_epoch, order = -1, []
        gb = self.batch_size * self.world_size
        while self.total_steps is None or step < self.total_steps:
            epoch, pos = divmod(step, self.steps_per_epoch)
            if epoch != cache_epoch:
                order, cache_epoch = self._epoch_order(epoch), epoch
            yield order[pos * gb : (pos + 1) * gb][self.rank :: self.world_size]
            step += 1

    def __len__(self) -> int:
        if self.total_steps is None:
            return 2**31
        return max(0, self.total_steps - self.start_step)


class StepTagged(torch.utils.data.Sampler[list[tuple[int, int]]]):
    """A ResumableBatchSampler's batches with each index tagged by its step: [(step, i), ...],
    for datasets whose items depend on the step (the feature cache's draw, CachedTargets)."""

    def __init__(self, sampler: ResumableBatchSampler):
        self.sampler = sampler

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        for step, batch in enumerate(self.sampler, self.sampler.start_step):
            yield [(step, i) for i in batch]

    def __len__(self) -> int:
        return len(self.sampler)


class Indexed(torch.utils.data.Dataset):
    """Returns (index, *item): the index keys the sample's randomness (randomness.py)."""

    def __init__(self, dataset: torch.utils.data.Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int):
        item = self.dataset[i]
        return (i, *item) if isinstance(item, tuple) else (i, item)
