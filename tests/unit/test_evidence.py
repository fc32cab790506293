"""The evidence rules (resreap/engine/evidence.py): what counts, after how long."""

import pytest

from resreap.engine.evidence import MIN_RECHECK, Rules, counts_against, judge, summary
from resreap.model import TCP_CLOSE_WAIT, Evidence, SockId
from resreap.host.sockdiag import DiagSock

S = SockId(4, b"\x7f\0\0\1", 80, b"\x7f\0\0\2", 4000)
RULES = Rules(grace=2.0, stall=60.0)


def diag(rq=0, wq=0, inode=99, idle=None, uid=1000):
    return DiagSock(S, TCP_CLOSE_WAIT, inode, 5, rq, uid, wq, idle)


@pytest.mark.parametrize("sock,age,kind,counts", [
    # EOF read and ignored: the classic leak counts after the grace.
    (diag(rq=0, idle=100.0), 1.9, Evidence.EOF_IGNORED, False),
    (diag(rq=0, idle=100.0), 2.0, Evidence.EOF_IGNORED, True),
    # FIN unread (pool leak, or a busy handler): only after the stall.
    (diag(rq=1, idle=100.0), 2.0, Evidence.UNREAD, False),
    (diag(rq=1, idle=100.0), 59.9, Evidence.UNREAD, False),
    (diag(rq=1, idle=100.0), 60.0, Evidence.UNREAD, True),
    (diag(rq=900, idle=100.0), 60.0, Evidence.UNREAD, True),
    # Never accepted: only after the stall.
    (diag(rq=1, inode=0), 30.0, Evidence.QUEUED, False),
    (diag(rq=1, inode=0), 60.0, Evidence.QUEUED, True),
    # Unacked data: the peer is the slow side, whatever the age.
    (diag(rq=1, wq=65536, idle=100.0), 3600.0, Evidence.SENDING, False),
    (diag(rq=0, wq=1, idle=100.0), 3600.0, Evidence.SENDING, False),
    # Sent data within the grace: still in use.
    (diag(rq=0, idle=0.5), 30.0, Evidence.SENDING, False),
    (diag(rq=1, idle=1.9), 600.0, Evidence.SENDING, False),
    # procfs has no tcp_info: age alone.
    (diag(rq=0, idle=None), 2.0, Evidence.EOF_IGNORED, True),
])
def test_judge(sock, age, kind, counts):
    j = judge(sock, age, RULES)
    assert (j.evidence, j.counts) == (kind, counts)
    assert j.recheck >= MIN_RECHECK


def test_quiet_time_is_since_the_last_data_sent():
    """A socket that sent data 1 s before going quiet counts once it has
    been quiet for the whole grace, not merely in CLOSE_WAIT that long."""
    assert judge(diag(rq=0, idle=2.5), 30.0, RULES).counts is True
    assert judge(diag(rq=0, idle=1.5), 30.0, RULES).counts is False
    assert judge(diag(rq=1, idle=59.0), 600.0, RULES).counts is False
    assert judge(diag(rq=1, idle=60.0), 600.0, RULES).counts is True


def test_not_counting_yet_is_looked_at_again_before_it_would():
    j = judge(diag(rq=0, idle=100.0), 1.5, RULES)
    assert j.recheck == pytest.approx(0.5)
    j = judge(diag(rq=1, idle=100.0), 10.0, RULES)
    assert 0 < j.recheck <= RULES.grace  # it may read the EOF meanwhile
    j = judge(diag(rq=1, idle=100.0), 59.5, RULES)
    assert j.recheck == pytest.approx(0.5)


@pytest.mark.parametrize("sock_uid,uids,want", [
    (0, {1000}, True),          # root made it (a listener from systemd, a master)
    (1000, {1000}, True),       # its own
    (1000, {33, 1000}, True),   # any of its uids (real, effective, saved, fs)
    (1000, {0}, False),         # a user's socket passed to a root daemon
    (1001, {1000}, False),      # another user's socket passed in
])
def test_counts_against(sock_uid, uids, want):
    assert counts_against(sock_uid, uids) is want


def test_a_root_socket_counts_only_where_vouched_for():
    """#21 item 12: root-accepted sockets passed to a process that neither
    listens on their port nor descends from one that does."""
    assert counts_against(0, {1000}, vouched=False) is False
    assert counts_against(1000, {1000}, vouched=False) is True


def test_summary():
    assert summary([Evidence.QUEUED, Evidence.EOF_IGNORED, Evidence.EOF_IGNORED]) == \
        "eof-ignored:2,queued:1"
