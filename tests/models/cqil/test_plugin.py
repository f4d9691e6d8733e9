"""CQIL group semantics on a 4-layer tiny random LLaMA against a hand-written reference loop."""

from __future__ import annotations

import pytest
import torch

from common.errors import UserError
from models.cqil.plugin import CQILSpec, apply_cqil, cqil_spec, remove_cqil
from tests.models.cqil.tiny import tiny_llama


def run_layers(model, ids, spec: CQILSpec | None, residual: bool = True) -> torch.Tensor:
    """Reference: the whole decoder written out by hand from the paper's equations (no KV cache)."""
    inner = model.model
    h = inner.embed_tokens(ids)
    pos = torch.arange(ids.size(1))[None]
    pe = inner.rotary_emb(h, pos)
    t = ids.size(1)
    causal = torch.full((t, t), float("-inf")).triu(1)[None, None]  # additive mask (eager attention)
    kw = dict(attention_mask=causal, position_embeddings=pe, position_ids=pos)

    def attn(layer, x):
        return layer.self_attn(hidden_states=layer.input_layernorm(x), **kw)[0]

    def mlp(layer, x):
        return layer.mlp(layer.post_attention_layernorm(x))

    groups = {g[0]: g for g in spec.groups()} if spec else {}
    i = 0
    layers = inner.layers
    while i < len(layers):
        if i in groups:
            members = [layers[j] for j in groups[i]]
            a = [attn(m, h) for m in members]
            total = torch.zeros_like(h)
            for j, m in enumerate(members):
                bypass = sum(a[max(0, j - spec.bypass_distance) : j], torch.zeros_like(h)) if spec.bypass_distance else 0
                r = h + a[j] + bypass
                out = r + mlp(m, r) if residual else h + a[j] + mlp(m, r)
                total = total + (out - h)
            h = h + total
            i += len(members)
        else:
            x = h + attn(layers[i], h)
            h = x + mlp(layers[i], x)
            i += 1
    return model.lm_head(inner.norm(h))


@pytest.fixture(scope="module")
def model():
    return tiny_llama()


@pytest.fixture(scope="module")
def ids():
    return torch.randint(0, 97, (2, 9), generator=torch.Generator().manual_seed(1))


@torch.no_grad()
def test_reference_loop_matches_untouched_model(model, ids):
    assert torch.allclose(run_layers(model, ids, None), model(ids).logits, atol=1e-4)


@pytest.mark.parametrize("start,end,p,d", [(0, 4, 2, 0), (1, 3, 2, 0), (0, 4, 4, 0), (0, 4, 4, 1), (0, 4, 4, 2), (1, 3, 2, 1)])
@pytest.mark.parametrize("mode", ["sequential", "fused"])
@torch.no_grad()
def test_group_semantics_match_reference(model, ids, start, end, p, d, mode):
    spec = apply_cqil(model, CQILSpec(start, end, p, d), mode=mode)
    try:
        got = model(ids).logits
    finally:
        remove_cqil(model)
    want = run_layers(model, ids, spec)
    assert torch.allclose(got, want, atol=1e-4), float((got - want).abs().max())
    assert not torch.allclose(want, model(ids).logits, atol=1e-2)  # CQIL really changed the model


def member_indices(group: torch.nn.Module) -> list[int]:
    """The original layer indices a group module runs (sequential groups keep the layers, fused ones their indices)."""
    if hasattr(group, "layer_indices"):
        return list(group.layer_indices)
    return [int(m.self_attn.layer_idx) for m in group.members]


@pytest.mark.parametrize(
    "spec",
    [CQILSpec(1, 3, 2), CQILSpec(0, 4, 2, 1, bypass_residual=False), CQILSpec(1, 4, 2, allow_ragged=True), CQILSpec(0, 4, 4, 2)],
    ids=lambda s: f"{s.name}_res{int(s.bypass_residual)}_rag{int(s.allow_ragged)}",
)
@pytest.mark.parametrize("mode", ["sequential", "fused"])
@torch.no_grad()
def test_spec_fields_reach_the_patched_model(model, ids, spec, mode):
    """apply_cqil(model, spec): the layers the spec groups are the ones that run concurrently (they read
    the same input), the rest run one after another, and bypass distance / residual reach every group."""
    original = list(model.model.layers)
    inputs: dict[int, torch.Tensor] = {}
    hooks = [
        layer.input_layernorm.register_forward_pre_hook(lambda _, args, i=i: inputs.setdefault(i, args[0].clone()))
        for i, layer in enumerate(original)
    ]
    try:
        assert apply_cqil(model, spec, mode=mode) is spec
        assert cqil_spec(model) is spec
        layers = list(model.model.layers)
        assert len(layers) == len(original)  # one slot per layer: the decoder's per-slot masks stay aligned
        firsts = [g[0] for g in spec.groups()]
        groups = [member_indices(layers[i]) for i in firsts]
        assert groups == spec.groups()
        assert layers[: spec.start] == original[: spec.start]
        assert layers[spec.end :] == original[spec.end :]
        others = [i for g in spec.groups() for i in g[1:]]
        assert [getattr(layers[i], "layer_index", None) for i in others] == others  # pass-through slots
        for i in firsts:
            group = layers[i]
            assert (group.distance, group.residual) == (spec.bypass_distance, spec.bypass_residual)
            assert [int(m.self_attn.layer_idx) for m in group.members] == member_indices(group)
        if mode == "sequential":  # the fused kernels bypass the layer modules, so only sequential can be observed
            model(ids)
            together = {i: tuple(g) for g in spec.groups() for i in g}
            for a in range(len(original)):
                for b in range(a + 1, len(original)):
                    same = together.get(a, (a,)) == together.get(b, (b,))
                    assert torch.equal(inputs[a], inputs[b]) == same, (a, b)
    finally:
        for hook in hooks:
            hook.remove()
        if cqil_spec(model) is not None:
            remove_cqil(model)


