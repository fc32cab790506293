"""Typed values shared by every module: sockets, transitions, owners."""

from __future__ import annotations

import enum
import functools
import ipaddress
from typing import NamedTuple

# Linux TCP states (include/net/tcp_states.h).
TCP_CLOSE_WAIT = 8
TCP_LAST_ACK = 9
TCP_LISTEN = 10

TCP_STATE_NAMES = {
    1: "ESTABLISHED", 2: "SYN_SENT", 3: "SYN_RECV", 4: "FIN_WAIT1",
    5: "FIN_WAIT2", 6: "TIME_WAIT", 7: "CLOSE", 8: "CLOSE_WAIT",
    9: "LAST_ACK", 10: "LISTEN", 11: "CLOSING", 12: "NEW_SYN_RECV",
}

V4_MAPPED_PREFIX = b"\x00" * 10 + b"\xff\xff"  # ::ffff:a.b.c.d


class Kind(enum.Enum):
    """What happened to a socket, as every event source reports it."""

    EXISTING = "existing"  # already in CLOSE_WAIT when the source started
    ENTER = "enter"        # moved into CLOSE_WAIT
    EXIT = "exit"          # left CLOSE_WAIT (closed by its owner, or reset)


class SockId(NamedTuple):
    """A TCP connection as its own host sees it.  Addresses are raw network
    order bytes (4 or 16): cheap to hash, formatted only for output."""

    family: int  # 4 or 6
    laddr: bytes
    lport: int
    raddr: bytes
    rport: int

    @property
    def local(self) -> str:
        return format_endpoint(self.family, self.laddr, self.lport)

    @property
    def remote(self) -> str:
        return format_endpoint(self.family, self.raddr, self.rport)


class Transition(NamedTuple):
    """One change of a socket's CLOSE_WAIT status.

    ``ts`` is CLOCK_MONOTONIC seconds (the clock of bpf_ktime_get_ns and of
    time.monotonic), so deadlines are exact however late a batch is read.
    ``cpu_pid`` is the task that was on the CPU: a hint for debugging only,
    never the owner (softirq runs the transition on whoever is there).

    ``kid`` tells two sockets with the same 4-tuple apart (two network
    namespaces may hold the same 4-tuple): the kernel's socket address for
    BPF events, the sock_diag cookie (or inode) for polled and seeded ones.
    ``netns`` is the network namespace where the source knows it (polling,
    seeding); the tracepoint does not carry it, so BPF events leave it None
    and the socket is bound to its namespace when first looked up.

    ``by_owner``: the transition ran in the owner's own close()
    (CLOSE_WAIT -> LAST_ACK, process context), so ``cpu_pid`` is a process
    that held the socket; every other transition may run on any task.
    """

    kind: Kind
    sock: SockId
    ts: float
    cpu_pid: int = 0
    kid: int = 0
    netns: int | None = None
    by_owner: bool = False


Key = tuple  # (SockId, kid): one socket as the event sources name it


class Result(str, enum.Enum):
    """How a kill sequence ended (the `outcome` line's `result`)."""

    TERMINATED = "terminated"  # exited after a signal
    KILLED = "killed"          # needed SIGKILL
    EXITED = "exited"          # exited on its own before any signal
    SPARED = "spared"          # the hook said no
    RESOLVED = "resolved"      # closed or passed on its sockets before any signal
    REPLACED = "replaced"      # its pid names another process now: nothing sent
    DRY_RUN = "dry-run"        # nothing done
    FAILED = "failed"          # could not be signalled

    @property
    def killed_it(self) -> bool:
        """A real kill: what the storm guard and `reaped` count."""
        return self in (Result.TERMINATED, Result.KILLED)

    @property
    def look_again(self) -> bool:
        """Not killed this round: judged again after a grace period."""
        return self in (Result.SPARED, Result.DRY_RUN, Result.RESOLVED)


class SpareReason(enum.Enum):
    """Why a process over the limit may not be reaped."""

    PROTECTED = "protected (init, resreap or one of its ancestors)"
    KTHREAD = "a kernel thread"
    NOT_SELECTED = "does not match -f/-p/--unit/--container/--namespace/--pod"


