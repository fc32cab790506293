"""Whether a file may be trusted by root: it and every directory above it
must be root's (or ours) and not writable by others.  The config (its hook
runs as root), the log and lock directories, and the BPF program's files
(a rewritten program would run in the kernel) are all checked so."""

from __future__ import annotations

import os
import stat

from resreap.errors import UsageError


def _read_only(path: str) -> bool:
    """On a read-only mount: nobody can write it through this path (a
    Kubernetes ConfigMap's 0777 directory is mounted so)."""
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except OSError:
        return False


def check_chain(path: str, what: str, why: str) -> None:
    """Refuse ``path`` (symlinks resolved) unless it and every directory
    above it is owned by root (or us) and not writable by group or others;
    a root-owned sticky directory (/tmp) is accepted above ``path``, since
    no one else may replace what root put there, and so is a mode that
    allows writes on a read-only mount, since none can happen through it
    (whoever mounted it read-only vouches for its source).  ``what`` names
    it in the error, ``why`` says what a rewrite would give away."""
    me = os.geteuid()
    real = os.path.realpath(path)
    where = real
    while True:
        try:
            st = os.stat(where)
        except OSError as exc:
            raise UsageError(f"cannot read {what} {path}: {exc.strerror}") from None
        if st.st_uid not in (0, me):
            raise UsageError(f"{what} {path}: {where} is owned by uid {st.st_uid}, not root: "
                             f"refusing it ({why})")
        writable = st.st_mode & (stat.S_IWGRP | stat.S_IWOTH)
        sticky_root_dir = stat.S_ISDIR(st.st_mode) and st.st_mode & stat.S_ISVTX and st.st_uid == 0
        if writable and not (sticky_root_dir and where != real) and not _read_only(where):
            raise UsageError(f"{what} {path}: {where} is writable by group or others "
                             f"(mode {stat.S_IMODE(st.st_mode):o}): refusing it; chmod go-w")
        if where == "/":
            return
        where = os.path.dirname(where)
