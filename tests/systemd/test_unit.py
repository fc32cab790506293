"""The shipped unit under a real systemd (Debian 12 in systemd-nspawn),
installed as the README says: BPF under the unit's hardening, a leaking
Restart=on-failure service reaped and brought back, reaps at warning
priority, restart after kill -9, reload feedback, upgrade, a clean stop,
and the unit's exposure score."""

from __future__ import annotations

import json
import re
import subprocess
import tempfile
from pathlib import Path

import pytest

from machine import ROOT, Machine, rootfs, wait_for
from sidebyside import host_share

# One worker runs these, between others: the container is booted once per
# session (per module, it would boot again after every other test).
pytestmark = [pytest.mark.systemd, pytest.mark.xdist_group("systemd")]

LEAKY = """\
[Unit]
Description=a server that leaks sockets in CLOSE_WAIT
[Service]
ExecStart=/usr/bin/python3 /src/tests/systemd/leaky.py 7000
Restart=on-failure
"""
CLIENTS = """\
import socket, time
for _ in range(3):
    s = socket.create_connection(("127.0.0.1", 7000))
    s.close()
"""
STUBBORN = """\
[Unit]
Description=a leaking server that ignores SIGTERM
[Service]
ExecStart=/usr/bin/python3 /src/tests/systemd/leaky.py 7001 stubborn
Restart=on-failure
TimeoutStopSec=0.5
"""
# KillMode=process: a stop ends only the main process; the leaking server
# it started stays behind in the unit's cgroup (cron's and atd's jobs do).
LEFTOVER = """\
[Unit]
Description=a service whose stop leaves a leaking process behind
[Service]
ExecStart=/bin/sh -c '/usr/bin/python3 /src/tests/systemd/leaky.py 7002 & exec sleep infinity'
KillMode=process
Restart=on-failure
"""
# A job, not a service: run once (each run appends a line), never again.
ONESHOT = """\
[Unit]
Description=a oneshot job that leaks pooled connections
[Service]
Type=oneshot
ExecStart=/bin/sh -c 'echo run >> /run/oneshot.runs; exec /usr/bin/python3 /src/tests/systemd/leaky.py 7003'
"""
# wait: a stubborn process's SIGKILL comes 5 s after its SIGTERM, time for
# an operator's stop to begin first.
CONFIG = "[watch]\nlimit = 2\ngrace = 1.0\nwait = 5.0\n"


@pytest.fixture(scope="session")
def machine(root_ready, tmp_path_factory):
    with tempfile.TemporaryDirectory(prefix="resreap-wheels-") as wheels:
        log = Path(tempfile.mkstemp(prefix="resreap-nspawn-", suffix=".log")[1])
        box = None
        try:
            # Making the tree, booting and installing load the whole host:
            # never beside a test marked alone.
            with host_share(tmp_path_factory):
                tree = rootfs()
                subprocess.run([str(ROOT / "scripts/wheelhouse"), wheels], check=True,
                               capture_output=True, timeout=600)
                box = Machine(tree, Path(wheels), log)
                # As the README says, offline: the wheelhouse, no index.
                box.run("/src/scripts/install-service", "--wheelhouse", "/wheels", timeout=300)
                box.sh(f"cat > /etc/resreap/resreap.toml <<'EOF'\n{CONFIG}EOF\n"
                       "systemctl restart resreap")
                wait_for("resreap to start", lambda: "start backend=" in box.journal("resreap"))
            yield box
        finally:
            if box is not None:
                box.close()
            log.unlink(missing_ok=True)


def _main_pid(box: Machine, unit: str) -> int:
    return int(box.show(unit, "MainPID") or 0)


def _started(box: Machine) -> list[str]:
    return [line for line in box.journal("resreap").splitlines() if line.startswith("start backend=")]


