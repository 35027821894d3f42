"""Hold-down (flap damping) in the shared fan-out: short flaps are swallowed and counted."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Sequence
from pathlib import Path

import pytest

from linkmond.config import FileSinkConfig
from linkmond.events import Event, EventFactory
from linkmond.fanout import Fanout, HoldDown, SinkWorker
from linkmond.sinks.base import Sink
from tests.helpers import Daemon, NetNS, default_config, wait_for


class Recorder(Sink):
    """Keeps what it receives."""

    def __init__(self) -> None:
        self.received: list[Event] = []

    async def emit(self, events: Sequence[Event]) -> None:
        self.received.extend(events)


def link_event(factory: EventFactory, type_: str, ifindex: int = 3) -> Event:
    return factory.make(type_, "lm0", {"ifindex": ifindex, "ifname": "lm0"})


async def test_flap_shorter_than_hold_down_delivers_nothing_and_is_counted() -> None:
    factory = EventFactory("/linkmond/t", "default")
    delivered: list[Event] = []
    hold = HoldDown(0.2, delivered.append, lambda _: True)
    hold.offer(link_event(factory, "link.carrier_lost"))
    hold.offer(link_event(factory, "link.carrier_up"))
    assert delivered == []
    hold.offer(link_event(factory, "link.carrier_lost"))
    await asyncio.sleep(0.3)  # the hold-down itself is the thing under test
    assert [e.type for e in delivered] == ["link.carrier_lost"]
    assert delivered[0].data["flaps_suppressed"] == 1
    assert json.loads(delivered[0].json_line)["data"]["flaps_suppressed"] == 1
    hold.offer(link_event(factory, "link.carrier_up"))
    assert [e.type for e in delivered] == ["link.carrier_lost", "link.carrier_up"]
    assert "flaps_suppressed" not in delivered[1].data


async def test_admin_down_flap_is_swallowed_and_other_links_pass() -> None:
    factory = EventFactory("/linkmond/t", "default")
    delivered: list[Event] = []
    hold = HoldDown(10, delivered.append, lambda _: True)
    hold.offer(link_event(factory, "link.admin_down", ifindex=3))
    hold.offer(link_event(factory, "link.changed", ifindex=4))
    hold.offer(factory.make("addr.added", "lm0", {"ifindex": 3}))
    hold.offer(link_event(factory, "link.admin_up", ifindex=3))
    assert [e.type for e in delivered] == ["link.changed", "addr.added"]
    hold.offer(link_event(factory, "link.admin_down", ifindex=3))
    hold.release_all()  # shutdown delivers what is still held
    assert delivered[-1].type == "link.admin_down"
    assert delivered[-1].data["flaps_suppressed"] == 1


async def test_admin_flap_swallows_the_carrier_up_that_follows() -> None:
    factory = EventFactory("/linkmond/t", "default")
    delivered: list[Event] = []
    hold = HoldDown(10, delivered.append, lambda _: True)
    down = factory.make(
        "link.admin_down",
        "lm0",
        {
            "ifindex": 3,
            "ifname": "lm0",
            "changes": {"admin_up": [True, False], "carrier": [True, False]},
        },
    )
    hold.offer(down)
    hold.offer(link_event(factory, "link.admin_up"))
    hold.offer(link_event(factory, "link.carrier_up"))  # the kernel's order for down; up
    assert delivered == []
    hold.offer(link_event(factory, "link.changed"))
    assert delivered[0].type == "link.changed"
    assert delivered[0].data["flaps_suppressed"] == 1


async def test_flaps_are_damped_even_when_the_sink_does_not_want_recoveries() -> None:
    factory = EventFactory("/linkmond/t", "default")
    delivered: list[Event] = []
    wanted = {"link.carrier_lost", "link.admin_down"}
    hold = HoldDown(10, delivered.append, wanted.__contains__)
    hold.offer(link_event(factory, "link.carrier_lost"))
    hold.offer(link_event(factory, "link.carrier_up"))
    hold.offer(link_event(factory, "link.changed"))  # not wanted: the flap count waits
    assert delivered == []
    hold.offer(link_event(factory, "link.carrier_lost"))
    hold.release_all()
    assert [e.type for e in delivered] == ["link.carrier_lost"]
    assert delivered[0].data["flaps_suppressed"] == 1


async def test_hold_down_state_is_forgotten_with_the_link() -> None:
    """50,000 links each flap once and are removed, and the sink does not want
    ``link.removed``: nothing of them may stay behind (each left a flap count before)."""
    factory = EventFactory("/linkmond/t", "default")
    delivered: list[Event] = []
    wanted = {"link.carrier_lost", "link.carrier_up", "link.admin_down", "link.admin_up"}
    hold = HoldDown(10, delivered.append, wanted.__contains__)
    admin_flap = {"admin_up": [True, False], "carrier": [True, False]}
    for ifindex in range(100, 50_100):
        if ifindex % 2:
            hold.offer(link_event(factory, "link.carrier_lost", ifindex))
            hold.offer(link_event(factory, "link.carrier_up", ifindex))
        else:  # an admin flap also waits for the carrier_up that follows admin_up
            hold.offer(
                factory.make(
                    "link.admin_down",
                    "lm0",
                    {"ifindex": ifindex, "ifname": "lm0", "changes": admin_flap},
                )
            )
            hold.offer(link_event(factory, "link.admin_up", ifindex))
        hold.offer(link_event(factory, "link.removed", ifindex))
    assert delivered == []
    assert (len(hold.flaps), len(hold.held), len(hold._quiet_until)) == (0, 0, 0)


async def test_a_removed_links_flap_count_rides_on_its_removal_never_on_a_successor() -> None:
    factory = EventFactory("/linkmond/t", "default")
    delivered: list[Event] = []
    hold = HoldDown(10, delivered.append, lambda _: True)
    hold.offer(link_event(factory, "link.carrier_lost", ifindex=3))
    hold.offer(link_event(factory, "link.carrier_up", ifindex=3))
    hold.offer(link_event(factory, "link.removed", ifindex=3))
    assert [e.type for e in delivered] == ["link.removed"]
    assert delivered[0].data["flaps_suppressed"] == 1

    # a sink that does not want link.removed: the count goes with the link
    delivered.clear()
    hold = HoldDown(10, delivered.append, lambda type_: type_ != "link.removed")
    hold.offer(link_event(factory, "link.carrier_lost", ifindex=3))
    hold.offer(link_event(factory, "link.carrier_up", ifindex=3))
    hold.offer(link_event(factory, "link.removed", ifindex=3))
    # the kernel reuses the ifindex for a new link: a clean slate, whose own flaps count
    hold.offer(link_event(factory, "link.added", ifindex=3))
    assert [e.type for e in delivered] == ["link.added"]
    assert "flaps_suppressed" not in delivered[0].data
    hold.offer(link_event(factory, "link.carrier_lost", ifindex=3))
    hold.offer(link_event(factory, "link.carrier_up", ifindex=3))
    hold.offer(link_event(factory, "link.changed", ifindex=3))
    assert [e.type for e in delivered] == ["link.added", "link.changed"]
    assert delivered[1].data["flaps_suppressed"] == 1


async def test_links_of_two_namespaces_with_the_same_ifindex_are_held_apart() -> None:
    """Every namespace numbers its links from 1: hold-down keys on (netns, ifindex)."""
    factory = EventFactory("/linkmond/t", "default")
    delivered: list[Event] = []
    hold = HoldDown(10, delivered.append, lambda _: True)

    def in_ns(netns: str, type_: str) -> Event:
        return factory.make(type_, "eth0", {"ifindex": 2, "ifname": "eth0"}, netns=netns)

    hold.offer(in_ns("blue", "link.carrier_lost"))
    hold.offer(in_ns("red", "link.carrier_up"))  # not blue's recovery
    assert [(e.netns, e.type) for e in delivered] == [("red", "link.carrier_up")]
    assert list(hold.held) == [("blue", 2)]
    hold.offer(in_ns("red", "link.carrier_lost"))
    # blue is let go of: its held loss is delivered and nothing of it is kept; red's stays
    hold.forget_netns("blue")
    assert [(e.netns, e.type) for e in delivered][1:] == [("blue", "link.carrier_lost")]
    assert list(hold.held) == [("red", 2)]
    hold.offer(in_ns("red", "link.carrier_up"))
    assert hold.flaps == {("red", 2): 1}
    assert len(delivered) == 2


async def test_a_sink_forgets_a_link_whose_removal_its_interface_filter_drops() -> None:
    """Renamed out of the sink's ``interfaces`` before it was removed: the removal never
    reaches the hold-down, which must forget the link all the same."""
    factory = EventFactory("/linkmond/t", "default")
    options = FileSinkConfig(
        type="file", path=Path("/nonexistent/unused"), interfaces=["eth*"], hold_down=10
    )
    worker = SinkWorker("held", Recorder(), options)
    hold = worker.hold_down
    assert hold is not None

    def named(type_: str, ifname: str) -> Event:
        return factory.make(type_, ifname, {"ifindex": 5, "ifname": ifname})

    worker.offer(named("link.carrier_lost", "eth0"))
    worker.offer(named("link.carrier_up", "eth0"))
    assert hold.flaps == {("default", 5): 1}
    worker.offer(named("link.changed", "wan0"))  # renamed: filtered out from here on
    # the publisher builds the removal for it all the same (it asks the fan-out first)
    fanout = Fanout([worker])
    assert not fanout.wants("link.changed", "wan0")
    assert fanout.wants("link.removed", "wan0")
    worker.offer(named("link.removed", "wan0"))
    assert hold.flaps == {}


def _read(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.netns
def test_real_flaps_with_hold_down(ns: NetNS, daemon_factory, tmp_path: Path) -> None:
    """A 0.2 s flap delivers nothing; a 3 s loss delivers one loss after 2 s, then the recovery."""
    ns.veth("lm0", "lm0p")
    ns.veth("lm1", "lm1p")
    held = tmp_path / "held.jsonl"
    config = default_config(
        tmp_path / "events.jsonl",
        f'\n[sinks.held]\ntype = "file"\npath = "{held}"\nevents = ["link.*"]\nhold_down = "2s"\n',
    )
    daemon: Daemon = daemon_factory(config=config)

    def seen(path: Path | None, type_: str, subject: str) -> list[dict]:
        events = daemon.events() if path is None else _read(path)
        return [e for e in events if e["type"] == type_ and e["subject"] == subject]

    # a short flap on lm0: the unfiltered sink sees it, the held one must not
    ns.ip("link", "set", "lm0p", "down")
    daemon.wait_event(lambda e: e["type"] == "link.carrier_lost" and e["subject"] == "lm0")
    time.sleep(0.2)  # the flap's duration: part of the scenario, not synchronisation
    ns.ip("link", "set", "lm0p", "up")
    daemon.wait_event(lambda e: e["type"] == "link.carrier_up" and e["subject"] == "lm0")

    # a long loss on lm1, begun after lm0's flap: once the held sink has it, lm0's hold-down
    # (which started earlier) has expired too
    ns.ip("link", "set", "lm1p", "down")
    lost_at = time.time()
    wait_for(lambda: seen(held, "link.carrier_lost", "lm1"), timeout=10, what="held lm1 loss")
    time.sleep(max(0.0, 3.0 - (time.time() - lost_at)))  # make it a 3 s loss
    ns.ip("link", "set", "lm1p", "up")
    wait_for(lambda: seen(held, "link.carrier_up", "lm1"), timeout=10, what="lm1 recovery")

    assert seen(held, "link.carrier_lost", "lm0") == []
    assert seen(held, "link.carrier_up", "lm0") == []
    lm1 = [e for e in _read(held) if e["subject"] == "lm1" and e["type"].startswith("link.carrier")]
    assert [e["type"] for e in lm1] == ["link.carrier_lost", "link.carrier_up"]
    # the held sink delivered the very same event, only later
    unheld = seen(None, "link.carrier_lost", "lm1")[0]
    assert lm1[0]["id"] == unheld["id"]

    # the swallowed flap is reported on lm0's next delivered event
    ns.ip("link", "set", "lm0", "mtu", "1400")
    changed = wait_for(lambda: seen(held, "link.changed", "lm0"), timeout=10, what="lm0 mtu")
    assert changed[0]["data"]["flaps_suppressed"] == 1
