"""Checkpoints: model, optimizer, scheduler, loop state and config in one file.

Written atomically (temp file + rename), so a run killed mid-save leaves the previous
checkpoint intact, and read with `weights_only=True`, so loading one runs no pickled code.
A file that is not such a checkpoint is refused with a `CheckpointError` that names it.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import torch

from experiment.errors import CheckpointError

LAST, BEST = "last.pt", "best.pt"
# What every checkpoint of this project holds (see callbacks.Checkpointer).
KEYS = ("model", "optimizer", "scheduler", "epoch", "best_value", "best_epoch", "history")


def save_checkpoint(path: Path, **state) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: Path, map_location="cpu") -> dict:
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except OSError as err:
        raise CheckpointError(path, f"it cannot be read ({err.strerror or err})") from None
    except pickle.UnpicklingError as err:
        # PyTorch's own message suggests weights_only=False, i.e. running the file's code:
        # say what the file is instead.
        raise CheckpointError(path, _why_unpickling_failed(err)) from None
    except Exception as err:  # arbitrary bytes fail the unpickler in arbitrary ways
        detail = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(
            path, f"it is empty, truncated or not a PyTorch checkpoint file ({detail})"
        ) from None
    missing = [k for k in KEYS if k not in state] if isinstance(state, dict) else list(KEYS)
    if missing:
        raise CheckpointError(
            path, f"it is a PyTorch file but not a checkpoint of a run: it lacks {missing}"
        )
    return state


def _why_unpickling_failed(err: pickle.UnpicklingError) -> str:
    text = str(err)
    if "Unsupported global" in text:  # a class or function to import and call
        return (
            "it holds pickled Python objects, which loading would run as code; it is "
            "refused (checkpoints of a run hold only tensors and plain values)"
        )
    return "it is not a PyTorch checkpoint file"
