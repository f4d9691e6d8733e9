"""Building blocks shared by CMATH and the symmetric (SDT-style) baseline.

Batches are batch-major: features (B, T, D), `mask` (B, T) True for real utterances. Padded positions
are excluded as attention keys and from every loss; their outputs are zeroed so nothing downstream
can read them.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


class DialoguePositions(nn.Module):
    """Sinusoidal position + speaker embedding added to utterance features (SDT's PositionalEncoding)."""

    def __init__(self, hidden: int, num_speakers: int, max_len: int = 512) -> None:
        super().__init__()
        position = torch.arange(max_len).unsqueeze(1).float()
        div = torch.exp(torch.arange(0, hidden, 2).float() * (-math.log(10000.0) / hidden))
        table = torch.zeros(max_len, hidden)
        table[:, 0::2] = torch.sin(position * div)
        table[:, 1::2] = torch.cos(position * div[: hidden // 2])
        self.register_buffer("table", table, persistent=False)
        self.num_speakers = num_speakers
        self.speaker = nn.Embedding(num_speakers + 1, hidden, padding_idx=num_speakers)  # last row = padding

    def forward(self, x: Tensor, speakers: Tensor, mask: Tensor) -> Tensor:
        if x.shape[1] > self.table.shape[0]:
            raise ValueError(f"dialogue of {x.shape[1]} utterances exceeds max_len {self.table.shape[0]}")
        speakers = speakers.masked_fill(~mask, self.num_speakers)
        return x + self.table[: x.shape[1]] + self.speaker(speakers)


class AttentionBlock(nn.Module):
    """Pre-norm attention + feed-forward: query attends to `context` (itself for intra-modal blocks)."""

    def __init__(self, hidden: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.norm_q = nn.LayerNorm(hidden)
        self.norm_kv = nn.LayerNorm(hidden)
        self.attention = nn.MultiheadAttention(hidden, heads, dropout=dropout, batch_first=True)
        self.norm_ff = nn.LayerNorm(hidden)
        self.ff = nn.Sequential(nn.Linear(hidden, hidden * 2), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden * 2, hidden))
        self.dropout = nn.Dropout(dropout)

    def forward(self, query: Tensor, context: Tensor, mask: Tensor) -> Tensor:
        q, kv = self.norm_q(query), self.norm_kv(context)
        attended, _ = self.attention(q, kv, kv, key_padding_mask=~mask, need_weights=False)
        x = query + self.dropout(attended)
        x = x + self.dropout(self.ff(self.norm_ff(x)))
        return x * mask.unsqueeze(-1)


class Stack(nn.Module):
    """`layers` AttentionBlocks with the same context (self-attention when context is the query)."""

    def __init__(self, hidden: int, heads: int, dropout: float, layers: int) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(AttentionBlock(hidden, heads, dropout) for _ in range(layers))

    def forward(self, query: Tensor, context: Tensor | None, mask: Tensor) -> Tensor:
        for block in self.blocks:
            query = block(query, query if context is None else context, mask)
        return query


class Head(nn.Module):
    """Emotion classifier on one representation (SDT: ReLU, dropout, linear)."""

    def __init__(self, hidden: int, num_classes: int, dropout: float) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, num_classes))

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)
