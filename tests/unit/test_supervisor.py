"""Who supervises a process (its cgroup path), and bringing a killed
process's systemd service back: with a fake systemctl, no systemd needed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from resreap.host import procinfo
from resreap.engine.config import Current, WatchConfig
from resreap.engine.filters import Filters
from resreap.engine.killer import Killer, Target
from resreap.engine.rules import Limits, Plan
from resreap.model import Result
from resreap.engine.revival import Reviver, bring_back
from resreap.host.supervisor import parse
from resreap.host.systemd import Systemctl, UnitState
from resreap.model import Revival

DOCKER = "a" * 64


@pytest.mark.parametrize("text, unit, container", [
    ("0::/system.slice/nginx.service\n", "nginx.service", None),
    ("0::/system.slice/system-getty.slice/getty@tty1.service\n", "getty@tty1.service", None),
    # a user's own units are labels inside user@UID.service, never the unit
    ("0::/user.slice/user-1000.slice/user@1000.service/app.slice/sshd.service\n",
     "user@1000.service", None),
    ("0::/user.slice/user-1000.slice/session-3.scope\n", "session-3.scope", None),
    (f"0::/system.slice/docker-{DOCKER}.scope\n", f"docker-{DOCKER}.scope", "a" * 12),
    (f"0::/kubepods/burstable/pod0d2c/{'b' * 64}\n", None, "b" * 12),
    (f"0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod1.slice/"
     f"cri-containerd-{'c' * 64}.scope\n", f"cri-containerd-{'c' * 64}.scope", "c" * 12),
    ("0::/machine.slice/machine-my\\x2dbox.scope/payload\n", "machine-my\\x2dbox.scope", "my-box"),
    # read from a container with its own cgroup namespace (a DaemonSet)
    ("0::/../../system.slice/redis-server.service\n", "redis-server.service", None),
    # hybrid hierarchy: the name=systemd line wins
    ("9:name=systemd:/system.slice/a.service\n4:memory:/x\n0::/\n", "a.service", None),
    ("4:memory:/x\n", None, None),
    ("0::/\n", None, None),
    ("0::/init.scope\n", "init.scope", None),
    ("0::/system.slice/not a unit name!.service\n", None, None),
    ("garbage without colons\n", None, None),
    # #21 item 11: below a user's manager no container id is taken (a user
    # names those cgroups), and a machine name carries no control or shell
    # characters once unescaped
    (f"0::/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-{DOCKER}.scope\n",
     "user@1000.service", None),
    (f"0::/user.slice/user-1000.slice/user@1000.service/app.slice/{DOCKER}\n",
     "user@1000.service", None),
    ("0::/machine.slice/machine-evil\\x0a\\x1b\\x3b.scope/payload\n",
     "machine-evil\\x0a\\x1b\\x3b.scope", None),
    ("0::/machine.slice/machine-a\\x24\\x28id\\x29.scope\n", "machine-a\\x24\\x28id\\x29.scope", None),
])
def test_parse(text, unit, container):
    where = parse(text)
    assert (where.unit, where.container) == (unit, container)


def test_a_name_systemd_line_is_not_read_on_a_unified_host():
    """#21 item 13: on a unified host a name=systemd hierarchy is one a
    container mounted (and may write): it must not name a system unit."""
    text = "1:name=systemd:/system.slice/nginx.service\n0::/user.slice/user-1000.slice/session-2.scope\n"
    assert parse(text, named=False).unit == "session-2.scope"
    assert parse(text, named=True).unit == "nginx.service"  # a hybrid host's own


def test_fields_name_only_what_is_known():
    assert parse("0::/system.slice/x.service").fields() == {"unit": "x.service"}
    assert parse(f"0::/docker/{DOCKER}").fields() == {"container": DOCKER[:12]}
    assert parse("0::/").fields() == {}


def test_unit_cgroup_is_the_slices_and_the_unit():
    where = parse("0::/system.slice/x.service/worker/deeper")
    assert where.unit_cgroup == "/system.slice/x.service"


def test_read_own_cgroup():
    from resreap.host import supervisor

    where = supervisor.read(os.getpid())
    assert where.cgroup  # every process has one


class FakeSystemctl:
    """States in order (the last one repeats); records starts."""

    def __init__(self, *states: UnitState | None, start_error: str | None = None,
                 stop_jobs: bool | None = False) -> None:
        self.states = list(states)
        self.started: list[str] = []
        self.start_error = start_error
        self.stop_jobs = stop_jobs    # what the journal says (None: cannot say)
        self.asked = 0
        self.since: list[float] = []

    def state(self, unit):
        self.asked += 1
        return self.states.pop(0) if len(self.states) > 1 else self.states[0]

    def start(self, unit):
        self.started.append(unit)
        return self.start_error

    def stop_jobs_since(self, unit, since):
        self.since.append(since)
        return self.stop_jobs


SERVICE = parse("0::/system.slice/leaky.service")
CG = "/system.slice/leaky.service"
RUNNING = UnitState("active", "running", 100, CG, invocation="inv-1")


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now

    def sleep(self, seconds):
        self.now += seconds


def _bring_back(fake, killed=100, before=RUNNING, settle=10.0):
    clock = Clock()
    return bring_back(SERVICE, killed, before, fake, settle, clock, clock.sleep)


def test_a_service_left_down_is_started():
    fake = FakeSystemctl(UnitState("inactive", "dead", 0, CG))
    assert _bring_back(fake)[0] is Revival.STARTED
    assert fake.started == ["leaky.service"]


def test_a_service_someone_stopped_during_the_kill_stays_down():
    """`systemctl stop` while resreap waited for the process: an operator's
    decision, never undone.  Asked from the moment of the first signal."""
    before = RUNNING._replace(read_at=1_800_000_000.5)
    fake = FakeSystemctl(UnitState("inactive", "dead", 0, CG), stop_jobs=True)
    revival, said = _bring_back(fake, before=before)
    assert revival is Revival.STOPPED and "stopped" in said
    assert fake.started == [] and fake.since == [before.read_at]


def test_a_journal_that_cannot_say_does_not_keep_a_service_down():
    fake = FakeSystemctl(UnitState("inactive", "dead", 0, CG), stop_jobs=None)
    revival, said = _bring_back(fake)
    assert revival is Revival.STARTED and fake.started == ["leaky.service"]
    assert "journal could not say" in said


def test_the_journal_is_asked_for_stop_jobs_from_pid_1_only(tmp_path):
    """The query matches fields only journald sets: a user's own log line
    with systemd's MESSAGE_ID cannot keep a service down."""
    args = tmp_path / "args"
    journal = tmp_path / "journalctl"
    journal.write_text(f'#!/bin/sh\nprintf "%s\\n" "$@" > {args}\n'
                       'echo "Stopping leaky.service..."\n')
    journal.chmod(0o755)
    assert Systemctl(journal=str(journal)).stop_jobs_since("leaky.service", 1000.7) is True
    said = args.read_text().split()
    assert {"_PID=1", "_UID=0", "UNIT=leaky.service", "--since=@999",
            "MESSAGE_ID=de5b426a63be47a7b6ac3eaac82e2f6f"} <= set(said)
    journal.write_text("#!/bin/sh\nexit 1\n")
    assert Systemctl(journal=str(journal)).stop_jobs_since("leaky.service", 1000.7) is None
    journal.write_text("#!/bin/sh\nexit 0\n")
    assert Systemctl(journal=str(journal)).stop_jobs_since("leaky.service", 1000.7) is False


