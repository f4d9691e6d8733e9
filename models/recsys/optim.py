"""Adadelta and Adam with TensorFlow 1 semantics, the optimisers of the TCD / Co-Attack reference code.

The reference trains MF with ``tf.train.AdadeltaOptimizer(20.)``: rho 0.95, epsilon 1e-8, and, because
embeddings are looked up, *sparse* updates that touch only the rows present in a batch (duplicate rows
summed first). torch.optim.Adadelta defaults to rho 0.9, eps 1e-6 and decays the accumulators of every
row at every step, which gives ~10x larger first steps at lr 20 and a different model. This optimiser
reproduces TF1: sparse gradients (``F.embedding(..., sparse=True)``) update only their rows; dense
gradients update the whole tensor (TF1's dense rule).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor


class TF1Adadelta(torch.optim.Optimizer):
    """accum = rho*accum + (1-rho) g^2; upd = sqrt(accum_upd + eps) / sqrt(accum + eps) * g;
    accum_upd = rho*accum_upd + (1-rho) upd^2; w -= lr * upd (TF1 training_ops ApplyAdadelta)."""

    def __init__(self, params: Iterable[Tensor], lr: float = 20.0, rho: float = 0.95, eps: float = 1e-8) -> None:
        if lr <= 0 or not 0 <= rho < 1 or eps <= 0:
            raise ValueError(f"TF1Adadelta: need lr > 0, 0 <= rho < 1, eps > 0 (got {lr}, {rho}, {eps})")
        super().__init__(params, dict(lr=lr, rho=rho, eps=eps))

    @torch.no_grad()
    def step(self, closure=None):  # noqa: ANN001 - torch's signature
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            lr, rho, eps = group["lr"], group["rho"], group["eps"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["accum"] = torch.zeros_like(p)
                    state["accum_update"] = torch.zeros_like(p)
                accum, accum_update = state["accum"], state["accum_update"]
                grad = p.grad
                if grad.is_sparse:
                    grad = grad.coalesce()  # duplicate rows summed, as TF does
                    self._apply_rows(p, grad.indices()[0], grad.values(), group)
                else:
                    accum.mul_(rho).addcmul_(grad, grad, value=1 - rho)
                    upd = (accum_update + eps).sqrt().div_((accum + eps).sqrt()).mul_(grad)
                    accum_update.mul_(rho).addcmul_(upd, upd, value=1 - rho)
                    p.add_(upd, alpha=-lr)
        return loss

    def _apply_rows(self, p: Tensor, rows: Tensor, g: Tensor, group: dict) -> None:
        """The TF1 sparse rule on the unique `rows` of `p` with their summed gradients `g`."""
        lr, rho, eps = group["lr"], group["rho"], group["eps"]
        state = self.state[p]
        if not state:
            state["accum"] = torch.zeros_like(p)
            state["accum_update"] = torch.zeros_like(p)
        a = state["accum"].index_select(0, rows).mul_(rho).addcmul_(g, g, value=1 - rho)
        au = state["accum_update"].index_select(0, rows)
        upd = (au + eps).sqrt_().div_((a + eps).sqrt_()).mul_(g)
        au.mul_(rho).addcmul_(upd, upd, value=1 - rho)
        state["accum"].index_copy_(0, rows, a)
        state["accum_update"].index_copy_(0, rows, au)
        p.data.index_add_(0, rows, upd, alpha=-lr)

    @torch.no_grad()
    def step_rows(self, updates: Iterable[tuple[Tensor, Tensor, Tensor]]) -> None:
        """Apply precomputed row gradients (param, unique rows, summed row gradients) without autograd:
        the fast path of plain MF, whose gradient is analytic (see MatrixFactorization.row_gradients)."""
        group_of = {id(p): g for g in self.param_groups for p in g["params"]}
        for p, rows, g in updates:
            self._apply_rows(p, rows, g, group_of[id(p)])


class TF1Adam(torch.optim.Optimizer):
    """TF1 ``AdamOptimizer`` (the TCD authors' pre-release versions, lr 1e-3): lr_t = lr sqrt(1 - b2^t) / (1 - b1^t),
    m = b1 m + (1 - b1) g, v = b2 v + (1 - b2) g^2, w -= lr_t m / (sqrt(v) + eps). eps is added to sqrt(v)
    *before* the bias correction, unlike torch.optim.Adam. A looked-up (sparse) gradient has its duplicate rows
    summed and then updates *every* row (TF1's sparse Adam decays all moments and moves all rows), so a sparse
    gradient is applied as the dense one with zeros elsewhere."""

    def __init__(
        self, params: Iterable[Tensor], lr: float = 1e-3, beta1: float = 0.9, beta2: float = 0.999, eps: float = 1e-8
    ) -> None:
        if lr <= 0 or not 0 <= beta1 < 1 or not 0 <= beta2 < 1 or eps <= 0:
            raise ValueError(f"TF1Adam: need lr > 0, 0 <= beta1, beta2 < 1, eps > 0 (got {lr}, {beta1}, {beta2}, {eps})")
        super().__init__(params, dict(lr=lr, beta1=beta1, beta2=beta2, eps=eps))

    @torch.no_grad()
    def step(self, closure=None):  # noqa: ANN001 - torch's signature
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    grad = p.grad.coalesce().to_dense() if p.grad.is_sparse else p.grad
                    self._apply(p, grad, group)
        return loss

    def _apply(self, p: Tensor, grad: Tensor, group: dict) -> None:
        lr, b1, b2, eps = group["lr"], group["beta1"], group["beta2"], group["eps"]
        state = self.state[p]
        if not state:
            state["step"], state["m"], state["v"] = 0, torch.zeros_like(p), torch.zeros_like(p)
        state["step"] += 1
        t, m, v = state["step"], state["m"], state["v"]
        m.mul_(b1).add_(grad, alpha=1 - b1)
        v.mul_(b2).addcmul_(grad, grad, value=1 - b2)
        lr_t = lr * (1 - b2**t) ** 0.5 / (1 - b1**t)
        p.data.addcdiv_(m, v.sqrt().add_(eps), value=-lr_t)

    @torch.no_grad()
    def step_rows(self, updates: Iterable[tuple[Tensor, Tensor, Tensor]]) -> None:
        """Apply precomputed row gradients (param, unique rows, summed row gradients), as `step` applies the
        same gradient from autograd (MF's analytic fast path)."""
        group_of = {id(p): g for g in self.param_groups for p in g["params"]}
        for p, rows, g in updates:
            self._apply(p, torch.zeros_like(p).index_add_(0, rows, g), group_of[id(p)])
