"""Prometheus metrics (--metrics ADDR:PORT).  The event loop publishes a
snapshot about once a second; a scrape only reads the latest one, so the
HTTP thread never touches live state.  Per-process series are limited to
the TOP holders (bounded label cardinality); the rest is summed.

The endpoint is one thread serving every connection through a selector: at
most MAX_CONNECTIONS open (the oldest is dropped for a new one), each given
REQUEST_TIMEOUT to send its request.  prometheus_client's own server starts
a thread per connection and keeps idle ones forever: under a task limit
(systemd TasksMax) idle connections made resreap unable to start a kill.
It binds loopback unless told otherwise: metrics name processes.

``/healthz`` answers 200 while the event loop has published a snapshot
within HEALTH_STALE seconds, 503 otherwise: a liveness probe for a stalled
loop (Kubernetes), the same meaning as the systemd watchdog ping."""

from __future__ import annotations

import errno
import ipaddress
import logging
import selectors
import socket
import threading
import time

from resreap.errors import UsageError
from resreap.model import KILL_BUCKETS, Result, Snapshot

# The outcomes that are kills (resreap_kills_total): the process was ended.
KILLED = frozenset(r.value for r in Result if r.killed_it)

log = logging.getLogger(__name__)

TOP = 20
MAX_CONNECTIONS = 64
REQUEST_TIMEOUT = 2.0
REQUEST_MAX = 8192
# Out of fds, accept() fails and leaves the connection queued: pause this
# long before accepting again.
ACCEPT_PAUSE = 0.1
HEALTH_STALE = 10.0


def parse_listen(text: str) -> tuple[str, int]:
    """ADDR:PORT, [IPv6]:PORT, or a bare PORT (loopback)."""
    if text.isdigit():
        text = f"127.0.0.1:{text}"
    host, sep, port = text.rpartition(":")
    host = host.strip("[]") or "127.0.0.1"
    try:
        ipaddress.ip_address(host)
        number = int(port)
    except ValueError:
        number = 0
    if not sep or not 0 < number < 65536:
        raise UsageError(f"bad --metrics {text!r}: expected ADDR:PORT, e.g. 127.0.0.1:9469")
    return host, number



# Per-holder gauges name the pod: only the largest holders have a series,
# gone with them.  Counters do not: a counter's series lives as long as the
# watch, and pod names change with every rollout and restart (a Deployment's
# hash and a random suffix), so a crash-looping pod would add one per kill;
# a namespace and a container name stay.
HOLDER_LABELS = ["comm", "unit", "container", "namespace", "pod"]
OUTCOME_LABELS = ["result", "rule", "namespace", "container"]


def _holder_key(h) -> tuple[str, ...]:
    return (h.comm, h.unit, h.container, h.namespace, h.pod)

