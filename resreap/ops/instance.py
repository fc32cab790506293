"""One `resreap watch` per host: two would both act on the same leak, and
one would report the other's SIGKILL as its own.  An flock on a file in
/run (the unit's RuntimeDirectory) held for the life of the process: the
kernel releases it however the process ends, kill -9 included.  `trace`
and dry runs take no lock: they never signal."""

from __future__ import annotations

import fcntl
import json
import os
import signal
import time
from typing import NamedTuple

from resreap.errors import AlreadyRunning, ReloadFailed

LOCK_PATH = os.environ.get("RESREAP_LOCK", "/run/resreap/watch.lock")


def hold_watch_lock(path: str = LOCK_PATH) -> int | None:
    """Take the lock; return its fd (keep it open), or None where no lock
    file can be made (a read-only /run): then nothing is enforced.  Raises
    AlreadyRunning with the holder's pid."""
    try:
        os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o644)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
        os.close(fd)
        raise AlreadyRunning(
            f"another resreap watch is running (pid {holder}); one per host: stop it first "
            "(systemctl stop resreap), or try settings beside it with --dry-run") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


# The result of each SIGHUP reload, for `resreap reload` (the unit's
# ExecReload) to wait for: systemd 252 has no Type=notify-reload, and a
# plain `kill -HUP` returned before the settings applied and reported success
# for a file that was rejected.
STATUS_PATH = os.path.join(os.path.dirname(LOCK_PATH), "reload")


class ReloadStatus(NamedTuple):
    pid: int          # the watch that answered
    generation: int   # grows with every reload
    ok: bool
    detail: str


def write_reload_status(status: ReloadStatus, path: str = STATUS_PATH) -> None:
    """Atomically (write, then rename); silently nothing where /run is
    read-only: the reload itself does not depend on it."""
    tmp = f"{path}.{os.getpid()}"
    try:
        with open(tmp, "w") as f:
            json.dump(status._asdict(), f)
        os.replace(tmp, path)
    except OSError:
        pass


def read_reload_status(path: str = STATUS_PATH) -> ReloadStatus | None:
    try:
        with open(path) as f:
            return ReloadStatus(**json.load(f))
    except (OSError, ValueError, TypeError):
        return None


def watch_pid(path: str = LOCK_PATH) -> int | None:
    """The pid of the watch holding the lock, if one does."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return None  # nobody holds it
    except BlockingIOError:
        text = os.pread(fd, 32, 0).decode(errors="replace").strip()
        return int(text) if text.isdigit() else None
    finally:
        os.close(fd)


def reload(pid: int, timeout: float, path: str = STATUS_PATH) -> ReloadStatus:
    """SIGHUP ``pid`` and wait for its answer.  Raises ReloadFailed."""
    before = read_reload_status(path)
    generation = before.generation if before else 0
    try:
        os.kill(pid, signal.SIGHUP)
    except ProcessLookupError:
        raise ReloadFailed(f"no process {pid}: is resreap watch running?") from None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = read_reload_status(path)
        if status is not None and status.pid == pid and status.generation > generation:
            if not status.ok:
                raise ReloadFailed(f"reload rejected, the old settings stay: {status.detail}")
            return status
        time.sleep(0.05)
    raise ReloadFailed(f"pid {pid} did not answer the reload within {timeout:g}s")
