"""The watcher's decisions, scenario by scenario, on a fake host (fakehost.py):
real tracker, owner resolver, fd index, evidence, policy and procinfo over a
fixture /proc; fake kernel sockets, event source, clock and kill engine.
Each scenario runs minutes of simulated time in milliseconds."""

from __future__ import annotations

import collections

import pytest

from fakehost import OTHER_NS
from resreap.engine import view
from resreap.engine.decisions import Event
from resreap.engine.filters import Filters
from resreap.engine.policy import StormKey
from resreap.model import Kind, Result, Transition


def reload(w, **limits):
    """A SIGHUP with these limits changed (the rest as they were)."""
    from resreap.engine.watch import WatchConfig

    w.reconfigure(WatchConfig(w.current.limits._replace(**limits), w.current.plan, w.current.filters))


def server(world, pid=1000, port=8080, **kw):
    proc = world.process(pid, **kw)
    world.listen(proc, port)
    return proc


# -- when a process is reaped ------------------------------------------------

def test_eof_ignored_sockets_reap_at_the_grace(world):
    srv = server(world)
    world.close_wait(srv, 8080, n=3, at=1.0)
    world.watch(limit=2, grace=2.0)
    world.run(10)
    assert world.reaped() == [1000]
    (reap,) = world.said(Event.REAP)
    assert reap["at"] == pytest.approx(3.0, abs=0.01)  # at the deadline, not a tick later
    assert reap["evidence"] == "eof-ignored:3" and reap["count"] == 3
    assert reap["unit"] == "app.service"
    (outcome,) = world.said(Event.OUTCOME)
    assert outcome["result"] == "terminated" and outcome["sockets_left"] == 0


def test_below_the_limit_nothing_happens(world):
    srv = server(world)
    world.close_wait(srv, 8080, n=1, at=1.0)
    world.watch(limit=2)
    world.run(120)
    assert world.reaped() == [] and world.said(Event.REAP) == []


def test_sockets_closed_within_the_grace_never_count(world):
    srv = server(world)
    socks = world.close_wait(srv, 8080, n=3, at=1.0)
    for sock in socks:
        world.closes(sock, at=2.5)
    world.watch(limit=2, grace=2.0)
    world.run(30)
    assert world.reaped() == []


def test_a_closed_socket_uncounts(world):
    """Two count, one is closed before the third comes: 1 + 1 is never 2."""
    srv = server(world)
    first, = world.close_wait(srv, 8080, at=1.0)
    world.closes(first, at=4.0)
    world.close_wait(srv, 8080, at=5.0)
    world.watch(limit=2, grace=2.0)
    world.run(30)
    assert world.reaped() == []


def test_the_limit_is_reached_over_time(world):
    srv = server(world)
    world.close_wait(srv, 8080, at=1.0)
    world.close_wait(srv, 8080, at=20.0)
    world.watch(limit=2, grace=2.0)
    world.run(30)
    assert world.reaped() == [1000]
    assert world.said(Event.REAP)[0]["at"] == pytest.approx(22.0, abs=0.01)


@pytest.mark.parametrize("grace", [0.5, 2.0, 7.0])
def test_the_deadline_follows_the_grace(world, grace):
    srv = server(world)
    world.close_wait(srv, 8080, n=2, at=1.0)
    world.watch(limit=2, grace=grace)
    world.run(20)
    assert world.said(Event.REAP)[0]["at"] == pytest.approx(1.0 + grace, abs=0.01)


# -- evidence -----------------------------------------------------------------

def test_unread_sockets_wait_for_the_stall(world):
    srv = server(world)
    world.close_wait(srv, 8080, n=2, at=1.0, evidence="unread")
    world.watch(limit=2, grace=2.0, stall=60.0)
    world.run(50)
    assert world.reaped() == []
    world.run(70)
    assert world.reaped() == [1000]
    reap = world.said(Event.REAP)[0]
    assert reap["evidence"] == "unread:2" and reap["at"] == pytest.approx(61.0, abs=0.3)


def test_sending_sockets_never_count(world):
    srv = server(world)
    world.close_wait(srv, 8080, n=5, at=1.0, evidence="sending")
    world.watch(limit=2, grace=2.0, stall=10.0)
    world.run(200)
    assert world.reaped() == []


def test_a_socket_that_stops_sending_counts_then(world):
    srv = server(world)
    socks = world.close_wait(srv, 8080, n=2, at=1.0, evidence="sending")
    for sock in socks:
        world.set_state(sock, at=30.0, wqueue=0)
    world.watch(limit=2, grace=2.0)
    world.run(60)
    assert world.reaped() == [1000]
    assert world.said(Event.REAP)[0]["at"] > 30.0


def test_reading_the_eof_moves_a_socket_from_stall_to_grace(world):
    srv = server(world)
    socks = world.close_wait(srv, 8080, n=2, at=1.0, evidence="unread")
    for sock in socks:
        world.set_state(sock, at=10.0, rqueue=0)
    world.watch(limit=2, grace=2.0, stall=60.0)
    world.run(30)
    assert world.reaped() == [1000]
    assert 10.0 < world.said(Event.REAP)[0]["at"] < 15.0


def test_queued_sockets_count_against_an_old_listener_after_the_stall(world):
    srv = server(world, age=3600)
    world.close_wait(srv, 8080, n=2, at=1.0, evidence="queued")
    world.watch(limit=2, stall=30.0)
    world.run(40)
    assert world.reaped() == [1000]
    assert world.said(Event.REAP)[0]["evidence"] == "queued:2"


