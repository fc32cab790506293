"""The BPF event source: sock:inet_sock_set_state through a ring buffer.

A single ring buffer keeps events in order (per-CPU perf buffers can deliver
a socket's exit before its enter).  The kernel side wakes us once per batch,
and we also drain on a short timer, so a quiet host costs a few wakeups a
second and a busy one a batch decode per wakeup instead of a wakeup per
event.

The program is prebuilt (CO-RE) and loaded here by libbpf (core_loader);
where that object cannot load (no BTF, Linux before 5.8, no libbpf) bcc
compiles the same source in a short-lived helper process (bpf_loader):
this process never loads bcc or LLVM.
"""

from __future__ import annotations

import contextlib
import json
import logging
import operator
import os
import platform
import socket
import struct
import shutil
import subprocess
import sys
import tempfile
import time
from typing import NamedTuple

from resreap import tunables
from resreap.sources import core_loader
from resreap.sources.bpf_loader import CHILD_CWD, child_python
from resreap.sources.program import OBJECT, SOURCE, counter_slots, event_layout, too_old, untrusted
from resreap.errors import BackendUnavailable, BpfCallError, NotRoot
from resreap.sources.events import EventSource, seed_transitions
from resreap.model import TCP_CLOSE_WAIT, TCP_LAST_ACK, Kind, SockId, Transition
from resreap.sources.ringbuf import BatchTaker, PerCpuCounters, RingBuffer, Switch, delete_key
from resreap.host.sockets import SocketTable

log = logging.getLogger(__name__)

TRACEPOINT = ("sock", "inet_sock_set_state")
TRACEFS = ("/sys/kernel/tracing", "/sys/kernel/debug/tracing")
# The ring (tunables.ringbuf_pages overrides both sizes).  Without the first
# pass (trace) it carries every transition: at 100k events/s of 72 bytes a
# 0.25 s drain needs 1.8 MiB, yet with 4 MiB this VM (Linux 6.18) dropped 1-4
# of 200k events at 10k connections/s with no reader stall; 16 MiB dropped
# none.  With it (watch) only the exits of taken sockets and what overflows
# a full pending map: 2 MiB holds 32k records, the exits of a 20k-socket
# leaker killed at once with room to spare (docs/benchmark.md), and is
# mapped (twice) instead of 16 MiB.  The fault suite shrinks it (and the
# pending map, tunables.pending_max) to force lost events;
# RESREAP_FIRST_PASS=0 turns the first pass off (the benchmark's "before").
TRACE_RING_PAGES = 4096
WATCH_RING_PAGES = 512
WAKEUP_EVERY = 256
LOAD_TIMEOUT = 120.0  # compiling takes about a second; a loaded host more


def mounted_tracefs() -> list[str]:
    return [t for t in TRACEFS if os.path.isdir(f"{t}/events")]


def has_tracepoint(mounted: list[str]) -> bool:
    return any(os.path.isdir(f"{t}/events/{TRACEPOINT[0]}/{TRACEPOINT[1]}") for t in mounted)


def kernel_headers() -> str | None:
    """Where bcc will find headers for the running kernel, or None."""
    build = f"/lib/modules/{platform.release()}/build"
    if os.path.exists(build):
        real = os.path.realpath(build)
        # Root's BPF program is compiled from these: never from a tree
        # someone else owns or may write.
        st = os.stat(real)
        if st.st_uid != 0 or st.st_mode & 0o022:
            return None
        return real
    if os.path.exists("/sys/kernel/kheaders.tar.xz"):
        return "/sys/kernel/kheaders.tar.xz"
    return None


def check_usable() -> None:
    """Raise, with the fix in the message, unless BPF can run here.  The
    last checks (bcc, compiling, permission) happen in the loader."""
    if os.geteuid() != 0:
        raise NotRoot("the BPF backend needs root (or CAP_BPF and CAP_PERFMON): run with sudo")
    old = too_old()
    if old:
        raise BackendUnavailable(old)
    mounted = mounted_tracefs()
    if not mounted:
        raise BackendUnavailable(
            "tracefs is not mounted: mount -t tracefs tracefs /sys/kernel/tracing")
    if not has_tracepoint(mounted):
        raise BackendUnavailable(
            f"this kernel ({platform.release()}) has no {':'.join(TRACEPOINT)} tracepoint "
            "(Linux 4.16+ has it)")


