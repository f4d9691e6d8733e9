"""A tiny random LLaMA built from a config (no download), shared by the CQIL tests."""

from __future__ import annotations

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from models.cqil.plugin import CQILSpec, apply_cqil


def tiny_config(layers: int = 4, attn: str = "eager") -> LlamaConfig:
    config = LlamaConfig(
        vocab_size=97,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        tie_word_embeddings=False,
    )
    config._attn_implementation = attn
    return config


def tiny_llama(layers: int = 4, seed: int = 0, attn: str = "eager") -> LlamaForCausalLM:
    torch.manual_seed(seed)
    model = LlamaForCausalLM(tiny_config(layers, attn)).eval()
    with torch.no_grad():  # HF init is small (std 0.02): widen it so layers differ visibly
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0, 0.2)
            else:
                p.uniform_(0.5, 1.5)
    return model


def make_tiny(seed: int = 0) -> LlamaForCausalLM:
    """Picklable constructor for spawned workers."""
    return tiny_llama(seed=seed, attn="sdpa")


def distributed_job(ids: torch.Tensor, spec: CQILSpec, rank: int, world: int) -> dict:
    """Runs in each of the spawned ranks: logits and greedy tokens of the tiny model in distributed mode."""
    model = make_tiny()
    apply_cqil(model, spec, mode="distributed")
    with torch.no_grad():
        logits = model(ids).logits
        generated = model.generate(
            ids[:1], attention_mask=torch.ones_like(ids[:1]), max_new_tokens=6, min_new_tokens=6, do_sample=False, pad_token_id=0
        )
    return {"logits": logits, "generated": generated, "rank": rank, "world": world}
