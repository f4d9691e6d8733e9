"""Distillation forms as the experiment configs wire them, checked against gradients worked out by hand.

For p = softmax(t / T) (teacher) and s = softmax(z / T) (student), KL = sum_c p_c (log p_c - log s_c):
  dKL/dz_k = (s_k - p_k) / T
  dKL/dt_k = p_k ((log p_k - log s_k) - KL) / T
averaged over real utterances. SDT's loss (the symmetric baseline) is that KL as it stands: the teacher gets
the second gradient. CMATH's default scales by T^2 and gives the teacher none.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import instantiate

from experiments.tasks.erc.task import condition_models
from models.erc.network import CMATH, ERCOutput
from tests.conftest import compose_config

TEMPERATURE = 2.0  # != 1, so a stray T^2 factor shows
DIMS = {"text": 5, "audio": 4, "video": 3}


def hand_gradients(student: np.ndarray, teacher: np.ndarray, mask: np.ndarray, t: float) -> tuple[np.ndarray, np.ndarray]:
    """Gradients of mean_i KL(p_i || s_i) over the real positions i, in float64 numpy."""

    def log_softmax(x: np.ndarray) -> np.ndarray:
        shifted = x - x.max(-1, keepdims=True)
        return shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))

    log_p, log_s = log_softmax(teacher / t), log_softmax(student / t)
    p, s = np.exp(log_p), np.exp(log_s)
    kl = (p * (log_p - log_s)).sum(-1, keepdims=True)
    weight = mask[..., None] / mask.sum()
    return weight * (s - p) / t, weight * p * ((log_p - log_s) - kl) / t


@pytest.fixture(scope="module")
def networks(tmp_path_factory) -> dict[str, torch.nn.Module]:
    """The MOSI experiment's CMATH and symmetric conditions, with the distillation temperature set for both."""
    cfg = compose_config(
        ["experiment=erc_cmath_mosi", f"+erc.shared.network.temperature={TEMPERATURE}"], tmp_path_factory.mktemp("run")
    )
    GlobalHydra.instance().clear()
    models = condition_models(cfg)
    kwargs = {"dims": DIMS, "num_classes": 3, "num_speakers": 1}
    return {name: instantiate(models[name].network, **kwargs) for name in ("symmetric", "cmath_central_text")}


def kd_gradients(network: torch.nn.Module) -> tuple[tuple[dict, np.ndarray, dict, np.ndarray], np.ndarray]:
    """The network's `kd` term backpropagated to leaf fine and fused logits: (fine grads, fused grad, fine
    logits, fused logits), mask."""
    generator = torch.Generator().manual_seed(0)
    mask = torch.tensor([[True, True, True, False], [True, True, False, False]])
    fused = (3 * torch.randn(2, 4, 3, generator=generator)).requires_grad_()
    fine = {n: (3 * torch.randn(2, 4, 3, generator=generator)).requires_grad_() for n in network.fine_names()}
    features = {n: torch.randn(2, 4, 6, generator=generator) for n in fine}
    coarse, mu, logvar = (torch.randn(2, 4, 6, generator=generator) for _ in range(3))
    out = ERCOutput(logits=fused, fine_logits=fine, fine_features=features, coarse=coarse, mu=mu, logvar=logvar)
    network.loss_terms(out, torch.zeros(2, 4, dtype=torch.long), mask)["kd"].backward()
    numpy = lambda x: x.detach().double().numpy()  # noqa: E731
    return (
        {n: numpy(x.grad) for n, x in fine.items()},
        numpy(fused.grad) if fused.grad is not None else np.zeros(fused.shape),
        {n: numpy(x) for n, x in fine.items()},
        numpy(fused),
    ), mask.numpy().astype(float)


def test_symmetric_baseline_uses_sdts_loss_no_t2_and_a_teacher_that_learns(networks):
    network = networks["symmetric"]
    assert network.temperature == TEMPERATURE and len(network.fine_names()) == 3
    (fine_grads, fused_grad, fine, fused), mask = kd_gradients(network)
    expected_fused = np.zeros_like(fused)
    for name, student in fine.items():
        student_grad, teacher_grad = hand_gradients(student, fused, mask, TEMPERATURE)
        np.testing.assert_allclose(fine_grads[name], student_grad, rtol=1e-4, atol=1e-7)
        expected_fused += teacher_grad
    assert np.abs(expected_fused).max() > 1e-3  # the teacher's gradient is not vanishingly small here
    np.testing.assert_allclose(fused_grad, expected_fused, rtol=1e-4, atol=1e-7)


def test_cmath_keeps_the_detached_teacher_and_the_t2_factor(networks):
    network = networks["cmath_central_text"]
    assert network.temperature == TEMPERATURE and len(network.fine_names()) == 3
    (fine_grads, fused_grad, fine, fused), mask = kd_gradients(network)
    for name, student in fine.items():
        student_grad, _ = hand_gradients(student, fused, mask, TEMPERATURE)
        np.testing.assert_allclose(fine_grads[name], TEMPERATURE**2 * student_grad, rtol=1e-4, atol=1e-7)
    assert not fused_grad.any()


def test_an_unknown_form_is_refused():
    with pytest.raises(ValueError, match="distillation_form='hintn': not one of \\['hinton', 'sdt'\\]"):
        CMATH(DIMS, 3, 1, distillation_form="hintn")
