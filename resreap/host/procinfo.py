"""What resreap needs to know about a process, read from /proc.

Identity is pid + start time: a pid alone can name another process by the
time we act on it.
"""

from __future__ import annotations

import contextlib
import errno
import os
import threading
import time
from typing import Iterator, NamedTuple

from resreap.errors import AccessDenied, OutOfFds, ProcessGone, ProcessReplaced, \
    ProcessUnreadable, ResreapError

# resreap's own fd table (or the system's) is full: not a fact about the
# process read.
OUT_OF_FDS = (errno.EMFILE, errno.ENFILE)


def out_of_fds(exc: OSError, what: str) -> None:
    """Raise OutOfFds for EMFILE/ENFILE, return for any other error."""
    if exc.errno in OUT_OF_FDS:
        raise OutOfFds(what) from exc

PF_KTHREAD = 0x00200000
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
# A command line is whatever its process wrote there (a megabyte, if it
# likes): resreap keeps at most this much of it, marked where cut.
CMDLINE_MAX = 65536


class ProcInfo(NamedTuple):
    pid: int
    start: int        # starttime, clock ticks since boot (field 22 of stat)
    ppid: int
    comm: str
    cmdline: str      # argv joined by spaces; may hold any byte, escape on output
    kthread: bool


@contextlib.contextmanager
def proc_errors(pid: int, what: str = "") -> Iterator[None]:
    """The /proc edge: OS errors become the domain's, here and only here
    (as psutil's wrap_exceptions does).  ENOENT/ESRCH: the process is gone;
    EACCES/EPERM: access denied."""
    try:
        yield
    except (FileNotFoundError, ProcessLookupError) as exc:
        raise ProcessGone(pid) from exc
    except PermissionError as exc:
        raise AccessDenied(pid, what) from exc
    except OSError as exc:
        out_of_fds(exc, f"reading /proc/{pid}{what}")
        raise


CLK_TCK = os.sysconf("SC_CLK_TCK")


def boottime() -> float:
    """CLOCK_BOOTTIME seconds: the clock of a process's start time."""
    return time.clock_gettime(time.CLOCK_BOOTTIME)


def age(start: int, now: float | None = None) -> float:
    """Seconds since a process started (``start``: its starttime ticks;
    ``now``: CLOCK_BOOTTIME seconds, read here unless given)."""
    return (boottime() if now is None else now) - start / CLK_TCK


_SOCKET_PREFIX = "socket:["

# Reading /proc/PID/cmdline takes the target's mmap lock: a process stuck in
# D state while holding it (a FUSE or userfaultfd trick does it on purpose)
# makes the read hang.  Each bounded read runs in a thread of its own and is
# given up after a timeout, so the caller never blocks and a stuck read takes
# nothing from the next (a fixed pool was exhausted for good by four).  A
# pid whose read is still stuck is not read again until it returns, and the
# stuck threads are capped: past the cap, reads fail at once as unreadable.
STUCK_MAX = 128
_lock = threading.Lock()
_stuck: set[int] = set()


