"""Base recommenders on normalised explicit ratings (rating / R): MF (TCD's base model) and NeuMF.

Both expose the same small interface the defences and attacks use, so TCD, APR and noise training
are model-agnostic:
- ``embed(users, items) -> tuple[Tensor, ...]`` the looked-up embeddings (APR / noise perturb these),
- ``score(*embeddings) -> Tensor`` predictions from embeddings,
- ``regularizer(*embeddings)`` the L2 term on the batch's embeddings,
- ``full_scores(users=None) -> [n_users, n_items]`` every cell at once (pseudo-labels, metrics).
Embeddings are looked up with ``sparse=True`` so the TF1-style optimiser updates only a batch's rows.

Both are LightningModules (:class:`Recommender`): a Trainer fits one alone on (user, item, rating)
batches with the reference loss and the configured optimiser. The defences and TCD's co-training drive
the same modules from a plain loop (models/recsys/training.py), which gives the same epoch (tested):
TCD relabels the training set before every model's epoch, and a Trainer fit per model per epoch would
cost more than the epoch.
"""

from __future__ import annotations

from collections.abc import Callable

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor, nn


def xavier_table(rows: int, dim: int) -> nn.Parameter:
    """Glorot-uniform table, TF's `xavier_initializer` on a [rows, dim] variable (limit sqrt(6/(rows+dim)))."""
    weight = torch.empty(rows, dim)
    nn.init.xavier_uniform_(weight)
    return nn.Parameter(weight)


class Recommender(L.LightningModule):
    """A rating model as a LightningModule: batches are (users, items, ratings / R); the loss is MSE + the
    model's L2 term on the batch's embeddings (the reference's); `optimizer` is a partial taking params
    (the config's `model.optimizer`), TF1 Adadelta lr 20 when none is given."""

    def __init__(self, optimizer: Callable[..., torch.optim.Optimizer] | None = None) -> None:
        super().__init__()
        self.optimizer_factory = optimizer

    def embed(self, users: Tensor, items: Tensor) -> tuple[Tensor, ...]:
        raise NotImplementedError

    def score(self, *embeddings: Tensor) -> Tensor:
        raise NotImplementedError

    def regularizer(self, *embeddings: Tensor) -> Tensor:
        raise NotImplementedError

    def forward(self, users: Tensor, items: Tensor) -> Tensor:
        return self.score(*self.embed(users, items))

    def rating_loss(self, users: Tensor, items: Tensor, ratings: Tensor) -> Tensor:
        embeddings = self.embed(users, items)
        return F.mse_loss(self.score(*embeddings), ratings) + self.regularizer(*embeddings)

    def training_step(self, batch: tuple[Tensor, Tensor, Tensor], batch_idx: int) -> Tensor:
        loss = self.rating_loss(*batch)
        self.log("train/loss", loss, on_step=False, on_epoch=True, batch_size=len(batch[0]))
        return loss

    def validation_step(self, batch: tuple[Tensor, Tensor, Tensor], batch_idx: int) -> None:
        users, items, ratings = batch
        self.log("val/mse", F.mse_loss(self(users, items), ratings), batch_size=len(users))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        if self.optimizer_factory is not None:
            return self.optimizer_factory(params=self.parameters())
        from models.recsys.optim import TF1Adadelta

        return TF1Adadelta(self.parameters())