def test_queued_sockets_spare_a_listener_younger_than_the_stall(world):
    # Restarted at +10 s, on the same listener: no chance to accept yet
    # when the queued sockets reach the stall at +31 s (21 s old).
    srv = server(world, started=world.t0 + 10)
    world.close_wait(srv, 8080, n=3, at=1.0, evidence="queued")
    world.watch(limit=2, stall=30.0)
    world.run(33)
    assert world.reaped() == []


def test_mixed_evidence_is_summed(world):
    srv = server(world, age=3600)
    world.close_wait(srv, 8080, n=1, at=1.0, evidence="eof-ignored")
    world.close_wait(srv, 8080, n=1, at=1.0, evidence="unread")
    world.watch(limit=2, grace=2.0, stall=10.0)
    world.run(20)
    assert world.said(Event.REAP)[0]["evidence"] in ("eof-ignored:1,unread:1", "unread:1,eof-ignored:1")


# -- who may be reaped --------------------------------------------------------

def test_a_socket_passed_in_by_another_user_never_counts(world):
    srv = server(world, uid=1000)
    world.close_wait(srv, 8080, n=3, at=1.0, uid=2000)  # made by uid 2000
    world.watch(limit=2)
    world.run(30)
    assert world.reaped() == []
    assert world.said(Event.FOREIGN)


def test_root_made_sockets_count_against_any_holder(world):
    srv = server(world, uid=1000)
    world.close_wait(srv, 8080, n=2, at=1.0, uid=0)
    world.watch(limit=2)
    world.run(10)
    assert world.reaped() == [1000]


def test_root_accepted_sockets_passed_to_a_stranger_never_count(world):
    """#21 item 12: a user holding root-accepted sockets (inetd, Accept=yes,
    a root proxy) passes them over SCM_RIGHTS to another user's process:
    the receiver neither listens on their port nor descends from one that
    does, so they do not count against it; the listener's own worker's do."""
    srv = server(world, uid=0)
    victim = world.process(1500, uid=1001, cmdline="victim")
    worker = world.process(1600, uid=33, ppid=1000, cmdline="worker")
    world.close_wait(victim, 8080, n=3, at=1.0, uid=0)
    world.close_wait(worker, 8080, n=2, at=1.0, uid=0)
    world.watch(limit=2)
    world.run(30)
    assert world.reaped() == [1600]
    assert any(f["pid"] == 1500 for f in world.said(Event.FOREIGN))


def test_init_is_never_reaped(world):
    init = world.process(1, comm="systemd")
    world.listen(init, 8080)
    world.close_wait(init, 8080, n=3, at=1.0)
    world.watch(limit=2)
    world.run(10)
    assert world.reaped() == []
    assert "protected" in world.said(Event.SPARE)[0]["reason"]


def test_kernel_threads_are_never_reaped(world):
    kt = world.process(50, comm="kworker", kthread=True)
    world.listen(kt, 8080)
    world.close_wait(kt, 8080, n=3, at=1.0)
    world.watch(limit=2)
    world.run(10)
    assert world.reaped() == []


def test_filter_selects_by_command_line(world):
    java = server(world, 1000, 8080, comm="java", cmdline="/usr/bin/java -jar app.jar")
    py = server(world, 1001, 8081, comm="python3", cmdline="python3 app.py")
    world.close_wait(java, 8080, n=2, at=1.0)
    world.close_wait(py, 8081, n=2, at=1.0)
    world.watch(limit=2, filters=Filters.parse("^/usr/bin/java", (), ()))
    world.run(10)
    assert world.reaped() == [1000]


def test_pid_filter(world):
    a, b = server(world, 1000, 8080), server(world, 1001, 8081)
    world.close_wait(a, 8080, n=2, at=1.0)
    world.close_wait(b, 8081, n=2, at=1.0)
    world.watch(limit=2, filters=Filters.parse(None, (), (1001,)))
    world.run(10)
    assert world.reaped() == [1001]


def test_ignored_peers_never_count(world):
    srv = server(world)
    world.close_wait(srv, 8080, n=3, at=1.0, peer_port=2049)
    world.watch(limit=2, filters=Filters.parse(None, ("10.0.0.2:2049",), ()))
    world.run(10)
    assert world.reaped() == [] and world.watcher.sockets.events_seen["enter"] == 0


def test_fd_percent_waits_for_the_share_of_the_fd_limit(world):
    small = server(world, 1000, 8080, fd_limit=10)
    big = server(world, 1001, 8081, fd_limit=10000)
    world.close_wait(small, 8080, n=5, at=1.0)
    world.close_wait(big, 8081, n=5, at=1.0)
    world.watch(limit=2, fd_percent=50)
    world.run(20)
    assert world.reaped() == [1000]


def test_top_predicts_watch_under_fd_percent(world):
    """#33 item 2: "crossed its limit" had four expressions, and only the
    watch's applied --fd-percent: `top --once` showed REAP 0s for a 3-socket
    leak whose soft limit is 20,000, which watch would never reap.  Now the
    decision, the re-check before the first signal and top's REAP ask one
    predicate (policy.threshold)."""
    from resreap.engine.view import rows

    small = server(world, 1000, 8080, fd_limit=10)
    big = server(world, 1001, 8081, fd_limit=20000)
    world.close_wait(small, 8080, n=5, at=1.0)
    world.close_wait(big, 8081, n=3, at=1.0)
    w = world.watch(limit=2, grace=2.0, fd_percent=50)
    world.run(2.5)
    before = {r.pid: r.reap_in for r in rows(w, world.clock.now)}
    assert before[1000] == pytest.approx(0.5, abs=0.01) and before[1001] is None
    world.run(60)
    assert world.reaped() == [1000]
    after = {r.pid: r for r in rows(w, world.clock.now)}
    assert after[1001].counting == 3 and after[1001].reap_in is None
    (reap,) = world.said(Event.REAP)
    assert reap["needed"] == 5 and reap["limit"] == 2
    assert world.killer.targets[0].limit == 5     # the re-check before the first signal