class Proc:
    """The /proc edge: every read of a process's files goes through one of
    these, its root given once (the real /proc, or a fixture tree in
    tests).  Stateless apart from the root (and whether its fd directories
    count their fds), so kill threads share it."""

    def __init__(self, root: str = "/proc") -> None:
        self.root = root
        self._fd_sizes: bool | None = None  # does /proc/PID/fd's size count its fds?

    def __repr__(self) -> str:
        return f"Proc({self.root!r})"

    def path(self, pid: int | str, *parts: str) -> str:
        """The path of ``pid``'s ``parts`` (for the host modules that open
        a file their own way: a namespace to enter, a net table)."""
        return "/".join((self.root, str(pid)) + parts)

    def read_stat(self, pid: int) -> tuple[int, int, str, bool]:
        """(start, ppid, comm, kthread) of ``pid``; raises ProcessGone or
        AccessDenied."""
        with proc_errors(pid, "/stat"), open(f"{self.root}/{pid}/stat", "rb") as f:
            raw = f.read()
        # comm is in parentheses and may itself contain ") ": split at the last.
        head, _, tail = raw.rpartition(b") ")
        comm = head.partition(b" (")[2].decode("utf-8", "backslashreplace")
        fields = tail.split()
        ppid = int(fields[1])
        flags = int(fields[6])
        start = int(fields[19])
        return start, ppid, comm, bool(flags & PF_KTHREAD)

    def start_time(self, pid: int) -> int:
        return self.read_stat(pid)[0]

    def read(self, pid: int) -> ProcInfo:
        start, ppid, comm, kthread = self.read_stat(pid)
        with proc_errors(pid, "/cmdline"), open(f"{self.root}/{pid}/cmdline", "rb") as f:
            argv = f.read(CMDLINE_MAX + 1)
        cut = len(argv) > CMDLINE_MAX
        if cut:
            argv = argv[:CMDLINE_MAX]
        cmdline = argv.rstrip(b"\0").replace(b"\0", b" ").decode("utf-8", "backslashreplace")
        if cut:
            cmdline += "...[cut]"
        if self.start_time(pid) != start:
            raise ProcessReplaced(pid)
        return ProcInfo(pid, start, ppid, comm, cmdline or f"[{comm}]", kthread)

    def read_uids(self, pid: int) -> frozenset[int]:
        """Real, effective, saved and fs uids of ``pid``; raises ProcessGone.
        (The owner of /proc/PID is not it: non-dumpable processes show root.)"""
        with proc_errors(pid, "/status"), open(f"{self.root}/{pid}/status", "rb") as f:
            for line in f:
                if line.startswith(b"Uid:"):
                    return frozenset(int(u) for u in line.split()[1:5])
        raise ProcessGone(pid, "has no Uid line in its status")

    def fd_soft_limit(self, pid: int) -> int | None:
        """The soft RLIMIT_NOFILE of ``pid`` (None: unlimited or unreadable)."""
        with proc_errors(pid, "/limits"), open(f"{self.root}/{pid}/limits") as f:
            for line in f:
                if line.startswith("Max open files"):
                    soft = line[len("Max open files"):].split()[0]
                    return int(soft) if soft.isdigit() else None
        return None

    def cgroup(self, pid: int | str, limit: int) -> bytes:
        """The first ``limit`` bytes of ``pid``'s cgroup file; raises
        ProcessGone or AccessDenied."""
        with proc_errors(pid if isinstance(pid, int) else 0, "/cgroup"), \
                open(self.path(pid, "cgroup"), "rb") as f:
            return f.read(limit)

    def namespace(self, pid: int | str, kind: str) -> int:
        """The inode of ``pid``'s ``kind`` namespace (net, user); raises
        OSError where it has none (gone, a kernel thread)."""
        return os.stat(self.path(pid, "ns", kind)).st_ino

    def pids(self) -> list[int]:
        """Every process's pid.  Raises OutOfFds for EMFILE/ENFILE."""
        try:
            return [int(n) for n in os.listdir(self.root) if n.isdigit()]
        except OSError as exc:
            out_of_fds(exc, f"listing {self.root}")
            raise ResreapError(f"cannot list {self.root}: {exc.strerror}") from exc

    def socket_fds(self, pid: int) -> Iterator[tuple[int, int]]:
        """(fd, socket inode) for each socket ``pid`` holds; nothing if it is
        gone.  Raises AccessDenied where its fds may not be read (hidepid=2, no
        CAP_SYS_PTRACE), OutOfFds for EMFILE/ENFILE (never "exited").
        Stateless, so a kill thread may call it too."""
        base = f"{self.root}/{pid}/fd"
        try:
            fds = os.listdir(base)
        except PermissionError:
            raise AccessDenied(pid, "/fd") from None
        except OSError as exc:  # exited, or a kernel thread
            out_of_fds(exc, f"listing /proc/{pid}/fd")
            return
        for fd in fds:
            link = self.fd_link(pid, int(fd))
            if link is not None and link.startswith(_SOCKET_PREFIX):
                yield int(fd), int(link[8:-1])

    def fd_link(self, pid: int, fd: int) -> str | None:
        """What fd ``fd`` of ``pid`` points at (None: closed, or the process is
        gone or unreadable: it does not hold it as far as anyone can tell)."""
        try:
            return os.readlink(f"{self.root}/{pid}/fd/{fd}")
        except OSError as exc:
            out_of_fds(exc, f"reading /proc/{pid}/fd/{fd}")
            return None

    def holds_socket(self, pid: int, fd: int, inode: int) -> bool:
        """Does fd ``fd`` of ``pid`` point at socket ``inode`` right now?"""
        return self.fd_link(pid, fd) == f"socket:[{inode}]"

    def children(self, pid: int) -> set[int]:
        """Direct children of ``pid``, from every thread's children file (empty
        where it is gone or the kernel lacks CONFIG_PROC_CHILDREN)."""
        out: set[int] = set()
        try:
            tids = os.listdir(f"{self.root}/{pid}/task")
        except OSError as exc:
            out_of_fds(exc, f"listing /proc/{pid}/task")
            return out
        for tid in tids:
            try:
                with open(f"{self.root}/{pid}/task/{tid}/children") as f:
                    out.update(int(c) for c in f.read().split())
            except OSError as exc:
                out_of_fds(exc, f"reading /proc/{pid}/task/{tid}/children")
        return out

    def fd_count(self, pid: int) -> int:
        """How many fds ``pid`` has open; raises ProcessGone or
        AccessDenied.  Since Linux 6.2 procfs gives the number as the size
        of /proc/PID/fd (one stat, whatever the table's size: a listing of
        20,000 fds takes milliseconds); elsewhere (size 0), and in a
        fixture tree (whose directory sizes mean nothing), one listing."""
        with proc_errors(pid, "/fd"):
            if self._sized_fds():
                size = os.stat(self.path(pid, "fd")).st_size
                if size:
                    return size
            return len(os.listdir(self.path(pid, "fd")))

    def _sized_fds(self) -> bool:
        """Asked once, of procfs itself (no kernel version to parse: a
        backport counts too): our own fd directory has a size."""
        if self._fd_sizes is None:
            try:
                self._fd_sizes = os.path.realpath(self.root) == "/proc" and \
                    os.stat("/proc/self/fd").st_size > 0
            except OSError:
                self._fd_sizes = False
        return self._fd_sizes

    def rss(self, pid: int) -> int:
        """``pid``'s resident memory in bytes (/proc/PID/statm: one short
        line, whatever the process's size); raises ProcessGone or
        AccessDenied."""
        with proc_errors(pid, "/statm"), open(f"{self.root}/{pid}/statm", "rb") as f:
            raw = f.read(256)
        try:
            return int(raw.split()[1]) * PAGE_SIZE
        except (ValueError, IndexError):
            raise ProcessGone(pid, "has no readable statm") from None

    def fd_table_size(self, pid: int) -> int:
        """About how many fds ``pid`` has: its fd table size (FDSize in its
        status, every kernel: a power of two above its highest fd); 0 where it
        cannot be read."""
        try:
            with open(f"{self.root}/{pid}/status", "rb") as f:
                for line in f:
                    if line.startswith(b"FDSize:"):
                        return int(line.split()[1])
        except OSError as exc:
            out_of_fds(exc, f"reading /proc/{pid}/status")
        except (ValueError, IndexError):
            pass
        return 0

    def is_zombie(self, pid: int) -> bool:
        """Gone, or a zombie (dead, waiting for its parent).  Raises
        AccessDenied where /proc/PID/stat cannot be read: that is not death."""
        try:
            with proc_errors(pid, "/stat"), open(f"{self.root}/{pid}/stat", "rb") as f:
                return f.read().rpartition(b") ")[2][:1] in (b"Z", b"X")
        except ProcessGone:
            return True

    def ancestors(self, pid: int, depth: int | None = None) -> set[int]:
        """``pid`` and every process above it up to init, or up to ``depth``
        levels above it (None: no bound; only for resreap's own chain,
        which no user builds)."""
        chain = set()
        while pid > 0 and pid not in chain and (depth is None or len(chain) <= depth):
            chain.add(pid)
            try:
                pid = self.read_stat(pid)[1]
            except (ProcessGone, AccessDenied):
                break
        return chain

    def alive(self, pid: int, start: int) -> bool:
        try:
            return self.start_time(pid) == start
        except (ProcessGone, AccessDenied):
            return False

    def read_bounded(self, pid: int, timeout: float = 1.0) -> ProcInfo:
        """``read``, given up after ``timeout`` (ProcessUnreadable): see
        STUCK_MAX above."""
        with _lock:
            if pid in _stuck or len(_stuck) >= STUCK_MAX:
                raise ProcessUnreadable(pid, timeout)
        box: dict[str, object] = {}
        done = threading.Event()

        def work() -> None:
            try:
                box["info"] = self.read(pid)
            except BaseException as exc:  # handed to the caller, or dropped if it left
                box["error"] = exc
            finally:
                with _lock:
                    done.set()
                    _stuck.discard(pid)

        threading.Thread(target=work, name=f"procread-{pid}", daemon=True).start()
        if not done.wait(timeout):
            with _lock:
                if not done.is_set():
                    _stuck.add(pid)
                    raise ProcessUnreadable(pid, timeout)
        if "error" in box:
            raise box["error"]  # type: ignore[misc]
        return box["info"]  # type: ignore[return-value]


