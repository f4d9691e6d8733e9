"""Loss terms of CMATH, each averaged over real (unpadded) utterances only.

- `masked_cross_entropy`: class-weighted CE normalised by the summed weights of the targets, as
  MMGCN / SDT's MaskedNLLLoss (and torch's weighted mean) do.
- `gaussian_kl`: KL(N(mu, diag exp(logvar)) || N(0, I)) in closed form, summed over dimensions.
- `distillation_kl`: KL(p_teacher^T || p_student^T) between temperature-softened heads, in one of two
  `DISTILLATION_FORMS`: `hinton` (T^2 * KL, teacher detached: the gradient keeps its scale across
  temperatures and knowledge flows from the coarse (fused) head to the fine heads only; our choice for
  CMATH, whose code is not released) or `sdt` (plain KL, teacher not detached, as SDT's MaskedKLDivLoss
  on softmax(fused / T): the fused head is also pulled toward the fine heads; the symmetric baseline's).
- `feature_consistency`: mean squared distance between a fine representation (after a projection)
  and the detached coarse one: the feature-level term that keeps granularities aligned.
- `reconstruction_mse`: masked MSE between a modality's input and its decoded compressed code.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor


def _masked_mean(values: Tensor, mask: Tensor) -> Tensor:
    mask = mask.to(values.dtype)
    return (values * mask).sum() / mask.sum().clamp_min(1.0)


def masked_cross_entropy(logits: Tensor, labels: Tensor, mask: Tensor, weight: Tensor | None = None) -> Tensor:
    targets = labels.masked_fill(~mask, -100)
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), weight=weight, ignore_index=-100)


def gaussian_kl(mu: Tensor, logvar: Tensor, mask: Tensor) -> Tensor:
    per_item = 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar).sum(-1)
    return _masked_mean(per_item, mask)


@dataclass(frozen=True)
class DistillationForm:
    """Whether gradients reach the teacher, and whether the KL is scaled by T^2."""

    detach_teacher: bool
    temperature_squared: bool


DISTILLATION_FORMS = {
    "hinton": DistillationForm(detach_teacher=True, temperature_squared=True),
    "sdt": DistillationForm(detach_teacher=False, temperature_squared=False),
}


def distillation_kl(
    student_logits: Tensor,
    teacher_logits: Tensor,
    mask: Tensor,
    temperature: float,
    form: DistillationForm = DISTILLATION_FORMS["hinton"],
) -> Tensor:
    teacher_logits = teacher_logits.detach() if form.detach_teacher else teacher_logits
    teacher = F.log_softmax(teacher_logits / temperature, dim=-1)
    student = F.log_softmax(student_logits / temperature, dim=-1)
    per_item = (teacher.exp() * (teacher - student)).sum(-1)
    scale = temperature**2 if form.temperature_squared else 1.0
    return scale * _masked_mean(per_item, mask)


def feature_consistency(fine: Tensor, coarse: Tensor, mask: Tensor) -> Tensor:
    return _masked_mean((fine - coarse.detach()).pow(2).mean(-1), mask)


def reconstruction_mse(decoded: Tensor, target: Tensor, mask: Tensor) -> Tensor:
    return _masked_mean((decoded - target).pow(2).mean(-1), mask)


def weighted_total(terms: dict[str, Tensor], weights: dict[str, float]) -> Tensor:
    """sum_k weights[k] * terms[k]; a term without a weight is an error (no silent zero)."""
    missing = set(terms) - set(weights)
    if missing:
        raise KeyError(f"no loss weight for {sorted(missing)}")
    return torch.stack([weights[k] * v for k, v in terms.items()]).sum()
