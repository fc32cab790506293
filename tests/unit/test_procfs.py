"""/proc parsing against a fixture tree (the /proc root is a setting)."""

import os

import pytest

from resreap.host import procinfo
from resreap.errors import ProcessGone
from resreap.engine.owners import FdIndex


def make_proc(root, pid, comm="srv", ppid=1, flags=0, start=1234, cmdline=b"srv\0-x\0", fds=(),
              fdsize=64):
    d = root / str(pid)
    (d / "fd").mkdir(parents=True)
    (d / "status").write_text(f"Name:\t{comm}\nFDSize:\t{fdsize}\nUid:\t0\t0\t0\t0\n")
    fields = ["S", str(ppid)] + ["0"] * 4 + [str(flags)] + ["0"] * 12 + [str(start)] + ["0"] * 30
    (d / "stat").write_bytes(f"{pid} (".encode() + comm.encode() + b") " + " ".join(fields).encode())
    (d / "cmdline").write_bytes(cmdline)
    for fd, target in fds:
        os.symlink(target, d / "fd" / str(fd))


def test_comm_with_parens_spaces_and_invalid_utf8(tmp_path):
    make_proc(tmp_path, 42, comm="a) (b\xff", start=777)
    (tmp_path / "42" / "stat").write_bytes(b"42 (a) (b\xff) S 1 0 0 0 0 0 " + b"0 " * 12 + b"777 0")
    start, ppid, comm, kthread = procinfo.Proc(str(tmp_path)).read_stat(42)
    assert (start, ppid, kthread) == (777, 1, False)
    assert comm == "a) (b\\xff"


def test_kernel_thread_flag_and_cmdline(tmp_path):
    make_proc(tmp_path, 2, comm="kthreadd", flags=0x00200000, cmdline=b"")
    info = procinfo.Proc(str(tmp_path)).read(2)
    assert info.kthread and info.cmdline == "[kthreadd]"
    make_proc(tmp_path, 3, cmdline=b"java\0-jar\0\xff\0")
    assert procinfo.Proc(str(tmp_path)).read(3).cmdline == "java -jar \\xff"


def test_missing_process_raises_process_gone(tmp_path):
    with pytest.raises(ProcessGone):
        procinfo.Proc(str(tmp_path)).read(99)


def test_ancestors_stop_at_loops_and_gaps(tmp_path):
    make_proc(tmp_path, 10, ppid=5)
    make_proc(tmp_path, 5, ppid=1)
    make_proc(tmp_path, 1, ppid=0)
    assert procinfo.Proc(str(tmp_path)).ancestors(10) == {10, 5, 1}


def test_fd_index_finds_holders_counts_a_process_once_and_verifies(tmp_path):
    make_proc(tmp_path, 100, fds=[(3, "socket:[555]"), (4, "socket:[555]"), (5, "pipe:[9]")])
    make_proc(tmp_path, 200, fds=[(7, "socket:[555]"), (8, "socket:[666]")])
    make_proc(tmp_path, 300, fds=[(1, "/dev/null")])
    index = FdIndex(procinfo.Proc(str(tmp_path)))
    # The full scan runs in the background: the first call only starts it.
    assert index.holders([555, 666, 777]) == {}
    assert index.scanner.idle(5)
    assert index.holders([555, 666, 777], full_scan=False) == {555: {100, 200}, 666: {200}}
    # a cached answer is re-checked: the fd now points elsewhere
    os.unlink(tmp_path / "200" / "fd" / "8")
    os.symlink("socket:[999]", tmp_path / "200" / "fd" / "8")
    assert 666 not in index.holders([666], full_scan=False)
    assert index.holds(100, 555) and not index.holds(300, 555)


def test_fd_index_uses_hints_before_a_full_scan(tmp_path):
    make_proc(tmp_path, 100, fds=[(3, "socket:[1]")])
    index = FdIndex(procinfo.Proc(str(tmp_path)))
    assert index.holders([1], hints=[100]) == {1: {100}}
    assert index.scanner.idle(5) and index.full_scans == 0


def test_full_scan_reads_small_fd_tables_first(tmp_path):
    """A leaker with few fds is found before the hogs are read."""
    make_proc(tmp_path, 500, fds=[(i, f"socket:[{9000 + i}]") for i in range(40)], fdsize=32768)
    make_proc(tmp_path, 100, fds=[(3, "socket:[1]")])
    index = FdIndex(procinfo.Proc(str(tmp_path)))
    assert index.scan_order() == [100, 500]
    read = []
    real = index.scan_pids
    index.scan_pids = lambda pids, wanted, **kw: (read.extend(pids), real(pids, wanted, **kw))[1]
    index.holders([1])
    assert index.scanner.idle(5)
    assert read[0] == 100 and 500 not in read  # stopped once found
    assert index.holders([1], full_scan=False) == {1: {100}}


def test_a_socket_no_one_holds_is_not_scanned_for_again_at_once(tmp_path):
    """In flight in a unix socket: held by no process.  After a complete
    scan missed it, asking again does not start another (backoff)."""
    make_proc(tmp_path, 100, fds=[(3, "socket:[1]")])
    index = FdIndex(procinfo.Proc(str(tmp_path)))
    index.holders([42])
    assert index.scanner.idle(5) and index.full_scans == 1
    index.holders([42])
    assert index.scanner.idle(5) and index.full_scans == 1
    index.forget(42)  # it left: a new socket with that inode starts afresh
    index.holders([42])
    assert index.scanner.idle(5) and index.full_scans == 2