def test_bpf_backend_under_the_unit(machine):
    """#22: the box has no compiler: no bcc, no LLVM, no clang, no kernel
    headers (nothing of the host's is bound in); the prebuilt program runs."""
    lines = _started(machine)
    assert lines and "backend=bpf loader=core" in lines[-1], machine.journal("resreap")
    assert "fall" not in machine.journal("resreap")  # no silent fallback to polling
    absent = machine.sh("python3 -c 'import bcc' 2>/dev/null || echo no-bcc; "
                        "ls /usr/lib/llvm-* /usr/src/linux-headers-* 2>/dev/null | wc -l; "
                        "command -v clang clang-14 || echo no-clang", check=False).stdout.split()
    assert absent == ["no-bcc", "0", "no-clang"], absent


def test_doctor_names_systemd_as_the_supervisor(machine):
    out = machine.run("/opt/resreap/venv/bin/resreap", "doctor").stdout
    line = [ln for ln in out.splitlines() if ln.split()[1] == "supervisor"][0]
    assert line.startswith("OK") and "systemd 252: services left down are started again" in line


def test_the_unit_verifies_and_scores_at_most_3(machine):
    # (no man-db in the minimal tree: the Documentation= check is skipped)
    machine.run("systemd-analyze", "verify", "--man=no", "/etc/systemd/system/resreap.service")
    report = machine.run("systemd-analyze", "security", "--no-pager", "resreap.service").stdout
    score = float(re.search(r"Overall exposure level for resreap.service: ([\d.]+)", report)[1])
    assert score <= 3.0, report


def test_a_broken_config_on_reload_fails_and_keeps_the_old_settings(machine):
    pid = _main_pid(machine, "resreap")
    machine.sh("cp /etc/resreap/resreap.toml /tmp/good.toml && "
               "echo 'limit = \"broken\"' > /etc/resreap/resreap.toml")
    try:
        failed = machine.run("systemctl", "reload", "resreap", check=False)
    finally:
        machine.sh("cp /tmp/good.toml /etc/resreap/resreap.toml")
    assert failed.returncode != 0
    journal = machine.journal("resreap")
    assert "keeping the old settings" in journal and "'broken'" in journal
    assert _main_pid(machine, "resreap") == pid  # still the same daemon
    ok = machine.run("systemctl", "reload", "resreap", check=False)
    assert ok.returncode == 0, ok.stderr
    assert re.search(r"(?m)^reload limit=2 grace=1 ", machine.journal("resreap"))


def test_a_leaking_on_failure_service_is_reaped_and_comes_back(machine):
    machine.sh(f"cat > /etc/systemd/system/leaky.service <<'EOF'\n{LEAKY}EOF\n"
               "systemctl daemon-reload && systemctl start leaky")
    first = wait_for("leaky's main pid", lambda: _main_pid(machine, "leaky"))
    wait_for("leaky to listen", lambda: ":7000" in machine.run("ss", "-tln").stdout)
    machine.run("python3", "-c", CLIENTS)

    def outcome():
        return [line for line in machine.journal("resreap").splitlines()
                if f"outcome pid={first} " in line]
    line = wait_for("the outcome line", outcome)[0]
    assert "unit=leaky.service" in line and "result=terminated" in line
    # SIGTERM is a clean exit to Restart=on-failure: systemd left it down,
    # resreap started it again.
    assert "revive=started" in line, line
    again = wait_for("leaky to come back", lambda: _main_pid(machine, "leaky"))
    assert again != first
    assert machine.show("leaky", "ActiveState") == "active"

    # Reap and outcome at warning priority (journalctl -p warning lists them).
    reap = [json.loads(raw) for raw in machine.run(
        "journalctl", "--no-pager", "-o", "json", "-u", "resreap", "-p", "warning"
    ).stdout.splitlines()]
    ours = [r for r in reap if f"pid={first} " in r["MESSAGE"]]
    assert {r["MESSAGE"].split()[0] for r in ours} == {"reap", "outcome"}
    assert {r["PRIORITY"] for r in ours} == {"4"}
    # #25: native fields; the MESSAGE has no time or level of its own (the
    # journal keeps both); the process acted on is the entry's object, so
    # `journalctl -u leaky.service` shows its reap.
    assert {r["RESREAP_EVENT"] for r in ours} == {"reap", "outcome"}
    assert all(r["RESREAP_PID"] == str(first) and r["OBJECT_PID"] == str(first) for r in ours)
    assert all(len(r["MESSAGE_ID"]) == 32 for r in ours)
    theirs = [json.loads(raw) for raw in machine.run(
        "journalctl", "--no-pager", "-o", "json", "-u", "leaky.service").stdout.splitlines()]
    assert any(r.get("RESREAP_EVENT") == "reap" and r.get("OBJECT_PID") == str(first)
               for r in theirs)
    errors = machine.run("journalctl", "--no-pager", "-o", "cat", "-u", "resreap",
                         "-p", "err").stdout
    assert f"pid={first} " not in errors
    # #25: `resreap top` (its own dry run) lists the daemon's reap, from
    # the file the daemon keeps in its RuntimeDirectory.
    frame = json.loads(machine.run("/opt/resreap/venv/bin/resreap", "top", "--json").stdout)
    assert frame["watch"] == _main_pid(machine, "resreap")
    assert [r for r in frame["reaps"] if r["pid"] == first and r["where"] == "leaky.service"
            and r["result"] == "terminated" and r["revive"] == "started"], frame["reaps"]