# -- the kill engine's answers -------------------------------------------------

def test_dry_run_says_would_reap_and_says_it_again_a_minute_later(world):
    """Not every grace: a DaemonSet left in dry run for days would write
    two lines every 2 s per leaking process."""
    srv = server(world)
    world.close_wait(srv, 8080, n=2, at=1.0)
    world.watch(limit=2, grace=2.0, dry_run=True)
    world.run(130)
    lines = world.said(Event.WOULD_REAP)
    assert [round(line["at"]) for line in lines] == [3, 63, 123]
    assert [o["again_in"] for o in world.said(Event.OUTCOME)] == [60, 60, 60]
    assert world.said(Event.REAP) == [] and 1000 in world.procs


@pytest.mark.parametrize("result", [Result.SPARED, Result.RESOLVED])
def test_spared_or_resolved_is_judged_again_after_a_grace(world, result):
    srv = server(world)
    world.close_wait(srv, 8080, n=2, at=1.0)
    world.watch(limit=2, grace=2.0)
    world.killer.results[1000] = result
    world.run(4)
    assert world.reaped() == [1000]
    world.killer.results.pop(1000)
    world.run(10)
    assert world.reaped() == [1000, 1000]  # a second decision, then a kill
    assert 1000 not in world.procs


def test_a_failed_kill_can_be_decided_again(world):
    srv = server(world)
    world.close_wait(srv, 8080, n=2, at=1.0)
    world.watch(limit=2, grace=2.0)
    world.killer.results[1000] = Result.FAILED
    world.run(5)
    assert [o["result"] for o in world.said(Event.OUTCOME)] == ["failed"]


def test_a_running_kill_is_not_started_twice(world):
    srv = server(world)
    world.close_wait(srv, 8080, n=2, at=1.0)
    world.close_wait(srv, 8080, n=2, at=4.0)
    world.watch(limit=2, grace=2.0)
    world.killer.hold.add(1000)
    world.run(20)
    assert world.reaped() == [1000]


def test_full_kill_slots_defer_the_decision(world):
    a, b = server(world, 1000, 8080), server(world, 1001, 8081)
    world.close_wait(a, 8080, n=2, at=1.0)
    world.close_wait(b, 8081, n=2, at=1.0)
    world.watch(limit=2, grace=2.0)
    world.killer.max_running = 1
    world.killer.hold.add(1000)
    world.killer.hold.add(1001)
    world.run(5)
    assert world.reaped() == [1000]  # one slot: the other waits, no reap line
    assert len(world.said(Event.REAP)) == 1
    world.killer.finish(1000)
    world.run(6)
    assert world.reaped() == [1000, 1001]


# -- storms ---------------------------------------------------------------------

def test_a_command_reaped_too_often_is_rate_limited(world):
    world.watch(limit=2, grace=1.0, max_kills=2, per=100.0)
    for i, at in enumerate((2.0, 6.0, 10.0)):
        # each one a restart of the last: started just before it leaks
        srv = world.process(2000 + i, comm="leaky", cmdline="leaky --serve",
                            started=world.t0 + at - 0.5)
        world.listen(srv, 9000 + i)
        world.close_wait(srv, 9000 + i, n=2, at=at)
    world.run(30)
    assert world.reaped() == [2000, 2001]
    (storm,) = world.said(Event.STORM)
    assert storm["pid"] == 2002
    world.run(110)
    assert world.reaped() == [2000, 2001, 2002]  # once the window allows


# -- real services: holders and families ----------------------------------------

def test_a_socket_held_by_two_processes_counts_for_each(world):
    parent = server(world, 1000)
    child = world.process(1001, ppid=1000)
    world.close_wait([parent, child], 8080, n=2, at=1.0)
    world.watch(limit=2)
    world.run(20)
    # children first: the child is reaped, the parent judged again later
    assert world.reaped()[0] == 1001
    assert world.said(Event.CHILDREN_FIRST)[0]["pid"] == 1000


def test_a_master_whose_workers_are_reaped_is_spared_when_the_leak_goes(world):
    master = server(world, 1000, comm="nginx")
    worker = world.process(1001, comm="nginx", ppid=1000)
    world.close_wait([master, worker], 8080, n=2, at=1.0)
    world.watch(limit=2)
    world.run(60)
    # the worker went, and with it the last holder of the sockets... except
    # the master, which still holds them: it is reaped after its wait.
    assert world.reaped()[0] == 1001


def test_sockets_left_after_a_kill_are_looked_at_again(world):
    a = server(world, 1000)
    b = world.process(1005, ppid=1)  # an unrelated process got them (fd passing)
    world.close_wait([a, b], 8080, n=2, at=1.0)
    world.watch(limit=2)
    world.run(20)
    assert sorted(world.reaped()) == [1000, 1005]
    first = world.said(Event.OUTCOME)[0]
    assert first["sockets_left"] == 2


# -- identity ----------------------------------------------------------------------

def test_netns_twins_are_two_sockets(world):
    """The same 4-tuple in two namespaces: one's exit does not end the
    other's timer."""
    srv = server(world)
    other = world.process(1500)
    world.listen(other, 8080, netns=OTHER_NS)
    world.kernel.namespaces.append(OTHER_NS)
    twins_a = world.close_wait(srv, 8080, n=2, at=1.0, peer_port=50000)
    world.close_wait(other, 8080, n=1, at=1.0, peer_port=50000, netns=OTHER_NS)
    world.close_wait(other, 8080, n=1, at=1.0, peer_port=50001, netns=OTHER_NS)
    world.closes(twins_a[0], at=1.5)  # host side closes its twin
    world.watch(limit=2)
    world.run(10)
    assert world.reaped() == [1500]


