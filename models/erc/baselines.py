"""Baselines run by the same task: a BiGRU over the dialogue with a speaker embedding.

The BiGRU is the text-only baseline CMATH must beat (frozen MiniLM features, speaker embedding): utterance
features (modalities concatenated) are projected, a speaker embedding is added, a bidirectional GRU
reads the dialogue, and a linear layer classifies each utterance. Padded utterances are packed away
so they never enter the recurrence. (The text-only classifier and the SDT-style symmetric fusion are
configurations of `models.erc.network.CMATH`: `modalities: [text]` with every CMATH part off, and
`symmetric: true`.)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from models.erc.losses import masked_cross_entropy
from models.erc.network import ERCOutput


class BiGRU(nn.Module):
    def __init__(
        self,
        dims: Mapping[str, int],
        num_classes: int,
        num_speakers: int,
        modalities: Sequence[str] | None = None,
        hidden: int = 128,
        layers: int = 1,
        dropout: float = 0.3,
    ) -> None:
        super().__init__()
        self.modalities = list(modalities or dims)
        self.project = nn.Sequential(nn.Dropout(dropout), nn.Linear(sum(dims[m] for m in self.modalities), hidden), nn.Tanh())
        self.speaker = nn.Embedding(num_speakers, hidden)
        self.gru = nn.GRU(hidden, hidden, num_layers=layers, batch_first=True, bidirectional=True)
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(2 * hidden, num_classes))
        self.loss_weights = {"ce": 1.0}

    def forward(self, features: Mapping[str, Tensor], mask: Tensor, speakers: Tensor) -> ERCOutput:
        x = self.project(torch.cat([features[m] for m in self.modalities], -1)) + self.speaker(speakers.masked_fill(~mask, 0))
        lengths = mask.sum(1).cpu()
        packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
        out, _ = self.gru(packed)
        out, _ = pad_packed_sequence(out, batch_first=True, total_length=x.shape[1])
        return ERCOutput(logits=self.head(out))

    def loss_terms(self, out: ERCOutput, labels: Tensor, mask: Tensor, class_weight: Tensor | None = None) -> dict[str, Tensor]:
        return {"ce": masked_cross_entropy(out.logits, labels, mask, class_weight)}
