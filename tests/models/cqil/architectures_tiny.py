"""Tiny random models of every architecture family the CQIL tests cover, built offline from configs."""

from __future__ import annotations

import torch
from transformers import AutoConfig, AutoModelForCausalLM

VOCAB = 97
COMMON = dict(
    vocab_size=VOCAB,
    hidden_size=32,
    intermediate_size=48,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=8,
    max_position_embeddings=64,
    tie_word_embeddings=False,
    pad_token_id=0,
    bos_token_id=1,
    eos_token_id=2,
)
SLIDING = ["full_attention", "full_attention", "sliding_attention", "sliding_attention"]
EXTRA: dict[str, dict] = {
    "mistral": dict(sliding_window=3),
    "qwen2": dict(use_sliding_window=True, sliding_window=3, max_window_layers=2, layer_types=SLIDING),
    "qwen3": dict(use_sliding_window=True, sliding_window=3, max_window_layers=2, layer_types=SLIDING),
    "gemma2": dict(sliding_window=3, query_pre_attn_scalar=8, layer_types=SLIDING),
    "granite": dict(residual_multiplier=0.5, embedding_multiplier=2.0, attention_multiplier=0.3, logits_scaling=2.0),
    "phi3": dict(sliding_window=3),
}


def tiny_model(model_type: str, seed: int = 0, attn: str = "eager", **overrides) -> torch.nn.Module:
    """A 4-layer random `model_type` causal LM with weights wide enough that layers differ visibly."""
    attn = "eager" if model_type == "gemma2" else attn  # its soft-capped attention has no sdpa kernel
    config = AutoConfig.for_model(model_type, **{**COMMON, **EXTRA.get(model_type, {}), **overrides})
    config._attn_implementation = attn
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0, 0.2)
            else:
                p.uniform_(0.5, 1.5)
    return model


def distributed_logits_job(cases: list[tuple[str, tuple]], ids: torch.Tensor, rank: int, world: int) -> dict:
    """Runs in each spawned rank: logits of every (model_type, spec fields) case in distributed mode."""
    from models.cqil.plugin import CQILSpec, apply_cqil

    out = {}
    for model_type, fields in cases:
        model = tiny_model(model_type, attn="sdpa")
        apply_cqil(model, CQILSpec(*fields), mode="distributed")
        with torch.no_grad():
            out[(model_type, fields)] = model(ids).logits
    return out
