"""When a leaking process runs out of fds (engine/forecast), and the reap
that acts before (--act-before), on the fake host: a server with a soft
limit of 200 leaking steadily, in bursts, stopping, having its limit
raised, closing what it leaks late, and a healthy one whose table is full
of established connections."""

from __future__ import annotations

import pytest

from resreap.engine import view
from resreap.engine.decisions import Event
from resreap.engine.forecast import Alarms, Forecaster
from resreap.engine.policy import threshold
from resreap.engine.rules import Limits
from resreap.model import Owner

LIMIT = 200


def server(world, pid=1000, fd_limit=LIMIT):
    proc = world.process(pid, fd_limit=fd_limit)
    world.listen(proc, 8080)
    return proc


def leak(world, srv, start=1.0, every=0.25, times=400, burst=1, closed_after=None):
    """``times`` arrivals of ``burst`` sockets, ``every`` seconds apart,
    kept (or closed ``closed_after`` seconds later); stops where the
    server would have no fd left for them (EMFILE).  Returns when its fds
    ran out (seconds from the start), or None."""
    fds = 1  # the listener
    for i in range(times):
        at = start + i * every
        n = min(burst, LIMIT - fds)
        if n <= 0:
            return at - every
        socks = world.close_wait(srv, 8080, n=n, at=at)
        if closed_after is not None:
            for sock in socks:
                world.closes(sock, at + closed_after)
        else:
            fds += n
        if fds >= LIMIT:
            return at
    return None


def owner_of(world) -> Owner:
    (owner,) = world.watcher.sockets.counter.by_owner
    return owner


def forecast_at(world, t: float) -> float | None:
    world.run(t)
    return world.watcher.forecasts.seconds(owner_of(world), world.clock.now)


def errors(world, out: float, start: float = 1.0) -> list[float]:
    """The forecast's error against the real time to EMFILE (``out``) at
    25, 50 and 75% of the way, as a share of the time left."""
    found = []
    for share in (0.25, 0.5, 0.75):
        t = start + share * (out - start)
        left = out - t
        found.append(abs(forecast_at(world, t) - left) / left)
    return found


def test_a_steady_leak_is_forecast_to_within_a_tenth_of_the_time_left(world):
    srv = server(world)
    out = leak(world, srv)
    world.watch(limit=1000)
    assert out == pytest.approx(50.5)
    assert max(errors(world, out)) < 0.10


def test_a_leak_in_bursts_is_forecast_as_well(world):
    """Ten sockets every 2.5 s: the same pace in steps.  The secant from
    the first step to the last is exact; a rate over "the last N seconds"
    would swing by a burst."""
    srv = server(world)
    out = leak(world, srv, every=2.5, burst=10)
    world.watch(limit=1000)
    assert max(errors(world, out)) < 0.15


def test_a_leak_that_stopped_has_no_forecast(world):
    srv = server(world)
    leak(world, srv, times=40)          # 10 s of leaking, then no more
    world.watch(limit=1000)
    assert forecast_at(world, 12.0) is not None
    assert forecast_at(world, 60.0) is None
    assert world.watcher.sockets.counter.count(owner_of(world)) == 40


def test_a_limit_raised_at_run_time_counts_within_seconds(world):
    srv = server(world)
    leak(world, srv, times=160)
    world.set_fd_limit(1000, 2000, at=20.0)
    world.watch(limit=1000)
    before = forecast_at(world, 19.0)
    assert before == pytest.approx(50.5 - 19.0, rel=0.15)
    after = forecast_at(world, 26.0)    # read again within FD_FRESH
    assert after == pytest.approx((2000 - 101) / 4 - 1, rel=0.15)


def test_sockets_that_leave_as_fast_as_they_come_have_no_forecast(world):
    """It closes each socket 5 s after its peer did: a dozen count at any
    time, none more.  Its count rose once, then stayed flat."""
    srv = server(world)
    leak(world, srv, times=200, closed_after=5.0)
    world.watch(limit=1000)
    for t in (20.0, 30.0, 45.0):
        world.run(t)
        owner = owner_of(world)
        assert world.watcher.sockets.counter.count(owner) >= 8
        assert world.watcher.forecasts.seconds(owner, world.clock.now) is None