def test_apply_cqil_takes_a_spec(model):
    with pytest.raises(TypeError, match="CQILSpec"):
        apply_cqil(model, 0, "sequential")
    with pytest.raises(TypeError):
        apply_cqil(model, 0, 4, 2)  # the old unpacked form
    assert cqil_spec(model) is None


@torch.no_grad()
def test_bypass_into_mlp_only_variant(model, ids):
    spec = apply_cqil(model, CQILSpec(0, 4, 4, 2, bypass_residual=False))
    got = model(ids).logits
    remove_cqil(model)
    assert torch.allclose(got, run_layers(model, ids, spec, residual=False), atol=1e-4)
    assert not torch.allclose(got, run_layers(model, ids, spec, residual=True), atol=1e-3)


@torch.no_grad()
def test_fused_equals_sequential(model, ids):
    for d in (0, 1):
        apply_cqil(model, CQILSpec(0, 4, 2, d))
        seq = model(ids).logits
        remove_cqil(model)
        apply_cqil(model, CQILSpec(0, 4, 2, d), mode="fused")
        fused = model(ids).logits
        remove_cqil(model)
        assert torch.allclose(seq, fused, atol=1e-4)


@torch.no_grad()
def test_single_member_groups_give_original_logits(model, ids):
    """S = E is rejected as an empty region; the degenerate groups (a ragged window of one layer)
    must reproduce the untouched model exactly as the paper's P = 1 does."""
    base = model(ids).logits
    apply_cqil(model, CQILSpec(3, 4, 2, allow_ragged=True))
    assert torch.allclose(model(ids).logits, base, atol=1e-5)
    remove_cqil(model)


@torch.no_grad()
def test_removal_restores_original_logits_and_weights(model, ids):
    base = model(ids).logits
    keys = set(model.state_dict())
    apply_cqil(model, CQILSpec(0, 4, 2, 1), mode="fused")
    assert cqil_spec(model) == CQILSpec(0, 4, 2, 1)
    remove_cqil(model)
    assert cqil_spec(model) is None
    assert set(model.state_dict()) == keys
    assert torch.equal(model(ids).logits, base)


@pytest.mark.parametrize("mode", ["sequential", "fused"])
@pytest.mark.parametrize("d", [0, 1])
@torch.no_grad()
def test_kv_cache_generation_equals_recomputation(model, mode, d):
    """HF generate (KV cache on) == greedy argmax recomputing the whole prefix each step, no cache."""
    prompt = torch.tensor([[5, 17, 3, 44, 8]])
    apply_cqil(model, CQILSpec(0, 4, 2, d), mode=mode)
    try:
        cached = model.generate(
            prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=8, min_new_tokens=8, do_sample=False, pad_token_id=0
        )[0, 5:].tolist()
        ids = prompt
        for _ in range(8):
            nxt = model(ids, use_cache=False).logits[:, -1].argmax(-1, keepdim=True)
            ids = torch.cat([ids, nxt], 1)
    finally:
        remove_cqil(model)
    assert cached == ids[0, 5:].tolist()


@pytest.mark.parametrize(
    "args,match",
    [
        ((2, 2, 2), "start < end"),
        ((3, 1, 2), "start < end"),
        ((0, 5, 2), "exceeds"),
        ((0, 4, 0), ">= 1"),
        ((0, 3, 2), "not a multiple"),
        ((0, 4, 2, -1), "bypass_distance"),
    ],
)
def test_bad_settings_are_clear_errors(model, args, match):
    with pytest.raises(UserError, match=match):
        apply_cqil(model, CQILSpec(*args))
    assert cqil_spec(model) is None


