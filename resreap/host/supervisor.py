"""Who restarts a process, and making sure it does.

Every process is in a cgroup whose path names its systemd unit
(``/system.slice/nginx.service``) or its container (``docker-<id>.scope``,
``/kubepods/.../<id>``, ``machine-<name>.scope``); resreap shows both in its
decision lines.  After a kill, a systemd service must come back: one with
``Restart=on-failure`` whose main process exits cleanly on SIGTERM stays
down, so resreap starts it again itself (``--no-restart-units`` turns this
off).

Who controls the cgroup path: a process can only move into cgroups it may
write, which for a user means its own delegated subtree under user.slice.
The system manager's unit is the first component below the slices: only
root (systemd) creates cgroups at that level, so a user cannot make resreap
start a system unit by naming a cgroup after it.  Deeper components (a user
unit, a container id) are labels: shown, escaped, never acted on.
"""

from __future__ import annotations

import enum
import os
import re
import subprocess
import time
from typing import Callable, NamedTuple

from resreap.errors import AccessDenied, ProcessGone
from resreap.host.procinfo import proc_errors

# /proc/PID/cgroup is a few short lines; a path is at most PATH_MAX.
CGROUP_MAX = 8192
SYSTEMCTL = "/usr/bin/systemctl"
JOURNALCTL = "/usr/bin/journalctl"

_UNIT = re.compile(r"^[A-Za-z0-9:_.\\@-]{1,255}\.(service|scope)$")
_CONTAINER = [
    # docker, containerd (Kubernetes' systemd driver), CRI-O, podman
    re.compile(r"^(?:docker|cri-containerd|crio|libpod|containerd)-([0-9a-f]{64})\.scope$"),
    # cgroupfs drivers: /docker/<id>, /kubepods/burstable/pod<uid>/<id>
    re.compile(r"^([0-9a-f]{64})$"),
]
_MACHINE = re.compile(r"^machine-(.{1,200})\.scope$")  # systemd-nspawn, libvirt
_MACHINE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$")
_USER_MANAGER = re.compile(r"^user@[0-9]+\.service$")


class Supervisor(NamedTuple):
    """Where a process lives, as its cgroup path says."""

    cgroup: str = ""
    unit: str | None = None       # the system manager's unit (nginx.service)
    container: str | None = None  # 12 hex digits of a container id, or a machine name

    def fields(self) -> dict[str, str]:
        """For decision lines: only what is known."""
        out = {}
        if self.unit:
            out["unit"] = self.unit
        if self.container:
            out["container"] = self.container
        return out

    @property
    def unit_cgroup(self) -> str | None:
        """The unit's own cgroup (the slices and the unit), to compare with
        what systemd says the unit's ControlGroup is."""
        if not self.unit:
            return None
        parts = _parts(self.cgroup)
        return "/" + "/".join(parts[:parts.index(self.unit) + 1])


def _parts(path: str) -> list[str]:
    # Read from inside another cgroup namespace (a container with hostPID),
    # paths outside ours start with "/..": what follows is still the path.
    return [p for p in path.split("/") if p and p != ".."]


def _unescape(name: str) -> str:
    # systemd escapes "-" inside names as \x2d (machine-my\x2dbox.scope)
    return re.sub(r"\\x([0-9a-f]{2})", lambda m: chr(int(m.group(1), 16)), name)


def parse(text: str, named: bool = True) -> Supervisor:
    """The supervisor named by the contents of /proc/PID/cgroup: the v1
    name=systemd line, or the unified (v2) one.  ``named``: this host's
    systemd keeps a name=systemd hierarchy (hybrid or legacy).  On a
    unified host such a line is a hierarchy someone else mounted (a
    container's old systemd mounts its own, and writes it): never read."""
    unified = named_path = None
    for line in text.splitlines():
        hierarchy, _, rest = line.partition(":")
        controllers, _, where = rest.partition(":")
        if hierarchy == "0" and controllers == "":
            unified = where
        elif controllers == "name=systemd" and named:
            named_path = where
    # Hybrid hosts have both; systemd places units in each, and the v1
    # name=systemd one is the one it always keeps.
    path = named_path if named_path is not None else unified
    if path is None:
        return Supervisor()
    parts = _parts(path)
    unit = None
    for part in parts:
        if part.endswith(".slice"):
            continue
        if _UNIT.match(part):
            unit = part
        break
    container = None
    for part in parts:
        if _USER_MANAGER.match(part):
            # Below a user's manager every name is the user's to choose (a
            # rootless container, or a cgroup named like one): no container
            # id is taken from there.
            break
        for pattern in _CONTAINER:
            if m := pattern.match(part):
                container = m.group(1)[:12]
        if m := _MACHINE.match(part):
            name = _unescape(m.group(1))
            # Unescaped, \xNN may be anything: a control character or a
            # shell metacharacter for a hook.  Only a plain machine name.
            container = name if _MACHINE_NAME.match(name) else container
    return Supervisor(path, unit, container)


_HOST_NAMED: dict[str, bool] = {}


