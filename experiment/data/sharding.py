"""How a split is divided into batches and between ranks: one rule for both data paths.

With several ranks, `batch_size` is the global batch. Every rank orders the epoch the same
way (same seed) and takes every world_size-th sample of it (`rank_share`), so global
batch i is exactly batch i of a single process, split between the ranks, and each sample
is seen once per epoch: nothing is padded with repeats. A last batch too small to give
every rank a sample joins the one before it (DDP steps together: no rank may sit out a
step), and so does a last training batch of one sample (batch norm cannot train on one).
Validation and test are split between the ranks the same way, without padding, so sums
added across ranks count every sample once.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
from torch.utils.data import Sampler

from experiment.runtime.distributed import SINGLE, Ranks


def batch_count(samples: int, batch_size: int, ranks: Ranks, training: bool) -> int:
    """Global batches per epoch, with a too-small last batch joined to the one before."""
    batches = math.ceil(samples / batch_size)
    tail = samples % batch_size
    smallest = max(ranks.world_size, 2 if training else 1)
    return batches - 1 if batches > 1 and 0 < tail < smallest else batches


def rank_share(items, ranks: Ranks):
    """This rank's share of an ordered sequence (a tensor, a range): positions rank,
    rank + world_size, ..."""
    return items if ranks.world_size == 1 else items[ranks.rank :: ranks.world_size]


def batch_slices(share: int, per_rank: int, batches: int) -> Iterator[slice]:
    """The slices of a rank's share of `share` samples that make its `batches` batches
    (the last one takes what is left)."""
    for index in range(batches):
        start = index * per_rank
        yield slice(start, start + per_rank if index < batches - 1 else share)


class RankBatchSampler(Sampler[list[int]]):
    """This rank's batches of dataset indices, by the rule above: the DataLoader path's
    equal of `DeviceLoader`. Shuffled by `generator` (reseeded per epoch by the loader),
    as a DataLoader's own shuffling is, so a single process sees the same order."""

    def __init__(
        self,
        samples: int,
        batch_size: int,
        *,
        shuffle: bool,
        generator: torch.Generator | None = None,
        ranks: Ranks = SINGLE,
    ):
        self.samples, self.batch_size, self.shuffle = samples, batch_size, shuffle
        self.generator, self.ranks = generator, ranks

    def __len__(self) -> int:
        return batch_count(self.samples, self.batch_size, self.ranks, self.shuffle)

    def __iter__(self) -> Iterator[list[int]]:
        if self.shuffle:
            order = torch.randperm(self.samples, generator=self.generator)
        else:
            order = torch.arange(self.samples)
        share = rank_share(order, self.ranks).tolist()
        per_rank = self.batch_size // self.ranks.world_size
        for part in batch_slices(len(share), per_rank, len(self)):
            yield share[part]