def test_a_failed_service_is_started_and_a_refusal_reported():
    fake = FakeSystemctl(UnitState("failed", "failed", 0, CG), start_error="start-limit-hit")
    revival, said = _bring_back(fake)
    assert revival is Revival.START_FAILED and said == "start-limit-hit"


def test_waits_while_systemd_has_not_reaped_the_main_process():
    fake = FakeSystemctl(RUNNING, RUNNING, UnitState("deactivating", "stop-sigterm", 100, CG),
                         UnitState("inactive", "dead", 0, CG))
    assert _bring_back(fake)[0] is Revival.STARTED
    assert fake.asked == 4 and fake.started == ["leaky.service"]


@pytest.mark.parametrize("after", [
    UnitState("activating", "auto-restart", 0, CG),
    UnitState("activating", "start", 0, CG, invocation="inv-2"),  # started anew
    UnitState("active", "running", 101, CG),  # a new main process already
])
def test_a_service_systemd_restarts_is_not_restarted_twice(after):
    fake = FakeSystemctl(after)
    assert _bring_back(fake)[0] is Revival.BY_SYSTEMD
    assert fake.started == []


def test_a_killed_worker_leaves_the_running_service_alone():
    fake = FakeSystemctl(RUNNING)
    assert _bring_back(fake, killed=555)[0] is Revival.RUNNING
    assert fake.started == []


def test_a_service_that_never_settles_is_reported_not_started():
    fake = FakeSystemctl(UnitState("deactivating", "stop-sigterm", 100, CG))
    revival, _ = _bring_back(fake, settle=1.0)
    assert revival is Revival.UNSETTLED and fake.started == []


def test_no_answer_from_systemctl():
    assert _bring_back(FakeSystemctl(None))[0] is Revival.UNKNOWN


