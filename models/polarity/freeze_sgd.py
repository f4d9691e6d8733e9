"""Freeze-SGD (paper Alg. 1): after every optimiser step, weights whose sign disagrees with their
template are reset. It is a projection, so it works with any optimiser (the paper uses Adam).

Reset rules for a violated entry (W * S < 0, strictly):
  posRand  S * U(0, eps)   the paper's default (eps = 1e-3)
  zero     0               with an all-positive template: projection onto W >= 0
  flip     -W              mirror the weight back across zero
  posCon   S * eps
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from common.errors import UserError
from models.polarity.sign_templates import Templates

ResetRule = Callable[[Tensor, Tensor, float, torch.Generator | None], Tensor]
"""(violated weights, their template signs, eps, generator) -> replacement values (all 1-D)."""


def _pos_rand(weight: Tensor, sign: Tensor, eps: float, generator: torch.Generator | None) -> Tensor:
    noise = torch.rand(weight.shape, generator=generator, device=weight.device, dtype=weight.dtype)
    return sign * noise.mul_(eps)


RESET_RULES: dict[str, ResetRule] = {
    "posRand": _pos_rand,
    "zero": lambda w, s, eps, g: torch.zeros_like(w),
    "flip": lambda w, s, eps, g: -w,
    "posCon": lambda w, s, eps, g: s * eps,
}


class SignConstraint(nn.Module):
    """Holds templates for named weights of a network and projects those weights onto them.

    Templates are buffers (they follow the module across devices and into checkpoints); the random
    generator's state is saved too, so a resumed run resets exactly as an uninterrupted one would.
    """

    def __init__(self, templates: Templates, reset: str = "posRand", eps: float = 1e-3, seed: int = 0) -> None:
        super().__init__()
        if reset not in RESET_RULES:
            raise UserError(f"unknown Freeze-SGD reset rule '{reset}' (valid: {', '.join(RESET_RULES)})")
        self.reset, self.eps, self.seed = reset, float(eps), int(seed)
        self.names = list(templates)
        for i, name in enumerate(self.names):
            self.register_buffer(f"template_{i}", templates[name].detach().clone())
        self.last_violations = 0  # resets made by the latest projection
        self._generator: torch.Generator | None = None
        self._generator_state: Tensor | None = None

    def _rng(self, device: torch.device) -> torch.Generator:
        if self._generator is None or self._generator.device != device:
            self._generator = torch.Generator(device=device)
            self._generator.manual_seed(self.seed)
            if self._generator_state is not None:
                self._generator.set_state(self._generator_state)
        return self._generator

    @torch.no_grad()
    def project_(self, network: nn.Module) -> int:
        """Reset every weight that crossed its template's sign; returns how many were reset.

        Only the violated entries are gathered, replaced and scattered back (violations are few per
        step), which keeps the projection's cost to one multiply-compare pass over the weights.
        """
        params = self._parameters_of(network)
        rule = RESET_RULES[self.reset]
        violations = 0
        for i, name in enumerate(self.names):
            weight, sign = params[name], getattr(self, f"template_{i}")
            flat_weight, flat_sign = weight.view(-1), sign.view(-1)
            index = torch.mul(flat_weight, flat_sign).lt_(0).nonzero().squeeze(1)
            if index.numel() == 0:
                continue
            violations += index.numel()
            generator = self._rng(weight.device) if self.reset == "posRand" else None
            replacement = rule(flat_weight.index_select(0, index), flat_sign.index_select(0, index), self.eps, generator)
            flat_weight.index_copy_(0, index, replacement)
        self.last_violations = violations
        return violations

    def _parameters_of(self, network: nn.Module) -> dict[str, Tensor]:
        """The constrained parameters, looked up once per network (the projection runs every step)."""
        cached = self.__dict__.get("_cached_params")
        if cached is None or cached[0] is not network:
            named = dict(network.named_parameters())
            cached = (network, {name: named[name] for name in self.names})
            self.__dict__["_cached_params"] = cached
        return cached[1]

    def attach(self, optimizer: torch.optim.Optimizer, network: nn.Module) -> None:
        """Project after every `optimizer.step()`, whatever the optimiser."""
        optimizer.register_step_post_hook(lambda *_: self.project_(network))

    def __getstate__(self) -> dict:
        """Pickling (DDP spawn): keep the generator as its state, drop the parameter cache."""
        state = self.__dict__.copy()
        state.pop("_cached_params", None)
        state["_generator_state"] = self.get_extra_state()["generator_state"]
        state["_generator"] = None
        return state

    def get_extra_state(self) -> dict:
        state = self._generator.get_state() if self._generator is not None else self._generator_state
        return {"generator_state": state}

    def set_extra_state(self, state: dict) -> None:
        self._generator_state = state.get("generator_state")
        self._generator = None