# How far up a user's process tree ancestry is followed.  The depth of a
# tree is its user's: a chain of 200 `sleep`s above 201 holders cost 4
# million /proc reads per loop turn.  Every question resreap asks of
# ancestry errs safe when the bound cuts it short: "does this listener's
# holder sit above the holder?" (a root-accepted socket vouched for) says
# no, so the socket does not count; "is this co-holder a descendant?"
# (children first) says no, so the parent, itself over its limit with
# sockets it holds, is judged as it stands.  Real trees are shallow: a
# prefork master is 1 level above its workers, a container's init a few.
ANCESTRY_DEPTH = 32


class Lineage:
    """Ancestry for one loop turn: each process's parent read once (one
    /proc/PID/stat), each process's bounded ancestor set built once, so
    that asking it for every pair of a turn's holders costs the processes,
    not the pairs times the depth.  Emptied at every turn: parents change
    (a reparent to a subreaper) and pids are reused."""

    def __init__(self, proc: "Proc", depth: int = ANCESTRY_DEPTH) -> None:
        self.proc, self.depth = proc, depth
        self._parent: dict[int, int] = {}
        self._above: dict[int, frozenset[int]] = {}
        self.reads = 0  # /proc reads since the last clear (tests, benchmark)

    def clear(self) -> None:
        self._parent.clear()
        self._above.clear()
        self.reads = 0

    def parent(self, pid: int) -> int:
        """``pid``'s parent (0: gone or unreadable: the walk stops)."""
        ppid = self._parent.get(pid)
        if ppid is None:
            self.reads += 1
            try:
                ppid = self.proc.read_stat(pid)[1]
            except (ProcessGone, AccessDenied):
                ppid = 0
            self._parent[pid] = ppid
        return ppid

    def above(self, pid: int) -> frozenset[int]:
        """The processes up to ``depth`` levels above ``pid`` (not itself)."""
        known = self._above.get(pid)
        if known is None:
            chain: list[int] = []
            up = self.parent(pid)
            while up > 0 and len(chain) < self.depth and up != pid and up not in chain:
                chain.append(up)
                up = self.parent(up)
            known = self._above[pid] = frozenset(chain)
        return known

    def descends(self, pid: int, ancestor: int) -> bool:
        """Is ``ancestor`` within ``depth`` levels above ``pid``?"""
        return ancestor in self.above(pid)


# The host's /proc: the default wherever no other root is injected.
HOST = Proc()
