"""How decision lines are logged: one line each, as text or JSON.

The engine calls ``decisions.decision(event, fields...)``; the CLI decides
where lines go (stderr, --log-file, the journal) and in which form.  Values that come
from other processes (names, command lines) are escaped, never trusted.
"""

from __future__ import annotations

import json
import logging
import logging.handlers
import os
import stat
import time
from typing import Any

from resreap.errors import UsageError
from resreap.ops.escaping import bounded, plain, safe
from resreap.ops.journal import PRIORITY, JournalSender, entry
from resreap.host.trust import check_chain


_QUOTE = set(' "\'=\\')
def _text_value(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return ",".join(_text_value(v) for v in value) or "-"
    text = plain(value)
    if not text or _QUOTE & set(text):
        return json.dumps(text, ensure_ascii=True)
    return text


class TextFormatter(logging.Formatter):
    def __init__(self, stamp: bool = True) -> None:
        """``stamp``: begin with the time and level (not for the journal,
        which keeps both)."""
        super().__init__()
        self.stamp = stamp

    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(record.created))
        stamp += f".{int(record.msecs):03d}"
        fields = getattr(record, "fields", None)
        if fields is None:  # an ordinary log call
            text = safe(record.getMessage())
        else:
            text = record.msg + "".join(f" {k}={_text_value(v)}" for k, v in fields.items())
        if record.exc_info:
            text += " | " + safe(self.formatException(record.exc_info).replace("\n", " | "))
        return f"{stamp} {record.levelname.lower()} {text}" if self.stamp else text


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        obj: dict[str, Any] = {"ts": round(record.created, 3), "level": record.levelname.lower()}
        fields = getattr(record, "fields", None)
        if fields is None:
            obj["event"] = "log"
            obj["message"] = record.getMessage()
        else:
            obj["event"] = record.msg
            obj.update({k: list(v) if isinstance(v, tuple) else
                        bounded(v) if isinstance(v, str) else v for k, v in fields.items()})
        return json.dumps(obj, ensure_ascii=True, default=str)


class SafeFileHandler(logging.handlers.WatchedFileHandler):
    """A log file that root appends to: never through a symlink, never a
    hard link to another file, never a file someone else owns (any of those
    would let a user make root write into a file of their choosing).
    Reopened when logrotate moves it, with the same checks."""

    def _open(self):
        # Its directories too: through a user's directory swapped for a
        # symlink, root would create the file anywhere (/etc/cron.d).
        try:
            check_chain(os.path.dirname(self.baseFilename) or ".", "log directory",
                        "root's log lines could be sent anywhere")
        except UsageError as exc:
            raise OSError(1, str(exc)) from None
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            fd = os.open(self.baseFilename, flags, 0o640)
        except OSError as exc:
            if exc.errno == 40:  # ELOOP: the last component is a symlink
                raise OSError(exc.errno, "is a symbolic link (refused)") from None
            raise
        st = os.fstat(fd)
        problem = None
        if not stat.S_ISREG(st.st_mode):
            problem = "is not a regular file"
        elif st.st_uid != os.geteuid():
            problem = f"is owned by uid {st.st_uid} (refused)"
        elif st.st_nlink != 1:
            problem = f"has {st.st_nlink} hard links (refused)"
        if problem:
            os.close(fd)
            raise OSError(1, problem)
        return os.fdopen(fd, "a", encoding=self.encoding or "utf-8", errors=self.errors)


class StderrHandler(logging.StreamHandler):
    """stderr, noticing when nobody reads it any more (`resreap watch 2>&1 |
    head -3`): a watchdog with nowhere to log must stop, like any CLI tool
    on EPIPE, unless it also logs to a file."""

    broken = False

    def handleError(self, record: logging.LogRecord) -> None:
        import sys

        if isinstance(sys.exc_info()[1], (BrokenPipeError, ValueError)):
            self.broken = True  # ValueError: the stream was closed
            return
        super().handleError(record)


def output_gone(handlers: list[logging.Handler]) -> bool:
    """Every place a decision could be logged is gone."""
    streams = [h for h in handlers if isinstance(h, StderrHandler)]
    files = [h for h in handlers if isinstance(h, logging.FileHandler)]
    return bool(streams) and all(h.broken for h in streams) and not files


# A line "<4>..." on a stderr that is the journal is stored at PRIORITY=4.
class JournalPrefix(logging.Formatter):
    """Another formatter's line, prefixed with its syslog priority."""

    def __init__(self, inner: logging.Formatter) -> None:
        super().__init__()
        self.inner = inner

    def format(self, record: logging.LogRecord) -> str:
        return f"<{PRIORITY.get(record.levelno, 6)}>{self.inner.format(record)}"


class JournalHandler(StderrHandler):
    """stderr is the journal: each line is sent as an entry with native
    fields (ops/journal.py), its MESSAGE ``message_format``'s text; where
    journald cannot be reached, the prefixed line goes to stderr."""

    def __init__(self, stream, message_format: logging.Formatter, sender=None) -> None:
        super().__init__(stream)
        self.message_format = message_format
        self.sender = sender or JournalSender()

    def emit(self, record: logging.LogRecord) -> None:
        try:
            fields = entry(record, self.message_format.format(record))
        except Exception:  # noqa: BLE001 - a line is never lost to a field
            fields = None
        if fields is None or not self.sender.send(fields):
            super().emit(record)


def to_journal(stream) -> bool:
    """Is ``stream`` the journal?  systemd sets JOURNAL_STREAM to the
    device:inode of the stderr it connects there."""
    want = os.environ.get("JOURNAL_STREAM", "")
    if not want:
        return False
    try:
        st = os.fstat(stream.fileno())
    except (OSError, ValueError, AttributeError):
        return False
    return want == f"{st.st_dev}:{st.st_ino}"


def configure(*, debug: bool, json_lines: bool, log_file: str | None,
              stream=None) -> list[logging.Handler]:
    """Send resreap's logs to ``stream`` (stderr) and ``log_file``.  The file
    handler reopens the file when logrotate moves it; SIGHUP reopens it too."""
    import sys

    formatter: logging.Formatter = JsonFormatter() if json_lines else TextFormatter()
    stream = stream or sys.stderr
    stderr: StderrHandler = StderrHandler(stream)
    if to_journal(stream):
        # Native fields; the MESSAGE without the time and level journald keeps.
        stderr = JournalHandler(stream, formatter if json_lines else TextFormatter(stamp=False))
    handlers: list[logging.Handler] = [stderr]
    if log_file:
        handlers.append(SafeFileHandler(log_file))
    root = logging.getLogger("resreap")
    for old in list(root.handlers):
        root.removeHandler(old)
    for handler in handlers:
        # Where journald cannot be reached, the journal's stderr gets the
        # line with its priority.
        journal = isinstance(handler, JournalHandler)
        handler.setFormatter(JournalPrefix(formatter) if journal else formatter)
        root.addHandler(handler)
    root.setLevel(logging.DEBUG if debug else logging.INFO)
    root.propagate = False
    return handlers


def reopen(handlers: list[logging.Handler]) -> list[str]:
    """Reopen the log files (SIGHUP); the errors, one per file that could
    not be reopened (it keeps writing to the file it had)."""
    errors = []
    for handler in handlers:
        if isinstance(handler, logging.FileHandler):
            handler.acquire()
            try:
                fresh = handler._open()
            except OSError as exc:
                errors.append(f"{handler.baseFilename}: {exc.strerror or exc}")
                continue
            finally:
                handler.release()
            handler.acquire()
            try:
                if handler.stream:
                    handler.stream.close()
                handler.stream = fresh
            finally:
                handler.release()
    return errors
