"""Secrets never reach a file: passwords in URLs and the values of secret-named keys are
masked in every text, tree and override list the project writes or logs.

What counts as a secret: the password of a URL (`scheme://user:password@host`) anywhere in
a string, and the whole value of a key whose name ends in password, passwd, token, secret,
api_key/apikey, access_key or secret_key (`tracking.token`, `dataset.hf_token`). An unresolved
interpolation (`${oc.env:DB_PASSWORD}`) is no secret: it names where the value comes from,
and stays as it is, which is why it is the recommended way to hand a process a password.

Files handed to another process of the same sweep (a torchrun group's payload, a SLURM job's
pickle) cannot simply drop the secret: the process needs it. `seal` swaps each secret for an
`${oc.env:...}` interpolation of a variable of this process's environment, which they inherit.
"""

from __future__ import annotations

import logging
import os
import re
from typing import Any

MASK = "***"
# The password of a URL, unless it is an interpolation (`${oc.env:DB_PASSWORD}`).
_URL_PASSWORD = re.compile(r"(://[^:/@\s'\"]+:)(?!\$\{)([^@\s'\"]+)@")
_SECRET_NAME = r"(?:password|passwd|token|secret|api_?key|access_?key|secret_?key)"
_SECRET_KEY = re.compile(rf"(?i)(?:^|[._-]){_SECRET_NAME}$|^{_SECRET_NAME}$")
# `key=value` (an override) or `key: value` (YAML) where the key is secret-named.
_SECRET_ASSIGNMENT = re.compile(
    rf"(?i)((?:^|(?<=[\s,\[{{'\"]))[+~]*[\w.-]*{_SECRET_NAME}\s*(?:=|:\s))(?!\$\{{)([^\s,'\"\]}}]+)"
)
ENV_PREFIX = "EXPERIMENT_SECRET_"
_SEALED = re.compile(r"\$\{oc\.env:" + ENV_PREFIX + r"\d+\}")


def is_secret_key(name: str) -> bool:
    """Whether a config key's name (its last part counts) marks its value as a secret."""
    return bool(_SECRET_KEY.search(str(name).rsplit(".", 1)[-1]))


def _interpolation(value: str) -> bool:
    return value.startswith("${") and value.endswith("}")


def redact(text: str) -> str:
    """`text` with URL passwords and secret-named keys' values (`token=abc`, `token: abc`)
    masked."""
    text = _SEALED.sub(MASK, text)
    text = _URL_PASSWORD.sub(rf"\1{MASK}@", text)
    return _SECRET_ASSIGNMENT.sub(rf"\1{MASK}", text)


def redact_tree(value: Any, key: str = "") -> Any:
    """A copy of a tree of dicts, lists and plain values with every secret masked."""
    if isinstance(value, dict):
        return {k: redact_tree(v, str(k)) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redact_tree(v, key) for v in value]
    if not isinstance(value, str):
        return MASK if key and is_secret_key(key) and value is not None else value
    if key and is_secret_key(key) and value and not _interpolation(value):
        return MASK
    return redact(value)


def holds_secret(value: Any, key: str = "") -> bool:
    return redact_tree(value, key) != value


def seal(value: Any, key: str = "") -> Any:
    """A copy of the tree with each secret replaced by an `${oc.env:EXPERIMENT_SECRET_<n>}`
    interpolation, the variable set in this process's environment, which the processes it
    starts inherit: what they resolve is the secret, what they write is the name."""

    def walk(node: Any, name: str) -> Any:
        if isinstance(node, dict):
            return {k: walk(v, str(k)) for k, v in node.items()}
        if isinstance(node, list | tuple):
            return [walk(v, name) for v in node]
        if not isinstance(node, str) or _interpolation(node):
            return node
        if name and is_secret_key(name) and node:
            return _variable(node)
        node = _URL_PASSWORD.sub(lambda m: f"{m.group(1)}{_variable(m.group(2))}@", node)
        return _SECRET_ASSIGNMENT.sub(lambda m: f"{m.group(1)}{_variable(m.group(2))}", node)

    return walk(value, key)


def _variable(secret: str) -> str:
    """The interpolation of the environment variable holding `secret`: numbered in order
    (not named by a hash, which would let a weak password be guessed offline), the same
    variable for the same secret."""
    index = 1
    while (held := os.environ.get(f"{ENV_PREFIX}{index}")) is not None and held != secret:
        index += 1
    os.environ[f"{ENV_PREFIX}{index}"] = secret
    return "${oc.env:" + f"{ENV_PREFIX}{index}" + "}"


class RedactingFilter(logging.Filter):
    """Masks secrets in a log record's message before any handler writes it."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        masked = redact(message)
        if masked != message:
            record.msg, record.args = masked, None
        return True


def redact_logs() -> None:
    """Every handler of the root logger (Hydra's console and file handlers) masks secrets."""
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, RedactingFilter) for f in handler.filters):
            handler.addFilter(RedactingFilter())
