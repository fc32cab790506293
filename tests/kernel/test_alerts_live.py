"""The shipped alert rules end to end (#25): Debian's Prometheus on
loopback scrapes a real `watch`, evaluates packaging/prometheus/resreap-alerts.yml
as shipped, and the reap storm alert fires through Prometheus's API when
four leaking processes are reaped; the holder of CLOSE_WAIT sockets that
do not count yet shows in the metrics Prometheus stored."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from procs import until
from watchrun import WatchRun
from resreap.engine.decisions import Event

pytestmark = [pytest.mark.kernel, pytest.mark.usefixtures("bpf_ready")]

RULES = Path(__file__).resolve().parents[2] / "packaging" / "prometheus" / "resreap-alerts.yml"


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _api(base: str, path: str, **params) -> dict:
    url = f"{base}/api/v1/{path}"
    if params:
        url += "?" + urllib.parse.urlencode(params)
    with urllib.request.urlopen(url, timeout=5) as r:
        return json.loads(r.read())["data"]


@pytest.fixture
def prometheus(tmp_path):
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.skip("prometheus is missing (Debian's; scripts/setup --test installs it)")
    metrics, web = _port(), _port()
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        f"rule_files: ['{RULES}']\n"
        "scrape_configs:\n"
        f"  - job_name: resreap\n    static_configs: [{{targets: ['127.0.0.1:{metrics}']}}]\n")
    proc = subprocess.Popen([binary, f"--config.file={config}",
                             f"--storage.tsdb.path={tmp_path / 'data'}",
                             f"--web.listen-address=127.0.0.1:{web}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{web}"

    def ready() -> bool:
        try:
            return urllib.request.urlopen(f"{base}/-/ready", timeout=2).status == 200
        except OSError:
            return False
    try:
        assert until(ready, 30), "prometheus did not become ready"
        yield base, metrics
    finally:
        proc.terminate()
        proc.wait(30)


@pytest.mark.alone  # the per-holder metrics see every process on the host
def test_a_reap_storm_fires_its_alert_through_prometheus(prometheus, resreap_bin, actors, tag):
    base, port = prometheus
    run = WatchRun(resreap_bin, "--backend", "bpf", "-f", tag[4:], "-i", "0.5", "-w", "0.5",
                   "--metrics", f"127.0.0.1:{port}")
    try:
        run.wait_for(lambda e: e["event"] == Event.START)
        # Scraped at least once before anything happens (kills from 0).
        assert until(lambda: _api(base, "query", query="resreap_kills_total")["result"], 30)
        # A holder whose sockets do not count yet (unread: --stall) is seen.
        quiet = actors("leaky-server", "127.0.0.1", "unread", f"{tag}-quiet")
        actors("clients", "127.0.0.1", quiet.port, 2, tag).send("close", "CLOSED")
        # Four leakers, distinct command lines (the storm guard bounds kills
        # of one command line), reaped: more than three kills.
        for i in range(4):
            leaker = actors("leaky-server", "127.0.0.1", f"{tag}-{i}")
            actors("clients", "127.0.0.1", leaker.port, 2, tag).send("close", "CLOSED")
            assert run.outcome(leaker.pid)["result"] == "terminated"

        def firing() -> bool:
            alerts = _api(base, "alerts")["alerts"]
            return any(a["labels"]["alertname"] == "ResreapReapStorm" and a["state"] == "firing"
                       for a in alerts)
        assert until(firing, 40), (_api(base, "alerts"),
                                   _api(base, "query", query="resreap_kills_total"))
        held = _api(base, "query", query="resreap_close_wait_sockets_by_holder")["result"]
        assert any(float(r["value"][1]) >= 2 for r in held), held
        # The reaped leakers' sockets left with them (a scrape may still
        # hold the last kill's): nothing counts, while the quiet holder shows.
        def nothing_counts() -> bool:
            counting = _api(base, "query", query="sum(resreap_counting_sockets)")["result"]
            return not counting or counting[0]["value"][1] == "0"
        assert until(nothing_counts, 10)
        assert quiet.alive()
    finally:
        assert run.stop() == 0


@pytest.mark.alone  # the per-holder metrics see every process on the host
def test_a_leak_heading_for_emfile_raises_its_alert_through_prometheus(
        prometheus, resreap_bin, actors, tag):
    """#34: a server with a soft fd limit of 200 leaking one socket every
    0.25 s is forecast to run out within the alert's 30 minutes; the rule,
    as shipped, goes pending (then firing after its minute) on the
    forecast Prometheus scraped.  The leaker is not the watch's to reap
    (another tag): it is watched, not killed."""
    base, port = prometheus
    run = WatchRun(resreap_bin, "--backend", "bpf", "-f", tag[4:], "-i", "0.5",
                   "--metrics", f"127.0.0.1:{port}")
    try:
        other = "tag=fc" + tag[6:]
        leaker = actors("limited-server", "127.0.0.1", 200, "leak", other)
        actors("paced-clients", "127.0.0.1", leaker.port, 0.25, 1, other).send("go", "GO")

        def raised() -> bool:
            return any(a["labels"]["alertname"] == "ResreapFdExhaustionSoon"
                       and a["labels"].get("comm") == "lim-leak"
                       and a["state"] in ("pending", "firing")
                       for a in _api(base, "alerts")["alerts"])
        assert until(raised, 35), _api(base, "query", query="resreap_fd_exhaustion_seconds")
        (series,) = [r for r in _api(base, "query", query="resreap_fd_exhaustion_seconds")["result"]
                     if r["metric"].get("comm") == "lim-leak"]
        assert 0 < float(series["value"][1]) < 60        # it runs out within a minute
        assert leaker.alive() and not run.find(lambda e: e["event"] == Event.REAP)
    finally:
        assert run.stop() == 0
