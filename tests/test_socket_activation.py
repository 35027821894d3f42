"""Socket activation: the rtnetlink socket PID 1 makes for ``linkmond.socket`` (with its
receive buffer forced) is the one the daemon reads, for its whole run.

A stand-in for PID 1 creates the socket as systemd's ``ListenNetlink=route`` and
``ReceiveBuffer=`` do, leaves it joined to a group with a message queued (what a crashed
earlier run leaves behind), puts it at descriptor 3 with ``LISTEN_PID``/``LISTEN_FDS`` and
execs the daemon. The booted-container test (test_nspawn.py) does the same with real systemd.
"""

from __future__ import annotations

import re
import signal
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.helpers import Daemon, NetNS, default_config, wait_for

pytestmark = pytest.mark.netns

#: what systemd does for linkmond.socket, then exec: argv = [size, program, args...]
PID1 = r"""
import os, socket, subprocess, sys
size = int(sys.argv[1])
sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 0)  # NETLINK_ROUTE
sock.setsockopt(socket.SOL_SOCKET, 33, size)  # SO_RCVBUFFORCE, as ReceiveBuffer= does
sock.bind((0, 0))
sock.setsockopt(270, 1, 1)  # SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, RTNLGRP_LINK: left behind
subprocess.run(["ip", "link", "add", "lmstale", "type", "veth", "peer", "name", "lmstalep"],
               check=True)  # announced on it before the daemon runs: stale for the daemon
if sock.fileno() != 3:
    os.dup2(sock.fileno(), 3)
os.set_inheritable(3, True)  # as systemd passes it
os.environ.update(LISTEN_PID=str(os.getpid()), LISTEN_FDS="1", LISTEN_FDNAMES="linkmond.socket")
os.execv(sys.argv[2], sys.argv[2:])
"""

PASSED = 24 * 1024 * 1024
OWN = 1024 * 1024  # [monitor] receive_buffer: what the daemon would open its own socket with


class ActivatedDaemon(Daemon):
    """``linkmond run`` started the way systemd starts it from linkmond.socket."""

    def command(self) -> list[str]:
        run = [sys.executable, "-m", "linkmond", "run", "-c", str(self.config_path)]
        pid1 = [sys.executable, "-c", PID1, str(PASSED), sys.executable]
        return ["ip", "netns", "exec", self.ns.name, *pid1, *run[1:]]


def receive_buffers(ns: NetNS, pid: int) -> list[int]:
    """``rb`` of every rtnetlink socket of ``pid``, as ``ss -f netlink -m -p`` shows them."""
    out = ns.run("ss", "-f", "netlink", "-m", "-p").stdout
    return [
        int(m.group(1))
        for line in out.splitlines()
        if f"/{pid} " in line and line.split()[2].startswith("rtnl:")
        for m in [re.search(r"\brb(\d+)", line)]
        if m
    ]


@pytest.fixture
def activated(ns: NetNS, tmp_path: Path) -> Callable[..., ActivatedDaemon]:
    made: list[ActivatedDaemon] = []

    def make(extra: str = "") -> ActivatedDaemon:
        config = default_config(tmp_path / "events.jsonl", extra)
        daemon = ActivatedDaemon(ns, tmp_path, f"[monitor]\nreceive_buffer = {OWN}\n" + config)
        made.append(daemon)
        return daemon.start()  # type: ignore[return-value]

    yield make  # type: ignore[misc]
    for daemon in made:
        daemon.stop()


def test_the_daemon_reads_the_passed_socket_with_its_forced_buffer(
    ns: NetNS, activated: Callable[..., ActivatedDaemon]
) -> None:
    daemon = activated()
    assert daemon.proc is not None
    started = daemon.wait_event(lambda e: e["type"] == "daemon.started")
    assert started["data"]["receive_buffer"] == PASSED  # not the 1 MiB of its own socket
    assert "using the netlink socket systemd passed" in daemon.stderr()
    # the kernel doubles what it was given: PASSED on the passed socket, the default on the
    # dump socket; no socket of the daemon's own with [monitor] receive_buffer
    buffers = receive_buffers(ns, daemon.proc.pid)
    assert 2 * PASSED in buffers, buffers
    assert 2 * OWN not in buffers, buffers

    # events flow through it, for the groups the daemon joined itself (addresses too)
    ns.veth("lm0", "lm0p")
    ns.ip("addr", "add", "192.0.2.1/24", "dev", "lm0")
    ns.ip("link", "set", "lm0p", "down")
    daemon.wait_event(lambda e: e["type"] == "link.carrier_lost" and e["subject"] == "lm0")
    daemon.wait_event(lambda e: e["type"] == "addr.added" and e["data"]["ifname"] == "lm0")
    # what was queued before the daemon ran is older than its dump: discarded, not replayed
    assert not [e for e in daemon.events() if e["subject"] in ("lmstale", "lmstalep")]


def test_a_reload_never_shrinks_the_passed_buffer(
    ns: NetNS, activated: Callable[..., ActivatedDaemon]
) -> None:
    daemon = activated()
    assert daemon.proc is not None
    daemon.config_path.write_text(
        f"[monitor]\nreceive_buffer = {2 * OWN}\n" + default_config(daemon.events_path)
    )
    daemon.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: '"reloaded"' in daemon.stderr(), what="the reload")
    daemon.barrier()
    assert 2 * PASSED in receive_buffers(ns, daemon.proc.pid)
    assert daemon.stop() == 0


def test_without_a_passed_socket_the_daemon_opens_its_own(
    ns: NetNS, daemon_factory: Callable[..., Daemon], tmp_path: Path
) -> None:
    daemon = daemon_factory(
        f"[monitor]\nreceive_buffer = {OWN}\n" + default_config(tmp_path / "events.jsonl")
    )
    started = daemon.wait_event(lambda e: e["type"] == "daemon.started")
    assert started["data"]["receive_buffer"] == OWN
    assert "systemd passed" not in daemon.stderr()
