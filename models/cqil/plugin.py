"""CQIL as a plugin on HF decoder-only models (the architectures of models/cqil/architectures.py).

CQIL (Zou et al., ACL 2024, arXiv 2404.06709, Sec. 3): layers S <= i < E are split into consecutive
groups of P; every member of a group reads the same input h and the group outputs
h + sum_j (Layer_j(h) - h). Layers outside [S, E) run unchanged. Bypass distance D >= 1 (Sec. 3.2):
member j also adds the attention outputs of the previous min(D, j) members of its group after its
own attention residual, before its MLP.

The plugin swaps the decoder's `layers` ModuleList for one of the same length: a group module sits
in the slot of its first member and pass-through slots in those of the others, so the decoder's
per-slot inputs (the mask of `config.layer_types[i]`) still reach the layer they were made for. Each
member keeps its own attention `layer_idx`, so the KV cache, `generate()` and the causal mask work
unchanged. `remove_cqil` puts the original list back.

What a user sees of the layers: `state_dict()` (hence `save_pretrained`) has the original model's
keys and tensors, and `load_cqil` reloads a saved CQIL model with its settings (models/cqil/persistence.py);
`output_hidden_states` gives L + 1 states, and the P states of a group's members are all the group's
output (CQIL's residual stream has no value between the members of a group); forward hooks on a
member layer see the group input and the group output for the same reason.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from common.errors import UserError
from models.cqil.architectures import check_architecture, check_group_attention_types
from models.cqil.persistence import attach_original_names, detach_original_names

MODES = ("sequential", "fused", "distributed")
_LAYER_PARTS = ("self_attn", "mlp", "input_layernorm", "post_attention_layernorm")


@dataclass(frozen=True)
class CQILSpec:
    """One CQIL setting; `bypass_residual=True` (the reference code's choice, our default) lets the
    bypassed attention outputs stay in member j's residual, so they count again in the group sum;
    False feeds them to member j's MLP input only."""

    start: int
    end: int
    parallel_degree: int
    bypass_distance: int = 0
    bypass_residual: bool = True
    allow_ragged: bool = False

    @property
    def name(self) -> str:
        suffix = f"_d{self.bypass_distance}" if self.bypass_distance > 0 else ""
        return f"cqil_p{self.parallel_degree}_s{self.start}_e{self.end}{suffix}"

    def groups(self) -> list[list[int]]:
        return [
            list(range(i, min(i + self.parallel_degree, self.end))) for i in range(self.start, self.end, self.parallel_degree)
        ]

    def ideal_latency_ratio(self, num_layers: int) -> float:
        """Layer time on P devices / on one: 1 - (E - S)(1 - 1/P) / L (ragged groups counted exactly)."""
        saved = sum(len(g) - 1 for g in self.groups())
        return 1.0 - saved / num_layers


def decoder_of(model: nn.Module) -> nn.Module:
    """The module holding `layers` (LlamaModel inside LlamaForCausalLM, or the bare model)."""
    for candidate in (getattr(model, "model", None), model):
        if candidate is not None and isinstance(getattr(candidate, "layers", None), nn.ModuleList):
            return candidate
    raise UserError(
        f"unsupported architecture {type(model).__name__}: CQIL needs a decoder with a "
        "`model.layers` ModuleList (LlamaForCausalLM, Qwen2ForCausalLM, MistralForCausalLM)"
    )


def check_layer(layer: nn.Module) -> None:
    missing = [part for part in _LAYER_PARTS if not hasattr(layer, part)]
    if missing:
        raise UserError(
            f"unsupported decoder layer {type(layer).__name__}: it lacks {missing} "
            "(bypass and fused mode need LLaMA-style layers: pre-norm attention + MLP with residuals)"
        )


def validate_spec(spec: CQILSpec, num_layers: int) -> None:
    if spec.parallel_degree < 1:
        raise UserError(f"cqil parallel_degree={spec.parallel_degree}: must be >= 1 (P = 1 is the original model)")
    if not 0 <= spec.start < spec.end:
        raise UserError(f"cqil start={spec.start}, end={spec.end}: need 0 <= start < end")
    if spec.end > num_layers:
        raise UserError(f"cqil end={spec.end} exceeds the model's {num_layers} layers")
    if spec.bypass_distance < 0:
        raise UserError(f"cqil bypass_distance={spec.bypass_distance}: must be >= 0")
    if (spec.end - spec.start) % spec.parallel_degree and not spec.allow_ragged:
        raise UserError(
            f"cqil: E - S = {spec.end - spec.start} is not a multiple of P = {spec.parallel_degree}; "
            "choose another window or set allow_ragged=true (the last group is then smaller)"
        )


def layer_output(layer: nn.Module, hidden: Tensor, *args, **kwargs) -> Tensor:
    """A decoder layer's output hidden state (transformers 5 returns a tensor, 4.x a tuple). Called without
    the layer's forward hooks: the group reports its own output to them (`report_to_members`)."""
    out = layer.forward(hidden, *args, **kwargs)
    return out[0] if isinstance(out, tuple) else out


def attention_output(layer: nn.Module, hidden: Tensor, kwargs: dict) -> Tensor:
    """Attention branch of a pre-norm layer: SelfAttn(RMSNorm(h)), its cache updated as usual."""
    out = layer.self_attn(hidden_states=layer.input_layernorm(hidden), **kwargs)
    return out[0] if isinstance(out, tuple) else out


def attentions_read(owned: Sequence[int], distance: int) -> list[int]:
    """The members whose attention the `owned` members read with bypass distance `distance` (their own
    and up to D before each)."""
    return sorted({k for j in owned for k in range(max(0, j - distance), j + 1)})


def member_deltas(
    members: Sequence[nn.Module], hidden: Tensor, kwargs: dict, distance: int, residual: bool, owned: Sequence[int] | None = None
) -> list[Tensor]:
    """Layer_j(h) - h for each member j in `owned` (all by default), with bypass distance `distance`.

    With bypass, member j reads the attention outputs of members j-D..j-1: only the attentions the
    owned members read are computed (a distributed rank may have released the other members)."""
    owned = range(len(members)) if owned is None else owned
    if distance == 0:
        return [layer_output(members[j], hidden, **kwargs) - hidden for j in owned]
    attn = {k: attention_output(members[k], hidden, kwargs) for k in attentions_read(owned, distance)}
    deltas = []
    for j in owned:
        bypass = sum((attn[k] for k in range(max(0, j - distance), j)), torch.zeros_like(hidden))
        layer = members[j]
        mixed = hidden + attn[j] + bypass
        mlp = layer.mlp(layer.post_attention_layernorm(mixed))
        deltas.append((attn[j] + bypass if residual else attn[j]) + mlp)
    return deltas


class SequentialGroup(nn.Module):
    """One CQIL group on one device: the exact semantics, members run one after another."""

    def __init__(self, members: Sequence[nn.Module], spec: CQILSpec) -> None:
        super().__init__()
        self.members = nn.ModuleList(members)
        self.distance = spec.bypass_distance
        self.residual = spec.bypass_residual

    def forward(self, hidden_states: Tensor, *args, **kwargs) -> Tensor:
        if args:
            raise TypeError("CQIL groups take the layer's extra inputs as keywords (as HF decoders pass them)")
        deltas = member_deltas(self.members, hidden_states, kwargs, self.distance, self.residual)
        return hidden_states + torch.stack(deltas).sum(0)


class MergedLayerSlot(nn.Module):
    """The slot of a group member other than the first: the group already ran it, so it passes h on."""

    def __init__(self, layer_index: int) -> None:
        super().__init__()
        self.layer_index = layer_index

    def forward(self, hidden_states: Tensor, *args, **kwargs) -> Tensor:
        return hidden_states

    def extra_repr(self) -> str:
        return f"layer {self.layer_index}: computed by its CQIL group"


def report_to_members(group: nn.Module, args: tuple, output: Tensor) -> None:
    """Forward hook of a group: every member's forward hooks (HF's `output_hidden_states` recorder among
    them) see the group input and the group output, once per member, in layer order."""
    hidden = args[0] if args else None
    for member in group.members:
        for key, hook in list(member._forward_hooks.items()):
            if key in member._forward_hooks_with_kwargs:
                hook(member, (hidden,), {}, output)
            else:
                hook(member, (hidden,), output)


def _group_factory(mode: str):
    if mode == "sequential":
        return SequentialGroup
    if mode == "fused":
        from models.cqil.fused import FusedGroup

        return FusedGroup
    if mode == "distributed":
        from models.cqil.distributed import DistributedGroup

        return DistributedGroup
    raise UserError(f"cqil mode={mode!r}: choose one of {MODES}")


def apply_cqil(model: nn.Module, spec: CQILSpec, mode: str = "sequential") -> CQILSpec:
    """Turn `model` into its CQIL version `spec` in place, its groups run as `mode` (undo with
    `remove_cqil`); returns the spec."""
    if not isinstance(spec, CQILSpec):
        raise TypeError(f"apply_cqil takes a CQILSpec, not {type(spec).__name__} (build one: CQILSpec(start, end, p, d))")
    decoder = decoder_of(model)
    if hasattr(decoder, "_cqil_original_layers"):
        raise UserError("CQIL is already applied to this model; call remove_cqil(model) first")
    layers = decoder.layers
    validate_spec(spec, len(layers))
    make_group = _group_factory(mode)
    check_architecture(model, mode, spec.bypass_distance)
    check_group_attention_types(model, spec.groups())
    if spec.bypass_distance > 0 or mode == "fused":
        for i in range(spec.start, spec.end):
            check_layer(layers[i])
    new_layers: list[nn.Module] = list(layers)
    hooks = []
    for group in spec.groups():
        members = [layers[i] for i in group]
        module = make_group(members, spec)
        if not isinstance(getattr(module, "members", None), nn.ModuleList):
            module.members = nn.ModuleList(members)  # the weights stay visible to state_dict, hooks and .to()
        hooks.append(module.register_forward_hook(report_to_members))
        new_layers[group[0]] = module
        for i in group[1:]:
            new_layers[i] = MergedLayerSlot(i)
    object.__setattr__(decoder, "_cqil_original_layers", layers)  # not a registered submodule: no duplicate state_dict keys
    object.__setattr__(decoder, "_cqil_spec", spec)
    object.__setattr__(decoder, "_cqil_mode", mode)
    object.__setattr__(decoder, "_cqil_hooks", hooks)
    decoder.layers = nn.ModuleList(new_layers)
    attach_original_names(model, decoder, spec, mode)
    return spec


def remove_cqil(model: nn.Module) -> nn.Module:
    """Restore the original layer list (the layers were never copied, so weights are untouched)."""
    decoder = decoder_of(model)
    original = getattr(decoder, "_cqil_original_layers", None)
    if original is None:
        raise UserError("remove_cqil: CQIL is not applied to this model")
    if getattr(decoder, "_cqil_released", False):
        raise UserError(
            "remove_cqil: this model released the layers its rank does not compute (distributed mode); load it again instead"
        )
    detach_original_names(model, decoder)
    for hook in decoder._cqil_hooks:
        hook.remove()
    decoder.layers = original
    for name in ("_cqil_original_layers", "_cqil_spec", "_cqil_mode", "_cqil_hooks"):
        object.__delattr__(decoder, name)
    return model


def cqil_spec(model: nn.Module) -> CQILSpec | None:
    return getattr(decoder_of(model), "_cqil_spec", None)


def cqil_mode(model: nn.Module) -> str | None:
    return getattr(decoder_of(model), "_cqil_mode", None)
