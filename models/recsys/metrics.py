"""Evaluation (TCD / Cotraining-Attack protocol).

- Target HR@K / NDCG@K: every real user ranks all items *unrated in the (poisoned) training matrix*;
  a (user, target) pair is a hit when the target is in the top K. Averaged over all real users x
  targets (the reference's denominator: a target the user already rated counts as a miss).
  `target_hits@K` is the count behind the rate (HR x users x targets): with ~4,700 pairs on ML-100K a few
  hits are a floor, not a ranking. `target_hr@K_ci_low` / `_ci_high`: a seeded percentile bootstrap over
  real users (:class:`Bootstrap`), since users, not pairs, are the independent draws.
- Prediction shift: mean predicted rating (rating units) of the targets over real users who did not
  rate them; the shift caused by an attack is this value minus the same key of the attack=none cell.
- RMSE / MAE on the held-out test ratings in rating units (predictions not clipped, as the reference).
- Leave-one-out HR@K: the held-out item ranked against its 99 sampled negatives.
Ranks count items scoring strictly higher, so ties favour the item (as `argsort` would at random).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated

import torch
from torch import Tensor

from common.ranges import Range


def target_ranks(scores: Tensor, rated: Tensor, targets: Tensor) -> Tensor:
    """[n_users, n_targets] rank (0 = best) of each target among the user's unrated items; -1 if rated."""
    masked = scores.masked_fill(rated, float("-inf"))
    target_scores = masked[:, targets]  # [U, T]
    ranks = (masked.unsqueeze(1) > target_scores.unsqueeze(2)).sum(-1)  # [U, T]
    return ranks.masked_fill(rated[:, targets], -1)


@dataclass(frozen=True)
class Bootstrap:
    """Percentile bootstrap over users, seeded so that every epoch, run and defence resamples the same users
    (their intervals differ by the models, not by the draws)."""

    resamples: Annotated[int, Range(ge=1)] = 2000
    level: Annotated[float, Range(gt=0, lt=1)] = 0.95
    seed: Annotated[int, Range(ge=0)] = 0

    def interval(self, per_user: Tensor) -> Tensor:
        """[2, *rest]: the (low, high) percentiles of the mean over users of `per_user` [n_users, *rest]."""
        n = per_user.shape[0]
        draws = torch.randint(n, (self.resamples, n), generator=torch.Generator().manual_seed(self.seed))
        times_drawn = torch.zeros(self.resamples, n, dtype=torch.float64).scatter_add_(
            1, draws, torch.ones(self.resamples, n, dtype=torch.float64)
        )
        means = times_drawn @ per_user.reshape(n, -1).double() / n  # [resamples, rest]
        tail = (1 - self.level) / 2
        bounds = torch.quantile(means, torch.tensor([tail, 1 - tail], dtype=torch.float64), dim=0)
        return bounds.reshape(2, *per_user.shape[1:])


def target_hit_metrics(
    scores: Tensor, rated: Tensor, targets: Sequence[int], ks: Sequence[int], bootstrap: Bootstrap | None = None
) -> dict[str, float]:
    """target_hr@K, target_hits@K and target_ndcg@K for each K, and with `bootstrap` the HR's interval
    target_hr@K_ci_low / _ci_high (see the module docstring)."""
    ranks = target_ranks(scores, rated, torch.as_tensor(list(targets)))
    valid = ranks >= 0
    out = {}
    user_rates = []  # [n_users] per K: the share of the targets in the user's top K
    for k in ks:
        hit = valid & (ranks < k)
        out[f"target_hr@{k}"] = float(hit.float().mean())
        out[f"target_hits@{k}"] = float(hit.sum())  # a float: a count, not a factor, for the aggregation
        gain = torch.where(hit, 1.0 / torch.log2(ranks.float() + 2.0), torch.zeros(()))
        out[f"target_ndcg@{k}"] = float(gain.mean())
        user_rates.append(hit.float().mean(1))
    if bootstrap is not None and ks:
        low, high = bootstrap.interval(torch.stack(user_rates, 1))
        for k, lo, hi in zip(ks, low.tolist(), high.tolist()):
            out[f"target_hr@{k}_ci_low"], out[f"target_hr@{k}_ci_high"] = lo, hi
    return out


def prediction_shift(scores: Tensor, rated: Tensor, targets: Sequence[int], max_rating: float) -> float:
    """Mean predicted target rating (rating units) over the real users who have not rated the target."""
    t = torch.as_tensor(list(targets))
    unrated = ~rated[:, t]
    return float((scores[:, t] * max_rating)[unrated].mean()) if unrated.any() else float("nan")


def rating_errors(scores: Tensor, users: Tensor, items: Tensor, ratings: Tensor, max_rating: float) -> dict[str, float]:
    """RMSE and MAE (rating units) of the predictions on held-out ratings (`ratings` in rating units)."""
    err = scores[users, items] * max_rating - ratings
    return {"rmse": float(err.pow(2).mean().sqrt()), "mae": float(err.abs().mean())}


def loo_hit_rate(scores: Tensor, users: Tensor, items: Tensor, negatives: Tensor, k: int = 10) -> float:
    """Leave-one-out HR@k: the test item is a hit when fewer than k of its negatives score higher."""
    pos = scores[users, items].unsqueeze(1)
    neg = scores[users.unsqueeze(1), negatives]
    return float(((neg > pos).sum(1) < k).float().mean())
