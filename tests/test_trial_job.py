"""A trial's job (trial_job.py) does what Hydra's `run_job` does for the same job config:
the task's config, the output folder and working directory, the `.hydra/` files, the
job's log, env_set, HydraConfig while the task runs and after it."""

from __future__ import annotations

import copy
import logging
import os

import pytest
from hydra import initialize_config_dir
from hydra._internal.callbacks import Callbacks
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import JobStatus, run_job, setup_globals
from hydra.types import HydraContext, RunMode
from omegaconf import OmegaConf, open_dict, read_write

from experiment.sweep.trial_job import run_trial_job
from tests.conftest import CONF


def job_config(tmp_path, extra=()):
    overrides = [
        "hparams_search=optuna",
        "optimizer.lr=0.02",
        f"hydra.sweep.dir={tmp_path / 'sweep'}",
        "++hydra.job.env_set.TRIAL_JOB_TEST=set-by-hydra",
        *extra,
    ]
    loader = GlobalHydra.instance().config_loader()
    master = loader.load_configuration("config", overrides, run_mode=RunMode.MULTIRUN)
    config = loader.load_sweep_config(master, overrides)
    with read_write(config.hydra), open_dict(config.hydra):
        config.hydra.job.id, config.hydra.job.num = "job-3", 3
    return config, HydraContext(config_loader=loader, callbacks=Callbacks(master))


def seen_by(task_cfg) -> dict:
    """What a task sees while it runs."""
    logging.getLogger("trial_job_test").info("the task ran")
    return {
        "cfg": OmegaConf.to_yaml(task_cfg),
        "flags": dict(task_cfg._metadata.flags),
        "types": {k: OmegaConf.get_type(task_cfg, k) for k in task_cfg},
        "hydra_output": HydraConfig.get().runtime.output_dir,
        "hydra_num": HydraConfig.get().job.num,
        "resolved": OmegaConf.select(task_cfg, "trainer.checkpoint_dir"),
        "cwd": os.getcwd(),
        "env": os.environ.get("TRIAL_JOB_TEST"),
        "readonly_hydra": OmegaConf.is_readonly(HydraConfig.get()),
    }


def run_both(tmp_path, task, extra=()):
    """(Hydra's JobReturn, its .hydra files and log), then the same for trial_job."""
    results = []
    for runner in ("hydra", "trial_job"):
        config, context = job_config(tmp_path, extra)
        before = HydraConfig.instance().cfg
        if runner == "hydra":
            ret = run_job(task, config, "hydra.sweep.dir", "hydra.sweep.subdir", context)
        else:
            ret = run_trial_job(context, task, config)
        assert HydraConfig.instance().cfg is before  # restored after the job
        folder = tmp_path / "sweep" / "3"
        files = {p.name: p.read_text() for p in sorted((folder / ".hydra").iterdir())}
        log_text = next(folder.glob("*.log")).read_text()
        results.append((ret, files, log_text, config))
        for path in sorted(folder.rglob("*"), reverse=True):
            path.rmdir() if path.is_dir() else path.unlink()
    return results


@pytest.fixture
def conf_dir():
    setup_globals()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        yield


@pytest.mark.parametrize("chdir", [False, True])
def test_a_trial_job_runs_as_hydras_run_job(tmp_path, conf_dir, chdir):
    cwd = os.getcwd()
    hydra_run, ours = run_both(tmp_path, seen_by, [f"hydra.job.chdir={chdir}"])
    (hydra_ret, hydra_files, hydra_log, hydra_config), (ret, files, log_text, config) = (
        hydra_run,
        ours,
    )
    assert os.getcwd() == cwd
    assert ret.status == hydra_ret.status == JobStatus.COMPLETED
    assert ret.return_value == hydra_ret.return_value
    seen = ret.return_value
    assert seen["hydra_output"] == str(tmp_path / "sweep" / "3")
    assert seen["hydra_num"] == 3 and seen["env"] == "set-by-hydra" and seen["readonly_hydra"]
    assert seen["resolved"].startswith(str(tmp_path / "sweep" / "3"))
    assert seen["cwd"] == (seen["hydra_output"] if chdir else cwd)
    assert seen["flags"] == {"struct": True}
    assert "optimizer" in seen["types"] and "hydra" not in seen["types"]
    assert OmegaConf.to_yaml(ret.cfg) == OmegaConf.to_yaml(hydra_ret.cfg)
    assert ret.overrides == hydra_ret.overrides and "optimizer.lr=0.02" in ret.overrides
    assert (ret.working_dir, ret.task_name) == (hydra_ret.working_dir, hydra_ret.task_name)
    assert ret.hydra_cfg.hydra.runtime.output_dir == hydra_ret.hydra_cfg.hydra.runtime.output_dir
    assert files == hydra_files  # config.yaml, hydra.yaml, overrides.yaml, byte for byte
    assert set(files) == {"config.yaml", "hydra.yaml", "overrides.yaml"}
    assert "the task ran" in log_text and "the task ran" in hydra_log
    # Both leave the job's config as Hydra would: its output folder set, hydra read-only.
    assert OmegaConf.to_yaml(config) == OmegaConf.to_yaml(hydra_config)
    assert OmegaConf.is_readonly(config.hydra)
    assert os.environ.get("TRIAL_JOB_TEST") is None


def test_a_failing_task_is_a_failed_job_as_in_hydra(tmp_path, conf_dir):
    def fails(task_cfg):
        raise ValueError(f"bad lr {task_cfg.optimizer.lr}")

    (hydra_ret, *_), (ret, files, *_) = run_both(tmp_path, fails)
    assert ret.status == hydra_ret.status == JobStatus.FAILED
    assert isinstance(ret._return_value, ValueError)
    assert str(ret._return_value) == str(hydra_ret._return_value) == "bad lr 0.02"
    assert "config.yaml" in files


def test_the_task_gets_a_copy(tmp_path, conf_dir):
    """The task's config is its own: what the task changes is not in the job's config."""
    config, context = job_config(tmp_path)
    original = copy.deepcopy(config)

    def changes(task_cfg):
        task_cfg.optimizer.lr = 0.5
        return task_cfg.optimizer.lr

    ret = run_trial_job(context, changes, config)
    assert ret.return_value == 0.5
    assert config.optimizer.lr == original.optimizer.lr == 0.02


@pytest.mark.parametrize(
    "overrides",
    [
        [],
        ["model=mlp", "optimizer=sgd"],
        ["run_name='1e5'"],
        ["run_name='true'"],
        ["run_name='café'"],
    ],
)
def test_yaml_text_is_omegaconfs(overrides):
    """The run's config.yaml (and the job's .hydra files) on libyaml's emitter: the text
    OmegaConf writes, strings that read as numbers or booleans quoted."""
    from experiment.api import compose
    from experiment.config.run_config import RunConfig, to_yaml

    run = RunConfig.enter(compose(overrides))
    assert run.yaml() == OmegaConf.to_yaml(run.resolved)
    tricky = {"a": "1", "b": "true", "c": "null", "d": [1.5, "2.5", None], "e": "x: y"}
    assert to_yaml(tricky) == OmegaConf.to_yaml(tricky)
