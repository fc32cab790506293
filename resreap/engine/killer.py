"""How a process is killed: pre-kill hook, optional first signal, signal,
wait, SIGKILL, all through a pidfd so that a recycled pid is never hit.

Each kill runs in its own thread so that a slow one (a hook, a -w wait)
delays no other.  A process that exits on its own on the way is a normal
outcome, not an error.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from typing import TYPE_CHECKING, NamedTuple, Protocol

from resreap.host.procinfo import HOST, Proc, ProcInfo
from resreap.host.process import Pinned, run_command
from resreap.errors import ProcessGone, ProcessReplaced
from resreap.model import Result, Revival, SockId
from resreap.engine.owners import held_count
from resreap.engine.revival import Reviver
from resreap.host.supervisor import Supervisor
from resreap.host.systemd import UnitState
from resreap.engine.rules import Plan, Rule

if TYPE_CHECKING:  # config imports rules, as this module does
    from resreap.engine.config import Current
    from resreap.engine.policy import StormKey

log = logging.getLogger(__name__)



class Target(NamedTuple):
    """A process that crossed the limit, and the facts that made it."""

    info: ProcInfo
    sockets: tuple[SockId, ...]
    oldest: float  # seconds the oldest counted socket has been in CLOSE_WAIT
    # Inodes of those sockets (0: still in an accept queue, held through the
    # listener) and the limit, to re-check right before the first signal.
    inodes: tuple[int, ...] = ()
    limit: int = 0
    evidence: str = ""  # e.g. "eof-ignored:3,queued:1" (evidence.summary)
    keys: tuple = ()    # the sockets' tracker keys: looked at again after the kill
    where: Supervisor | None = None  # its systemd unit / container
    # The rule that judged it (engine/rules): its plan is the one run.
    # None: the default rule in force.
    rule: "Rule | None" = None
    # What the storm bound counts this kill against (policy.StormKey): made
    # with the decision, recorded with the outcome, never re-derived.
    storm_key: "StormKey | None" = None
    # Why it is a target: "limit", "fd-percent" or "exhaustion" (its fds
    # forecast to run out within --act-before); and that forecast, seconds
    # (None: none, its leak does not grow).
    reason: str = "limit"
    exhausted_in: float | None = None
    # Whom the plan's signals go to when not the process itself (a rule's
    # kill = "container": its container's main process, engine/containers),
    # and why (said on the reap line; also when it fell back).
    signalled: ProcInfo | None = None
    kill_why: str = ""

    @property
    def rule_name(self) -> str:
        return self.rule.name if self.rule is not None else "default"


class Outcome(NamedTuple):
    target: Target
    result: Result
    signals: tuple[str, ...]
    hook_status: str | None
    took: float
    detail: str = ""
    revive: tuple[Revival, str] | None = None  # what became of its service


# Linux refuses an execve whose single environment string exceeds 128 KiB
# (MAX_ARG_STRLEN): an unbounded value would keep the hook from starting.
HOOK_VALUE_MAX = 16384
HOOK_SOCKETS_MAX = 100


def _bounded(text: str, limit: int = HOOK_VALUE_MAX) -> str:
    if len(text) <= limit:
        return text
    return text[:limit] + f"...[{len(text) - limit} more]"


def hook_env(target: Target, plan: Plan) -> dict[str, str]:
    """The facts a hook receives, as environment variables: never pasted
    into the command string, which is attacker-controlled text.  Every value
    is bounded."""
    env = dict(os.environ)
    where = target.where or Supervisor()
    socks = [f"{s.local}->{s.remote}" for s in target.sockets[:HOOK_SOCKETS_MAX]]
    if len(target.sockets) > HOOK_SOCKETS_MAX:
        socks.append(f"+{len(target.sockets) - HOOK_SOCKETS_MAX}")
    env.update({
        "RESREAP_PID": str(target.info.pid),
        "RESREAP_COMM": target.info.comm,
        "RESREAP_CMDLINE": _bounded(target.info.cmdline),
        "RESREAP_COUNT": str(len(target.sockets)),
        "RESREAP_OLDEST": f"{target.oldest:.3f}",
        "RESREAP_SOCKETS": _bounded(" ".join(socks)),
        "RESREAP_EVIDENCE": target.evidence,
        "RESREAP_SIGNAL": plan.signal.name,
        # Its supervisor, as its cgroup names it (empty: none known); in a
        # pod, who the runtime's records say it is (host/pods).
        "RESREAP_UNIT": where.unit or "",
        "RESREAP_CONTAINER": where.container_name,
        "RESREAP_CONTAINER_ID": where.container or "",
        "RESREAP_NAMESPACE": where.pod.namespace if where.pod else "",
        "RESREAP_POD": where.pod.name if where.pod else "",
        "RESREAP_POD_UID": where.ref.pod_uid if where.ref else "",
        "RESREAP_RULE": target.rule_name,
        # limit, fd-percent or exhaustion; seconds until its fds run out
        # (empty: no forecast).
        "RESREAP_REASON": target.reason,
        "RESREAP_EXHAUSTED_IN": f"{target.exhausted_in:.0f}" if target.exhausted_in is not None
        else "",
    })
    return {k: v.replace("\0", "") for k, v in env.items()}


def _run_hook(target: Target, plan: Plan) -> tuple[bool, str]:
    """Run the hook; (go ahead?, status text)."""
    return run_command(plan.hook, hook_env(target, plan), plan.hook_timeout)


def execute(target: Target, plan: Plan, proc: Proc = HOST) -> Outcome:
    """The kill sequence for one process (blocking)."""
    began = time.monotonic()
    info = target.info
    sent: list[str] = []

    def done(result: Result, hook: str | None = None, detail: str = "") -> Outcome:
        return Outcome(target, result, tuple(sent), hook, time.monotonic() - began, detail)

    if plan.dry_run:
        return done(Result.DRY_RUN)
    victim = target.signalled or info
    try:
        handle = Pinned(victim.pid, victim.start, proc)
    except ProcessReplaced:
        return done(Result.REPLACED)
    except ProcessGone:
        return done(Result.EXITED)
    try:
        hook_status = None
        if plan.hook:
            ok, hook_status = _run_hook(target, plan)
            if not ok:
                return done(Result.SPARED, hook_status)
        if handle.exited():
            return done(Result.EXITED, hook_status)
        if target.limit and target.inodes:
            # The hook may have taken seconds: is it still guilty?
            queued = sum(1 for i in target.inodes if not i)
            try:
                held = queued + held_count(info.pid, [i for i in target.inodes if i], proc)
            except ProcessGone:
                # The holder went on the way (not the process signalled,
                # under kill = "container"): nothing is left to end.
                return done(Result.EXITED if target.signalled is None else Result.RESOLVED,
                            hook_status, "the process holding them exited")
            if held < target.limit:
                return done(Result.RESOLVED, hook_status, f"holds {held} of them now")
        signals = [s for s in (plan.first_signal, plan.signal) if s is not None]
        for sig in signals:
            if not handle.send(sig):
                return done(Result.EXITED if not sent else Result.TERMINATED, hook_status)
            sent.append(sig.name)
            if handle.exited(plan.wait):
                return done(Result.TERMINATED, hook_status)
        if not handle.send(signal.SIGKILL):
            return done(Result.TERMINATED, hook_status)
        sent.append("SIGKILL")
        if handle.exited(5.0):
            return done(Result.KILLED, hook_status)
        return done(Result.FAILED, hook_status, "still alive 5s after SIGKILL (D state?)")
    finally:
        handle.close()


class KillEngine(Protocol):
    """What the watcher needs of a kill engine: Killer, or a test's fake
    (tests/unit/fakehost.FakeKiller declares it, and a unit test compares
    their signatures)."""

    current: Current  # the settings in force; a sequence keeps the plan it began with

    def busy(self, pid: int) -> bool: ...

    @property
    def full(self) -> bool: ...

    @property
    def running(self) -> int: ...

    def running_pids(self) -> list[int]: ...

    def submit(self, target: Target) -> bool: ...

    def finished(self) -> list[Outcome]: ...

    def join(self, timeout: float) -> None: ...


class Killer:
    """Runs kill sequences concurrently, one thread each, and hands back the
    outcomes.  A pid already in progress is not started twice."""

    def __init__(self, current: Current, proc: Proc = HOST, max_running: int = 32,
                 reviver: Reviver | None = None) -> None:
        self.current = current
        self.reviver = reviver or Reviver()
        self.proc = proc
        self.max_running = max_running
        self._lock = threading.Lock()
        self._running: dict[int, threading.Thread] = {}
        self._finished: list[Outcome] = []

    def busy(self, pid: int) -> bool:
        with self._lock:
            return pid in self._running

    @property
    def full(self) -> bool:
        with self._lock:
            return len(self._running) >= self.max_running

    @property
    def running(self) -> int:
        with self._lock:
            return len(self._running)

    def running_pids(self) -> list[int]:
        with self._lock:
            return sorted(self._running)

    def submit(self, target: Target) -> bool:
        pid = target.info.pid
        with self._lock:
            if pid in self._running or len(self._running) >= self.max_running:
                return False
            worker = threading.Thread(target=self._work, args=(target,),
                                      name=f"kill-{pid}", daemon=True)
            self._running[pid] = worker
        worker.start()
        return True

    def _work(self, target: Target) -> None:
        try:
            # Its rule's plan, kept for the whole sequence (a reload does
            # not change a kill that started).
            plan = target.rule.plan if target.rule is not None else self.current.plan
            revive = plan.restart_units and not plan.dry_run and self.reviver.applies(target.where)
            before = self.reviver.before(target.where, plan.restart_also) if revive else None
            outcome = execute(target, plan, self.proc)
            if before is not None and outcome.result.killed_it:
                after = self.reviver.after(target.where, target.info.pid, before) \
                    if isinstance(before, UnitState) else before
                outcome = outcome._replace(revive=after)
        except Exception as exc:  # never lose a worker silently
            log.exception("kill sequence for pid %d failed", target.info.pid)
            outcome = Outcome(target, Result.FAILED, (), None, 0.0, repr(exc))
        with self._lock:
            self._finished.append(outcome)
            self._running.pop(target.info.pid, None)

    def finished(self) -> list[Outcome]:
        with self._lock:
            out, self._finished = self._finished, []
        return out

    def join(self, timeout: float) -> None:
        """Wait for running sequences, at most ``timeout`` seconds in all."""
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                workers = list(self._running.values())
            if not workers or time.monotonic() >= deadline:
                return
            workers[0].join(max(0.0, deadline - time.monotonic()))