class Endpoint:
    """A bounded HTTP/1.0 server for GET requests: ``routes`` maps a path to
    a function returning (status, content type, body)."""

    def __init__(self, host: str, port: int, routes) -> None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._listener = socket.socket(family, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind((host, port))
        self._listener.listen(16)
        self._listener.setblocking(False)
        self._routes = routes
        self.address = self._listener.getsockname()
        self.accept_pauses = 0  # times accept() ran out of fds
        threading.Thread(target=self._serve, name="metrics", daemon=True).start()

    def _serve(self) -> None:
        sel = selectors.DefaultSelector()
        sel.register(self._listener, selectors.EVENT_READ)
        open_: dict[socket.socket, list] = {}  # conn -> [deadline, request bytes]

        def drop(conn: socket.socket) -> None:
            # Idempotent: a connection may be dropped for a new one while
            # its own key waits later in the same batch.
            if open_.pop(conn, None) is None:
                return
            sel.unregister(conn)
            conn.close()

        paused_until = 0.0
        while True:
            now = time.monotonic()
            deadlines = [d for d, _ in open_.values()]
            if paused_until > now:
                deadlines.append(paused_until)
            elif paused_until:
                paused_until = 0.0
                sel.register(self._listener, selectors.EVENT_READ)
            timeout = max(0.0, min(deadlines) - now) if deadlines else None
            try:
                ready = sel.select(timeout)
                for key, _mask in ready:
                    if key.fileobj is self._listener:
                        if self._accept(sel, open_, drop):
                            continue
                        # Out of fds: the connection stays queued and select
                        # would report it again at once; stop listening for a
                        # moment instead of spinning a core.
                        self.accept_pauses += 1
                        paused_until = time.monotonic() + ACCEPT_PAUSE
                        sel.unregister(self._listener)
                        continue
                    if key.fileobj in open_:  # not dropped earlier in this batch
                        self._read(key.fileobj, open_, drop)
                now = time.monotonic()
                for conn in [c for c, (deadline, _) in open_.items() if deadline <= now]:
                    drop(conn)
            except Exception:  # noqa: BLE001 - the only thread of /metrics and /healthz
                log.exception("metrics endpoint: a connection failed; serving on")

    def _accept(self, sel, open_: dict, drop) -> bool:
        """Take one connection; False when out of fds (EMFILE, ENFILE)."""
        try:
            conn, _addr = self._listener.accept()
        except OSError as exc:
            return exc.errno not in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)
        if len(open_) >= MAX_CONNECTIONS:
            drop(min(open_, key=lambda c: open_[c][0]))
        conn.setblocking(False)
        open_[conn] = [time.monotonic() + REQUEST_TIMEOUT, b""]
        sel.register(conn, selectors.EVENT_READ)
        return True

    def _read(self, conn: socket.socket, open_: dict, drop) -> None:
        try:
            data = conn.recv(4096)
        except OSError:
            data = b""
        if not data:
            drop(conn)
            return
        open_[conn][1] += data
        request = open_[conn][1]
        if b"\r\n\r\n" in request or b"\n\n" in request or len(request) > REQUEST_MAX:
            self._answer(conn, request)
            drop(conn)

    def _answer(self, conn: socket.socket, request: bytes) -> None:
        parts = request.split(b" ", 2)
        path = parts[1].split(b"?")[0].decode("ascii", "replace") if len(parts) > 2 else ""
        route = self._routes.get(path) if parts[0] == b"GET" else None
        status, ctype, body = route() if route else ("404 Not Found", "text/plain", b"not found\n")
        head = (f"HTTP/1.0 {status}\r\nContent-Type: {ctype}\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode()
        try:
            conn.setblocking(True)
            conn.settimeout(REQUEST_TIMEOUT)
            conn.sendall(head + body)
        except OSError:
            pass


class Exporter:
    def __init__(self, listen: str, backend: str, loader: str = "",
                 bpf_expected: bool = False) -> None:
        """``loader``: core or bcc (BPF), empty when polling;
        ``bpf_expected``: BPF was asked for (auto or bpf), so polling is a
        fallback to alert on."""
        try:
            from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
            from prometheus_client.core import REGISTRY
        except ImportError as exc:
            raise UsageError("--metrics needs prometheus-client: pip install prometheus-client") \
                from exc
        host, port = parse_listen(listen)
        self.backend = backend
        self.loader = loader
        self.fallback = bpf_expected and backend != "bpf"
        self.reload_ok, self.reload_at = True, 0.0
        self._snapshot = Snapshot()
        self._beat = time.monotonic()
        REGISTRY.register(self)

        def metrics():
            return "200 OK", CONTENT_TYPE_LATEST, generate_latest(REGISTRY)

        def health():
            age = time.monotonic() - self._beat
            if age <= HEALTH_STALE:
                return "200 OK", "text/plain", b"ok\n"
            return "503 Service Unavailable", "text/plain", f"stalled {age:.0f}s\n".encode()

        try:
            self.endpoint = Endpoint(host, port, {"/metrics": metrics, "/": metrics,
                                                  "/healthz": health})
        except OSError as exc:
            hint = ""
            if exc.errno in (errno.EAFNOSUPPORT, errno.EPERM, errno.EACCES):
                # The shipped unit allows no IP (RestrictAddressFamilies).
                hint = (" (under the systemd unit: install "
                        "packaging/resreap.service.d/network.conf as a drop-in)")
            raise UsageError(f"--metrics {listen}: {exc.strerror}{hint}") from None

    def reloaded(self, ok: bool) -> None:
        self.reload_ok, self.reload_at = ok, time.time()

    @staticmethod
    def _per_holder(name: str, text: str, holders):
        from prometheus_client.core import GaugeMetricFamily

        family = GaugeMetricFamily(name, text, labels=HOLDER_LABELS)
        summed: dict[tuple[str, ...], int] = {}
        for h in holders:
            key = _holder_key(h)
            summed[key] = summed.get(key, 0) + h.count
        for key, n in summed.items():
            family.add_metric(list(key), n)
        return family

    @staticmethod
    def _exhaustion(holders):
        """Seconds until each leaking holder's fds run out at its pace, the
        soonest TOP; the same labels as the other per-holder gauges, and
        where two processes share them, the sooner (what an alert on "out
        of fds within 30 minutes" is about).  Absent: no forecast."""
        from prometheus_client.core import GaugeMetricFamily

        family = GaugeMetricFamily(
            "resreap_fd_exhaustion_seconds",
            f"Seconds until a leaking process runs out of fds at the pace its counting "
            f"sockets grow (the soonest {TOP})", labels=HOLDER_LABELS)
        soonest: dict[tuple[str, ...], float] = {}
        for h in holders:
            if h.exhausted_in is not None:
                key = _holder_key(h)
                soonest[key] = min(soonest.get(key, h.exhausted_in), h.exhausted_in)
        for key, seconds in soonest.items():
            family.add_metric(list(key), round(seconds, 1))
        return family

    @staticmethod
    def _durations(snap: Snapshot):
        from prometheus_client.core import HistogramMetricFamily

        buckets, total = [], 0
        counts = snap.kill_buckets or (0,) * (len(KILL_BUCKETS) + 1)
        for bound, n in zip((*KILL_BUCKETS, float("inf")), counts):
            total += n
            buckets.append(("+Inf" if bound == float("inf") else f"{bound:g}", total))
        return HistogramMetricFamily("resreap_kill_duration_seconds",
                                     "From the first signal (or hook) to the process's end, "
                                     "for kills", buckets=buckets, sum_value=snap.kill_seconds)

    @property
    def snapshot(self) -> Snapshot:
        return self._snapshot

    @snapshot.setter
    def snapshot(self, value: Snapshot) -> None:
        """Published by the event loop: also its heartbeat for /healthz."""
        self._snapshot = value
        self._beat = time.monotonic()

    def collect(self):
        snap = self.snapshot
        yield from self._about()
        yield from self._sockets(snap)
        yield from self._reaps(snap)
        yield from self._events(snap)

    def _about(self):
        """What runs: version, event source, reloads."""
        from prometheus_client.core import GaugeMetricFamily
        from resreap import __version__

        build = GaugeMetricFamily("resreap_build_info", "The running resreap's version",
                                  labels=["version"])
        build.add_metric([__version__], 1)
        yield build
        info = GaugeMetricFamily("resreap_backend_info",
                                 "Event source in use, and how its BPF program was loaded",
                                 labels=["backend", "loader"])
        info.add_metric([self.backend, self.loader], 1)
        yield info
        yield GaugeMetricFamily("resreap_bpf_fallback",
                                "1: BPF was expected but the polling backend runs",
                                value=int(self.fallback))
        yield GaugeMetricFamily("resreap_last_reload_success",
                                "1: the last reload applied (0: rejected, the old settings stay)",
                                value=int(self.reload_ok))
        yield GaugeMetricFamily("resreap_last_reload_timestamp_seconds",
                                "When the last reload was answered (0: none yet)",
                                value=round(self.reload_at, 3))

    def _sockets(self, snap: Snapshot):
        """CLOSE_WAIT now: how many, how old, who holds them."""
        from prometheus_client.core import GaugeMetricFamily

        yield GaugeMetricFamily("resreap_close_wait_sockets",
                                "Sockets in CLOSE_WAIT (after -F)", value=snap.tracked)
        yield GaugeMetricFamily("resreap_close_wait_oldest_seconds",
                                "How long the oldest CLOSE_WAIT socket has been there",
                                value=round(snap.oldest, 3))
        # Per holder, labelled by what survives a restart (no pid): a
        # restarted service keeps its series; the largest TOP only.
        yield self._per_holder("resreap_counting_sockets",
                               f"Sockets past the grace, per holder (top {TOP})", snap.top)
        yield self._per_holder("resreap_close_wait_sockets_by_holder",
                               f"CLOSE_WAIT sockets now, counting or not yet, per holder "
                               f"(top {TOP}): a process heading for a reap", snap.holding)
        yield self._exhaustion(snap.exhausting)
        yield GaugeMetricFamily("resreap_counting_sockets_other",
                                f"Sockets past the grace held by processes beyond the top {TOP}",
                                value=snap.other)

    def _reaps(self, snap: Snapshot):
        """What was done: kills, every outcome, how long kills took."""
        from prometheus_client.core import CounterMetricFamily

        kills = CounterMetricFamily("resreap_kills", "Processes killed, by how (terminated, "
                                    "killed: SIGKILL was needed), the rule that judged them and "
                                    "their pod's namespace and container name",
                                    labels=OUTCOME_LABELS)
        outcomes = CounterMetricFamily("resreap_outcomes", "Every kill sequence's outcome, "
                                       "kills included (spared, dry-run, resolved, replaced...), "
                                       "by rule, namespace and container", labels=OUTCOME_LABELS)
        by_rule = snap.rule_outcomes
        for (rule, result, namespace, container), n in sorted(by_rule.items()):
            outcomes.add_metric([result, rule, namespace, container], n)
        # Kills exist from the start, at 0, for every rule in force (and any
        # that killed before a reload), outside pods: increase() then counts
        # the first.  In a pod, a series starts with its first outcome.
        places = {(rule, ns, c) for rule, _, ns, c in by_rule}
        places |= {(rule, "", "") for rule in snap.rules}
        for rule, namespace, container in sorted(places):
            for result in sorted(KILLED):
                kills.add_metric([result, rule, namespace, container],
                                 by_rule.get((rule, result, namespace, container), 0))
        yield kills
        yield outcomes
        yield self._durations(snap)
        reaped = CounterMetricFamily("resreap_reaped_sockets",
                                     "Sockets behind reap decisions, by evidence", labels=["evidence"])
        for kind, n in snap.evidence.items():
            reaped.add_metric([kind], n)
        yield reaped
        revived = CounterMetricFamily("resreap_revivals",
                                      "What became of killed processes' systemd services",
                                      labels=["revive"])
        for how, n in snap.revivals.items():
            revived.add_metric([how], n)
        yield revived
        yield CounterMetricFamily("resreap_hook_failures", "Hooks that exited non-zero or timed out",
                                  value=snap.hook_failures)

    def _events(self, snap: Snapshot):
        from prometheus_client.core import CounterMetricFamily

        events = CounterMetricFamily("resreap_events", "Transitions seen", labels=["kind"])
        for kind, n in snap.events.items():
            events.add_metric([kind], n)
        yield events
        yield CounterMetricFamily("resreap_events_lost", "Events dropped in the kernel",
                                  value=snap.lost)
