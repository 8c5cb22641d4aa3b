"""systemd's readiness protocol (sd_notify(3)), without libsystemd.

Under `Type=notify` systemd sets `NOTIFY_SOCKET` (a Unix datagram socket
path, or `@name` for the abstract namespace); the service sends newline
separated `KEY=VALUE` lines: `READY=1` once it serves, `STOPPING=1` when it
begins to shut down, `STATUS=...` for `systemctl status`, and `WATCHDOG=1`
at least every `WATCHDOG_USEC` microseconds when the unit sets WatchdogSec.
Outside systemd (no NOTIFY_SOCKET) every call does nothing.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping


class Notifier:
    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        address = env.get("NOTIFY_SOCKET", "")
        if address.startswith("@"):
            address = "\0" + address[1:]
        self._address = address if address.startswith(("/", "\0")) else ""
        self._watchdog_s: float | None = None
        usec, pid = env.get("WATCHDOG_USEC", ""), env.get("WATCHDOG_PID", "")
        if usec.isdigit() and int(usec) > 0 and (not pid or pid == str(os.getpid())):
            self._watchdog_s = int(usec) / 1e6

    @property
    def enabled(self) -> bool:
        return bool(self._address)

    @property
    def watchdog_interval(self) -> float | None:
        """How often to send WATCHDOG=1 (half systemd's timeout); None when off."""
        return None if self._watchdog_s is None or not self.enabled else self._watchdog_s / 2

    def send(self, **fields: str) -> bool:
        """Send KEY=VALUE lines; False when not under systemd or the send failed."""
        if not self._address:
            return False
        message = "\n".join(f"{key}={value}" for key, value in fields.items()).encode()
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.sendto(message, self._address)
        except OSError:
            return False  # a supervisor that went away must not take the node down
        return True

    def ready(self, status: str) -> bool:
        return self.send(READY="1", STATUS=status, MAINPID=str(os.getpid()))

    def stopping(self, status: str) -> bool:
        return self.send(STOPPING="1", STATUS=status)

    def status(self, status: str) -> bool:
        return self.send(STATUS=status)

    def watchdog(self) -> bool:
        return self.send(WATCHDOG="1")
