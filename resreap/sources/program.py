"""The kernel program's files, and the event record's layout.

bpf/ holds the source (resreap.bpf.c, for both builds), the header with the
record (resreap.h: its one definition, read here for the decoder whichever
build loaded the program) and the prebuilt CO-RE object (resreap.bpf.o,
made by scripts/build-bpf).  An installed package carries them in
resreap/bpf; a source checkout uses bpf/ itself.

The record is plain C with natural alignment (u8/u16/u32/u64 and arrays of
them), so offsets follow from the field order alone.
"""

from __future__ import annotations

import platform
import re
from pathlib import Path

from resreap.errors import BackendUnavailable, UsageError
from resreap.host.trust import check_chain

_PACKAGE = Path(__file__).resolve().parent.parent
BPF_DIR = _PACKAGE / "bpf" if (_PACKAGE / "bpf").is_dir() else _PACKAGE.parent / "bpf"
SOURCE = BPF_DIR / "resreap.bpf.c"
OBJECT = BPF_DIR / "resreap.bpf.o"
# The program's ring buffer map arrived in Linux 5.8 (and mainstream
# kernels have had BTF since): older kernels are watched by polling.
MIN_KERNEL = (5, 8)


def untrusted(*paths: Path) -> str | None:
    """Why root must not load these program files (None: it may): each
    and every directory above it must be root's, not writable by others.
    A rewritten program would run in the kernel, and feed the watch."""
    for path in paths:
        try:
            check_chain(str(path), "BPF program file", "it would run in the kernel")
        except UsageError as exc:
            return str(exc)
    return None


def kernel_version(release: str | None = None) -> tuple[int, int]:
    """(major, minor) of a kernel release string (the running one's)."""
    nums = (release or platform.release()).split("-")[0].split(".")
    try:
        return int(nums[0]), int(nums[1])
    except (IndexError, ValueError):
        return (0, 0)


def too_old(release: str | None = None) -> str | None:
    """Why this kernel cannot run the program (None: new enough)."""
    have = kernel_version(release)
    if have >= MIN_KERNEL:
        return None
    return (f"Linux {have[0]}.{have[1]} is older than {MIN_KERNEL[0]}.{MIN_KERNEL[1]} "
            "(the BPF ring buffer): polling is used")

_SIZES = {"u8": 1, "u16": 2, "u32": 4, "u64": 8}
_CODES = {1: "B", 2: "H", 4: "I", 8: "Q"}
_FIELD = re.compile(r"^\s*(u8|u16|u32|u64)\s+(\w+)\s*(?:\[(\d+)\])?\s*;")


def struct_layout(header: str, name: str) -> dict:
    """{"size": bytes, "fields": [[field, offset, struct-module code], ...]}
    of ``struct name`` in ``header``'s text."""
    m = re.search(r"struct\s+%s\s*\{(.*?)\};" % re.escape(name), header, re.S)
    if m is None:
        raise BackendUnavailable(f"struct {name} is missing from the BPF header")
    fields, at, align = [], 0, 1
    for line in m.group(1).splitlines():
        f = _FIELD.match(line)
        if f is None:
            continue
        kind, field, count = f.group(1), f.group(2), f.group(3)
        size = _SIZES[kind]
        at = (at + size - 1) // size * size
        align = max(align, size)
        if count:
            fields.append([field, at, f"{int(count) * size}s" if size == 1 else
                           f"{count}{_CODES[size]}"])
            at += int(count) * size
        else:
            fields.append([field, at, _CODES[size]])
            at += size
    return {"size": (at + align - 1) // align * align, "fields": fields}


def event_layout(bpf_dir: Path = BPF_DIR) -> dict:
    return struct_layout((bpf_dir / "resreap.h").read_text(), "event")


def counter_slots(bpf_dir: Path = BPF_DIR) -> dict[str, int]:
    """{"COUNTER_LOST": 0, ...}: the counter map's slots, from the header's
    ``enum resreap_counter`` (the program and its reader share one list)."""
    header = (bpf_dir / "resreap.h").read_text()
    m = re.search(r"enum\s+resreap_counter\s*\{(.*?)\};", header, re.S)
    if m is None:
        raise BackendUnavailable("enum resreap_counter is missing from the BPF header")
    body = re.sub(r"/\*.*?\*/", "", m.group(1), flags=re.S)
    return {name: int(value) for name, value in re.findall(r"(\w+)\s*=\s*(\d+)", body)}
