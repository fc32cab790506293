"""A full scan stops at the first holder; fork shares sockets with parent and
children, so those are looked at too (the first holder found may be the
child, newest-first)."""

import os

from resreap.engine.owners import FdIndex
from resreap.host import procinfo


def proc(root, pid, ppid, fds=(), children=()):
    d = root / str(pid)
    (d / "fd").mkdir(parents=True)
    (d / "task" / str(pid)).mkdir(parents=True)
    fields = ["S", str(ppid)] + ["0"] * 60
    (d / "stat").write_text(f"{pid} (srv) " + " ".join(fields))
    (d / "task" / str(pid) / "children").write_text(" ".join(map(str, children)))
    for fd, target in fds:
        os.symlink(target, d / "fd" / str(fd))


def test_parent_of_the_newest_holder_is_found(tmp_path):
    proc(tmp_path, 1, 0, children=[100])
    proc(tmp_path, 100, 1, fds=[(5, "socket:[42]")], children=[200])
    proc(tmp_path, 200, 100, fds=[(5, "socket:[42]")])
    proc(tmp_path, 300, 1, fds=[(7, "socket:[99]")])
    index = FdIndex(procinfo.Proc(str(tmp_path)))
    index.holders([42])                 # starts the background scan
    assert index.scanner.idle(5)
    assert index.holders([42], full_scan=False) == {42: {100, 200}}


def test_unrelated_processes_are_not_added(tmp_path):
    proc(tmp_path, 1, 0)
    proc(tmp_path, 100, 1, fds=[(5, "socket:[42]")])
    proc(tmp_path, 200, 1, fds=[(6, "socket:[43]")])
    index = FdIndex(procinfo.Proc(str(tmp_path)))
    index.holders([42])
    assert index.scanner.idle(5)
    assert index.holders([42], full_scan=False) == {42: {100}}


def test_the_inline_path_keeps_to_its_fd_budget(tmp_path, monkeypatch):
    """#21 item 3: a listener's 40 children, each with a table of 8192 fds:
    the hints and their children were read whole inside the event loop for
    every new socket (tens of seconds without a watchdog ping with 20,000
    fds each).  Now what does not fit INLINE_FDS waits for the background
    scan, which finds the holder."""
    from resreap.engine import owners

    def status(pid, fdsize):
        (tmp_path / str(pid) / "status").write_text(f"Name:\tsrv\nFDSize:\t{fdsize}\n")

    kids = list(range(200, 240))
    proc(tmp_path, 1, 0, children=[100])
    proc(tmp_path, 100, 1, fds=[(3, "socket:[7]")], children=kids)
    status(100, 64)
    for pid in kids:
        proc(tmp_path, pid, 100, fds=[(3, "socket:[7]")] + ([(9, "socket:[42]")] if pid == 239 else []))
        status(pid, 8192)
    read = []
    root = procinfo.Proc(str(tmp_path))
    real = root.socket_fds
    monkeypatch.setattr(root, "socket_fds", lambda pid: read.append(pid) or real(pid))
    index = FdIndex(root)
    asked = []
    monkeypatch.setattr(index.scanner, "request", lambda inodes: asked.append(set(inodes)))
    assert index.holders([42], hints=[100]) == {}
    inline = 64 + 8192 * (len(set(read)) - 1)
    assert inline <= owners.INLINE_FDS and len(set(read)) < 10
    assert asked == [{42}] and index.inline_deferred > 0
    read.clear()
    index.scanner._scan({42})           # the background scan, done here
    assert index.holders([42], full_scan=False) == {42: {239}}
