"""What one look costs at the current size, measured in this process with
resreap's own code: one sock_diag poll (the CLOSE_WAIT dump of every
network namespace, as the polling backend makes each interval) and one full
fd scan (every process's /proc/PID/fd, as the owner lookup's background
scan makes when a holder is not among the likely ones)."""

from __future__ import annotations

import time


def measure() -> dict:
    from resreap.host.procinfo import HOST
    from resreap.host.sockets import SocketTable

    table = SocketTable()
    table.close_wait()                      # connect the namespaces first
    began = time.monotonic()
    table.close_wait()
    poll = time.monotonic() - began
    table.close()
    began = time.monotonic()
    sockets = 0
    for pid in HOST.pids():
        try:
            sockets += sum(1 for _ in HOST.socket_fds(pid))
        except Exception:  # unreadable or gone: as the scan skips it
            continue
    scan = time.monotonic() - began
    return {"poll_s": round(poll, 4), "scan_s": round(scan, 3), "scan_sockets": sockets}
