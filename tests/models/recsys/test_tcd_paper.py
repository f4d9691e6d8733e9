"""defense=tcd_paper: the preset composes to the authors' pre-release settings, and the code honours each one
(open_range labels, keep rate, start epoch, TF1 Adam, no L2 penalty, epochs), checked against hand computations."""

import numpy as np
import pytest
import torch

from experiments.tasks.recsys.task import build_loop, model_config, run_epochs
from models.recsys import training
from models.recsys.defenses import TripleCooperative
from models.recsys.networks import MatrixFactorization
from models.recsys.optim import TF1Adam
from models.recsys.tcd import pseudo_labels
from models.recsys.training import LoopStats, Samples, fit

R = 5.0


def test_preset_composes_to_the_pre_release_settings(make_config) -> None:
    cfg = make_config("task=recsys", "defense=tcd_paper")
    d = cfg.defense
    assert d.name == "tcd_paper" and d.epochs == 25 and d.reg == 0.0  # declared 0.005, never in the minimised loss
    assert d.optimizer._target_ == "models.recsys.optim.TF1Adam" and d.optimizer.lr == 1e-3
    assert (d.optimizer.beta1, d.optimizer.beta2, d.optimizer.eps) == (0.9, 0.999, 1e-8)
    assert d.method._target_ == "models.recsys.defenses.TripleCooperative"
    assert (d.method.grid, d.method.keep_rate, d.method.start_epoch) == ("open_range", 0.5, 6)
    assert run_epochs(cfg) == 25 and cfg.task.epochs == 40  # the preset's epochs, not the task's
    model = model_config(cfg)
    assert model.network.reg == 0.0 and model.optimizer._target_.endswith("TF1Adam")
    # the released preset keeps the model's own settings
    released = make_config("task=recsys", "defense=tcd")
    assert run_epochs(released) == 40 and model_config(released).network.reg == 1e-4
    assert model_config(released).optimizer._target_.endswith("TF1Adadelta")


def test_the_loop_builds_models_with_the_presets_reg_and_optimiser(make_config) -> None:
    cfg = make_config("task=recsys", "defense=tcd_paper", "model.network.dim=4")

    class Data:
        n_items = 7

    loop = build_loop(cfg, Data(), 5, 3, torch.Generator(), None)
    assert len(loop.models) == 3 and all(m.reg == 0.0 for m in loop.models)
    assert all(isinstance(o, TF1Adam) and o.defaults["lr"] == 1e-3 for o in loop.optimizers)


def test_open_range_zeroes_agreed_values_outside_zero_to_r() -> None:
    # rounded steps (half to even): a = 0 -1 3 5 6 4 ; b = 0 -1 3 5 6 2
    a = torch.tensor([[0.02, -0.2, 0.61, 1.0, 1.2, 0.79]])
    b = torch.tensor([[0.09, -0.25, 0.58, 0.95, 1.18, 0.41]])
    users, items, labels = pseudo_labels(a, b, torch.zeros(1, 6, dtype=torch.bool), R, grid="open_range")
    # agreed: items 0..4 (step 0, -1, 3, 5, 6); item 5 disagrees (4 vs 2). Only 3 lies inside (0, 5): 0.6;
    # 0, -1, the maximum rating 5 and 6 all become the label 0 (+ 1e-5)
    assert items.tolist() == [0, 1, 2, 3, 4]
    expected = torch.tensor([0.0, 0.0, 0.6, 0.0, 0.0]) + 1e-5
    assert torch.allclose(labels, expected, atol=1e-7)
    # the released grid labels the same cells with their own values (-0.2, 1.0, 1.2 stay)
    _, _, released = pseudo_labels(a, b, torch.zeros(1, 6, dtype=torch.bool), R, grid="reference")
    assert torch.allclose(released, torch.tensor([0.0, -0.2, 0.6, 1.0, 1.2]) + 1e-5, atol=1e-6)


def test_keep_rate_keeps_the_cells_of_the_generators_bernoulli_draws() -> None:
    a = torch.tensor([[0.2, 0.4, 0.6], [0.8, 0.2, 0.4], [0.6, 0.8, 0.2], [0.4, 0.6, 0.8]])
    rated = torch.zeros(4, 3, dtype=torch.bool)
    rated[1, 1] = True
    generator = torch.Generator().manual_seed(3)
    draws = torch.rand((4, 3), generator=torch.Generator().manual_seed(3))  # the same stream, by hand
    users, items, labels = pseudo_labels(a, a, rated, R, grid="open_range", keep_rate=0.5, generator=generator)
    expected = [(u, i) for u in range(4) for i in range(3) if draws[u, i] < 0.5 and not rated[u, i]]
    assert list(zip(users.tolist(), items.tolist())) == expected and 0 < len(expected) < 11
    assert torch.allclose(labels, a[users, items] + 1e-5)


