"""The poller skips the dump of a namespace whose TCP counters stood still
(#35): every dump walks the kernel's whole established hash, so each
namespace's dump cost the host's connections once more per poll.  These
drive the skipping against a table whose sockets and counters the test
sets; tests/kernel/test_quiet_namespaces.py does it on real namespaces."""

from resreap.host.sockdiag import DiagSock
from resreap.host.sockets import NsSock
from resreap.model import TCP_CLOSE_WAIT, Kind, SockId
from resreap.sources.poll_events import RECHECK_QUIET, USERS_SHARE, PollSource

INTERVAL = 1.0
QUIET, BUSY = 4026531840, 4026532000


def sock(port: int) -> SockId:
    return SockId(4, b"\x7f\0\0\1", 80, b"\x7f\0\0\1", port)


class Table:
    """What the poller asks of a SocketTable: the namespaces, their TCP
    counters, one namespace's CLOSE_WAIT sockets."""

    def __init__(self) -> None:
        self.sockets: dict[int, list[SockId]] = {QUIET: [], BUSY: []}
        self.counters: dict[int, str | None] = {QUIET: "Tcp: 1 0", BUSY: "Tcp: 1 0"}
        self.failing: set[int] = set()
        self.dumped: list[int] = []
        self.users: set[int] = set()   # made in other user namespaces
        self.clock = None              # a dump advances it by dump_costs
        self.dump_costs = 0.0

    def watched(self) -> list[int]:
        return list(self.sockets)

    def made_by_a_user(self, ino: int) -> bool:
        return ino in self.users

    def activity(self, ino: int) -> str | None:
        return self.counters[ino]

    def dump_in(self, ino: int, states, info=False):
        assert tuple(states) == (TCP_CLOSE_WAIT,)
        self.dumped.append(ino)
        if self.clock is not None:
            self.clock.now += self.dump_costs
        if ino in self.failing:
            return None
        return [NsSock(ino, DiagSock(s, TCP_CLOSE_WAIT, 7, s.rport, 1, 0))
                for s in self.sockets[ino]]

    def move(self, ino: int) -> None:
        """Traffic: the namespace's counters change."""
        n = int(self.counters[ino].split()[-1]) + 1
        self.counters[ino] = f"Tcp: 1 {n}"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def poller(table: Table):
    clock = table.clock = Clock()
    source = PollSource(table, interval=INTERVAL, clock=clock)
    source.start()

    def poll() -> list[tuple[Kind, int]]:
        """One poll, an interval after the last; which namespaces it dumped
        and what it reported."""
        clock.now += INTERVAL
        table.dumped.clear()
        return [(t.kind, t.sock.rport) for t in source.read(0.0)]
    return source, clock, poll


def test_a_namespace_is_skipped_once_its_counters_stood_still_over_an_interval_after_a_dump():
    table = Table()
    table.sockets[QUIET] = [sock(1)]
    source, _clock, poll = poller(table)
    assert poll() == [] and table.dumped == [QUIET, BUSY]  # still: not settled yet
    for _ in range(5):
        table.move(BUSY)
        assert poll() == []
        assert table.dumped == [BUSY]  # the quiet one's last dump still holds
    assert source.skips == 5


def test_an_entry_is_seen_at_the_poll_after_the_counters_moved():
    table = Table()
    source, _clock, poll = poller(table)
    poll()
    poll()
    assert table.dumped == []
    table.sockets[QUIET].append(sock(2))  # a FIN arrived: counted as it arrives
    table.move(QUIET)
    assert poll() == [(Kind.ENTER, 2)]
    table.sockets[QUIET].remove(sock(2))  # closed: its FIN went out, counted
    table.move(QUIET)
    assert poll() == [(Kind.EXIT, 2)]


def test_a_fin_applied_within_an_interval_after_it_was_counted_is_seen():
    """The holder had the socket locked: the FIN was counted, the dump that
    followed did not see CLOSE_WAIT yet, and the counters did not move
    again.  The next poll dumps once more before it trusts them."""
    table = Table()
    _source, _clock, poll = poller(table)
    poll()
    poll()
    table.move(QUIET)            # the FIN, counted...
    assert poll() == []          # ...not applied yet when this dump ran
    table.sockets[QUIET].append(sock(3))  # applied when the lock was released
    assert poll() == [(Kind.ENTER, 3)]
    assert QUIET in table.dumped
    assert poll() == [] and table.dumped == []  # settled again


def test_a_quiet_namespace_is_dumped_again_after_the_recheck_period():
    """An exit that sent nothing (a FIN queued behind a closed window) moves
    no counter: the periodic dump bounds how long it shows."""
    table = Table()
    table.sockets[QUIET] = [sock(4)]
    _source, clock, poll = poller(table)
    poll()
    table.sockets[QUIET].clear()
    seen, polls = [], 0
    while not seen:
        seen = poll()
        polls += 1
        assert polls <= RECHECK_QUIET / INTERVAL + 1
    assert seen == [(Kind.EXIT, 4)]
    assert polls >= RECHECK_QUIET / INTERVAL - 1  # not before: the counters did not move


def test_a_namespace_that_did_not_answer_or_whose_counters_are_unreadable_is_always_dumped():
    table = Table()
    table.sockets[QUIET] = [sock(5)]
    _source, _clock, poll = poller(table)
    poll()
    poll()
    table.failing.add(QUIET)
    assert poll() == [] and table.dumped == []  # skipped: its last dump holds
    table.move(QUIET)
    assert poll() == [(Kind.EXIT, 5)]  # as before: what did not answer is gone
    table.failing.clear()
    assert poll() == [(Kind.ENTER, 5)]  # asked again at once, not trusted from before
    table.counters[QUIET] = None  # its process left: read again through another
    for _ in range(3):
        assert poll() == [] and QUIET in table.dumped


def test_users_namespaces_share_half_an_interval_oldest_first_and_roots_are_always_dumped():
    """Anyone can make namespaces and keep traffic in them; each dump walks
    the host's whole hash.  Six busy ones of a user's, each dump 0.2 of an
    interval: a poll dumps root's, then the user's until half the interval
    is spent (three); the others keep their last answer and go first next
    time, so each is dumped every other poll."""
    table = Table()
    users = [QUIET + 100 + i for i in range(6)]
    for ino in users:
        table.sockets[ino] = []
        table.counters[ino] = "Tcp: 1 0"
        table.users.add(ino)
    table.dump_costs = 0.2 * INTERVAL
    source, _clock, poll = poller(table)

    def busy_poll() -> list:
        for ino in [BUSY, *users]:
            table.move(ino)
        return poll()
    rounds, deferred = [], source.deferred
    for _ in range(4):
        busy_poll()
        assert BUSY in table.dumped  # root's: at every poll
        rounds.append([i for i in table.dumped if i in users])
    assert all(len(r) == 3 for r in rounds), rounds
    assert set(rounds[0] + rounds[1]) == set(users) == set(rounds[2] + rounds[3])
    assert source.deferred - deferred == 4 * 3
    # A leak in one of them is seen within two polls, whatever its turn.
    for late in (rounds[3][0], rounds[2][0]):
        table.sockets[late].append(sock(late % 1000))
        seen = busy_poll() or busy_poll()
        assert seen == [(Kind.ENTER, late % 1000)]
