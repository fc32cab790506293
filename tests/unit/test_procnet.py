"""/proc/net/tcp{,6} parsing: host-order words, hex ports, junk lines."""

import ipaddress

from resreap.host.procinfo import Proc
from resreap.host.procnet import ProcNetTcp, parse

TCP = """  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1F90 00000000:0000 0A 00000000:00000003 00:00000000 00000000     0        0 1681 1 0000000076ce5da3 100 0 0 10 0
   1: 0100007F:1F90 0200007F:D431 08 00000000:00000000 00:00000000 00000000  1000        0 4242 1 0000000000000000 20 4 30 10 -1
garbage line
   2: ZZZZ:1 0:0 08 0:0 0 0 0 0 0
"""
TCP6 = """  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000001000000:0050 00000000000000000000000001000000:9C40 08 00000000:00000000 00:00000000 00000000     0        0 777 1 0000000000000000 20 4 0 10 -1
   1: 0000000000000000FFFF00000100007F:0050 0000000000000000FFFF00000100007F:9C41 08 00000000:00000000 00:00000000 00000000     0        0 778 1 0000000000000000 20 4 0 10 -1
"""


def test_ipv4_table():
    socks = parse(TCP, 4)
    assert len(socks) == 2
    listener, cw = socks
    assert listener.state == 10 and listener.rqueue == 3 and listener.inode == 1681
    assert cw.sock.laddr == ipaddress.IPv4Address("127.0.0.1").packed and cw.sock.lport == 8080
    assert cw.sock.raddr == ipaddress.IPv4Address("127.0.0.2").packed and cw.sock.rport == 0xD431
    assert (cw.state, cw.uid, cw.inode) == (8, 1000, 4242)
    assert [s.inode for s in parse(TCP, 4, frozenset({8}))] == [4242]


def test_ipv6_table_and_v4_mapped():
    loop, mapped = parse(TCP6, 6)
    assert loop.sock.laddr == ipaddress.IPv6Address("::1").packed and loop.sock.rport == 40000
    assert mapped.sock.local == "[::ffff:127.0.0.1]:80"


def test_reader_on_a_fixture_tree(tmp_path):
    net = tmp_path / "42" / "net"
    net.mkdir(parents=True)
    (net / "tcp").write_text(TCP)
    reader = ProcNetTcp(42, Proc(str(tmp_path)))  # no tcp6: IPv6 disabled
    assert [d.inode for d in reader.dump([8])] == [4242]
    target = parse(TCP, 4)[1].sock
    assert reader.lookup(target).inode == 4242


def test_lookup_finds_one_socket_by_its_printed_endpoints(tmp_path):
    net = tmp_path / "42" / "net"
    net.mkdir(parents=True)
    (net / "tcp").write_text(TCP)
    (net / "tcp6").write_text(TCP6)
    reader = ProcNetTcp(42, Proc(str(tmp_path)))
    for table, family in ((TCP, 4), (TCP6, 6)):
        for want in parse(table, family):
            assert reader.lookup(want.sock) == want
    cw = parse(TCP, 4)[1].sock
    assert reader.lookup(cw._replace(rport=cw.rport + 1)) is None
    # the listener shares the local endpoint, not the remote one
    assert reader.lookup(cw).inode == 4242