def test_a_table_full_of_established_connections_gets_no_forecast(world):
    """150 of its 200 fds in healthy connections, and sockets that pass
    through CLOSE_WAIT (closed at once): nothing counts, nothing grows."""
    srv = server(world)
    for i in range(150):
        srv.hold(900000 + i)            # established: not in CLOSE_WAIT
    leak(world, srv, times=200, closed_after=0.1)
    w = world.watch(limit=1000)
    world.run(55)
    assert not w.sockets.counter.by_owner and len(w.forecasts) == 0
    assert all(r.exhausted_in is None for r in view.rows(w, world.clock.now))
    assert w.forecasts.soonest(10, world.clock.now) == []


def test_act_before_reaps_before_the_fds_run_out(world):
    """-l 1000 would never reap it; --act-before 20 does, 20 s before its
    fds run out, and the reap line says why."""
    srv = server(world)
    out = leak(world, srv)
    w = world.watch(limit=1000, act_before=20)
    world.run(28.0)
    (row,) = view.rows(w, world.clock.now)
    assert row.exhausted_in == pytest.approx(out - 28.0, rel=0.1)
    assert row.reap_in == pytest.approx(row.exhausted_in - 20, abs=0.01)   # top agrees
    world.run(60)
    assert world.reaped() == [1000]
    (reap,) = world.said(Event.REAP)
    assert reap["reason"] == "exhaustion" and reap["limit"] == 1000
    assert reap["at"] == pytest.approx(out - 20, abs=2.5) and reap["at"] < out
    assert reap["exhausted_in"] == pytest.approx(20, abs=1)
    target = world.killer.targets[0]
    assert target.reason == "exhaustion" and target.limit == 1   # re-check: one still held
    # It exited with its sockets: no history, no alarm left behind.
    assert len(w.forecasts) == 0 and len(w.foresight.alarms) == 0


def test_without_act_before_the_forecast_only_informs(world):
    srv = server(world)
    out = leak(world, srv)
    world.watch(limit=1000)
    world.run(out + 5)
    assert world.reaped() == [] and world.said(Event.REAP) == []


def test_the_limit_still_reaps_first_and_its_line_carries_the_forecast(world):
    srv = server(world)
    leak(world, srv)
    world.watch(limit=60, act_before=5)
    world.run(60)
    (reap,) = world.said(Event.REAP)
    assert reap["reason"] == "limit" and reap["count"] >= 60
    assert reap["exhausted_in"] == pytest.approx(50.5 - reap["at"], rel=0.15)


# -- the parts --------------------------------------------------------------------

def test_the_predicate_needs_a_counting_socket_and_a_forecast():
    bound = threshold(Limits(limit=10, act_before=30.0), None)
    assert bound.reason(10, None) == "limit"
    assert bound.reason(1, 29.0) == "exhaustion" and bound.due_in(1, 29.0) == 0.0
    assert bound.reason(0, 5.0) is None        # no evidence, no reap
    assert bound.reason(3, None) is None and bound.due_in(3, 90.0) == 60.0
    assert threshold(Limits(limit=10), None).reason(9, 1.0) is None


def test_samples_are_kept_a_step_apart_and_bounded():
    from resreap.engine import forecast

    f = Forecaster(proc=None)
    owner = Owner(1, 1, "x")
    for i in range(10_000):
        f.sample(owner, i + 1, i * 0.1)
    samples = f._history[owner].samples
    assert len(samples) == forecast.SAMPLES
    gaps = [b[0] - a[0] for a, b in zip(samples, list(samples)[1:])]
    assert min(gaps) >= forecast.STEP - 1e-9
    assert f._history[owner].last == (9999 * 0.1, 10_000)
    assert f.rate(owner, 9999 * 0.1) == pytest.approx(10.0, rel=0.01)
    f.sample(owner, 0, 1000.0)
    assert len(f) == 0


def test_alarms_ring_in_order_and_replaced_times_do_not_ring():
    alarms = Alarms()
    a, b, c = (Owner(p, p, "x") for p in (1, 2, 3))
    alarms.set(a, 30.0)
    alarms.set(b, 10.0)
    alarms.set(c, 20.0)
    alarms.set(b, 40.0)                 # its forecast moved
    alarms.set(c, None)                 # no forecast any more
    assert alarms.next() == 30.0
    assert alarms.due(35.0) == [a] and alarms.due(39.0) == []
    assert alarms.due(41.0) == [b] and alarms.next() is None and len(alarms) == 0
    for i in range(1000):
        alarms.set(a, float(i))
    assert len(alarms._heap) <= 2 * len(alarms) + 64
