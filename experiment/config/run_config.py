"""Where the config enters the code, once: the composed DictConfig becomes the schema's
own objects, is checked, and what follows from it is worked out here.

`RunConfig.enter(cfg)` runs first in every run, before any data is loaded: a missing
value, or a value its field does not allow (`experiment.config.allowed`), is one message naming
the key, the value and what is allowed. Past it the code reads typed attributes; a
DictConfig is made again only by `hydra.utils.instantiate`, for a `_target_` node.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf._utils import get_omega_conf_dumper
from omegaconf.errors import InterpolationResolutionError

from experiment.config.allowed import check_fields
from experiment.config.rules import check_rules
from experiment.config.schema import Config
from experiment.config.unknown_keys import refuse_unknown_keys
from experiment.errors import ConfigError, ConfigValueError
from experiment.system.secrets import redact, redact_tree

# Objectives a run measures besides its validation metrics.
RUN_MEASURES = {
    "model/params": "trainable parameters",
    "model/latency_ms": "inference time per image on the training device",
    "train_time_s": "training time",
}
# Keys that may differ between a run and its resumption: where things go, how to resume.
_NOT_IDENTITY = ("checkpoint_dir", "resume", "resume_dir")


@dataclass(frozen=True)
class Objective:
    metric: str
    direction: str  # maximize | minimize

    @property
    def maximize(self) -> bool:
        return self.direction == "maximize"


@dataclass
class RunConfig:
    """A run's configuration as typed objects, with what is derived from it."""

    config: Config  # dataset, model, ... as the schema's dataclasses (a user's own: dicts)
    objectives: tuple[Objective, ...]  # the first picks the best epoch
    resolved: dict = field(repr=False)  # plain values, secrets masked: params, config.yaml
    fingerprint: str = ""  # what makes two runs the same run (resume matches on it)

    @classmethod
    def enter(cls, cfg: DictConfig | Config) -> RunConfig:
        """The typed, checked config of a composed one; RunConfig.enter(RunConfig) is
        itself (a config entered once is not entered again)."""
        if isinstance(cfg, RunConfig):
            return cfg
        try:
            config = _typed(cfg)
        except InterpolationResolutionError as err:  # ${missing.key}, ${oc.env:UNSET}
            key, why = unresolvable(cfg) or (err.full_key, str(err).splitlines()[0])
            raise ConfigError(
                f"Cannot resolve the value of '{key}': {why}. Fix the interpolation (for "
                "${oc.env:NAME}, set the variable or give a default: ${oc.env:NAME,default})."
            ) from None
        for name in (
            "trainer",
            "regularization",
            "dataset",
            "model",
            "optimizer",
            "scheduler",
            "task",
            "tracking",
        ):
            check_fields(getattr(config, name), name)
        check_rules(config)
        objectives = _objectives(config.optimized_metric, config.optimized_direction)
        # Here, not at the module's top: the sweeper's trial job imports this module for
        # its YAML writer, and a sweep of a task of one's own does not need torch.
        from experiment.config import fine_tuning

        fine_tuning.check_fine_tuning(config.model)
        fine_tuning.match_data_to_model(config.dataset, config.model)  # normalization=model
        # Secrets masked: what is written of a run (params, config.yaml, checkpoints) is
        # made from `resolved`, and a rotated password does not make another run.
        resolved = redact_tree(plain(config))
        return cls(config, objectives, resolved, fingerprint(resolved))

    # The groups, typed; `run.trainer.epochs` reads as the config does.
    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name == "config":
            raise AttributeError(name)
        return getattr(self.config, name)

    @property
    def monitor(self) -> Objective:
        return self.objectives[0]

    @property
    def several_objectives(self) -> bool:
        return not isinstance(self.config.optimized_metric, str)

    def wants(self, measure: str) -> bool:
        return any(o.metric == measure for o in self.objectives)

    def params(self) -> dict[str, str]:
        """Every leaf of the resolved config as a string MLflow param, secrets masked."""
        return {key: str(value) for key, value in flatten(self.resolved).items()}

    def yaml(self) -> str:
        return to_yaml(self.resolved)


_REFERENCE = re.compile(r"^\$\{[\w.]+\}$")  # ${trainer.epochs}: the value of another key


