"""Reading a BPF ring buffer, a per-CPU counter map and taking a hash map's
entries in batches, without bcc.

The ring buffer is mmapped as the kernel lays it out (kernel/bpf/ringbuf.c):
one page with the consumer position (ours to write), one with the producer
position, then the data pages mapped twice in a row so that a record that
wraps around the end is still contiguous.  Each record has an 8-byte header
whose length word carries a BUSY bit (being written) and a DISCARD bit.
"""

from __future__ import annotations

import ctypes
import errno
import mmap
import os
import platform
import select
import struct
from typing import Callable

from resreap.errors import BackendUnavailable, BpfCallError

BUSY = 1 << 31
DISCARD = 1 << 30
HDR = 8
# Records consumed between two releases of their space to the kernel.
RELEASE_EVERY = 1024
_U64 = struct.Struct("=Q")
_U32 = struct.Struct("=I")

_SYS_BPF = {"x86_64": 321, "aarch64": 280, "riscv64": 280, "ppc64le": 361, "s390x": 351,
            "armv7l": 386, "i686": 357}
BPF_MAP_LOOKUP_ELEM = 1
BPF_MAP_UPDATE_ELEM = 2
BPF_MAP_DELETE_ELEM = 3
BPF_MAP_LOOKUP_BATCH = 24            # Linux 5.6+
BPF_MAP_LOOKUP_AND_DELETE_BATCH = 25  # Linux 5.6+
_libc = ctypes.CDLL(None, use_errno=True)


class RingBuffer:
    def __init__(self, map_fd: int, size: int) -> None:
        page = mmap.PAGESIZE
        self.fd = map_fd
        self.size = size
        self.mask = size - 1
        self._cons = mmap.mmap(map_fd, page, mmap.MAP_SHARED,
                               mmap.PROT_READ | mmap.PROT_WRITE, offset=0)
        self._data = mmap.mmap(map_fd, page + 2 * size, mmap.MAP_SHARED, mmap.PROT_READ,
                               offset=page)
        self._base = page
        self._poll = select.poll()
        self._poll.register(map_fd, select.POLLIN)

    def wait(self, timeout: float) -> None:
        """Sleep until the kernel wakes us (once per batch) or ``timeout``."""
        self._poll.poll(max(0, int(timeout * 1000)))

    def consume(self, handle: Callable[[mmap.mmap, int], None]) -> int:
        """Call ``handle(buffer, offset)`` for every committed record."""
        data, base, mask = self._data, self._base, self.mask
        cons = _U64.unpack_from(self._cons, 0)[0]
        prod = _U64.unpack_from(data, 0)[0]
        done = 0
        while cons < prod:
            off = base + (cons & mask)
            length = _U32.unpack_from(data, off)[0]
            if length & BUSY:
                break  # still being written: next time
            if not length & DISCARD:
                handle(data, off + HDR)
                done += 1
                if not done % RELEASE_EVERY:
                    # Each record is decoded (copied) by ``handle``: its space
                    # goes back to the kernel now, not after the whole batch
                    # (a full ring's 170,000 records took a second to decode,
                    # and every event meanwhile was lost).
                    _U64.pack_into(self._cons, 0, cons)
            cons += ((length & ~(BUSY | DISCARD)) + HDR + 7) & ~7
        _U64.pack_into(self._cons, 0, cons)
        return done

    def close(self) -> None:
        self._poll.unregister(self.fd)
        self._cons.close()
        self._data.close()


def possible_cpus() -> int:
    with open("/sys/devices/system/cpu/possible") as f:
        text = f.read().strip()
    count = 0
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        count += int(hi or lo) - int(lo) + 1
    return count


class _LookupAttr(ctypes.Structure):
    _fields_ = [("map_fd", ctypes.c_uint32), ("pad", ctypes.c_uint32),
                ("key", ctypes.c_uint64), ("value", ctypes.c_uint64),
                ("flags", ctypes.c_uint64)]


def _elem(nr: int, cmd: int, fd: int, key, value, what: str, absent_ok: bool = False) -> None:
    """One element's bpf() call (lookup, update or delete: ``value`` None)
    on map ``fd``; raises BpfCallError saying ``what`` failed (``absent_ok``:
    not for a key that is not there)."""
    attr = _LookupAttr(fd, 0, ctypes.addressof(key),
                       0 if value is None else ctypes.addressof(value), 0)
    if _libc.syscall(nr, cmd, ctypes.byref(attr), ctypes.sizeof(attr)) != 0:
        err = ctypes.get_errno()
        if not (absent_ok and err == errno.ENOENT):
            raise BpfCallError(what, err, os.strerror(err))


