"""Model-based shilling attacks: a gradient ("DL") attack, Co-Attack and GCoAttack (Securing recommender
system via cooperative training, World Wide Web 2023, Sec. 4).

All three train a surrogate recommender with an extra attack objective and read the fake profiles off
it: each fake user rates its `n_filler` highest-scored non-target items at the surrogate's predicted
rating (rounded to the grid, clipped to 1..R so every filler is a real rating; the reference clips to
0..1 after normalising, which can silently drop fillers predicted as 0) and every target R.

Attack loss (Cotraining-Attack Eq. 7), over real users u and targets t, with s the surrogate's scores and
s_u^(K) the u-th user's K-th largest score:  L_atk = sum_u sum_t max(s_u^(K) - s_ut, -kappa).
The released code (CoAttack.py / GCoAttack.py) has two slips: it uses the *negated* K-th score
(`tf.sort(-rate)`), which makes the hinge almost always sit at -kappa (inactive), and it indexes score
columns 0..4 (`rate[:, t]` for t in range(len(targets))) instead of the target ids. We implement the
intended loss on the real target ids (`hinge: intended`, the default). `hinge: reference` reproduces the
released loss, slips included, so the papers' figures can be checked against the code that made them:
on sigmoid scores in (0, 1), max(-s_u^(K) - s_u,c, -kappa) over columns c = 0..n_targets-1.

The released GCoAttack also reads its fake ratings as round(sigmoid(p.q) R) from the triple's last model,
although that surrogate is linear; `profile_reading: released` does the same (default `predicted`: the
predicted rating round(p.q R) from model 0, the model a TCD victim is evaluated on).

Fake users' rows exist in the surrogate's embedding table; in Co-Attack they receive no samples and the
attack loss is over real users only, so their embeddings stay at their random initialisation (as in the
reference): the attack shapes the *item* space so that random users rank the right fillers highly.
In GCoAttack the fake rows do train, on the pseudo-labels of TCD's first half.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from models.recsys.attacks import check_attack_args
from models.recsys.defenses import NoDefense, TripleCooperative
from models.recsys.networks import MatrixFactorization
from models.recsys.optim import TF1Adadelta
from models.recsys.training import Samples, fit


def real_user_scores(model: nn.Module, n_real: int) -> Tensor:
    """The surrogate's scores of every item for the real users (rows 0..n_real-1)."""
    return model.full_scores(torch.arange(n_real)) if isinstance(model, MatrixFactorization) else model.full_scores()[:n_real]


def attack_hinge(model: nn.Module, n_real: int, targets: Tensor, top_k: int, kappa: float) -> Tensor:
    """L_atk = sum_{u real} sum_t max(s_u^(K) - s_ut, -kappa) (the intended loss; see the module docstring)."""
    scores = real_user_scores(model, n_real)
    kth = scores.topk(min(top_k, scores.shape[1]), dim=1).values[:, -1:]
    return torch.clamp(kth - scores[:, targets], min=-kappa).sum()


def released_hinge(model: nn.Module, n_real: int, targets: Tensor, top_k: int, kappa: float) -> Tensor:
    """The released code's loss (see the module docstring): sigmoid scores, the negated K-th score, and the
    first len(targets) item columns in place of the targets. It only acts while s_u^(K) + s_u,c < kappa."""
    scores = real_user_scores(model, n_real)
    if not (isinstance(model, MatrixFactorization) and model.link == "sigmoid"):
        scores = torch.sigmoid(scores)  # the reference's rate_attack is sigmoid(U V^T) for every surrogate
    negated_kth = -scores.topk(min(top_k, scores.shape[1]), dim=1).values[:, -1:]
    return torch.clamp(negated_kth - scores[:, : len(targets)], min=-kappa).sum()


HINGES = {"intended": attack_hinge, "reference": released_hinge}


def real_samples(train: Tensor, max_rating: float) -> Samples:
    users, items = (train > 0).nonzero(as_tuple=True)
    return Samples(users, items, train[users, items] / max_rating)


@torch.no_grad()
def read_profiles(
    model: nn.Module, first: int, n_fake: int, targets: Tensor, n_filler: int, max_rating: float, squash: bool = False
) -> Tensor:
    """Fake rows first..first+n_fake: top-`n_filler` non-target items at their predicted rating, targets R.
    `squash` reads sigmoid(score) instead, as the released GCoAttack does with its linear surrogate."""
    scores = model.full_scores(torch.arange(first, first + n_fake))
    if squash:
        scores = torch.sigmoid(scores)
    ranked = scores.clone()
    ranked[:, targets] = float("-inf")
    fillers = ranked.topk(n_filler, dim=1).indices
    fake = torch.zeros_like(scores)
    fake.scatter_(1, fillers, torch.round(scores.gather(1, fillers) * max_rating).clamp(1, max_rating))
    fake[:, targets] = max_rating
    return fake


