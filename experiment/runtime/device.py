"""Where and how the run executes: device, precision, seeding, determinism."""

from __future__ import annotations

import contextlib
import os
import random

import numpy as np
import torch

from experiment.errors import ConfigValueError


def resolve_device(option: str) -> torch.device:
    if option == "cuda" and not torch.cuda.is_available():
        raise ConfigValueError(
            "trainer.device", option, "'auto' or 'cpu' on this machine: CUDA is not available"
        )
    if option == "auto":
        option = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(option)


def autocast_dtype(option: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for `trainer.precision`, or None for plain fp32."""
    if option == "auto":
        return torch.bfloat16 if device.type == "cuda" else None
    return torch.bfloat16 if option == "bf16" else None


def autocast(device: torch.device, dtype: torch.dtype | None):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def seed_everything(seed: int, deterministic: bool = False) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        # cuBLAS needs this workspace setting for deterministic matmuls.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    elif torch.cuda.is_available():
        torch.backends.cudnn.benchmark = True  # fixed shapes: pick the fastest kernels once
    if torch.cuda.is_available():
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


def peak_memory_mb(device: torch.device) -> dict[str, float]:
    """This process's peak host RSS and, on CUDA, the run's peak GPU allocation."""
    import resource
    import sys

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    peak = {"peak_rss_mb": rss / (2**20 if sys.platform == "darwin" else 2**10)}
    if device.type == "cuda":
        peak["peak_gpu_mem_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    return peak


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
