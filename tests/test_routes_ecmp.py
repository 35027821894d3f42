"""Routes that share a destination: IPv4 appends, IPv6 ECMP, replace. The cache must follow
the kernel exactly, or later events go missing."""

from __future__ import annotations

import pytest

from tests.helpers import Daemon, NetNS, wait_for

pytestmark = pytest.mark.netns

V6 = "2001:db8:9::/64"
V4 = "198.51.100.0/24"


def _setup(ns: NetNS) -> None:
    ns.veth("lm0", "lm0p")
    ns.ip("addr", "add", "192.0.2.1/24", "dev", "lm0")
    ns.ip("-6", "addr", "add", "2001:db8::1/64", "dev", "lm0", "nodad")


def _routes(daemon: Daemon, mark: int, dst: str) -> list[tuple[str, object, object]]:
    return [
        (e["type"], e["data"]["gateway"], e["data"]["nexthops"] and len(e["data"]["nexthops"]))
        for e in daemon.since(mark)
        if e["type"].startswith("route.") and e["subject"] == dst
    ]


def _added_again(ns: NetNS, daemon: Daemon, family: str, dst: str, gateway: str) -> None:
    """Nothing stale is left: the same route added afresh is reported as added."""
    mark = daemon.mark()
    ns.ip(*([family] if family else []), "route", "add", dst, "via", gateway, "dev", "lm0")
    # wait for an event after the mark: an earlier route.added of dst must not satisfy it
    wait_for(lambda: _routes(daemon, mark, dst), what=f"route.added {dst} again")
    daemon.barrier()
    assert _routes(daemon, mark, dst) == [("route.added", gateway, None)]


def test_ipv6_multipath_replaced_by_single_path_and_back(ns: NetNS, daemon_factory) -> None:
    _setup(ns)
    daemon: Daemon = daemon_factory()
    mark = daemon.mark()
    two = [
        "nexthop",
        "via",
        "2001:db8::2",
        "dev",
        "lm0",
        "nexthop",
        "via",
        "2001:db8::3",
        "dev",
        "lm0",
    ]
    ns.ip("-6", "route", "add", V6, *two)
    ns.ip("-6", "route", "replace", V6, "via", "2001:db8::2", "dev", "lm0")
    ns.ip("-6", "route", "replace", V6, *two)
    ns.ip("-6", "route", "del", V6)
    daemon.wait_event(lambda e: e["type"] == "route.removed" and e["subject"] == V6)
    daemon.barrier()
    kinds = [t for t, _, _ in _routes(daemon, mark, V6)]
    assert kinds[0] == "route.added"
    assert kinds[-1] == "route.removed"
    assert "route.added" not in kinds[1:], kinds  # replacing is a change, not a second route
    assert ns.ip("-6", "route", "show", V6).stdout.strip() == ""
    _added_again(ns, daemon, "-6", V6, "2001:db8::2")


def test_ipv6_append_makes_ecmp_and_deleting_hops_empties_it(ns: NetNS, daemon_factory) -> None:
    _setup(ns)
    daemon: Daemon = daemon_factory()
    mark = daemon.mark()
    ns.ip("-6", "route", "add", V6, "via", "2001:db8::2", "dev", "lm0")
    ns.ip("-6", "route", "append", V6, "via", "2001:db8::3", "dev", "lm0")
    ns.ip("-6", "route", "del", V6, "via", "2001:db8::3", "dev", "lm0")
    ns.ip("-6", "route", "del", V6, "via", "2001:db8::2", "dev", "lm0")
    daemon.wait_event(
        lambda e: e["type"] == "route.removed" and e["subject"] == V6, what="last hop removed"
    )
    daemon.barrier()
    events = _routes(daemon, mark, V6)
    assert events[0] == ("route.added", "2001:db8::2", None)
    assert ("route.changed", None, 2) in events  # the append made it multipath
    assert ns.ip("-6", "route", "show", V6).stdout.strip() == ""
    _added_again(ns, daemon, "-6", V6, "2001:db8::2")


def test_ipv4_append_keeps_both_routes_apart(ns: NetNS, daemon_factory) -> None:
    _setup(ns)
    daemon: Daemon = daemon_factory()
    mark = daemon.mark()
    ns.ip("route", "add", V4, "via", "192.0.2.2", "dev", "lm0")
    ns.ip("route", "append", V4, "via", "192.0.2.3", "dev", "lm0")
    ns.ip("route", "del", V4, "via", "192.0.2.2", "dev", "lm0")
    ns.ip("route", "del", V4, "via", "192.0.2.3", "dev", "lm0")
    daemon.wait_event(
        lambda e: e["type"] == "route.removed" and e["data"]["gateway"] == "192.0.2.3"
    )
    assert _routes(daemon, mark, V4) == [
        ("route.added", "192.0.2.2", None),
        ("route.added", "192.0.2.3", None),
        ("route.removed", "192.0.2.2", None),
        ("route.removed", "192.0.2.3", None),
    ]
    _added_again(ns, daemon, "", V4, "192.0.2.2")