def test_the_loop_labels_from_the_start_epoch_with_the_defences_grid_and_keep_rate(monkeypatch) -> None:
    calls = []

    def spy(pred_a, pred_b, rated, max_rating, grid, keep_rate, generator):
        calls.append((grid, keep_rate))
        return pseudo_labels(pred_a, pred_b, rated, max_rating, grid, keep_rate, generator)

    monkeypatch.setattr(training, "pseudo_labels", spy)
    torch.manual_seed(0)
    models = [MatrixFactorization(6, 7, dim=4, reg=0.005) for _ in range(3)]
    optimizers = [TF1Adam(m.parameters()) for m in models]
    rated = torch.zeros(6, 7, dtype=torch.bool)
    rated[:, :2] = True
    users, items = rated.nonzero(as_tuple=True)
    samples = Samples(users, items, torch.full((len(users),), 0.6))
    defense = TripleCooperative(grid="open_range", keep_rate=0.5, start_epoch=6)
    stats = fit(models, optimizers, samples, defense, 8, 4, rated, R, torch.Generator().manual_seed(0), stats=LoopStats())
    # epochs 0..5 train on the ratings alone; epochs 6 and 7 label once per model
    assert calls == [("open_range", 0.5)] * 6 and len(stats.pseudo_per_model) == 6
    assert stats.samples == 8 * 3 * len(samples) + sum(stats.pseudo_per_model)


def tf1_adam_reference(w: np.ndarray, grads: list[np.ndarray], lr=1e-3, b1=0.9, b2=0.999, eps=1e-8) -> np.ndarray:
    """TF1 ApplyAdam written out: lr_t = lr sqrt(1 - b2^t) / (1 - b1^t); w -= lr_t m / (sqrt(v) + eps)."""
    m, v = np.zeros_like(w), np.zeros_like(w)
    for t, g in enumerate(grads, start=1):
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        w = w - lr * np.sqrt(1 - b2**t) / (1 - b1**t) * m / (np.sqrt(v) + eps)
    return w


def test_tf1_adam_matches_the_tf1_rule_on_sparse_gradients_with_repeated_rows() -> None:
    torch.manual_seed(0)
    model = MatrixFactorization(4, 5, dim=3, reg=0.005)
    start = model.user.detach().double().numpy().copy(), model.item.detach().double().numpy().copy()
    optimizer = TF1Adam(model.parameters(), lr=0.01)
    batches = [(torch.tensor([0, 0, 2]), torch.tensor([1, 1, 4])), (torch.tensor([3, 1]), torch.tensor([0, 2]))]
    user_grads, item_grads = [], []
    for users, items in batches:
        optimizer.zero_grad()
        loss = model.rating_loss(users, items, torch.full((len(users),), 0.8))
        loss.backward()
        user_grads.append(model.user.grad.coalesce().to_dense().double().numpy().copy())  # repeated rows summed
        item_grads.append(model.item.grad.coalesce().to_dense().double().numpy().copy())
        optimizer.step()
    # every row moves (row 1 of items had no gradient in batch 2: its moments still decay and apply)
    assert np.allclose(model.user.detach().numpy(), tf1_adam_reference(start[0], user_grads, lr=0.01), atol=1e-6)
    assert np.allclose(model.item.detach().numpy(), tf1_adam_reference(start[1], item_grads, lr=0.01), atol=1e-6)
    # torch's Adam adds eps after the bias correction: with eps of the gradients' scale the two differ
    w = np.ones(2)
    g = [np.full(2, 1e-3)]
    assert not np.allclose(tf1_adam_reference(w, g, eps=1e-3), w - 1e-3 * 1e-3 / (1e-3 + 1e-3))


@pytest.mark.parametrize("seed", [0, 1])
def test_tf1_adam_fast_path_equals_autograd(seed) -> None:
    torch.manual_seed(seed)
    fast, slow = MatrixFactorization(5, 6, dim=4, reg=0.005), MatrixFactorization(5, 6, dim=4, reg=0.005)
    slow.load_state_dict(fast.state_dict())
    opt_fast, opt_slow = TF1Adam(fast.parameters()), TF1Adam(slow.parameters())
    for _ in range(3):
        users, items = torch.randint(0, 5, (8,)), torch.randint(0, 6, (8,))
        ratings = torch.rand(8)
        _, updates = fast.row_gradients(users, items, ratings)
        opt_fast.step_rows(updates)
        opt_slow.zero_grad()
        slow.rating_loss(users, items, ratings).backward()
        opt_slow.step()
    assert torch.allclose(fast.user, slow.user, atol=1e-6) and torch.allclose(fast.item, slow.item, atol=1e-6)
