"""APR and random-noise perturbations: norm eps per row, adversarial direction, warm-up."""

import pytest
import torch
import torch.nn.functional as F

from models.recsys.defenses import AdversarialTraining, NoDefense, RandomNoise, TripleCooperative
from models.recsys.networks import MatrixFactorization, NeuMF


def batch():
    return torch.tensor([0, 1, 2]), torch.tensor([3, 4, 0]), torch.tensor([0.2, 0.6, 1.0])


@pytest.mark.parametrize("defense", [AdversarialTraining(eps=0.05), RandomNoise(eps=0.05)])
def test_perturbation_has_norm_eps(defense) -> None:
    torch.manual_seed(0)
    model = MatrixFactorization(4, 5, dim=6)
    embeddings = model.embed(*batch()[:2])
    loss = F.mse_loss(model.score(*embeddings), batch()[2])
    for delta in defense.perturbation(model, embeddings, loss):
        assert torch.allclose(delta.norm(dim=-1), torch.full((3,), 0.05), atol=1e-6)


def test_apr_raises_the_loss_and_respects_warmup() -> None:
    torch.manual_seed(0)
    model = MatrixFactorization(4, 5, dim=6)
    u, i, r = batch()
    plain = NoDefense().loss(model, u, i, r, 0)
    apr = AdversarialTraining(eps=0.5, weight=1.0, warmup=2)
    assert torch.allclose(apr.loss(model, u, i, r, 1), plain)  # warm-up: plain loss
    adversarial = apr.loss(model, u, i, r, 2) - plain  # = loss at the perturbed point
    noisy = RandomNoise(eps=0.5, weight=1.0, warmup=2).loss(model, u, i, r, 2) - plain
    assert adversarial > plain and adversarial > noisy  # the gradient direction is the worst case


def test_defenses_work_with_neumf() -> None:
    torch.manual_seed(0)
    model = NeuMF(4, 5, dim=4, hidden=(8,))
    for defense in (NoDefense(), AdversarialTraining(warmup=0), RandomNoise(warmup=0)):
        defense.loss(model, *batch(), 0).backward()
    assert model.full_scores().shape == (4, 5)


def test_tcd_config_errors() -> None:
    with pytest.raises(ValueError, match="grid"):
        TripleCooperative(grid="stars")
    with pytest.raises(ValueError, match="keep_rate"):
        TripleCooperative(keep_rate=0.0)
