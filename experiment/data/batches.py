"""What a batch may be, and how the loop hands one to the model.

A model's inputs are one tensor (`model(x)`), a tuple of tensors (`model(*inputs)`: a
GRU's `(tokens, lengths)`, say) or a dict of tensors (`model(**inputs)`: Hugging Face
style). A dataset item, a source's split and a DataLoader batch (a user's `collate_fn`'s
too) come as one of:

- a pair `(inputs, target)`, where `inputs` is a tensor (or array), a tuple/list of
  them or a dict of them;
- a dict holding the target under `dataset.target_key`; every other key is an input
  (a keyword argument of the model), or only those of `dataset.input_keys`.

`Layout` reads that split; the rest of the package moves, slices and shares inputs of
any of the three forms with `map_inputs` and calls the model with `call_model`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from experiment.errors import DataError

Inputs = torch.Tensor | tuple[torch.Tensor, ...] | dict[str, torch.Tensor]


def map_inputs(fn: Callable, inputs):
    """`fn` applied to each tensor of `inputs` (a tensor, a tuple or a dict of them),
    in the same form."""
    if isinstance(inputs, Mapping):
        return {key: fn(value) for key, value in inputs.items()}
    if isinstance(inputs, tuple | list):
        return tuple(fn(value) for value in inputs)
    return fn(inputs)


def leaves(inputs) -> list:
    """The tensors of `inputs`, in order."""
    if isinstance(inputs, Mapping):
        return list(inputs.values())
    if isinstance(inputs, tuple | list):
        return list(inputs)
    return [inputs]


def call_model(model, inputs):
    """`model(x)`, `model(*inputs)` or `model(**inputs)`, by the inputs' form."""
    if isinstance(inputs, Mapping):
        return model(**inputs)
    if isinstance(inputs, tuple | list):
        return model(*inputs)
    return model(inputs)


def sample_count(inputs) -> int:
    return len(leaves(inputs)[0])


def structured(inputs) -> bool:
    """Whether the inputs are several tensors (a tuple or a dict), not one."""
    return isinstance(inputs, Mapping | tuple | list)


def input_names(inputs) -> list[str]:
    """The inputs' names in the logged model: a dict's keys, a tuple's positions."""
    if isinstance(inputs, Mapping):
        return [str(key) for key in inputs]
    if isinstance(inputs, tuple | list):
        return [f"input_{index}" for index in range(len(inputs))]
    return ["input"]


def cat_inputs(parts: Sequence):
    """Inputs of one form joined along the samples (train and val, say)."""
    first = parts[0]
    if isinstance(first, Mapping):
        return {key: torch.cat([p[key] for p in parts]) for key in first}
    if isinstance(first, tuple | list):
        return tuple(torch.cat(column) for column in zip(*parts, strict=True))
    return torch.cat(list(parts))


@dataclass(frozen=True)
class Layout:
    """How an item or a batch splits into (inputs, target): `dataset.target_key` and
    `dataset.input_keys` for dict items; pairs need neither."""

    target_key: str | None = None
    input_keys: tuple[str, ...] | None = None
    where: str = "dataset.source"  # named in errors

    def split(self, item):
        """(inputs, target) of an item or a batch, inputs as a tensor, a tuple or a dict."""
        if isinstance(item, Mapping):
            return self._split_dict(item)
        if isinstance(item, tuple | list) and len(item) == 2:
            inputs, target = item
            if isinstance(inputs, list):  # a collated tuple comes back as a list
                inputs = tuple(inputs)
            return inputs, target
        raise DataError(
            f"{self.where}: an item (or a batch of its collate_fn) is {_describe(item)}: "
            "expected a pair (inputs, target), where inputs may be a tuple or dict of "
            "tensors, or a dict holding the target under dataset.target_key."
        )

    def _split_dict(self, item: Mapping):
        if self.target_key is None:
            raise DataError(
                f"{self.where}: items are dicts (keys {sorted(map(str, item))}): set "
                "dataset.target_key to the key of the target (every other key, or those "
                "of dataset.input_keys, goes to the model by name)."
            )
        wanted = self.input_keys or tuple(k for k in item if k != self.target_key)
        missing = [k for k in (self.target_key, *wanted) if k not in item]
        if missing:
            raise DataError(
                f"{self.where}: an item has no key {missing[0]!r} (its keys: "
                f"{', '.join(sorted(map(str, item)))}). Check dataset.target_key and "
                "dataset.input_keys."
            )
        return {key: item[key] for key in wanted}, item[self.target_key]

    def with_target(self, item, target):
        """`item` with its target replaced (a label encoded as its class index)."""
        if isinstance(item, Mapping):
            return {**item, self.target_key: target}
        return item[0], target


PAIRS = Layout()  # items and batches that are (inputs, target) pairs


def _describe(item) -> str:
    if isinstance(item, tuple | list):
        return f"a {type(item).__name__} of {len(item)}"
    return f"a {type(item).__name__}"


def as_tensors(inputs):
    """Inputs of arrays (or lists of numbers) as tensors, in the same form."""
    return map_inputs(
        lambda v: v if isinstance(v, torch.Tensor) else torch.as_tensor(np.asarray(v)), inputs
    )