# #31 item 7: one datagram to journald's socket, as a user, dressed as
# resreap's reap of leaky.service.
FORGED = """\
import socket, sys
fields = {"MESSAGE": "reap pid=1 comm=leaky unit=leaky.service forged", "PRIORITY": "4",
          "SYSLOG_IDENTIFIER": "resreap", "MESSAGE_ID": sys.argv[1], "RESREAP_EVENT": "reap",
          "RESREAP_UNIT": "leaky.service", "RESREAP_PID": "1", "OBJECT_SYSTEMD_UNIT": "leaky.service"}
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.sendto("".join(f"{k}={v}\\n" for k, v in fields.items()).encode(), "/run/systemd/journal/socket")
"""


def test_the_documented_journal_queries_cannot_be_forged(machine):
    """A user's entry with resreap's identifier, event, unit field and
    MESSAGE_ID was listed as a reap by `journalctl RESREAP_EVENT=reap
    RESREAP_UNIT=leaky.service`, `MESSAGE_ID=...` and `-t resreap`.  The
    queries the docs give now filter on `_SYSTEMD_UNIT=resreap.service`
    (journald sets it from the sender's cgroup) or `-u resreap`: the
    forged entry is not among them; the real reap (the test above) is."""
    from resreap.ops.journal import message_id

    reap_id = message_id("reap")
    machine.run("setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--",
                "python3", "-c", FORGED, reap_id)

    def listed(*query: str) -> list[dict]:
        out = machine.run("journalctl", "--no-pager", "-o", "json", *query, check=False).stdout
        return [json.loads(raw) for raw in out.splitlines() if raw.startswith("{")]

    def forged(entries: list[dict]) -> bool:
        return any(e.get("MESSAGE", "").endswith(" forged") for e in entries)

    # The forgery reached the journal: the old queries list it.
    wait_for("the forged entry", lambda: forged(listed("RESREAP_EVENT=reap",
                                                       "RESREAP_UNIT=leaky.service")))
    assert forged(listed(f"MESSAGE_ID={reap_id}")) and forged(listed("-t", "resreap"))
    for query in (("_SYSTEMD_UNIT=resreap.service", "RESREAP_EVENT=reap",
                   "RESREAP_UNIT=leaky.service"),
                  ("_SYSTEMD_UNIT=resreap.service", f"MESSAGE_ID={reap_id}"),
                  ("-u", "resreap", "RESREAP_EVENT=reap"),
                  ("-u", "leaky.service")):
        entries = listed(*query)
        assert not forged(entries), query
        assert any(e.get("RESREAP_EVENT") == "reap" and e.get("RESREAP_UNIT") == "leaky.service"
                   for e in entries), query


