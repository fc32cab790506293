import struct

from resreap.model import SockId, format_endpoint
from resreap.host.sockdiag import _MSG, _RTATTR, INET_DIAG_INFO, _parse, _request, states_mask


def test_request_layout():
    sock = SockId(4, b"\x7f\0\0\1", 8080, b"\x7f\0\0\2", 5555)
    raw = _request(4, 1, 0xFFF, 7, sock)
    length, mtype, flags, seq, _ = struct.unpack_from("=IHHII", raw)
    assert (length, mtype, flags, seq) == (len(raw), 20, 1, 7) and length == 16 + 56
    assert raw[24:26] == (8080).to_bytes(2, "big") and raw[26:28] == (5555).to_bytes(2, "big")
    assert raw[28:32] == b"\x7f\0\0\1" and raw[44:48] == b"\x7f\0\0\2"


def test_parse_reply():
    payload = _MSG.pack(10, 8, 0, 0, (80).to_bytes(2, "big"), (4000).to_bytes(2, "big"),
                        b"\0" * 15 + b"\1", b"\0" * 15 + b"\1", 0, 5, 1, 0, 3, 0, 1000, 4242)
    d = _parse(6, memoryview(payload), False)
    assert d.sock == SockId(6, b"\0" * 15 + b"\1", 80, b"\0" * 15 + b"\1", 4000)
    assert (d.state, d.inode, d.cookie, d.rqueue, d.uid) == (8, 4242, 5 | (1 << 32), 3, 1000)
    assert d.idle_sent is None and d.kid == d.cookie


def test_parse_reply_with_tcp_info():
    """Send-Q and tcpi_last_data_sent: the evidence that a process is still
    using its socket."""
    msg = _MSG.pack(2, 8, 0, 0, (80).to_bytes(2, "big"), (4000).to_bytes(2, "big"),
                    b"\x7f\0\0\1" + b"\0" * 12, b"\x7f\0\0\2" + b"\0" * 12, 0, 0, 0,
                    0, 1, 512, 0, 4242)
    info = bytearray(104)
    struct.pack_into("=I", info, 44, 2500)       # tcpi_last_data_sent, ms
    other = _RTATTR.pack(8, 99) + b"\0" * 4     # an attribute to skip
    attr = _RTATTR.pack(_RTATTR.size + len(info), INET_DIAG_INFO) + bytes(info)
    d = _parse(4, memoryview(msg + other + attr), True)
    assert (d.rqueue, d.wqueue, d.idle_sent) == (1, 512, 2.5)
    assert d.kid == 4242  # no cookie: the inode identifies it
    request = _request(4, 1, 0xFFF, 1, None, 2)
    assert request[16 + 2] == 2  # idiag_ext asks for INET_DIAG_INFO


def test_states_mask_and_endpoint_format():
    assert states_mask([8, 10]) == (1 << 8) | (1 << 10)
    assert format_endpoint(6, b"\0" * 10 + b"\xff\xff\x7f\0\0\1", 80) == "[::ffff:127.0.0.1]:80"


def test_bpf_map_errors_are_translated_at_their_edge():
    """A bpf() call that fails on the ring's counter or the pending map
    raises BpfCallError (a KernelQueryError), never a raw OSError nor a
    silent 0: a count that could not be read is unknown."""
    import os

    import pytest

    from resreap.errors import BpfCallError, KernelQueryError
    from resreap.sources.ringbuf import BatchTaker, PerCpuCounters

    r, w = os.pipe()  # an fd that is no BPF map
    try:
        with pytest.raises(BpfCallError) as err:
            PerCpuCounters(r).sum(0)
        assert isinstance(err.value, KernelQueryError) and err.value.errno
        with pytest.raises(BpfCallError):
            BatchTaker(r, 64).take()
    finally:
        os.close(r)
        os.close(w)
