"""Hydra-configured PyTorch experiments with Optuna sweeps tracked in MLflow."""

__version__ = "0.1.0"
__all__ = ["compose", "run"]


def __getattr__(name: str):
    """`experiment.compose` and `experiment.run` (experiment/api.py), imported on first
    use: `import experiment` alone stays light (torch is not imported)."""
    if name in __all__:
        from experiment import api

        return getattr(api, name)
    raise AttributeError(f"module 'experiment' has no attribute {name!r}")
