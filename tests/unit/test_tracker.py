from resreap.model import Kind, SockId, Transition
from resreap.tracker import CloseWaitTable

A = SockId(4, b"\x7f\0\0\1", 80, b"\x7f\0\0\1", 1000)
B = SockId(4, b"\x7f\0\0\1", 80, b"\x7f\0\0\1", 1001)


def t(kind, sock, ts):
    return Transition(kind, sock, ts)


def test_deadline_is_entry_plus_grace():
    table = CloseWaitTable(grace=2.0)
    table.apply(t(Kind.ENTER, A, 10.0))
    table.apply(t(Kind.ENTER, B, 11.0))
    assert table.next_deadline() == 12.0
    assert table.due(11.99) == []
    assert [e.sock for e in table.due(12.0)] == [A]
    assert table.next_deadline() == 13.0


def test_exit_before_deadline_never_counts():
    table = CloseWaitTable(grace=2.0)
    table.apply(t(Kind.ENTER, A, 10.0))
    entry, _ = table.apply(t(Kind.EXIT, A, 11.0))
    assert entry.sock == A
    assert table.due(100.0) == [] and table.next_deadline() is None


def test_seeded_then_event_keeps_the_earlier_time():
    table = CloseWaitTable(grace=2.0)
    table.apply(t(Kind.EXISTING, A, 10.5))
    _, new = table.apply(t(Kind.ENTER, A, 10.0))
    assert not new and table.get(A).entered == 10.0 and not table.get(A).existing
    assert [e.sock for e in table.due(12.0)] == [A]
    # a later duplicate does not re-arm
    table.apply(t(Kind.ENTER, A, 11.0))
    assert table.due(13.5) == []


def test_reentry_after_exit_restarts_the_timer():
    table = CloseWaitTable(grace=2.0)
    table.apply(t(Kind.ENTER, A, 10.0))
    table.apply(t(Kind.EXIT, A, 10.5))
    table.apply(t(Kind.ENTER, A, 11.0))
    assert table.due(12.5) == []
    assert [e.sock for e in table.due(13.0)] == [A]


def test_unknown_exit_is_harmless():
    table = CloseWaitTable(grace=1.0)
    assert table.apply(t(Kind.EXIT, A, 1.0)) == (None, False)