# -- lost events and reconciliation ---------------------------------------------

def test_a_leak_whose_events_were_lost_is_found_by_reconciliation(world):
    srv = server(world)
    world.close_wait(srv, 8080, n=3, at=1.0, event=False)  # no transition seen
    world.lose_events(3, at=1.2)
    world.watch(limit=2)
    world.run(10)
    assert world.said(Event.LOST_EVENTS) and world.said(Event.RECONCILE)
    assert world.reaped() == [1000]


def test_lost_events_unknown_are_never_read_as_none(world):
    """The kernel's lost-event counter unreadable (a bpf() error): it used
    to read as 0, "nothing lost", and a leak whose events were dropped
    waited for the 60 s reconciliation.  Unknown is said, and the kernel's
    table is compared with ours within a second."""
    srv = server(world)
    world.close_wait(srv, 8080, n=3, at=1.0, event=False)  # no transition seen

    def unreadable():
        world.source.lost_events = None
    world._at(1.2, unreadable)
    world.watch(limit=2)
    world.run(6)
    said = world.said(Event.LOST_EVENTS)
    assert said and said[0]["lost"] == "unknown"
    assert world.said(Event.RECONCILE)
    assert world.reaped() == [1000]


def test_a_lost_exit_never_causes_a_kill(world):
    srv = server(world)
    socks = world.close_wait(srv, 8080, n=2, at=1.0)
    for sock in socks:
        world.closes(sock, at=1.5, event=False)  # closed, exit never seen
    world.watch(limit=2)
    world.run(20)
    assert world.reaped() == []


def test_reconciling_after_lost_events_drops_the_sockets_that_left(world):
    """A socket whose exit was lost leaves the table when the watch
    reconciles with the kernel (lost events make it do so at once), not
    only at its deadline."""
    srv = server(world)
    socks = world.close_wait(srv, 8080, n=2, at=1.0)
    world.closes(socks[0], at=1.5, event=False)
    w = world.watch(limit=2, grace=30.0)
    world.run(3)
    assert len(w.table) == 2
    world.lose_events(1, at=4.0)
    world.run(6)
    assert len(w.table) == 1
    assert world.said(Event.RECONCILE)[-1]["removed"] == 1 and world.reaped() == []


def test_periodic_reconciliation_without_lost_events(world):
    srv = server(world)
    world.close_wait(srv, 8080, n=2, at=1.0, event=False)
    world.watch(limit=2)
    world.run(58)
    assert world.reaped() == []  # nothing seen yet
    world.run(70)
    assert world.reaped() == [1000]  # the 60 s reconciliation found it


def test_sockets_already_in_close_wait_count_from_the_start(world):
    srv = server(world)
    world.close_wait(srv, 8080, n=3, at=0.0, event=False)
    world.source.seeds = [Transition(Kind.EXISTING, ns.diag.sock, world.clock.now,
                                     kid=ns.diag.cookie, netns=ns.netns)
                          for ns in world.kernel.close_wait()]
    world.watch(limit=2, grace=2.0)
    world.run(10)
    assert world.said(Event.EXISTING)[0]["sockets"] == 3
    assert world.said(Event.REAP)[0]["at"] == pytest.approx(2.0, abs=0.01)


def test_an_unseen_twin_leaving_never_erases_a_seeded_leak(world):
    """A leak found at start is keyed by its cookie; an exit event carries
    the kernel's address.  The same 4-tuple leaving CLOSE_WAIT in a
    namespace past the caps (never watched: its entry never existed), or
    one whose entry was lost in a flood, must not be taken for the leak's
    exit by its 4-tuple: the leak is asked of the kernel, and reaped on
    time."""
    srv = server(world)
    socks = world.close_wait(srv, 8080, n=2, at=0.0, event=False)
    world.source.seeds = [Transition(Kind.EXISTING, ns.diag.sock, world.clock.now,
                                     kid=ns.diag.cookie, netns=ns.netns)
                          for ns in world.kernel.close_wait()]
    for sock in socks:  # the attacker's twins, elsewhere, leave at 1 s
        world.source.push(Transition(Kind.EXIT, sock, world.t0 + 1.0, kid=0xDEAD0000,
                                     cpu_pid=0))
    w = world.watch(limit=2, grace=2.0)
    world.run(10)
    assert len(w.table) == 0 and world.reaped() == [1000]
    assert world.said(Event.REAP)[0]["at"] == pytest.approx(2.0, abs=0.01)


# -- reload ----------------------------------------------------------------------

def test_reload_applies_the_new_grace_to_pending_timers(world):
    srv = server(world)
    world.close_wait(srv, 8080, n=2, at=1.0)
    w = world.watch(limit=2, grace=2.0)
    world.run(1.5)
    reload(w, grace=10.0)
    world.run(8)
    assert world.reaped() == []  # not at 3 s any more
    world.run(15)
    assert world.said(Event.REAP)[0]["at"] == pytest.approx(11.0, abs=0.3)


def test_reload_to_a_short_grace_wakes_the_loop_more_often(world):
    """A grace cut from 30 s to 0.2 s: the loop's sleep (how late a new
    socket is seen) follows, or the first deadline would pass unseen."""
    srv = server(world)
    w = world.watch(limit=2, grace=30.0)
    assert world.source.latency == 0.25
    reload(w, grace=0.2)
    assert world.source.latency == pytest.approx(0.05)
    world.close_wait(srv, 8080, n=2, at=1.0)
    world.run(3)
    assert world.said(Event.REAP)[0]["at"] == pytest.approx(1.2, abs=0.06)


