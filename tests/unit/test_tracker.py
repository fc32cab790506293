from resreap.model import Kind, SockId, Transition
from resreap.engine.tracker import CloseWaitTable

A = SockId(4, b"\x7f\0\0\1", 80, b"\x7f\0\0\1", 1000)
B = SockId(4, b"\x7f\0\0\1", 80, b"\x7f\0\0\1", 1001)


def t(kind, sock, ts, kid=1, netns=None):
    return Transition(kind, sock, ts, kid=kid, netns=netns)


def enter(table, sock, ts, grace=2.0, **kw):
    entry, new = table.apply(t(Kind.ENTER, sock, ts, **kw))
    if new:
        table.schedule(entry, entry.entered + grace)
    return entry


def test_timers_fire_in_order_and_only_once():
    table = CloseWaitTable()
    enter(table, A, 10.0)
    enter(table, B, 11.0)
    assert table.next_deadline() == 12.0
    assert table.due(11.99) == []
    assert [e.sock for e in table.due(12.0)] == [A]
    assert table.next_deadline() == 13.0
    assert table.due(12.5) == []


def test_exit_before_deadline_never_fires():
    table = CloseWaitTable()
    enter(table, A, 10.0)
    entry, _ = table.apply(t(Kind.EXIT, A, 11.0))
    assert entry.sock == A
    assert table.due(100.0) == [] and table.next_deadline() is None and len(table) == 0


def test_same_key_reported_twice_keeps_the_earlier_time():
    table = CloseWaitTable()
    table.apply(t(Kind.EXISTING, A, 10.5))
    entry, new = table.apply(t(Kind.ENTER, A, 10.0))
    assert not new and entry.entered == 10.0 and not entry.existing


def test_reentry_after_exit_restarts_the_timer():
    table = CloseWaitTable()
    enter(table, A, 10.0)
    table.apply(t(Kind.EXIT, A, 10.5))
    enter(table, A, 11.0)
    assert table.due(12.5) == []
    assert [e.sock for e in table.due(13.0)] == [A]


def test_rescheduling_makes_the_old_timer_stale():
    table = CloseWaitTable()
    entry = enter(table, A, 10.0)
    table.schedule(entry, 20.0)
    assert table.due(15.0) == [] and table.next_deadline() == 20.0
    assert table.due(20.0) == [entry]


def test_twins_in_two_namespaces_are_two_sockets():
    """The same 4-tuple in two network namespaces: the exit of one must not
    erase the other's timer (a shadowing attack)."""
    table = CloseWaitTable()
    leak = enter(table, A, 10.0, kid=0xAAAA)
    enter(table, A, 10.5, kid=0xBBBB)
    assert len(table.same_tuple(A)) == 2
    gone, _ = table.apply(t(Kind.EXIT, A, 10.6, kid=0xBBBB))
    assert gone is not None and gone.key == (A, 0xBBBB)
    assert table.same_tuple(A) == [leak]
    assert table.due(12.0) == [leak]


def test_polled_entries_are_bound_at_once():
    table = CloseWaitTable()
    entry = enter(table, A, 1.0, kid=77, netns=4026531840)
    assert entry.bound and (entry.netns, entry.kid) == (4026531840, 77)
    assert not enter(table, B, 1.0, kid=0xFFFF0000).bound  # a BPF event: looked up later


def test_unknown_exit_is_harmless():
    table = CloseWaitTable()
    assert table.apply(t(Kind.EXIT, A, 1.0)) == (None, False)


# -- one socket book for watch and trace: which socket an exit took, which
# kernel socket an entry is ----------------------------------------------------

NS1, NS2 = 4026531840, 4026532999


def test_the_exit_of_a_seeded_socket_is_asked_of_the_kernel_never_guessed():
    """Seeded at start, keyed by its cookie; an exit event carries the
    kernel's address.  Alone with its 4-tuple it is most likely the one
    that left, but the same 4-tuple leaving in a namespace past the caps,
    or one whose entry was lost in a flood, would erase a leak's timer: it
    is looked at again, not dropped."""
    table = CloseWaitTable()
    seeded, _ = table.apply(Transition(Kind.EXISTING, A, 1.0, kid=77, netns=NS1))
    assert seeded.by_cookie
    gone, again = table.exit_of(t(Kind.EXIT, A, 5.0, kid=0xFFFF0000))
    assert gone is None and again == [seeded] and len(table) == 1


def test_an_exit_that_could_be_either_twin_removes_neither():
    """Two seeded twins of one 4-tuple (two namespaces): only the kernel
    knows which left; both are looked at again, none is dropped on a guess."""
    table = CloseWaitTable()
    a, _ = table.apply(Transition(Kind.EXISTING, A, 1.0, kid=77, netns=NS1))
    b, _ = table.apply(Transition(Kind.EXISTING, A, 1.0, kid=78, netns=NS2))
    gone, again = table.exit_of(t(Kind.EXIT, A, 5.0, kid=0xFFFF0000))
    assert gone is None and set(again) == {a, b} and len(table) == 2


def test_an_exit_never_takes_an_event_keyed_socket_by_its_4_tuple():
    """An entry keyed by its own event's address has its own exit; another
    exit of its 4-tuple (another namespace's socket) is not its."""
    table = CloseWaitTable()
    mine = enter(table, A, 1.0, kid=0xAAAA)
    mine.netns, mine.kid = NS1, 77                     # bound since
    gone, again = table.exit_of(t(Kind.EXIT, A, 5.0, kid=0xBBBB))
    assert gone is None and again == [mine] and len(table) == 1


class _Found:
    def __init__(self, netns, kid):
        self.netns = netns
        self.diag = type("Diag", (), {"kid": kid})()


def test_binding_takes_a_socket_no_twin_holds_and_drops_a_duplicate():
    table = CloseWaitTable()
    first = enter(table, A, 1.0, kid=0xAAAA)
    second = enter(table, A, 1.0, kid=0xBBBB)
    found = [_Found(NS1, 77), _Found(NS2, 78)]
    hit, taken = table.bind(first, found)
    assert (hit.netns, first.kid, taken) == (NS1, 77, False)
    hit, taken = table.bind(second, found)
    assert (hit.netns, second.kid, taken) == (NS2, 78, False)   # not the first's
    third = enter(table, A, 1.0, kid=0xCCCC)
    assert table.bind(third, found) == (None, True)            # both taken: a duplicate
    assert table.bind(first, found[1:]) == (None, False)       # its own socket left
