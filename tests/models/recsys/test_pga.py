"""PGA: the victim's ridge solves against per-row solves, the ascent's gradient against finite differences,
and the profiles' support, range and effect on the victim."""

import numpy as np
import pytest
import torch

from models.recsys.pga import PGAAttack, als_sweeps, ridge_rows

R = 5.0


def toy_train(seed: int = 0, users: int = 30, items: int = 20) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    train = rng.integers(1, 6, (users, items)).astype(float) * (rng.random((users, items)) < 0.4)
    return torch.as_tensor(train)


def test_ridge_rows_solve_each_rows_ridge_problem() -> None:
    rng = np.random.default_rng(1)
    ratings = rng.integers(1, 6, (6, 9)) * (rng.random((6, 9)) < 0.5)
    other = rng.normal(size=(9, 3))
    got = ridge_rows(
        torch.as_tensor((ratings > 0).astype(float)), torch.as_tensor(ratings.astype(float)), torch.as_tensor(other), 0.7
    )
    for row in range(6):
        cols = np.flatnonzero(ratings[row])
        o = other[cols]
        expected = np.linalg.solve(o.T @ o + 0.7 * np.eye(3), o.T @ ratings[row, cols])
        assert np.allclose(got[row].numpy(), expected)


def test_the_ascent_gradient_is_the_utilitys() -> None:
    train, targets = toy_train(), torch.tensor([2, 5])
    attack = PGAAttack(dim=3, reg=0.5, sweeps=2)
    items = 0.1 * torch.randn(20, 3, generator=torch.Generator().manual_seed(0), dtype=torch.double)
    fillers = torch.tensor([[0, 1, 3], [4, 6, 7]])
    base = torch.zeros(2, 20, dtype=torch.double)
    base[:, targets] = R

    def gain(x: torch.Tensor) -> torch.Tensor:
        return attack.utility(train, base.scatter(1, fillers, x), items, targets)[0]

    x = torch.tensor([[2.0, 3.5, 1.5], [4.0, 2.5, 3.0]], dtype=torch.double, requires_grad=True)
    (grad,) = torch.autograd.grad(gain(x), x)
    h = 1e-6
    numeric = torch.zeros_like(x)
    for idx in np.ndindex(*x.shape):
        step = torch.zeros_like(x)
        step[idx] = h
        numeric[idx] = (gain(x.detach() + step) - gain(x.detach() - step)) / (2 * h)
    assert torch.allclose(grad, numeric, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("steps", [0, 15])
def test_profiles_rate_fillers_on_the_grid_and_targets_r(steps) -> None:
    train, targets = toy_train(), torch.tensor([2, 5])
    fake = PGAAttack(dim=3, steps=steps).generate(train.float(), targets, 4, 6, R, torch.Generator().manual_seed(0))
    assert fake.shape == (4, 20) and ((fake > 0).sum(1) == 8).all() and (fake[:, targets] == R).all()
    values = fake[fake > 0]
    assert ((values >= 1) & (values <= R) & (values == values.round())).all()
    if steps == 0:  # no ascent: the items' mean ratings, rounded
        rated = train > 0
        means = (train.sum(0) / rated.sum(0)).float()
        for u, i in (fake > 0).nonzero().tolist():
            if i not in (2, 5):
                assert fake[u, i] == torch.round(means[i]).clamp(1, R)


def test_the_ascent_raises_the_victims_target_predictions() -> None:
    train, targets = toy_train(3, 40, 25), torch.tensor([4])
    generator = lambda: torch.Generator().manual_seed(1)  # noqa: E731 - the same fillers for both
    start = PGAAttack(dim=3, steps=0).generate(train.float(), targets, 5, 8, R, generator())
    ascended = PGAAttack(dim=3, steps=40, lr=0.5).generate(train.float(), targets, 5, 8, R, generator())
    assert ((start > 0) == (ascended > 0)).all() and not torch.equal(start, ascended)

    def victim_gain(fake: torch.Tensor) -> float:
        ratings = torch.cat([train, fake.double()])
        items = 0.1 * torch.randn(25, 3, generator=torch.Generator().manual_seed(7), dtype=torch.double)
        users, items = als_sweeps((ratings > 0).double(), ratings, items, 1.0, 50)
        return float((users[:40] @ items[targets].T).sum())

    assert victim_gain(ascended) > victim_gain(start)


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="attack.method"):
        PGAAttack(reg=0)
