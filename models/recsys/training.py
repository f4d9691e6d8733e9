"""The training loop shared by every recommender, defence and surrogate attack model.

The models are LightningModules (networks.Recommender) that a Trainer can fit alone; this loop drives
them itself because TCD needs, per epoch and per model, a full-matrix pseudo-labelling step using the
*other* models, and then ~1.5 M samples in batches of 2048; one Trainer fit per (model, epoch) would
cost more than the epoch itself. `epoch_loader` gives a Trainer the loop's exact batches (a Trainer
epoch equals a loop epoch, tested). The task logs and checkpoints
through the run context (``on_epoch_end``), so resume and loggers work as for Lightning tasks.

`extra_loss(model, epoch)` adds an attack objective (Co-Attack / GCoAttack) from `extra_from` on; with
`extra_on_real_only` the models then train on the real samples only, as GCoAttack's second half does.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from models.recsys.defenses import NoDefense
from models.recsys.tcd import pseudo_labels


@dataclass
class Samples:
    """Training samples: user ids, item ids, normalised ratings (parallel 1-D tensors).

    Ids are kept as int32: every epoch shuffles all samples (~1.6 M per model with TCD's pseudo-labels),
    and that gather is memory-bound, so half-width ids halve its cost."""

    users: Tensor
    items: Tensor
    ratings: Tensor

    def __post_init__(self) -> None:
        self.users, self.items = self.users.to(torch.int32), self.items.to(torch.int32)

    def __len__(self) -> int:
        return len(self.users)

    def extend(self, users: Tensor, items: Tensor, ratings: Tensor) -> Samples:
        return Samples(
            torch.cat([self.users, users.to(torch.int32)]),
            torch.cat([self.items, items.to(torch.int32)]),
            torch.cat([self.ratings, ratings]),
        )


@dataclass
class LoopStats:
    """Counters for the throughput benchmark and the run log."""

    samples: int = 0
    train_seconds: float = 0.0
    label_seconds: float = 0.0
    pseudo_per_model: list[int] = field(default_factory=list)
    target_label_share: list[float] = field(default_factory=list)
    target_label_mean: list[float] = field(default_factory=list)
    other_label_mean: list[float] = field(default_factory=list)

    def record_target_labels(
        self, users: Tensor, items: Tensor, labels: Tensor, n_real: int, targets: Tensor, max_rating: float
    ) -> None:
        """What TCD's pseudo-labels say about the target items for real users: the share of (real user, target)
        cells labelled, their mean label in rating units (how the defence sees the attacked items), and, for
        comparison, the mean label of the real users' other labelled cells (rankings are relative)."""
        real = users < n_real
        on_targets = real & torch.isin(items, targets)
        others = real & ~on_targets
        self.target_label_share.append(float(on_targets.sum()) / (n_real * len(targets)))
        self.target_label_mean.append(_mean_label(labels, on_targets, max_rating))
        self.other_label_mean.append(_mean_label(labels, others, max_rating))


def _mean_label(labels: Tensor, cells: Tensor, max_rating: float) -> float:
    """The mean pseudo-label of the selected cells in rating units; NaN when none is selected."""
    return float(labels[cells].mean()) * max_rating if cells.any() else float("nan")


class _Batches(torch.utils.data.Dataset):
    """Whole batches of `samples` by precomputed index chunks (one item = one batch: no per-row collate)."""

    def __init__(self, samples: Samples, chunks: list[Tensor]) -> None:
        self.samples, self.chunks = samples, chunks

    def __len__(self) -> int:
        return len(self.chunks)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor, Tensor]:
        idx = self.chunks[index]
        return self.samples.users[idx], self.samples.items[idx], self.samples.ratings[idx]


def epoch_loader(samples: Samples, batch_size: int, generator: torch.Generator) -> torch.utils.data.DataLoader:
    """One epoch of shuffled batches for a Lightning Trainer, drawn exactly as `train_one_epoch` draws them
    (same permutation from the same generator state), so a Trainer epoch and a loop epoch can be compared."""
    order = torch.randperm(len(samples), generator=generator, dtype=torch.int32)  # same order as int64
    chunks = list(order.split(batch_size))
    return torch.utils.data.DataLoader(_Batches(samples, chunks), batch_size=None, shuffle=False)


