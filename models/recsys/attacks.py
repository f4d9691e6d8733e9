"""Data-poisoning (shilling) attacks that inject fake user profiles (Lam & Riedl 2004; Mobasher et al. 2007).

Every attack maps the real training matrix (rating units, 0 = unrated) to `n_fake` fake rows of the same
width: `n_filler` filler items plus the targets, which are rated the maximum R (push attacks).
- random: filler items uniform, ratings ~ N(global mean, global std);
- average: filler items uniform, each rated ~ N(item mean, item std);
- bandwagon: the `n_selected` most popular items rated R, the rest of the filler as in random.
Ratings are rounded to the grid and clipped to [1, R]. Model-based attacks (gradient, Co-Attack,
GCoAttack) live in surrogate_attacks.py and share this interface.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor


def check_attack_args(train: Tensor, targets: Tensor, n_fake: int, n_filler: int) -> None:
    n_items = train.shape[1]
    if n_fake < 1:
        raise ValueError(f"n_fake={n_fake}: an attack needs at least one fake user")
    if not 0 < n_filler <= n_items - len(targets):
        raise ValueError(f"n_filler={n_filler} must be in [1, {n_items - len(targets)}]")


def sample_fillers(
    n_fake: int, n_items: int, n_filler: int, excluded: Tensor, generator: torch.Generator, weights: Tensor | None = None
) -> Tensor:
    """[n_fake, n_filler] distinct filler items per fake user, never an item in `excluded`."""
    w = torch.ones(n_items) if weights is None else weights.clone().float()
    w[excluded] = 0
    return torch.multinomial(w.expand(n_fake, n_items), n_filler, replacement=False, generator=generator)


def on_grid(values: Tensor, max_rating: float) -> Tensor:
    return torch.round(values).clamp(1, max_rating)


def item_stats(train: Tensor) -> tuple[Tensor, Tensor, float, float]:
    """Per-item mean / std of the observed ratings (global ones where an item has < 2), global mean / std."""
    rated = train > 0
    values = train[rated]
    g_mean, g_std = float(values.mean()), float(values.std())
    count = rated.sum(0).float()
    mean = torch.where(count > 0, train.sum(0) / count.clamp(min=1), torch.full_like(count, g_mean))
    sq = torch.where(rated, (train - mean) ** 2, torch.zeros(())).sum(0)
    std = torch.where(count > 1, (sq / (count - 1).clamp(min=1)).sqrt(), torch.full_like(count, g_std))
    return mean, std, g_mean, g_std


@dataclass
class HeuristicAttack:
    """Base of random / average: fillers uniform, ratings from `filler_ratings`."""

    def filler_ratings(self, train: Tensor, fillers: Tensor, generator: torch.Generator) -> Tensor:
        raise NotImplementedError

    def generate(
        self, train: Tensor, targets: Tensor, n_fake: int, n_filler: int, max_rating: float, generator: torch.Generator
    ) -> Tensor:
        check_attack_args(train, targets, n_fake, n_filler)
        fake = torch.zeros(n_fake, train.shape[1])
        fillers = sample_fillers(n_fake, train.shape[1], n_filler, targets, generator)
        fake.scatter_(1, fillers, on_grid(self.filler_ratings(train, fillers, generator), max_rating))
        fake[:, targets] = max_rating
        return fake


@dataclass
class RandomAttack(HeuristicAttack):
    def filler_ratings(self, train: Tensor, fillers: Tensor, generator: torch.Generator) -> Tensor:
        _, _, g_mean, g_std = item_stats(train)
        return g_mean + g_std * torch.randn(fillers.shape, generator=generator)


@dataclass
class AverageAttack(HeuristicAttack):
    def filler_ratings(self, train: Tensor, fillers: Tensor, generator: torch.Generator) -> Tensor:
        mean, std, _, _ = item_stats(train)
        return mean[fillers] + std[fillers] * torch.randn(fillers.shape, generator=generator)


@dataclass
class BandwagonAttack(RandomAttack):
    """The `n_selected` most-rated items (not targets) are rated R in every profile; they count in the filler."""

    n_selected: int = 10

    def generate(
        self, train: Tensor, targets: Tensor, n_fake: int, n_filler: int, max_rating: float, generator: torch.Generator
    ) -> Tensor:
        check_attack_args(train, targets, n_fake, n_filler)
        popularity = (train > 0).sum(0).float()
        popularity[targets] = -1
        selected = popularity.topk(min(self.n_selected, n_filler)).indices
        fake = torch.zeros(n_fake, train.shape[1])
        rest = n_filler - len(selected)
        if rest > 0:
            fillers = sample_fillers(n_fake, train.shape[1], rest, torch.cat([targets, selected]), generator)
            fake.scatter_(1, fillers, on_grid(self.filler_ratings(train, fillers, generator), max_rating))
        fake[:, selected] = max_rating
        fake[:, targets] = max_rating
        return fake


@dataclass
class NoAttack:
    """The clean baseline: no fake users."""

    injects: ClassVar[bool] = False

    def generate(
        self, train: Tensor, targets: Tensor, n_fake: int, n_filler: int, max_rating: float, generator: torch.Generator
    ) -> Tensor:
        return torch.zeros(0, train.shape[1])