def check_bcc() -> None:
    """Raise unless bcc can compile here: it needs the kernel's headers."""
    release = platform.release()
    if kernel_headers() is None:
        hidden = ""
        if os.environ.get("INVOCATION_ID") and not os.path.isdir("/lib/modules"):
            hidden = ("; /lib/modules is hidden from this service: ProtectKernelModules=yes "
                      "in its unit? (the shipped unit says no)")
        raise BackendUnavailable(
            f"no kernel headers for {release}: apt-get install linux-headers-{release}, "
            f"or run scripts/setup, which links the distro's generic headers{hidden}")
    if not SOURCE.is_file():
        raise BackendUnavailable(f"the BPF program is missing from the install: {SOURCE}")
    bad = untrusted(SOURCE, SOURCE.parent / "resreap.h")
    if bad:
        raise BackendUnavailable(bad)


@contextlib.contextmanager
def loader_env():
    """The loader's environment: ours, with a TMPDIR of its own.  bcc 0.26
    (Debian 12's) compiles against ${TMPDIR:-/tmp}/kheaders-RELEASE when
    that directory merely exists, whoever made it (CVE-2024-2314): outside
    the unit's PrivateTmp=, a user's planted header would rewrite root's BPF
    program.  A fresh 0700 directory (mkdtemp) can hold nothing of theirs;
    it is removed once the loader is done."""
    private = tempfile.mkdtemp(prefix="resreap-loader-")
    try:
        yield {**os.environ, "TMPDIR": private}
    finally:
        shutil.rmtree(private, ignore_errors=True)


class Loaded(NamedTuple):
    info: dict
    fds: list[int]
    loader: str          # core (prebuilt, libbpf) or bcc (compiled here)
    why: str | None      # why bcc ran instead of the prebuilt program


def load(pending_max: int, ring_pages: int, credit: bool = False,
         switchable: bool = False) -> Loaded:
    """The program loaded and attached: the prebuilt CO-RE object where it
    loads, else bcc (unless RESREAP_BPF_LOADER says which).  Raises
    BackendUnavailable."""
    choice = tunables.get().bpf_loader
    why = "RESREAP_BPF_LOADER=bcc"
    if choice != "bcc":
        why = core_loader.unusable(OBJECT)
        if why is None:
            try:
                info, fds = core_loader.load(OBJECT, ring_pages, WAKEUP_EVERY, pending_max,
                                             credit, switchable)
                return Loaded(info, fds, "core", None)
            except core_loader.NotPermitted:
                raise  # bcc would be refused the same way
            except BackendUnavailable as exc:
                why = str(exc)
        if choice == "core":
            raise BackendUnavailable(f"the prebuilt program cannot load: {why}")
    try:
        check_bcc()
        info, fds = _load_bcc(pending_max, ring_pages, credit, switchable)
    except BackendUnavailable as exc:
        if choice == "bcc":
            raise
        raise BackendUnavailable(f"{exc}; bcc was tried because {why}") from None
    if info["layout"] != event_layout():
        for fd in fds:
            os.close(fd)
        raise BackendUnavailable("bcc's decoding of struct event differs from bpf/resreap.h's")
    return Loaded(info, fds, "bcc", why)


