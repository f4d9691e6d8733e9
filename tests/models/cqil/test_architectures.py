"""Every architecture CQIL accepts is computed exactly in every mode it accepts; the rest is refused.

The reference is independent of the plugin: it records the inputs the untouched decoder hands each
layer (its own mask, rotary embeddings), then runs the CQIL equations by calling the original layers
with those inputs, and lets the model's own head (final norm, logit scaling) finish.
"""

from __future__ import annotations

import functools

import pytest
import torch

from common.errors import UserError
from models.cqil.architectures import ARCHITECTURES
from models.cqil.distributed import spawn
from models.cqil.plugin import CQILSpec, apply_cqil, attention_output, remove_cqil
from tests.models.cqil.architectures_tiny import distributed_logits_job, tiny_model

ACCEPTED = sorted(ARCHITECTURES)
FUSED = sorted(k for k, s in ARCHITECTURES.items() if "fused" in s.modes)
BYPASS = sorted(k for k, s in ARCHITECTURES.items() if s.bypass)
IDS = torch.randint(3, 97, (2, 9), generator=torch.Generator().manual_seed(1))


def _out(value):
    return value[0] if isinstance(value, tuple) else value


@torch.no_grad()
def reference_logits(model: torch.nn.Module, ids: torch.Tensor, groups: list[list[int]]) -> torch.Tensor:
    """h <- h + sum_j (Layer_j(h) - h) over each group, one layer at a time elsewhere."""
    layers = list(model.model.layers)
    inputs: dict[int, tuple[tuple, dict]] = {}
    hooks = [
        layer.register_forward_pre_hook(lambda _, args, kw, i=i: inputs.setdefault(i, (args, dict(kw))), with_kwargs=True)
        for i, layer in enumerate(layers)
    ]
    try:
        model(ids, use_cache=False)
    finally:
        for hook in hooks:
            hook.remove()
    first = {g[0]: g for g in groups}
    h, i = inputs[0][0][0], 0
    while i < len(layers):
        group = first.get(i, [i])
        h = h + sum(_out(layers[j](h, *inputs[j][0][1:], **inputs[j][1])) - h for j in group)
        i += len(group)
    final = layers[-1].register_forward_hook(lambda *_: h)
    try:
        return model(ids, use_cache=False).logits
    finally:
        final.remove()


@pytest.fixture(scope="module")
def models() -> dict[str, torch.nn.Module]:
    return {kind: tiny_model(kind) for kind in ACCEPTED}


@pytest.mark.parametrize("kind", ACCEPTED)
@torch.no_grad()
def test_groups_of_one_over_every_layer_are_the_untouched_model(models, kind):
    """P = 1: every layer becomes a group of one, so every slot's inputs pass through the plugin."""
    model = models[kind]
    base = model(IDS).logits
    apply_cqil(model, CQILSpec(0, 4, 1))
    try:
        got = model(IDS).logits
    finally:
        remove_cqil(model)
    assert torch.allclose(got, base, atol=1e-5), float((got - base).abs().max())


def _windows(kind: str) -> list[tuple[int, int, int]]:
    """Windows with layers before and after the region; none mixes the tiny models' attention types."""
    return [(0, 2, 2), (2, 4, 2)] if "layer_types" in tiny_model_extra(kind) else [(0, 2, 2), (1, 3, 2), (0, 4, 4)]


def tiny_model_extra(kind: str) -> dict:
    from tests.models.cqil.architectures_tiny import EXTRA

    return EXTRA.get(kind, {})


@pytest.mark.parametrize("kind", ACCEPTED)
@torch.no_grad()
def test_sequential_groups_equal_the_reference(models, kind):
    model = models[kind]
    base = model(IDS).logits
    for start, end, p in _windows(kind):
        spec = CQILSpec(start, end, p)
        apply_cqil(model, spec)
        try:
            got = model(IDS).logits
        finally:
            remove_cqil(model)
        want = reference_logits(model, IDS, spec.groups())
        assert torch.allclose(got, want, atol=1e-5), (start, end, p, float((got - want).abs().max()))
        assert not torch.allclose(got, base, atol=1e-3)  # CQIL really changed the model


