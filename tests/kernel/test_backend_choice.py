"""--backend auto: BPF where it works, else polling, with a one-line reason.
Also: resreap runs (and reaps) on a host where bcc is missing."""

from __future__ import annotations

import os
import subprocess
import uuid

import pytest

from procs import patience
from watchrun import WatchRun
from resreap.engine.decisions import Event

pytestmark = [pytest.mark.kernel, pytest.mark.usefixtures("root_ready")]


@pytest.fixture
def hidden_bcc(tmp_path):
    """An environment in which `import bcc` fails, as on a host without it."""
    fake = tmp_path / "hide" / "bcc"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('hidden by the test')\n")
    return dict(os.environ, PYTHONPATH=str(fake.parent))


def no_tracepoint(argv: list[str]) -> list[str]:
    """Run argv in a private mount namespace whose tracefs has no events."""
    script = ("mount -t tmpfs none /sys/kernel/debug && mount -t tmpfs none /sys/kernel/tracing"
              " && mkdir /sys/kernel/tracing/events && exec \"$@\"")
    return ["unshare", "-m", "--propagation", "private", "sh", "-c", script, "sh", *argv]


def no_headers(argv: list[str]) -> list[str]:
    """Run argv in a private mount namespace without /lib/modules/RELEASE."""
    release = os.uname().release
    script = f"mount -t tmpfs none /lib/modules/{release} && exec \"$@\""
    return ["unshare", "-m", "--propagation", "private", "sh", "-c", script, "sh", *argv]


def not_permitted(argv: list[str]) -> list[str]:
    """Root, but without the capabilities that loading BPF needs."""
    return ["setpriv", "--bounding-set=-bpf,-sys_admin,-perfmon",
            "--inh-caps=-bpf,-sys_admin,-perfmon", *argv]


CASES = {
    "no bcc": (lambda argv: argv, True, "bcc is not importable"),
    "no tracepoint": (no_tracepoint, False, "no sock:inet_sock_set_state tracepoint"),
    "not permitted": (not_permitted, False, "not permitted to load BPF"),
    "no headers": (no_headers, False, "no kernel headers"),
}


@pytest.mark.parametrize("case", CASES)
def test_auto_falls_back_with_one_line_reason(resreap_bin, hidden_bcc, case):
    wrap, hide, reason = CASES[case]
    env = hidden_bcc if hide else None
    proc = subprocess.Popen(wrap([resreap_bin, "trace"]), env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        first = proc.stderr.readline()
        second = proc.stderr.readline()
    finally:
        proc.terminate()
        out, err = proc.communicate(timeout=patience(15))
    assert reason in first and "polling" in first and first.count("\n") == 1
    assert "proc backend" in second and "Ctrl-C to end" in second
    assert proc.returncode == 0 and "Traceback" not in err


@pytest.mark.parametrize("case", CASES)
def test_forced_bpf_fails_with_one_line_reason(resreap_bin, hidden_bcc, case):
    wrap, hide, reason = CASES[case]
    run = subprocess.run(wrap([resreap_bin, "trace", "--backend", "bpf"]),
                         env=hidden_bcc if hide else None, capture_output=True, text=True,
                         timeout=patience(60))
    assert run.returncode == 1
    assert reason in run.stderr and "--backend proc" in run.stderr
    assert run.stderr.count("\n") == 1


def test_watch_without_bcc_still_reaps(resreap_bin, hidden_bcc, actors):
    tag = f"tag=rr{uuid.uuid4().hex[:10]}"
    server = actors("leaky-server", "127.0.0.1", tag)
    client = actors("clients", "127.0.0.1", server.port, 2, tag)
    run = WatchRun(resreap_bin, "-f", tag[4:], "-i", "0.5", "-w", "0.5", env=hidden_bcc)
    try:
        backend = run.wait_for(lambda e: e["event"] == Event.BACKEND)
        assert "bcc is not importable" in backend["reason"]
        assert run.wait_for(lambda e: e["event"] == Event.START)["backend"] == "proc"
        client.send("close", "CLOSED")
        assert run.outcome(server.pid)["result"] == "terminated"
        assert client.alive()
    finally:
        assert run.stop() == 0
