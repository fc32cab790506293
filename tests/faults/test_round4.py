"""#31 (security, round four), with real processes: a user's deep process
tree cannot blind the loop.  The attacker is `nobody` (through setpriv: no
user is made).  The fake-host versions, and the other findings, are in
tests/unit/test_round4.py; docs/faults.md has the table."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from procs import patience

pytestmark = [pytest.mark.kernel, pytest.mark.usefixtures("root_ready")]

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.alone
def test_1_a_users_deep_tree_of_shared_holders_never_blinds_the_loop():
    """201 of nobody's processes share 4 leaked sockets below a chain of 200:
    each decision walked every co-holder's ancestry to init, the loop made
    no turn for 35 s or more, and a leak elsewhere was not reaped (then the
    watchdog restarted it into the same stall).  The benchmark's scenario,
    run once: its watch (fenced to its own leak, its own lock) spares the
    tenant, reaps the fenced leak at its grace, and keeps turning (its
    WATCHDOG pings, one per turn, are counted)."""
    done = subprocess.run([sys.executable, str(ROOT / "bench/loopgap.py"), "chain",
                           "--depth", "200", "--holders", "201", "--seconds", "10"],
                          capture_output=True, text=True, timeout=patience(120))
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.splitlines()[-1])
    assert result["reaped"] == 1                          # the fenced leak, no one else
    assert isinstance(result["fenced_reap_after_grace_s"], float), result
    assert result["fenced_reap_after_grace_s"] < 5.0      # before: not reaped at all
    assert result["turns"] > 10 and result["longest_gap_s"] < 5.0, result
