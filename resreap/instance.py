"""One `resreap watch` per host: two would both act on the same leak, and
one would report the other's SIGKILL as its own.  An flock on a file in
/run (the unit's RuntimeDirectory) held for the life of the process: the
kernel releases it however the process ends, kill -9 included.  `trace`
and dry runs take no lock: they never signal."""

from __future__ import annotations

import fcntl
import os

from resreap.errors import AlreadyRunning

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
