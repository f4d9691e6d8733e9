"""Which HF decoder architectures CQIL computes exactly, per mode; everything else is refused.

Sequential and distributed modes call each member layer as a whole on the group input, so any layer
that maps the residual stream h to its next value is exact (`Layer_j(h) - h` is its contribution).
Bypass (D > 0) splits a layer into attention and MLP, which is exact only for layers of the form
`x = h + Attn(Norm1(h)); out = x + MLP(Norm2(x))`: not Gemma2 / Olmo2 (norms after the branches), not
Granite (scaled residuals). Fused mode re-implements the layer as stacked matmuls with the norm
weights folded into the projections, so it needs separate q/k/v projections, no per-head q/k norm,
an RMSNorm that multiplies by its weight, and gate/up/down MLPs: LLaMA, Mistral and Qwen2.
Each entry is proven by tests/models/cqil/test_architectures.py on a tiny random config of it.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from common.errors import UserError

ALL_MODES = frozenset({"sequential", "fused", "distributed"})
WHOLE_LAYER_MODES = frozenset({"sequential", "distributed"})
FUSED_ATTENTION = ("eager", "sdpa")  # the fused group passes no sliding-window argument: masks must carry it


@dataclass(frozen=True)
class Support:
    """What CQIL computes exactly for one architecture (`config.model_type`)."""

    modes: frozenset[str]
    bypass: bool  # the layer is h + Attn(Norm1(h)) then + MLP(Norm2(.)): bypass distance D > 0 is exact


ARCHITECTURES: dict[str, Support] = {
    "llama": Support(ALL_MODES, bypass=True),
    "mistral": Support(ALL_MODES, bypass=True),
    "qwen2": Support(ALL_MODES, bypass=True),
    "qwen3": Support(WHOLE_LAYER_MODES, bypass=True),
    "gemma": Support(WHOLE_LAYER_MODES, bypass=True),
    "phi3": Support(WHOLE_LAYER_MODES, bypass=True),
    "olmo": Support(WHOLE_LAYER_MODES, bypass=True),
    "starcoder2": Support(WHOLE_LAYER_MODES, bypass=True),
    "gemma2": Support(WHOLE_LAYER_MODES, bypass=False),
    "granite": Support(WHOLE_LAYER_MODES, bypass=False),
    "olmo2": Support(WHOLE_LAYER_MODES, bypass=False),
}


def model_type(model: nn.Module) -> str:
    config = getattr(model, "config", None)
    kind = getattr(config, "model_type", None)
    if not kind:
        raise UserError(f"unsupported architecture {type(model).__name__}: CQIL needs an HF causal LM with a config.model_type")
    return str(kind)


def supported_in(mode: str, bypass: bool = False) -> list[str]:
    return sorted(k for k, s in ARCHITECTURES.items() if mode in s.modes and (s.bypass or not bypass))


def check_architecture(model: nn.Module, mode: str, bypass_distance: int) -> None:
    """Refuse, in one line, an architecture / mode / bypass combination CQIL does not compute exactly."""
    kind = model_type(model)
    name = f"{kind} ({type(model).__name__})"
    support = ARCHITECTURES.get(kind)
    if support is None:
        raise UserError(f"cqil: architecture {name} is not supported; supported in mode {mode}: {', '.join(supported_in(mode))}")
    if mode not in support.modes:
        raise UserError(
            f"cqil mode={mode}: architecture {name} is not supported in this mode "
            f"(use mode {' or '.join(sorted(support.modes))}); mode {mode} supports {', '.join(supported_in(mode))}"
        )
    if bypass_distance > 0 and not support.bypass:
        raise UserError(
            f"cqil bypass_distance={bypass_distance}: architecture {name} has norms or scales around its residual branches, "
            f"so bypass is not defined for it; use bypass_distance=0 (bypass works on {', '.join(supported_in(mode, True))})"
        )
    config = model.config
    if mode == "fused" and config._attn_implementation not in FUSED_ATTENTION:
        raise UserError(
            f"cqil mode=fused needs attn_implementation eager or sdpa, not {config._attn_implementation!r}; "
            "load the model with attn_implementation='sdpa' or use mode=sequential"
        )


def check_group_attention_types(model: nn.Module, groups: list[list[int]]) -> None:
    """A group runs its members on one attention mask (the decoder hands one mask per layer slot), so the
    members must share their attention type (full / sliding window) in `config.layer_types`."""
    types = getattr(model.config, "layer_types", None)
    if not types:
        return
    for group in groups:
        kinds = sorted({types[i] for i in group})
        if len(kinds) > 1:
            raise UserError(
                f"cqil group {group} mixes attention types {'/'.join(kinds)} (config.layer_types); "
                "choose start, end and parallel_degree so each group's layers share one type"
            )
