"""Fused mode with a KV cache: decoding equals sequential mode step by step, and a decode step attends to
each member's cache layer in place instead of stacking the members' cached K/V again every step."""

from __future__ import annotations

import pytest
import torch
from transformers import DynamicCache, StaticCache
from transformers.models.llama import modeling_llama

from models.cqil.fused import FusedGroup
from models.cqil.plugin import CQILSpec, apply_cqil, remove_cqil
from tests.models.cqil.tiny import tiny_llama

STEPS = 12
Calls = list[tuple[int, torch.Tensor]]  # (query heads, key) of each attention call


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """The tiny model's ops are too small to share out; on a busy machine a second OpenMP thread waiting
    at every op's barrier makes these tests many times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def prompt() -> torch.Tensor:
    return torch.randint(0, 97, (2, 7), generator=torch.Generator().manual_seed(3))


@torch.no_grad()
def decode_run(model, spec: CQILSpec, mode: str, prompt: torch.Tensor, tokens: list[torch.Tensor] | None = None):
    """Prefill `prompt` into a fresh cache, then STEPS single-token steps (the given tokens, else greedy);
    returns the logits of every step, the tokens fed and the final cache."""
    apply_cqil(model, spec, mode=mode)
    try:
        cache = DynamicCache(config=model.config)
        out = model(prompt, past_key_values=cache, use_cache=True)
        logits, fed = [out.logits[:, -1]], []
        for step in range(STEPS):
            token = tokens[step] if tokens is not None else out.logits[:, -1:].argmax(-1)
            fed.append(token)
            out = model(token, past_key_values=cache, use_cache=True)
            logits.append(out.logits[:, -1])
    finally:
        remove_cqil(model)
    return logits, fed, cache


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
@pytest.mark.parametrize("d", [0, 1])
def test_cached_decode_equals_sequential_every_step(prompt, attn, d):
    """Batch 2, GQA (4 query / 2 kv heads): the same logits at every decode step, and each original layer
    index's cache holds that member's own K/V (what `remove_cqil` hands back to the original layers)."""
    model = tiny_llama(attn=attn)
    spec = CQILSpec(0, 4, 2, d)
    want, tokens, want_cache = decode_run(model, spec, "sequential", prompt)
    got, _, got_cache = decode_run(model, spec, "fused", prompt, tokens)
    for step, (a, b) in enumerate(zip(want, got, strict=True)):
        assert torch.allclose(a, b, atol=1e-4), (step, float((a - b).abs().max()))
    assert got_cache.get_seq_length() == want_cache.get_seq_length() == prompt.size(1) + STEPS
    for layer, (a, b) in enumerate(zip(want_cache.layers, got_cache.layers, strict=True)):
        assert a.keys.shape == b.keys.shape == (2, 2, prompt.size(1) + STEPS, 8), layer
        assert torch.allclose(a.keys, b.keys, atol=1e-4) and torch.allclose(a.values, b.values, atol=1e-4), layer


@pytest.mark.parametrize("d", [0, 1])
@torch.no_grad()
def test_generate_with_padding_equals_sequential(prompt, d):
    """HF generate, batch 2 with the first row left-padded: the same greedy tokens as sequential mode."""
    model = tiny_llama()
    mask = torch.ones_like(prompt)
    mask[0, :3] = 0
    generated = {}
    for mode in ("sequential", "fused"):
        apply_cqil(model, CQILSpec(0, 4, 2, d), mode=mode)
        try:
            generated[mode] = model.generate(
                prompt, attention_mask=mask, max_new_tokens=STEPS, min_new_tokens=STEPS, do_sample=False, pad_token_id=0
            )
        finally:
            remove_cqil(model)
    assert generated["fused"].tolist() == generated["sequential"].tolist()


@torch.no_grad()
def test_static_cache_decode_equals_sequential(prompt):
    """A static cache returns its whole preallocated buffer even at prefill, so fused mode must attend per
    member there too (the mask covers the buffer, not just the prompt)."""
    model = tiny_llama()
    logits = {}
    for mode in ("sequential", "fused"):
        apply_cqil(model, CQILSpec(0, 4, 2, 1), mode=mode)
        try:
            cache = StaticCache(config=model.config, max_cache_len=prompt.size(1) + 4)
            out = model(prompt, past_key_values=cache, use_cache=True)
            steps = [out.logits]
            for token in (5, 11, 2):
                steps.append(model(torch.full((2, 1), token), past_key_values=cache, use_cache=True).logits)
            logits[mode] = torch.cat(steps, 1)
        finally:
            remove_cqil(model)
    assert torch.allclose(logits["fused"], logits["sequential"], atol=1e-4)


def spied_attention_calls(monkeypatch, concat: bool) -> tuple[Calls, Calls, DynamicCache]:
    """Every attention call of fused groups over a prefill and one decode step: (query heads, key) per call."""
    calls: Calls = []
    real = modeling_llama.eager_attention_forward

    def spy(module, query, key, value, *args, **kwargs):
        calls.append((query.shape[1], key))
        return real(module, query, key, value, *args, **kwargs)

    monkeypatch.setattr(modeling_llama, "eager_attention_forward", spy)  # before the groups capture it
    if concat:  # otherwise the class default, the path every caller gets
        monkeypatch.setattr(FusedGroup, "stacked_cache_concat", True)
    model = tiny_llama()
    prompt = torch.tensor([[5, 17, 3, 44, 8], [9, 1, 60, 2, 30]])
    apply_cqil(model, CQILSpec(0, 4, 2, 1), mode="fused")
    cache = DynamicCache(config=model.config)
    with torch.no_grad():
        model(prompt, past_key_values=cache, use_cache=True)
        prefill = list(calls)
        calls.clear()
        model(torch.tensor([[4], [7]]), past_key_values=cache, use_cache=True)
    return prefill, calls, cache


def test_decode_attends_to_each_members_cache_in_place(monkeypatch):
    """Prefill: one attention call per group with all its members' query heads (the stacked call). Decode:
    every key an attention call reads is a member's cache tensor itself (no copy of the cached K/V), each
    member's cache read once, with that member's 4 query heads."""
    prefill, decode, cache = spied_attention_calls(monkeypatch, concat=False)
    assert [heads for heads, _ in prefill] == [8, 8]
    layer_of = {id(layer.keys): i for i, layer in enumerate(cache.layers)}
    assert sorted(layer_of.get(id(key), -1) for _, key in decode) == [0, 1, 2, 3]
    assert [heads for heads, _ in decode] == [4, 4, 4, 4]


def test_the_concatenating_path_fails_the_in_place_check(monkeypatch):
    """The former path (members' cached K/V stacked each step) is caught by the check above: its keys are copies."""
    _, decode, cache = spied_attention_calls(monkeypatch, concat=True)
    cached = {id(layer.keys) for layer in cache.layers}
    assert len(decode) == 2 and not any(id(key) in cached for _, key in decode)
    assert [key.shape[1] for _, key in decode] == [4, 4]  # 2 members x 2 kv heads, stacked
