"""Randomness and data order that resume to the bit: seeds derived from (seed, step, rank), and
batches that are a pure function of (seed, step), so a run needs no sampler state to continue."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, default_collate


def _derive_seed(*parts: int) -> int:
    """A 63-bit seed from a tuple of ints (numpy's SeedSequence hashing: no nearby-seed correlation)."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1, np.uint64)[0] >> 1)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def step_generator(seed: int, step: int, rank: int = 0) -> torch.Generator:
    """The CPU generator loss_fn draws noise, times and dropout from at `step` (on `rank`)."""
    return torch.Generator(device="cpu").manual_seed(_derive_seed(seed, step, rank, 1))


class IndexStream:
    """Batches of dataset indices, forever: an endless stream of epochs, each a permutation drawn from
    (seed, epoch). Global step k takes stream items [(k·W + rank)·B, (k·W + rank + 1)·B), so any
    batch can be produced without replaying the ones before it; the state is just the step."""

    def __init__(self, n: int, batch_size: int, seed: int, start_step: int, rank: int, world_size: int):
        if n < 1:
            raise ValueError("the training set is empty")
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.start_step, self.rank, self.world_size = start_step, rank, world_size
        self._perms: dict[int, list[int]] = {}

    def _perm(self, epoch: int) -> list[int]:
        if epoch not in self._perms:
            if len(self._perms) > 2:
                self._perms.pop(min(self._perms))
            g = torch.Generator().manual_seed(_derive_seed(self.seed, epoch, 0xDA7A))
            self._perms[epoch] = torch.randperm(self.n, generator=g).tolist()
        return self._perms[epoch]

    def __iter__(self) -> Iterator[list[int]]:
        step = self.start_step
        while True:
            start = (step * self.world_size + self.rank) * self.batch_size
            yield [self._perm(p // self.n)[p % self.n] for p in range(start, start + self.batch_size)]
            step += 1


def resumable_batches(
    dataset: Any,
    batch_size: int,
    seed: int,
    start_step: int,
    num_workers: int = 0,
    collate: Callable[[list[Any]], dict[str, Any]] | None = None,
    *,
    rank: int = 0,
    world_size: int = 1,
) -> Iterator[dict[str, Any]]:
    """Batches for steps start_step, start_step + 1, ... of a run (never ends).

    `dataset` is a map-style Dataset, or a dict of equally long tensors / lists (cached tokens:
    gathered by indexing, no per-item Python). Workers only load; the order comes from IndexStream,
    so no DataLoader iterator state is needed to resume.
    """
    if isinstance(dataset, Mapping):
        sizes = {k: len(v) for k, v in dataset.items()}
        if len(set(sizes.values())) != 1:
            raise ValueError(f"dataset columns differ in length: {sizes}")
        stream = IndexStream(next(iter(sizes.values())), batch_size, seed, start_step, rank, world_size)
        for idx in stream:
            rows = torch.tensor(idx)
            yield {k: v[rows] if isinstance(v, Tensor) else [v[i] for i in idx] for k, v in dataset.items()}
        return
    stream = IndexStream(len(dataset), batch_size, seed, start_step, rank, world_size)
    collate = collate or default_collate
    if num_workers == 0:
        for idx in stream:
            yield collate([dataset[i] for i in idx])
        return
    loader = DataLoader(
        dataset, batch_sampler=stream, num_workers=num_workers, collate_fn=collate,
        pin_memory=torch.cuda.is_available(), persistent_workers=True,
    )  # fmt: skip
    yield from loader


def index_chunks(n: int, size: int) -> list[range]:
    """0..n in consecutive ranges of at most `size`: the batches of an evaluation, in order."""
    return [range(i, min(i + size, n)) for i in range(0, n, size)]
