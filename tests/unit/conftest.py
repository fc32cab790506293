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


@pytest.fixture
def make_world(tmp_path):
    """Fake hosts made on demand (to run one scenario twice), each closed
    after the test."""
    made = []

    def make() -> World:
        root = tmp_path / f"host{len(made)}"
        root.mkdir()
        made.append(World(root))
        return made[-1]

    yield make
    for w in made:
        w.close()
