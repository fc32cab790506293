"""Loading the prebuilt CO-RE program with libbpf, in this process.

The program was compiled once, at build time (scripts/build-bpf), into
resreap.bpf.o; libbpf (Debian's libbpf1: libc, libelf and zlib, no
compiler) relocates its reads of the tracepoint's fields against the
running kernel's BTF, loads it and attaches it, in about 50 ms.

Loaded here rather than in a helper process: libbpf is small (the memory
that moved bcc to a child was LLVM's), and a child Python's start would
cost more than the load.  What stays in this process afterwards is exactly
what the bcc helper hands over: duplicated fds of the attachment and the
maps.  libbpf's own object is closed at once (its link disconnected
first, so closing it does not detach the program).
"""

from __future__ import annotations

import ctypes as ct
import errno
import os
from pathlib import Path

from resreap.errors import BackendUnavailable
from resreap.sources.program import event_layout, untrusted

PROGRAM = b"resreap_set_state"
VMLINUX_BTF = "/sys/kernel/btf/vmlinux"
LIBBPF = "libbpf.so.1"
_LOG_KEPT = 40  # libbpf warnings kept for the error message

_PRINT_FN = ct.CFUNCTYPE(ct.c_int, ct.c_int, ct.c_char_p, ct.c_void_p)


class NotPermitted(BackendUnavailable):
    """No capability to load BPF: no other loader would fare better."""


class _Libbpf:
    """The few libbpf calls the load needs, typed."""

    def __init__(self) -> None:
        try:
            lib = ct.CDLL(LIBBPF, use_errno=True)
        except OSError:
            raise BackendUnavailable(f"{LIBBPF} is not installed (apt-get install libbpf1)") \
                from None
        p, i, u32, s = ct.c_void_p, ct.c_int, ct.c_uint32, ct.c_char_p
        for name, res, args in (
                ("bpf_object__open_file", p, [s, p]),
                ("bpf_object__find_map_by_name", p, [p, s]),
                ("bpf_object__find_program_by_name", p, [p, s]),
                ("bpf_object__load", i, [p]),
                ("bpf_object__close", None, [p]),
                ("bpf_map__set_max_entries", i, [p, u32]),
                ("bpf_map__set_initial_value", i, [p, p, ct.c_size_t]),
                ("bpf_map__fd", i, [p]),
                ("bpf_program__attach", p, [p]),
                ("bpf_link__fd", i, [p]),
                ("bpf_link__disconnect", None, [p]),
                ("bpf_link__destroy", i, [p]),
                ("libbpf_set_print", p, [p])):
            fn = getattr(lib, name)
            fn.restype, fn.argtypes = res, args
        self.lib = lib
        self.log: list[str] = []
        libc = ct.CDLL(None)
        vsnprintf = libc.vsnprintf
        vsnprintf.argtypes = [ct.c_char_p, ct.c_size_t, ct.c_char_p, ct.c_void_p]

        def printer(level: int, fmt: bytes, args: int) -> int:
            # Warnings only (0): kept for the error message, never printed
            # over the operator's terminal.
            if level == 0:
                buf = ct.create_string_buffer(65536)
                vsnprintf(buf, len(buf), fmt, args)
                self.log = (self.log + [buf.value.decode("utf-8", "replace").strip()])[-_LOG_KEPT:]
            return 0

        self._printer = _PRINT_FN(printer)  # kept alive: libbpf calls it later
        lib.libbpf_set_print(ct.cast(self._printer, ct.c_void_p))

    def detail(self) -> str:
        useful = [ln for ln in self.log if ln and "libbpf: " in ln] or self.log
        return useful[-1].replace("libbpf: ", "") if useful else "no details from libbpf"


def unusable(object_path: Path) -> str | None:
    """Why the CO-RE object cannot be loaded here (None: it can be tried)."""
    if not os.path.exists(VMLINUX_BTF):
        return f"this kernel has no BTF ({VMLINUX_BTF} is missing)"
    if not object_path.is_file():
        return f"no prebuilt program at {object_path} (build it: scripts/build-bpf)"
    bad = untrusted(object_path, object_path.parent / "resreap.h")
    if bad:
        return bad
    if not _loadable(LIBBPF):
        return f"{LIBBPF} is not installed (apt-get install libbpf1)"
    return None


