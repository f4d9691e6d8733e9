"""XOR-5D (paper Sec. 3.1): two informative dims in four unit squares separated by a gap, plus
Gaussian distractors. Served as stacked (seeds, batch, dims) tensors so a population of networks trains
on its own data in one pass. `data_seed` chooses between the reference's protocol (one fixed train /
validation draw for every run of a job, only the init varies: `data_seed=<int>`) and an independent
draw per seed (`data_seed=null`)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import lightning.pytorch as pl
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler

from common.errors import UserError
from data.samplers import epoch_generator


def make_xor(n: int, generator: torch.Generator, distractors: int = 3, gap: float = 0.05) -> tuple[Tensor, Tensor]:
    """n points: x1, x2 each in [-1, 0) or [gap, 1 + gap); label 1.0 when x1, x2 share a sign.

    Quadrants are balanced (n // 4 each, the remainder spread at random): with equal quadrant
    counts a monotone classifier's accuracy is capped at exactly 75 % in expectation.
    Distractors ~ N(1, 1) as in the paper.
    """
    counts = torch.full((4,), n // 4, dtype=torch.long)
    counts[torch.randperm(4, generator=generator)[: n % 4]] += 1
    quadrant = torch.repeat_interleave(torch.arange(4), counts)
    quadrant = quadrant[torch.randperm(n, generator=generator)]
    positive = torch.stack([quadrant // 2, quadrant % 2], dim=1).bool()  # sign pattern of (x1, x2)
    u = torch.rand(n, 2, generator=generator)
    informative = torch.where(positive, u + gap, u - 1.0)
    noise = torch.randn(n, distractors, generator=generator) + 1.0
    labels = (positive[:, 0] == positive[:, 1]).float()
    return torch.cat([informative, noise], dim=1), labels


class StackedBatches(Dataset):
    """Indexing with an (S, B) index tensor gathers batch b of every seed s: x (S, B, D), y (S, B)."""

    def __init__(self, x: Tensor, y: Tensor) -> None:
        self.x, self.y = x, y

    def __len__(self) -> int:
        return self.x.shape[1]

    def __getitem__(self, index: Tensor) -> tuple[Tensor, Tensor]:
        gather = index.unsqueeze(-1).expand(-1, -1, self.x.shape[-1])
        return self.x.gather(1, gather), self.y.gather(1, index)


class StackedBatchSampler(Sampler[Tensor]):
    """Yields (S, B) index tensors: an independent shuffle per seed, drawn from (seed, epoch) only,
    so a run resumed from a checkpoint sees the batches an uninterrupted run would."""

    def __init__(self, num_seeds: int, num_items: int, batch_size: int, shuffle: bool, seed: int = 0) -> None:
        self.num_seeds, self.num_items, self.batch_size, self.shuffle, self.seed = num_seeds, num_items, batch_size, shuffle, seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return -(-self.num_items // self.batch_size)

    def __iter__(self) -> Iterator[Tensor]:
        if self.shuffle:
            generator = epoch_generator(self.seed, self.epoch)
            order = torch.argsort(torch.rand(self.num_seeds, self.num_items, generator=generator), dim=1)
        else:
            order = torch.arange(self.num_items).expand(self.num_seeds, -1)
        for start in range(0, self.num_items, self.batch_size):
            yield order[:, start : start + self.batch_size]


class XorDataModule(pl.LightningDataModule):
    """XOR-5D train/validation sets for each entry of `seeds`: all the same draw (seeded by `data_seed`,
    the reference code's one data set per N) or, with `data_seed=None`, one independent draw per seed.
    Batch order is shuffled per seed either way."""

    config_key: str = "dataset"  # the config node this module was built from: errors name its keys

    def __init__(
        self,
        seeds: Sequence[int] = (0,),
        n_train: int = 60,
        n_val: int = 1000,
        distractors: int = 3,
        gap: float = 0.05,
        batch_size: int = 32,
        eval_batch_size: int = 250,
        name: str = "xor5d",
        data_seed: int | None = None,
        config_key: str = "dataset",
    ) -> None:
        super().__init__()
        self.config_key = config_key
        if n_train < 1 or n_val < 1 or batch_size < 1:
            raise UserError(f"{config_key}.n_train={n_train}, n_val={n_val}, batch_size={batch_size} must all be >= 1")
        self.seeds = [int(s) for s in seeds]
        self.data_seed = None if data_seed is None else int(data_seed)
        self.n_train, self.n_val, self.distractors, self.gap = n_train, n_val, distractors, gap
        self.batch_size, self.eval_batch_size, self.name = batch_size, eval_batch_size, name
        self.train: StackedBatches | None = None
        self.val: StackedBatches | None = None

    @property
    def network_kwargs(self) -> dict[str, int]:
        """Sizes a network needs to fit this data."""
        return {"in_features": 2 + self.distractors}

    def setup(self, stage: str | None = None) -> None:
        if self.train is not None:
            return
        train, val = [], []
        draws: dict[int, tuple] = {}
        for seed in self.seeds:
            key = seed if self.data_seed is None else self.data_seed
            if key not in draws:
                generator = torch.Generator().manual_seed(key)
                draws[key] = (
                    make_xor(self.n_train, generator, self.distractors, self.gap),
                    make_xor(self.n_val, generator, self.distractors, self.gap),
                )
            train.append(draws[key][0])
            val.append(draws[key][1])
        self.train = StackedBatches(torch.stack([x for x, _ in train]), torch.stack([y for _, y in train]))
        self.val = StackedBatches(torch.stack([x for x, _ in val]), torch.stack([y for _, y in val]))

    def _loader(self, data: StackedBatches, batch_size: int, shuffle: bool) -> DataLoader:
        sampler = StackedBatchSampler(len(self.seeds), len(data), batch_size, shuffle, seed=self.seeds[0])
        # a private generator for the loader's per-iterator seed: no draw from the global one (exact resume)
        return DataLoader(data, batch_size=None, sampler=sampler, generator=torch.Generator().manual_seed(self.seeds[0]))

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train, self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val, self.eval_batch_size, shuffle=False)
