"""The project's Optuna sweeper for Hydra: `hydra/sweeper=experiment_optuna`."""
