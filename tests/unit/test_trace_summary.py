"""#35: trace's rate-adaptive summary (engine/summary) on a fake tracer:
when it switches and back, what it prints meanwhile, and that every
socket is counted once, seen or counted by the kernel."""

from __future__ import annotations

from types import SimpleNamespace

from resreap.engine.summary import OFF_AFTER, Counted, Summarizer, Switched
from resreap.engine.trace import TraceKind, TraceRecord
from resreap.model import Owner, SockId
from resreap.ops import formatting

SRV = Owner(700, 1, "churn-srv")
SOCK = SockId(4, b"\x7f\0\0\1", 80, b"\x7f\0\0\1", 5000)


class FakeSource:
    credits = True

    def __init__(self) -> None:
        self.pending: dict[int, int] = {}
        self.switched: list[bool] = []

    def closers(self) -> dict[int, int]:
        taken, self.pending = self.pending, {}
        return taken

    def set_first_pass(self, on: bool) -> bool:
        self.switched.append(on)
        return True


def tracer(source: FakeSource, clock):
    credited: dict[Owner, int] = {}
    return SimpleNamespace(
        source=source, wanted=lambda owners: True, clock=clock, wall_offset=1000.0,
        resolver=SimpleNamespace(owners=lambda pids: [SRV] if SRV.pid in pids else []),
        credit=lambda owner, n: credited.__setitem__(owner, credited.get(owner, 0) + n),
        credited=credited)


def rec(kind: TraceKind) -> TraceRecord:
    return TraceRecord(0.0, kind, SOCK, (SRV,), None, None)


def test_it_sums_above_the_rate_and_shows_every_line_again_when_quiet():
    now = [0.0]
    source = FakeSource()
    t = tracer(source, lambda: now[0])
    s = Summarizer(t, 100.0)
    lines = [rec(TraceKind.ENTER), rec(TraceKind.EXIT)] * 75
    now[0] = 1.0
    out = s.pass_through(lines)                      # 150 a second: over 100
    assert out[:-1] == lines and out[-1] == Switched(1001.0, True, 150.0, 100.0)
    assert source.switched == [True] and s.on
    source.pending = {SRV.pid: 200}                   # never sent: counted
    now[0] = 2.0
    out = s.pass_through([rec(TraceKind.ENTER)] * 10 + [rec(TraceKind.STAYED)])
    assert out == [rec(TraceKind.STAYED), Counted(1002.0, SRV, 210, 200, 1.0)]
    assert t.credited == {SRV: 200}
    for second in range(OFF_AFTER):                   # quiet: under half the rate
        now[0] = 3.0 + second
        out = s.pass_through([rec(TraceKind.EXIT)] * 10)
        assert out[0] == Counted(1003.0 + second, SRV, 0, 10, 1.0)
    assert out[-1] == Switched(1002.0 + OFF_AFTER, False, 10.0, 100.0)
    assert source.switched == [True, False] and not s.on
    source.pending = {SRV.pid: 4}                     # closed just before the switch
    now[0] = 2.5 + OFF_AFTER                          # half a second on
    assert s.pass_through([rec(TraceKind.ENTER)]) == [rec(TraceKind.ENTER)]
    assert s.flush() == [Counted(1002.5 + OFF_AFTER, SRV, 4, 4, 0.5)]  # no line of their own


def test_summary_lines_as_text_and_json():
    row = Counted(1796654930.5, Owner(7, 1, "a\x1bb"), 9, 8, 1.013)
    line = formatting.any_line(formatting.trace_line, row)
    assert "SUMMARY" in line and "9 in, 8 out in 1.013s" in line and "\x1b" not in line
    obj = formatting.any_json(formatting.trace_json, row)
    assert '"event": "summary"' in obj and '"in": 9' in obj and '"out": 8' in obj
    on = formatting.any_line(formatting.trace_line, Switched(1.0, True, 12000.0, 2000.0))
    assert "12000 transitions/s, over 2000" in on and "--summary 0" in on
    assert '"summary": false' in formatting.any_json(formatting.trace_json,
                                                      Switched(1.0, False, 3.0, 2000.0))


def test_summary_and_min_age_do_not_go_together():
    import pytest

    from resreap.errors import UsageError
    from resreap.ops.settings import resolve_trace

    with pytest.raises(UsageError, match="--summary and --min-age"):
        resolve_trace(None, (), (), 2.0, 5.0, False, "auto", summary=100)
    with pytest.raises(UsageError, match="--summary"):
        resolve_trace(None, (), (), 2.0, None, False, "auto", summary=-1)
    assert resolve_trace(None, (), (), 2.0, 5.0, False, "auto", summary=0).summary == 0