def test_a_service_stopped_during_the_kill_stays_down(machine):
    """resreap sent SIGTERM (ignored) and waits -w before SIGKILL; meanwhile
    an operator runs `systemctl stop`.  The process dies of that stop, the
    unit is inactive: starting it again would undo the operator."""
    machine.sh(f"cat > /etc/systemd/system/stubborn.service <<'EOF'\n{STUBBORN}EOF\n"
               "systemctl daemon-reload && systemctl start stubborn")
    pid = wait_for("stubborn's main pid", lambda: _main_pid(machine, "stubborn"))
    wait_for("stubborn to listen", lambda: ":7001" in machine.run("ss", "-tln").stdout)
    machine.run("python3", "-c", CLIENTS.replace("7000", "7001"))
    wait_for("the reap", lambda: f"reap pid={pid} " in machine.journal("resreap"), every=0.05)
    machine.run("systemctl", "stop", "--no-block", "stubborn")

    def outcome():
        return [line for line in machine.journal("resreap").splitlines()
                if f"outcome pid={pid} " in line]
    line = wait_for("the outcome line", outcome)[0]
    assert "revive=stopped" in line and "unit=stubborn.service" in line, line
    assert machine.show("stubborn", "ActiveState") in ("inactive", "failed")
    assert _main_pid(machine, "stubborn") == 0


def _outcome(machine: Machine, pid: int) -> str:
    return wait_for("the outcome line", lambda: [
        line for line in machine.journal("resreap").splitlines()
        if f"outcome pid={pid} " in line])[0]


def _server_pid(machine: Machine, port: int) -> int:
    """The pid of tests/systemd/leaky.py serving ``port`` (0: none yet)."""
    pids = machine.run("pgrep", "-f", f"leaky.py {port}$", check=False).stdout.split()
    return int(pids[0]) if len(pids) == 1 else 0


def test_a_unit_stopped_before_the_kill_is_not_started(machine):
    """#21 item 2: an operator stopped a KillMode=process unit; its leftover
    process leaks and is reaped.  Before, resreap started the unit the
    operator had stopped (revive=started)."""
    machine.sh(f"cat > /etc/systemd/system/leftover.service <<'EOF'\n{LEFTOVER}EOF\n"
               "systemctl daemon-reload && systemctl start leftover")
    wait_for("leftover to listen", lambda: ":7002" in machine.run("ss", "-tln").stdout)
    machine.run("systemctl", "stop", "leftover")
    left = wait_for("the process left behind", lambda: _server_pid(machine, 7002))
    assert machine.show("leftover", "ActiveState") in ("inactive", "failed")
    machine.run("python3", "-c", CLIENTS.replace("7000", "7002"))
    line = _outcome(machine, left)
    assert "result=terminated" in line and "revive=was-down" in line, line
    assert machine.show("leftover", "ActiveState") in ("inactive", "failed")
    assert _main_pid(machine, "leftover") == 0


def test_a_oneshot_job_is_never_run_again(machine):
    """#21 item 6: a oneshot job killed for its leaked connections ran a
    second time from the start when resreap started it again."""
    machine.sh(f"rm -f /run/oneshot.runs; cat > /etc/systemd/system/job.service <<'EOF'\n"
               f"{ONESHOT}EOF\nsystemctl daemon-reload && systemctl start --no-block job")
    wait_for("the job to listen", lambda: ":7003" in machine.run("ss", "-tln").stdout)
    pid = wait_for("the job's pid", lambda: _server_pid(machine, 7003))
    machine.run("python3", "-c", CLIENTS.replace("7000", "7003"))
    line = _outcome(machine, pid)
    assert "result=terminated" in line and "revive=not-restartable" in line, line
    assert "oneshot" in line
    wait_for("the job to end", lambda: machine.show("job", "ActiveState") in ("inactive", "failed"))
    assert machine.run("cat", "/run/oneshot.runs").stdout.split() == ["run"]


def test_kill_9_of_resreap_restarts_it(machine):
    before = _main_pid(machine, "resreap")
    machine.run("kill", "-9", str(before))
    after = wait_for("a new resreap", lambda: (p := _main_pid(machine, "resreap")) != before
                     and machine.show("resreap", "ActiveState") == "active" and p)
    assert after != before
    wait_for("it to watch again", lambda: len(_started(machine)) >= 2)
    assert "backend=bpf" in _started(machine)[-1]


