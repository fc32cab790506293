"""The unit layer's shared fixtures."""

from __future__ import annotations

import pytest

from fakehost import World


@pytest.fixture
def world(tmp_path):
    """A fake host (fakehost.py), closed after the test."""
    w = World(tmp_path)
    yield w
    w.close()
