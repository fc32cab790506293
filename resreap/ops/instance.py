"""One `resreap watch` per host: two would both act on the same leak, and
one would report the other's SIGKILL as its own.  An flock on a file in
/run (the unit's RuntimeDirectory) held for the life of the process: the
kernel releases it however the process ends, kill -9 included.  `trace`
and dry runs take no lock: they never signal.  A dry run registers itself
instead, by a second lock beside it (dry-run.lock), so that `resreap
reload` finds it too (a Kubernetes DaemonSet starts in dry run).

flock(2) needs no write access, only an open fd: a lock file anyone may
open is a lock anyone may take (and, taken while a watch runs, hold the
moment it exits, so that no watch starts again).  So the lock lives in a
directory only root may enter (0700, root's, its whole chain root's and
not writable by others), the file is 0600, and it names its holder by pid
and start time, so that `resreap reload` never signals a recycled pid."""

from __future__ import annotations

import fcntl
import json
import os
import signal
import stat
import time
from typing import NamedTuple

from resreap import tunables
from resreap.errors import AlreadyRunning, ReloadFailed, ResreapError, UsageError
from resreap.host import procinfo
from resreap.host.trust import check_chain

def raise_fd_limit() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard one and return it: the
    default soft 1024 is what a user's thousand network namespaces filled.
    (resource is imported here: the import costs nothing elsewhere.)"""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        want = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
            soft = want
        except (ValueError, OSError):
            pass
    return soft


def lock_path() -> str:
    """The lock file (RESREAP_LOCK: each test worker has its own)."""
    return tunables.get().lock


def dry_run_path() -> str:
    """Where a dry-run watch registers itself, beside the lock."""
    return os.path.join(os.path.dirname(lock_path()), "dry-run.lock")


def status_path() -> str:
    """Where each reload's result is written, beside the lock."""
    return os.path.join(os.path.dirname(lock_path()), "reload")


class Lock(NamedTuple):
    """The one-watch lock as taken: ``fd`` is kept open for the process's
    life; None with ``why`` where none could be taken (a read-only /run)."""

    fd: int | None
    why: str = ""

    @property
    def enforced(self) -> bool:
        return self.fd is not None

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)

    def describe(self) -> str:
        """For the start line: lock=enforced, or why not."""
        return "enforced" if self.enforced else f"off ({self.why})"


class Holder(NamedTuple):
    pid: int
    start: int | None  # starttime ticks (None: an old lock file with a pid only)


def _private_dir(path: str) -> None:
    """Make ``path`` root's 0700 directory, or refuse: it and every
    directory above it must be ours (or root's) and not writable by group or
    others (a root-owned sticky directory excepted, as for the config)."""
    me = os.geteuid()
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode):
        raise UsageError(f"lock directory {path} is not a directory (a symlink?): refusing it")
    if st.st_uid != me:
        raise UsageError(f"lock directory {path} is owned by uid {st.st_uid}, not root: "
                         "refusing it (anyone could take the one-watch lock)")
    if stat.S_IMODE(st.st_mode) & 0o077:
        os.chmod(path, 0o700)  # ours: RuntimeDirectory= makes it 0755 by default
    check_chain(os.path.dirname(path), "lock directory", "anyone could take the one-watch lock")


def _holder(text: str) -> Holder | None:
    parts = text.split()
    if not parts or not parts[0].isdigit():
        return None
    start = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else None
    return Holder(int(parts[0]), start)


def register_dry_run(path: str | None = None) -> Lock:
    """Register a dry-run watch for `resreap reload`: the dry-run lock, if
    no other dry run holds it (then this one is reloaded with --pid).
    Never raises AlreadyRunning: dry runs may run side by side."""
    try:
        return hold_watch_lock(path or dry_run_path())
    except AlreadyRunning:
        return Lock(None, "another dry run is registered: reload this one with --pid")