def train_one_epoch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    samples: Samples,
    loss_fn: Callable,
    epoch: int,
    batch_size: int,
    generator: torch.Generator,
    extra_loss: Callable[[nn.Module], Tensor] | None = None,
) -> float:
    """One shuffled pass; returns the mean batch loss."""
    order = torch.randperm(len(samples), generator=generator, dtype=torch.int32)
    # one gather per column up front, then contiguous slices: the same batches as indexing each batch by
    # `order`, without three random gathers per batch over ~1.6 M TCD samples (index_select: ~4x faster
    # than `column[order]` for a 1-D gather on CPU)
    users, items, ratings = (column.index_select(0, order) for column in (samples.users, samples.items, samples.ratings))
    total, batches = 0.0, 0
    fast = (
        extra_loss is None
        and getattr(loss_fn, "__func__", None) is NoDefense.loss
        and hasattr(model, "row_gradients")
        and hasattr(optimizer, "step_rows")
    )
    for start in range(0, len(order), batch_size):
        batch = slice(start, start + batch_size)
        if fast:  # plain MF + TF1 Adadelta: analytic row gradients, no autograd (same maths, tested)
            loss, updates = model.row_gradients(users[batch], items[batch], ratings[batch])
            optimizer.step_rows(updates)
            total += float(loss)
            batches += 1
            continue
        loss = loss_fn(model, users[batch], items[batch], ratings[batch], epoch)
        if extra_loss is not None:
            loss = loss + extra_loss(model)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total += float(loss.detach())
        batches += 1
    return total / max(batches, 1)


def fit(
    models: Sequence[nn.Module],
    optimizers: Sequence[torch.optim.Optimizer],
    samples: Samples,
    defense,
    epochs: int,
    batch_size: int,
    rated: Tensor,
    max_rating: float,
    generator: torch.Generator,
    start_epoch: int = 0,
    on_epoch_end: Callable[[int, float], None] | None = None,
    extra_loss: Callable[[nn.Module], Tensor] | None = None,
    extra_from: int | None = None,
    extra_on_real_only: bool = False,
    stats: LoopStats | None = None,
    watch: tuple[int, Tensor] | None = None,
) -> LoopStats:
    """Train `models` (1, or 3 for TCD) for epochs [start_epoch, epochs); model 0 is the one evaluated.

    TCD (defense.n_models == 3): before model j trains, models (j+1)%3 and (j+2)%3 label every
    unrated cell they agree on (see tcd.py); model j trains one epoch on real + those pseudo ratings.
    `watch` = (number of real users, target items): record the pseudo-labels on those cells in `stats`.
    """
    stats = stats or LoopStats()
    triple = getattr(defense, "n_models", 1) == 3
    for epoch in range(start_epoch, epochs):
        attacking = extra_loss is not None and extra_from is not None and epoch >= extra_from
        losses = []
        for j, (model, optimizer) in enumerate(zip(models, optimizers)):
            data = samples
            if triple and epoch >= defense.start_epoch and not (attacking and extra_on_real_only):
                t0 = time.perf_counter()
                with torch.no_grad():
                    a = models[(j + 1) % 3].full_scores()
                    b = models[(j + 2) % 3].full_scores()
                pseudo = pseudo_labels(a, b, rated, max_rating, defense.grid, defense.keep_rate, generator)
                data = samples.extend(*pseudo)
                stats.label_seconds += time.perf_counter() - t0
                stats.pseudo_per_model.append(len(pseudo[0]))
                if watch is not None:
                    stats.record_target_labels(*pseudo, *watch, max_rating)
            t0 = time.perf_counter()
            losses.append(
                train_one_epoch(
                    model, optimizer, data, defense.loss, epoch, batch_size, generator, extra_loss if attacking else None
                )
            )
            stats.train_seconds += time.perf_counter() - t0
            stats.samples += len(data)
        if on_epoch_end is not None:
            on_epoch_end(epoch, losses[0])
    return stats