def test_reload_with_a_higher_limit_spares(world):
    srv = server(world)
    world.close_wait(srv, 8080, n=2, at=1.0)
    w = world.watch(limit=2, grace=2.0)
    world.run(1.5)
    reload(w, limit=5)
    world.run(30)
    assert world.reaped() == []


# -- after a kill ------------------------------------------------------------------

def test_resolved_then_leaks_again_is_reaped_again(world):
    """The bug "resolved, then never reaped again": a process that closed
    its sockets before the signal is judged afresh on its next leak."""
    srv = server(world)
    first = world.close_wait(srv, 8080, n=2, at=1.0)
    for sock in first:
        world.closes(sock, at=3.5)  # it closed them while the hook ran
    world.watch(limit=2, grace=2.0)
    world.killer.results[1000] = Result.RESOLVED
    world.run(30)
    assert world.reaped() == [1000] and 1000 in world.procs
    world.killer.results.pop(1000)
    world.close_wait(srv, 8080, n=2, at=40.0)
    world.run(50)
    assert world.reaped() == [1000, 1000] and 1000 not in world.procs
    assert world.said(Event.REAP)[1]["at"] == pytest.approx(42.0, abs=0.01)


def test_a_restarted_server_with_the_same_pid_is_a_new_process(world):
    srv = server(world, 1000)
    world.close_wait(srv, 8080, n=2, at=1.0)
    world.watch(limit=2, grace=2.0)
    world.run(5)
    assert world.reaped() == [1000] and 1000 not in world.procs
    again = server(world, 1000, port=8081, age=1)  # pid reused by a new process
    world.close_wait(again, 8081, n=1, at=6.0)
    world.run(30)
    assert world.reaped() == [1000]  # one socket: below the limit, no second reap


def test_many_leakers_at_once_each_get_one_reap(world):
    for i in range(20):
        srv = server(world, 3000 + i, 10000 + i, cmdline=f"srv{i}")
        world.close_wait(srv, 10000 + i, n=2, at=1.0 + i * 0.01)
    world.watch(limit=2, grace=2.0, max_kills=100)
    world.run(10)
    assert sorted(world.reaped()) == list(range(3000, 3020))
    assert len(world.said(Event.REAP)) == 20


def test_stop_reports_what_is_left(world):
    srv = server(world)
    world.close_wait(srv, 8080, n=1, at=1.0)
    w = world.watch(limit=2)
    world.run(5)
    w.shutdown(0.1)
    assert len(w.table) == 1 and world.said(Event.ABANDON) == []


def test_snapshot_is_typed(world):
    srv = server(world)
    world.close_wait(srv, 8080, n=2, at=1.0)
    w = world.watch(limit=3, grace=2.0)
    world.run(10)
    snap = view.snapshot(w, 20)
    assert snap.tracked == 2 and snap.top[0].pid == 1000 and snap.top[0].count == 2
    assert snap.top[0].unit == "app.service" and snap.events["enter"] == 2


def test_a_process_heading_for_a_reap_shows_before_its_sockets_count(world):
    """#25: two unread CLOSE_WAIT sockets count only after the stall (60 s):
    the counting metric showed nothing; the holders of CLOSE_WAIT sockets
    now, and the oldest's age, show it at once.  A kill's duration lands in
    the histogram."""
    srv = server(world)
    world.close_wait(srv, 8080, n=2, at=1.0, evidence="unread")
    w = world.watch(limit=2, grace=2.0, stall=60.0)
    world.run(10)
    snap = view.snapshot(w, 20)
    assert snap.top == () and snap.holding[0].pid == 1000 and snap.holding[0].count == 2
    assert 8.5 <= snap.oldest <= 9.5
    assert sum(snap.kill_buckets) == 0
    world.run(70)
    snap = view.snapshot(w, 20)
    assert world.reaped() == [1000] and sum(snap.kill_buckets) == 1


def test_counting_sockets_held_by_no_one_are_orphans(world):
    """In flight in a unix socket, or held by an unreadable process: no
    one to reap, said once, and the retries back off."""
    server(world)
    world.close_wait([], 8080, n=2, at=1.0)
    world.watch(limit=2)
    world.run(120)
    assert world.reaped() == []
    (orphans,) = world.said(Event.ORPHANS)
    assert orphans["sockets"] == 2


def test_a_holder_found_by_a_slow_first_scan_is_reaped_when_it_answers(world):
    """A cold host: the first full scan of /proc takes 7 s (100 processes of
    20,000 fds), and the holder is no hint (it got the sockets from the
    listener's owner, unrelated to it).  The socket's retries used to back
    off while that scan still ran (0.25, 0.5, 1, 2, 4 s: an orphans line
    at +3.8 s), and the reap came seconds after the scan's answer.  Now
    they stay prompt until a scan has answered: reaped within a retry of
    it, and no orphans line (nobody was an orphan)."""
    server(world)
    holder = world.process(2000, comm="worker", ppid=1)
    world.close_wait(holder, 8080, n=2, at=1.0)
    world.watch(limit=2, grace=2.0, scan_takes=7.0)
    world.run(20)
    assert world.reaped() == [2000]
    (reap,) = world.said(Event.REAP)
    assert reap["at"] <= 1.0 + 0.5 + 7.0 + 0.25 + 0.3   # the scan's answer, one retry
    assert not world.said(Event.ORPHANS)