def test_unsupported_architecture_and_double_apply(model):
    with pytest.raises(UserError, match="unsupported architecture"):
        apply_cqil(torch.nn.Linear(2, 2), CQILSpec(0, 2, 2))
    with pytest.raises(UserError, match="unknown|choose one of"):
        apply_cqil(model, CQILSpec(0, 4, 2), mode="warp")
    apply_cqil(model, CQILSpec(0, 4, 2))
    with pytest.raises(UserError, match="already applied"):
        apply_cqil(model, CQILSpec(0, 4, 2))
    remove_cqil(model)
    with pytest.raises(UserError, match="not applied"):
        remove_cqil(model)


def test_ideal_latency_ratio():
    assert CQILSpec(12, 30, 2).ideal_latency_ratio(32) == pytest.approx(1 - 18 * 0.5 / 32)  # paper: 28.1 % saved
    assert CQILSpec(14, 30, 4).ideal_latency_ratio(32) == pytest.approx(1 - 16 * 0.75 / 32)  # 37.5 %
    assert CQILSpec(0, 5, 2, allow_ragged=True).ideal_latency_ratio(5) == pytest.approx(1 - 2 / 5)
    assert CQILSpec(24, 28, 2, 1).name == "cqil_p2_s24_e28_d1"


@pytest.mark.parametrize("mode", ["sequential", "fused"])
@pytest.mark.parametrize("d", [0, 1])
@torch.no_grad()
def test_hidden_states_are_the_residual_stream_with_a_group_s_members_holding_its_output(model, ids, mode, d):
    """L + 1 states; before a group the untouched stream, each member slot of a group the group's output,
    the last state the final layer's output (what the model's head reads)."""
    plain = model(ids, output_hidden_states=True).hidden_states
    spec = CQILSpec(1, 3, 2, d)
    inputs = {}
    apply_cqil(model, spec, mode=mode)
    hook = model.model.layers[3].register_forward_pre_hook(lambda _, args: inputs.setdefault("after", args[0]))
    try:
        states = model(ids, output_hidden_states=True).hidden_states
        again = model(ids, output_hidden_states=True).hidden_states  # the member hooks do not pile up
    finally:
        hook.remove()
        remove_cqil(model)
    assert len(states) == len(again) == len(plain) == 5
    assert torch.equal(states[0], plain[0]) and torch.allclose(states[1], plain[1], atol=1e-6)
    assert torch.allclose(states[2], inputs["after"], atol=1e-6) and torch.allclose(states[3], inputs["after"], atol=1e-6)
    assert not torch.allclose(states[2], plain[2], atol=1e-3)


@pytest.mark.parametrize("mode", ["sequential", "fused"])
@torch.no_grad()
def test_state_dict_of_a_cqil_model_is_the_original_checkpoint(model, mode):
    """Same keys, same tensors as the untouched model, in either direction of load_state_dict."""
    want = model.state_dict()
    apply_cqil(model, CQILSpec(0, 4, 2, 1), mode=mode)
    try:
        got = model.state_dict()
        assert list(got) == list(want)
        assert all(torch.equal(got[k], want[k]) for k in want)
        model.load_state_dict(want, strict=True)  # the original names load into the CQIL model
    finally:
        remove_cqil(model)
    assert list(model.state_dict()) == list(want)


@pytest.mark.parametrize("mode", ["sequential", "fused"])
@torch.no_grad()
def test_a_saved_cqil_model_reloads_to_identical_logits(tmp_path, ids, mode):
    """save_pretrained + load_cqil: the same logits; from_pretrained alone: the untouched model, every
    weight loaded (no layer re-initialised)."""
    from transformers import AutoModelForCausalLM

    from models.cqil.persistence import load_cqil

    source = tiny_llama(seed=4)
    base = source(ids).logits
    spec = CQILSpec(0, 4, 2, 1)
    apply_cqil(source, spec, mode=mode)
    want = source(ids).logits
    source.save_pretrained(tmp_path)
    loaded = load_cqil(tmp_path, attn_implementation="eager")  # the attention kernel tiny_llama uses
    assert cqil_spec(loaded) == spec and type(loaded.model.layers[0]) is type(source.model.layers[0])
    assert torch.equal(loaded(ids).logits, want)
    plain = AutoModelForCausalLM.from_pretrained(tmp_path, attn_implementation="eager").eval()
    assert cqil_spec(plain) is None
    assert torch.equal(plain(ids).logits, base)


def test_load_cqil_refuses_a_plain_checkpoint(tmp_path):
    from models.cqil.persistence import load_cqil

    tiny_llama().save_pretrained(tmp_path)
    with pytest.raises(UserError, match="no cqil settings"):
        load_cqil(tmp_path)
    with pytest.raises(UserError, match="config.json missing"):
        load_cqil(tmp_path / "nowhere")
