"""#24 on the real kernel: real leaking servers, each judged by its own
[[rule]] in a real `watch` (timing, signals and dry run in the outcome
lines), `resreap rules` naming who falls under which, and a user's
look-alike unit (a real cgroup under user@UID.service, named like the
system service) left out of the service's rule."""

from __future__ import annotations

import contextlib
import json
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from procs import until
from resreap.engine.decisions import Event
from resreap.host import supervisor

UNIT = "resreap-test-edge.service"


def config(tmp_path, text: str) -> str:
    path = tmp_path / "rules.toml"
    path.write_text(text)
    path.chmod(0o644)
    return str(path)


def tagged() -> str:
    """A mark for this test's command lines: rules and filters match it
    alone (tests run side by side, each watch fenced to its own)."""
    return f"tag=rr{uuid.uuid4().hex[:10]}"


def leak(actors, n: int, tag: str, mode: str = "eof"):
    server = actors("leaky-server", "127.0.0.1", mode, tag)
    client = actors("clients", "127.0.0.1", server.port, n)
    client.send("close", "CLOSED")
    return server


def test_three_leaks_each_under_its_own_rule(bpf_ready, actors, watch_runs, tmp_path):
    """Three real leakers told apart by their port: one rule with a longer
    grace and SIGHUP first, one with the top level's TERM, one a dry run."""
    tag = tagged()
    slow, quick, tried = leak(actors, 3, tag), leak(actors, 2, tag), leak(actors, 2, tag)
    conf = config(tmp_path, f"""\
[watch]
filter = "{tag}"
limit = 2
grace = 0.5

[[rule]]
name = "slow"
match = {{ cmd = "{tag}", port = {slow.port} }}
limit = 3
grace = 3
first_signal = "HUP"

[[rule]]
name = "tried"
match = {{ cmd = "{tag}", port = {tried.port} }}
dry_run = true
""")
    run = watch_runs.start("--config", conf)
    began = time.monotonic()
    for server, rule in ((quick, "default"), (slow, "slow")):
        reap = run.wait_for(lambda e: e["event"] == Event.REAP and e["pid"] == server.pid, 20)
        assert reap["rule"] == rule
    seen = {e["pid"]: e for e in run.find(lambda e: e["event"] in (Event.REAP, Event.WOULD_REAP))}
    assert seen[slow.pid]["plan"] == "SIGHUP > SIGTERM > wait 2s > SIGKILL"
    assert seen[slow.pid]["oldest"] >= 3.0 and seen[quick.pid]["oldest"] < 3.0
    assert run.outcome(slow.pid)["signals"] == ["SIGHUP"]
    assert run.outcome(quick.pid)["signals"] == ["SIGTERM"]
    dry = run.outcome(tried.pid)
    assert dry["result"] == "dry-run" and dry["rule"] == "tried" and tried.alive()
    assert slow.wait_dead(5) and quick.wait_dead(5)
    assert time.monotonic() - began < 30


def test_rules_names_each_holders_rule(bpf_ready, actors, resreap_bin, tmp_path):
    tag = tagged()
    server = leak(actors, 2, tag)
    conf = config(tmp_path, f"""\
[watch]
default = "ignore"

[[rule]]
name = "edge"
match = {{ cmd = "{tag}", port = {server.port} }}
limit = 5
""")
    for _ in range(3):  # a first look on a busy host may not have found it yet
        out = subprocess.run([resreap_bin, "rules", "--config", conf, "--json"],
                             capture_output=True, text=True, timeout=60, check=True).stdout
        data = json.loads(out)
        mine = [h for h in data["holders"] if h["pid"] == server.pid]
        if mine and mine[0]["rule"] != "-":
            break
    assert [r["rule"] for r in data["rules"]] == ["edge"] and data["rules"][0]["any_user_can_match"]
    (mine,) = mine
    assert mine["rule"] == "edge" and mine["counting"] == 2 and mine["reap_in"] is None
    assert server.alive()


def _hierarchy() -> Path:
    """Where this host keeps the cgroups resreap reads a unit from: the
    name=systemd hierarchy where systemd keeps one, else the unified one."""
    kind = "name=systemd" if supervisor.host_keeps_named() else "cgroup2"
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split()
        sep = fields.index("-")
        if (kind == "cgroup2" and fields[sep + 1] == "cgroup2") or \
                (kind != "cgroup2" and "name=systemd" in fields[sep + 3]):
            return Path(fields[4])
    pytest.fail(f"no {kind} hierarchy mounted")


@contextlib.contextmanager
def placed(pid: int, path: str):
    """``pid`` moved into a cgroup made at ``path`` (and every cgroup made
    removed after, once the process is gone or moved back)."""
    root = _hierarchy()
    made = []
    here = root
    for part in path.strip("/").split("/"):
        here = here / part
        if not here.exists():
            here.mkdir()
            made.append(here)
    home = (root / "cgroup.procs")
    try:
        (here / "cgroup.procs").write_text(str(pid))
        yield
    finally:
        with contextlib.suppress(OSError):
            home.write_text(str(pid))
        for d in reversed(made):
            until(lambda d=d: not (d / "cgroup.procs").read_text().strip(), 5)
            with contextlib.suppress(OSError):
                d.rmdir()


def test_a_users_unit_named_like_the_service_is_not_under_its_rule(
        bpf_ready, actors, watch_runs, tmp_path):
    """#24's spoofing attempt with real cgroups: a leaking process in a
    user's own unit named like the system service (below user@UID.service,
    where systemd --user would put it), running under a name the rule
    looks for, is left alone; the same process in the system unit's cgroup
    is reaped under the rule."""
    tag = tagged()
    server = leak(actors, 3, tag)
    conf = config(tmp_path, f"""\
[watch]
default = "ignore"
grace = 0.5

[[rule]]
name = "edge"
match = {{ cmd = "{tag}", unit = "{UNIT}" }}
limit = 2
""")
    spoof = f"/user.slice/user-4242.slice/user@4242.service/app.slice/{UNIT}"
    with placed(server.pid, spoof):
        assert supervisor.read(server.pid).unit == "user@4242.service"
        run = watch_runs.start("--config", conf)
        time.sleep(3)  # six graces: its sockets would have counted long ago
        assert not run.find(lambda e: e.get("pid") == server.pid and e["event"] in (
            Event.REAP, Event.WOULD_REAP)) and server.alive()
        run.stop()
    with placed(server.pid, f"/system.slice/{UNIT}"):
        assert supervisor.read(server.pid).unit == UNIT
        run = watch_runs.start("--config", conf)
        reap = run.wait_for(lambda e: e["event"] == Event.REAP and e["pid"] == server.pid, 15)
        assert reap["rule"] == "edge" and reap["unit"] == UNIT
        assert server.wait_dead(5)
