"""The procfs reader (hosts without sock_diag) on a busy host's table:
N TIME_WAIT lines (the kernel lists them all, it cannot filter by state)
and one socket in CLOSE_WAIT.  Times a dump of the CLOSE_WAIT sockets and
one socket's lookup, the two queries the fallback makes.

    .venv/bin/python bench/procnet.py [--lines 100000] [--repeat 5]

No root, no kernel: the table is synthetic, in /proc/net/tcp's format.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from resreap.host.procnet import ProcNetTcp

HEADER = ("  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt"
          "   uid  timeout inode\n")
TIME_WAIT = ("{sl:4d}: 0100007F:1F90 0100007F:{port:04X} 06 00000000:00000000 03:00000A3B"
             " 00000000     0        0 0 3 0000000000000000\n")
CLOSE_WAIT = ("{sl:4d}: 0100007F:1F90 0200007F:D431 08 00000000:00000000 00:00000000"
              " 00000000  1000        0 4242 1 0000000000000000 20 4 30 10 -1\n")


def best(repeat: int, query) -> float:
    times = []
    for _ in range(repeat):
        began = time.perf_counter()
        query()
        times.append(time.perf_counter() - began)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lines", type=int, default=100_000)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as root:
        net = Path(root, "1", "net")
        net.mkdir(parents=True)
        rows = [TIME_WAIT.format(sl=i, port=1024 + i % 60000) for i in range(args.lines)]
        rows.append(CLOSE_WAIT.format(sl=args.lines))
        (net / "tcp").write_text(HEADER + "".join(rows))
        (net / "tcp6").write_text(HEADER)
        reader = ProcNetTcp(1, root)
        [leak] = reader.dump([8])
        assert reader.lookup(leak.sock) == leak
        print(f"{args.lines} TIME_WAIT lines: dump(CLOSE_WAIT) "
              f"{best(args.repeat, lambda: reader.dump([8])) * 1000:.0f} ms, "
              f"lookup {best(args.repeat, lambda: reader.lookup(leak.sock)) * 1000:.0f} ms "
              f"(best of {args.repeat})")


if __name__ == "__main__":
    main()
