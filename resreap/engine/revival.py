"""Bringing a reaped process's systemd service back (--restart-units): a
service with ``Restart=on-failure`` whose main process exits cleanly on
SIGTERM stays down, so resreap starts it again itself.  Only what the kill
took down: the unit's state is read just before the first signal, and
anything else (down before, not its main process, a oneshot, stopped by an
operator meanwhile) is left as it is.

Who controls the unit name: the first cgroup component below the slices,
which only systemd creates (host/supervisor), and systemd's own
ControlGroup for it must match."""

from __future__ import annotations

import time
from typing import Callable

from resreap.host import systemd
from resreap.host.supervisor import Supervisor
from resreap.host.systemd import Systemctl, UnitState
from resreap.model import Revival

# Restart= values under which systemd itself would have started the service
# again after its main process died of a signal or an error exit (what a
# leak's crash looks like): only such a service is resreap's to bring back.
RESTARTS_AFTER_A_CRASH = ("always", "on-failure", "on-abnormal", "on-abort")


# How long a unit may take to go down (ExecStop=, TimeoutStopSec) before
# resreap stops waiting for it.
SETTLE = 10.0


def bring_back(where: Supervisor, killed_pid: int, before: UnitState, systemctl: Systemctl,
               settle: float = SETTLE, clock: Callable[[], float] = time.monotonic,
               sleep: Callable[[float], None] = time.sleep) -> tuple[Revival, str]:
    """After ``killed_pid`` died: make sure its service runs again.  Only
    what the kill took down is started: a unit that was running with the
    killed process as its main one (``before``, read just before the first
    signal; Reviver.before refused the rest), in the same invocation since
    (nobody started, restarted or stopped it meanwhile).  One that systemd
    restarts itself, or that never stopped, is left alone: never a second
    restart."""
    unit = where.unit
    assert unit is not None
    deadline = clock() + settle
    while True:
        state = systemctl.state(unit)
        if state is None:
            return Revival.UNKNOWN, "systemctl did not answer"
        restarted = state.other_invocation(before) and (state.up() or state.active == "activating") \
            or state.up() and state.main_pid not in (0, killed_pid, before.main_pid)
        if state.sub == "auto-restart" or restarted:
            return Revival.BY_SYSTEMD, f"{unit} {state.active} ({state.sub})"
        if state.active in ("inactive", "failed"):
            if before.main_pid != killed_pid:
                return Revival.NOT_MAIN, (f"{unit} went {state.active}; pid {killed_pid} was "
                                          f"not its main process ({before.main_pid}): not started")
            if state.other_invocation(before):
                return Revival.STOPPED, f"{unit} ran again since the kill began: left {state.active}"
            # An admin's `systemctl stop` while the kill ran (or a stop
            # that dependencies propagated) is a decision: never undone.
            # The invocation stays the same through a stop: the journal says.
            stopped = systemctl.stop_jobs_since(unit, before.read_at)
            if stopped:
                return Revival.STOPPED, f"{unit} was stopped by systemd job since the kill began"
            problem = systemctl.start(unit)
            if problem:
                return Revival.START_FAILED, problem
            unsure = "; the journal could not say whether it was stopped" if stopped is None \
                else ""
            return Revival.STARTED, f"{unit} was {state.active} ({state.sub}){unsure}"
        if state.up() and before.main_pid != killed_pid:
            return Revival.RUNNING, f"{unit} {state.active}, main pid {state.main_pid}"
        # Still active with the dead pid as its main process (systemd has
        # not reaped it yet), stopping, or still starting: look again shortly.
        if clock() >= deadline:
            return Revival.UNSETTLED, f"{unit} still {state.active} ({state.sub})"
        sleep(0.1)


class Reviver:
    """The kill engine's partner for --restart-units: the unit's state
    just before the first signal, and after the kill, bring_back."""

    def __init__(self, systemctl: Systemctl | None = None, settle: float = SETTLE,
                 booted: bool | None = None) -> None:
        self.systemctl = systemctl or Systemctl()
        self.settle = settle
        self.booted = systemd.booted() if booted is None else booted

    def applies(self, where: Supervisor | None) -> bool:
        # Only system services: a scope (a login session, a container's
        # processes) cannot be started, and user@UID.service is a user's
        # whole manager, not the leaking program.
        return bool(self.booted and where and where.unit and where.unit.endswith(".service")
                    and not where.unit.startswith("user@") and ".." not in where.cgroup)

    def before(self, where: Supervisor, also: frozenset[str] = frozenset()
               ) -> UnitState | tuple[Revival, str]:
        """The unit's state just before the first signal, or why the unit is
        not resreap's to start again whatever happens.  ``also``: units an
        operator opted in (--restart-unit), started again even where their
        Restart= would not have (never a oneshot)."""
        unit = where.unit
        state = self.systemctl.state(unit)
        if state is None:
            return Revival.UNKNOWN, "systemctl did not answer"
        if state.cgroup and state.cgroup != where.unit_cgroup:
            return Revival.MISMATCH, f"systemd says {unit} is {state.cgroup}"
        if state.type == "oneshot":  # running, a oneshot is "activating"
            return Revival.NOT_RESTARTABLE, f"{unit} is a oneshot job: never run again"
        if not state.up() and state.active != "activating":
            # An operator stopped it (a KillMode=process unit keeps its
            # leftover processes): the kill of one of them must not start it.
            return Revival.WAS_DOWN, f"{unit} was {state.active} ({state.sub}) before the kill"
        if state.restart not in RESTARTS_AFTER_A_CRASH and unit not in also:
            return Revival.NOT_RESTARTABLE, (f"{unit} has Restart={state.restart or '?'}: "
                                             "not started again (opt in: --restart-unit)")
        return state

    def after(self, where: Supervisor, pid: int, before: UnitState) -> tuple[Revival, str]:
        return bring_back(where, pid, before, self.systemctl, self.settle)
