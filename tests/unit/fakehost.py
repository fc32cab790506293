"""A fake host for the watcher's decisions: no root, no kernel, no waiting.

- processes are a fixture /proc tree (stat, status, cmdline, limits, cgroup,
  fd symlinks "socket:[INODE]", task/PID/children), read by the real
  procinfo, owner resolver and fd index;
- the kernel's sockets are a FakeKernel standing in for SocketTable (the
  sock_diag answers: state, queues, inode, cookie, uid, tcp_info idle);
- transitions come from a FakeSource on a FakeClock: reading with a
  timeout jumps the clock to the next scheduled event or to the timeout,
  so a scenario of minutes runs in milliseconds, deadlines exact;
- kill sequences go to a FakeKiller that records targets and answers with
  scripted results.

Everything the watcher decides is captured from its decision lines.
"""

from __future__ import annotations

import heapq
import ipaddress
import logging
import os
import shutil
from pathlib import Path

from resreap.host import procinfo
from resreap.sources.events import EventSource
from resreap.engine.filters import Filters
from resreap.engine.killer import KillEngine, Outcome, Target
from resreap.engine.rules import Limits, Plan
from resreap.model import TCP_CLOSE_WAIT, TCP_LISTEN, Kind, Result, SockId, Transition
from resreap.engine.owners import FdIndex, KernelSockets, OwnerResolver
from resreap.engine.fdscan import FullScanner
from resreap.host.sockdiag import DiagSock
from resreap.host.sockets import NsSock
from resreap.engine.config import Current, WatchConfig
from resreap.engine.watch import Watcher

NS = 4026531840          # the host's network namespace
OTHER_NS = 4026532999    # a container's
LOCAL = ipaddress.IPv4Address("10.0.0.1").packed
PEER = ipaddress.IPv4Address("10.0.0.2").packed


class FakeClock:
    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now


# The fake host's CLOCK_BOOTTIME minus its CLOCK_MONOTONIC (FakeClock).
UPTIME = 86400.0


class FakeKernel(KernelSockets):
    """SocketTable's answers, from a dict: (netns, SockId) -> DiagSock."""

    kind = "sock_diag"
    through_procfs = False
    skipped = 0

    def __init__(self, proc: Proc) -> None:
        self.proc = proc
        self.socks: dict[tuple[int, SockId], DiagSock] = {}
        self.namespaces = [NS]

    def close_wait(self, info: bool = True) -> list[NsSock]:
        return [NsSock(ns, d) for (ns, _), d in self.socks.items() if d.state == TCP_CLOSE_WAIT]

    def listeners(self) -> list[NsSock]:
        return [NsSock(ns, d) for (ns, _), d in self.socks.items() if d.state == TCP_LISTEN]

    def lookup(self, sock: SockId, retry_new_namespaces: bool = True) -> list[NsSock]:
        return [NsSock(ns, d) for (ns, s), d in self.socks.items() if s == sock]

    def lookup_in(self, ino: int, sock: SockId) -> NsSock | None:
        diag = self.socks.get((ino, sock))
        return NsSock(ino, diag) if diag is not None else None


