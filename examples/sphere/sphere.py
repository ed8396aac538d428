"""The sphere function x^2 + y^2, minimized by a TPE search (the official plugin's first
example, unchanged but for the sweeper's name)."""

import hydra
from omegaconf import DictConfig


@hydra.main(version_base="1.3", config_path=".", config_name="config")
def sphere(cfg: DictConfig) -> float:
    return float(cfg.x**2 + cfg.y**2)


if __name__ == "__main__":
    sphere()
