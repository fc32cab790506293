"""#24: per-service rules.  The config file's [[rule]]s are parsed and
validated (errors name the rule), and the watcher judges each process under
the first rule it matches, on a fake host (fakehost.py): its own limit,
timing and plan, named on every line; a reload swaps them; and what a user
controls (command lines, their own units, nested cgroups) moves no process
into a rule meant for a system service."""

from __future__ import annotations

import signal

import pytest
import typer

from resreap.engine import view
from resreap.cli import app
from resreap.engine.decisions import Event
from resreap.engine.filters import parse_command_pattern
from resreap.engine.rules import Facts, Match
from resreap.errors import UsageError
from resreap.host.supervisor import parse
from resreap.model import Result
from resreap.ops import settings

DEFAULTS = {p.name: p.default for p in typer.main.get_command(app).commands["watch"].params
            if p.name not in ("ctx", "version", "config_file")}

TWO_SERVICES = """\
[watch]
limit = 2
grace = 1.0

[[rule]]
name = "java-backend"
match = { cmd = "^java .*backend", unit = "backend*.service" }
limit = 3
grace = 5
stall = 300
first_signal = "QUIT"

[[rule]]
name = "edge"
match = { unit = "nginx.service" }
limit = 2
grace = 2
"""


def resolve(tmp_path, text: str, typed=(), **flags):
    conf = tmp_path / "rules.toml"
    conf.write_text(text)
    conf.chmod(0o644)
    return settings.resolve(dict(DEFAULTS, **flags), set(typed), str(conf))


def server(world, pid, port, **kw):
    proc = world.process(pid, **kw)
    world.listen(proc, port)
    return proc


# -- the file ----------------------------------------------------------------

def test_rules_are_read_in_order_over_the_top_level_settings(tmp_path):
    st = resolve(tmp_path, TWO_SERVICES)
    java, edge = st.engine.rules
    assert (java.name, edge.name) == ("java-backend", "edge")
    assert java.limits.limit == 3 and java.limits.stall == 300
    assert java.plan.first_signal == signal.SIGQUIT and java.plan.signal == signal.SIGTERM
    # What a rule does not set, it takes from the top level (and the flags).
    assert edge.limits.stall == 60.0 and edge.plan.first_signal is None
    assert java.match.unit == "backend*.service" and java.match.cmd.text == "^java .*backend"
    assert st.engine.limits.limit == 2  # the default rule
    assert st.engine.ruleset().every()[-1].name == "default"


def test_dry_run_on_the_command_line_makes_every_rule_a_dry_run(tmp_path):
    text = TWO_SERVICES + "dry_run = false\n"
    st = resolve(tmp_path, text, typed={"dry_run"}, dry_run=True)
    assert all(r.plan.dry_run for r in st.engine.ruleset().every())
    assert not st.engine.acts
    st = resolve(tmp_path, text)
    assert st.engine.acts


