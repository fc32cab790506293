"""The filters trace and watch share: -f PAT, -F HOST:PORT, -p PID."""

from __future__ import annotations

import fnmatch
import ipaddress
import re
from typing import Any, Iterable, NamedTuple

try:  # linear-time matching: a command line is attacker-controlled text
    import re2
except ImportError:  # pragma: no cover - a platform without google-re2 wheels
    re2 = None

from resreap.errors import UsageError
from resreap.model import V4_MAPPED_PREFIX, SockId


Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class EndpointPattern(NamedTuple):
    """A foreign endpoint to ignore: a network (None: any host) and a port
    (None: any port)."""

    network: Network | None
    port: int | None
    text: str

    def matches(self, sock: SockId) -> bool:
        if self.port is not None and sock.rport != self.port:
            return False
        if self.network is None:
            return True
        raw = sock.raddr
        if len(raw) == 16 and raw.startswith(V4_MAPPED_PREFIX):
            raw = raw[12:]  # a v4 peer on a dual-stack socket
        addr = ipaddress.ip_address(raw)
        return addr.version == self.network.version and addr in self.network


def _parse_host(host: str, text: str) -> Network | None:
    if host in ("*", ""):
        return None
    try:
        return ipaddress.ip_network(host, strict=False)
    except ValueError:
        raise UsageError(
            f"bad endpoint {text!r}: {host!r} is not an IP address or CIDR "
            "(examples: 127.0.0.1:2049, 10.0.0.0/8:*, [::1]:80, *:6379)") from None


def _parse_port(port: str, text: str) -> int | None:
    if port == "*":
        return None
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise UsageError(f"bad endpoint {text!r}: port {port!r} is not 1-65535 or *")
    return int(port)


def parse_endpoint(text: str) -> EndpointPattern:
    """HOST:PORT, [IPv6]:PORT, CIDR:PORT, *:PORT, HOST:* or a bare HOST."""
    raw = text.strip()
    if not raw:
        raise UsageError("bad endpoint '': expected HOST:PORT")
    if raw.startswith("["):
        host, sep, rest = raw[1:].partition("]")
        if not sep:
            raise UsageError(f"bad endpoint {text!r}: missing ']'")
        if rest and not rest.startswith(":"):
            raise UsageError(f"bad endpoint {text!r}: expected [IPv6]:PORT")
        port = rest[1:] if rest else "*"
        return EndpointPattern(_parse_host(host, text), _parse_port(port, text), text)
    if raw.count(":") > 1:  # a bare IPv6 address or network, any port
        return EndpointPattern(_parse_host(raw, text), None, text)
    host, sep, port = raw.partition(":")
    return EndpointPattern(_parse_host(host, text), _parse_port(port if sep else "*", text), text)


# Without RE2, Python's backtracking engine sees only this much of a command
# line: 'java.*-jar' against a megabyte of 'java' took 100 s.
BACKTRACKING_INPUT_MAX = 4096


class CommandPattern(NamedTuple):
    """-f: a regex searched in the command line, in linear time (RE2), or
    with Python's engine on a bounded prefix where RE2 is missing."""

    text: str
    compiled: Any
    linear: bool

    def search(self, cmdline: str) -> bool:
        if not self.linear:
            cmdline = cmdline[:BACKTRACKING_INPUT_MAX]
        return self.compiled.search(cmdline) is not None


def parse_command_pattern(pattern: str | None) -> CommandPattern | None:
    if pattern is None:
        return None
    if re2 is not None:
        options = re2.Options()
        options.log_errors = False  # the error is ours to report, in one line
        try:
            return CommandPattern(pattern, re2.compile(pattern, options), True)
        except re2.error as exc:
            why = exc.args[0].decode(errors="replace") if exc.args and isinstance(
                exc.args[0], bytes) else str(exc)
            raise UsageError(f"bad -f pattern {pattern!r}: {why} (matched with RE2, in linear "
                             "time: no backreferences or lookaround)") from None
    try:
        return CommandPattern(pattern, re.compile(pattern), False)
    except re.error as exc:
        raise UsageError(f"bad -f pattern {pattern!r}: {exc}") from None


def unit_matches(glob: str, where: Any) -> bool:
    """The system manager's unit matches the glob (fnmatch, case
    sensitive: unit names are)."""
    return where.unit is not None and fnmatch.fnmatchcase(where.unit, glob)


