import struct

from resreap.model import SockId, format_endpoint
from resreap.sockdiag import _MSG, _parse, _request, states_mask


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
    d = _parse(6, memoryview(payload))
    assert d.sock == SockId(6, b"\0" * 15 + b"\1", 80, b"\0" * 15 + b"\1", 4000)
    assert (d.state, d.inode, d.cookie, d.rqueue, d.uid) == (8, 4242, 5 | (1 << 32), 3, 1000)


def test_states_mask_and_endpoint_format():
    assert states_mask([8, 10]) == (1 << 8) | (1 << 10)
    assert format_endpoint(6, b"\0" * 10 + b"\xff\xff\x7f\0\0\1", 80) == "[::ffff:127.0.0.1]:80"
