"""Evaluation (TCD / Cotraining-Attack protocol).

- Target HR@K / NDCG@K: every real user ranks all items *unrated in the (poisoned) training matrix*;
  a (user, target) pair is a hit when the target is in the top K. Averaged over all real users x
  targets (the reference's denominator: a target the user already rated counts as a miss).
- Prediction shift: mean predicted rating (rating units) of the targets over real users who did not
  rate them; the shift caused by an attack is this value minus the same key of the attack=none cell.
- RMSE / MAE on the held-out test ratings in rating units (predictions not clipped, as the reference).
- Leave-one-out HR@K: the held-out item ranked against its 99 sampled negatives.
Ranks count items scoring strictly higher, so ties favour the item (as `argsort` would at random).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


def target_ranks(scores: Tensor, rated: Tensor, targets: Tensor) -> Tensor:
    """[n_users, n_targets] rank (0 = best) of each target among the user's unrated items; -1 if rated."""
    masked = scores.masked_fill(rated, float("-inf"))
    target_scores = masked[:, targets]  # [U, T]
    ranks = (masked.unsqueeze(1) > target_scores.unsqueeze(2)).sum(-1)  # [U, T]
    return ranks.masked_fill(rated[:, targets], -1)


def target_hit_metrics(scores: Tensor, rated: Tensor, targets: Sequence[int], ks: Sequence[int]) -> dict[str, float]:
    """target_hr@K and target_ndcg@K for each K (see the module docstring)."""
    ranks = target_ranks(scores, rated, torch.as_tensor(list(targets)))
    valid = ranks >= 0
    out = {}
    for k in ks:
        hit = valid & (ranks < k)
        out[f"target_hr@{k}"] = float(hit.float().mean())
        gain = torch.where(hit, 1.0 / torch.log2(ranks.float() + 2.0), torch.zeros(()))
        out[f"target_ndcg@{k}"] = float(gain.mean())
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
