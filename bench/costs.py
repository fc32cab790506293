"""What one look costs at the current size, measured in this process with
resreap's own code: one sock_diag poll (the CLOSE_WAIT dump of every
network namespace, as the polling backend makes each interval), where its
time goes (per namespace: reading its TCP counters, its sockstat, its
dump), one poll once the namespaces have settled (quiet ones are not
dumped), and one full fd scan (every process's /proc/PID/fd, as the owner
lookup's background scan makes when a holder is not among the likely
ones)."""

from __future__ import annotations

import time

from resreap.model import TCP_CLOSE_WAIT

SETTLE_POLLS = 3


def _took(work, repeat: int = 1) -> float:
    """The fastest of ``repeat`` runs (the others met a cold cache or a
    neighbour)."""
    best = float("inf")
    for _ in range(repeat):
        began = time.perf_counter()
        work()
        best = min(best, time.perf_counter() - began)
    return best


def poll_parts(table) -> list[dict]:
    """Each watched namespace's share of one full poll."""
    parts = []
    for ino in table.watched():
        counters = _took(lambda: table.activity(ino), 5)
        sockstat = _took(lambda: table._families(ino), 5)
        found: list = []
        dump = _took(lambda: found.extend(table.dump_in(ino, (TCP_CLOSE_WAIT,)) or ()))
        parts.append({"netns": ino, "counters_us": round(counters * 1e6, 1),
                      "sockstat_us": round(sockstat * 1e6, 1),
                      "dump_ms": round(dump * 1e3, 3), "close_wait": len(found)})
    return parts


def quiet_poll(table) -> tuple[float, int, int]:
    """One poll of the polling backend once every namespace has settled:
    (seconds, namespaces dumped, namespaces skipped)."""
    from resreap.sources.poll_events import PollSource

    now = [time.monotonic()]
    source = PollSource(table, interval=1.0, clock=lambda: now[0])

    def poll() -> None:
        now[0] += 1.0  # an interval later, without waiting for it
        source.read(1.0)
    source.start()
    for _ in range(SETTLE_POLLS):
        poll()
    dumps, skips = source.dumps, source.skips
    took = _took(poll)
    return took, source.dumps - dumps, source.skips - skips


def measure() -> dict:
    from resreap.host.procinfo import HOST
    from resreap.host.sockets import SocketTable

    table = SocketTable()
    table.close_wait()                      # connect the namespaces first
    began = time.monotonic()
    table.close_wait()
    poll = time.monotonic() - began
    parts = poll_parts(table)
    quiet, dumped, skipped = quiet_poll(table)
    table.close()
    began = time.monotonic()
    sockets = 0
    for pid in HOST.pids():
        try:
            sockets += sum(1 for _ in HOST.socket_fds(pid))
        except Exception:  # unreadable or gone: as the scan skips it
            continue
    scan = time.monotonic() - began
    return {"poll_s": round(poll, 4), "poll_parts": parts, "quiet_poll_s": round(quiet, 5),
            "quiet_poll_dumps": dumped, "quiet_poll_skips": skipped,
            "scan_s": round(scan, 3), "scan_sockets": sockets}


if __name__ == "__main__":
    import json

    print(json.dumps(measure(), indent=1))