def test_reinstalling_upgrades_the_running_daemon(machine):
    before = _main_pid(machine, "resreap")
    machine.run("/src/scripts/install-service", "--wheelhouse", "/wheels", timeout=300)
    after = wait_for("the restarted daemon", lambda: _main_pid(machine, "resreap"))
    assert after != before
    assert machine.run("cat", "/etc/resreap/resreap.toml").stdout == CONFIG  # kept


def test_metrics_need_the_network_drop_in(machine):
    """The unit allows no IP: --metrics fails at once, saying what to
    install; with the shipped drop-in it serves."""
    machine.sh("cp /etc/resreap/resreap.toml /tmp/good.toml && "
               "echo 'metrics = \"127.0.0.1:9469\"' >> /etc/resreap/resreap.toml")
    try:
        machine.run("systemctl", "restart", "resreap", check=False)
        wait_for("the refusal", lambda: "resreap.service.d/network.conf" in machine.journal("resreap"))
        machine.sh("mkdir -p /etc/systemd/system/resreap.service.d && "
                   "cp /src/packaging/resreap.service.d/network.conf "
                   "/etc/systemd/system/resreap.service.d/ && "
                   "systemctl daemon-reload && systemctl reset-failed resreap && "
                   "systemctl restart resreap")
        fetch = ("import urllib.request as u; "
                 "print(u.urlopen('http://127.0.0.1:9469/metrics', timeout=5).read().decode())")
        text = wait_for("metrics", lambda: machine.run("python3", "-c", fetch, check=False).stdout)
        assert 'resreap_backend_info{backend="bpf",loader="core"} 1.0' in text
    finally:
        machine.sh("cp /tmp/good.toml /etc/resreap/resreap.toml && "
                   "rm -rf /etc/systemd/system/resreap.service.d && systemctl daemon-reload && "
                   "systemctl reset-failed resreap; systemctl restart resreap")


def test_systemctl_status_says_what_it_watches(machine):
    """#23: STATUS= names what is watched and how (systemctl status shows it)."""
    text = machine.show("resreap", "StatusText")
    assert text.startswith("watching ") and "bpf, loader core" in text and "limit 2" in text, text


def _restart_with(machine: Machine, config: str) -> None:
    machine.sh(f"cat > /etc/resreap/resreap.toml <<'EOF'\n{config}EOF\n"
               "systemctl reset-failed resreap; systemctl restart resreap", check=False)


def test_a_bad_config_at_start_fails_at_once_instead_of_cycling(machine):
    """#23: exit 2 (a usage error) is not restarted (RestartPreventExitStatus):
    the unit fails once, the reason in the journal, instead of retrying to
    the start limit."""
    try:
        _restart_with(machine, "limit = 'broken'\n")
        wait_for("the unit to fail", lambda: machine.show("resreap", "ActiveState") == "failed")
        assert machine.show("resreap", "ExecMainStatus") == "2"
        assert machine.show("resreap", "NRestarts") == "0"
        assert "'broken'" in machine.journal("resreap", "-n", "20")
    finally:
        _restart_with(machine, CONFIG)
    wait_for("resreap to start again", lambda: machine.show("resreap", "ActiveState") == "active")


def test_the_log_file_goes_to_its_own_logs_directory(machine):
    """#23: LogsDirectory=resreap (0700) instead of all of /var/log."""
    try:
        _restart_with(machine, CONFIG + 'log_file = "/var/log/resreap/resreap.log"\n')
        wait_for("the log file", lambda: "start backend=" in machine.sh(
            "cat /var/log/resreap/resreap.log 2>/dev/null || true").stdout)
        assert machine.sh("stat -c %a /var/log/resreap").stdout.strip() == "700"
        _restart_with(machine, CONFIG + 'log_file = "/var/log/elsewhere.log"\n')
        wait_for("the refusal", lambda: machine.show("resreap", "ActiveState") == "failed")
        assert "Read-only file system" in machine.journal("resreap", "-n", "20")
    finally:
        _restart_with(machine, CONFIG)
    wait_for("resreap to start again", lambda: machine.show("resreap", "ActiveState") == "active")


