"""Link events from real kernel changes in a throwaway namespace."""

from __future__ import annotations

import pytest

from tests.helpers import Daemon, NetNS

pytestmark = pytest.mark.netns


def test_peer_down_is_carrier_lost_on_near_end(ns: NetNS, daemon_factory) -> None:
    ns.veth("lm0", "lm0p")
    daemon: Daemon = daemon_factory()
    mark = daemon.mark()
    ns.ip("link", "set", "lm0p", "down")
    lost = daemon.wait_event(
        lambda e: e["type"] == "link.carrier_lost" and e["subject"] == "lm0", what="carrier_lost"
    )
    data = lost["data"]
    assert data["admin_up"] is True
    assert data["carrier"] is False
    assert data["changes"]["carrier"] == [True, False]
    assert data["kind"] == "veth"
    daemon.barrier()
    ours = [e for e in daemon.since(mark) if e["subject"] == "lm0"]
    assert [e["type"] for e in ours] == ["link.carrier_lost"]
