"""The project's config folder, a user's project beside it, and composition as the
command line composes (for the Python API)."""

from __future__ import annotations

import datetime
import importlib
import os
import sys
from pathlib import Path

import yaml
from omegaconf import DictConfig

from experiment.config.yaml_check import error_line


def config_dir_of_project() -> Path:
    """The project's conf/: inside the installed package (a wheel), else at the top of
    the checkout (an editable install, or the checkout itself)."""
    package = Path(__file__).resolve().parents[1]
    packaged = package / "conf"
    return packaged if (packaged / "config.yaml").is_file() else package.parent / "conf"


def importable_from_here() -> None:
    """Modules in the folder the command runs from are importable by `_target_` (a user's
    own models and datasets), for the console script as for `python -m`."""
    here = os.getcwd()
    if here not in sys.path and "" not in sys.path:
        sys.path.insert(0, here)


def compose(
    overrides: list[str] | tuple[str, ...] = (), config_dir: str | None = None
) -> DictConfig:
    """The composed, checked config of `overrides` (as on the command line), with the
    option files of `config_dir` added to every group. Checkpoints go to
    outputs/<date>/<time>/checkpoints unless `trainer.checkpoint_dir` is given (there is
    no Hydra run folder outside the CLI)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from experiment.config.run_config import RunConfig
    from experiment.config.schema import register_configs

    register_configs()  # the schemas in Hydra's ConfigStore

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
    except yaml.YAMLError as err:  # a config file that is not YAML: where and what
        raise ConfigError(error_line(err)) from err
    RunConfig.enter(cfg)  # refused here, as on the command line, if it cannot run
    return cfg


def import_dotted(path: str):
    """The object at a dotted path (`package.module.name`, `module.Class.method`), for a
    config value that names one; ImportError with one line where there is none. Unlike
    hydra.utils.get_object, it logs nothing: the caller's message is the one line."""
    parts = path.split(".")
    for cut in range(len(parts) - 1, 0, -1):
        module = ".".join(parts[:cut])
        try:
            found = importlib.import_module(module)
        except ModuleNotFoundError as err:
            if err.name and module.startswith(err.name):  # not this module: a shorter one?
                continue
            raise ImportError(f"{module} cannot be imported: {err}") from None
        try:
            for name in parts[cut:]:
                found = getattr(found, name)
        except AttributeError:
            raise ImportError(f"module {module} has no {'.'.join(parts[cut:])}") from None
        return found
    raise ImportError(f"no module named {parts[0]!r} (is it importable from here?)")
