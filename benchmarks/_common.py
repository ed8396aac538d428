"""Helpers shared by the benchmark scripts: run the real CLI, read the real stores."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def machine() -> str:
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, {gpu}"


TRAIN = ["-m", "experiment.train"]


def run_cli(args: list[str], cwd: Path, program: list[str] = TRAIN) -> tuple[float, str]:
    """Run `python -m experiment.train ARGS` (or another module: `program`); return
    (wall seconds, output)."""
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, *program, *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"command failed: {' '.join(args)}\n{proc.stdout}\n{proc.stderr}")
    return seconds, proc.stdout + proc.stderr


def store_args(folder: Path) -> list[str]:
    return [
        f"tracking.uri=sqlite:///{folder / 'mlflow.db'}",
        f"tracking.artifact_root={folder / 'artifacts'}",
    ]
