"""trace against real processes and sockets: who owns what."""

from __future__ import annotations

import time

import pytest

from resreap.sources.choice import open_source
from resreap.engine.filters import Filters
from resreap.model import Kind
from resreap.engine.owners import OwnerResolver
from resreap.host.sockets import SocketTable
from resreap.engine.evidence import Rules
from resreap.model import Evidence
from resreap.engine.trace import TraceKind as Event, Tracer

from procs import patience

# Every scenario against each event source (EVERY_BACKEND): BPF, polling
# sock_diag, and polling /proc/net/tcp (hosts without sock_diag).
pytestmark = [pytest.mark.kernel, pytest.mark.each_backend]


class Harness:
    def __init__(self, backend: str, filters: Filters = Filters(), rules: Rules = Rules()) -> None:
        self.table = SocketTable(mode="procfs" if backend == "procfs" else "auto")
        source_kind = "bpf" if backend == "bpf" else "proc"
        self.source = open_source(source_kind, self.table, latency=0.05).source
        assert self.source.name == source_kind
        # How long a lookup may wait for the background scan: a wait, so it
        # stretches under emulation.
        self.tracer = Tracer(self.source, OwnerResolver(self.table, scan_wait=patience(0.5)),
                             filters, rules)
        self.records = list(self.tracer.start())

    def until(self, pred, timeout: float = 5.0) -> list:
        deadline = time.monotonic() + patience(timeout)
        while time.monotonic() < deadline and not pred(self.records):
            self.records.extend(self.tracer.step(0.05))
        return self.records

    def on_port(self, port: int, kind: Kind | None = None) -> list:
        return [r for r in self.records
                if r.sock.lport == port and (kind is None or r.kind.value == kind.value)]

    def close(self) -> None:
        self.source.close()
        self.table.close()


@pytest.fixture
def harness(backend):
    made = []

    def make(filters: Filters = Filters(), rules: Rules = Rules()) -> Harness:
        h = Harness(backend, filters, rules)
        made.append(h)
        return h

    yield make
    for h in made:
        h.close()


def enter_owners(h: Harness, port: int, want: int) -> list[set[int]]:
    h.until(lambda _: len(h.on_port(port, Kind.ENTER)) >= want)
    return [{o.pid for o in r.owners} for r in h.on_port(port, Kind.ENTER)]


def test_owner_is_the_server_not_the_client_that_closed(harness, actors):
    server = actors("leaky-server", "127.0.0.1")
    h = harness()
    client = actors("clients", "127.0.0.1", server.port, 3)
    client.send("close", "CLOSED")
    owners = enter_owners(h, server.port, 3)
    assert owners == [{server.pid}] * 3
    assert all(client.pid not in o for o in owners)


def test_socket_shared_after_fork_lists_both_holders(harness, actors):
    server = actors("leaky-server", "127.0.0.1")
    client = actors("clients", "127.0.0.1", server.port, 2)
    server.send("count", "COUNT")
    time.sleep(patience(0.1))  # the accept thread has taken both connections
    child = int(server.send("fork", "CHILD").split()[1])
    h = harness()
    client.send("close", "CLOSED")
    owners = enter_owners(h, server.port, 2)
    assert owners == [{server.pid, child}] * 2


def test_socket_passed_over_unix_socket_belongs_to_the_receiver(harness, actors):
    server = actors("passing-server", "127.0.0.1")
    worker = int(server.facts["worker"])
    client = actors("clients", "127.0.0.1", server.port, 2)
    time.sleep(patience(0.2))  # accepted and passed on
    h = harness()
    client.send("close", "CLOSED")
    owners = enter_owners(h, server.port, 2)
    assert owners == [{worker}] * 2


def test_accept_queue_of_a_server_that_never_accepts(harness, actors):
    server = actors("stuck-server", "127.0.0.1")
    h = harness()
    client = actors("clients", "127.0.0.1", server.port, 2)
    client.send("close", "CLOSED")
    owners = enter_owners(h, server.port, 2)
    assert owners == [{server.pid}] * 2


def test_ipv6(harness, actors):
    server = actors("leaky-server", "::1")
    h = harness()
    client = actors("clients", "::1", server.port, 2)
    client.send("close", "CLOSED")
    owners = enter_owners(h, server.port, 2)
    assert owners == [{server.pid}] * 2
    rec = h.on_port(server.port, Kind.ENTER)[0]
    assert rec.sock.family == 6 and rec.sock.local == f"[::1]:{server.port}"


def test_server_inside_a_network_namespace(harness, actors, netns):
    server = actors("leaky-server", "127.0.0.1", netns=netns)
    h = harness()
    client = actors("clients", "127.0.0.1", server.port, 2, netns=netns)
    client.send("close", "CLOSED")
    owners = enter_owners(h, server.port, 2)
    assert owners == [{server.pid}] * 2
    host_ns = h.table.namespaces
    rec = h.on_port(server.port, Kind.ENTER)[0]
    assert rec.netns in host_ns and rec.netns != h.tracer.resolver.kernel._own