def _loadable(name: str) -> bool:
    try:
        ct.CDLL(name)
        return True
    except OSError:
        return False


def _fail(what: str, err: int, bpf: _Libbpf) -> BackendUnavailable:
    if err == errno.EPERM:  # EACCES is the verifier refusing the program
        return NotPermitted("not permitted to load BPF programs (needs CAP_BPF and "
                                  "CAP_PERFMON, or CAP_SYS_ADMIN; a container must be granted "
                                  "them)")
    # libbpf's own codes (4000+: not an ELF object, a bad section...) have
    # no strerror: its message says it.
    why = bpf.detail() if err >= 4000 else f"{os.strerror(err)} ({bpf.detail()})"
    return BackendUnavailable(f"the CO-RE program did not {what}: {why}")


# Processes whose unseen closes are counted between two takes (one a turn).
CLOSERS_MAX = 8192

def load(object_path: Path, ringbuf_pages: int, wakeup_every: int,
         pending_max: int = 0, credit: bool = False,
         switchable: bool = False) -> tuple[dict, list[int]]:
    """Open, size, load and attach; (facts, fds: attachment, ring, counters
    [, pending [, closers]]), as the bcc helper hands them over.
    ``pending_max``: the first pass with a pending map of that many
    sockets; 0: every transition through the ring.  ``credit`` (with the
    first pass): count the sockets each process closed before they were
    taken.  ``switchable`` (with both): the first pass applies only while
    the pass_now map's slot is 1 (its fd last).  Raises BackendUnavailable."""
    bpf = _Libbpf()
    lib = bpf.lib
    obj = lib.bpf_object__open_file(str(object_path).encode(), None)
    if not obj:
        lib.libbpf_set_print(None)
        raise _fail("open", ct.get_errno(), bpf)
    link = None
    try:
        maps = {}
        for name in (b"events", b"counts", b"pending", b"closers", b"pass_now", b".rodata"):
            maps[name] = lib.bpf_object__find_map_by_name(obj, name)
            if not maps[name]:
                raise BackendUnavailable(f"the CO-RE object has no {name.decode()} map: "
                                         "rebuild it (scripts/build-bpf)")
        ring_bytes = ringbuf_pages * os.sysconf("SC_PAGE_SIZE")
        lib.bpf_map__set_max_entries(maps[b"events"], ring_bytes)
        # Without the first pass the map is never used: one entry.
        lib.bpf_map__set_max_entries(maps[b"pending"], pending_max or 1)
        credit = bool(credit and pending_max)
        lib.bpf_map__set_max_entries(maps[b"closers"], CLOSERS_MAX if credit else 1)
        switchable = bool(switchable and credit)
        config = (ct.c_uint32 * 4)(1 if pending_max else 0, wakeup_every, 1 if credit else 0,
                                   1 if switchable else 0)
        if lib.bpf_map__set_initial_value(maps[b".rodata"], ct.addressof(config),
                                          ct.sizeof(config)) != 0:
            raise BackendUnavailable("the CO-RE object's settings do not match this "
                                     "resreap: rebuild it (scripts/build-bpf)")
        err = lib.bpf_object__load(obj)
        if err != 0:
            raise _fail("load", -err, bpf)
        prog = lib.bpf_object__find_program_by_name(obj, PROGRAM)
        link = lib.bpf_program__attach(prog) if prog else None
        if not link:
            raise _fail("attach", ct.get_errno() or errno.ENOENT, bpf)
        names = [b"events", b"counts"] + ([b"pending"] if pending_max else []) + \
            ([b"closers"] if credit else []) + ([b"pass_now"] if switchable else [])
        fds = [os.dup(lib.bpf_link__fd(link))] + [os.dup(lib.bpf_map__fd(maps[n])) for n in names]
        # Ours now: libbpf's copies go, the attachment stays with our fd.
        lib.bpf_link__disconnect(link)
    finally:
        if link:
            lib.bpf_link__destroy(link)
        lib.bpf_object__close(obj)
        # libbpf keeps the printer for the process: never a dangling one.
        lib.libbpf_set_print(None)
    info = {"layout": event_layout(object_path.parent), "ringbuf_bytes": ring_bytes}
    return info, fds