def host_keeps_named(proc_root: str = "/proc") -> bool:
    """Does this host's systemd keep a name=systemd hierarchy?  Read once,
    from our own cgroup file (init's may be hidden)."""
    known = _HOST_NAMED.get(proc_root)
    if known is None:
        try:
            with open(f"{proc_root}/self/cgroup", "rb") as f:
                known = b":name=systemd:" in f.read(CGROUP_MAX)
        except OSError:
            known = False
        _HOST_NAMED[proc_root] = known
    return known


def read(pid: int, proc_root: str = "/proc") -> Supervisor:
    """``pid``'s supervisor; raises ProcessGone or AccessDenied."""
    with proc_errors(pid, "/cgroup"), open(f"{proc_root}/{pid}/cgroup", "rb") as f:
        raw = f.read(CGROUP_MAX)
    return parse(raw.decode("utf-8", "backslashreplace"), host_keeps_named(proc_root))


def of(pid: int, proc_root: str = "/proc") -> Supervisor:
    """``pid``'s supervisor, or an empty one when the process is gone or
    unreadable: for labels, where nothing is known is simply not shown."""
    try:
        return read(pid, proc_root)
    except (ProcessGone, AccessDenied):
        return Supervisor()


# -- bringing a systemd service back ---------------------------------------


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


class UnitState(NamedTuple):
    active: str     # ActiveState: active, reloading, inactive, failed, activating, deactivating
    sub: str        # SubState: running, dead, auto-restart, ...
    main_pid: int
    cgroup: str     # ControlGroup
    read_at: float = 0.0  # wall clock (the journal's), when systemctl answered
    # InvocationID: systemd makes a new one for every start of the unit
    # (auto-restarts too), so "the same invocation" means nothing else
    # started or restarted it in between.  "" where unknown.
    invocation: str = ""
    type: str = "simple"     # Type=
    restart: str = "on-failure"  # Restart=

    def up(self) -> bool:
        return self.active in ("active", "reloading")

    def other_invocation(self, before: "UnitState") -> bool:
        return bool(self.invocation and before.invocation and self.invocation != before.invocation)


# Restart= values under which systemd itself would have started the service
# again after its main process died of a signal or an error exit (what a
# leak's crash looks like): only such a service is resreap's to bring back.
RESTARTS_AFTER_A_CRASH = ("always", "on-failure", "on-abnormal", "on-abort")


# systemd's "Stopping UNIT..." (SD_MESSAGE_UNIT_STOPPING): logged by PID 1 for
# every stop job (systemctl stop, restart, a dependency's stop), never when
# the main process just dies.
UNIT_STOPPING = "de5b426a63be47a7b6ac3eaac82e2f6f"


class Systemctl:
    """The few questions resreap asks systemd, through systemctl."""

    def __init__(self, path: str = SYSTEMCTL, timeout: float = 5.0,
                 journal: str = JOURNALCTL) -> None:
        self.path, self.timeout, self.journal = path, timeout, journal

    def _run(self, *argv: str) -> subprocess.CompletedProcess:
        return subprocess.run(argv, capture_output=True, text=True,
                              timeout=self.timeout, stdin=subprocess.DEVNULL)

    def state(self, unit: str) -> UnitState | None:
        try:
            out = self._run(self.path, "show", "--property=ActiveState,SubState,MainPID,"
                            "ControlGroup,InvocationID,Type,Restart", "--", unit)
        except (OSError, subprocess.TimeoutExpired):
            return None
        if out.returncode != 0:
            return None
        props = dict(line.partition("=")[::2] for line in out.stdout.splitlines())
        try:
            main_pid = int(props.get("MainPID", "0") or 0)
        except ValueError:
            main_pid = 0
        return UnitState(props.get("ActiveState", ""), props.get("SubState", ""), main_pid,
                         props.get("ControlGroup", ""), time.time(),
                         props.get("InvocationID", ""), props.get("Type", ""),
                         props.get("Restart", ""))

    def stop_jobs_since(self, unit: str, since: float) -> bool | None:
        """Did systemd run a stop job for ``unit`` since ``since`` (wall
        clock)?  None when the journal cannot say.  Matched on fields only
        journald sets (_PID=1, _UID=0): a user's own log line with the same
        MESSAGE_ID cannot keep a service down."""
        try:
            out = self._run(self.journal, "--no-pager", "--quiet", "--output=cat",
                            f"--since=@{int(since) - 1}", f"MESSAGE_ID={UNIT_STOPPING}",
                            "_PID=1", "_UID=0", f"UNIT={unit}")
        except (OSError, subprocess.TimeoutExpired):
            return None
        if out.returncode != 0:
            return None
        return bool(out.stdout.strip())

    def start(self, unit: str) -> str | None:
        """None on success, else systemctl's complaint (one line)."""
        try:
            out = self._run(self.path, "start", "--no-block", "--", unit)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return str(exc)
        if out.returncode == 0:
            return None
        return (out.stderr.strip().splitlines() or [f"exit {out.returncode}"])[-1][:200]


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
        # sd_booted(): systemd is this host's init.  Not in a container
        # that sees the host's processes (a DaemonSet), where the unit names
        # are the host's and there is no systemd to ask.
        self.booted = os.path.isdir("/run/systemd/system") if booted is None else booted

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
