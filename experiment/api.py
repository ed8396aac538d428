"""The Python API, for notebooks and scripts: compose a config as the CLI would, run it.

    import experiment

    cfg = experiment.compose(["task=regression", "dataset=diabetes"], config_dir="conf")
    value = experiment.run(cfg)  # trains, tracks in MLflow as the CLI does, returns the objective

`config_dir` adds a folder of the user's own option files (model/, dataset/, ...) to
every group, as `--config-dir` does on the command line.
"""

from __future__ import annotations

import datetime
from pathlib import Path

from omegaconf import DictConfig


def config_dir_of_project() -> Path:
    """The project's conf/: inside the installed package (a wheel), else at the top of
    the checkout (an editable install, or the checkout itself)."""
    here = Path(__file__).resolve().parent
    packaged = here / "conf"
    return packaged if (packaged / "config.yaml").is_file() else here.parent / "conf"


def compose(
    overrides: list[str] | tuple[str, ...] = (), config_dir: str | None = None
) -> DictConfig:
    """The composed, checked config of `overrides` (as on the command line), with the
    option files of `config_dir` added to every group. Checkpoints go to
    outputs/<date>/<time>/checkpoints unless `trainer.checkpoint_dir` is given (there is
    no Hydra run folder outside the CLI)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    import experiment.train  # noqa: F401  the schemas in Hydra's ConfigStore
    from experiment.run_config import RunConfig

    overrides = list(overrides)
    if config_dir is not None:
        folder = Path(config_dir).expanduser().resolve()
        if not folder.is_dir():
            from experiment.errors import ConfigError

            raise ConfigError(f"config_dir {folder} is not a folder of option files")
        overrides.append(f"hydra.searchpath=[file://{folder}]")
    if not any(o.split("=", 1)[0].lstrip("+") == "trainer.checkpoint_dir" for o in overrides):
        stamp = datetime.datetime.now().strftime("%Y-%m-%d/%H-%M-%S-%f")
        overrides.append(f"trainer.checkpoint_dir={Path('outputs', stamp, 'checkpoints')}")
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from experiment.errors import ConfigError

    try:
        with initialize_config_dir(config_dir=str(config_dir_of_project()), version_base="1.3"):
            cfg = hydra_compose(config_name="config", overrides=overrides)
    except (HydraException, OmegaConfBaseException) as err:  # a wrong override, say
        raise ConfigError(str(err).strip().splitlines()[0]) from err
    RunConfig.enter(cfg)  # refused here, as on the command line, if it cannot run
    return cfg


def run(cfg: DictConfig) -> float | list[float]:
    """Train and test `cfg` (from `compose`), tracked as the CLI tracks a run; the value of
    `optimized_metric` (a list for several objectives)."""
    from experiment.train import run as run_config

    return run_config(cfg)
