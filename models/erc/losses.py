"""Loss terms of CMATH, each averaged over real (unpadded) utterances only.

- `masked_cross_entropy`: class-weighted CE normalised by the summed weights of the targets, as
  MMGCN / SDT's MaskedNLLLoss (and torch's weighted mean) do.
- `gaussian_kl`: KL(N(mu, diag exp(logvar)) || N(0, I)) in closed form, summed over dimensions.
- `distillation_kl`: T^2 * KL(p_teacher^T || p_student^T) (Hinton et al. 2015; SDT's self-distillation
  uses the fused head as teacher with the same form). The teacher is detached: knowledge flows
  from the coarse (fused) head to the fine heads only (CMATH's hierarchical distillation direction).
- `feature_consistency`: mean squared distance between a fine representation (after a projection)
  and the detached coarse one: the feature-level term that keeps granularities aligned.
- `reconstruction_mse`: masked MSE between a modality's input and its decoded compressed code.
"""

from __future__ import annotations

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


def distillation_kl(student_logits: Tensor, teacher_logits: Tensor, mask: Tensor, temperature: float) -> Tensor:
    teacher = F.log_softmax(teacher_logits.detach() / temperature, dim=-1)
    student = F.log_softmax(student_logits / temperature, dim=-1)
    per_item = (teacher.exp() * (teacher - student)).sum(-1)
    return temperature**2 * _masked_mean(per_item, mask)


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
