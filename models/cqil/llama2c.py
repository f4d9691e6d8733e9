"""llama2.c checkpoints (Karpathy's `run.c` format, e.g. stories260K.bin + tok512.bin) -> HF LLaMA.

Format (llama2.c `export.py`, legacy version 0): 7 int32 (dim, hidden_dim, n_layers, n_heads,
n_kv_heads, vocab_size — negative when the classifier is not shared —, seq_len), then float32
arrays: token embedding, attention RMSNorm weights, wq, wk, wv, wo, FFN RMSNorm weights, w1, w2, w3,
final RMSNorm, two RoPE tables (ignored: HF recomputes them) and, if unshared, the classifier.
llama2.c rotates interleaved pairs (Meta layout); HF LLaMA rotates halves, so wq / wk rows are
permuted per head as in transformers' `convert_llama_weights_to_hf.py`.
The tokenizer file: int32 max token length, then per token float32 score, int32 length, bytes.
"""

from __future__ import annotations

import json
import re
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from common.errors import UserError
from common.files import require_file

HEADER = struct.Struct("7i")
BOS, EOS = 1, 2


@dataclass(frozen=True)
class Llama2cHeader:
    dim: int
    hidden_dim: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    vocab_size: int
    seq_len: int
    shared_classifier: bool


def read_header(raw: bytes) -> Llama2cHeader:
    dim, hidden, layers, heads, kv, vocab, seq = HEADER.unpack_from(raw)
    if min(dim, hidden, layers, heads, kv, seq) <= 0 or dim % heads or heads % kv:
        raise UserError("not a llama2.c checkpoint (bad header); expected the run.c .bin format (legacy version 0)")
    return Llama2cHeader(dim, hidden, layers, heads, kv, abs(vocab), seq, vocab > 0)


