"""Untrusted text made safe to show: one escaping for every text sink, and
one bound on a field's length.  Imports nothing of resreap's, so that the
CLI's error line can use it without loading the engine."""

from __future__ import annotations

import re

# What a hostile process name must not carry to a reader: C0/C1 controls
# and DEL (they drive the terminal: an OSC title, SGR conceal, a newline
# and a forged line), and every format character of Unicode (category Cf:
# bidi overrides and isolates U+202A-202E and U+2066-2069 reorder what
# follows, zero-width ones hide text, U+FEFF, tag characters), and the
# line and paragraph separators U+2028/2029 (Zl, Zp), which some viewers
# break on.  Listed as ranges (Unicode 14, with U+13439-1343F that 15
# added): tests/unit/test_formatting.py checks the list against the
# running Python's unicodedata, so a newer Unicode fails the suite first.
_UNSAFE = re.compile(
    "[\x00-\x1f\x7f-\x9f\xad\u0600-\u0605\u061c\u06dd\u070f\u0890-\u0891\u08e2\u180e"
    "\u200b-\u200f\u2028-\u202e\u2060-\u2064\u2066-\u206f\ufeff\ufff9-\ufffb"
    "\U000110bd\U000110cd\U00013430-\U0001343f\U0001bca0-\U0001bca3\U0001d173-\U0001d17a"
    "\U000e0001\U000e0020-\U000e007f]")


def _escape(m: re.Match) -> str:
    code = ord(m.group())
    return f"\\x{code:02x}" if code < 0x100 else (
        f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}")


def safe(text: str) -> str:
    """Printable form of untrusted text (comm, command lines, cgroup names):
    every character above escaped visibly (\\x1b, \\u202e).  The one
    escaping of every text sink: the terminal (trace, top, rules, doctor),
    the text log and journald's MESSAGE and fields.  JSON output keeps the
    exact value, encoded ASCII-only (a JSON reader gets the bytes a
    process wrote, to match on; the stream itself drives no terminal)."""
    return _UNSAFE.sub(_escape, text)


# A field comes from other processes (a command line may be 64 KiB): no log
# line may be megabytes.  journald's default line limit is 48 KiB.
VALUE_MAX = 2048


def bounded(text: str, limit: int = VALUE_MAX) -> str:
    if len(text) <= limit:
        return text
    return f"{text[:limit]}...[{len(text) - limit} more]"


def plain(value) -> str:
    """A decision field's value as text, unquoted: numbers short, lists
    comma-joined, strings bounded and escaped (the log line and the
    journal's fields both)."""
    if isinstance(value, float):
        return f"{value:.3f}".rstrip("0").rstrip(".") if value else "0"
    if isinstance(value, (list, tuple)):
        return ",".join(plain(v) for v in value)
    return safe(bounded(str(value)))
