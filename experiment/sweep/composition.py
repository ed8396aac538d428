"""A trial's job config, composed without recomposing the whole config each time.

Hydra's `load_sweep_config` composes every job from scratch: the defaults list, every
option file, the schema merge (a tenth of a second or more per trial, in the sweep's own
process, while a worker waits for its next trial). A trial differs from the sweep's
fixed part by the values it sampled. So the fixed part (and any config-group choices a
trial makes, e.g. `model=mlp`) is composed by Hydra once and kept; a trial's job is a copy
of it with the sampled values applied by Hydra's own override code and recorded as Hydra
records them (`hydra.overrides.task`, `hydra.job.override_dirname`). Anything else (a new
key `+k=v`, a deletion, a package) goes through Hydra's full composition, as before.
`tests/test_composition.py` checks that both give the same job config.

Hydra's internals used here, beyond its public API: `ConfigLoaderImpl.
_apply_overrides_to_config` (the override semantics: types, interpolations, struct
checks) and `get_overrides_dirname` (the job's override_dirname).
"""

import copy

from hydra._internal.config_loader_impl import ConfigLoaderImpl, get_overrides_dirname
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import OverrideType
from omegaconf import DictConfig, OmegaConf, open_dict

KEPT = 16  # compositions kept: one per combination of config-group choices


class TrialComposer:
    """Job configs of a sweep's trials: `compose(overrides)` equals Hydra's
    `load_sweep_config(master_config, overrides)`."""

    def __init__(self, config_loader, master_config: DictConfig, fixed: list[str]):
        self.loader, self.master, self.fixed = config_loader, master_config, list(fixed)
        self.parser = OverridesParser.create()
        self.kept: dict[tuple[str, ...], DictConfig] = {}

    def full(self, overrides: list[str]) -> DictConfig:
        return self.loader.load_sweep_config(self.master, overrides)

    def compose(self, overrides: list[str]) -> DictConfig:
        if overrides[: len(self.fixed)] != self.fixed:
            return self.full(overrides)
        sampled = self.parser.parse_overrides(overrides[len(self.fixed) :])
        if not all(_plain(o) for o in sampled):
            return self.full(overrides)
        choices = self.base([]).hydra.runtime.choices
        groups = [o.input_line for o in sampled if _is_group(o, choices)]
        values = [o for o in sampled if not _is_group(o, choices)]
        base_config = self.base(groups)
        if any(_absent(base_config, o.key_or_group) for o in values):
            return self.full(overrides)  # Hydra's own error for a key that is not there
        cfg = copy.deepcopy(base_config)
        ConfigLoaderImpl._apply_overrides_to_config(values, cfg)
        with open_dict(cfg.hydra):
            task = list(cfg.hydra.overrides.task)[: -len(groups) or None]
            cfg.hydra.overrides.task = [*task, *(o.input_line for o in sampled)]
            dirname = cfg.hydra.job.config.override_dirname
            cfg.hydra.job.override_dirname = get_overrides_dirname(
                overrides=self.parser.parse_overrides(list(cfg.hydra.overrides.task)),
                kv_sep=dirname.kv_sep,
                item_sep=dirname.item_sep,
                exclude_keys=dirname.exclude_keys,
            )
        return cfg

    def base(self, group_overrides: list[str]) -> DictConfig:
        """Hydra's composition of the fixed overrides and `group_overrides`, kept."""
        key = tuple(group_overrides)
        if key not in self.kept:
            if len(self.kept) >= KEPT:
                self.kept.pop(next(iter(self.kept)))
            self.kept[key] = self.full([*self.fixed, *group_overrides])
        return self.kept[key]


def _plain(override) -> bool:
    """`key=value` or `group=option` of the app's config: no package, sweep, addition,
    deletion, nor a `hydra.` key."""
    return (
        override.type == OverrideType.CHANGE
        and override.package is None
        and not override.is_sweep_override()
        and not override.is_hydra_override()
    )


def _is_group(override, choices) -> bool:
    return "/" in override.key_or_group or override.key_or_group in choices


_NOT_THERE = object()


def _absent(cfg: DictConfig, key: str) -> bool:
    """No such key. Looked up without resolving the value: one that resolves only inside
    a job (`${hydra:runtime.output_dir}`) is there."""
    parent, _, leaf = key.rpartition(".")
    node = OmegaConf.select(cfg, parent, default=_NOT_THERE) if parent else cfg
    return not isinstance(node, DictConfig) or leaf not in node
