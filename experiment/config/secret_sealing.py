"""A Hydra callback that keeps secrets out of every file of a run or a sweep.

Hydra writes a job's `.hydra/` files (config, its own config, the overrides) before the task
runs, and hands a sweep's configs to other processes through files (a torchrun group's
payload, a SLURM job's pickle). Before any of that, the composed config's secrets (see
`experiment.system.secrets`) become `${oc.env:EXPERIMENT_SECRET_<n>}` interpolations of
variables set in this process's environment: whatever resolves the config, here or in a
process started from here, reads the secret; whatever writes it unresolved writes the name.
Log handlers mask secrets in every record.
"""

from __future__ import annotations

from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, ListConfig, OmegaConf, open_dict, read_write

from experiment.system.secrets import redact_logs, seal


def seal_config(cfg: DictConfig) -> None:
    """Replace the secrets of `cfg`, in place, with interpolations of environment variables
    this process sets."""
    before = OmegaConf.to_container(cfg, resolve=False)
    for path, value in _changes(before, seal(before)):
        parent_path, _, last = path.rpartition(".")
        parent = OmegaConf.select(cfg, parent_path, throw_on_resolution_failure=False)
        parent = cfg if not parent_path else parent
        with read_write(parent), open_dict(parent):
            parent[int(last) if isinstance(parent, ListConfig) else last] = value


def _changes(before: Any, after: Any, path: str = "") -> list[tuple[str, Any]]:
    """(dotted path, new value) of each leaf that differs."""
    if isinstance(before, dict):
        items = [(str(key), before[key], after[key]) for key in before]
    elif isinstance(before, list):
        pairs = enumerate(zip(before, after, strict=True))
        items = [(str(index), old, new) for index, (old, new) in pairs]
    else:
        return [(path, after)] if before != after else []
    return [
        change
        for key, old, new in items
        for change in _changes(old, new, f"{path}.{key}" if path else key)
    ]


class SealSecrets(Callback):
    def on_run_start(self, config: DictConfig, **kwargs) -> None:
        seal_config(config)

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        seal_config(config)

    def on_job_start(self, config: DictConfig, **kwargs) -> None:
        redact_logs()  # the job has configured logging by now
