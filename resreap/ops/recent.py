"""The acting watch's last outcomes, for `resreap top`: top runs its own dry
run and never signals, so what was really reaped is only the daemon's to
say.  The watch that holds the one-watch lock keeps them in recent.json
beside the lock, rewritten (write, then rename) after each outcome.

Both sides are root, and the file is a display, never a decision input; it
is still read as untrusted bytes: the directory is root's 0700 one (checked
as for the lock), the file must be root's regular file and not writable by
others, at most MAX_BYTES are read, and every value is type-checked,
bounded and escaped before it is shown."""

from __future__ import annotations

import json
import os
import stat
import time
from typing import Any, NamedTuple

from resreap.errors import ResreapError
from resreap.host import procinfo
from resreap.host.trust import check_chain
from resreap.ops.escaping import plain
from resreap.ops.instance import lock_path, write_json

KEEP = 10
MAX_BYTES = 65536
TEXT_MAX = 128       # a field shown in top (comm, unit, rule, detail)


def recent_path() -> str:
    return os.path.join(os.path.dirname(lock_path()), "recent.json")


class Reap(NamedTuple):
    """One outcome as top shows it."""

    ts: float        # unix seconds
    pid: int
    comm: str
    where: str       # its unit or container ("" if neither)
    rule: str
    result: str      # Result.value: terminated, killed, spared, dry-run...
    took: float
    revive: str = ""


class Recent(NamedTuple):
    pid: int             # the watch that wrote it
    start: int | None    # its start time, so a recycled pid is not taken for it
    reaps: tuple[Reap, ...]


def from_outcome(outcome, now: float) -> Reap:
    info, where = outcome.target.info, outcome.target.where
    return Reap(round(now, 3), info.pid, info.comm,
                where.shown if where is not None else "",
                outcome.target.rule_name, outcome.result.value, round(outcome.took, 3),
                outcome.revive[0].value if outcome.revive is not None else "")


class Recorder:
    """The daemon's side: ``update`` after each loop turn."""

    def __init__(self, path: str | None = None, clock=time.time) -> None:
        self.path = path or recent_path()
        self._clock = clock
        self._dirty = False
        earlier = read(self.path)
        self._reaps = list(earlier.reaps) if earlier is not None else []
        me = os.getpid()
        self._me = (me, procinfo.HOST.start_time(me))
        self.write()

    def heard(self, outcome, _added: dict | None = None) -> None:
        """An outcome, as the watch settled it (a listener of the watch's):
        kept, written at the next flush."""
        self._reaps = (self._reaps + [from_outcome(outcome, self._clock())])[-KEEP:]
        self._dirty = True

    def flush(self) -> bool:
        """Write the outcomes heard since the last flush; False when nothing
        was new.  Raises OSError where the file cannot be written."""
        if not self._dirty:
            return False
        self._dirty = False
        self.write()
        return True

    def write(self) -> None:
        pid, start = self._me
        write_json(self.path, {"pid": pid, "start": start,
                               "reaps": [r._asdict() for r in self._reaps]}, mode=0o600)


def read(path: str | None = None) -> Recent | None:
    """What the watch wrote, or None: no file, or one that cannot be
    trusted or parsed (top then says there is nothing to show)."""
    path = path or recent_path()
    try:
        check_chain(os.path.dirname(path), "the recent reaps' directory",
                    "anyone could write what top shows")
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except (ResreapError, OSError):
        return None
    try:
        st = os.fstat(fd)
        if (not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid()
                or st.st_mode & (stat.S_IWGRP | stat.S_IWOTH)):
            return None
        raw = os.read(fd, MAX_BYTES + 1)
    except OSError:
        return None
    finally:
        os.close(fd)
    if len(raw) > MAX_BYTES:
        return None
    try:
        return _parse(json.loads(raw))
    except (ValueError, TypeError, KeyError, AttributeError, RecursionError):
        return None


def _text(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError("not a string")
    return plain(value[:TEXT_MAX])


def _number(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError("not a number")
    return value


def _parse(obj: dict) -> Recent:
    reaps = tuple(Reap(_number(r["ts"]), int(_number(r["pid"])), _text(r["comm"]),
                       _text(r["where"]), _text(r["rule"]), _text(r["result"]),
                       _number(r["took"]), _text(r.get("revive", "")))
                  for r in obj["reaps"][-KEEP:])
    start = obj.get("start")
    return Recent(int(_number(obj["pid"])), int(_number(start)) if start is not None else None,
                  reaps)