def container_matches(value: str, where: Any) -> bool:
    """An id prefix (4 or more lower-case hex digits) of the container, or
    its machine name (systemd-nspawn, libvirt)."""
    if where.container is None:
        return False
    if re.fullmatch(r"[0-9a-f]{4,64}", value):
        return where.container.startswith(value[:12]) or where.container == value
    return where.container == value


def pod_matches(namespace: str | None, pod: str | None, where: Any) -> bool:
    """Its pod's namespace and name match the globs given (None: any);
    only a process whose pod the runtime's records name (host/pods)."""
    found = where.pod
    if found is None or found.sandbox:
        return False
    return (namespace is None or fnmatch.fnmatchcase(found.namespace, namespace)) and \
        (pod is None or fnmatch.fnmatchcase(found.name, pod))


def check_kube_glob(glob: str, what: str) -> str:
    """A namespace or pod name glob: Kubernetes names (lower-case letters,
    digits, '-', '.') and * ? [] (shop, 'checkout-*')."""
    if not re.fullmatch(r"[a-z0-9.*?\[\]!-]{1,253}", glob):
        raise UsageError(f"bad {what} {glob!r}: expected a Kubernetes name or glob, "
                         "e.g. shop or 'checkout-*'")
    return glob


def check_unit_glob(glob: str, what: str = "--unit") -> str:
    """A unit glob: a system unit's name, * ? [] allowed (nginx.service,
    backend*.service)."""
    if not glob or "/" in glob or len(glob) > 256 or any(c.isspace() for c in glob):
        raise UsageError(f"bad {what} {glob!r}: expected a systemd unit name or glob, "
                         "e.g. nginx.service or 'backend*.service'")
    return glob


def check_container(value: str, what: str = "--container") -> str:
    """A container: 4-64 hex digits of its id, or a machine name."""
    ok = re.fullmatch(r"[0-9a-f]{4,64}", value) or re.fullmatch(
        r"[A-Za-z0-9][A-Za-z0-9._-]{0,199}", value)
    if not ok:
        raise UsageError(f"bad {what} {value!r}: expected 4 or more hex digits of a container "
                         "id (e.g. 3f2a9c1b), or a machine name (machinectl)")
    return value


class Filters(NamedTuple):
    command: CommandPattern | None = None
    ignore: tuple[EndpointPattern, ...] = ()
    pids: frozenset[int] = frozenset()
    unit: str | None = None       # --unit GLOB: the system unit (see engine/rules)
    container: str | None = None  # --container ID
    namespace: str | None = None  # --namespace GLOB: its pod's namespace (host/pods)
    pod: str | None = None        # --pod GLOB: its pod's name

    @classmethod
    def parse(cls, command: str | None, ignore: Iterable[str], pids: Iterable[int],
              unit: str | None = None, container: str | None = None,
              namespace: str | None = None, pod: str | None = None) -> "Filters":
        pids = frozenset(pids)
        for pid in pids:
            if pid <= 0:
                raise UsageError(f"bad -p value {pid}: a pid is a positive number")
        return cls(parse_command_pattern(command), tuple(parse_endpoint(t) for t in ignore), pids,
                   check_unit_glob(unit) if unit is not None else None,
                   check_container(container) if container is not None else None,
                   check_kube_glob(namespace, "--namespace") if namespace is not None else None,
                   check_kube_glob(pod, "--pod") if pod is not None else None)

    def ignores(self, sock: SockId) -> bool:
        return any(p.matches(sock) for p in self.ignore)

    @property
    def selects_processes(self) -> bool:
        return self.command is not None or bool(self.pids) or self.selects_places

    @property
    def selects_places(self) -> bool:
        """--unit, --container, --namespace or --pod: the process's cgroup
        must be read."""
        return any(v is not None for v in (self.unit, self.container, self.namespace, self.pod))

    def wants(self, pid: int, cmdline: str, where: Any = None) -> bool:
        """``where``: the process's Supervisor, needed with --unit or
        --container (None then: not wanted)."""
        if self.pids and pid not in self.pids:
            return False
        if self.selects_places:
            if where is None:
                return False
            if self.unit is not None and not unit_matches(self.unit, where):
                return False
            if self.container is not None and not container_matches(self.container, where):
                return False
            if (self.namespace is not None or self.pod is not None) and \
                    not pod_matches(self.namespace, self.pod, where):
                return False
        return self.command is None or self.command.search(cmdline)