def test_only_system_services_on_a_systemd_host():
    reviver = Reviver(FakeSystemctl(RUNNING), booted=True)
    assert reviver.applies(SERVICE)
    assert not reviver.applies(parse("0::/user.slice/user-1000.slice/user@1000.service/a.service"))
    assert not reviver.applies(parse("0::/user.slice/user-1000.slice/session-2.scope"))
    assert not reviver.applies(parse("0::/../system.slice/x.service"))  # another cgroup ns
    assert not reviver.applies(parse("0::/"))
    assert not reviver.applies(None)
    assert not Reviver(FakeSystemctl(RUNNING), booted=False).applies(SERVICE)


def test_a_unit_whose_cgroup_systemd_disowns_is_not_touched():
    reviver = Reviver(FakeSystemctl(UnitState("active", "running", 100, "/system.slice/other")),
                      booted=True)
    revival = reviver.before(SERVICE)
    assert isinstance(revival, tuple) and revival[0] is Revival.MISMATCH


@pytest.mark.parametrize("restart_units, dry_run, expect_started", [
    (True, False, True), (False, False, False), (True, True, False)])
def test_the_killer_brings_the_service_back_after_a_real_kill(restart_units, dry_run,
                                                             expect_started):
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        fake = FakeSystemctl(RUNNING, UnitState("inactive", "dead", 0, CG))
        fake.states[0] = RUNNING._replace(main_pid=proc.pid)
        plan = Plan(signal=signal.SIGTERM, wait=5, dry_run=dry_run, restart_units=restart_units)
        killer = Killer(Current(WatchConfig(Limits(), plan, Filters())),
                        reviver=Reviver(fake, settle=5, booted=True))
        info = procinfo.HOST.read(proc.pid)
        assert killer.submit(Target(info, (), 0.0, where=SERVICE))
        killer.join(20)
        (outcome,) = killer.finished()
        if dry_run:
            assert outcome.result is Result.DRY_RUN and proc.poll() is None
        else:
            assert outcome.result is Result.TERMINATED
            assert proc.wait(5) == -signal.SIGTERM
        assert (fake.started == ["leaky.service"]) is expect_started
        assert (outcome.revive is not None and outcome.revive[0] is Revival.STARTED) \
            is expect_started
    finally:
        proc.kill()
        proc.wait()


def test_metrics_label_holders_with_unit_and_container():
    """#25: labels that survive a restart (no pid: a restarted service keeps
    its series), two holders of one service summed; kills apart from the
    other outcomes; kill durations as a histogram; reload success."""
    from resreap.ops.metrics import Exporter
    from resreap.model import Holder, Snapshot

    exporter = Exporter.__new__(Exporter)  # no endpoint: only the collector
    exporter.backend, exporter.loader, exporter.fallback = "bpf", "core", False
    exporter.reload_ok, exporter.reload_at = False, 1234.5
    exporter._snapshot = Snapshot(
        top=(Holder(7, "srv", "leaky.service", "", 3), Holder(9, "srv", "leaky.service", "", 1),
             Holder(8, "app", "", "abcdef012345", 2),
             Holder(10, "node", "", "fe", 6, None, "shop", "checkout-7d9f6")),
        holding=(Holder(7, "srv", "leaky.service", "", 5),), oldest=42.25,
        rule_outcomes={("default", "terminated", "", ""): 2, ("default", "killed", "", ""): 1,
                       ("default", "dry-run", "", ""): 4, ("default", "spared", "", ""): 1,
                       ("default", "terminated", "shop", "fe"): 1},
        kill_buckets=(0, 1, 1, 0, 0, 0, 1, 0, 0, 0, 0), kill_seconds=3.2,
        revivals={"started": 1})
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for f in exporter.collect() for s in f.samples}
    srv = (("comm", "srv"), ("container", ""), ("namespace", ""), ("pod", ""),
           ("unit", "leaky.service"))
    assert samples[("resreap_counting_sockets", srv)] == 4
    assert samples[("resreap_counting_sockets", (("comm", "app"), ("container", "abcdef012345"),
                                                 ("namespace", ""), ("pod", ""), ("unit", "")))] == 2
    # In a pod: its namespace and pod on the holder's gauges ...
    assert samples[("resreap_counting_sockets", (("comm", "node"), ("container", "fe"),
                                                 ("namespace", "shop"), ("pod", "checkout-7d9f6"),
                                                 ("unit", "")))] == 6
    # ... its namespace and container name, never the pod, on the counters.
    assert samples[("resreap_kills_total", (("container", "fe"), ("namespace", "shop"),
                                            ("result", "terminated"), ("rule", "default")))] == 1
    assert not any("pod" in dict(labels) for name, labels in samples
                   if name in ("resreap_kills_total", "resreap_outcomes_total"))
    assert not any("pid" in dict(labels) for _name, labels in samples)
    assert samples[("resreap_close_wait_sockets_by_holder", srv)] == 5
    assert samples[("resreap_close_wait_oldest_seconds", ())] == 42.25
    assert samples[("resreap_kills_total", (("container", ""), ("namespace", ""), ("result", "terminated"),
                                            ("rule", "default")))] == 2
    assert ("resreap_kills_total", (("container", ""), ("namespace", ""), ("result", "dry-run"),
                                    ("rule", "default"))) not in samples
    assert samples[("resreap_outcomes_total", (("container", ""), ("namespace", ""),
                                               ("result", "dry-run"), ("rule", "default")))] == 4
    assert samples[("resreap_kill_duration_seconds_bucket", (("le", "0.05"),))] == 1
    assert samples[("resreap_kill_duration_seconds_bucket", (("le", "+Inf"),))] == 3
    assert samples[("resreap_kill_duration_seconds_count", ())] == 3
    assert samples[("resreap_kill_duration_seconds_sum", ())] == 3.2
    assert samples[("resreap_last_reload_success", ())] == 0
    assert samples[("resreap_last_reload_timestamp_seconds", ())] == 1234.5
    assert samples[("resreap_revivals_total", (("revive", "started"),))] == 1