@pytest.mark.parametrize("rule, error", [
    ('name = "edge"\nmatch = { unit = "nginx.service" }\nlimit = 0\n',
     "rule 'edge': bad limit value 0"),
    ('name = "edge"\nmatch = { unit = "nginx.service" }\nbackend = "proc"\n',
     "rule 'edge': unknown setting 'backend'"),
    ('name = "edge"\nlimit = 3\n', "rule 'edge': match = {...} is required"),
    ('name = "edge"\nmatch = {}\n', "rule 'edge': match = {...} is required"),
    ('name = "edge"\nmatch = { unit = "a/b.service" }\n', "rule 'edge': bad match unit"),
    ('name = "edge"\nmatch = { host = "x" }\n', "rule 'edge': unknown match key 'host'"),
    ('name = "edge"\nmatch = { port = 70000 }\n', "rule 'edge': match port = 70000"),
    ('name = "edge"\nmatch = { port = true }\n', "rule 'edge': match port = True"),
    ('name = "edge"\nmatch = { user = "no-such-user-here" }\n', "rule 'edge': match user"),
    ('name = "edge"\nmatch = { cmd = "(" }\n', "rule 'edge': bad -f pattern"),
    ('name = "edge"\nmatch = { container = "x y" }\n', "rule 'edge': bad match container"),
    ('name = "edge"\nmatch = { unit = "a.service" }\nsignal = "NOPE"\n',
     "rule 'edge': unknown signal"),
    ('name = "default"\nmatch = { unit = "a.service" }\n', "rule 'default': name ="),
    ('match = { unit = "a.service" }\n', "rule #1: name = None"),
    ('name = "has space"\nmatch = { unit = "a.service" }\n', "name = 'has space'"),
    ('name = "edge"\nmatch = { unit = "a.service" }\nact_before = 0\n',
     "rule 'edge': bad act_before value 0"),
    ('name = "edge"\nmatch = { unit = "a.service" }\nact_before = "10m"\n',
     "rule 'edge': act_before"),
])
def test_a_bad_rule_is_one_line_naming_it(tmp_path, rule, error):
    with pytest.raises(UsageError) as exc:
        resolve(tmp_path, f"[watch]\nlimit = 2\n\n[[rule]]\n{rule}")
    message = str(exc.value)
    assert error in message and "\n" not in message
    assert message.startswith(f"config {tmp_path / 'rules.toml'}: ")


def test_duplicate_names_and_a_bad_default_are_refused(tmp_path):
    twice = '[[rule]]\nname = "a"\nmatch = { port = 80 }\n'
    with pytest.raises(UsageError, match="rule 'a': a rule of that name comes earlier"):
        resolve(tmp_path, twice + twice)
    with pytest.raises(UsageError, match='default = .maybe.: expected "apply"'):
        resolve(tmp_path, '[watch]\ndefault = "maybe"\n')
    st = resolve(tmp_path, '[watch]\ndefault = "ignore"\n' + twice)
    assert st.engine.ignore_unmatched and st.engine.ruleset().default is None


# -- what each key trusts -----------------------------------------------------

def facts(cgroup: str, cmdline: str = "server", uids=(0, 0, 0, 0)) -> Facts:
    return Facts(cmdline, parse(f"0::{cgroup}\n"), frozenset(uids))


NGINX = Match(unit="nginx.service")


def test_a_users_unit_named_like_a_system_service_does_not_match():
    """A user's own unit (systemd --user, under user@UID.service) named
    nginx.service is the user's cgroup to name: its unit is user@UID."""
    mine = facts("/user.slice/user-1000.slice/user@1000.service/app.slice/nginx.service",
                 "nginx: master process /usr/sbin/nginx", (1000,) * 4)
    assert not NGINX.wants(mine, 80)
    assert not Match(unit="nginx*").wants(mine, 80)
    # ... and a command line naming nginx is no unit either
    session = facts("/user.slice/user-1000.slice/session-3.scope", "nginx", (1000,) * 4)
    assert not NGINX.wants(session, 80)
    assert NGINX.wants(facts("/system.slice/nginx.service"), 80)
    # A cmd-only rule, by design, matches anyone's process: `rules` says so.
    anyone = Match(cmd=parse_command_pattern("nginx"))
    assert anyone.wants(session, 80) and not anyone.trusted and NGINX.trusted


def test_a_cgroup_made_inside_a_container_does_not_name_another_container():
    """A container with a delegated cgroup subtree names the cgroups below
    its own: the outermost container is the one its runtime made."""
    outer, inner = "a" * 64, "b" * 64
    nested = facts(f"/system.slice/docker-{outer}.scope/docker-{inner}.scope")
    assert nested.where.container == "a" * 12
    assert not Match(container="bbbbbbbb").wants(nested, 80)
    assert Match(container="aaaa").wants(nested, 80)
    machine = facts("/machine.slice/machine-web.scope/payload/machine-db.scope")
    assert machine.where.container == "web"
    assert not Match(container="db").wants(machine, 80)


