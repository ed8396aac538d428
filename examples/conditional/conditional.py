"""A conditional search space: `momentum` exists only for the sgd optimizer.

`configure` is the sweeper's `custom_search_space`: it is called with the app's config and
the Optuna trial after the `params` are drawn, and what it suggests reaches the job as
overrides, like the params themselves.
"""

import hydra
from omegaconf import DictConfig


def configure(cfg: DictConfig, trial) -> None:
    if trial.params["optimizer"] == "sgd":
        trial.suggest_float("momentum", 0.0, 0.99)


@hydra.main(version_base="1.3", config_path=".", config_name="config")
def objective(cfg: DictConfig) -> float:
    # A stand-in for a validation loss: best near lr 0.01 and, for sgd, momentum 0.9.
    loss = (cfg.lr - 0.01) ** 2 * 1e4
    if cfg.optimizer == "sgd":
        loss += (cfg.momentum - 0.9) ** 2
    else:
        assert cfg.momentum is None, "momentum is an sgd parameter"
        loss += 0.05
    return loss


if __name__ == "__main__":
    objective()
