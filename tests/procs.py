"""Starting, talking to and always reaping the test's actor processes."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

ACTORS = Path(__file__).resolve().parent / "actors.py"
# Waits (never behaviour) stretch by this factor on slow machines: under QEMU
# emulation (.ci/guest-tests) everything takes several times longer.
SLOWDOWN = float(os.environ.get("RESREAP_TEST_SLOWDOWN", "1"))


def patience(seconds: float) -> float:
    return seconds * SLOWDOWN


def until(pred, timeout: float) -> bool:
    """Poll ``pred()`` for up to ``patience(timeout)``; its last answer."""
    deadline = time.monotonic() + patience(timeout)
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.05)
    return bool(pred())


class Actor:
    """One actor process.  ``facts`` holds what it printed with READY."""

    def __init__(self, role: str, *args: str, netns: str | None = None,
                 python: str = sys.executable, user: tuple[int, int] | None = None) -> None:
        script = str(ACTORS)
        if user is not None:
            # Another user may not reach this checkout: run a copy it can read.
            script = _public_copy()
            python = "/usr/bin/python3"
        # bytes pass through as they are (invalid UTF-8 in a command line)
        argv = [python, script, role, *(a if isinstance(a, bytes) else str(a) for a in args)]
        if user is not None:
            uid, gid = user
            argv = ["setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups", *argv]
        if netns:
            argv = ["ip", "netns", "exec", netns, *argv]
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True, bufsize=1)
        line = self.expect("READY", timeout=10)
        self.facts = dict(kv.split("=", 1) for kv in line.split()[1:])
        self.pid = int(self.facts.get("pid", self.proc.pid))

    def expect(self, word: str, timeout: float = 10) -> str:
        timeout = patience(timeout)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            ready, _, _ = select.select([self.proc.stdout], [], [], deadline - time.monotonic())
            if not ready:
                break
            line = self.proc.stdout.readline()
            if not line:
                raise RuntimeError(f"actor exited before {word!r} (rc={self.proc.poll()})")
            if line.startswith(word):
                return line.strip()
        raise TimeoutError(f"actor did not say {word!r} within {timeout}s")

    def send(self, command: str, reply: str | None = None) -> str | None:
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        return self.expect(reply) if reply else None

    @property
    def port(self) -> int:
        return int(self.facts["port"])

    def alive(self) -> bool:
        return self.proc.poll() is None

    def wait_dead(self, timeout: float) -> bool:
        try:
            self.proc.wait(patience(timeout))
            return True
        except subprocess.TimeoutExpired:
            return False

    def reap(self) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.stdin.close()
            except OSError:
                pass
            try:
                self.proc.wait(2)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        for stream in (self.proc.stdin, self.proc.stdout):
            try:
                stream.close()
            except OSError:
                pass


_PUBLIC: list[str] = []


def _public_copy() -> str:
    """actors.py in a world-readable temporary directory (made once)."""
    if not _PUBLIC:
        import atexit
        import shutil
        import tempfile

        where = tempfile.mkdtemp(prefix="resreap-actors-")
        os.chmod(where, 0o755)
        shutil.copy(ACTORS, where)
        os.chmod(f"{where}/actors.py", 0o644)
        atexit.register(shutil.rmtree, where, True)
        _PUBLIC.append(f"{where}/actors.py")
    return _PUBLIC[0]


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead for our purposes.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(") ")[2].split()[0] != "Z"
    except FileNotFoundError:
        return False


def kill_quietly(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
