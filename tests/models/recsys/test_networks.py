"""The base recommenders are LightningModules: a Trainer fits them with the reference loss and optimiser,
and a Trainer epoch equals an epoch of the co-training loop that TCD and the defences use."""

from __future__ import annotations

import copy
from functools import partial

import pytest
import torch
from lightning.pytorch import Trainer

from models.recsys.defenses import NoDefense
from models.recsys.networks import MatrixFactorization, NeuMF, Recommender
from models.recsys.optim import TF1Adadelta
from models.recsys.training import Samples, epoch_loader, train_one_epoch


def ratings(n_users: int = 30, n_items: int = 40, n: int = 400, seed: int = 0) -> Samples:
    g = torch.Generator().manual_seed(seed)
    users, items = torch.randint(0, n_users, (n,), generator=g), torch.randint(0, n_items, (n,), generator=g)
    return Samples(users, items, (torch.randint(1, 6, (n,), generator=g).float() / 5))


def trainer(epochs: int = 1) -> Trainer:
    return Trainer(
        max_epochs=epochs, logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False
    )


@pytest.mark.parametrize(
    "make",
    [
        lambda: MatrixFactorization(30, 40, dim=8, optimizer=partial(TF1Adadelta, lr=20.0)),
        lambda: NeuMF(30, 40, dim=4, hidden=(8,), optimizer=partial(torch.optim.Adam, lr=1e-2)),
    ],
    ids=["mf", "neumf"],
)
def test_a_trainer_epoch_equals_a_loop_epoch(make) -> None:
    torch.manual_seed(0)
    by_trainer = make()
    by_loop = copy.deepcopy(by_trainer)
    samples = ratings()
    assert isinstance(by_trainer, Recommender)
    trainer().fit(by_trainer, train_dataloaders=epoch_loader(samples, 64, torch.Generator().manual_seed(3)))
    optimizer = by_loop.configure_optimizers()
    train_one_epoch(by_loop, optimizer, samples, NoDefense().loss, 0, 64, torch.Generator().manual_seed(3))
    for (name, a), b in zip(by_trainer.named_parameters(), by_loop.parameters()):
        assert torch.allclose(a, b, atol=1e-5), name
    assert not torch.allclose(by_trainer.user, make().user)  # it trained at all


def test_trainer_fit_lowers_the_training_loss_of_mf() -> None:
    torch.manual_seed(0)
    model, samples = MatrixFactorization(30, 40, dim=8), ratings()
    before = float(model.rating_loss(samples.users, samples.items, samples.ratings))
    trainer(20).fit(model, train_dataloaders=epoch_loader(samples, 64, torch.Generator().manual_seed(0)))
    after = float(model.rating_loss(samples.users, samples.items, samples.ratings))
    assert after < 0.5 * before and isinstance(model.configure_optimizers(), TF1Adadelta)