def test_prompt_looks_during_a_slow_scan_are_bounded_across_sockets(world, monkeypatch):
    """A user's many sockets held by no one, while a scan is kept busy:
    prompt looks are capped per 0.25 s window across all sockets (at most
    SEARCHED_PER_RETRY), the rest back off as before."""
    from resreap.engine import counting

    monkeypatch.setattr(counting, "SEARCHED_PER_RETRY", 5)
    server(world)
    world.close_wait([], 8080, n=40, at=1.0)   # in flight: nobody holds them
    w = world.watch(limit=2, grace=2.0, scan_takes=30.0)
    looks = []
    real = w.sockets._still_searched
    monkeypatch.setattr(w.sockets, "_still_searched",
                        lambda entry, now: looks.append(now) if real(entry, now) else False)
    world.run(10)
    assert looks  # prompt looks happened ...
    windows = collections.Counter(int((t - world.t0) / counting.RETRY_UNRESOLVED) for t in looks)
    # ... never more than the cap in one window (a 0.25 s bucket overlaps
    # at most two windows; without the cap all 40 sockets would be looked at)
    assert max(windows.values()) <= 2 * 5
    assert world.reaped() == []


def test_the_master_goes_after_its_children_if_the_leak_remains(world):
    master = server(world, 1000, comm="nginx")
    worker = world.process(1001, comm="nginx", ppid=1000)
    world.close_wait([master, worker], 8080, n=2, at=1.0)
    world.watch(limit=2)
    world.run(60)
    assert world.reaped() == [1001, 1000]
    first_reap, second_reap = world.said(Event.REAP)
    wait = world.said(Event.CHILDREN_FIRST)[0]
    # judged again as soon as the child's kill ended, not after the whole wait
    assert second_reap["at"] - first_reap["at"] < 1.0 < wait["again_in"]


def test_a_process_that_exits_on_its_own_is_not_reaped(world):
    srv = server(world)
    world.close_wait(srv, 8080, n=3, at=1.0)
    world._at(world.t0 + 2.0, lambda: world.exit(1000))
    world.watch(limit=2, grace=2.0)
    world.run(20)
    assert world.reaped() == [] and len(world.watcher.table) == 0


def test_leaving_dry_run_by_reload_reaps(world):
    srv = server(world)
    world.close_wait(srv, 8080, n=2, at=1.0)
    w = world.watch(limit=2, grace=2.0, dry_run=True)
    world.run(5)
    assert world.said(Event.WOULD_REAP) and 1000 in world.procs
    from resreap.engine.rules import Plan
    from resreap.engine.watch import WatchConfig
    w.reconfigure(WatchConfig(w.current.limits, Plan(wait=2.0), w.current.filters))
    world.run(15)
    (reap,) = world.said(Event.REAP)
    assert reap["at"] < 5.5 and 1000 not in world.procs   # at once, not at the next reminder


def test_a_foreign_socket_is_said_once(world):
    srv = server(world, uid=1000)
    world.close_wait(srv, 8080, n=1, at=1.0, uid=2000)
    world.close_wait(srv, 8080, n=1, at=30.0, uid=2000)
    world.watch(limit=2)
    world.run(200)
    assert len(world.said(Event.FOREIGN)) == 1 and world.reaped() == []


def test_a_socket_held_only_by_a_foreign_uid_is_no_orphan(world):
    """#33 item 3: an entry's ``owners`` meant its holders, then, once it
    counted, only those it counted against: a socket passed to a daemon
    of another uid counted against nobody and was called an orphan ("held
    by no process found").  Holders and counted-against are two fields."""
    srv = server(world, uid=1000)
    world.close_wait(srv, 8080, n=1, at=1.0, uid=2000)   # passed in: foreign
    world.close_wait([], 8080, n=2, at=1.0)              # in flight: held by no one
    w = world.watch(limit=2)
    world.run(120)
    (orphans,) = world.said(Event.ORPHANS)
    assert orphans["sockets"] == 2 and world.reaped() == []
    foreign = [e for e in w.table if e.owners]
    assert len(foreign) == 1 and foreign[0].counted and foreign[0].against == ()
    assert [o.pid for o in foreign[0].owners] == [1000]


def test_a_holder_no_rule_judges_stays_in_top_after_the_deadline(world, tmp_path):
    """#33 item 3: under `default = "ignore"`, a holder that no rule
    matches vanished from top and `rules` once its sockets' deadline came
    (the socket's owners became the empty set it counts against)."""
    from resreap.engine.view import rows
    from test_rules import resolve

    other = server(world, 3000, 9090, comm="other", cmdline="other")
    world.close_wait(other, 9090, n=2, at=1.0)
    text = '[watch]\ndefault = "ignore"\n\n[[rule]]\nname = "svc"\nmatch = { cmd = "^svc" }\n'
    w = world.watch(config=resolve(tmp_path, text).engine)
    world.run(30)
    assert world.reaped() == []
    (row,) = [r for r in rows(w, world.clock.now) if r.pid == 3000]
    assert (row.rule, row.close_wait, row.counting, row.reap_in) == ("-", 2, 0, None)
    assert view.snapshot(w, 5).holding[0].pid == 3000


def test_each_event_is_counted(world):
    srv = server(world)
    socks = world.close_wait(srv, 8080, n=3, at=1.0)
    world.closes(socks[0], at=1.5)
    w = world.watch(limit=5)
    world.run(5)
    assert w.sockets.events_seen == {"existing": 0, "enter": 3, "exit": 1}


def test_the_default_stall_for_a_hung_accept_queue(world):
    """At the defaults a `watch` starts with (flags and file resolved by
    ops/settings): a server that stopped calling accept() is reaped when
    its queued connections have waited the default stall, 60 s, and not
    a moment before."""
    import typer

    from resreap.cli import app
    from resreap.ops import settings

    params = typer.main.get_command(app).commands["watch"].params
    defaults = settings.validate({p.name: p.default for p in params
                                  if p.name not in ("ctx", "version", "config_file")})
    limits = defaults.engine.limits
    assert (limits.limit, limits.grace, limits.stall) == (2, 2.0, 60.0)
    srv = server(world, age=3600)
    world.close_wait(srv, 8080, n=2, at=1.0, evidence="queued")
    world.watch(limit=limits.limit, grace=limits.grace, stall=limits.stall)
    world.run(60.9)
    assert world.reaped() == []
    world.run(62)
    assert world.said(Event.REAP)[0]["at"] == pytest.approx(61.0, abs=0.01)


