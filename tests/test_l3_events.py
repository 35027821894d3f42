"""Address, route, neighbour, rule and netconf events from real kernel changes in a netns.

Each test runs the daemon as a subprocess in a throwaway namespace, makes a change with
``ip``/``sysctl`` and asserts on the exact JSON the file sink wrote (docs/events.md).
"""

from __future__ import annotations

import json
import re
import socket
import uuid
from collections.abc import Callable
from typing import Any

import pytest

from tests.helpers import Daemon, NetNS

pytestmark = pytest.mark.netns

Event = dict[str, Any]
RFC3339_UTC_MICROS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$")


# -- helpers ---------------------------------------------------------------------------------


def wait_type(daemon: Daemon, type_: str, subject: str, mark: int = 0, **data: Any) -> Event:
    """The first event with seq above ``mark`` (``daemon.mark()`` or an event's seq) of
    ``type_`` about ``subject`` whose data has the items of ``data``."""

    def match(e: Event) -> bool:
        return (
            e["seq"] > mark
            and e["type"] == type_
            and e["subject"] == subject
            and all(e["data"].get(k) == v for k, v in data.items())
        )

    return daemon.wait_event(match, what=f"{type_} {subject} {data or ''}".strip())


def matching(daemon: Daemon, mark: int, pred: Callable[[Event], bool]) -> list[Event]:
    return [e for e in daemon.since(mark) if pred(e)]


def assert_envelope(event: Event, ns: NetNS, *, resync: bool = False) -> None:
    """The CloudEvents envelope of docs/events.md, exactly."""
    assert event["specversion"] == "1.0"
    assert uuid.UUID(event["id"]).version == 7
    assert event["source"] == f"/linkmond/{socket.gethostname()}"
    assert RFC3339_UTC_MICROS.match(event["time"]), event["time"]
    assert event["netns"] == ns.name
    assert isinstance(event["seq"], int)
    assert event["data"]["resync"] is resync
    if not event["type"].endswith(".changed"):
        assert event["data"]["changes"] == {}


def assert_seq_consecutive(daemon: Daemon) -> None:
    seqs = [e["seq"] for e in daemon.events()]
    assert seqs == list(range(1, len(seqs) + 1))


def sysctl_get(ns: NetNS, key: str) -> int:
    return int(ns.run("sysctl", "-n", key).stdout.strip())


def sysctl_set(ns: NetNS, key: str, value: int) -> None:
    ns.run("sysctl", "-w", f"{key}={value}")


# -- addresses -------------------------------------------------------------------------------


def test_ipv4_address_added_then_removed_with_names(ns: NetNS, daemon_factory) -> None:
    ns.veth("lm0", "lm0p")
    daemon: Daemon = daemon_factory()
    mark = daemon.mark()

    ns.ip("addr", "add", "192.0.2.1/24", "dev", "lm0")
    added = wait_type(daemon, "addr.added", "lm0", address="192.0.2.1")
    assert_envelope(added, ns)
    data = added["data"]
    assert data["family"] == "inet"
    assert data["address"] == "192.0.2.1"
    assert data["prefixlen"] == 24
    assert data["scope"] == "global"
    assert data["label"] == "lm0"
    assert data["flags"] == ["permanent"]
    assert data["ifname"] == "lm0"
    assert data["ifindex"] == json.loads(ns.ip("-j", "link", "show", "lm0").stdout)[0]["ifindex"]

    ns.ip("addr", "del", "192.0.2.1/24", "dev", "lm0")
    removed = wait_type(daemon, "addr.removed", "lm0", address="192.0.2.1")
    assert_envelope(removed, ns)
    assert removed["data"]["family"] == "inet"
    assert removed["data"]["prefixlen"] == 24
    assert removed["data"]["ifname"] == "lm0"

    daemon.barrier()
    ours = matching(daemon, mark, lambda e: e["type"].startswith("addr."))
    assert [(e["type"], e["data"]["address"]) for e in ours] == [
        ("addr.added", "192.0.2.1"),
        ("addr.removed", "192.0.2.1"),
    ]
    assert_seq_consecutive(daemon)