def test_user_needs_every_uid_to_be_that_user():
    """A setuid program run by another user keeps that user's real uid: it
    is not the service account's."""
    www = Match(uid=33, user="www-data")
    assert www.wants(facts("/system.slice/a.service", uids=(33,) * 4), 80)
    assert not www.wants(facts("/system.slice/a.service", uids=(1000, 33, 33, 33)), 80)
    assert not www.wants(facts("/system.slice/a.service", uids=()), 80)


def test_port_is_the_leaked_sockets_local_port():
    edge = Match(unit="nginx.service", port=443)
    nginx = facts("/system.slice/nginx.service")
    assert edge.wants(nginx, 443) and not edge.wants(nginx, 80)


def test_a_user_name_resolves_once_to_its_uid(tmp_path):
    import pwd

    root = pwd.getpwuid(0).pw_name
    st = resolve(tmp_path, f'[[rule]]\nname = "r"\nmatch = {{ user = "{root}" }}\n')
    assert st.engine.rules[0].match.uid == 0


# -- the watcher under rules -----------------------------------------------------

def two_services(world, tmp_path, text=TWO_SERVICES):
    backend = server(world, 1000, 8080, comm="java", cmdline="java -jar backend.jar",
                     unit="backend-1.service")
    nginx = server(world, 2000, 443, comm="nginx", unit="nginx.service")
    world.close_wait(backend, 8080, n=3, at=1.0)
    world.close_wait(nginx, 443, n=2, at=1.0)
    return world.watch(config=resolve(tmp_path, text).engine)


def test_two_services_each_reaped_under_its_own_rule(world, tmp_path):
    two_services(world, tmp_path)
    world.run(20)
    reaps = {r["pid"]: r for r in world.said(Event.REAP)}
    assert reaps[2000]["rule"] == "edge" and reaps[2000]["at"] == pytest.approx(3.0, abs=0.01)
    assert reaps[1000]["rule"] == "java-backend"
    assert reaps[1000]["at"] == pytest.approx(6.0, abs=0.01)  # its own grace of 5 s
    assert reaps[1000]["plan"] == "SIGQUIT > SIGTERM > wait 2s > SIGKILL"
    assert reaps[2000]["plan"] == "SIGTERM > wait 2s > SIGKILL"
    targets = {t.info.pid: t for t in world.killer.targets}
    assert targets[1000].rule.plan.first_signal == signal.SIGQUIT
    assert targets[1000].rule.name == "java-backend"
    outcomes = {o["pid"]: o["rule"] for o in world.said(Event.OUTCOME)}
    assert outcomes == {1000: "java-backend", 2000: "edge"}
    assert view.snapshot(world.watcher, 5).rule_outcomes == {
        ("edge", "terminated", "", ""): 1, ("java-backend", "terminated", "", ""): 1}


def test_a_rule_with_a_higher_limit_spares_what_the_default_would_reap(world, tmp_path):
    backend = server(world, 1000, 8080, comm="java", cmdline="java -jar backend.jar",
                     unit="backend-1.service")
    world.close_wait(backend, 8080, n=2, at=1.0)
    world.watch(config=resolve(tmp_path, TWO_SERVICES).engine)
    world.run(60)
    assert world.reaped() == []  # 2 < its rule's 3, though the default's limit is 2


def test_a_dry_run_rule_beside_an_acting_one(world, tmp_path):
    text = TWO_SERVICES.replace('first_signal = "QUIT"', 'first_signal = "QUIT"\ndry_run = true')
    two_services(world, tmp_path, text)
    world.run(20)
    said = {r["pid"]: r for r in world.said(Event.WOULD_REAP)}
    assert list(said) == [1000] and said[1000]["rule"] == "java-backend"
    assert [r["pid"] for r in world.said(Event.REAP)] == [2000]
    results = {o["pid"]: o["result"] for o in world.said(Event.OUTCOME)}
    assert results == {1000: "dry-run", 2000: "terminated"}
    assert 1000 in world.procs and 2000 not in world.procs


