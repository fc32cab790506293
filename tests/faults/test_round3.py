"""Issue #21 (security and reliability, round three): each test is one
attack from the issue, run as the attacker would (an unprivileged user is
`nobody`, through setpriv: no user is made), against real processes.
docs/faults.md has the table (attack, before, after)."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid

import pytest

from resreap.errors import ReloadFailed, UsageError
from resreap.host import procinfo
from resreap.ops import instance

pytestmark = [pytest.mark.kernel, pytest.mark.usefixtures("root_ready")]

NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--"]


def as_nobody(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([*NOBODY, sys.executable, "-c", code], capture_output=True,
                          text=True, timeout=30, cwd="/")


@pytest.fixture
def lock_dir():
    """A lock directory where the unit's would be: under /run, root's."""
    path = f"/run/resreap-t-{uuid.uuid4().hex[:8]}"
    yield path
    subprocess.run(["rm", "-rf", path], check=False)


def test_7_a_user_cannot_squat_the_one_watch_lock(lock_dir):
    """flock needs only an open fd: under root's umask the lock was 0644 in
    a 0755 directory, and a user's `flock -x` taken while watch ran got the
    lock the moment it exited; no watch started again."""
    path = f"{lock_dir}/watch.lock"
    lock = instance.hold_watch_lock(path)
    try:
        assert lock.enforced
        squat = as_nobody(
            "import fcntl, sys\n"
            f"try:\n    f = open({path!r})\nexcept PermissionError:\n    sys.exit(3)\n"
            "fcntl.flock(f, fcntl.LOCK_SH | fcntl.LOCK_NB)\n")
        assert squat.returncode == 3, squat.stderr
        assert os.stat(lock_dir).st_mode & 0o777 == 0o700
        assert os.stat(path).st_mode & 0o777 == 0o600
        holder = instance.watch_holder(path)
        me = os.getpid()
        assert holder == instance.Holder(me, procinfo.start_time(me))
    finally:
        os.close(lock.fd)


def test_7_a_lock_directory_others_can_write_is_refused(lock_dir):
    os.mkdir(lock_dir, 0o700)
    os.chown(lock_dir, 65534, 65534)  # a user's directory where root's belongs
    with pytest.raises(UsageError, match="owned by uid 65534"):
        instance.hold_watch_lock(f"{lock_dir}/watch.lock")


def test_7_reload_never_signals_a_pid_the_lock_did_not_take(lock_dir, tmp_path):
    """The lock names its holder by pid and start time: a pid that now
    names another process (or a lock file with another's start) is not
    sent SIGHUP."""
    victim = subprocess.Popen(["sleep", "60"])
    try:
        wrong = instance.Holder(victim.pid, procinfo.start_time(victim.pid) + 1)
        with pytest.raises(ReloadFailed, match="not the watch"):
            instance.reload(wrong, timeout=0.5, path=str(tmp_path / "reload"))
        assert victim.poll() is None  # SIGHUP would have ended sleep
    finally:
        victim.kill()
        victim.wait()