class Evidence(enum.Enum):
    """What the kernel says about a socket in CLOSE_WAIT, and so how long
    it must stay before it counts against its holder (see engine/evidence.py)."""

    EOF_IGNORED = "eof-ignored"  # the process read the EOF and kept the socket
    UNREAD = "unread"            # the peer's FIN (and maybe data) is unread
    QUEUED = "queued"            # never accepted: waits in a listener's queue
    SENDING = "sending"          # unacked data, or data sent within the grace


class Owner(NamedTuple):
    """A process holding a socket, identified by pid and start time so that a
    recycled pid is never mistaken for it."""

    pid: int
    start: int  # /proc/PID/stat starttime, clock ticks since boot
    comm: str

    @property
    def ident(self) -> tuple[int, int]:
        """The process itself: pid and start time, not its name, which it
        may rewrite at will (per-process books keyed with the name gained
        an entry at each rename)."""
        return self.pid, self.start


class Holder(NamedTuple):
    """One of the largest holders, for metrics (labels that survive a
    restart: no pid)."""

    pid: int
    comm: str
    unit: str
    container: str
    count: int
    # Seconds until its fds run out at its leak's pace (None: no forecast).
    exhausted_in: float | None = None
    namespace: str = ""  # its pod's namespace and name (Kubernetes; "" if none)
    pod: str = ""


# Kill durations (seconds), the histogram's upper bounds.
KILL_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0)


class Snapshot(NamedTuple):
    """The watcher's figures for metrics, published about once a second."""

    tracked: int = 0
    top: tuple[Holder, ...] = ()
    other: int = 0
    evidence: dict = {}   # Evidence.value -> reaped sockets
    revivals: dict = {}   # Revival.value -> services
    hook_failures: int = 0
    events: dict = {}     # Kind.value -> transitions
    lost: int = 0
    oldest: float = 0.0   # seconds the oldest CLOSE_WAIT socket has been there
    holding: tuple[Holder, ...] = ()  # the largest holders of CLOSE_WAIT sockets now
    kill_buckets: tuple[int, ...] = ()  # kills per KILL_BUCKETS bound (not cumulative)
    kill_seconds: float = 0.0           # their total duration
    rule_outcomes: dict = {}  # (rule, Result.value, namespace, container) -> kill sequences
    rules: tuple[str, ...] = ("default",)  # the rules in force, by name
    # The holders whose fds run out first at their leak's pace (engine/forecast).
    exhausting: tuple[Holder, ...] = ()


# Addresses repeat (a server's own, its few peers): each formatted once.
@functools.lru_cache(maxsize=4096)
def format_addr(family: int, raw: bytes) -> str:
    if family == 4:
        return str(ipaddress.IPv4Address(raw))
    if raw.startswith(V4_MAPPED_PREFIX):
        return "::ffff:" + str(ipaddress.IPv4Address(raw[12:]))
    return str(ipaddress.IPv6Address(raw))


def format_endpoint(family: int, raw: bytes, port: int) -> str:
    if family == 4:
        return f"{format_addr(4, raw)}:{port}"
    return f"[{format_addr(6, raw)}]:{port}"


class Revival(str, enum.Enum):
    """What became of a killed process's systemd service (`revive=`)."""

    BY_SYSTEMD = "by-systemd"   # systemd restarted it (Restart= said so)
    STARTED = "started"         # it stayed down: resreap started it
    RUNNING = "running"         # the unit never went down (a worker was killed)
    START_FAILED = "start-failed"
    UNSETTLED = "unsettled"     # still stopping when resreap stopped looking
    MISMATCH = "mismatch"       # systemd's cgroup for the unit is not the process's
    STOPPED = "stopped"         # someone stopped (or restarted) the unit meanwhile: left
    WAS_DOWN = "was-down"       # not running before the kill: left as it was
    NOT_MAIN = "not-main"       # the killed process was not the unit's main one
    NOT_RESTARTABLE = "not-restartable"  # a oneshot, or Restart= would not bring it back
    UNKNOWN = "unknown"         # systemctl missing or not answering
