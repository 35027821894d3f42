"""sd_notify lifecycle and SIGHUP reload, against a notify socket bound by the test.

READY only once the cache is filled, WATCHDOG at half of $WATCHDOG_USEC, RELOADING → READY
around SIGHUP, the old config kept when the new one is broken, STOPPING on SIGTERM.
"""

from __future__ import annotations

import itertools
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import Daemon, NetNS, default_config, wait_for

pytestmark = pytest.mark.netns


class NotifySocket:
    """A datagram socket standing in for systemd's notify socket; keeps what it receives."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.setblocking(False)
        self.messages: list[tuple[float, dict[str, str]]] = []

    def poll(self) -> list[tuple[float, dict[str, str]]]:
        while True:
            try:
                data = self.sock.recv(65536)
            except BlockingIOError:
                return self.messages
            fields = dict(line.split("=", 1) for line in data.decode().splitlines() if "=" in line)
            self.messages.append((time.monotonic(), fields))

    def keys(self) -> list[str]:
        """The first key of each message, e.g. ["READY", "WATCHDOG", ...]."""
        return [next(iter(m)) for _, m in self.poll()]

    def wait(self, key: str, after: int = 0, timeout: float = 10.0) -> int:
        """Wait for a message whose first key is ``key`` at index ≥ ``after``; its index."""

        def find() -> int | None:
            keys = self.keys()
            return next((i for i in range(after, len(keys)) if keys[i] == key), None)

        found = wait_for(lambda: find() is not None, timeout, what=f"{key}=1 after #{after}")
        assert found
        index = find()
        assert index is not None
        return index


@pytest.fixture
def notify(tmp_path: Path) -> Iterator[NotifySocket]:
    sock = NotifySocket(tmp_path / "notify.sock")
    yield sock
    sock.sock.close()


def test_notify_sequence_with_watchdog_and_reloads(
    ns: NetNS, daemon_factory, notify: NotifySocket, tmp_path: Path
) -> None:
    events = tmp_path / "events.jsonl"
    config = default_config(events)
    daemon: Daemon = daemon_factory(config=config, start=False)
    daemon.start(env={"NOTIFY_SOCKET": str(notify.path), "WATCHDOG_USEC": "400000"})
    ready = notify.wait("READY")
    # READY comes after the cache is filled: daemon.started is already out
    assert daemon.events()[0]["type"] == "daemon.started"
    assert "links with carrier" in notify.poll()[ready][1]["STATUS"]

    # the watchdog: pings every WATCHDOG_USEC/2 = 0.2 s
    wait_for(lambda: notify.keys().count("WATCHDOG") >= 6, timeout=10, what="6 watchdog pings")
    pings = [t for t, m in notify.poll() if "WATCHDOG" in m]
    gaps = [b - a for a, b in itertools.pairwise(pings)]
    assert all(0.1 < gap < 0.6 for gap in gaps), gaps

    # a good reload: a new file sink appears, the old sink keeps going
    second = tmp_path / "second.jsonl"
    daemon.config_path.write_text(config + f'\n[sinks.second]\ntype = "file"\npath = "{second}"\n')
    mark = len(notify.poll())
    assert daemon.proc is not None
    daemon.proc.send_signal(signal.SIGHUP)
    reloading = notify.wait("RELOADING", after=mark)
    assert "MONOTONIC_USEC" in notify.poll()[reloading][1]
    notify.wait("READY", after=reloading)
    ns.veth("lm0", "lm0p")
    wait_for(lambda: second.exists() and "lm0" in second.read_text(), what="new sink gets events")
    daemon.wait_event(lambda e: e["type"] == "link.added" and e["subject"] == "lm0")

    # a broken reload is rejected: the old config (both sinks) stays, the watchdog goes on
    daemon.config_path.write_text(config + "\n[sinks.bad]\ntype = 'carrier-pigeon'\n")
    mark = len(notify.poll())
    daemon.proc.send_signal(signal.SIGHUP)
    reloading = notify.wait("RELOADING", after=mark)
    ready = notify.wait("READY", after=reloading)
    assert "reload rejected" in daemon.stderr()
    watchdog_after = notify.wait("WATCHDOG", after=ready)
    assert watchdog_after > ready
    ns.ip("link", "set", "lm0p", "up")
    ns.ip("link", "set", "lm0", "up")
    wait_for(lambda: "link.admin_up" in second.read_text(), what="second sink still fed")

    # SIGTERM: STOPPING, then a clean exit
    mark = len(notify.poll())
    assert daemon.stop() == 0
    notify.wait("STOPPING", after=mark)


def test_no_notify_socket_sends_nothing_and_fails_nothing(ns: NetNS, daemon: Daemon) -> None:
    assert daemon.stop() == 0
    assert "sd_notify" not in daemon.stderr()