def delete_key(map_fd: int, key: bytes) -> None:
    """Delete one entry (gone already: nothing); raises BpfCallError."""
    _elem(_SYS_BPF.get(platform.machine()), BPF_MAP_DELETE_ELEM, map_fd,
          ctypes.create_string_buffer(key, len(key)), None, "deleting a map entry",
          absent_ok=True)


class Switch:
    """Slot 0 of a one-entry BPF array of u32: a setting the program reads
    at each event (the first pass, turned on and off by trace)."""

    def __init__(self, map_fd: int) -> None:
        nr = _SYS_BPF.get(platform.machine())
        if nr is None:
            raise BackendUnavailable(f"no bpf() syscall number known for {platform.machine()}")
        self.fd, self._nr = map_fd, nr
        self._key, self._value = ctypes.c_uint32(0), ctypes.c_uint32(0)

    def set(self, on: bool) -> None:
        """Raises BpfCallError."""
        self._value.value = 1 if on else 0
        _elem(self._nr, BPF_MAP_UPDATE_ELEM, self.fd, self._key, self._value,
              "switching the first pass")


class PerCpuCounters:
    """A BPF_PERCPU_ARRAY of u64: each slot summed over CPUs."""

    def __init__(self, map_fd: int) -> None:
        nr = _SYS_BPF.get(platform.machine())
        if nr is None:
            raise BackendUnavailable(f"no bpf() syscall number known for {platform.machine()}")
        self.fd = map_fd
        self._nr = nr
        self._values = (ctypes.c_uint64 * possible_cpus())()
        self._key = ctypes.c_uint32(0)

    def sum(self, slot: int) -> int:
        """Raises BpfCallError: a count that cannot be read is unknown,
        never 0."""
        self._key.value = slot
        _elem(self._nr, BPF_MAP_LOOKUP_ELEM, self.fd, self._key, self._values,
              "reading a counter")
        return sum(self._values)


class _BatchAttr(ctypes.Structure):
    _fields_ = [("in_batch", ctypes.c_uint64), ("out_batch", ctypes.c_uint64),
                ("keys", ctypes.c_uint64), ("values", ctypes.c_uint64),
                ("count", ctypes.c_uint32), ("map_fd", ctypes.c_uint32),
                ("elem_flags", ctypes.c_uint64), ("flags", ctypes.c_uint64)]


class BatchTaker:
    """Takes every entry of a BPF hash map and deletes it, in a few system
    calls: BPF_MAP_LOOKUP_AND_DELETE_BATCH.  An entry the BPF program
    deletes concurrently is either taken here or deleted there, never both
    (the kernel holds the bucket's lock for each)."""

    CHUNK = 4096

    def __init__(self, map_fd: int, value_size: int, key_size: int = 8) -> None:
        nr = _SYS_BPF.get(platform.machine())
        if nr is None:
            raise BackendUnavailable(f"no bpf() syscall number known for {platform.machine()}")
        self.fd, self._nr, self.value_size, self.key_size = map_fd, nr, value_size, key_size
        self._keys = ctypes.create_string_buffer(key_size * self.CHUNK)
        self._values = ctypes.create_string_buffer(value_size * self.CHUNK)
        self._in = ctypes.c_uint64(0)
        self._out = ctypes.c_uint64(0)

    def take(self) -> list[bytes]:
        """The values of every entry, removed from the map.  Raises
        BpfCallError (EINVAL where the kernel has no batch operations,
        before Linux 5.6)."""
        return [value for _key, value in self.take_items()]

    def take_items(self, delete: bool = True) -> list[tuple[bytes, bytes]]:
        """Every entry's key and value, removed from the map unless not
        ``delete`` (raises as ``take``)."""
        cmd = BPF_MAP_LOOKUP_AND_DELETE_BATCH if delete else BPF_MAP_LOOKUP_BATCH
        out: list[tuple[bytes, bytes]] = []
        first = True
        while True:
            attr = _BatchAttr(0 if first else ctypes.addressof(self._in),
                              ctypes.addressof(self._out), ctypes.addressof(self._keys),
                              ctypes.addressof(self._values), self.CHUNK, self.fd, 0, 0)
            rc = _libc.syscall(self._nr, cmd, ctypes.byref(attr), ctypes.sizeof(attr))
            err = ctypes.get_errno() if rc != 0 else 0
            raw, keys = self._values.raw, self._keys.raw
            size, ksize = self.value_size, self.key_size
            out.extend((keys[i * ksize:(i + 1) * ksize], raw[i * size:(i + 1) * size])
                       for i in range(attr.count))
            if err == errno.ENOENT:   # the whole map was walked
                return out
            if err:
                raise BpfCallError("taking the pending sockets" if delete else "reading a map",
                                   err, os.strerror(err))
            first = False
            self._in.value = self._out.value
