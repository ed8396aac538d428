"""The suite's own machinery: one conftest module, so what a test starts is stopped."""

from __future__ import annotations

import sys


def test_conftest_is_one_module_so_its_teardown_sees_every_started_process():
    # A second, top-level `conftest` module would hold its own list of started processes,
    # empty: the teardown would stop nothing that a failing test left running.
    assert "conftest" not in sys.modules
    assert "tests.conftest" in sys.modules