def test_ipv4_address_label_and_host_scope_are_reported(ns: NetNS, daemon_factory) -> None:
    ns.veth("lm0", "lm0p")
    daemon: Daemon = daemon_factory()

    ns.ip("addr", "add", "192.0.2.2/24", "dev", "lm0", "label", "lm0:web")
    labelled = wait_type(daemon, "addr.added", "lm0", address="192.0.2.2")
    assert labelled["data"]["label"] == "lm0:web"
    assert labelled["data"]["ifname"] == "lm0"

    ns.ip("addr", "add", "192.0.2.3/32", "dev", "lm0", "scope", "host")
    host = wait_type(daemon, "addr.added", "lm0", address="192.0.2.3")
    assert host["data"]["scope"] == "host"
    assert host["data"]["prefixlen"] == 32


def test_ipv6_nodad_address_added_then_removed(ns: NetNS, daemon_factory) -> None:
    ns.veth("lm0", "lm0p")
    daemon: Daemon = daemon_factory()
    mark = daemon.mark()

    ns.ip("addr", "add", "2001:db8::1/64", "dev", "lm0", "nodad")
    added = wait_type(daemon, "addr.added", "lm0", address="2001:db8::1")
    assert_envelope(added, ns)
    data = added["data"]
    assert data["family"] == "inet6"
    assert data["prefixlen"] == 64
    assert data["scope"] == "global"
    assert data["ifname"] == "lm0"
    assert data["flags"] == ["nodad", "permanent"]

    ns.ip("addr", "del", "2001:db8::1/64", "dev", "lm0")
    removed = wait_type(daemon, "addr.removed", "lm0", address="2001:db8::1")
    assert_envelope(removed, ns)
    assert removed["data"]["family"] == "inet6"

    daemon.barrier()
    ours = matching(
        daemon,
        mark,
        lambda e: e["type"].startswith("addr.") and e["data"]["address"] == "2001:db8::1",
    )
    assert [e["type"] for e in ours] == ["addr.added", "addr.removed"]


def test_ipv6_dad_completion_is_addr_changed_clearing_tentative(ns: NetNS, daemon_factory) -> None:
    # DAD runs only on a link with carrier that does ARP/ND: a veth pair with both ends up.
    ns.veth("lm0", "lm0p")
    daemon: Daemon = daemon_factory()
    mark = daemon.mark()

    ns.ip("addr", "add", "2001:db8::1/64", "dev", "lm0")
    added = wait_type(daemon, "addr.added", "lm0", address="2001:db8::1")
    assert "tentative" in added["data"]["flags"]

    def done(e: Event) -> bool:
        return (
            e["type"] == "addr.changed"
            and e["subject"] == "lm0"
            and e["data"]["address"] == "2001:db8::1"
        )

    # DAD takes dad_transmits times retrans_time (1 s by default): wait with a generous deadline.
    changed = daemon.wait_event(done, timeout=15.0, what="addr.changed after DAD")
    assert_envelope(changed, ns)
    old_flags, new_flags = changed["data"]["changes"]["flags"]
    assert "tentative" in old_flags
    assert "tentative" not in new_flags
    assert changed["data"]["flags"] == new_flags
    assert "dadfailed" not in new_flags

    daemon.barrier()
    ours = matching(
        daemon,
        mark,
        lambda e: e["type"].startswith("addr.") and e["data"]["address"] == "2001:db8::1",
    )
    assert [e["type"] for e in ours] == ["addr.added", "addr.changed"]


# -- routes ----------------------------------------------------------------------------------


def _routed_veth(ns: NetNS) -> None:
    """lm0 (up, carrier) with 192.0.2.1/24 and 2001:db8::1/64, so gateways are on-link."""
    ns.veth("lm0", "lm0p")
    ns.ip("addr", "add", "192.0.2.1/24", "dev", "lm0")
    ns.ip("addr", "add", "2001:db8::1/64", "dev", "lm0", "nodad")


