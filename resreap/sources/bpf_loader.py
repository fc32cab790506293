"""The bcc fallback: compile, load and attach the BPF program in a short-lived
process (where the prebuilt CO-RE object cannot load: core_loader.py).

bcc brings LLVM and clang into the process that compiles: about 73 MB to
import and 85 MB more to compile.  A watchdog that runs for months should not
carry that, so this process does the compiling and hands the watchdog what
keeps the program alive and readable over a unix socket (SCM_RIGHTS):

- the perf event fd the program is attached through (while any process holds
  it, the program stays attached);
- the ring buffer and counter map fds;
- the event record's layout as bcc decoded the C struct (checked against
  the one read from bpf/resreap.h).

It then leaves with os._exit: bcc's atexit cleanup would disable the perf
event that the watchdog now shares.

    python -m resreap.sources.bpf_loader FD RINGBUF_PAGES WAKEUP_EVERY PENDING_MAX
"""

from __future__ import annotations

import contextlib
import ctypes as ct
import json
import os
import socket
import sys
import tempfile

from resreap.sources.program import BPF_DIR, SOURCE

TRACEPOINT = b"sock:inet_sock_set_state"
# Where Python children run: a directory only root can write.
CHILD_CWD = "/"


def child_python(*args: str) -> list[str]:
    """argv for a Python child that never imports from its working
    directory: ``python -m`` and ``-c`` put the cwd (or '') first on
    sys.path, and a user's json.py in /tmp would run as root.  -P (3.11+)
    drops it; callers also run the child in CHILD_CWD."""
    flags = ["-P"] if sys.version_info >= (3, 11) else []
    return [sys.executable, *flags, *args]


@contextlib.contextmanager
def _stderr_to(path: str):
    """bcc's compiler writes diagnostics straight to fd 2: keep them for the
    error message instead of spraying them over the operator's terminal."""
    saved = os.dup(2)
    with open(path, "wb") as sink:
        os.dup2(sink.fileno(), 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _first_error(text: str) -> str:
    for line in text.splitlines():
        if "error" in line.lower():
            return line.strip()
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return lines[-1] if lines else "no diagnostics"


def _layout(event_class) -> dict:
    fields = []
    for name, ctype in event_class._fields_:
        desc = getattr(event_class, name)
        if issubclass(ctype, ct.Array):
            fmt = f"{desc.size}s"
        else:
            fmt = {1: "B", 2: "H", 4: "I", 8: "Q"}[desc.size]
        fields.append([name, desc.offset, fmt])
    return {"size": ct.sizeof(event_class), "fields": fields}


def load(ringbuf_pages: int, wakeup_every: int, pending_max: int = 0,
         credit: bool = False, switchable: bool = False) -> tuple[dict, list[int]]:
    """Compile, load and attach; (facts, fds: perf event, ring, counters
    [, pending [, closers]]).  ``pending_max``: the first pass (FIRST_PASS)
    with a pending map of that many sockets; 0: every transition through
    the ring.  ``credit`` (CREDIT, with the first pass): each process's
    unseen closes counted.  ``switchable`` (SWITCHABLE, with both): the
    first pass only while the pass_now map says so."""
    try:
        from bcc import BPF
    except ImportError:
        return {"error": "bcc is not importable: apt-get install python3-bpfcc and use a venv "
                         "made with --system-site-packages (scripts/setup does both)"}, []
    cflags = [f"-I{BPF_DIR}", f"-DRINGBUF_PAGES={ringbuf_pages}", f"-DWAKEUP_EVERY={wakeup_every}"]
    if pending_max:
        cflags += ["-DFIRST_PASS", f"-DPENDING_MAX={pending_max}"]
    credit = bool(credit and pending_max)
    if credit:
        cflags.append("-DCREDIT")
    switchable = bool(switchable and credit)
    if switchable:
        cflags.append("-DSWITCHABLE")
    with tempfile.NamedTemporaryFile("w+", prefix="resreap-bcc-") as diag:
        try:
            with _stderr_to(diag.name):
                bpf = BPF(src_file=str(SOURCE).encode(), cflags=cflags)
        except Exception as exc:  # bcc raises bare Exception for every failure
            diag.seek(0)
            text = diag.read()
            if "Operation not permitted" in text or "Operation not permitted" in str(exc):
                return {"error": "not permitted to load BPF programs (needs CAP_BPF and "
                                 "CAP_PERFMON, or CAP_SYS_ADMIN; a container must be granted "
                                 "them)"}, []
            detail = _first_error(text) if text.strip() else str(exc)
            return {"error": f"the BPF program did not load: {detail}"}, []
    events, counts = bpf[b"events"], bpf[b"counts"]
    perf_fd = bpf.tracepoint_fds.get(TRACEPOINT)
    if perf_fd is None:
        return {"error": "the BPF program loaded but did not attach to the tracepoint"}, []
    info = {"layout": _layout(_event_class(events)),
            "ringbuf_bytes": ringbuf_pages * os.sysconf("SC_PAGE_SIZE")}
    fds = [perf_fd, events.map_fd, counts.map_fd]
    if pending_max:
        fds.append(bpf[b"pending"].map_fd)
    if credit:
        fds.append(bpf[b"closers"].map_fd)
    if switchable:
        fds.append(bpf[b"pass_now"].map_fd)
    return info, fds


def _event_class(table):
    from bcc.table import _get_event_class

    return _get_event_class(table)


def main() -> None:
    fd, pages, wakeup, pending_max, credit, switchable = (int(a) for a in sys.argv[1:7])
    chan = socket.socket(fileno=fd)
    try:
        info, fds = load(pages, wakeup, pending_max, bool(credit), bool(switchable))
    except Exception as exc:  # report, never hang the parent
        info, fds = {"error": f"BPF loader failed: {exc!r}"}, []
    socket.send_fds(chan, [json.dumps(info).encode()], fds)
    chan.close()
    sys.stdout.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
