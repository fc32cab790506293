import ipaddress

import pytest
from hypothesis import given, strategies as st

from resreap.errors import UsageError
from resreap.engine.filters import Filters, parse_endpoint
from resreap.model import SockId

V4 = ipaddress.IPv4Address
V6 = ipaddress.IPv6Address


def sock4(raddr: str, rport: int) -> SockId:
    return SockId(4, V4("127.0.0.1").packed, 8080, V4(raddr).packed, rport)


def sock6(raddr: str, rport: int) -> SockId:
    return SockId(6, V6("::1").packed, 8080, V6(raddr).packed, rport)


@pytest.mark.parametrize("text,sock,hit", [
    ("127.0.0.1:2049", sock4("127.0.0.1", 2049), True),
    ("127.0.0.1:2049", sock4("127.0.0.1", 2050), False),
    ("127.0.0.2:2049", sock4("127.0.0.1", 2049), False),
    ("127.0.0.0/8:*", sock4("127.9.9.9", 1), True),
    ("*:6379", sock4("10.1.2.3", 6379), True),
    ("*:6379", sock6("::1", 6379), True),
    ("10.0.0.1", sock4("10.0.0.1", 5), True),
    ("[::1]:80", sock6("::1", 80), True),
    ("[::1]:80", sock6("::1", 81), False),
    ("[fe80::/10]:*", sock6("fe80::1", 9), True),
    ("[::1]", sock6("::1", 9), True),
    ("::1", sock6("::1", 9), True),
    # a v4 peer of a dual-stack socket appears v4-mapped
    ("127.0.0.1:2049", sock6("::ffff:127.0.0.1", 2049), True),
    ("127.0.0.1:2049", sock6("::1", 2049), False),
])
def test_endpoint_patterns(text, sock, hit):
    assert parse_endpoint(text).matches(sock) is hit


@pytest.mark.parametrize("bad", ["", "host:80", "127.0.0.1:0", "127.0.0.1:70000",
                                 "127.0.0.1:x", "[::1", "[::1]80", "1.2.3.4/40:*"])
def test_bad_endpoints_raise_usage_error(bad):
    with pytest.raises(UsageError) as info:
        parse_endpoint(bad)
    assert "\n" not in str(info.value)


def test_bad_regex_and_pid():
    with pytest.raises(UsageError, match="bad -f pattern"):
        Filters.parse("([", [], [])
    with pytest.raises(UsageError, match="positive"):
        Filters.parse(None, [], [0])


def test_command_and_pid_selection():
    f = Filters.parse("^java", [], [])
    assert f.wants(10, "java -jar x.jar") and not f.wants(10, "python java")
    f = Filters.parse(None, [], [10])
    assert f.wants(10, "x") and not f.wants(11, "x")
    assert not Filters().selects_processes and Filters().wants(1, "")


@given(st.text(max_size=60))
def test_any_endpoint_text_parses_or_raises_usage_error(text):
    try:
        parse_endpoint(text)
    except UsageError as exc:
        assert str(exc)


@given(st.text(max_size=40))
def test_any_pattern_compiles_or_raises_usage_error(text):
    try:
        Filters.parse(text, [], [])
    except UsageError as exc:
        assert str(exc)
