"""Scale behaviour end to end: lossless sinks under a burst, silent flushes, cost per change.

The daemon runs as a subprocess in a throwaway namespace; what counts is what reaches the
file, compared with what the kernel itself says (``ip -j route show table all``).
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import Daemon, NetNS, wait_for

pytestmark = pytest.mark.netns


def _config(events: Path, extra: str = "") -> str:
    return (
        '[log]\nlevel = "info"\nformat = "json"\n\n'
        f'[sinks.file]\ntype = "file"\npath = "{events}"\n{extra}'
    )


Route = tuple[str, str, str, int | None, str | None]  # family, table, dst, ifindex, gateway


def _after(initial: set[Route], events: list[dict[str, Any]]) -> set[Route]:
    """The routes there are after ``events``, starting from ``initial`` (no multipath here)."""
    routes = set(initial)
    for e in events:
        if not e["type"].startswith("route."):
            continue
        d = e["data"]
        route = (d["family"], d["table"], d["dst"], d["ifindex"], d["gateway"])
        if e["type"] == "route.removed":
            routes.discard(route)
        else:
            routes.add(route)
    return routes


def _kernel_routes(ns: NetNS) -> set[Route]:
    """What the kernel says, as ``ip -j route show table all`` prints it."""
    links = {link["ifname"]: link["ifindex"] for link in json.loads(ns.ip("-j", "link").stdout)}
    found = set()
    for option, family, host in (("-4", "inet", "/32"), ("-6", "inet6", "/128")):
        for r in json.loads(ns.ip(option, "-j", "route", "show", "table", "all").stdout):
            dst = r["dst"]
            if dst != "default" and "/" not in dst:
                dst += host
            table = r.get("table", "main")
            found.add((family, table, dst, links.get(r.get("dev", "")), r.get("gateway")))
    return found


def _settled(ns: NetNS) -> None:
    """Wait until IPv6 duplicate address detection is over: it adds routes a moment later."""
    wait_for(
        lambda: "tentative" not in ns.ip("-6", "addr").stdout, timeout=15, what="DAD to finish"
    )


def test_a_blocking_sink_with_16_slots_loses_nothing_in_a_20k_route_burst(
    ns: NetNS, daemon_factory, tmp_path: Path
) -> None:
    ns.veth("lm0", "lm0p")
    ns.ip("addr", "add", "192.0.2.1/24", "dev", "lm0")
    _settled(ns)
    extra = (
        "buffer = { max_events = 16 }\n\n"  # when_full defaults to block for a file sink
        '[sinks.console]\ntype = "console"\njson = true\n'
        # drop_newest by default for the console; smaller than the file's, so that the 8+
        # events the reader publishes between the file's pauses overflow it for sure
        "buffer = { max_events = 4 }\n"
    )
    daemon: Daemon = daemon_factory(config=_config(tmp_path / "events.jsonl", extra))
    initial = _kernel_routes(ns)  # what the daemon's silent initial dump found
    n = 20_000
    batch = tmp_path / "routes.batch"
    batch.write_text(
        "".join(f"route add 198.51.{100 + i // 256}.{i % 256}/32 dev lm0\n" for i in range(n))
    )
    ns.ip("-batch", str(batch))
    wanted = {f"198.51.{100 + i // 256}.{i % 256}/32" for i in range(n)}

    def missing() -> int:
        added = {e["subject"] for e in daemon.events() if e["type"] == "route.added"}
        return len(wanted - added)

    wait_for(lambda: missing() == 0, timeout=60, what="every route in the file")
    daemon.barrier()
    assert daemon.stop() == 0
    events = daemon.events()
    added = Counter(e["subject"] for e in events if e["type"] == "route.added")
    assert [s for s in wanted if added[s] != 1] == [], "a route reported twice"
    # the daemon's view (its start plus every event) is exactly what the kernel has
    assert _after(initial, events) == _kernel_routes(ns)
    stopping = events[-1]
    assert stopping["type"] == "daemon.stopping"
    sinks = stopping["data"]["sinks"]
    assert sinks["file"]["dropped"] == 0
    assert sinks["console"]["dropped"] > 0, "the drop_newest console should have dropped"
    stats = stopping["data"]["stats"]
    assert stats["pauses"] >= 1
    assert stats["paused_seconds"] > 0
    console_lines = daemon.stdout_path.read_text().splitlines()
    # what the console counted, plus daemon.stopping itself (counted before it was sent)
    assert len(console_lines) == sinks["console"]["delivered"] + 1


def test_a_silent_flush_reports_every_route_once_and_costs_per_device_dumps(
    ns: NetNS, daemon_factory, tmp_path: Path
) -> None:
    ns.veth("lm0", "lm0p")
    ns.veth("lm1", "lm1p")
    ns.ip("addr", "add", "192.0.2.1/24", "dev", "lm0")
    ns.ip("addr", "add", "198.51.100.1/24", "dev", "lm1")
    _settled(ns)
    daemon: Daemon = daemon_factory(config=_config(tmp_path / "events.jsonl"))
    initial = _kernel_routes(ns)
    n = 3000
    batch = tmp_path / "routes.batch"
    batch.write_text(
        "".join(f"route add 203.0.{113 + i // 256}.{i % 256}/32 dev lm0\n" for i in range(n))
        + "route add 198.51.100.128/25 via 198.51.100.2 dev lm1\n"
    )
    ns.ip("-batch", str(batch))
    wanted = {f"203.0.{113 + i // 256}.{i % 256}/32" for i in range(n)}
    wait_for(
        lambda: wanted <= {e["subject"] for e in daemon.events() if e["type"] == "route.added"},
        timeout=30,
        what="every route added",
    )
    mark = daemon.mark()
    # an admin-down of a link with no routes of its own: re-reads that link only
    ns.ip("link", "set", "lm1p", "down")
    daemon.wait_event(lambda e: e["type"] == "link.admin_down" and e["subject"] == "lm1p")
    # the kernel now deletes lm0's IPv4 routes without a word
    ns.ip("link", "set", "lm0", "down")

    def removed() -> Counter[str]:
        return Counter(
            e["subject"]
            for e in daemon.since(mark)
            if e["type"] == "route.removed" and e["subject"] in wanted
        )

    wait_for(lambda: len(removed()) == n, timeout=30, what="every flushed route reported")
    daemon.barrier()
    assert daemon.stop() == 0
    events = daemon.events()
    assert set(removed().values()) == {1}, "a flushed route reported twice"
    flushed = [e for e in daemon.since(mark) if e["type"] == "route.removed"]
    assert all(e["data"]["resync"] for e in flushed if e["subject"] in wanted)
    # lm1's route is still there and was not reported removed
    assert "198.51.100.128/25" not in {e["subject"] for e in flushed}
    assert _after(initial, events) == _kernel_routes(ns)
    stats = events[-1]["data"]["stats"]
    assert stats["overflows"] == 0
    # the initial fill dumped each table once; every later re-read was per device: lm0's
    # IPv4 routes at least twice (a settling re-read), lm1p's IPv6 link-local routes and
    # neighbours, nothing of lm1p's IPv4 (the cache held none: no dump at all)
    assert stats["dumps_full"] == 6
    assert 2 <= stats["dumps_targeted"] <= 16
