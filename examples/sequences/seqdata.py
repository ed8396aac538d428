"""Variable-length token sequences in dict items, and the collate_fn that pads them.

`motifs` is a dataset source: sequences of 5 to 40 tokens (ids 1..VOCAB-1; 0 pads), each
labelled 1 where the motif "7 then 3" occurs in it, which about one in six does, with
one label in twenty flipped: an imbalanced, noisy binary problem, where AUROC says more
than accuracy. Items are dicts, in the
Hugging Face style: {"tokens": LongTensor(length), "label": int}.
"""

from __future__ import annotations

import torch
from torch.utils.data import Dataset

VOCAB = 20
PAD = 0


class Sequences(Dataset):
    def __init__(self, sequences: list[torch.Tensor], labels: list[int]):
        self.sequences, self.labels = sequences, labels

    def __len__(self) -> int:
        return len(self.sequences)

    def __getitem__(self, index: int) -> dict:
        return {"tokens": self.sequences[index], "label": self.labels[index]}


def _has_motif(tokens: torch.Tensor) -> bool:
    return bool(((tokens[:-1] == 7) & (tokens[1:] == 3)).any())


def motifs(samples: int = 1500, seed: int = 0) -> Sequences:
    """`samples` sequences; the run splits off validation and test itself."""
    generator = torch.Generator().manual_seed(seed)
    sequences, labels = [], []
    for _ in range(samples):
        length = int(torch.randint(5, 41, (1,), generator=generator))
        tokens = torch.randint(1, VOCAB, (length,), generator=generator)
        tokens[tokens == 3] = 4  # the motif appears only where it is put
        if torch.rand(1, generator=generator) < 0.15:
            where = int(torch.randint(0, length - 1, (1,), generator=generator))
            tokens[where], tokens[where + 1] = 7, 3
        flipped = bool(torch.rand(1, generator=generator) < 0.05)
        sequences.append(tokens)
        labels.append(int(_has_motif(tokens) != flipped))
    return Sequences(sequences, labels)


def pad(items: list[dict]) -> dict:
    """A batch of dict items: tokens padded to the longest (N x L), their lengths (N), labels."""
    lengths = torch.tensor([len(item["tokens"]) for item in items])
    tokens = torch.full((len(items), int(lengths.max())), PAD, dtype=torch.long)
    for row, item in enumerate(items):
        tokens[row, : len(item["tokens"])] = item["tokens"]
    labels = torch.tensor([item["label"] for item in items])
    return {"tokens": tokens, "lengths": lengths, "label": labels}
