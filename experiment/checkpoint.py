"""Checkpoints: model, optimizer, scheduler, epoch and config in one file.

Written atomically (temp file + rename), so a run killed mid-save leaves the previous
checkpoint intact, and read with `weights_only=True`, so loading one runs no pickled code.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

LAST, BEST = "last.pt", "best.pt"


def save_checkpoint(path: Path, **state) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: Path, map_location="cpu") -> dict:
    return torch.load(path, map_location=map_location, weights_only=True)
