"""Secrets never reach logs, params or tags: passwords in URLs are masked."""

from __future__ import annotations

import re

_CREDENTIALS = re.compile(r"(://[^:/@\s]+:)[^@\s]+@")


def redact(text: str) -> str:
    """Hide the password of a URL (scheme://user:password@host) anywhere in text."""
    return _CREDENTIALS.sub(r"\1***@", text)
