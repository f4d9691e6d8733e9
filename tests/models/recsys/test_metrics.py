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


def test_target_hits_count_the_pairs_behind_the_rate() -> None:
    scores = torch.tensor([[0.9, 0.1, 0.5, 0.95], [0.1, 0.9, 0.5, 0.3]])
    rated = torch.tensor([[True, False, False, False], [False, False, False, False]])
    out = M.target_hit_metrics(scores, rated, [2, 0], ks=[1, 2, 3])
    # the pairs of the first test: t2 at rank 1 for both users, t0 rated by u0 and at rank 3 for u1
    assert [out[f"target_hits@{k}"] for k in (1, 2, 3)] == [0.0, 2.0, 2.0]
    for k in (1, 2, 3):
        assert out[f"target_hits@{k}"] / (2 * 2) == out[f"target_hr@{k}"]
    assert isinstance(out["target_hits@2"], float)  # a count, still a metric (ints are factors when aggregating)


def test_bootstrap_interval_of_a_hand_computed_example() -> None:
    """Users hit 0 or all of their targets; the mean of a resample of 4 users is (users drawn with hits) / 4,
    so with many resamples the 95 % percentile interval of a 2-of-4 sample is [0, 1] (Binomial(4, 1/2) range)
    and a sample with no hits has the interval [0, 0]."""
    wide = M.Bootstrap(resamples=4000, level=0.95, seed=0)
    low, high = wide.interval(torch.tensor([1.0, 1.0, 0.0, 0.0])).tolist()
    assert (low, high) == (0.0, 1.0)  # P(0 of 4) = P(4 of 4) = 1/16 > 2.5 %
    narrow = M.Bootstrap(resamples=4000, level=0.5, seed=0)
    assert narrow.interval(torch.tensor([1.0, 1.0, 0.0, 0.0])).tolist() == [0.25, 0.75]  # quartiles of Bin(4, 1/2) / 4
    assert wide.interval(torch.zeros(4)).tolist() == [0.0, 0.0]


def test_bootstrap_is_seeded_and_resamples_users() -> None:
    per_user = torch.rand(300, 2)
    a, b = M.Bootstrap(seed=1).interval(per_user), M.Bootstrap(seed=1).interval(per_user)
    assert torch.equal(a, b) and not torch.equal(a, M.Bootstrap(seed=2).interval(per_user))
    mean = per_user.mean(0)
    assert (a[0] < mean).all() and (mean < a[1]).all()
    sem = per_user.double().std(0) / 300**0.5  # the normal interval is +-1.96 sem: the percentile one is close to it
    assert torch.allclose(a[1] - a[0], 2 * 1.96 * sem, rtol=0.15)


def test_target_hr_interval_contains_the_rate_and_narrows_with_more_users() -> None:
    generator = torch.Generator().manual_seed(0)
    scores = torch.rand(400, 30, generator=generator)
    rated = torch.zeros(400, 30, dtype=torch.bool)
    out = M.target_hit_metrics(scores, rated, [0, 1, 2], ks=[5], bootstrap=M.Bootstrap(resamples=500))
    assert out["target_hr@5_ci_low"] < out["target_hr@5"] < out["target_hr@5_ci_high"]
    few = M.target_hit_metrics(scores[:40], rated[:40], [0, 1, 2], ks=[5], bootstrap=M.Bootstrap(resamples=500))
    assert few["target_hr@5_ci_high"] - few["target_hr@5_ci_low"] > out["target_hr@5_ci_high"] - out["target_hr@5_ci_low"]
    assert "target_hr@5_ci_low" not in M.target_hit_metrics(scores, rated, [0], ks=[5])  # no bootstrap, no interval