def unresolvable(cfg: DictConfig) -> tuple[str, str] | None:
    """(key, why) of the interpolation that cannot be resolved, named where it is written
    (`trainer.epochs=${missing.key}`), not where a key referring to it is read."""
    failing = []
    for key, raw in flatten(OmegaConf.to_container(cfg, resolve=False)).items():
        if not (isinstance(raw, str) and "${" in raw):
            continue
        try:
            OmegaConf.select(cfg, key, throw_on_resolution_failure=True)
        except InterpolationResolutionError as err:
            failing.append((key, raw, str(err).splitlines()[0]))
    keys = {f[0] for f in failing}
    # One that only refers to another failing key (T_max: ${trainer.epochs}) is not it.
    own = [f for f in failing if not (_REFERENCE.match(f[1]) and f[1][2:-1] in keys)] or failing
    return (own[0][0], own[0][2]) if own else None


def _typed(cfg: DictConfig | Config) -> Config:
    """The schema's objects of a composed config: every value set, no key it lacks."""
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        raise ConfigError(
            f"Missing value for '{missing[0]}': it has no default. "
            f"Set it on the command line: {missing[0]}=<value>"
        )
    if isinstance(cfg, DictConfig):  # a `+key` the schema lacks: to_object would drop it
        refuse_unknown_keys(cfg)
    return OmegaConf.to_object(cfg)


def _yaml_dumper():
    # OmegaConf's dumper quotes strings that would read back as numbers or booleans; on
    # libyaml's emitter where PyYAML has one, the same text in a third of the time (a
    # sweep writes a few per trial: the run's config, the job's `.hydra/` files).
    quoting = get_omega_conf_dumper()
    if not getattr(yaml, "__with_libyaml__", False):
        return quoting

    class Dumper(yaml.CDumper):
        pass

    Dumper.add_representer(str, quoting.str_representer)
    return Dumper


_YAML_DUMPER = _yaml_dumper()


def to_yaml(container: dict | list) -> str:
    """`OmegaConf.to_yaml(container)` for a container of plain values (no config nodes,
    enums as their names)."""
    return yaml.dump(
        container,
        default_flow_style=False,
        allow_unicode=True,
        sort_keys=False,
        Dumper=_YAML_DUMPER,
    )


def plain(value: Any) -> Any:
    """Dataclasses, enums and containers as plain dicts, strings, lists and numbers."""
    if dataclasses.is_dataclass(value):
        return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    return value


def flatten(container: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts to {'a.b.c': leaf}; lists stay whole leaves."""
    if not isinstance(container, dict):
        return {prefix: container}
    flat: dict[str, Any] = {}
    for key, value in container.items():
        nested = isinstance(value, dict)
        flat.update(flatten(value, f"{prefix}{key}." if nested else f"{prefix}{key}"))
    return flat


def fingerprint(resolved: dict) -> str:
    """What makes two runs the same run: the resolved config minus paths and resume keys."""
    identity = {k: v for k, v in resolved.items() if k not in ("hydra", "run_name")}
    identity["trainer"] = {
        k: v for k, v in identity.get("trainer", {}).items() if k not in _NOT_IDENTITY
    }
    text = json.dumps(identity, sort_keys=True, default=str)
    return hashlib.sha1(text.encode()).hexdigest()


def overrides_yaml(overrides: list[str]) -> str:
    return to_yaml([redact(str(o)) for o in overrides])


def as_node(value: Any) -> Any:
    """A config node as a plain dict (of a dataclass, or a copy of a user's dict)."""
    return plain(value) if dataclasses.is_dataclass(value) else dict(value)


def _as_list(value) -> list:
    """`optimized_metric` and `optimized_direction` are one string or a list of them."""
    return [value] if isinstance(value, str) else list(value)


def _objectives(metric, direction) -> tuple[Objective, ...]:
    """(metric, direction) for each objective of `optimized_metric`, checked."""
    metrics, directions = _as_list(metric), _as_list(direction)
    if not metrics:
        raise ConfigValueError(
            "optimized_metric", metrics, "a metric name, or a non-empty list of them"
        )
    if len(metrics) != len(directions):
        raise ConfigValueError(
            "optimized_direction", directions, f"one direction per optimized metric ({metrics})"
        )
    for value in directions:
        if value not in ("maximize", "minimize"):
            raise ConfigValueError("optimized_direction", value, "maximize or minimize")
    if not str(metrics[0]).startswith("val/"):
        raise ConfigValueError(
            "optimized_metric",
            metrics[0],
            "a validation metric such as 'val/acc' or 'val/loss' "
            "(the test split is never used for selection)",
        )
    for value in metrics[1:]:
        if not str(value).startswith("val/") and value not in RUN_MEASURES:
            allowed = ", ".join(RUN_MEASURES)
            raise ConfigValueError(
                "optimized_metric", value, f"a validation metric (val/...) or one of {allowed}"
            )
    return tuple(Objective(str(m), str(d)) for m, d in zip(metrics, directions, strict=True))
