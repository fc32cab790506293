"""A real systemd to test the unit under: Debian 12 booted with
systemd-nspawn, as the unit's users run it.

The root file system is made once by debootstrap (about a minute, from the
apt mirror) and cached in RESREAP_CI_CACHE (default /var/cache/resreap-ci);
every boot runs on a throw-away overlay of it (--volatile=overlay), so a
test run starts from a clean system.  The container has no network: the
Python packages come from a wheelhouse built on the host (scripts/wheelhouse),
nothing of the host's compilers or kernel headers: the box is a host
that only runs resreap (libbpf1, no bcc), as production hosts are.
Commands run inside through nsenter.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

from debtree import debian_tree
from procs import patience

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ["systemd", "systemd-sysv", "dbus", "libbpf1", "python3-venv", "iproute2",
            "procps", "ca-certificates"]
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def rootfs() -> Path:
    """The box's cached Debian 12 tree (made if missing)."""
    return debian_tree(PACKAGES)


class Machine:
    """A booted container; ``run`` executes a command inside it."""

    def __init__(self, tree: Path, wheels: Path, log: Path) -> None:
        self.log = log
        self._log = open(log, "wb")
        self.proc = subprocess.Popen(
            ["systemd-nspawn", "--quiet", "-D", str(tree), "--volatile=overlay", "--boot",
             "--register=no", "--keep-unit", "--capability=all", "--private-network",
             "--system-call-filter=bpf perf_event_open",
             f"--bind-ro={ROOT}:/src", f"--bind-ro={wheels}:/wheels"],
            stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT,
            start_new_session=True)
        self.leader = 0
        try:
            self._wait_booted()
        except BaseException:
            self.close()
            raise

    def _wait_booted(self) -> None:
        deadline = time.monotonic() + patience(60)
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"systemd-nspawn exited: {self.log.read_text()[-2000:]}")
            if not self.leader:
                self.leader = _child_named(self.proc.pid, "systemd")
            if self.leader:
                state = self.run("systemctl", "is-system-running", check=False).stdout.strip()
                if state in ("running", "degraded"):
                    return
            time.sleep(0.2)
        raise TimeoutError(f"the container did not boot: {self.log.read_text()[-2000:]}")

    def run(self, *argv: str, check: bool = True, timeout: float = 120,
            input: str | None = None) -> subprocess.CompletedProcess:
        """``argv`` inside the container, as root, with a clean environment."""
        cmd = ["nsenter", "-t", str(self.leader), "-a", "env", "-i", f"PATH={PATH}", *argv]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=patience(timeout),
                              input=input)
        if check and done.returncode != 0:
            raise AssertionError(f"{' '.join(argv)} exited {done.returncode}:\n"
                                 f"{done.stdout}\n{done.stderr}")
        return done

    def sh(self, script: str, check: bool = True) -> subprocess.CompletedProcess:
        return self.run("sh", "-ec", script, check=check)

    def journal(self, unit: str, *args: str) -> str:
        return self.run("journalctl", "--no-pager", "-o", "cat", "-u", unit, *args).stdout

    def show(self, unit: str, prop: str) -> str:
        return self.run("systemctl", "show", "--value", "-p", prop, unit).stdout.strip()

    def close(self) -> None:
        """Power off (bounded), then make sure nspawn is gone."""
        if self.proc.poll() is None:
            if self.leader:
                # SIGRTMIN+4 asks systemd for a clean poweroff.
                try:
                    os.kill(self.leader, signal.SIGRTMIN + 4)
                except ProcessLookupError:
                    pass
            try:
                self.proc.wait(patience(30))
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(30)
        self._log.close()


def _child_named(parent: int, comm: str) -> int:
    """The first descendant of ``parent`` whose comm is ``comm`` (0: none yet)."""
    todo = [parent]
    for _ in range(64):  # nspawn's tree is shallow
        if not todo:
            return 0
        pid = todo.pop()
        for task in Path(f"/proc/{pid}/task").glob("*"):
            try:
                kids = (task / "children").read_text().split()
            except OSError:
                continue
            for kid in kids:
                try:
                    if Path(f"/proc/{kid}/comm").read_text().strip() == comm:
                        return int(kid)
                except OSError:
                    continue
                todo.append(int(kid))
    return 0


def wait_for(what: str, check, timeout: float = 30.0, every: float = 0.2):
    """Poll ``check()`` until it returns something true (bounded)."""
    deadline = time.monotonic() + patience(timeout)
    while True:
        got = check()
        if got:
            return got
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(every)
