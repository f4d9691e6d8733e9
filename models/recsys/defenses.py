"""Training objectives of the defences: none, adversarial training (APR) and random-noise training.

Each defence maps (model, batch, epoch) to a loss; the model only needs ``embed / score / regularizer``
(see networks.py), so every defence works with every base model. TCD changes *what* a model trains on,
not its loss: it is :class:`TripleCooperative`, which the training loop recognises by ``n_models = 3``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.recsys.tcd import GRIDS


def rating_loss(model: nn.Module, embeddings: tuple[Tensor, ...], ratings: Tensor) -> Tensor:
    """MSE on normalised ratings + the model's L2 term on the batch's embeddings (reference loss)."""
    return F.mse_loss(model.score(*embeddings), ratings) + model.regularizer(*embeddings)


@dataclass
class NoDefense:
    n_models: int = 1

    def loss(self, model: nn.Module, users: Tensor, items: Tensor, ratings: Tensor, epoch: int) -> Tensor:
        return model.rating_loss(users, items, ratings)  # the LightningModule's own training loss


@dataclass
class AdversarialTraining:
    """APR (He et al., SIGIR 2018) as in the TCD repo's baseline: delta = eps * l2-normalised gradient of the
    loss w.r.t. each embedding row; loss + weight * MSE at the perturbed embeddings, after `warmup` epochs.
    Perturbs the batch's looked-up rows (the repo perturbs the tables by the batch gradient: the same
    except for a row that appears twice in one batch)."""

    eps: float = 0.05
    weight: float = 1.0
    warmup: int = 5
    n_models: int = 1

    def perturbation(self, model: nn.Module, embeddings: tuple[Tensor, ...], loss: Tensor) -> list[Tensor]:
        grads = torch.autograd.grad(loss, embeddings, retain_graph=True)
        return [self.eps * F.normalize(g, dim=-1) for g in grads]

    def loss(self, model: nn.Module, users: Tensor, items: Tensor, ratings: Tensor, epoch: int) -> Tensor:
        embeddings = model.embed(users, items)
        loss = rating_loss(model, embeddings, ratings)
        if epoch < self.warmup:
            return loss
        deltas = self.perturbation(model, embeddings, loss)
        perturbed = tuple(e + d.detach() for e, d in zip(embeddings, deltas))
        return loss + self.weight * F.mse_loss(model.score(*perturbed), ratings)


@dataclass
class RandomNoise(AdversarialTraining):
    """Random-noise training (the repo's `adv='random'`): truncated-normal noise (sigma 0.01, cut at 2 sigma)
    rescaled to norm eps per row, in place of the adversarial direction."""

    sigma: float = 0.01

    def perturbation(self, model: nn.Module, embeddings: tuple[Tensor, ...], loss: Tensor) -> list[Tensor]:
        out = []
        for e in embeddings:
            noise = torch.nn.init.trunc_normal_(torch.empty_like(e), std=self.sigma, a=-2 * self.sigma, b=2 * self.sigma)
            out.append(self.eps * F.normalize(noise, dim=-1))
        return out


@dataclass
class TripleCooperative(NoDefense):
    """TCD: three models, each trained on real + poisoned + pseudo ratings agreed by the other two.

    grid: "reference" or "rating" (see tcd.py); keep_rate: Bernoulli subsample of pseudo-labels;
    start_epoch: first 0-based epoch with pseudo-labels (reference: `epoch > pre`, pre 0, so 1; an older version used 3)."""

    grid: str = "reference"
    keep_rate: float = 1.0
    start_epoch: int = 1
    n_models: int = 3

    def __post_init__(self) -> None:
        if self.grid not in GRIDS:
            raise ValueError(f"defense.grid={self.grid!r} must be one of {GRIDS}")
        if not 0 < self.keep_rate <= 1:
            raise ValueError(f"defense.keep_rate={self.keep_rate} must be in (0, 1]")