def test_overlapping_matches_the_first_rule_wins(world, tmp_path):
    text = """\
[[rule]]
name = "narrow"
match = { unit = "nginx.service", port = 443 }
limit = 5

[[rule]]
name = "wide"
match = { unit = "nginx*" }
limit = 2
"""
    nginx = server(world, 2000, 443, comm="nginx", unit="nginx.service")
    world.listen(nginx, 80)
    world.close_wait(nginx, 443, n=3, at=1.0)
    world.watch(config=resolve(tmp_path, text).engine)
    world.run(10)
    assert world.reaped() == []  # its 3 sockets on 443 fall under narrow (5)
    world.close_wait(nginx, 80, n=2, at=11.0)  # 80 falls through to wide (2)
    world.run(20)
    (reap,) = world.said(Event.REAP)
    assert reap["rule"] == "wide" and reap["count"] == 2
    assert all(s.endswith(":80->") is False for s in reap["sockets"])


def test_default_ignore_leaves_unmatched_processes_alone(world, tmp_path):
    other = server(world, 3000, 9000, comm="other", unit="other.service")
    world.close_wait(other, 9000, n=5, at=1.0)
    nginx = server(world, 2000, 443, comm="nginx", unit="nginx.service")
    world.close_wait(nginx, 443, n=2, at=1.0)
    text = '[watch]\ndefault = "ignore"\n' + TWO_SERVICES.split("\n", 3)[3]
    world.watch(config=resolve(tmp_path, text).engine)
    world.run(120)
    assert world.reaped() == [2000]


def test_a_users_look_alike_is_not_reaped_under_the_services_rule(world, tmp_path):
    """#24's attempt: a user's process named nginx, in a user unit named
    nginx.service, leaks under a config that reaps only nginx.service."""
    fake = world.process(4000, comm="nginx", cmdline="nginx: master process", uid=1000,
                         cgroup="/user.slice/user-1000.slice/user@1000.service/app.slice/"
                                "nginx.service")
    world.listen(fake, 443)
    world.close_wait(fake, 443, n=4, at=1.0, uid=1000)
    text = '[watch]\ndefault = "ignore"\n' + TWO_SERVICES.split("\n", 3)[3]
    world.watch(config=resolve(tmp_path, text).engine)
    world.run(60)
    assert world.reaped() == []
    # The same leak in the real unit is reaped under edge.
    real = server(world, 2000, 8443, comm="nginx", unit="nginx.service")
    world.close_wait(real, 8443, n=2, at=61.0)
    world.run(70)
    assert world.reaped() == [2000] and world.said(Event.REAP)[0]["rule"] == "edge"


def test_holders_of_one_socket_under_different_rules_each_count_by_their_own(world, tmp_path):
    """A socket held by two processes (a forked worker) counts against each
    under its own rule: here the one rule's limit is reached and the other's
    is not."""
    text = """\
[watch]
limit = 2

[[rule]]
name = "workers"
match = { cmd = "worker" }
limit = 5
"""
    master = server(world, 1000, 8080, comm="master", cmdline="master")
    worker = world.process(1001, comm="worker", cmdline="worker", ppid=1000)
    world.close_wait([master, worker], 8080, n=3, at=1.0)
    world.watch(config=resolve(tmp_path, text).engine)
    world.run(30)
    reaps = world.said(Event.REAP)
    assert [(r["pid"], r["rule"]) for r in reaps] == [(1000, "default")]


def test_reload_moves_a_process_to_another_rule_and_recomputes_its_timer(world, tmp_path):
    nginx = server(world, 2000, 443, comm="nginx", unit="nginx.service")
    world.close_wait(nginx, 443, n=2, at=1.0, evidence="unread")
    world.watch(config=resolve(tmp_path, TWO_SERVICES.replace(
        'match = { unit = "nginx.service" }', 'match = { unit = "none.service" }')).engine)
    world.run(10)  # under the default: unread counts after 60 s
    assert world.reaped() == []
    world.watcher.reconfigure(resolve(tmp_path, TWO_SERVICES.replace(
        'limit = 2\ngrace = 2\n', 'limit = 2\ngrace = 2\nstall = 20\n')).engine)
    world.run(30)
    (reap,) = world.said(Event.REAP)
    assert reap["rule"] == "edge" and reap["at"] == pytest.approx(21.0, abs=0.3)


