"""sd_notify for ``Type=notify``: READY, STATUS, WATCHDOG, RELOADING, STOPPING.

Uses the sdnotify package's connected datagram socket, made non-blocking so that a stalled
service manager can never stall the event loop. Without ``$NOTIFY_SOCKET`` nothing is sent
and nothing fails.
"""

from __future__ import annotations

import os
import time

import sdnotify
import structlog

log = structlog.get_logger("linkmond.notify")


class Notifier:
    """Sends sd_notify messages when systemd asked for them, and is a no-op otherwise."""

    def __init__(self) -> None:
        self._notifier: sdnotify.SystemdNotifier | None = None
        if os.environ.get("NOTIFY_SOCKET"):
            notifier = sdnotify.SystemdNotifier()
            if notifier.socket is not None:
                notifier.socket.setblocking(False)
                self._notifier = notifier
            else:
                log.warning("NOTIFY_SOCKET is set but cannot be reached")

    def send(self, *assignments: str) -> None:
        """Send ``KEY=value`` lines in one datagram; failures are logged, never raised."""
        if self._notifier is None:
            return
        try:
            self._notifier.socket.send("\n".join(assignments).encode())
        except OSError as exc:
            log.warning("sd_notify failed", error=str(exc), message=assignments[0])

    def ready(self, status: str) -> None:
        """READY=1: the socket is subscribed and the initial dump is in the cache."""
        self.send("READY=1", f"STATUS={status}")

    def reloading(self) -> None:
        """RELOADING=1 with the monotonic timestamp newer systemd versions expect."""
        self.send(
            "RELOADING=1", f"MONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}"
        )

    def stopping(self) -> None:
        """STOPPING=1: shutdown has begun."""
        self.send("STOPPING=1", "STATUS=stopping: draining sinks")

    def status(self, text: str) -> None:
        """STATUS=: the one line ``systemctl status`` shows."""
        self.send(f"STATUS={text}")

    def watchdog(self) -> None:
        """WATCHDOG=1: the event loop is alive."""
        self.send("WATCHDOG=1")


def watchdog_interval() -> float | None:
    """Half of ``$WATCHDOG_USEC`` in seconds, if the watchdog is on and meant for this process."""
    usec = os.environ.get("WATCHDOG_USEC")
    if not usec:
        return None
    pid = os.environ.get("WATCHDOG_PID")
    if pid and pid.isdigit() and int(pid) != os.getpid():
        return None
    try:
        value = int(usec)
    except ValueError:
        return None
    return value / 2 / 1e6 if value > 0 else None
