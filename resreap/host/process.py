"""Acting on processes: signals through a pidfd, and running a command
(the hook).  OS errors are translated here, at the edge: a process that is
gone is ProcessGone (or a False answer), never a raw OSError above."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import time

from resreap.errors import AccessDenied, ProcessGone, ProcessReplaced
from resreap.host.procinfo import HOST, Proc

HAVE_PIDFD = hasattr(os, "pidfd_open") and hasattr(signal, "pidfd_send_signal")


class Pinned:
    """A process pinned by a pidfd (or, before Linux 5.3, by pid + start
    time re-checked right before each signal): a signal never reaches a
    recycled pid."""

    def __init__(self, pid: int, start: int, proc: Proc = HOST) -> None:
        self.pid, self.start, self.proc = pid, start, proc
        self.fd: int | None = None
        if HAVE_PIDFD:
            try:
                self.fd = os.pidfd_open(pid)
            except ProcessLookupError:
                raise ProcessGone(pid) from None
            except OSError:  # kernel without pidfd_open
                self.fd = None
        # Opened on the right process only if it is still the one we chose.
        if not proc.alive(pid, start):
            self.close()
            raise ProcessReplaced(pid)

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def _dead(self) -> bool:
        if not self.proc.alive(self.pid, self.start):
            return True
        try:
            return self.proc.is_zombie(self.pid)
        except AccessDenied:
            return False  # unreadable is not dead: wait on

    def exited(self, timeout: float = 0.0) -> bool:
        if self.fd is not None:
            poller = select.poll()
            poller.register(self.fd, select.POLLIN)
            return bool(poller.poll(max(0, int(timeout * 1000))))
        deadline = time.monotonic() + timeout
        while True:
            if self._dead():
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(min(0.02, max(0.0, deadline - time.monotonic())))

    def send(self, sig: signal.Signals) -> bool:
        """False if the process is gone already."""
        try:
            if self.fd is not None:
                signal.pidfd_send_signal(self.fd, sig)
            else:
                if not self.proc.alive(self.pid, self.start):
                    return False
                os.kill(self.pid, sig)
        except ProcessLookupError:
            return False
        return True


def run_command(command: str, env: dict[str, str], timeout: float) -> tuple[bool, str]:
    """Run ``command`` with /bin/sh in a session of its own, stdio closed;
    (exited 0?, status text).  Cut off, with everything it started, after
    ``timeout``."""
    try:
        proc = subprocess.Popen(["/bin/sh", "-c", command], env=env,
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, start_new_session=True)
    except OSError as exc:
        return False, f"could not start: {exc.strerror}"
    try:
        rc = proc.wait(timeout)
    except subprocess.TimeoutExpired:
        # Its own session: the whole hook, children included, is cut off.
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()
        return False, f"timed out after {timeout:g}s"
    return rc == 0, f"exit {rc}"