# -- #21 item 4: decisions cost what the owner holds, not how many owners ----

class _CountedWalks(collections.defaultdict):
    """Counter.by_owner, counting the walks over every owner."""

    walks = 0

    def items(self):
        type(self).walks += 1
        return super().items()


def test_many_spared_owners_cost_one_look_each(world, monkeypatch):
    """A user's thousands of processes, each holding 2 eof-ignored sockets,
    all spared by -f: each decision walked every owner (children first)
    and read the process again at every recheck; 10,000 of them silenced
    the loop for 57 s.  Now a spared process is read once, and no decision
    walks the other owners."""
    from resreap.engine import rulebook

    n = 1500
    for i in range(n):
        proc = world.process(2000 + i, comm="sleep", cmdline=f"sleep {i}")
        world.close_wait(proc, 10000 + i, n=2, at=1.0)
    reads = []
    real_decide = rulebook.RuleBook.decide
    monkeypatch.setattr(rulebook.RuleBook, "decide",
                        lambda self, owner, socks, exhausted_in=None:
                        reads.append(owner.pid) or real_decide(self, owner, socks, exhausted_in))
    w = world.watch(limit=2, grace=2.0, filters=Filters.parse("^never-matches", (), ()))
    counter = w.sockets.counter
    walks = _CountedWalks(set, counter.by_owner)
    counter.by_owner = walks
    world.run(100)   # the counting sockets are looked at again every 30 s
    assert len(reads) == n and len(set(reads)) == n
    assert _CountedWalks.walks == 0
    assert world.reaped() == []


def test_a_child_never_handled_does_not_shelter_its_parent_forever(world):
    """#21 item 13: the worker's own kills are rate-limited for hours (its
    command keeps leaking); the master, holding the same sockets, waited
    for it at every look.  After two waits it is judged as it stands."""
    master = server(world, 1000, comm="nginx", cmdline="nginx: master")
    worker = world.process(1001, comm="nginx", ppid=1000, cmdline="nginx: worker")
    world.close_wait([master, worker], 8080, n=2, at=1.0)
    w = world.watch(limit=2, max_kills=1, per=1e7)
    w.storm.record(StormKey("default", (0,), "app.service", "", "nginx: worker"),
                   world.clock.now - 1e6)
    world.run(200)
    assert world.reaped() == [1000]
    assert len(world.said(Event.CHILDREN_FIRST)) == 2
    assert world.said(Event.STORM)[0]["pid"] == 1001


def test_procfs_skipping_a_line_at_the_deadline_does_not_lose_the_leak(world, monkeypatch):
    """#21 item 13: /proc/net/tcp read under churn skips a line now and
    then; watch dropped a due socket on one missed read (trace looked
    again), and the leak waited a minute for the next reconcile."""
    srv = server(world)
    world.close_wait(srv, 8080, n=2, at=1.0)
    kernel = world.kernel
    monkeypatch.setattr(kernel, "through_procfs", True)
    hidden = (world.t0 + 2.9, world.t0 + 3.05)   # the deadline is at 3.0
    real_dump, real_lookup = kernel.close_wait, kernel.lookup_in

    def skipping(rows):
        if hidden[0] <= world.clock.now <= hidden[1]:
            return [ns for ns in rows if ns.diag.sock.lport != 8080]
        return rows

    monkeypatch.setattr(kernel, "close_wait", lambda info=True: skipping(real_dump(info)))
    monkeypatch.setattr(kernel, "lookup_in", lambda ino, sock: (
        None if hidden[0] <= world.clock.now <= hidden[1] and sock.lport == 8080
        else real_lookup(ino, sock)))
    world.watch(limit=2, grace=2.0)
    world.run(10)
    assert world.reaped() == [1000]
    (reap,) = world.said(Event.REAP)
    assert reap["at"] < 3.5


def test_a_socket_in_a_namespace_not_noticed_yet_is_looked_for_again(world, monkeypatch):
    """A namespace made just after the last look is noticed at most 0.25 s
    later: a socket in it that no lookup has found yet is looked for again
    at its deadline instead of dropped (CI: a leak in a namespace made
    right after a fast start was never reaped)."""
    srv = server(world)
    world.close_wait(srv, 8080, n=2, at=1.0)
    kernel = world.kernel
    noticed = world.t0 + 3.15       # the deadline is at 3.0
    real_lookup, real_in = kernel.lookup, kernel.lookup_in
    monkeypatch.setattr(kernel, "lookup", lambda sock, retry_new_namespaces=True: (
        [] if world.clock.now < noticed else real_lookup(sock)))
    monkeypatch.setattr(kernel, "lookup_in", lambda ino, sock: (
        None if world.clock.now < noticed else real_in(ino, sock)))
    world.watch(limit=2, grace=2.0)
    world.run(10)
    assert world.reaped() == [1000]
    (reap,) = world.said(Event.REAP)
    assert reap["at"] < 3.5


def test_unwatched_namespaces_are_a_structured_line_said_when_their_number_changes(world):
    """Namespaces past the caps (a user's `unshare -Urn` flood) are never
    seen: one `unwatched` line with how many, again when that changes, and
    not on every turn."""
    world.kernel.skipped = 3
    world._at(world.t0 + 50.0, lambda: setattr(world.kernel, "skipped", 5))
    world._at(world.t0 + 80.0, lambda: setattr(world.kernel, "skipped", 0))
    world.watch()
    world.run(100)
    said = world.said(Event.UNWATCHED)
    assert [s["namespaces"] for s in said] == [3, 5]
    assert said[0]["user_max"] == 64 and said[0]["max"] == 4096


