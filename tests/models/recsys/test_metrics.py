"""Target HR@K / NDCG@K, prediction shift, RMSE / MAE and leave-one-out HR on cases with known answers."""

import math

import pytest
import torch

from models.recsys import metrics as M


def test_target_hr_and_ndcg_known_answer() -> None:
    # user 0: items ranked 3 > 0 > 2 > 1, item 0 rated (excluded) -> unrated ranking 3, 2, 1
    # user 1: items ranked 1 > 2 > 3 > 0, nothing rated
    scores = torch.tensor([[0.9, 0.1, 0.5, 0.95], [0.1, 0.9, 0.5, 0.3]])
    rated = torch.tensor([[True, False, False, False], [False, False, False, False]])
    out = M.target_hit_metrics(scores, rated, [2, 0], ks=[1, 2])
    # pairs: (u0, t2) rank 1; (u0, t0) rated -> miss; (u1, t2) rank 1; (u1, t0) rank 3
    assert out["target_hr@1"] == 0.0
    assert out["target_hr@2"] == pytest.approx(2 / 4)
    assert out["target_ndcg@2"] == pytest.approx(2 * (1 / math.log2(3)) / 4)


def test_target_ranks_ignore_rated_items_above() -> None:
    scores = torch.tensor([[5.0, 4.0, 3.0]])
    rated = torch.tensor([[True, True, False]])
    assert M.target_ranks(scores, rated, torch.tensor([2])).tolist() == [[0]]


def test_prediction_shift_is_mean_unrated_target_rating() -> None:
    scores = torch.tensor([[0.8, 0.2], [0.6, 0.4]])
    rated = torch.tensor([[False, True], [False, False]])
    assert M.prediction_shift(scores, rated, [0, 1], 5.0) == pytest.approx((4 + 3 + 2) / 3)


def test_rating_errors_and_loo() -> None:
    scores = torch.tensor([[0.8, 0.2, 0.5], [0.6, 0.4, 0.1]])
    err = M.rating_errors(scores, torch.tensor([0, 1]), torch.tensor([0, 2]), torch.tensor([5.0, 1.0]), 5.0)
    assert err["rmse"] == pytest.approx(math.sqrt((1 + 0.25) / 2)) and err["mae"] == pytest.approx(0.75)
    negatives = torch.tensor([[1, 2], [0, 1]])
    # user 0: test item 0 (0.8) beats both -> rank 0; user 1: test item 2 (0.1) below both -> rank 2
    assert M.loo_hit_rate(scores, torch.tensor([0, 1]), torch.tensor([0, 2]), negatives, k=1) == 0.5
    assert M.loo_hit_rate(scores, torch.tensor([0, 1]), torch.tensor([0, 2]), negatives, k=3) == 1.0
