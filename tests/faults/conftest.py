"""The fault suites' shared fixture: ``resreap watch --json`` runs that are
stopped after the test."""

from __future__ import annotations

import pytest

from watchrun import WatchRun


@pytest.fixture
def watch(resreap_bin):
    runs = []

    def start(*args, env=None, wrap=()) -> WatchRun:
        run = WatchRun(resreap_bin, *args, env=env, wrap=wrap)
        runs.append(run)
        return run

    yield start
    for run in runs:
        run.stop()