def test_route_with_gateway_added_replaced_and_removed(ns: NetNS, daemon_factory) -> None:
    _routed_veth(ns)
    daemon: Daemon = daemon_factory()
    mark = daemon.mark()
    dst = "198.51.100.0/24"

    ns.ip("route", "add", dst, "via", "192.0.2.254", "dev", "lm0")
    added = wait_type(daemon, "route.added", dst)
    assert_envelope(added, ns)
    data = added["data"]
    assert data["family"] == "inet"
    assert data["dst"] == dst
    assert data["gateway"] == "192.0.2.254"
    assert data["ifname"] == "lm0"
    assert data["table"] == "main"
    assert data["protocol"] == "boot"
    assert data["scope"] == "global"
    assert data["type"] == "unicast"
    assert data["metric"] == 0

    ns.ip("route", "replace", dst, "via", "192.0.2.253", "dev", "lm0")
    changed = wait_type(daemon, "route.changed", dst)
    assert_envelope(changed, ns)
    assert changed["data"]["changes"] == {"gateway": ["192.0.2.254", "192.0.2.253"]}
    assert changed["data"]["gateway"] == "192.0.2.253"

    ns.ip("route", "del", dst, "via", "192.0.2.253", "dev", "lm0")
    removed = wait_type(daemon, "route.removed", dst)
    assert_envelope(removed, ns)
    assert removed["data"]["gateway"] == "192.0.2.253"
    assert removed["data"]["table"] == "main"

    daemon.barrier()
    ours = matching(daemon, mark, lambda e: e["subject"] == dst)
    assert [e["type"] for e in ours] == ["route.added", "route.changed", "route.removed"]
    assert_seq_consecutive(daemon)


def test_default_route_has_dst_default(ns: NetNS, daemon_factory) -> None:
    _routed_veth(ns)
    daemon: Daemon = daemon_factory()

    ns.ip("route", "add", "default", "via", "192.0.2.254", "dev", "lm0")
    v4 = wait_type(daemon, "route.added", "default", family="inet")
    assert v4["data"]["dst"] == "default"
    assert v4["data"]["gateway"] == "192.0.2.254"
    assert v4["data"]["table"] == "main"

    ns.ip("-6", "route", "add", "default", "via", "2001:db8::fe", "dev", "lm0")
    v6 = wait_type(daemon, "route.added", "default", family="inet6")
    assert v6["data"]["dst"] == "default"
    assert v6["data"]["gateway"] == "2001:db8::fe"
    assert v6["data"]["ifname"] == "lm0"

    ns.ip("route", "del", "default", "via", "192.0.2.254", "dev", "lm0")
    gone = wait_type(daemon, "route.removed", "default", family="inet")
    assert gone["data"]["gateway"] == "192.0.2.254"


def test_ipv6_route_with_gateway(ns: NetNS, daemon_factory) -> None:
    _routed_veth(ns)
    daemon: Daemon = daemon_factory()
    dst = "2001:db8:1::/64"

    ns.ip("-6", "route", "add", dst, "via", "2001:db8::fe", "dev", "lm0")
    added = wait_type(daemon, "route.added", dst)
    assert_envelope(added, ns)
    data = added["data"]
    assert data["family"] == "inet6"
    assert data["dst"] == dst
    assert data["gateway"] == "2001:db8::fe"
    assert data["ifname"] == "lm0"
    assert data["table"] == "main"
    assert data["protocol"] == "boot"
    assert data["metric"] == 1024  # the kernel's default IPv6 metric

    ns.ip("-6", "route", "del", dst, "via", "2001:db8::fe", "dev", "lm0")
    removed = wait_type(daemon, "route.removed", dst)
    assert removed["data"]["family"] == "inet6"
    assert removed["data"]["resync"] is False


