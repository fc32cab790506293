"""systemd's notify protocol (sd_notify), without libsystemd: a datagram to
$NOTIFY_SOCKET.  EXTEND_TIMEOUT_USEC while the BPF program loads (where bcc
compiles it, a busy host may take longer than the start timeout); READY=1
once watching; STATUS= what it watches (`systemctl status` shows it);
WATCHDOG=1 from the event loop, so a hung loop gets resreap restarted
(WatchdogSec in the unit)."""

from __future__ import annotations

import os
import socket
import time


class Notifier:
    def __init__(self) -> None:
        addr = os.environ.get("NOTIFY_SOCKET", "")
        self._addr = "\0" + addr[1:] if addr.startswith("@") else addr
        usec = os.environ.get("WATCHDOG_USEC", "")
        # Ping at half the watchdog period, as sd_watchdog_enabled() advises.
        self.every = int(usec) / 2e6 if usec.isdigit() and int(usec) > 0 else None
        self._next = 0.0

    def send(self, message: str) -> None:
        if not self._addr:
            return
        try:
            # socket() inside the try too: out of fds, a ping is skipped, the
            # loop goes on (the watchdog notices if it stays so).
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
                s.sendto(message.encode(), self._addr)
        except OSError:
            pass  # systemd gone or not listening, or no fd: nothing to tell

    def ready(self, status: str) -> None:
        self.send(f"READY=1\nSTATUS={status}")

    def status(self, status: str) -> None:
        self.send(f"STATUS={status}")

    def extend(self, seconds: float, status: str) -> None:
        """Ask for ``seconds`` more to start (or stop), saying why."""
        self.send(f"EXTEND_TIMEOUT_USEC={int(seconds * 1e6)}\nSTATUS={status}")

    def alive(self) -> None:
        if self.every is None:
            return
        now = time.monotonic()
        if now >= self._next:
            self._next = now + self.every
            self.send("WATCHDOG=1")

    def stopping(self) -> None:
        self.send("STOPPING=1")