# -- #21 items 2, 6, 10: only what the kill took down is started ------------


def test_a_unit_already_down_before_the_kill_is_never_started():
    """An operator stopped a KillMode=process unit (cron, atd, containerd);
    a user's leftover job in its cgroup leaks and is reaped: the unit stays
    as the operator left it."""
    fake = FakeSystemctl(UnitState("inactive", "dead", 0, CG), UnitState("inactive", "dead", 0, CG))
    reviver = Reviver(fake, booted=True)
    revival = reviver.before(SERVICE)
    assert isinstance(revival, tuple) and revival[0] is Revival.WAS_DOWN
    assert fake.started == []


def test_a_killed_process_that_was_not_the_main_one_never_starts_the_unit():
    fake = FakeSystemctl(UnitState("inactive", "dead", 0, CG))
    revival, said = _bring_back(fake, killed=555)
    assert revival is Revival.NOT_MAIN and "not its main process" in said
    assert fake.started == []


@pytest.mark.parametrize("type_, restart, also, verdict", [
    ("oneshot", "no", frozenset(), Revival.NOT_RESTARTABLE),
    ("oneshot", "on-failure", frozenset({"leaky.service"}), Revival.NOT_RESTARTABLE),
    ("simple", "no", frozenset(), Revival.NOT_RESTARTABLE),
    ("simple", "on-success", frozenset(), Revival.NOT_RESTARTABLE),
    ("simple", "no", frozenset({"leaky.service"}), None),   # the operator opted in
    ("notify", "always", frozenset(), None),
    ("forking", "on-abnormal", frozenset(), None),
])
def test_only_long_running_services_that_systemd_would_restart(type_, restart, also, verdict):
    """A oneshot backup killed for its pooled connections must not run
    again from the start; a Restart=no service is the operator's to start."""
    state = RUNNING._replace(type=type_, restart=restart)
    got = Reviver(FakeSystemctl(state), booted=True).before(SERVICE, also)
    if verdict is None:
        assert got == state
    else:
        assert isinstance(got, tuple) and got[0] is verdict


def test_a_unit_still_activating_in_the_same_invocation_is_not_by_systemd():
    """A unit that is still starting (the same InvocationID) was not
    restarted by systemd: resreap waits, and says it never settled."""
    fake = FakeSystemctl(UnitState("activating", "start", 100, CG, invocation="inv-1"))
    revival, _ = _bring_back(fake, settle=1.0)
    assert revival is Revival.UNSETTLED and fake.started == []


def test_a_unit_started_and_stopped_again_during_the_kill_stays_down():
    """Another invocation since the first signal: someone else started it
    (and it went down again): not resreap's to undo, whatever the journal."""
    fake = FakeSystemctl(UnitState("inactive", "dead", 0, CG, invocation="inv-2"))
    revival, said = _bring_back(fake)
    assert revival is Revival.STOPPED and "ran again" in said
    assert fake.started == []


def test_the_state_asks_systemd_for_the_invocation_type_and_restart(tmp_path):
    tool = tmp_path / "systemctl"
    tool.write_text("#!/bin/sh\nprintf 'ActiveState=active\\nSubState=running\\nMainPID=7\\n"
                    "ControlGroup=/system.slice/x.service\\nInvocationID=abc\\nType=oneshot\\n"
                    "Restart=no\\n'\n")
    tool.chmod(0o755)
    state = Systemctl(path=str(tool)).state("x.service")
    assert (state.invocation, state.type, state.restart, state.main_pid) == \
        ("abc", "oneshot", "no", 7)
