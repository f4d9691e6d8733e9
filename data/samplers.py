"""Samplers whose order depends only on (seed, epoch).

Lightning calls ``set_epoch`` on a dataloader's sampler at the start of every epoch, so a sampler that
derives its permutation from ``(seed, epoch)`` alone makes a run resumed from a checkpoint see exactly
the batches an uninterrupted run would, independent of any global RNG state.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import Sampler

_EPOCH_STRIDE = 1_000_003  # a prime, so (seed, epoch) pairs do not collide for epochs < ~1e6


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """The generator of one epoch's shuffle: a function of (seed, epoch) only."""
    return torch.Generator().manual_seed(int(seed) * _EPOCH_STRIDE + int(epoch))


class EpochSeededSampler(Sampler[int]):
    """Random permutation of ``range(num_samples)`` drawn from ``seed * 1_000_003 + epoch``."""

    def __init__(self, num_samples: int, seed: int) -> None:
        if num_samples < 0:
            raise ValueError(f"num_samples must be >= 0, got {num_samples}")
        self.num_samples = int(num_samples)
        self.seed = int(seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch whose permutation the next ``__iter__`` yields (called by Lightning)."""
        self.epoch = int(epoch)

    def __iter__(self) -> Iterator[int]:
        yield from torch.randperm(self.num_samples, generator=epoch_generator(self.seed, self.epoch)).tolist()

    def __len__(self) -> int:
        return self.num_samples


def shuffled(num_samples: int, seed: int) -> dict[str, Any]:
    """DataLoader arguments for a training shuffle that never draws from the global generator.

    A DataLoader without its own generator draws a seed from torch's global generator each time an
    epoch's iterator is made, and Lightning makes the first iterator of a resumed fit during set-up,
    not at the epoch's start: the global states a checkpoint restores would then be shifted by one
    draw. Here the order comes from (seed, epoch) and the per-iterator seed from a private generator.
    """
    return {"sampler": EpochSeededSampler(num_samples, seed), "generator": torch.Generator().manual_seed(int(seed))}