class FakeSource(EventSource):
    name = "fake"
    latency = 0.25

    def __init__(self, clock: FakeClock, on_time=lambda: None) -> None:
        self.clock = clock
        self.seeds: list[Transition] = []
        self._queue: list[tuple[float, int, Transition | None]] = []
        self._n = 0
        self.lost_events = 0
        self._on_time = on_time  # the kernel's state changes due by now
        self.horizon = float("inf")  # World.run: the clock stops there
        # As BPF's first pass with credit (top): a socket that enters and
        # leaves between two reads never arrives; the process whose own
        # close() took it out is counted instead (``closers``).
        self.credits = False
        self._closers: dict[int, int] = {}
        self.credited = 0

    def start(self) -> list[Transition]:
        return list(self.seeds)

    def follow(self, latency: float) -> None:
        """As BPF does: the read latency follows a reload's grace."""
        self.latency = latency

    def push(self, t: Transition) -> None:
        self._n += 1
        heapq.heappush(self._queue, (t.ts, self._n, t))

    def wake_at(self, when: float) -> None:
        """A wakeup without a transition (the kernel's state changes)."""
        self._n += 1
        heapq.heappush(self._queue, (when, self._n, None))

    def read(self, timeout: float) -> list[Transition]:
        """Everything due by now + timeout; the clock moves to the first
        event's time, or to the timeout when there is none."""
        until = min(self.clock.now + timeout, self.horizon)
        if self._queue and self._queue[0][0] <= until and not self.credits:
            until = max(self.clock.now, self._queue[0][0])
        self.clock.now = until
        self._on_time()
        out = []
        while self._queue and self._queue[0][0] <= until:
            t = heapq.heappop(self._queue)[2]
            if t is not None:
                out.append(t)
        if self.credits:
            entered = {t.kid for t in out if t.kind is Kind.ENTER}
            unseen = {t.kid for t in out if t.kind is Kind.EXIT and t.kid in entered}
            for t in out:
                if t.kind is Kind.EXIT and t.kid in unseen and t.by_owner:
                    self._closers[t.cpu_pid] = self._closers.get(t.cpu_pid, 0) + 1
                    self.credited += 1
            out = [t for t in out if t.kid not in unseen]
        return out

    def closers(self) -> dict[int, int]:
        taken, self._closers = self._closers, {}
        return taken

    def lost(self) -> int | None:
        """None while ``lost_events`` is None: the kernel's counter could
        not be read (BpfSource.lost)."""
        return self.lost_events

    def close(self) -> None:
        pass


class InlineScanner(FullScanner):
    """The background scan of every process, done at once (deterministic)."""

    def request(self, inodes) -> None:
        wanted = set(inodes)
        if wanted:
            self._scan(wanted)

    def idle(self, timeout: float) -> bool:
        return True


class SlowScanner(FullScanner):
    """The background scan as a cold host runs it: each one reads for
    ``takes`` seconds of the fake clock before it answers (a hundred
    processes of 20,000 fds).  Requests made meanwhile join it."""

    def __init__(self, index, clock: "FakeClock", takes: float) -> None:
        super().__init__(index)
        self._clock, self.takes = clock, takes
        self._ready: float | None = None

    def _settle(self) -> None:
        if self._ready is not None and self._clock() >= self._ready:
            self._ready = None
            wanted, self._pending = self._pending, set()
            self._scan(wanted)

    def request(self, inodes) -> None:
        self._settle()
        now = self._clock()
        for inode in inodes:
            miss = self._misses.get(inode)
            if miss is None or now >= miss[1]:
                self._pending.add(inode)
        if self._pending and self._ready is None:
            self._ready = now + self.takes

    def searching(self, inode: int) -> bool:
        self._settle()
        return inode in self._pending

    def idle(self, timeout: float) -> bool:
        self._settle()
        return not self._pending


class FakeKiller(KillEngine):
    """Records what the watcher hands over; each kill finishes at once with
    ``results[pid]`` (default: terminated), and the process then goes."""

    def __init__(self, world: "World", current: Current) -> None:
        self.world = world
        self.current = current
        self.targets: list[Target] = []
        self.results: dict[int, Result] = {}
        self.max_running = 32
        self.hold: set[int] = set()  # pids whose sequence stays running
        self._running: dict[int, Target] = {}
        self._finished: list[Outcome] = []

    def busy(self, pid: int) -> bool:
        return pid in self._running

    @property
    def full(self) -> bool:
        return len(self._running) >= self.max_running

    @property
    def running(self) -> int:
        return len(self._running)

    def running_pids(self) -> list[int]:
        return sorted(self._running)

    def submit(self, target: Target) -> bool:
        pid = target.info.pid
        if pid in self._running or self.full:
            return False
        self.targets.append(target)
        self._running[pid] = target
        if pid not in self.hold:
            self.finish(pid)
        return True

    def finish(self, pid: int) -> None:
        target = self._running.pop(pid)
        # Its rule's plan, as Killer runs it.
        plan = target.rule.plan if target.rule is not None else self.current.plan
        result = Result.DRY_RUN if plan.dry_run else self.results.get(pid, Result.TERMINATED)
        if result.killed_it:
            self.world.exit(pid)
        self._finished.append(Outcome(target, result, ("SIGTERM",) if result.killed_it else (),
                                      None, 0.0))

    def finished(self) -> list[Outcome]:
        out, self._finished = self._finished, []
        return out

    def join(self, timeout: float) -> None:
        pass


