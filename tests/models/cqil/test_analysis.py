"""Layer-similarity analysis, the (S, E) rule (it must check perplexity), and the removal baseline."""

from __future__ import annotations

import pytest
import torch

from common.errors import UserError
from models.cqil.analysis import (
    block_influence,
    heatmap_figure,
    layer_inputs_similarity,
    layers_to_remove,
    propose_region,
    remove_layers,
    restore_layers,
)
from tests.models.cqil.tiny import tiny_llama


@pytest.fixture(scope="module")
def model():
    return tiny_llama(layers=4)


@torch.no_grad()
def test_similarity_matrix_against_hidden_states(model):
    windows = torch.randint(0, 97, (2, 8), generator=torch.Generator().manual_seed(0))
    sim = layer_inputs_similarity(model, windows)
    assert sim.shape == (5, 5)
    assert torch.allclose(sim, sim.T, atol=1e-5) and torch.allclose(torch.diagonal(sim), torch.ones(5), atol=1e-5)
    # known answer from HF's own hidden states (inputs of layers 0..3; the last entry is after the final norm)
    want = torch.zeros(5, 5)
    for w in windows:
        hs = model(w[None], output_hidden_states=True).hidden_states
        states = [h[0] for h in hs[:4]]
        for a in range(4):
            for b in range(4):
                want[a, b] += torch.nn.functional.cosine_similarity(states[a], states[b], dim=-1).mean() / len(windows)
    assert torch.allclose(sim[:4, :4], want[:4, :4], atol=1e-4)
    fig = heatmap_figure(sim, "tiny")
    assert fig.axes


def test_block_influence_and_removal_order():
    sim = torch.eye(5)
    sim[0, 1] = sim[1, 0] = 0.1  # layer 0 changes its input most
    sim[1, 2] = sim[2, 1] = 0.99  # layer 1 least
    sim[2, 3] = sim[3, 2] = 0.9
    sim[3, 4] = sim[4, 3] = 0.5
    assert torch.allclose(block_influence(sim), torch.tensor([0.9, 0.01, 0.1, 0.5]))
    assert layers_to_remove(sim, 2) == [1, 2]
    assert layers_to_remove(sim, 3) == [1, 2, 3]  # layer 0 is always kept
    with pytest.raises(UserError, match="cannot remove"):
        layers_to_remove(sim, 4)


@torch.no_grad()
def test_removal_equals_skipping_and_restores(model):
    ids = torch.randint(0, 97, (1, 6), generator=torch.Generator().manual_seed(2))
    base = model(ids).logits
    remove_layers(model, [2])
    removed = model(ids).logits
    cached = model.generate(
        ids, attention_mask=torch.ones_like(ids), max_new_tokens=5, min_new_tokens=5, do_sample=False, pad_token_id=0
    )
    full = model(cached, use_cache=False).logits  # the KV cache still works with a layer gone:
    out = model(cached[:, :6], use_cache=True)  # incremental logits == recomputation
    steps, cache = [out.logits[:, -1]], out.past_key_values
    for t in range(6, cached.size(1) - 1):
        out = model(cached[:, t : t + 1], past_key_values=cache, use_cache=True)
        steps.append(out.logits[:, -1])
        cache = out.past_key_values
    restore_layers(model)
    assert torch.allclose(torch.stack(steps, 1), full[:, 5:-1], atol=1e-4)
    assert torch.equal(model(ids).logits, base)
    inner = model.model
    mask = torch.full((6, 6), float("-inf")).triu(1)[None, None]
    h = inner.embed_tokens(ids)
    pos = torch.arange(6)[None]
    pe = inner.rotary_emb(h, pos)
    for i in (0, 1, 3):
        h = inner.layers[i](h, attention_mask=mask, position_embeddings=pe, position_ids=pos)
    assert torch.allclose(model.lm_head(inner.norm(h)), removed, atol=1e-4)


def test_rule_checks_perplexity_not_similarity_alone():
    sim = torch.full((9, 9), 0.95)  # 8 layers, every pair similar
    rises = {}

    def rise(spec):  # windows ending at the last layer ruin the model; elsewhere the rise grows with width
        rises[(spec.start, spec.end)] = 10.0 if spec.end == 8 else 0.01 * (spec.end - spec.start)
        return rises[(spec.start, spec.end)]

    got = propose_region(sim, 2, 0.9, 0.10, rise, max_evaluations=10)
    assert got.end - got.start == 6 and got.end < 8 and got.ppl_rise == pytest.approx(0.06)  # the widest that passes
    assert (6, 8) in rises and not any(end == 8 and start < 6 for start, end in rises)  # E = 8 ruled out in one check
    assert got.evaluated == len(rises) <= 4  # binary search, not every window
    assert propose_region(sim, 2, 0.99, 0.10, rise) is None  # similarity bound excludes everything
    assert propose_region(sim, 2, 0.9, 0.001, rise, max_evaluations=2) is None  # evaluation budget respected
    with pytest.raises(UserError):
        propose_region(sim, 1, 0.9, 0.1, rise)


def test_layer_removal_refuses_a_model_mixing_attention_types():
    """Removal shifts every later layer into another slot, and the decoder picks masks per slot."""
    from common.errors import UserError
    from models.cqil.analysis import remove_layers
    from tests.models.cqil.architectures_tiny import tiny_model

    model = tiny_model("qwen2")
    with pytest.raises(UserError, match="cqil.removal=false"):
        remove_layers(model, [1])
    assert not hasattr(model.model, "_removed_original_layers")
