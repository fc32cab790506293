"""Prometheus metrics (--metrics ADDR:PORT).  The event loop publishes a
snapshot about once a second; a scrape only reads the latest one, so the
HTTP thread never touches live state.  Per-process series are limited to
the TOP holders (bounded label cardinality); the rest is summed."""

from __future__ import annotations

import ipaddress
from typing import Any

from resreap.errors import UsageError

TOP = 20


def parse_listen(text: str) -> tuple[str, int]:
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


class Exporter:
    def __init__(self, listen: str, backend: str) -> None:
        try:
            from prometheus_client import start_http_server
            from prometheus_client.core import REGISTRY
        except ImportError as exc:
            raise UsageError("--metrics needs prometheus-client: pip install prometheus-client") \
                from exc
        host, port = parse_listen(listen)
        self.backend = backend
        self.snapshot: dict[str, Any] = {}
        REGISTRY.register(self)
        try:
            start_http_server(port, addr=host)
        except OSError as exc:
            raise UsageError(f"--metrics {listen}: {exc.strerror}") from None

    def collect(self):
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        snap = self.snapshot
        info = GaugeMetricFamily("resreap_backend_info", "Event source in use", labels=["backend"])
        info.add_metric([self.backend], 1)
        yield info
        yield GaugeMetricFamily("resreap_close_wait_sockets",
                                "Sockets in CLOSE_WAIT (after -F)", value=snap.get("tracked", 0))
        per = GaugeMetricFamily("resreap_counting_sockets",
                                f"Sockets past the grace, per holder (top {TOP})",
                                labels=["pid", "comm"])
        for pid, comm, count in snap.get("top", ()):
            per.add_metric([str(pid), comm], count)
        yield per
        yield GaugeMetricFamily("resreap_counting_sockets_other",
                                f"Sockets past the grace held by processes beyond the top {TOP}",
                                value=snap.get("other", 0))
        kills = CounterMetricFamily("resreap_kills", "Kill sequences by outcome", labels=["result"])
        for result, n in snap.get("outcomes", {}).items():
            kills.add_metric([result], n)
        yield kills
        reaped = CounterMetricFamily("resreap_reaped_sockets",
                                     "Sockets behind reap decisions, by evidence", labels=["evidence"])
        for kind, n in snap.get("evidence", {}).items():
            reaped.add_metric([kind], n)
        yield reaped
        yield CounterMetricFamily("resreap_hook_failures", "Hooks that exited non-zero or timed out",
                                  value=snap.get("hook_failures", 0))
        events = CounterMetricFamily("resreap_events", "Transitions seen", labels=["kind"])
        for kind, n in snap.get("events", {}).items():
            events.add_metric([kind], n)
        yield events
        yield CounterMetricFamily("resreap_events_lost", "Events dropped in the kernel",
                                  value=snap.get("lost", 0))
