"""`resreap watch --json` as a subprocess, with its decision log parsed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time

from procs import patience
from resreap.engine.decisions import Event

try:
    import tomllib
except ImportError:  # Python < 3.11: the package's own dependency
    import tomli as tomllib


# The event sources a kernel test may vary: BPF, polling through sock_diag,
# polling through /proc/net/tcp (hosts without sock_diag).
EVERY_BACKEND = ("bpf", "proc", "procfs")


def backend_args(backend: str) -> tuple[list[str], dict[str, str]]:
    """The flags and environment that run ``watch`` on ``backend``."""
    env = dict(os.environ)
    if backend == "procfs":
        env["RESREAP_SOCKET_TABLE"] = "procfs"
    return ["--backend", "bpf" if backend == "bpf" else "proc"], env


# Tests run side by side (scripts/test): a watch that may signal must be
# fenced to the test's own processes, by its command lines or its pids.
FENCES = ("-f", "--filter", "-p", "--pid", "-d", "--dry-run")


class WatchRun:
    # timeout: until the start line, which waits for bcc's compile: under
    # the 6.1 guest's emulation it once took over 120 s (20 s x 6); only an
    # upper bound, never waited for when the watch starts sooner.
    def __init__(self, resreap_bin: str, *args: str, timeout: float = 40,
                 env: dict | None = None, wrap: tuple[str, ...] = ()) -> None:
        """``wrap``: a command that runs the watch (prlimit ...)."""
        if not fenced(args):
            raise ValueError(f"watch {args} could signal another test's processes")
        self.proc = subprocess.Popen([*wrap, resreap_bin, "watch", "--json", *args], env=env,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        try:
            self.wait_for(lambda e: e["event"] == Event.START, timeout=timeout)
        except Exception:
            self.stop()
            raise

    def _read(self) -> None:
        for line in self.proc.stderr:
            self.lines.append(line.rstrip("\n"))

    @property
    def events(self) -> list[dict]:
        out = []
        for line in list(self.lines):
            try:
                out.append(json.loads(line))
            except ValueError:
                out.append({"event": "non-json", "line": line})
        return out

    def find(self, pred) -> list[dict]:
        return [e for e in self.events if pred(e)]

    def wait_for(self, pred, timeout: float = 10) -> dict:
        timeout = patience(timeout)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            hits = self.find(pred)
            if hits:
                return hits[0]
            if self.proc.poll() is not None and not self._reader.is_alive():
                break
            time.sleep(0.02)
        raise AssertionError(f"no matching log line within {timeout}s; log:\n" + "\n".join(self.lines))

    def transitions(self, kind: str, port: int) -> int:
        """Transitions of ``kind`` (enter, exit) on local port ``port`` that
        the watcher saw: its -D lines."""
        return len(self.find(lambda e: e["event"] == Event.TRANSITION and e["kind"] == kind
                             and e["lport"] == port))

    def outcome(self, pid: int, timeout: float = 10) -> dict:
        return self.wait_for(lambda e: e["event"] == Event.OUTCOME and e["pid"] == pid, timeout)

    def outcome_result(self, pid: int, result: str, timeout: float = 10) -> bool:
        """Wait for an outcome with this result (earlier ones, e.g. dry-run, may exist)."""
        return bool(self.wait_for(lambda e: e["event"] == Event.OUTCOME and e["pid"] == pid
                                  and e["result"] == result, timeout))

    def stop(self, timeout: float = 15) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(patience(timeout))
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._reader.join(5)
        return self.proc.returncode


def fenced(args) -> bool:
    """-f, -p or a dry run on the command line, or in the --config file;
    and every [[rule]] of that file fenced by its cmd or a dry run."""
    args = list(args)
    conf: dict = {}
    if "--config" in args:
        try:
            with open(args[args.index("--config") + 1], "rb") as f:
                conf = tomllib.load(f)
        except FileNotFoundError:  # a path inside a container: the flags fence it
            return any(a in FENCES for a in args)
    rules = conf.get("rule", [])
    if not all(r.get("dry_run") or r.get("match", {}).get("cmd") for r in rules):
        return False
    if any(a in FENCES for a in args):
        return True
    top = conf.get("watch", conf)
    return bool(top.get("filter") or top.get("pid") or top.get("dry_run")
                or top.get("default") == "ignore")


class Runs:
    """The watches one test started (the ``watch_runs`` fixture): each is
    stopped after the test, whatever happened."""

    def __init__(self, resreap_bin: str) -> None:
        self.resreap_bin = resreap_bin
        self.runs: list[WatchRun] = []

    def start(self, *args: str, env: dict | None = None, wrap: tuple[str, ...] = ()) -> WatchRun:
        run = WatchRun(self.resreap_bin, *args, env=env, wrap=wrap)
        self.runs.append(run)
        return run

    def stop(self) -> list[tuple[WatchRun, int]]:
        """Stop every run; (run, exit status) for each."""
        stopped = [(run, run.stop()) for run in self.runs]
        self.runs.clear()
        return stopped