class MatrixFactorization(Recommender):
    """r_hat = p_u . q_i (TCD Sec. 3, no biases); `link="sigmoid"` gives Co-Attack's PMF sigma(p . q).

    Loss (reference): mean squared error + reg * (mean(p_u^2) + mean(q_i^2)) over the batch's rows.
    """

    def __init__(
        self,
        n_users: int,
        n_items: int,
        dim: int = 128,
        reg: float = 1e-4,
        link: str = "linear",
        optimizer: Callable[..., torch.optim.Optimizer] | None = None,
    ) -> None:
        super().__init__(optimizer)
        if link not in ("linear", "sigmoid"):
            raise ValueError(f"link={link!r} must be 'linear' or 'sigmoid'")
        self.user = xavier_table(n_users, dim)
        self.item = xavier_table(n_items, dim)
        self.reg, self.link = reg, link

    @property
    def n_users(self) -> int:
        return self.user.shape[0]

    def embed(self, users: Tensor, items: Tensor) -> tuple[Tensor, Tensor]:
        return F.embedding(users, self.user, sparse=True), F.embedding(items, self.item, sparse=True)

    def score(self, p: Tensor, q: Tensor) -> Tensor:
        out = (p * q).sum(-1)
        return torch.sigmoid(out) if self.link == "sigmoid" else out

    def regularizer(self, p: Tensor, q: Tensor) -> Tensor:
        return self.reg * (p.pow(2).mean() + q.pow(2).mean())

    @torch.no_grad()
    def row_gradients(self, users: Tensor, items: Tensor, ratings: Tensor) -> tuple[Tensor, list[tuple[Tensor, Tensor, Tensor]]]:
        """Loss and its exact gradient per unique user / item row, without autograd (several times faster per
        step on CPU; equal to autograd's, tested). For L = mean (s - r)^2 + reg (mean p^2 + mean q^2):
        dL/dP[u] = sum over the batch rows of user u of (2/B) e q + count_u * (2 reg / (B d)) P[u]."""
        P, Q = self.user.detach(), self.item.detach()
        uu, uinv, ucount = torch.unique(users, return_inverse=True, return_counts=True)
        ii, iinv, icount = torch.unique(items, return_inverse=True, return_counts=True)
        uu, ii = uu.long(), ii.long()  # the optimiser's index_copy_ wants int64 rows (ids may come as int32)
        p, q = P.index_select(0, users), Q.index_select(0, items)
        batch, dim = p.shape
        out = torch.bmm(p.unsqueeze(1), q.unsqueeze(2)).view(batch)
        pred = torch.sigmoid(out) if self.link == "sigmoid" else out
        err = pred - ratings
        dout = (2.0 / batch) * err
        if self.link == "sigmoid":
            dout = dout * pred * (1 - pred)
        shrink = 2.0 * self.reg / (batch * dim)
        pu, qi = P.index_select(0, uu), Q.index_select(0, ii)
        grow_p = (pu * (shrink * ucount).unsqueeze(1)).index_add_(0, uinv, q * dout.unsqueeze(1))
        grow_q = (qi * (shrink * icount).unsqueeze(1)).index_add_(0, iinv, p * dout.unsqueeze(1))
        reg = self.reg / (batch * dim) * ((pu.pow(2).sum(1) * ucount).sum() + (qi.pow(2).sum(1) * icount).sum())
        loss = err.pow(2).mean() + reg
        return loss, [(self.user, uu, grow_p), (self.item, ii, grow_q)]

    def full_scores(self, users: Tensor | None = None) -> Tensor:
        p = self.user if users is None else self.user[users]
        out = p @ self.item.T
        return torch.sigmoid(out) if self.link == "sigmoid" else out


class NeuMF(Recommender):
    """NeuMF (He et al., WWW 2017) for rating regression: a GMF path p*q and an MLP on [p', q'], fused by a
    linear output. The second base model, to show TCD is model-agnostic (the issue asks for one)."""

    def __init__(
        self,
        n_users: int,
        n_items: int,
        dim: int = 32,
        hidden: tuple[int, ...] = (64, 32),
        reg: float = 1e-4,
        sparse: bool = False,
        optimizer: Callable[..., torch.optim.Optimizer] | None = None,
    ) -> None:
        super().__init__(optimizer)
        self.sparse = sparse  # dense gradients by default, so Adam applies
        self.user, self.item = xavier_table(n_users, dim), xavier_table(n_items, dim)
        self.user_mlp, self.item_mlp = xavier_table(n_users, dim), xavier_table(n_items, dim)
        layers, width = [], 2 * dim
        for size in hidden:
            layers += [nn.Linear(width, size), nn.ReLU()]
            width = size
        self.mlp = nn.Sequential(*layers)
        self.out = nn.Linear(dim + width, 1)
        self.reg = reg

    @property
    def n_users(self) -> int:
        return self.user.shape[0]

    def embed(self, users: Tensor, items: Tensor) -> tuple[Tensor, ...]:
        return tuple(
            F.embedding(idx, table, sparse=self.sparse)
            for idx, table in ((users, self.user), (items, self.item), (users, self.user_mlp), (items, self.item_mlp))
        )

    def score(self, p: Tensor, q: Tensor, pm: Tensor, qm: Tensor) -> Tensor:
        return self.out(torch.cat([p * q, self.mlp(torch.cat([pm, qm], -1))], -1)).squeeze(-1)

    def regularizer(self, *embeddings: Tensor) -> Tensor:
        return self.reg * sum(e.pow(2).mean() for e in embeddings)

    @torch.no_grad()
    def full_scores(self, users: Tensor | None = None, chunk: int = 64) -> Tensor:
        users = torch.arange(self.n_users) if users is None else users
        n_items = self.item.shape[0]
        rows = []
        for start in range(0, len(users), chunk):
            u = users[start : start + chunk]
            uu = u.repeat_interleave(n_items)
            ii = torch.arange(n_items).repeat(len(u))
            rows.append(self.score(self.user[uu], self.item[ii], self.user_mlp[uu], self.item_mlp[ii]).view(len(u), n_items))
        return torch.cat(rows)
