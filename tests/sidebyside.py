"""Tests side by side: scripts/test runs them on pytest-xdist workers.

Every watch a test starts that may signal is fenced to the test's own
processes (tests/watchrun.py).  What is left to share is the host itself:
each worker gets its own one-watch-per-host lock, and tests that judge or
load the whole host take it alone (``host_share``)."""

from __future__ import annotations

import contextlib
import fcntl
import os

# Workers of one run (scripts/test: pytest-xdist) each get their own
# one-watch-per-host lock, and with it their own `resreap reload` status:
# set before anything imports resreap, inherited by every watch a test starts.
WORKER = os.environ.get("PYTEST_XDIST_WORKER")
LOCK_DIR = None
if WORKER and "RESREAP_LOCK" not in os.environ:
    RUN = os.environ.get("PYTEST_XDIST_TESTRUNUID", "run")[:12]
    LOCK_DIR = f"/run/resreap-test/{RUN}-{WORKER}"
    os.environ["RESREAP_LOCK"] = f"{LOCK_DIR}/watch.lock"


@contextlib.contextmanager
def host_share(tmp_path_factory, alone: bool = False):
    """Side by side (scripts/test), a test marked ``alone`` runs while no
    other test does: it judges the whole host (lost events, the watcher's
    table, keeping up with a flood) or loads all of it.  A readers-writer
    lock between the workers, on two files of the run's temporary directory:
    the gate lets a waiting ``alone`` test in before further shared ones.
    Session fixtures that load the host (booting a container) share it too."""
    if not WORKER:
        yield
        return
    root = tmp_path_factory.getbasetemp().parent
    with open(root / "host.gate", "a") as gate, open(root / "host.lock", "a") as host:
        fcntl.flock(gate, fcntl.LOCK_EX)
        fcntl.flock(host, fcntl.LOCK_EX if alone else fcntl.LOCK_SH)
        fcntl.flock(gate, fcntl.LOCK_UN)
        yield
