"""Loss terms: closed forms, zeros, masking, weighting."""

from __future__ import annotations

import pytest
import torch
from torch.distributions import Normal, kl_divergence

from models.erc.losses import (
    distillation_kl,
    feature_consistency,
    gaussian_kl,
    masked_cross_entropy,
    reconstruction_mse,
    weighted_total,
)


def test_gaussian_kl_matches_the_closed_form_and_torch():
    torch.manual_seed(0)
    mu, logvar = torch.randn(2, 3, 5), torch.randn(2, 3, 5)
    mask = torch.tensor([[True, True, False], [True, False, False]])
    expected = kl_divergence(Normal(mu, (0.5 * logvar).exp()), Normal(0.0, 1.0)).sum(-1)[mask].mean()
    torch.testing.assert_close(gaussian_kl(mu, logvar, mask), expected)
    assert float(gaussian_kl(torch.zeros(1, 2, 4), torch.zeros(1, 2, 4), torch.ones(1, 2, dtype=torch.bool))) == 0.0


def test_distillation_is_zero_when_student_equals_teacher_and_positive_otherwise():
    torch.manual_seed(0)
    logits = torch.randn(2, 4, 6)
    mask = torch.ones(2, 4, dtype=torch.bool)
    for t in (1.0, 8.0):
        assert float(distillation_kl(logits, logits.clone(), mask, t)) == pytest.approx(0.0, abs=1e-6)
    assert float(distillation_kl(torch.randn(2, 4, 6), logits, mask, 2.0)) > 0


def test_distillation_teacher_is_detached_and_temperature_squared_scales():
    student, teacher = torch.randn(1, 3, 4, requires_grad=True), torch.randn(1, 3, 4, requires_grad=True)
    mask = torch.ones(1, 3, dtype=torch.bool)
    distillation_kl(student, teacher, mask, 2.0).backward()
    assert teacher.grad is None and student.grad is not None
    # T^2 * KL at T equals the KL of logits/T computed at temperature 1, times T^2
    s, te = torch.randn(1, 3, 4), torch.randn(1, 3, 4)
    torch.testing.assert_close(distillation_kl(s, te, mask, 3.0), 9.0 * distillation_kl(s / 3.0, te / 3.0, mask, 1.0))


def test_padded_positions_are_ignored_everywhere():
    torch.manual_seed(0)
    mask = torch.tensor([[True, True, False]])
    a, b = torch.randn(1, 3, 4), torch.randn(1, 3, 4)
    a2, b2 = a.clone(), b.clone()
    a2[0, 2], b2[0, 2] = 1e3, -1e3
    labels = torch.tensor([[1, 2, 0]])
    for fn in (
        lambda x, y: feature_consistency(x, y, mask),
        lambda x, y: reconstruction_mse(x, y, mask),
        lambda x, y: distillation_kl(x, y, mask, 1.0),
        lambda x, y: masked_cross_entropy(x, labels, mask),
    ):
        torch.testing.assert_close(fn(a2, b2), fn(a, b))


def test_weighted_cross_entropy_normalises_by_target_weights():
    logits = torch.zeros(1, 2, 3)
    labels, mask = torch.tensor([[0, 2]]), torch.ones(1, 2, dtype=torch.bool)
    weight = torch.tensor([1.0, 5.0, 3.0])
    torch.testing.assert_close(masked_cross_entropy(logits, labels, mask, weight), torch.log(torch.tensor(3.0)))


def test_weighted_total_requires_a_weight_for_every_term():
    terms = {"ce": torch.tensor(2.0), "kl": torch.tensor(4.0)}
    assert float(weighted_total(terms, {"ce": 1.0, "kl": 0.5})) == 4.0
    with pytest.raises(KeyError):
        weighted_total(terms, {"ce": 1.0})
