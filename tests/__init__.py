"""The test suite, as a package: pytest then imports `tests.conftest` once, the module the
tests import their helpers from, so the teardown in it stops every process they started."""
