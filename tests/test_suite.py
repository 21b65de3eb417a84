"""The test suite's own settings: what makes it hold wherever it runs."""

from __future__ import annotations

import pytest


def test_a_hung_test_fails_instead_of_stalling(pytestconfig: pytest.Config) -> None:
    """pytest-timeout is active with a default (generous: the slowest CLI tests take ~1 min)."""
    assert pytestconfig.pluginmanager.hasplugin("timeout"), "pytest-timeout is not installed"
    assert 120 <= float(pytestconfig.getini("timeout") or 0) <= 1800