# #24: two services, each under its own rule (matched by the unit systemd
# made, and for the edge also the port), each reaped by its own plan.
SERVICE = """\
[Unit]
Description=a leaking server under a rule of its own
[Service]
ExecStart=/usr/bin/python3 /src/tests/systemd/leaky.py {port}
Restart=always
"""
RULES = CONFIG + """
[[rule]]
name = "backend"
match = { unit = "backend-*.service" }
limit = 3
grace = 3.0
first_signal = "HUP"

[[rule]]
name = "edge"
match = { unit = "edge.service", port = 7010 }
limit = 2
"""


def _field(line: str, key: str) -> str:
    return re.search(rf' {key}=("[^"]*"|\S+)', line)[1].strip('"')


def test_two_services_each_reaped_under_its_own_rule(machine):
    machine.sh("cp /etc/resreap/resreap.toml /tmp/before-rules.toml && "
               f"cat > /etc/resreap/resreap.toml <<'EOF'\n{RULES}EOF\n"
               f"cat > /etc/systemd/system/edge.service <<'EOF'\n{SERVICE.format(port=7010)}EOF\n"
               f"cat > /etc/systemd/system/backend-1.service <<'EOF'\n"
               f"{SERVICE.format(port=7011)}EOF\n"
               "systemctl daemon-reload && systemctl start edge backend-1")
    try:
        wait_for("resreap to run", lambda: _main_pid(machine, "resreap"))
        machine.run("systemctl", "reload", "resreap")
        edge = wait_for("edge's main pid", lambda: _main_pid(machine, "edge"))
        backend = wait_for("backend's main pid", lambda: _main_pid(machine, "backend-1"))
        wait_for("both to listen", lambda: all(
            f":{p}" in machine.run("ss", "-tln").stdout for p in (7010, 7011)))
        listed = machine.run("/opt/resreap/venv/bin/resreap", "rules").stdout
        assert "rule backend: unit=backend-*.service; trusts unit" in listed, listed
        machine.run("python3", "-c", CLIENTS.replace("7000", "7010").replace("range(3)",
                                                                            "range(2)"))
        machine.run("python3", "-c", CLIENTS.replace("7000", "7011"))
        lines = {pid: _outcome(machine, pid) for pid in (edge, backend)}
        journal = machine.journal("resreap")
        reaps = {pid: [ln for ln in journal.splitlines() if f"reap pid={pid} " in ln][0]
                 for pid in (edge, backend)}
        assert _field(lines[edge], "rule") == "edge" and _field(lines[edge], "signals") == \
            "SIGTERM"
        assert _field(lines[backend], "rule") == "backend"
        assert _field(lines[backend], "signals") == "SIGHUP"  # its rule's first signal
        assert _field(reaps[backend], "plan") == "SIGHUP > SIGTERM > wait 5s > SIGKILL"
        assert float(_field(reaps[backend], "oldest")) >= 3.0  # its rule's grace
        assert float(_field(reaps[edge], "oldest")) < 3.0      # the top level's (1 s)
        assert all(_field(lines[p], "result") == "terminated" for p in (edge, backend))
    finally:
        machine.sh("systemctl stop edge backend-1; rm -f /etc/systemd/system/edge.service "
                   "/etc/systemd/system/backend-1.service; systemctl daemon-reload; "
                   "cp /tmp/before-rules.toml /etc/resreap/resreap.toml")
        machine.run("systemctl", "reload", "resreap", check=False)


def test_stop_is_clean(machine):
    assert machine.show("resreap", "TimeoutStopUSec") == "5s"
    machine.run("systemctl", "stop", "resreap")
    # Stopped by its own exit within TimeoutStopSec=5, not by systemd's
    # SIGKILL after it (Result would be "timeout").
    assert machine.show("resreap", "Result") == "success"
    assert machine.show("resreap", "ActiveState") == "inactive"
    assert re.search(r"(?m)^stop lost_events=0 ", machine.journal("resreap"))

