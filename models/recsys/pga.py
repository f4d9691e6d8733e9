"""PGA (Li, Wang, Singh and Vorobeychik, "Data poisoning attacks on factorization-based collaborative
filtering", NeurIPS 2016): projected gradient ascent on the fake users' ratings against a matrix-factorisation
victim fitted by alternating least squares (ALS).

Each fake user rates `n_filler` items drawn uniformly (its support stays fixed) and every target R. Its filler
ratings x are continuous while optimised, starting at the items' mean ratings. The utility is the paper's
integrity attack with unit weights: the victim's predicted ratings of the targets summed over real users,
U(x) = sum_{u real} sum_t p_u . q_t, where (P, Q) is the ridge-regularised ALS fit
min sum_(u,i) rated (M_ui - p_u . q_i)^2 + reg (|P|^2 + |Q|^2) on real + fake ratings, in rating units.

One step: `sweeps` ALS sweeps (users, then items) warm-started from the previous fit and differentiated;
x += lr * g / max|g| (lr in rating units); x = clamp(x, 1, R), the projection onto the rating range. The
gradient is the one of that truncated unroll; the paper differentiates the fit's optimality (KKT) conditions
instead, which the unroll approaches as the warm-started fit converges. The profiles are x rounded to the grid.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from models.recsys.attacks import check_attack_args, item_stats, on_grid, sample_fillers


def ridge_rows(mask: Tensor, values: Tensor, other: Tensor, reg: float) -> Tensor:
    """Every row's ridge solution against the other side's factors: (sum_i m_i o_i o_i^T + reg I)^-1 sum_i v_i o_i,
    the sums over the row's rated columns (`mask` [rows, cols] 0/1, `values` 0 where unrated)."""
    k = other.shape[1]
    outer = (other.unsqueeze(2) * other.unsqueeze(1)).reshape(len(other), k * k)
    gram = (mask @ outer).view(-1, k, k) + reg * torch.eye(k, dtype=other.dtype)
    return torch.linalg.solve(gram, (values @ other).unsqueeze(-1)).squeeze(-1)


def als_sweeps(mask: Tensor, ratings: Tensor, items: Tensor, reg: float, sweeps: int) -> tuple[Tensor, Tensor]:
    """`sweeps` ALS sweeps (user factors, then item factors) from item factors `items`."""
    for _ in range(sweeps):
        users = ridge_rows(mask, ratings, items, reg)
        items = ridge_rows(mask.T, ratings.T, users, reg)
    return users, items


@dataclass
class PGAAttack:
    """Projected gradient ascent on filler ratings against an ALS MF victim (see the module docstring)."""

    dim: int = 16
    reg: float = 1.0
    steps: int = 30
    sweeps: int = 2
    init_sweeps: int = 10
    lr: float = 0.5

    def __post_init__(self) -> None:
        if self.dim < 1 or self.reg <= 0 or self.steps < 0 or self.sweeps < 1 or self.init_sweeps < 0 or self.lr <= 0:
            raise ValueError(
                f"attack.method: need dim >= 1, reg > 0, steps >= 0, sweeps >= 1, init_sweeps >= 0, lr > 0 (got {self})"
            )

    def utility(self, train: Tensor, fake: Tensor, items: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
        """(U(x), the item factors of the fit): the real users' predicted target ratings after `sweeps` sweeps."""
        ratings = torch.cat([train, fake])
        users, items = als_sweeps((ratings > 0).to(ratings.dtype), ratings, items, self.reg, self.sweeps)
        return (users[: len(train)] @ items[targets].T).sum(), items

    def generate(
        self, train: Tensor, targets: Tensor, n_fake: int, n_filler: int, max_rating: float, generator: torch.Generator
    ) -> Tensor:
        check_attack_args(train, targets, n_fake, n_filler)
        train = train.double()
        n_items = train.shape[1]
        fillers = sample_fillers(n_fake, n_items, n_filler, targets, generator)
        mean, _, _, _ = item_stats(train)
        x = mean.double()[fillers].clamp(1, max_rating)
        base = torch.zeros(n_fake, n_items, dtype=torch.double)
        base[:, targets] = max_rating
        place = lambda values: base.scatter(1, fillers, values)  # noqa: E731 - fillers, then the targets at R
        items = 0.1 * torch.randn(n_items, self.dim, generator=generator, dtype=torch.double)
        with torch.no_grad():
            ratings = torch.cat([train, place(x)])
            _, items = als_sweeps((ratings > 0).double(), ratings, items, self.reg, self.init_sweeps)
        for _ in range(self.steps):
            x = x.detach().requires_grad_(True)
            gain, fitted = self.utility(train, place(x), items, targets)
            (grad,) = torch.autograd.grad(gain, x)
            items = fitted.detach()
            with torch.no_grad():
                x = (x + self.lr * grad / grad.abs().max().clamp(min=1e-12)).clamp(1, max_rating)
        return place(on_grid(x.detach(), max_rating)).float()
