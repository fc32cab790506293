"""Operating it: config file and reload, metrics, systemd notify, doctor."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
import urllib.request
import uuid

import pytest

from procs import patience
from services import free_port
from watchrun import WatchRun
from resreap.engine.decisions import Event

pytestmark = [pytest.mark.kernel, pytest.mark.usefixtures("bpf_ready")]


@pytest.fixture
def tag():
    return f"tag=rr{uuid.uuid4().hex[:10]}"


def test_config_file_with_flag_override_and_sighup_reload(resreap_bin, actors, tag, tmp_path):
    conf = tmp_path / "resreap.toml"
    conf.write_text(f'[watch]\nfilter = "{tag[4:]}"\nlimit = 7\ngrace = 0.5\nwait = 0.5\n'
                    "dry_run = true\n")
    run = WatchRun(resreap_bin, "--config", str(conf), "-l", "2")
    try:
        start = run.wait_for(lambda e: e["event"] == Event.START)
        assert start["limit"] == 2 and start["filter"] == tag[4:] and start["dry_run"] is True
        server = actors("leaky-server", "127.0.0.1", tag)
        actors("clients", "127.0.0.1", server.port, 2, tag).send("close", "CLOSED")
        run.wait_for(lambda e: e["event"] == Event.WOULD_REAP and e["pid"] == server.pid)
        assert server.alive()
        conf.write_text(conf.read_text().replace("dry_run = true", "dry_run = false"))
        run.proc.send_signal(signal.SIGHUP)
        reload = run.wait_for(lambda e: e["event"] == Event.RELOAD)
        assert reload["dry_run"] is False and reload["limit"] == 2  # the flag still wins
        assert run.outcome_result(server.pid, "terminated")
        conf.write_text("limit = 'broken'\n")
        run.proc.send_signal(signal.SIGHUP)
        bad = run.wait_for(lambda e: e["event"] == Event.RELOAD and "error" in e)
        assert "is not an integer" in bad["error"] and run.proc.poll() is None
    finally:
        assert run.stop() == 0


def test_metrics_are_scraped(resreap_bin, actors, tag):
    port = free_port()
    run = WatchRun(resreap_bin, "-f", tag[4:], "-i", "0.5", "-w", "0.5",
                   "--metrics", f"127.0.0.1:{port}")
    try:
        server = actors("leaky-server", "127.0.0.1", tag)
        actors("clients", "127.0.0.1", server.port, 3, tag).send("close", "CLOSED")
        assert run.outcome_result(server.pid, "terminated")
        deadline = time.monotonic() + patience(10)
        text = ""
        while ('resreap_kills_total{container="",namespace="",result="terminated",'
               'rule="default"} 1.0') not in text:
            assert time.monotonic() < deadline, text
            time.sleep(0.3)
            text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
        assert 'resreap_backend_info{backend="bpf",loader="core"} 1.0' in text
        assert "resreap_bpf_fallback 0.0" in text
        enter = [ln for ln in text.splitlines() if ln.startswith('resreap_events_total{kind="enter"}')]
        assert enter and float(enter[0].split()[-1]) >= 3
        assert "resreap_events_lost_total 0.0" in text
        assert "resreap_counting_sockets_other" in text
    finally:
        assert run.stop() == 0


def test_systemd_ready_and_watchdog_notifications(resreap_bin, tmp_path):
    path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(10)
    env = dict(os.environ, NOTIFY_SOCKET=path, WATCHDOG_USEC="200000")
    run = WatchRun(resreap_bin, "-f", "^no-such-process", env=env)
    try:
        got = []
        deadline = time.monotonic() + 10
        while not (any("READY=1" in m for m in got) and sum("WATCHDOG=1" in m for m in got) >= 3):
            assert time.monotonic() < deadline, got
            got.append(sock.recv(4096).decode())
        ready = [m for m in got if "READY=1" in m][0]
        assert "STATUS=watching " in ready and "(bpf, loader core)" in ready, ready
        # Before READY: more time asked for while the program loads (bcc,
        # where it compiles, may outlast systemd's start timeout).
        extend = [m for m in got[:got.index(ready)] if "EXTEND_TIMEOUT_USEC=" in m]
        assert extend and int(extend[0].split("EXTEND_TIMEOUT_USEC=")[1].split()[0]) >= 60e6
    finally:
        assert run.stop() == 0
        sock.close()


def test_doctor(resreap_bin):
    run = subprocess.run([resreap_bin, "doctor"],
                         capture_output=True, text=True, timeout=patience(120))
    assert run.returncode == 0, run.stdout + run.stderr
    lines = {ln.split()[1]: ln.split()[0] for ln in run.stdout.splitlines()}
    for name in ("root", "kernel", "tracepoint", "BTF", "program", "CO-RE", "bcc", "headers",
                 "sock_diag", "pidfd", "backend"):
        assert lines[name] == "OK", run.stdout
    assert "auto would use bpf, loader core" in run.stdout
    # this host's init is not systemd: nothing to start services again
    assert lines["supervisor"] == "OK" and "no systemd" in run.stdout
    js = subprocess.run([resreap_bin, "doctor", "--json"], capture_output=True, text=True,
                        timeout=patience(120))
    checks = [json.loads(ln) for ln in js.stdout.splitlines()]
    assert {c["name"] for c in checks} >= {"root", "bcc", "backend"}


def test_doctor_not_root_fails(resreap_bin):
    run = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                          resreap_bin, "doctor"],
                         capture_output=True, text=True, timeout=patience(120))
    assert run.returncode == 1
    assert run.stdout.splitlines()[0].startswith("FAIL root")


def test_doctor_and_the_bpf_backend_judge_headers_alike():
    """One predicate serves both: doctor must not call FAIL what BPF accepts
    (and headers are only bcc's need: not needed where CO-RE loads)."""
    from resreap.sources import bpf_events, core_loader
    from resreap.sources.program import OBJECT
    from resreap.ops import doctor

    headers = [c for c in doctor.checks() if c.name == "headers"][0]
    core = core_loader.unusable(OBJECT) is None
    assert (headers.status == doctor.OK) == (bpf_events.kernel_headers() is not None or core)
    if bpf_events.kernel_headers():
        assert headers.detail == bpf_events.kernel_headers()


def test_reload_command_waits_and_reports_a_rejected_config(resreap_bin, tag, tmp_path):
    """`resreap reload` (the unit's ExecReload) returns once the watch has
    re-read its file, and fails when the file was rejected (#12.5)."""
    conf = tmp_path / "resreap.toml"
    conf.write_text(f'filter = "{tag[4:]}"\nlimit = 2\n')
    run = WatchRun(resreap_bin, "--config", str(conf))
    try:
        conf.write_text(f'filter = "{tag[4:]}"\nlimit = 5\n')
        ok = subprocess.run([resreap_bin, "reload"],
                            capture_output=True, text=True, timeout=patience(60))
        assert ok.returncode == 0 and "limit=5" in ok.stdout, ok.stderr
        assert run.find(lambda e: e["event"] == Event.RELOAD and e.get("limit") == 5)
        conf.write_text("limit = 'broken'\n")
        bad = subprocess.run([resreap_bin, "reload", "--pid", str(run.proc.pid)],
                             capture_output=True, text=True, timeout=patience(60))
        assert bad.returncode == 1 and "reload rejected" in bad.stderr
        assert "is not an integer" in bad.stderr and run.proc.poll() is None
    finally:
        assert run.stop() == 0
    gone = subprocess.run([resreap_bin, "reload"],
                          capture_output=True, text=True, timeout=patience(60))
    assert gone.returncode == 2 and "no resreap watch" in gone.stderr


def test_reload_finds_a_dry_run_and_leaving_dry_run_takes_the_lock(resreap_bin, tag, tmp_path):
    """#23: a dry run takes no lock, so `resreap reload` found nothing (the
    DaemonSet starts in dry run).  It registers itself now; a reload that
    leaves dry run takes the one-watch lock; a second dry run beside it is
    reloaded with --pid."""
    conf = tmp_path / "resreap.toml"
    conf.write_text(f'filter = "{tag[4:]}"\ndry_run = true\n')
    run = WatchRun(resreap_bin, "--config", str(conf))
    other = None
    try:
        start = run.wait_for(lambda e: e["event"] == Event.START)
        assert start["lock"] == "none (dry run; registered for resreap reload)"
        other = WatchRun(resreap_bin, "--config", str(conf))
        said = other.wait_for(lambda e: e["event"] == Event.START)["lock"]
        assert "another dry run is registered" in said
        conf.write_text(f'filter = "{tag[4:]}"\nlimit = 7\n')
        ok = subprocess.run([resreap_bin, "reload"], capture_output=True, text=True,
                            timeout=patience(60))
        assert ok.returncode == 0 and f"pid {run.proc.pid} reloaded" in ok.stdout, ok.stderr
        assert "dry_run=False" in ok.stdout
        # Acting now: it holds the lock, and is what reload finds first.
        again = subprocess.run([resreap_bin, "reload"], capture_output=True, text=True,
                               timeout=patience(60))
        assert again.returncode == 0 and f"pid {run.proc.pid} reloaded" in again.stdout
    finally:
        if other is not None:
            assert other.stop() == 0
        assert run.stop() == 0
