"""Asking systemd about a unit, and starting one: the systemctl and
journalctl edge.  Their failures (missing, hung, refusing) become None or
a one-line complaint here; nothing above reads an OSError."""

from __future__ import annotations

import os
import subprocess
import time
from typing import NamedTuple

SYSTEMCTL = "/usr/bin/systemctl"
JOURNALCTL = "/usr/bin/journalctl"


def booted() -> bool:
    """sd_booted(): systemd is this host's init.  Not in a container that
    sees the host's processes (a DaemonSet), where the unit names are the
    host's and there is no systemd to ask."""
    return os.path.isdir("/run/systemd/system")


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