def test_route_tables_by_name_or_number(ns: NetNS, daemon_factory) -> None:
    _routed_veth(ns)
    daemon: Daemon = daemon_factory()
    mark = daemon.mark()
    dst = "198.51.100.0/24"

    ns.ip("route", "add", dst, "via", "192.0.2.254", "dev", "lm0", "table", "100")
    ns.ip("route", "add", dst, "via", "192.0.2.254", "dev", "lm0")
    in_100 = wait_type(daemon, "route.added", dst, table="100")
    in_main = wait_type(daemon, "route.added", dst, table="main")
    assert in_100["data"]["gateway"] == in_main["data"]["gateway"] == "192.0.2.254"

    ns.ip("route", "del", dst, "table", "100")
    wait_type(daemon, "route.removed", dst, table="100")
    daemon.barrier()
    ours = matching(daemon, mark, lambda e: e["subject"] == dst)
    assert [(e["type"], e["data"]["table"]) for e in ours] == [
        ("route.added", "100"),
        ("route.added", "main"),
        ("route.removed", "100"),
    ]


def test_route_protocol_and_metric_names(ns: NetNS, daemon_factory) -> None:
    ns.veth("lm0", "lm0p")
    daemon: Daemon = daemon_factory()

    # the kernel's own prefix route for a new address: protocol kernel, scope link
    ns.ip("addr", "add", "192.0.2.1/24", "dev", "lm0")
    prefix = wait_type(daemon, "route.added", "192.0.2.0/24", table="main")
    assert prefix["data"]["protocol"] == "kernel"
    assert prefix["data"]["scope"] == "link"
    assert prefix["data"]["gateway"] is None
    assert prefix["data"]["ifname"] == "lm0"
    assert prefix["data"]["prefsrc"] == "192.0.2.1"
    local = wait_type(daemon, "route.added", "192.0.2.1/32", table="local")
    assert local["data"]["type"] == "local"
    assert local["data"]["scope"] == "host"
    assert local["data"]["protocol"] == "kernel"

    dst = "198.51.100.128/25"
    ns.ip(
        "route", "add", dst, "via", "192.0.2.254", "dev", "lm0", "proto", "static", "metric", "50"
    )
    static = wait_type(daemon, "route.added", dst)
    assert static["data"]["protocol"] == "static"
    assert static["data"]["metric"] == 50


def test_ipv4_routes_silently_deleted_on_link_down_are_removed_with_resync(
    ns: NetNS, daemon_factory
) -> None:
    _routed_veth(ns)
    ns.ip("route", "add", "198.51.100.0/24", "via", "192.0.2.254", "dev", "lm0")
    daemon: Daemon = daemon_factory()
    mark = daemon.mark()

    # the kernel drops the gateway route without an RTM_DELROUTE: only a re-dump shows it
    ns.ip("link", "set", "lm0", "down")
    wait_type(daemon, "link.admin_down", "lm0")
    removed = wait_type(daemon, "route.removed", "198.51.100.0/24")
    assert_envelope(removed, ns, resync=True)
    assert removed["data"]["gateway"] == "192.0.2.254"
    assert removed["data"]["ifname"] == "lm0"
    assert removed["data"]["table"] == "main"
    assert not ns.ip("route", "show", "198.51.100.0/24").stdout.strip()

    daemon.barrier()
    ours = matching(daemon, mark, lambda e: e["subject"] == "198.51.100.0/24")
    assert [e["type"] for e in ours] == ["route.removed"]
    assert_seq_consecutive(daemon)


# -- neighbours ------------------------------------------------------------------------------


