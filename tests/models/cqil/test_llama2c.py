"""llama2.c -> HF LLaMA converter: stories260K's documented greedy sample reproduces."""

from __future__ import annotations

import struct

import pytest
import torch

from common.errors import UserError
from models.cqil.llama2c import Llama2cTokenizer, convert, read_header, read_llama2c

# from stories260K.md ("Sampling this model at temperature 0.0 ... gives"), run.c with 256 steps
DOCUMENTED = (
    "Once upon a time, there was a little girl named Lily. She loved to play outside in the park. "
    "One day, she saw a big, red ball. She wanted to play with it, but it was too high.\n"
    "Lily's mom said, \"Lily, let's go to the park.\" Lily was sad and didn't know what to do. "
    'She said, "I want to play with your ball, but I can\'t find it."\n'
    "Lily was sad and didn't know what to do. She said, \"I'm sorry, Lily. I didn't know what to do.\"\n"
    "Lily didn't want to help her mom, so she said, \"I'm sorry, mom. I didn't know what to do.\" "
    "Her mom said, \"Don't worry, Lily. We can help you"
)


@pytest.fixture(scope="module")
def stories(data_dir, tmp_path_factory):
    from transformers import LlamaForCausalLM

    root = data_dir / "llm" / "stories260K"
    out = convert(root / "stories260K.bin", tmp_path_factory.mktemp("hf") / "stories260K")
    return LlamaForCausalLM.from_pretrained(str(out), dtype=torch.float32).eval(), Llama2cTokenizer(root / "tok512.bin")


@pytest.mark.slow
@torch.no_grad()
def test_documented_greedy_sample_reproduces(stories):
    model, tok = stories
    out = model.generate(torch.tensor([[1]]), max_new_tokens=255, do_sample=False, pad_token_id=0)
    assert tok.decode(out[0].tolist()) == DOCUMENTED


@torch.no_grad()
def test_greedy_sample_prefix(stories):
    model, tok = stories
    out = model.generate(torch.tensor([[1]]), max_new_tokens=40, do_sample=False, pad_token_id=0)
    text = tok.decode(out[0].tolist())
    assert len(text) > 100 and DOCUMENTED.startswith(text)


def test_header_and_tokenizer_round_trip(data_dir):
    root = data_dir / "llm" / "stories260K"
    header, sd = read_llama2c(root / "stories260K.bin")
    assert (header.dim, header.n_layers, header.n_heads, header.n_kv_heads, header.vocab_size) == (64, 5, 8, 4, 512)
    assert header.shared_classifier and sd["model.layers.0.self_attn.k_proj.weight"].shape == (32, 64)
    tok = Llama2cTokenizer(root / "tok512.bin")
    text = 'Lily said, "Hi!"\nThe end.'
    assert tok.decode(tok.encode(text)) == text
    assert tok.encode("Once upon a time")[0] == 1


def test_not_a_checkpoint(tmp_path):
    with pytest.raises(UserError, match="not a llama2.c checkpoint"):
        read_header(struct.pack("7i", 64, 0, 5, 8, 4, 512, 512))
    bad = tmp_path / "x.bin"
    bad.write_bytes(struct.pack("7i", 64, 172, 5, 8, 4, 512, 512) + b"\0" * 400)
    with pytest.raises(UserError, match="truncated"):
        read_llama2c(bad)
