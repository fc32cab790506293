"""Knobs for tests, benchmarks and odd hosts, from the environment: read and
validated once, at the first use, into one typed value; a bad one is a
one-line UsageError naming the variable (it was a traceback at import).

  RESREAP_RINGBUF_PAGES   ring buffer size in pages, a power of two (watch
                          512, trace 4096)
  RESREAP_BPF_LOADER      auto, core (the prebuilt program only) or bcc
                          (compile at start): auto
  RESREAP_PENDING_MAX     the first pass's pending map entries (65536)
  RESREAP_FIRST_PASS      0 turns the kernel's first pass off (1)
  RESREAP_SOCKET_TABLE    auto, sock_diag or procfs (auto)
  RESREAP_LOCK            the one-watch lock file (/run/resreap/watch.lock)
"""

from __future__ import annotations

import os
from typing import Mapping, NamedTuple

from resreap.errors import UsageError

SOCKET_TABLES = ("auto", "sock_diag", "procfs")
BPF_LOADERS = ("auto", "core", "bcc")
# The ring's size is the BPF map's max_entries: a power of two of pages;
# 2^18 pages (1 GiB) is far past any use.
MAX_RING_PAGES = 1 << 18
MAX_PENDING = 1 << 24


class Tunables(NamedTuple):
    ringbuf_pages: int | None = None   # None: the event source's size for its use
    pending_max: int = 65536
    first_pass: bool = True
    socket_table: str = "auto"
    lock: str = "/run/resreap/watch.lock"
    bpf_loader: str = "auto"


def _int(env: Mapping[str, str], name: str, default: int, lo: int, hi: int) -> int:
    text = env.get(name)
    if text is None:
        return default
    try:
        value = int(text)
    except ValueError:
        value = None
    if value is None or not lo <= value <= hi:
        raise UsageError(f"bad {name}={text!r}: must be a whole number from {lo} to {hi}")
    return value


def read(env: Mapping[str, str] = os.environ) -> Tunables:
    """The tunables in ``env``, validated; raises UsageError."""
    default = Tunables()
    pages = _int(env, "RESREAP_RINGBUF_PAGES", 0, 1, MAX_RING_PAGES) or None
    if pages is not None and pages & (pages - 1):
        raise UsageError(f"bad RESREAP_RINGBUF_PAGES={pages}: must be a power of two "
                         "(the kernel refuses other ring sizes)")
    first = env.get("RESREAP_FIRST_PASS", "1")
    if first not in ("0", "1"):
        raise UsageError(f"bad RESREAP_FIRST_PASS={first!r}: must be 0 or 1")
    table = env.get("RESREAP_SOCKET_TABLE", default.socket_table)
    if table not in SOCKET_TABLES:
        raise UsageError(f"bad RESREAP_SOCKET_TABLE={table!r}: must be one of "
                         f"{', '.join(SOCKET_TABLES)}")
    loader = env.get("RESREAP_BPF_LOADER", default.bpf_loader)
    if loader not in BPF_LOADERS:
        raise UsageError(f"bad RESREAP_BPF_LOADER={loader!r}: must be one of "
                         f"{', '.join(BPF_LOADERS)}")
    lock = env.get("RESREAP_LOCK", default.lock)
    if not os.path.isabs(lock) or lock.endswith("/"):
        raise UsageError(f"bad RESREAP_LOCK={lock!r}: must be an absolute file path")
    return Tunables(pages, _int(env, "RESREAP_PENDING_MAX", default.pending_max, 1, MAX_PENDING),
                    first == "1", table, lock, loader)


_current: Tunables | None = None


def get() -> Tunables:
    """This process's tunables, read at the first call."""
    global _current
    if _current is None:
        _current = read()
    return _current
