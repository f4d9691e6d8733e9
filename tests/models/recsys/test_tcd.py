"""TCD pseudo-labelling rule (TCD Sec. 4) on hand-made predictions of three models."""

import torch

from models.recsys.defenses import TripleCooperative
from models.recsys.networks import MatrixFactorization
from models.recsys.optim import TF1Adadelta
from models.recsys.tcd import pseudo_labels
from models.recsys.training import LoopStats, Samples, fit

R = 5.0


def test_agreeing_unrated_cells_become_rounded_labels() -> None:
    # model predictions (normalised); rounding to the grid: round(5 * x)
    a = torch.tensor([[0.79, 0.41, 0.00, 0.58], [0.20, 0.99, 0.62, 0.30]])  # grid 4 2 0 3 / 1 5 3 2
    b = torch.tensor([[0.81, 0.62, 0.03, 0.58], [0.18, 0.99, 0.69, 0.50]])  # grid 4 3 0 3 / 1 5 3 2
    rated = torch.tensor([[False, False, False, True], [False, True, False, False]])
    users, items, labels = pseudo_labels(a, b, rated, R)
    cells = {(int(u), int(i)): float(v) for u, i, v in zip(users, items, labels)}
    # (0,1) disagrees (2 vs 3); (0,3) and (1,1) are rated: never labelled, even though the models agree
    assert set(cells) == {(0, 0), (0, 2), (1, 0), (1, 2), (1, 3)}
    assert abs(cells[(0, 0)] - (0.8 + 1e-5)) < 1e-6
    assert abs(cells[(0, 2)] - 1e-5) < 1e-9  # reference semantics: a 0 is a label, kept present by +1e-5
    assert abs(cells[(1, 3)] - (0.4 + 1e-5)) < 1e-6


def test_rating_grid_clips_to_one_to_r() -> None:
    a = torch.tensor([[0.02, 1.5, 0.5]])
    b = torch.tensor([[0.08, 1.3, 0.5]])  # raw grid 0/0, 8/6, 2/2 (half to even): clipped 1/1, 5/5, 2/2
    users, items, labels = pseudo_labels(a, b, torch.zeros(1, 3, dtype=torch.bool), R, grid="rating")
    assert items.tolist() == [0, 1, 2]
    assert torch.allclose(labels, torch.tensor([0.2, 1.0, 0.4]))
    _, items_ref, _ = pseudo_labels(a, b, torch.zeros(1, 3, dtype=torch.bool), R, grid="reference")
    assert items_ref.tolist() == [0, 2]  # 8 != 6 without clipping


def test_keep_rate_subsamples() -> None:
    a = torch.full((100, 100), 0.6)
    users, _, _ = pseudo_labels(
        a, a, torch.zeros(100, 100, dtype=torch.bool), R, keep_rate=0.3, generator=torch.Generator().manual_seed(0)
    )
    assert 2500 < len(users) < 3500


def test_each_model_trains_on_the_other_two_models_labels() -> None:
    torch.manual_seed(0)
    models = [MatrixFactorization(6, 7, dim=4) for _ in range(3)]
    optimizers = [TF1Adadelta(m.parameters()) for m in models]
    rated = torch.zeros(6, 7, dtype=torch.bool)
    rated[0, :3] = True
    users, items = rated.nonzero(as_tuple=True)
    samples = Samples(users, items, torch.full((len(users),), 0.8))
    # Count the pseudo-labels the loop hands to model 0 against the rule applied to models 1 and 2 directly.
    expected = len(pseudo_labels(models[1].full_scores().detach(), models[2].full_scores().detach(), rated, R)[0])
    stats = fit(
        models,
        optimizers,
        samples,
        TripleCooperative(start_epoch=0),
        1,
        4,
        rated,
        R,
        torch.Generator().manual_seed(0),
        stats=LoopStats(),
    )
    assert stats.pseudo_per_model[0] == expected
    assert len(stats.pseudo_per_model) == 3 and stats.samples == 3 * len(samples) + sum(stats.pseudo_per_model)
    # start_epoch=1 (reference): no pseudo-labels in the first epoch
    stats = fit(
        models, optimizers, samples, TripleCooperative(start_epoch=1), 1, 4, rated, R, torch.Generator(), stats=LoopStats()
    )
    assert stats.pseudo_per_model == [] and stats.samples == 3 * len(samples)


def test_target_label_stats_count_real_users_on_target_items_only() -> None:
    # 3 real users + 1 fake user (row 3), targets = items {1, 2}; the labelled cells are listed by hand
    users = torch.tensor([0, 0, 1, 2, 3, 3])
    items = torch.tensor([1, 0, 2, 1, 1, 2])
    labels = torch.tensor([0.8, 0.2, 0.4, 0.0, 1.0, 1.0])
    stats = LoopStats()
    stats.record_target_labels(users, items, labels, n_real=3, targets=torch.tensor([1, 2]), max_rating=R)
    # real-user target cells labelled: (0,1) 4, (1,2) 2, (2,1) 0 -> 3 of 3 x 2 cells, mean rating 2; the fake rows
    # and the non-target item 0 do not count
    assert stats.target_label_share == [0.5]
    assert abs(stats.target_label_mean[0] - 2.0) < 1e-6
    assert abs(stats.other_label_mean[0] - 1.0) < 1e-6  # the real users' other labelled cell: (0, 0) at 0.2 * 5
