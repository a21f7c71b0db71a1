"""systemd ``Type=notify`` support: READY/RELOADING/STOPPING/STATUS and watchdog pings.

Everything is a no-op when ``NOTIFY_SOCKET`` is not set, so the daemon runs the same under systemd, in a test or in a
terminal. The socket may be a path or an abstract name (``@name``). Sending never raises: a vanished notify socket
is logged once and then ignored.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import Mapping

log = logging.getLogger(__name__)


class Notifier:
    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        env = os.environ if env is None else env
        raw = env.get("NOTIFY_SOCKET", "")
        self.address: str | bytes | None = None
        if raw.startswith("@"):
            self.address = b"\0" + raw[1:].encode()
        elif raw.startswith("/"):
            self.address = raw
        self.watchdog_usec = 0
        wd = env.get("WATCHDOG_USEC", "")
        wd_pid = env.get("WATCHDOG_PID", "")
        if wd.isdigit() and (not wd_pid or wd_pid == str(os.getpid())):
            self.watchdog_usec = int(wd)
        self._sock: socket.socket | None = None
        self._warned = False
        self.sent: list[str] = []  # the last few messages, for status and tests

    @property
    def enabled(self) -> bool:
        return self.address is not None

    @property
    def watchdog_interval_s(self) -> float | None:
        """How often to ping: half of WATCHDOG_USEC, or None without a watchdog."""
        if not self.enabled or self.watchdog_usec <= 0:
            return None
        return self.watchdog_usec / 2e6

    def send(self, *fields: str) -> bool:
        if self.address is None:
            return False
        msg = "\n".join(fields)
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.sendto(msg.encode(), self.address)
        except OSError as e:
            if not self._warned:
                log.warning("sd_notify to %r failed: %s (further failures not logged)", self.address, e)
                self._warned = True
            return False
        self.sent = [*self.sent[-15:], msg]
        return True

    def ready(self, status: str | None = None) -> bool:
        return self.send("READY=1", *([f"STATUS={status}"] if status else []))

    def reloading(self) -> bool:
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        return self.send("RELOADING=1", f"MONOTONIC_USEC={usec}")

    def stopping(self) -> bool:
        return self.send("STOPPING=1")

    def status(self, text: str) -> bool:
        return self.send(f"STATUS={text}")

    def watchdog(self) -> bool:
        return self.send("WATCHDOG=1")

    async def watchdog_loop(self) -> None:
        """Ping from the event loop at half of WATCHDOG_USEC, so a stuck loop gets the service restarted."""
        interval = self.watchdog_interval_s
        if interval is None:
            return
        while True:
            self.watchdog()
            await asyncio.sleep(interval)

    def close(self) -> None:
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.close()
            self._sock = None