def hold_watch_lock(path: str | None = None) -> Lock:
    """Take the lock.  Where no lock file can be made (a read-only /run)
    nothing is enforced, and the Lock says why.  Raises AlreadyRunning with
    the holder's pid, UsageError for a lock directory others may change."""
    path = path or lock_path()
    parent = os.path.dirname(path)
    try:
        os.makedirs(os.path.dirname(parent), mode=0o755, exist_ok=True)
        _private_dir(parent)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    except OSError as exc:
        return Lock(None, f"cannot create {path}: {exc.strerror}")
    st = os.fstat(fd)
    if st.st_uid != os.geteuid() or not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise UsageError(f"lock file {path} is owned by uid {st.st_uid}, not root: refusing it")
    if stat.S_IMODE(st.st_mode) != 0o600:
        os.fchmod(fd, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _holder(os.pread(fd, 64, 0).decode(errors="replace"))
        os.close(fd)
        raise AlreadyRunning(
            f"another resreap watch is running (pid {holder.pid if holder else '?'}); one per "
            "host: stop it first (systemctl stop resreap), or try settings beside it with "
            "--dry-run") from None
    me = os.getpid()
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{me} {procinfo.HOST.start_time(me)}\n".encode(), 0)
    return Lock(fd)


# The result of each SIGHUP reload, for `resreap reload` (the unit's
# ExecReload) to wait for: systemd 252 has no Type=notify-reload, and a
# plain `kill -HUP` returned before the settings applied and reported success
# for a file that was rejected.


class ReloadStatus(NamedTuple):
    pid: int          # the watch that answered
    generation: int   # grows with every reload
    ok: bool
    detail: str


def write_json(path: str, obj, mode: int = 0o644) -> None:
    """``obj`` as JSON in ``path``, atomically (write, then rename: a reader
    never sees half a file).  Raises OSError (a read-only /run)."""
    tmp = f"{path}.{os.getpid()}"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC,
                     mode)
        with os.fdopen(fd, "w") as f:
            json.dump(obj, f)
        os.replace(tmp, path)
    except OSError:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def write_reload_status(status: ReloadStatus, path: str | None = None) -> None:
    """Raises OSError (a read-only /run): the daemon says so, since
    `resreap reload` will wait in vain."""
    write_json(path or status_path(), status._asdict())


def read_reload_status(path: str | None = None) -> ReloadStatus | None:
    try:
        with open(path or status_path()) as f:
            return ReloadStatus(**json.load(f))
    except (OSError, ValueError, TypeError):
        return None


def find_watch() -> Holder | None:
    """The watch `resreap reload` means: the one holding the lock, else a
    registered dry run."""
    return watch_holder() or watch_holder(dry_run_path())


def watch_holder(path: str | None = None) -> Holder | None:
    """The watch holding the lock, if one does."""
    try:
        fd = os.open(path or lock_path(), os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return None  # nobody holds it
    except BlockingIOError:
        return _holder(os.pread(fd, 64, 0).decode(errors="replace"))
    finally:
        os.close(fd)


def _pin(holder: Holder) -> int:
    """A pidfd on the holder, once it is sure to be the process the lock
    names (pid and start time): signals through it never reach a recycled
    pid.  Raises ReloadFailed."""
    try:
        fd = os.pidfd_open(holder.pid)
    except ProcessLookupError:
        raise ReloadFailed(f"no process {holder.pid}: is resreap watch running?") from None
    try:
        same = holder.start is None or procinfo.HOST.start_time(holder.pid) == holder.start
    except ResreapError:
        same = False
    if not same:
        os.close(fd)
        raise ReloadFailed(f"pid {holder.pid} is not the watch that took the lock (gone, or "
                           "its start time differs): not signalled")
    return fd


def reload(holder: Holder | int, timeout: float, path: str | None = None) -> ReloadStatus:
    """SIGHUP the watch and wait for its answer.  Raises ReloadFailed."""
    if isinstance(holder, int):
        holder = Holder(holder, None)
    pid = holder.pid
    before = read_reload_status(path)
    generation = before.generation if before else 0
    fd = _pin(holder)
    try:
        signal.pidfd_send_signal(fd, signal.SIGHUP)
    except ProcessLookupError:
        raise ReloadFailed(f"no process {pid}: is resreap watch running?") from None
    finally:
        os.close(fd)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = read_reload_status(path)
        if status is not None and status.pid == pid and status.generation > generation:
            if not status.ok:
                raise ReloadFailed(f"reload rejected, the old settings stay: {status.detail}")
            return status
        time.sleep(0.05)
    raise ReloadFailed(f"pid {pid} did not answer the reload within {timeout:g}s")
