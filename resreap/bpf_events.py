"""The BPF event source: sock:inet_sock_set_state through a ring buffer.

A single ring buffer keeps events in order (per-CPU perf buffers can deliver
a socket's exit before its enter).  The kernel side wakes us once per batch,
and we also drain on a short timer, so a quiet host costs a few wakeups a
second and a busy one about 1.5 us per event instead of a wakeup per event.
"""

from __future__ import annotations

import contextlib
import os
import platform
import socket
import tempfile
from pathlib import Path

from resreap.errors import BackendUnavailable, NotRoot
from resreap.events import EventSource, seed_transitions
from resreap.model import TCP_CLOSE_WAIT, Kind, SockId, Transition
from resreap.sockets import SocketTable

# The kernel program ships inside the package (pyproject.toml copies the
# top-level bpf/ there); a source checkout uses bpf/ itself.
_HERE = Path(__file__).resolve().parent
BPF_DIR = _HERE / "bpf" if (_HERE / "bpf").is_dir() else _HERE.parent / "bpf"
BPF_SOURCE = BPF_DIR / "resreap.bpf.c"

TRACEPOINT = ("sock", "inet_sock_set_state")
# 4 MiB: at 100k events/s of 64 bytes a 0.1 s drain needs 640 KiB.
RINGBUF_PAGES = 1024
WAKEUP_EVERY = 256


@contextlib.contextmanager
def _stderr_to(path: str):
    """bcc's compiler writes diagnostics straight to fd 2; keep them for the
    error message instead of spraying them over the terminal."""
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


def check_usable() -> None:
    """Raise, with the fix in the message, unless BPF can run here."""
    if os.geteuid() != 0:
        raise NotRoot("the BPF backend needs root (or CAP_BPF and CAP_PERFMON): run with sudo")
    try:
        import bcc  # noqa: F401
    except ImportError as exc:
        raise BackendUnavailable(
            "bcc is not importable: apt-get install python3-bpfcc and use a venv made "
            "with --system-site-packages (scripts/setup does both)") from exc
    if not (os.path.isdir("/sys/kernel/tracing/events")
            or os.path.isdir("/sys/kernel/debug/tracing/events")):
        raise BackendUnavailable(
            "tracefs is not mounted: mount -t tracefs tracefs /sys/kernel/tracing")
    from bcc import BPF

    if not BPF.tracepoint_exists(*TRACEPOINT):
        raise BackendUnavailable(
            f"this kernel ({platform.release()}) has no {':'.join(TRACEPOINT)} tracepoint "
            "(Linux 4.16+ has it)")
    release = platform.release()
    if not (os.path.exists(f"/lib/modules/{release}/build")
            or os.path.exists("/sys/kernel/kheaders.tar.xz")):
        raise BackendUnavailable(
            f"no kernel headers for {release}: apt-get install linux-headers-{release}, "
            "or run scripts/setup, which links the distro's generic headers")
    if not BPF_SOURCE.is_file():
        raise BackendUnavailable(f"the BPF program is missing from the install: {BPF_SOURCE}")


class BpfSource(EventSource):
    name = "bpf"

    def __init__(self, table: SocketTable, *, latency: float = 0.1) -> None:
        check_usable()
        from bcc import BPF

        self.table = table
        self.latency = latency
        self._batch: list[Transition] = []
        self._lost = 0
        cflags = [f"-I{BPF_DIR}", f"-DRINGBUF_PAGES={RINGBUF_PAGES}",
                  f"-DWAKEUP_EVERY={WAKEUP_EVERY}"]
        with tempfile.NamedTemporaryFile("w+", prefix="resreap-bcc-") as diag:
            try:
                with _stderr_to(diag.name):
                    self._bpf = BPF(src_file=str(BPF_SOURCE).encode(), cflags=cflags)
            except Exception as exc:  # bcc raises bare Exception for every failure
                diag.seek(0)
                text = diag.read()
                if "Operation not permitted" in text or "Operation not permitted" in str(exc):
                    raise BackendUnavailable(
                        "not permitted to load BPF programs (needs CAP_BPF and CAP_PERFMON, "
                        "or CAP_SYS_ADMIN; a container must be granted them)") from exc
                raise BackendUnavailable(
                    f"the BPF program did not load: {_first_error(text) if text.strip() else exc}"
                ) from exc
        self._events = self._bpf[b"events"]
        self._counts = self._bpf[b"counts"]
        self._events.open_ring_buffer(self._on_event)

    def _on_event(self, _ctx, data, _size) -> int:
        e = self._events.event(data)
        if e.family == socket.AF_INET:
            sock = SockId(4, bytes(e.saddr)[:4], e.sport, bytes(e.daddr)[:4], e.dport)
        else:
            sock = SockId(6, bytes(e.saddr), e.sport, bytes(e.daddr), e.dport)
        kind = Kind.ENTER if e.newstate == TCP_CLOSE_WAIT else Kind.EXIT
        self._batch.append(Transition(kind, sock, e.ts_ns / 1e9, e.cpu_pid))
        return 0

    def start(self) -> list[Transition]:
        # Attached already (bcc attaches TRACEPOINT_PROBE at load): seeding
        # after attaching means no socket falls between the two.
        import time

        return seed_transitions(self.table, time.monotonic())

    def read(self, timeout: float) -> list[Transition]:
        self._bpf.ring_buffer_poll(max(0, int(timeout * 1000)))
        # The kernel wakes us only once per batch: drain what a trickle left.
        self._bpf.ring_buffer_consume()
        batch, self._batch = self._batch, []
        return batch

    def lost(self) -> int:
        if self._bpf is not None:
            self._lost = int(self._counts.sum(0).value)
        return self._lost

    def submitted(self) -> int:
        return int(self._counts.sum(1).value) if self._bpf is not None else 0

    def close(self) -> None:
        if self._bpf is not None:
            self._bpf.cleanup()
            self._bpf = None