def test_sockets_in_close_wait_before_start_are_reported(harness, actors):
    server = actors("leaky-server", "127.0.0.1")
    client = actors("clients", "127.0.0.1", server.port, 3)
    client.send("close", "CLOSED")
    time.sleep(patience(0.2))
    h = harness()
    existing = h.on_port(server.port, Kind.EXISTING)
    assert len(existing) == 3
    assert all({o.pid for o in r.owners} == {server.pid} for r in existing)


def test_exit_reports_time_spent_in_close_wait(harness, actors):
    server = actors("leaky-server", "127.0.0.1")
    h = harness()
    client = actors("clients", "127.0.0.1", server.port, 2)
    client.send("close", "CLOSED")
    enter_owners(h, server.port, 2)
    time.sleep(patience(0.3))
    server.send("close", "CLOSED")
    h.until(lambda _: len(h.on_port(server.port, Kind.EXIT)) >= 2)
    exits = h.on_port(server.port, Kind.EXIT)
    assert len(exits) == 2
    assert all(0.25 <= r.age < 5 for r in exits)
    assert all({o.pid for o in r.owners} == {server.pid} for r in exits)
    summary = {row.owner.pid: row for row in h.tracer.summary()}
    assert summary[server.pid].entered == 2 and summary[server.pid].still_open == 0
    # LONGEST comes from the exits: the sockets are gone from the table.
    assert summary[server.pid].longest == max(r.age for r in exits)


def test_ignored_foreign_endpoint_is_not_reported(harness, actors):
    server = actors("leaky-server", "127.0.0.1")
    client = actors("clients", "127.0.0.1", server.port, 2)
    ports = [int(p) for p in client.facts["ports"].split(",")]
    h = harness(Filters.parse(None, [f"127.0.0.1:{ports[0]}"], ()))
    client.send("close", "CLOSED")
    h.until(lambda _: len(h.on_port(server.port, Kind.ENTER)) >= 1)
    time.sleep(patience(0.2))
    h.until(lambda _: False, timeout=0.2)
    assert [r.sock.rport for r in h.on_port(server.port, Kind.ENTER)] == [ports[1]]


def test_command_and_pid_filters_select_owners(harness, actors):
    server = actors("leaky-server", "127.0.0.1")
    other = actors("stuck-server", "127.0.0.1")
    h = harness(Filters.parse("leaky-server", [], ()))
    hp = harness(Filters.parse(None, [], [other.pid]))
    for srv in (server, other):
        actors("clients", "127.0.0.1", srv.port, 1).send("close", "CLOSED")
    for hh in (h, hp):
        hh.until(lambda _: False, timeout=0.5)
    assert len(h.on_port(server.port, Kind.ENTER)) == 1
    assert h.on_port(other.port) == []
    assert len(hp.on_port(other.port, Kind.ENTER)) == 1
    assert hp.on_port(server.port) == []


@pytest.mark.parametrize("mode,want", [("eof", Evidence.EOF_IGNORED), ("unread", Evidence.UNREAD)])
def test_stayed_lines_name_the_evidence(harness, actors, mode, want):
    """A socket still in CLOSE_WAIT after the grace gets a STAYED line with
    what the kernel says of it: EOF read and ignored, or never read."""
    server = actors("leaky-server", "127.0.0.1", mode)
    h = harness(rules=Rules(grace=0.5))
    client = actors("clients", "127.0.0.1", server.port, 2)
    client.send("close", "CLOSED")
    h.until(lambda _: len(h.on_port(server.port, Event.STAYED)) >= 2)
    stayed = h.on_port(server.port, Event.STAYED)
    assert [r.evidence for r in stayed] == [want, want]
    assert all({o.pid for o in r.owners} == {server.pid} and r.age >= 0.5 for r in stayed)


@pytest.mark.alone  # it sees the whole host: another test's socket that stayed would show
def test_min_age_shows_only_sockets_that_stayed(harness, actors):
    """Real traffic is a firehose: --min-age keeps the sockets that stayed."""
    from resreap.engine.trace import Tracer

    quick = actors("flood", "127.0.0.1", "1")          # short CLOSE_WAITs
    server = actors("leaky-server", "127.0.0.1")
    h = harness()
    h.tracer = Tracer(h.source, h.tracer.resolver, Filters(), min_age=0.5)
    h.records = []
    client = actors("clients", "127.0.0.1", server.port, 2)
    client.send("close", "CLOSED")
    quick.expect("DONE", timeout=10)
    h.until(lambda _: len(h.on_port(server.port, Event.STAYED)) >= 2)
    assert all(r.kind is Event.STAYED for r in h.records)
    assert not h.on_port(quick.port)                    # the flood never stayed
    assert {o.pid for r in h.on_port(server.port) for o in r.owners} == {server.pid}
