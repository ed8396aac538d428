"""A GRU over padded token sequences, taking (tokens, lengths) as keyword arguments."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence


class GRUClassifier(nn.Module):
    def __init__(self, num_classes: int, vocab: int = 20, embed: int = 16, hidden: int = 32):
        super().__init__()
        self.embed = nn.Embedding(vocab, embed, padding_idx=0)
        self.gru = nn.GRU(embed, hidden, batch_first=True)
        self.head = nn.Linear(hidden, num_classes)

    def forward(self, tokens: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        # Packed: the padding never reaches the GRU (lengths live on the CPU for packing).
        packed = pack_padded_sequence(
            self.embed(tokens), lengths.cpu(), batch_first=True, enforce_sorted=False
        )
        _, last = self.gru(packed)
        return self.head(last[-1])
