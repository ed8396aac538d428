"""A trial's Hydra job: what Hydra's `run_job` does, without its copies of the config.

Hydra's `run_job` deep-copies the job's config four times (the `hydra` node twice for
`HydraConfig`, the whole config for the task, the `hydra` node again for
`.hydra/hydra.yaml`): tens of milliseconds of every trial in a sweep whose trials take a
second. A trial's job config is a copy made for that trial alone (composition.py, or
pickled to its worker), so here `HydraConfig` holds it as it is (`HydraConfig.get()` is
its `hydra` node, read-only as Hydra makes it, so `${hydra:...}` resolves) and only the
task's part is copied. Everything else is Hydra's job: the output folder, the working
directory (`hydra.job.chdir`), the job's logging, the `.hydra/` files, `env_set`, the
callbacks and the JobReturn. `tests/test_trial_job.py` checks it against `run_job`.
"""

# No `from __future__ import annotations`: Hydra's plugin scan executes this module.
import copy
import os
from pathlib import Path

from hydra import version
from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import (
    JobReturn,
    JobRuntime,
    JobStatus,
    _flush_loggers,
    configure_log,
    env_override,
)
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from experiment.config.run_config import to_yaml as yaml_of


def task_part(config: DictConfig) -> DictConfig:
    """A copy of `config` without its `hydra` node: Hydra's copy-then-delete, with only
    the task's nodes copied (flags, types and key order as in Hydra's)."""
    content = config.__dict__["_content"]
    config.__dict__["_content"] = {key: node for key, node in content.items() if key != "hydra"}
    try:
        return copy.deepcopy(config)
    finally:
        config.__dict__["_content"] = content  # the very dict it had: nothing changed


def to_yaml(node) -> str:
    """`OmegaConf.to_yaml(node)`: what Hydra writes into `.hydra/`."""
    return yaml_of(OmegaConf.to_container(node, enum_to_str=True))


def hydra_yaml(config: DictConfig) -> str:
    """`.hydra/hydra.yaml` as Hydra writes it (the `hydra` node alone, unresolved)."""
    return yaml_of({"hydra": OmegaConf.to_container(config.hydra, enum_to_str=True)})


def write_job_record(config: DictConfig, task_config: DictConfig) -> None:
    """The job's `.hydra/` folder: config.yaml, hydra.yaml, overrides.yaml."""
    record = Path(config.hydra.runtime.output_dir) / str(config.hydra.output_subdir)
    record.mkdir(parents=True, exist_ok=True)
    for name, text in (
        ("config.yaml", to_yaml(task_config)),
        ("hydra.yaml", hydra_yaml(config)),
        ("overrides.yaml", to_yaml(config.hydra.overrides.task)),
    ):
        (record / name).write_text(text, encoding="utf-8")


def run_trial_job(hydra_context, task_function, config: DictConfig) -> JobReturn:
    """Run `task_function` as Hydra's `run_job(..., job_dir_key="hydra.sweep.dir",
    job_subdir_key="hydra.sweep.subdir")` would. `config` is the trial's own: like
    `run_job`, this sets its `hydra.runtime.output_dir` and makes its `hydra` node
    read-only."""
    callbacks = hydra_context.callbacks
    hydra_config = HydraConfig.instance()
    previous, old_cwd = hydra_config.cfg, os.getcwd()
    OmegaConf.set_readonly(config.hydra, True)
    hydra_config.cfg = config
    sweep_dir = str(OmegaConf.select(config, "hydra.sweep.dir"))
    output_dir = os.path.join(sweep_dir, str(OmegaConf.select(config, "hydra.sweep.subdir")))
    with read_write(config.hydra.runtime), open_dict(config.hydra.runtime):
        config.hydra.runtime.output_dir = os.path.abspath(output_dir)
    chdir = False
    try:
        ret = JobReturn()
        ret.cfg = task_part(config)
        ret.hydra_cfg = config  # Hydra's is a copy with `hydra` alone; `.hydra` reads alike
        ret.overrides = OmegaConf.to_container(config.hydra.overrides.task)
        Path(output_dir).mkdir(parents=True, exist_ok=True)
        chdir = config.hydra.job.chdir
        if chdir is None:  # Hydra's default: stay, from version_base 1.2 on
            chdir = not version.base_at_least("1.2")
        if chdir:
            os.chdir(output_dir)
        ret.working_dir = os.getcwd()
        configure_log(config.hydra.job_logging, config.hydra.verbose)
        if config.hydra.output_subdir is not None:
            write_job_record(config, ret.cfg)
        with env_override(config.hydra.job.env_set):
            callbacks.on_job_start(config=config, task_function=task_function)
            try:
                ret.return_value = task_function(ret.cfg)
                ret.status = JobStatus.COMPLETED
            except Exception as err:
                ret.return_value = err
                ret.status = JobStatus.FAILED
        ret.task_name = JobRuntime.instance().get("name")
        _flush_loggers()
        callbacks.on_job_end(config=config, job_return=ret)
        return ret
    finally:
        hydra_config.cfg = previous
        if chdir:
            os.chdir(old_cwd)