def _load_bcc(pending_max: int, ring_pages: int, credit: bool,
              switchable: bool) -> tuple[dict, list[int]]:
    mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    with mine, loader_env() as env:
        try:
            helper = subprocess.Popen(
                child_python("-m", "resreap.sources.bpf_loader", str(theirs.fileno()),
                             str(ring_pages), str(WAKEUP_EVERY), str(pending_max),
                             str(int(credit)), str(int(switchable))),
                pass_fds=[theirs.fileno()], cwd=CHILD_CWD, stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
        finally:
            theirs.close()
        mine.settimeout(LOAD_TIMEOUT)
        try:
            msg, fds, _flags, _addr = socket.recv_fds(mine, 65536, 8)
        except (socket.timeout, OSError) as exc:
            helper.kill()
            raise BackendUnavailable(f"the BPF loader did not answer: {exc}") from None
        finally:
            helper.wait()
    if not msg:
        raise BackendUnavailable(f"the BPF loader exited with status {helper.returncode}")
    info = json.loads(msg)
    if "error" in info:
        for fd in fds:
            os.close(fd)
        raise BackendUnavailable(info["error"])
    return info, fds


def _record_struct(layout: dict) -> tuple[struct.Struct, list[str]]:
    """A decoder for the C struct, built from the layout bcc derived."""
    fmt, names, at = "=", [], 0
    for name, offset, code in sorted(layout["fields"], key=lambda f: f[1]):
        fmt += "x" * (offset - at) + code
        at = offset + struct.calcsize("=" + code)
        names.append(name)
    fmt += "x" * (layout["size"] - at)
    return struct.Struct(fmt), names


# How often the closers' entries of processes gone are deleted (seconds).
CLOSERS_PRUNE = 60.0

class BpfSource(EventSource):
    name = "bpf"

    def __init__(self, table: SocketTable, *, latency: float = 0.1,
                 first_pass: bool = False, credit: bool = False,
                 switchable: bool = False) -> None:
        """``first_pass``: the kernel keeps new CLOSE_WAIT sockets in a map
        that ``read`` takes in one batch; those that leave before (churn)
        cost nothing here.  Linux 5.6+ (batch map operations); elsewhere
        every transition comes through the ring, as for trace.  ``credit``
        (with it): those are counted per process that closed them
        (``closers``).  ``switchable`` (with both, for trace): the first
        pass is off until ``set_first_pass`` turns it on (the full stream
        and its ring meanwhile)."""
        check_usable()
        self.table = table
        self.latency = latency
        knobs = tunables.get()
        first_pass = first_pass and knobs.first_pass
        switchable = switchable and first_pass and credit
        pages = knobs.ringbuf_pages or (WATCH_RING_PAGES if first_pass and not switchable
                                        else TRACE_RING_PAGES)
        loaded = load(knobs.pending_max if first_pass else 0, pages, credit, switchable)
        self._taker = self._closers = self._switch = None
        self._closed: dict[int, int] = {}  # the kernel's counts at the last read
        self._pruned_at = time.monotonic()
        if first_pass:
            self._taker = BatchTaker(loaded.fds[3], loaded.info["layout"]["size"])
            try:
                self._taker.take()
            except BpfCallError:  # no batch operations: the full stream instead
                for fd in loaded.fds:
                    os.close(fd)
                loaded = load(0, knobs.ringbuf_pages or TRACE_RING_PAGES)
                self._taker = None
        self.first_pass = self._taker is not None
        if self.first_pass and credit:
            self._closers = BatchTaker(loaded.fds[4], 8, key_size=4)
            if switchable:
                self._switch = Switch(loaded.fds[5])
        self.credits = self._closers is not None
        self.switchable = self._switch is not None
        self.loader, self.loader_why = loaded.loader, loaded.why
        info, fds = loaded.info, loaded.fds
        # The perf event fd keeps the program attached for as long as we live.
        self._perf_fd, events_fd, counts_fd = fds[:3]
        self._ring = RingBuffer(events_fd, info["ringbuf_bytes"])
        self._counts = PerCpuCounters(counts_fd)
        self._lost_slot = counter_slots()["COUNTER_LOST"]
        self._fds = fds
        decoder, names = _record_struct(info["layout"])
        self._unpack = decoder.unpack_from
        want = ("ts_ns", "cpu_pid", "family", "sport", "dport", "newstate", "saddr", "daddr",
                "skaddr")
        self._pick = operator.itemgetter(*(names.index(n) for n in want))
        self._batch: list[Transition] = []
        self._lost = 0
        self._unsure = False
        self._warned_at = float("-inf")

    def _on_record(self, buf, offset: int) -> None:
        ts, cpu_pid, family, sport, dport, newstate, saddr, daddr, skaddr = \
            self._pick(self._unpack(buf, offset))
        if family == socket.AF_INET:
            sock = SockId(4, saddr[:4], sport, daddr[:4], dport)
        else:
            sock = SockId(6, saddr, sport, daddr, dport)
        kind = Kind.ENTER if newstate == TCP_CLOSE_WAIT else Kind.EXIT
        # The socket's kernel address tells two namespaces' sockets with the
        # same 4-tuple apart; which namespace it is in is looked up later.
        # CLOSE_WAIT -> LAST_ACK runs in the owner's close(): its pid is the
        # owner (the way in runs in softirq, on whatever task is there).
        self._batch.append(Transition(kind, sock, ts / 1e9, cpu_pid, skaddr,
                                      by_owner=newstate == TCP_LAST_ACK))

    def start(self) -> list[Transition]:
        # Attached already: seeding after attaching means no socket falls
        # between the two (a duplicate keeps the earlier time).
        return seed_transitions(self.table, time.monotonic())

    def read(self, timeout: float) -> list[Transition]:
        if self._ring is None:
            return []
        self._ring.wait(timeout)
        if self._taker is not None:
            # The sockets still in CLOSE_WAIT, first: an exit of one of them
            # that happens from now on comes through the ring, after it.
            try:
                for raw in self._taker.take():
                    self._on_record(raw, 0)
            except BpfCallError as exc:
                # What was not taken may be lost: say so through lost()
                # (unknown), so the watcher compares its table with the
                # kernel's; the next read tries again.
                self._warn(exc)
                self._unsure = True
        self._ring.consume(self._on_record)
        batch, self._batch = self._batch, []
        return batch

    def follow(self, latency: float) -> None:
        self.latency = latency

    def set_first_pass(self, on: bool) -> bool:
        """Turn the kernel's first pass (with credit) on or off; False: it
        cannot be (not switchable, or the map refused)."""
        if self._switch is None:
            return False
        try:
            self._switch.set(on)
        except BpfCallError as exc:
            self._warn(exc)
            return False
        return True

    def closers(self) -> dict[int, int]:
        """The kernel's counts only grow (a take that deleted an entry
        under an increment lost it): each call hands over what each grew
        by since the last; the entries of processes gone are deleted once a
        minute."""
        if self._closers is None:
            return {}
        try:
            items = self._closers.take_items(delete=False)
        except BpfCallError as exc:
            self._warn(exc)
            return {}
        now = {int.from_bytes(k, sys.byteorder): int.from_bytes(v, sys.byteorder)
               for k, v in items}
        grew = {}
        for pid, count in now.items():
            before = self._closed.get(pid, 0)
            # Smaller: deleted (gone) and made again by a process that
            # took its pid: all of it is new.
            added = count - before if count >= before else count
            if added:
                grew[pid] = added
        self._closed = now
        if time.monotonic() - self._pruned_at > CLOSERS_PRUNE:
            self._prune_closers()
        return grew

    def _prune_closers(self) -> None:
        self._pruned_at = time.monotonic()
        proc = self.table.proc
        for pid in [p for p in self._closed if not os.path.exists(proc.path(p))]:
            try:
                delete_key(self._closers.fd, pid.to_bytes(4, sys.byteorder))
            except BpfCallError as exc:
                self._warn(exc)
                return
            del self._closed[pid]

    def lost(self) -> int | None:
        """None: unknown (the counter could not be read, or the pending
        map could not be taken since the last call)."""
        if self._ring is not None:
            try:
                self._lost = self._counts.sum(self._lost_slot)
            except BpfCallError as exc:
                self._warn(exc)
                return None
        if self._unsure:
            self._unsure = False
            return None
        return self._lost

    def _warn(self, exc: BpfCallError) -> None:
        """A failing bpf() call is said once a minute, not every turn."""
        now = time.monotonic()
        if now - self._warned_at >= 60.0:
            self._warned_at = now
            log.warning("%s", exc)

    def close(self) -> None:
        if self._ring is not None:
            self._ring.close()
            self._ring = None
            for fd in self._fds:
                os.close(fd)
