"""Keys added with `+` (or `++`) where the schema has no such key: refused, never dropped.

Hydra adds such a key to a typed node without complaint (a key without `+` that the schema
does not know is refused by Hydra itself), and turning the node into the schema's
dataclass drops it: `+trainer.accumulate_grad_batches=4` would do nothing, silently. Here
every node typed by a schema dataclass is compared with its fields. A node of a user's
own (a dict under `model`, `optimizer`, `task`, a source: no schema) keeps its extra keys,
which go to its `_target_`'s constructor as Hydra passes them.
"""

from __future__ import annotations

import dataclasses

from omegaconf import DictConfig, OmegaConf

from experiment.errors import ConfigError


def refuse_unknown_keys(cfg: DictConfig) -> None:
    """Raise ConfigError naming the first key of `cfg` that its node's schema lacks."""
    found = _first_unknown(cfg, "")
    if found is None:
        return
    key, node_key, known = found
    where = f"'{node_key}'" if node_key else "the top level"
    raise ConfigError(
        f"Unknown key '{key}': {where} has no such key, so it would change nothing. "
        f"Its keys: {', '.join(known)}. "
        "Keys, types and defaults: docs/reference/configuration.md."
    )


def _first_unknown(node: DictConfig, prefix: str) -> tuple[str, str, list[str]] | None:
    kind = OmegaConf.get_type(node)
    if dataclasses.is_dataclass(kind):
        known = [f.name for f in dataclasses.fields(kind)]
        for key in node:
            if key not in known:
                return f"{prefix}{key}", prefix.rstrip("."), known
    for key in node:
        if OmegaConf.is_interpolation(node, key) or OmegaConf.is_missing(node, key):
            continue
        child = node[key]
        if isinstance(child, DictConfig):
            found = _first_unknown(child, f"{prefix}{key}.")
            if found is not None:
                return found
    return None
