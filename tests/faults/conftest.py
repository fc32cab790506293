"""The fault suites' shared fixture: ``resreap watch --json`` runs that are
stopped after the test."""

from __future__ import annotations

import pytest


@pytest.fixture
def watch(watch_runs):
    """``watch(*args, env=, wrap=)``: any exit status is the test's to check
    (faults make some watches exit on purpose)."""
    return watch_runs.start