@dataclass
class CoAttack:
    """Co-Attack: PMF surrogate sigma(p . q) (reg 1e-12, Adagrad lr 10, 40 epochs) on the real ratings; the last
    `attack_epochs` epochs minimise L_train + weight * L_atk; profiles from the fake users' scores."""

    epochs: int = 40
    attack_epochs: int = 20
    top_k: int = 50
    kappa: float = 0.2
    weight: float = 1.0
    dim: int = 128
    reg: float = 1e-12
    lr: float = 10.0
    batch_size: int = 2048
    hinge: str = "intended"  # or "reference": the released loss with its two slips (module docstring)

    def __post_init__(self) -> None:
        if self.hinge not in HINGES:
            raise ValueError(f"attack.method.hinge={self.hinge!r}: choose one of {sorted(HINGES)}")

    def attack_loss(self, model: nn.Module, n_real: int, targets: Tensor) -> Tensor:
        return self.weight * HINGES[self.hinge](model, n_real, targets, self.top_k, self.kappa)

    @property
    def real_samples_only_while_attacking(self) -> bool:
        """Whether the surrogate trains on the real samples alone once the attack loss is on."""
        return True

    def surrogate(self, n_users: int, n_items: int) -> tuple[list[nn.Module], list[torch.optim.Optimizer], object]:
        model = MatrixFactorization(n_users, n_items, self.dim, self.reg, link="sigmoid")
        return [model], [torch.optim.Adagrad(model.parameters(), lr=self.lr, initial_accumulator_value=0.1)], NoDefense()

    def generate(
        self, train: Tensor, targets: Tensor, n_fake: int, n_filler: int, max_rating: float, generator: torch.Generator
    ) -> Tensor:
        check_attack_args(train, targets, n_fake, n_filler)
        n_real, n_items = train.shape
        models, optimizers, defense = self.surrogate(n_real + n_fake, n_items)
        rated = torch.cat([train > 0, torch.zeros(n_fake, n_items, dtype=torch.bool)])
        fit(
            models,
            optimizers,
            real_samples(train, max_rating),
            defense,
            self.epochs,
            self.batch_size,
            rated,
            max_rating,
            generator,
            extra_loss=lambda m: self.attack_loss(m, n_real, targets),
            extra_from=max(self.epochs - self.attack_epochs, 0),
            extra_on_real_only=self.real_samples_only_while_attacking,
        )
        return self.profiles_from(models, n_real, n_fake, targets, n_filler, max_rating)

    def profiles_from(
        self, models: list[nn.Module], n_real: int, n_fake: int, targets: Tensor, n_filler: int, max_rating: float
    ) -> Tensor:
        return read_profiles(models[0], n_real, n_fake, targets, n_filler, max_rating)


@dataclass
class GCoAttack(CoAttack):
    """GCoAttack: the surrogate is the TCD triple itself (three linear MF, reg 1e-12, TF1 Adadelta lr 20);
    the first half is normal TCD co-training, the second half trains each model on the real samples with
    L_train + L_atk: the attacker plays against the co-training defence. Profiles from model 0."""

    lr: float = 20.0
    attack_epochs: int = 20
    grid: str = "reference"
    # our variant (off = the reference): keep TCD's pseudo-labels in the attack half, so the fake profiles are
    # optimised against the relabelling a TCD victim will apply
    pseudo_labels_while_attacking: bool = False
    # "predicted": round(p.q R) from model 0; "released": round(sigmoid(p.q) R) from the triple's last model, as
    # the released code reads its linear surrogate (same fillers, since sigmoid keeps the order; other ratings)
    profile_reading: str = "predicted"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.profile_reading not in ("predicted", "released"):
            raise ValueError(f"attack.method.profile_reading={self.profile_reading!r}: choose predicted or released")

    def profiles_from(
        self, models: list[nn.Module], n_real: int, n_fake: int, targets: Tensor, n_filler: int, max_rating: float
    ) -> Tensor:
        released = self.profile_reading == "released"
        model = models[-1] if released else models[0]
        return read_profiles(model, n_real, n_fake, targets, n_filler, max_rating, squash=released)

    @property
    def real_samples_only_while_attacking(self) -> bool:
        return not self.pseudo_labels_while_attacking

    def surrogate(self, n_users: int, n_items: int) -> tuple[list[nn.Module], list[torch.optim.Optimizer], object]:
        models = [MatrixFactorization(n_users, n_items, self.dim, self.reg) for _ in range(3)]
        return models, [TF1Adadelta(m.parameters(), lr=self.lr) for m in models], TripleCooperative(grid=self.grid)


@dataclass
class GradientAttack(CoAttack):
    """The "DL" attack (Huang et al., NDSS 2021 style): fake users are made one at a time; for each, a fresh
    PMF surrogate is trained on the real + earlier fake ratings + the new user's target ratings, with the
    attack loss in its last `attack_epochs` epochs; the new user's fillers are its top items weighted by
    selection weights that decay x`decay` each time an item is chosen (diversity across fake users)."""

    epochs: int = 10
    attack_epochs: int = 2
    decay: float = 0.9

    def generate(
        self, train: Tensor, targets: Tensor, n_fake: int, n_filler: int, max_rating: float, generator: torch.Generator
    ) -> Tensor:
        check_attack_args(train, targets, n_fake, n_filler)
        n_real, n_items = train.shape
        weights = torch.ones(n_items)
        fake = torch.zeros(n_fake, n_items)
        for f in range(n_fake):
            current = torch.cat([train, fake[:f], torch.zeros(1, n_items)])
            current[-1, targets] = max_rating
            models, optimizers, defense = self.surrogate(n_real + f + 1, n_items)
            fit(
                models,
                optimizers,
                real_samples(current, max_rating),
                defense,
                self.epochs,
                self.batch_size,
                current > 0,
                max_rating,
                generator,
                extra_loss=lambda m: self.attack_loss(m, n_real, targets),
                extra_from=max(self.epochs - self.attack_epochs, 0),
            )
            with torch.no_grad():
                scores = models[0].full_scores(torch.tensor([n_real + f]))[0]
            ranked = scores * weights
            ranked[targets] = float("-inf")
            fillers = ranked.topk(n_filler).indices
            weights[fillers] *= self.decay
            fake[f, fillers] = torch.round(scores[fillers] * max_rating).clamp(1, max_rating)
            fake[f, targets] = max_rating
        return fake
