"""Hydra-configured PyTorch experiments with Optuna sweeps tracked in MLflow."""

__version__ = "0.1.0"