def test_ipv4_neighbour_added_changed_and_removed(ns: NetNS, daemon_factory) -> None:
    ns.veth("lm0", "lm0p")
    daemon: Daemon = daemon_factory()
    mark = daemon.mark()
    addr = "192.0.2.7"

    ns.ip("neigh", "add", addr, "lladdr", "02:00:00:00:00:07", "dev", "lm0", "nud", "permanent")
    added = wait_type(daemon, "neigh.added", addr)
    assert_envelope(added, ns)
    data = added["data"]
    assert data["family"] == "inet"
    assert data["address"] == addr
    assert data["lladdr"] == "02:00:00:00:00:07"
    assert data["state"] == "permanent"
    assert data["ifname"] == "lm0"

    ns.ip("neigh", "replace", addr, "lladdr", "02:00:00:00:00:07", "dev", "lm0", "nud", "stale")
    stale = wait_type(daemon, "neigh.changed", addr, state="stale")
    assert_envelope(stale, ns)
    assert stale["data"]["changes"] == {"state": ["permanent", "stale"]}

    ns.ip("neigh", "replace", addr, "lladdr", "02:00:00:00:00:08", "dev", "lm0", "nud", "stale")
    moved = wait_type(daemon, "neigh.changed", addr, lladdr="02:00:00:00:00:08")
    assert moved["data"]["changes"]["lladdr"] == ["02:00:00:00:00:07", "02:00:00:00:00:08"]

    ns.ip("neigh", "del", addr, "dev", "lm0")
    removed = wait_type(daemon, "neigh.removed", addr)
    assert_envelope(removed, ns)
    assert removed["data"]["ifname"] == "lm0"
    assert not ns.ip("neigh", "show", addr, "dev", "lm0").stdout.strip()

    daemon.barrier()
    # `ip neigh del` first marks the entry failed (an RTM_NEWNEIGH), then deletes it
    ours = matching(
        daemon,
        mark,
        lambda e: (
            e["subject"] == addr
            and not (e["type"] == "neigh.changed" and e["data"]["state"] == "failed")
        ),
    )
    assert [e["type"] for e in ours] == [
        "neigh.added",
        "neigh.changed",
        "neigh.changed",
        "neigh.removed",
    ]
    assert_seq_consecutive(daemon)


def test_ipv6_neighbour_added_and_removed(ns: NetNS, daemon_factory) -> None:
    ns.veth("lm0", "lm0p")
    daemon: Daemon = daemon_factory()
    addr = "2001:db8::7"

    ns.ip(
        "-6", "neigh", "add", addr, "lladdr", "02:00:00:00:00:07", "dev", "lm0",
        "nud", "reachable", "router",
    )  # fmt: skip
    added = wait_type(daemon, "neigh.added", addr)
    assert_envelope(added, ns)
    data = added["data"]
    assert data["family"] == "inet6"
    assert data["lladdr"] == "02:00:00:00:00:07"
    assert data["ifname"] == "lm0"
    assert data["state"] == "reachable"
    assert "router" in data["flags"]

    ns.ip("-6", "neigh", "del", addr, "dev", "lm0")
    removed = wait_type(daemon, "neigh.removed", addr)
    assert removed["data"]["family"] == "inet6"


# -- rules -----------------------------------------------------------------------------------


def _ip_rule_line(ns: NetNS, family: str, priority: int) -> str:
    """The line ``ip rule show`` prints for ``priority``, whitespace-normalised."""
    for line in ns.ip(family, "rule", "show").stdout.splitlines():
        if line.startswith(f"{priority}:"):
            return " ".join(line.split())
    raise AssertionError(f"rule {priority} not in ip {family} rule show")


def test_ipv4_rule_added_and_removed(ns: NetNS, daemon_factory) -> None:
    daemon: Daemon = daemon_factory()
    mark = daemon.mark()

    ns.ip("rule", "add", "from", "192.0.2.0/24", "lookup", "100", "priority", "1000")
    shown = _ip_rule_line(ns, "-4", 1000)
    added = daemon.wait_event(lambda e: e["type"] == "rule.added", what="rule.added")
    assert_envelope(added, ns)
    assert added["subject"] == shown == "1000: from 192.0.2.0/24 lookup 100"
    data = added["data"]
    assert data["family"] == "inet"
    assert data["priority"] == 1000
    assert data["src"] == "192.0.2.0/24"
    assert data["dst"] == "all"
    assert data["table"] == "100"
    assert data["action"] == "lookup"

    ns.ip("rule", "del", "priority", "1000")
    removed = daemon.wait_event(lambda e: e["type"] == "rule.removed", what="rule.removed")
    assert_envelope(removed, ns)
    assert removed["subject"] == shown
    assert removed["data"]["priority"] == 1000

    daemon.barrier()
    ours = matching(daemon, mark, lambda e: e["type"].startswith("rule."))
    assert [e["type"] for e in ours] == ["rule.added", "rule.removed"]


