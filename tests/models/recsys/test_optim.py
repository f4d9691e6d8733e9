"""TF1 Adadelta (rho 0.95, eps 1e-8, sparse rows) and the analytic MF gradient."""

import math

import torch
import torch.nn.functional as F

from models.recsys.defenses import NoDefense
from models.recsys.networks import MatrixFactorization
from models.recsys.optim import TF1Adadelta


def test_first_sparse_step_matches_tf1_formula_and_leaves_other_rows() -> None:
    weight = torch.nn.Parameter(torch.ones(3, 2))
    opt = TF1Adadelta([weight], lr=20.0)
    loss = (F.embedding(torch.tensor([1, 1]), weight, sparse=True) * torch.tensor([0.5, -1.0])).sum()
    loss.backward()
    opt.step()
    g = torch.tensor([1.0, -2.0])  # duplicate row 1: gradients summed
    accum = 0.05 * g**2
    upd = math.sqrt(1e-8) / (accum + 1e-8).sqrt() * g
    assert torch.allclose(weight[1], 1 - 20 * upd, atol=1e-6)
    assert torch.equal(weight[0], torch.ones(2)) and torch.equal(weight[2], torch.ones(2))
    assert torch.equal(opt.state[weight]["accum"][0], torch.zeros(2))  # untouched rows do not decay either


def test_row_gradients_equal_autograd() -> None:
    torch.manual_seed(0)
    for link in ("linear", "sigmoid"):
        model = MatrixFactorization(5, 6, dim=3, reg=0.1, link=link)
        users, items = torch.tensor([0, 2, 2, 4]), torch.tensor([1, 1, 5, 0])
        ratings = torch.tensor([0.2, 0.8, 1.0, 0.4])
        loss = NoDefense().loss(model, users, items, ratings, 0)
        loss.backward()
        fast_loss, updates = model.row_gradients(users, items, ratings)
        assert torch.allclose(fast_loss, loss.detach())
        for param, rows, grad in updates:
            dense = param.grad.to_dense()
            assert torch.allclose(dense[rows], grad, atol=1e-6)
            others = torch.ones(len(dense), dtype=torch.bool)
            others[rows] = False
            assert torch.all(dense[others] == 0)


def test_fast_and_autograd_paths_give_the_same_model() -> None:
    from models.recsys.training import Samples, train_one_epoch

    torch.manual_seed(0)
    a = MatrixFactorization(8, 9, dim=4)
    b = MatrixFactorization(8, 9, dim=4)
    b.load_state_dict(a.state_dict())
    samples = Samples(torch.randint(0, 8, (50,)), torch.randint(0, 9, (50,)), torch.rand(50))
    train_one_epoch(a, TF1Adadelta(a.parameters()), samples, NoDefense().loss, 0, 16, torch.Generator().manual_seed(1))
    slow = lambda m, u, i, r, e: NoDefense().loss(m, u, i, r, e)  # noqa: E731 - not NoDefense.loss: forces autograd
    train_one_epoch(b, TF1Adadelta(b.parameters()), samples, slow, 0, 16, torch.Generator().manual_seed(1))
    assert torch.allclose(a.user, b.user, atol=1e-5) and torch.allclose(a.item, b.item, atol=1e-5)


def test_int32_sample_ids_train_exactly_like_int64_ids() -> None:
    """Samples keep ids as int32 (half the memory traffic of the per-epoch shuffle); the batches, and so
    the trained model, are bit-identical to the int64 order an earlier version used."""
    from models.recsys.training import Samples, train_one_epoch

    users, items, ratings = torch.randint(0, 8, (500,)), torch.randint(0, 9, (500,)), torch.rand(500)
    samples = Samples(users, items, ratings)
    assert samples.users.dtype == torch.int32 and samples.extend(users, items, ratings).items.dtype == torch.int32
    torch.manual_seed(0)
    a = MatrixFactorization(8, 9, dim=4)
    b = MatrixFactorization(8, 9, dim=4)
    b.load_state_dict(a.state_dict())
    train_one_epoch(a, TF1Adadelta(a.parameters()), samples, NoDefense().loss, 0, 64, torch.Generator().manual_seed(1))
    order = torch.randperm(500, generator=torch.Generator().manual_seed(1))  # int64, the old way
    opt = TF1Adadelta(b.parameters())
    for start in range(0, 500, 64):
        batch = order[start : start + 64]
        _, updates = b.row_gradients(users[batch], items[batch], ratings[batch])
        opt.step_rows(updates)
    assert torch.equal(a.user, b.user) and torch.equal(a.item, b.item)
