"""A full scan stops at the first holder; fork shares sockets with parent and
children, so those are looked at too (the first holder found may be the
child, newest-first)."""

import os

from resreap.engine.owners import FdIndex


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
    index = FdIndex(str(tmp_path))
    index.holders([42])                 # starts the background scan
    assert index.scanner.idle(5)
    assert index.holders([42], full_scan=False) == {42: {100, 200}}


def test_unrelated_processes_are_not_added(tmp_path):
    proc(tmp_path, 1, 0)
    proc(tmp_path, 100, 1, fds=[(5, "socket:[42]")])
    proc(tmp_path, 200, 1, fds=[(6, "socket:[43]")])
    index = FdIndex(str(tmp_path))
    index.holders([42])
    assert index.scanner.idle(5)
    assert index.holders([42], full_scan=False) == {42: {100}}