def test_reload_does_not_interrupt_a_kill_that_started(world, tmp_path):
    two_services(world, tmp_path)
    world.killer.hold.add(2000)  # its sequence stays running
    world.run(4)
    (target,) = world.killer.targets
    assert target.rule.name == "edge" and not target.rule.plan.dry_run
    world.watcher.reconfigure(resolve(tmp_path, TWO_SERVICES + "dry_run = true\n").engine)
    world.killer.finish(2000)
    world.run(5)
    assert [o["result"] for o in world.said(Event.OUTCOME) if o["pid"] == 2000] == ["terminated"]


def test_the_hook_is_told_the_rule(world, tmp_path):
    from resreap.engine.killer import hook_env

    two_services(world, tmp_path)
    world.run(4)
    (target,) = world.killer.targets
    env = hook_env(target, target.rule.plan)
    assert env["RESREAP_RULE"] == "edge" and env["RESREAP_UNIT"] == "nginx.service"


def test_top_and_rules_show_each_holders_rule_and_when(world, tmp_path):
    from resreap.engine.view import rows
    from resreap.ops import rules as book
    from resreap.ops import top

    st = resolve(tmp_path, TWO_SERVICES.replace('first_signal = "QUIT"', 'first_signal = "QUIT"\n'
                                                'dry_run = true'))
    backend = server(world, 1000, 8080, comm="java", cmdline="java -jar backend.jar",
                     unit="backend-1.service")
    world.close_wait(backend, 8080, n=3, at=1.0)
    world.watch(config=st.engine)
    world.run(2)
    (row,) = rows(world.watcher, world.clock.now)
    assert row.rule == "java-backend" and row.reap_in == pytest.approx(4.0, abs=0.01)
    row = row._replace(action=top.actions(st)[row.rule])
    lines = book.text(book.book(st), [row])
    assert lines[-1] == ("pid 1000 java (backend-1.service): rule java-backend, CLOSE_WAIT 3, "
                         "counting 0; in 4s: would be logged (dry run)")
    assert any("rule edge: unit=nginx.service; trusts unit" == ln for ln in lines)


def test_rules_marks_a_rule_any_user_can_enter(tmp_path):
    from resreap.ops import rules as book

    st = resolve(tmp_path, '[[rule]]\nname = "by-name"\nmatch = { cmd = "nginx" }\n')
    described = book.book(st)[0]
    assert described["any_user_can_match"] and described["trusts"] == []
    assert "ANY USER'S PROCESS CAN MATCH IT" in book.text(book.book(st), [])[0]


def test_the_example_config_holds_rules_that_load(tmp_path):
    """packaging/resreap.toml shows two [[rule]]s, commented out: with
    their '#' taken away, the file loads with them."""
    from pathlib import Path

    text = (Path(__file__).parents[2] / "packaging/resreap.toml").read_text()
    rules = "\n".join(ln[1:] for ln in text.splitlines() if ln.startswith("#") and
                      not ln.startswith("# ") and ln != "#")
    st = resolve(tmp_path, text + "\n" + rules + "\n")
    assert [r.name for r in st.engine.rules] == ["java-backend", "edge", "checkout"]
    assert st.engine.rules[1].match.port == 443


def test_act_before_in_a_rule_and_at_the_top_level(tmp_path):
    """A rule's act_before judges its processes; the top level's, the
    rest; the longest is what the watch sets its alarms by."""
    st = resolve(tmp_path, '[watch]\nlimit = 2\nact_before = 60\n\n[[rule]]\nname = "edge"\n'
                           'match = { unit = "a.service" }\nact_before = 600\n')
    rules = st.engine.ruleset()
    assert [r.limits.act_before for r in rules.every()] == [600.0, 60.0]
    assert rules.act_before == 600.0