def test_ipv6_rule_added_and_removed(ns: NetNS, daemon_factory) -> None:
    daemon: Daemon = daemon_factory()

    ns.ip("-6", "rule", "add", "from", "2001:db8::/32", "lookup", "100", "priority", "1001")
    shown = _ip_rule_line(ns, "-6", 1001)
    added = daemon.wait_event(lambda e: e["type"] == "rule.added", what="rule.added")
    assert added["subject"] == shown
    data = added["data"]
    assert data["family"] == "inet6"
    assert data["priority"] == 1001
    assert data["src"] == "2001:db8::/32"
    assert data["table"] == "100"
    assert data["action"] == "lookup"

    ns.ip("-6", "rule", "del", "priority", "1001")
    removed = daemon.wait_event(lambda e: e["type"] == "rule.removed", what="rule.removed")
    assert removed["data"]["family"] == "inet6"
    assert removed["subject"] == shown


# -- netconf ---------------------------------------------------------------------------------


def test_ipv4_forwarding_all_is_netconf_changed(ns: NetNS, daemon_factory) -> None:
    # a new namespace inherits the host's IPv4 settings: start from a known value
    sysctl_set(ns, "net.ipv4.conf.all.forwarding", 0)
    daemon: Daemon = daemon_factory()

    sysctl_set(ns, "net.ipv4.conf.all.forwarding", 1)
    event = wait_type(daemon, "netconf.changed", "all", family="inet")
    assert_envelope(event, ns)
    data = event["data"]
    assert data["ifname"] == "all"
    assert data["changes"]["forwarding"] == [False, True]
    assert data["forwarding"] is True

    # the kernel applies "all" to the defaults and to every device, and says so for each
    default = wait_type(daemon, "netconf.changed", "default", family="inet")
    assert default["data"]["ifname"] == "default"
    assert default["data"]["changes"]["forwarding"] == [False, True]
    lo = wait_type(daemon, "netconf.changed", "lo", family="inet")
    assert lo["data"]["ifname"] == "lo"
    assert lo["data"]["changes"]["forwarding"] == [False, True]

    mark = event["seq"]
    sysctl_set(ns, "net.ipv4.conf.all.forwarding", 0)
    back = wait_type(daemon, "netconf.changed", "all", mark, family="inet")
    assert back["data"]["changes"]["forwarding"] == [True, False]

    daemon.barrier()
    alls = matching(
        daemon,
        0,
        lambda e: e["type"] == "netconf.changed" and e["subject"] == "all",
    )
    assert [e["data"]["changes"] for e in alls] == [
        {"forwarding": [False, True]},
        {"forwarding": [True, False]},
    ]


def test_ipv6_forwarding_all_is_netconf_changed(ns: NetNS, daemon_factory) -> None:
    sysctl_set(ns, "net.ipv6.conf.all.forwarding", 0)
    daemon: Daemon = daemon_factory()

    sysctl_set(ns, "net.ipv6.conf.all.forwarding", 1)
    event = wait_type(daemon, "netconf.changed", "all", family="inet6")
    assert_envelope(event, ns)
    assert event["data"]["ifname"] == "all"
    assert event["data"]["changes"]["forwarding"] == [False, True]


def test_device_rp_filter_change_uses_names(ns: NetNS, daemon_factory) -> None:
    ns.veth("lm0", "lm0p")
    key = "net.ipv4.conf.lm0.rp_filter"
    names = {0: "off", 1: "strict", 2: "loose"}
    daemon: Daemon = daemon_factory()

    current = sysctl_get(ns, key)
    mark = daemon.mark()
    # through the other two values and back: every name appears as old and as new
    for value in ((current + 1) % 3, (current + 2) % 3, current):
        sysctl_set(ns, key, value)
        event = wait_type(daemon, "netconf.changed", "lm0", mark, family="inet")
        assert_envelope(event, ns)
        assert event["data"]["ifname"] == "lm0"
        assert event["data"]["changes"] == {"rp_filter": [names[current], names[value]]}
        assert event["data"]["rp_filter"] == names[value]
        mark, current = event["seq"], value
