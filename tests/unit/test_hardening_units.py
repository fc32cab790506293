"""Issue #11 at the unit level: the /proc edge, the reader threads, the
bounded maps, config trust and validation."""

from __future__ import annotations

import builtins
import os
import time

import pytest

from resreap.ops import config
from resreap.host import procinfo
from resreap.errors import AccessDenied, ProcessUnreadable, UsageError
from resreap.engine.owners import FdIndex
from resreap.engine.config import Current, WatchConfig
from resreap.engine.filters import Filters
from resreap.engine.rules import Limits, Plan
from resreap.engine.policy import StormGuard


def fake_proc(root, pid, cmdline=b"srv\0", fifo=False):
    d = root / str(pid)
    (d / "fd").mkdir(parents=True)
    (d / "stat").write_bytes(f"{pid} (srv) S 1 0 0 0 0 0 ".encode() + b"0 " * 12 + b"99 0")
    if fifo:
        os.mkfifo(d / "cmdline")
    else:
        (d / "cmdline").write_bytes(cmdline)


def test_11_stuck_reads_never_exhaust_the_readers(tmp_path):
    """Four reads stuck in D state used up the reader pool for good."""
    stuck = range(4000, 4006)
    for pid in stuck:
        fake_proc(tmp_path, pid, fifo=True)
    fake_proc(tmp_path, 5000, cmdline=b"fine\0--ok\0")
    try:
        for pid in stuck:
            with pytest.raises(ProcessUnreadable):
                procinfo.Proc(str(tmp_path)).read_bounded(pid, timeout=0.1)
        # A stuck pid is not read again (no second thread piles up on it) ...
        began = time.monotonic()
        with pytest.raises(ProcessUnreadable):
            procinfo.Proc(str(tmp_path)).read_bounded(4000, timeout=5)
        assert time.monotonic() - began < 1
        # ... and everyone else is still read.
        assert procinfo.Proc(str(tmp_path)).read_bounded(5000, timeout=2).cmdline == "fine --ok"
    finally:
        for pid in stuck:  # release the stuck threads: the FIFOs get a writer
            with open(tmp_path / str(pid) / "cmdline", "wb") as w:
                w.write(b"x")


def test_14_permission_errors_are_translated_at_the_proc_edge(tmp_path, monkeypatch):
    fake_proc(tmp_path, 77)
    real_open = builtins.open

    def denied(path, *a, **kw):
        if str(path).startswith(str(tmp_path / "77")):
            raise PermissionError(13, "Permission denied")
        return real_open(path, *a, **kw)

    monkeypatch.setattr(builtins, "open", denied)
    proc = procinfo.Proc(str(tmp_path))
    for read in (proc.read_stat, proc.read_uids, proc.fd_soft_limit):
        with pytest.raises(AccessDenied):
            read(77)
    assert procinfo.Proc(str(tmp_path)).alive(77, 99) is False


def test_14_unreadable_fds_are_recorded_not_silent(tmp_path, monkeypatch):
    fake_proc(tmp_path, 88)
    real_listdir = os.listdir

    def denied(path):
        if str(path).endswith("/88/fd"):
            raise PermissionError(13, "Permission denied")
        return real_listdir(path)

    monkeypatch.setattr(os, "listdir", denied)
    index = FdIndex(procinfo.Proc(str(tmp_path)))
    assert index.scan_pids([88], {1}) == {}
    assert index.denied == {88}


def test_9_storm_guard_stays_bounded():
    guard = StormGuard(Current(WatchConfig(Limits(max_kills=3, per=60), Plan(), Filters())))
    for i in range(10000):
        guard.record(f"cmd-{i}", now=float(i) / 1000)  # all within the window
    assert len(guard) <= StormGuard.MAX_KEYS
    assert guard.next_allowed("never-killed", now=10.0) == 0.0 and len(guard) <= StormGuard.MAX_KEYS


def test_9_command_lines_are_read_bounded(tmp_path):
    fake_proc(tmp_path, 9, cmdline=b"x" * (procinfo.CMDLINE_MAX * 4))
    info = procinfo.Proc(str(tmp_path)).read(9)
    assert len(info.cmdline) <= procinfo.CMDLINE_MAX + 16 and info.cmdline.endswith("[cut]")


def test_6_trusted_config(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text("limit = 3\n")
    assert config.load(str(f))["limit"] == 3
    os.chmod(f, 0o620)
    with pytest.raises(UsageError, match="writable by group or others"):
        config.load(str(f))
    os.chmod(f, 0o644)
    os.chmod(tmp_path, 0o777)  # a directory anyone can write: the file can be swapped
    try:
        with pytest.raises(UsageError, match="writable by group or others"):
            config.load(str(f))
        os.chmod(tmp_path, 0o1777)  # sticky and root's: no one else may swap root's file
        if os.geteuid() == 0:
            assert config.load(str(f))["limit"] == 3
    finally:
        os.chmod(tmp_path, 0o755)


def test_9_owner_hints_are_a_bounded_lru():
    """One key per ephemeral port or peer: 330 bytes a connection, for ever,
    in a soak of slow closers (the map was only cleared at 65,536)."""
    from resreap.engine.owners import Hints

    hints = Hints()
    for port in range(20000):
        hints.add(port, {port})
        if port % 100 == 0:
            hints.get(0)  # used often: kept
    assert len(hints) == Hints.MAX
    assert hints.get(0) == {0} and hints.get(19999) == {19999} and hints.get(1) == set()
    for pid in range(1000):
        hints.add("shared", {pid})
    assert len(hints.get("shared")) == 64 and 999 in hints.get("shared")


def test_the_bpf_loader_gets_a_private_tmpdir(monkeypatch, tmp_path):
    """#21 item 8: bcc 0.26 compiles against ${TMPDIR:-/tmp}/kheaders-REL if
    that directory merely exists (CVE-2024-2314).  The loader never sees a
    TMPDIR anyone else could have planted in: its own, 0700, empty, gone
    afterwards."""
    from resreap.sources import bpf_events

    planted = tmp_path / "shared"
    (planted / f"kheaders-{os.uname().release}").mkdir(parents=True)
    monkeypatch.setenv("TMPDIR", str(planted))
    with bpf_events.loader_env() as env:
        private = env["TMPDIR"]
        assert private != str(planted) and not private.startswith(str(planted) + "/")
        st = os.stat(private)
        assert st.st_uid == os.geteuid() and st.st_mode & 0o777 == 0o700
        assert os.listdir(private) == []
    assert not os.path.exists(private)


def test_doctor_flags_a_bcc_with_the_kheaders_cve():
    from resreap.ops.doctor import _older

    assert _older("0.26.0", (0, 30)) and _older("0.29.1", (0, 30))
    assert not _older("0.30.0", (0, 30)) and not _older("0.31.0+git", (0, 30))
    assert not _older("unknown", (0, 30))