class Proc:
    def __init__(self, world: "World", pid: int, comm: str) -> None:
        self.world, self.pid, self.comm = world, pid, comm
        self.dir = world.proc / str(pid)
        self.next_fd = 3

    def hold(self, inode: int) -> int:
        fd = self.next_fd
        self.next_fd += 1
        os.symlink(f"socket:[{inode}]", self.dir / "fd" / str(fd))
        return fd

    def holds_inode(self, inode: int) -> bool:
        return any(os.readlink(link) == f"socket:[{inode}]" for link in (self.dir / "fd").iterdir())

    def drop(self, inode: int) -> None:
        for link in (self.dir / "fd").iterdir():
            if os.readlink(link) == f"socket:[{inode}]":
                link.unlink()


class World:
    """One fake host.  Times given to ``at`` are seconds from the start."""

    def __init__(self, root: Path) -> None:
        self.proc = root / "proc"
        self.proc.mkdir()
        self.clock = FakeClock()
        self.t0 = self.clock.now
        # The fake host has been up for a day: process start times and ages
        # are read against this, never against the real machine's uptime
        # (a freshly booted one made every default-aged process negative).
        self.kernel = FakeKernel(procinfo.Proc(str(self.proc)))
        self.source = FakeSource(self.clock, self._due_actions)
        self._actions: list = []
        self.procs: dict[int, Proc] = {}
        self._inode = 70000
        self._port = 40000
        self.lines: list[logging.LogRecord] = []
        self.watcher: Watcher | None = None
        self.killer: FakeKiller | None = None

    def boottime(self) -> float:
        """The fake host's CLOCK_BOOTTIME seconds."""
        return self.clock.now + UPTIME

    # -- processes --------------------------------------------------------

    def process(self, pid: int, comm: str = "server", cmdline: str | None = None, ppid: int = 1,
                uid: int = 0, age: float = 3600.0, unit: str = "app.service",
                fd_limit: int = 1024, kthread: bool = False,
                started: float | None = None, cgroup: str | None = None) -> Proc:
        """``age``: seconds it has run at the fake clock's now; or
        ``started``: the fake clock's time it started (a restart the
        scenario places later, holding what its predecessor held)."""
        d = self.proc / str(pid)
        (d / "fd").mkdir(parents=True)
        (d / "task" / str(pid)).mkdir(parents=True)
        (d / "task" / str(pid) / "children").write_text("")
        began = self.boottime() - age if started is None else started + UPTIME
        ticks = int(began * procinfo.CLK_TCK)
        flags = procinfo.PF_KTHREAD if kthread else 0
        fields = ["S", str(ppid)] + ["0"] * 4 + [str(flags)] + ["0"] * 12 + [str(ticks)] + ["0"] * 10
        (d / "stat").write_text(f"{pid} ({comm}) {' '.join(fields)}\n")
        (d / "cmdline").write_bytes(((cmdline or comm).replace(" ", "\0") + "\0").encode())
        (d / "status").write_text(f"Name:\t{comm}\nUid:\t{uid}\t{uid}\t{uid}\t{uid}\n"
                                  f"FDSize:\t64\n")
        (d / "limits").write_text(f"Limit                     Soft Limit           Hard Limit\n"
                                  f"Max open files            {fd_limit}                 "
                                  f"{fd_limit}                 files\n")
        (d / "cgroup").write_text(f"0::{cgroup or '/system.slice/' + unit}\n")
        if ppid in self.procs:
            children = self.proc / str(ppid) / "task" / str(ppid) / "children"
            children.write_text(children.read_text() + f"{pid} ")
        proc = self.procs[pid] = Proc(self, pid, comm)
        return proc

    def set_fd_limit(self, pid: int, fd_limit: int, at: float) -> None:
        """prlimit at ``at``: its soft RLIMIT_NOFILE changes."""
        def go():
            (self.proc / str(pid) / "limits").write_text(
                f"Limit                     Soft Limit           Hard Limit\n"
                f"Max open files            {fd_limit}                 {fd_limit}"
                f"                 files\n")
        self._at(self.t0 + at, go)

    def rename(self, pid: int, comm: str, at: float) -> None:
        """The process sets its own name at ``at`` (prctl PR_SET_NAME)."""
        def go():
            stat = self.proc / str(pid) / "stat"
            if stat.exists():
                head, _, tail = stat.read_text().rpartition(") ")
                stat.write_text(f"{pid} ({comm}) {tail}")
        self._at(self.t0 + at, go)

    def exit(self, pid: int) -> None:
        """A process ends: its fds close; sockets no one else holds leave
        CLOSE_WAIT (an exit event)."""
        proc = self.procs.pop(pid, None)
        if proc is None:
            return
        held = [int(os.readlink(link)[8:-1]) for link in (proc.dir / "fd").iterdir()]
        shutil.rmtree(proc.dir)
        for inode in held:
            if not any(p.holds_inode(inode) for p in self.procs.values()):
                for key, diag in list(self.kernel.socks.items()):
                    if diag.inode == inode:
                        self._leave(key)

    # -- sockets ----------------------------------------------------------

    def listen(self, proc: Proc, port: int, netns: int = NS, backlog: int = 0) -> SockId:
        sock = SockId(4, LOCAL, port, b"\0\0\0\0", 0)
        inode = self._new_inode()
        self.kernel.socks[(netns, sock)] = DiagSock(sock, TCP_LISTEN, inode, inode, backlog, 0)
        proc.hold(inode)
        return sock

    def _new_inode(self) -> int:
        self._inode += 1
        return self._inode

    def close_wait(self, holders: list[Proc] | Proc, port: int, n: int = 1, at: float = 0.0,
                   evidence: str = "eof-ignored", netns: int = NS, uid: int = 0,
                   peer_port: int | None = None, kid: int | None = None,
                   event: bool = True) -> list[SockId]:
        """``n`` sockets that enter CLOSE_WAIT at ``at``, held by
        ``holders`` (several: forked or passed), with the kernel state that
        makes ``evidence`` (eof-ignored, unread, queued, sending)."""
        holders = holders if isinstance(holders, list) else [holders]
        out = []
        for _ in range(n):
            self._port += 1
            sock = SockId(4, LOCAL, port, PEER, peer_port or self._port)
            inode = 0 if evidence == "queued" else self._new_inode()
            cookie = kid or self._new_inode() + 10**9
            rq = 1 if evidence in ("unread", "queued") else 0
            wq = 100 if evidence == "sending" else 0
            diag = DiagSock(sock, TCP_CLOSE_WAIT, inode, cookie, rq, uid, wq, 60.0)
            when = self.t0 + at

            def arrive(diag=diag, netns=netns, inode=inode):
                self.kernel.socks[(netns, diag.sock)] = diag
                if inode:
                    for h in holders:
                        if self.procs.get(h.pid) is h:  # not after it exited
                            h.hold(inode)
            self._at(when, arrive)
            if event:
                self.source.push(Transition(Kind.ENTER, sock, when, kid=cookie + 7))
            out.append(sock)
        return out

    def closes(self, sock: SockId, at: float, netns: int = NS, event: bool = True,
               closer: Proc | None = None) -> None:
        """The holders close ``sock`` at ``at`` (CLOSE_WAIT -> LAST_ACK);
        ``closer``: the event names it, as the kernel does when the
        holder's own close() runs the exit (``by_owner``)."""
        def go():
            diag = self.kernel.socks.get((netns, sock))
            if diag is not None and diag.inode:
                for p in self.procs.values():
                    if p.holds_inode(diag.inode):
                        p.drop(diag.inode)
            self._leave((netns, sock), event, closer.pid if closer is not None else 0)
        self._at(self.t0 + at, go)

    def set_state(self, sock: SockId, at: float, netns: int = NS, **fields) -> None:
        """The socket's queues change at ``at`` (e.g. rqueue=0: EOF read)."""
        def go():
            diag = self.kernel.socks[(netns, sock)]
            self.kernel.socks[(netns, sock)] = diag._replace(**fields)
        self._at(self.t0 + at, go)

    def _leave(self, key, event: bool = True, closer: int = 0) -> None:
        diag = self.kernel.socks.pop(key, None)
        if diag is not None and event:
            self.source.push(Transition(Kind.EXIT, diag.sock, self.clock.now, cpu_pid=closer,
                                        kid=diag.cookie + 7, by_owner=bool(closer)))

    def lose_events(self, n: int, at: float) -> None:
        """The ring overflows at ``at``: ``n`` events dropped."""
        def go():
            self.source.lost_events += n
        self._at(self.t0 + at, go)

    # -- actions at times: the kernel's state changes with the clock --------

    def _at(self, when: float, action) -> None:
        if when <= self.clock.now:
            action()
            return
        self._actions.append((when, action))
        self._actions.sort(key=lambda a: a[0])
        self.source.wake_at(when)

    def _due_actions(self) -> None:
        while self._actions and self._actions[0][0] <= self.clock.now:
            self._actions.pop(0)[1]()

    # -- running ----------------------------------------------------------

    def watch(self, limit: int = 2, grace: float = 2.0, stall: float = 60.0,
              fd_percent: float | None = None, filters: Filters | None = None,
              act_before: float | None = None,
              max_kills: int = 3, per: float = 60.0, dry_run: bool = False,
              hook: str | None = None, scan_takes: float = 0.0,
              config: WatchConfig | None = None) -> Watcher:
        """The watcher with these settings, or ``config`` (rules)."""
        plan = Plan(wait=2.0, dry_run=dry_run, hook=hook)
        config = config or WatchConfig(Limits(limit, grace, max_kills, per,
                                              stall=max(grace, stall), fd_percent=fd_percent,
                                              act_before=act_before),
                                       plan, filters or Filters.parse(None, (), ()))
        current = Current(config)
        index = FdIndex(procinfo.Proc(str(self.proc)), self.clock)
        index.scanner = SlowScanner(index, self.clock, scan_takes) if scan_takes \
            else InlineScanner(index)
        resolver = OwnerResolver(self.kernel, index, clock=self.clock)
        self.killer = FakeKiller(self, current)
        self.watcher = Watcher(self.source, resolver, current, killer=self.killer,
                               clock=self.clock, boottime=self.boottime)
        handler = _Capture(self.lines, lambda: round(self.clock.now - self.t0, 3))
        logger = logging.getLogger("resreap.engine.decisions")
        logger.addHandler(handler)
        logger.setLevel(logging.DEBUG)
        self._handler = handler
        self._due_actions()
        self.watcher.start()
        return self.watcher

    def run(self, until: float) -> None:
        """Run the loop until ``until`` seconds from the start (bounded)."""
        w = self.watcher
        self.source.horizon = self.t0 + until
        for _ in range(100000):
            if self.clock.now >= self.t0 + until:
                return
            w.step()
        raise AssertionError("the loop did not reach its end time")

    def close(self) -> None:
        if getattr(self, "_handler", None) is not None:
            logging.getLogger("resreap.engine.decisions").removeHandler(self._handler)

    # -- what happened ----------------------------------------------------

    def said(self, event: str) -> list[dict]:
        return [dict(r.fields, at=r.at) for r in self.lines if r.getMessage() == event]

    def reaped(self) -> list[int]:
        return [t.info.pid for t in self.killer.targets]


class _Capture(logging.Handler):
    def __init__(self, lines: list, when) -> None:
        super().__init__(logging.DEBUG)
        self.lines, self.when = lines, when

    def emit(self, record: logging.LogRecord) -> None:
        if hasattr(record, "fields"):
            record.at = self.when()
            self.lines.append(record)