def _permute(w: Tensor, heads: int) -> Tensor:
    """Meta (interleaved pairs) -> HF (rotate-half) row order of a q/k projection."""
    rows, cols = w.shape
    return w.view(heads, rows // heads // 2, 2, cols).transpose(1, 2).reshape(rows, cols)


def read_llama2c(path: str | Path) -> tuple[Llama2cHeader, dict[str, Tensor]]:
    """The header and an HF LlamaForCausalLM state dict."""
    path = require_file(path, "llama2.c checkpoints: https://huggingface.co/karpathy/tinyllamas")
    raw = path.read_bytes()
    h = read_header(raw)
    data = np.frombuffer(raw, dtype=np.float32, offset=HEADER.size)
    head = h.dim // h.n_heads
    kv_dim = h.n_kv_heads * head
    shapes = [
        ("emb", (h.vocab_size, h.dim)),
        ("rms_att", (h.n_layers, h.dim)),
        ("wq", (h.n_layers, h.dim, h.dim)),
        ("wk", (h.n_layers, kv_dim, h.dim)),
        ("wv", (h.n_layers, kv_dim, h.dim)),
        ("wo", (h.n_layers, h.dim, h.dim)),
        ("rms_ffn", (h.n_layers, h.dim)),
        ("w1", (h.n_layers, h.hidden_dim, h.dim)),
        ("w2", (h.n_layers, h.dim, h.hidden_dim)),
        ("w3", (h.n_layers, h.hidden_dim, h.dim)),
        ("rms_final", (h.dim,)),
        ("freq_real", (h.seq_len, head // 2)),
        ("freq_imag", (h.seq_len, head // 2)),
    ]
    if not h.shared_classifier:
        shapes.append(("wcls", (h.vocab_size, h.dim)))
    arrays, offset = {}, 0
    for name, shape in shapes:
        count = int(np.prod(shape))
        if offset + count > data.size:
            raise UserError(f"{path}: truncated llama2.c checkpoint ({data.size} floats, header needs more)")
        arrays[name] = torch.from_numpy(data[offset : offset + count].copy()).view(shape)
        offset += count
    sd = {
        "model.embed_tokens.weight": arrays["emb"],
        "model.norm.weight": arrays["rms_final"],
        "lm_head.weight": arrays["emb"] if h.shared_classifier else arrays["wcls"],
    }
    for i in range(h.n_layers):
        p = f"model.layers.{i}."
        sd[p + "self_attn.q_proj.weight"] = _permute(arrays["wq"][i], h.n_heads)
        sd[p + "self_attn.k_proj.weight"] = _permute(arrays["wk"][i], h.n_kv_heads)
        sd[p + "self_attn.v_proj.weight"] = arrays["wv"][i]
        sd[p + "self_attn.o_proj.weight"] = arrays["wo"][i]
        sd[p + "mlp.gate_proj.weight"] = arrays["w1"][i]
        sd[p + "mlp.down_proj.weight"] = arrays["w2"][i]
        sd[p + "mlp.up_proj.weight"] = arrays["w3"][i]
        sd[p + "input_layernorm.weight"] = arrays["rms_att"][i]
        sd[p + "post_attention_layernorm.weight"] = arrays["rms_ffn"][i]
    return h, sd


def hf_config(h: Llama2cHeader):
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=h.vocab_size,
        hidden_size=h.dim,
        intermediate_size=h.hidden_dim,
        num_hidden_layers=h.n_layers,
        num_attention_heads=h.n_heads,
        num_key_value_heads=h.n_kv_heads,
        max_position_embeddings=h.seq_len,
        rms_norm_eps=1e-5,
        rope_theta=10000.0,
        tie_word_embeddings=h.shared_classifier,
        bos_token_id=BOS,
        eos_token_id=EOS,
    )


def convert(path: str | Path, out_dir: str | Path) -> Path:
    """Write an HF LLaMA folder (config.json + model.safetensors) for a llama2.c checkpoint."""
    from transformers import LlamaForCausalLM

    h, sd = read_llama2c(path)
    model = LlamaForCausalLM(hf_config(h))
    missing, unexpected = model.load_state_dict(sd, strict=False)
    if unexpected or [k for k in missing if k != "lm_head.weight"]:
        raise RuntimeError(f"llama2.c conversion: missing {missing}, unexpected {unexpected}")
    out_dir = Path(out_dir)
    model.save_pretrained(out_dir)
    (out_dir / "llama2c_header.json").write_text(json.dumps(h.__dict__))
    return out_dir


class Llama2cTokenizer:
    """llama2.c's `tokenizer.bin`: byte-fallback BPE merged by score (run.c `encode` / `decode`)."""

    def __init__(self, path: str | Path) -> None:
        raw = require_file(path, "the llama2.c tokenizer file (e.g. tok512.bin next to stories260K.bin)").read_bytes()
        (self.max_len,) = struct.unpack_from("i", raw)
        offset, self.pieces, self.scores = 4, [], []
        while offset < len(raw):
            score, length = struct.unpack_from("fi", raw, offset)
            offset += 8
            self.pieces.append(raw[offset : offset + length])
            self.scores.append(score)
            offset += length
        self.lookup = {p: i for i, p in enumerate(self.pieces)}
        self._cache: dict[str, list[int]] = {}

    def decode_piece(self, prev: int, token: int) -> bytes:
        piece = self.pieces[token]
        if prev == BOS and piece.startswith(b" "):
            piece = piece[1:]
        if piece.startswith(b"<0x") and piece.endswith(b">") and len(piece) == 6:
            return bytes([int(piece[3:5], 16)])
        return piece

    def decode(self, tokens: list[int]) -> str:
        out, prev = b"", BOS
        for token in tokens:
            if token == BOS:
                prev = token
                continue
            out += self.decode_piece(prev, token)
            prev = token
        return out.decode("utf-8", errors="replace")

    def encode(self, text: str, bos: bool = True) -> list[int]:
        """run.c's encoder (a dummy-prefix space, characters with byte fallback = byte + 3, then greedy
        merges of the best-scoring adjacent pair), applied per space-led word: SentencePiece pieces
        never span a space, so this gives the same tokens in linear time over long texts."""
        tokens = [BOS] if bos else []
        for word in re.split(r"(?= )", " " + text):
            if word:
                if word not in self._cache:
                    self._cache[word] = self._encode_word(word)
                tokens.extend(self._cache[word])
        return tokens

    def _encode_word(self, word: str) -> list[int]:
        ids: list[int] = []
        for ch in word:
            b = ch.encode("utf-8")
            ids.extend([self.lookup[b]] if b in self.lookup else [x + 3 for x in b])
        while True:
            best, best_i, best_id = -1e10, -1, -1
            for i in range(len(ids) - 1):
                j = self.lookup.get(self.pieces[ids[i]] + self.pieces[ids[i + 1]])
                if j is not None and self.scores[j] > best:
                    best, best_i, best_id = self.scores[j], i, j
            if best_i < 0:
                return ids
            ids[best_i : best_i + 2] = [best_id]