def test_top_rows_say_who_is_heading_for_a_reap_and_when(world):
    """#25: `resreap top`'s rows come from the watcher's own state: sockets
    now and counting, their evidence, and when the process would be reaped
    under the settings in force (its timers), or never with these sockets."""
    from resreap.engine.config import WatchConfig
    from resreap.engine.view import rows

    srv = server(world)
    world.close_wait(srv, 8080, n=2, at=1.0, evidence="unread")
    w = world.watch(limit=2, grace=2.0, stall=60.0)
    world.run(10)
    (row,) = rows(w, world.clock.now)
    assert (row.pid, row.close_wait, row.counting) == (1000, 2, 0)
    assert row.evidence == {"unread": 2} and 8.5 <= row.oldest <= 9.5
    assert row.reap_in is not None and 50 <= row.reap_in <= 52   # the stall: entered + 60 s
    w.reconfigure(WatchConfig(w.current.limits._replace(limit=3), w.current.plan, w.current.filters))
    (row,) = rows(w, world.clock.now)
    assert row.reap_in is None                                  # 2 sockets never reach 3


def test_top_rows_give_each_process_its_rates_in_and_out_of_close_wait(world):
    """#25: with a Churn set (top), a socket that came and went before its
    holder was read is counted against the process whose own close() took
    it out (the exit's by_owner pid); sockets still in CLOSE_WAIT count as
    entered, those found at start do not (when they entered is unknown).
    A process that only churns has a row, with nothing in CLOSE_WAIT."""
    from resreap.engine.churn import Churn
    from resreap.engine.view import rows

    leaky, healthy = server(world), world.process(2000, "healthy")
    world.close_wait(leaky, 8080, n=1, at=0.0, evidence="unread", event=False)
    world.source.seeds = [Transition(Kind.EXISTING, ns.diag.sock, world.clock.now,
                                     kid=ns.diag.cookie, netns=ns.netns)
                          for ns in world.kernel.close_wait()]               # found at start
    world.close_wait(leaky, 8080, n=2, at=1.0, evidence="unread")
    for i in range(6):
        (sock,) = world.close_wait(healthy, 9090, at=1.0 + i * 0.2)
        world.closes(sock, at=1.01 + i * 0.2, closer=healthy)
    w = world.watch(limit=5, grace=2.0)
    w.sockets.churn = Churn(world.clock.now - 10)  # a whole window: the seed is inside it
    world.run(4)
    by_pid = {r.pid: r for r in rows(w, world.clock.now)}
    assert (by_pid[1000].close_wait, by_pid[2000].close_wait) == (3, 0)
    assert (by_pid[1000].enter_rate, by_pid[1000].exit_rate) == (0.2, 0.0)   # 2 in 10 s
    assert (by_pid[2000].enter_rate, by_pid[2000].exit_rate) == (0.6, 0.6)   # 6 in, 6 out
    assert by_pid[2000].reap_in is None and by_pid[2000].rule == "-"
    world.exit(2000)
    assert [r.pid for r in rows(w, world.clock.now)] == [1000]  # churned, then gone


@pytest.mark.parametrize("pace", [0.2, 0.01, 0.3])
def test_the_kernels_counts_give_top_the_rates_every_event_gives(make_world, pace):
    """#35: with the first pass and credit (the kernel counts, per process
    that closed them, the sockets that left before they were taken), top's
    rows hold the very rates the per-event path computes: sockets that stay
    arrive one by one either way, and nothing is counted twice."""
    from resreap.engine.churn import Churn
    from resreap.engine.view import rows

    def run(credits: bool) -> dict:
        world = make_world()
        world.source.credits = credits
        leaky, healthy = server(world), world.process(2000, "healthy")
        world.close_wait(leaky, 8080, n=2, at=1.0, evidence="unread")
        for i in range(30):
            (sock,) = world.close_wait(healthy, 9090, at=1.0 + i * pace)
            world.closes(sock, at=1.0 + i * pace + pace / 2, closer=healthy)
        w = world.watch(limit=5, grace=2.0)
        w.sockets.churn = Churn(world.clock.now - 10)
        world.run(1.0 + 30 * pace + 1)
        seen = sum(w.sockets.events_seen.values())
        return {r.pid: (r.close_wait, r.enter_rate, r.exit_rate) for r in
                rows(w, world.clock.now)}, seen, world.source.credited

    each, seen_each, _ = run(False)
    counted, seen_counted, credited = run(True)
    assert counted == each and each[2000][1] == each[2000][2] >= 2.9  # about 30 in, 30 out
    assert seen_counted == seen_each
    assert credited > 0  # some never arrived one by one: the kernel counted them


def test_the_default_rule_alone_weighs_a_holder_without_looking_up_its_sockets(world):
    """Where one rule judges everyone, "over its limit?" is the holder's
    count: its sockets are not looked up one by one (a holder of 20,000
    cost 20,000 lookups at every touch, and again as a co-holder)."""
    srv = server(world)
    world.close_wait(srv, 8080, n=50, at=1.0)
    w = world.watch(limit=100)
    world.run(10)
    (owner,) = w.sockets.counter.by_owner
    looked = []
    real_get = w.table.get
    w.table.get = lambda key: looked.append(key) or real_get(key)
    assert w.sockets.over(owner) is None and w.sockets.standing(owner)[0][1] == 50
    assert looked == []
    assert world.reaped() == []