@torch.no_grad()
def test_a_layer_after_a_group_keeps_its_own_sliding_window_mask():
    """Qwen2 layers 0-1 full attention, 2-3 sliding window: grouping 0-1 must not shift the masks of 2-3."""
    model = tiny_model("qwen2")
    spec = CQILSpec(0, 2, 2)
    apply_cqil(model, spec)
    got = model(IDS).logits
    remove_cqil(model)
    assert torch.allclose(got, reference_logits(model, IDS, spec.groups()), atol=1e-5)
    full = tiny_model("qwen2", use_sliding_window=False, layer_types=["full_attention"] * 4)
    assert not torch.allclose(model(IDS).logits, full(IDS).logits, atol=1e-3)  # the window really matters


@pytest.mark.parametrize("kind", ["qwen2", "gemma2"])
def test_a_group_mixing_attention_types_is_refused(models, kind):
    with pytest.raises(UserError, match=r"mixes attention types .*layer_types"):
        apply_cqil(models[kind], CQILSpec(1, 3, 2))
    assert not hasattr(models[kind].model, "_cqil_spec")


@pytest.mark.parametrize("kind", FUSED)
@pytest.mark.parametrize("d", [0, 1])
@torch.no_grad()
def test_fused_equals_sequential(kind, d):
    model = tiny_model(kind, attn="sdpa")
    spec = CQILSpec(0, 2, 2, d)
    apply_cqil(model, spec)
    want = model(IDS).logits
    remove_cqil(model)
    apply_cqil(model, spec, mode="fused")
    got = model(IDS).logits
    remove_cqil(model)
    assert torch.allclose(got, want, atol=1e-4), float((got - want).abs().max())


@pytest.mark.parametrize("kind", BYPASS)
@torch.no_grad()
def test_bypass_architectures_split_into_attention_and_mlp_exactly(models, kind):
    """Bypass re-wires a layer as h + Attn(Norm1(h)) then + MLP(Norm2(.)); that must be the layer itself."""
    model = models[kind]
    layer = model.model.layers[1]
    captured = {}
    hook = layer.register_forward_pre_hook(lambda _, args, kw: captured.update(h=args[0], kw=dict(kw)), with_kwargs=True)
    model(IDS, use_cache=False)
    hook.remove()
    h, kw = captured["h"], captured["kw"]
    x = h + attention_output(layer, h, kw)
    split = x + layer.mlp(layer.post_attention_layernorm(x))
    assert torch.allclose(split, _out(layer(h, **kw)), atol=1e-5)


@pytest.mark.parametrize(
    "kind,mode,d,match",
    [
        ("qwen3", "fused", 0, "not supported in this mode"),
        ("gemma", "fused", 0, "not supported in this mode"),
        ("gemma2", "fused", 0, "not supported in this mode"),
        ("granite", "fused", 0, "not supported in this mode"),
        ("phi3", "fused", 0, "not supported in this mode"),
        ("gemma2", "sequential", 1, "bypass"),
        ("granite", "sequential", 1, "bypass"),
        ("olmo2", "sequential", 1, "bypass"),
        ("stablelm", "sequential", 0, "stablelm .*is not supported"),
        ("cohere", "sequential", 0, "cohere .*is not supported"),
    ],
)
def test_architectures_not_computed_exactly_are_refused_in_one_line(kind, mode, d, match):
    model = tiny_model(kind, attn="sdpa")
    with pytest.raises(UserError, match=match) as error:
        apply_cqil(model, CQILSpec(0, 2, 2, d), mode=mode)
    assert "\n" not in str(error.value) and kind in str(error.value)
    assert not hasattr(model.model, "_cqil_spec")


def test_fused_refuses_an_attention_kernel_it_does_not_pass_the_window_to():
    model = tiny_model("mistral", attn="sdpa")
    model.config._attn_implementation = "flex_attention"
    with pytest.raises(UserError, match="attn_implementation"):
        apply_cqil(model, CQILSpec(0, 2, 2), mode="fused")


@pytest.mark.slow
def test_distributed_equals_sequential_on_every_architecture():
    """Two gloo ranks, each architecture's tiny model, D = 0 and (where exact) D = 1."""
    cases = [(kind, (0, 2, 2, 0)) for kind in ACCEPTED] + [(kind, (0, 2, 2, 1)) for kind in BYPASS]
    got = spawn(functools.partial(distributed_logits_job, cases, IDS), world_size=2, backend="gloo")
    for kind, fields in cases:
        model = tiny_model(kind, attn="sdpa")
        apply_cqil(model, CQILSpec(*fields))
        with torch.no_grad():
            want = model(IDS).logits
        assert torch.allclose(got[(kind, fields)], want, atol=1e-5), (kind, fields)
