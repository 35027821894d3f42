"""The cache-and-diff semantics of State.apply, the resync sweep, glob filters and event stamping.

Objects are decoded from real rtnetlink messages (encoded by pyroute2) so that the diff sees
exactly what the daemon sees; the event contract (UUIDv7 ids, seq, RFC 3339 time, the human
line) is checked on events made from the resulting changes.
"""

from __future__ import annotations

import itertools
import json
import re
import socket
import struct
import time
import uuid
from collections.abc import Hashable
from datetime import UTC, datetime
from typing import Any

import pytest
from pyroute2.netlink.rtnl.fibmsg import fibmsg
from pyroute2.netlink.rtnl.ifaddrmsg import ifaddrmsg
from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg
from pyroute2.netlink.rtnl.ndmsg import ndmsg
from pyroute2.netlink.rtnl.rtmsg import rtmsg

from linkmond import rtnl
from linkmond.decode import Obj, decode, split_messages
from linkmond.events import Event, EventFactory, describe
from linkmond.filters import GlobFilter
from linkmond.state import Change, Scope, State, rule_subject

IFF_BROADCAST = 0x2
IFF_RUNNING = 0x40
IFF_MULTICAST = 0x1000
IFF_DORMANT = 0x20000
BASE = IFF_BROADCAST | IFF_MULTICAST
UP = rtnl.IFF_UP
LOWER = rtnl.IFF_LOWER_UP | IFF_RUNNING

Decoded = tuple[str, Hashable, Obj | None]


def _decode(cls: Any, mtype: int, fields: dict[str, Any], attrs: list[Any]) -> Decoded:
    msg = cls()
    msg["header"]["type"] = mtype
    for name, value in fields.items():
        msg[name] = value
    msg["attrs"] = attrs
    msg.encode()
    buf = bytes(msg.data)
    ((_, _, _, _, start, end),) = list(split_messages(buf))
    result = decode(mtype, buf, start, end)
    assert result is not None
    return result


def link(
    flags: int,
    operstate: str,
    *,
    index: int = 3,
    ifname: str | None = "lm0",
    mtu: int = 1500,
    master: int | None = None,
    mac: str = "02:00:00:00:00:01",
    deleted: bool = False,
) -> Decoded:
    attrs: list[Any] = [
        *([("IFLA_IFNAME", ifname)] if ifname is not None else []),
        ("IFLA_MTU", mtu),
        ("IFLA_ADDRESS", mac),
        ("IFLA_OPERSTATE", operstate),
        ("IFLA_LINKINFO", {"attrs": [("IFLA_INFO_KIND", "veth")]}),
    ]
    if master is not None:
        attrs.append(("IFLA_MASTER", master))
    mtype = rtnl.RTM_DELLINK if deleted else rtnl.RTM_NEWLINK
    return _decode(ifinfmsg, mtype, {"family": 0, "index": index, "flags": flags}, attrs)


def addr(address: str, prefixlen: int, *, flags: int = 0x80, index: int = 3, deleted=False):
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    mtype = rtnl.RTM_DELADDR if deleted else rtnl.RTM_NEWADDR
    fields = {"family": family, "prefixlen": prefixlen, "index": index, "scope": 0}
    return _decode(ifaddrmsg, mtype, fields, [("IFA_ADDRESS", address), ("IFA_FLAGS", flags)])


def route(
    dst: str | None,
    dst_len: int,
    *,
    gateway: str | None = None,
    oif: int = 3,
    deleted: bool = False,
    **kw: Any,
):
    attrs: list[Any] = [("RTA_TABLE", 254), ("RTA_OIF", oif)]
    if dst is not None:
        attrs.append(("RTA_DST", dst))
    if gateway is not None:
        attrs.append(("RTA_GATEWAY", gateway))
    fields = {"family": socket.AF_INET, "dst_len": dst_len, "table": 254, "proto": 4, "type": 1}
    fields |= kw
    return _decode(rtmsg, rtnl.RTM_DELROUTE if deleted else rtnl.RTM_NEWROUTE, fields, attrs)


def neigh(address: str, state: int, lladdr: str | None = "02:00:00:00:00:0a"):
    attrs: list[Any] = [("NDA_DST", address)]
    if lladdr is not None:
        attrs.append(("NDA_LLADDR", lladdr))
    fields = {"family": socket.AF_INET, "ifindex": 3, "state": state}
    return _decode(ndmsg, rtnl.RTM_NEWNEIGH, fields, attrs)


def rule(priority: int, table: int, **attrs: Any):
    fields = {"family": socket.AF_INET, "table": 252, "action": 1}
    nla = [("FRA_PRIORITY", priority), ("FRA_TABLE", table), *attrs.items()]
    return _decode(fibmsg, rtnl.RTM_NEWRULE, fields, nla)


def netconf(ifindex: int, family: int = socket.AF_INET, **values: int) -> Decoded:
    """A hand-built RTM_NEWNETCONF (pyroute2 cannot encode one) carrying ``values``."""
    numbers = {name: number for number, name in rtnl.NETCONF_ATTRS.items()}
    attrs = [(rtnl.NETCONFA_IFINDEX, ifindex)] + [(numbers[k], v) for k, v in values.items()]
    payload = struct.pack("=Bxxx", family) + b"".join(
        struct.pack("=HHi", 8, atype, value) for atype, value in attrs
    )
    buf = struct.pack("=IHHII", 16 + len(payload), rtnl.RTM_NEWNETCONF, 0, 0, 0) + payload
    result = decode(rtnl.RTM_NEWNETCONF, buf, 16, len(buf))
    assert result is not None
    return result


def sweep(state: State, *, emit: bool) -> list[Change]:
    """End the resync and make its removals, the lazy ones too."""
    now, _queued = state.end_resync(emit=emit)
    return now + state.drain()


def apply(state: State, decoded: Decoded, **kw: Any) -> Change | None:
    return state.apply(*decoded, **kw)


def kinds(state: State, *messages: Decoded) -> list[str]:
    """The change types a sequence of messages produces."""
    changes = [apply(state, m) for m in messages]
    return [c.type for c in changes if c is not None]


@pytest.fixture
def state() -> State:
    """A cache holding lm0 (index 3), admin up with carrier."""
    s = State()
    assert apply(s, link(BASE | UP | LOWER, "UP"), emit=False) is None
    return s


# -- links ------------------------------------------------------------------------------------


def test_link_added_reports_the_whole_link() -> None:
    state = State()
    change = apply(state, link(BASE | UP | LOWER, "UP", index=5, ifname="lm5"))
    assert change is not None
    assert (change.type, change.subject, change.ifname) == ("link.added", "lm5", "lm5")
    assert change.data == {
        "ifindex": 5,
        "ifname": "lm5",
        "admin_up": True,
        "carrier": True,
        "operstate": "up",
        "flags": ["broadcast", "lower_up", "multicast", "running", "up"],
        "mtu": 1500,
        "mac": "02:00:00:00:00:01",
        "kind": "veth",
        "master": None,
        "changes": {},
        "resync": False,
    }
    assert state.counts()["link"] == 1
    assert state.links_with_carrier() == 1


def test_link_removed_reports_the_last_known_link_and_keeps_its_name(state: State) -> None:
    change = apply(state, link(BASE, "DOWN", deleted=True))
    assert change is not None
    assert (change.type, change.subject) == ("link.removed", "lm0")
    assert change.data["carrier"] is True  # the cached copy: what was there
    assert state.counts()["link"] == 0
    assert state.ifname(3) == "lm0"  # late messages about index 3 still resolve
    assert apply(state, link(BASE, "DOWN", deleted=True)) is None


def test_repeated_identical_link_message_changes_nothing(state: State) -> None:
    assert kinds(state, *[link(BASE | UP | LOWER, "UP")] * 5) == []


def test_admin_down_with_carrier_drop_is_only_admin_down(state: State) -> None:
    change = apply(state, link(BASE, "DOWN"))
    assert change is not None
    assert change.type == "link.admin_down"
    assert change.data["changes"] == {
        "admin_up": [True, False],
        "carrier": [True, False],
        "operstate": ["up", "down"],
    }
    # the kernel's follow-up messages while down say nothing new
    assert kinds(state, link(BASE, "DOWN"), link(BASE, "DOWN")) == []


def test_carrier_loss_while_up_is_carrier_lost(state: State) -> None:
    change = apply(state, link(BASE | UP, "LOWERLAYERDOWN"))
    assert change is not None
    assert (change.type, change.subject) == ("link.carrier_lost", "lm0")
    assert change.data["changes"] == {
        "carrier": [True, False],
        "operstate": ["up", "lowerlayerdown"],
    }
    assert change.data["admin_up"] is True
    assert change.data["carrier"] is False
    assert state.links_with_carrier() == 0


def test_carrier_return_while_up_is_carrier_up(state: State) -> None:
    apply(state, link(BASE | UP, "LOWERLAYERDOWN"))
    change = apply(state, link(BASE | UP | LOWER, "UP"))
    assert change is not None
    assert change.type == "link.carrier_up"
    assert change.data["changes"] == {
        "carrier": [False, True],
        "operstate": ["lowerlayerdown", "up"],
    }


def test_veth_brought_up_reports_admin_up_then_one_carrier_up() -> None:
    state = State()
    apply(state, link(BASE, "DOWN"), emit=False)
    sequence = [
        link(BASE | UP | rtnl.IFF_LOWER_UP, "LOWERLAYERDOWN"),  # LOWER_UP before operstate
        link(BASE | UP | LOWER, "UP"),
        link(BASE | UP | LOWER, "UP"),  # the kernel repeats itself
    ]
    changes = [apply(state, m) for m in sequence]
    assert [c.type if c else None for c in changes] == ["link.admin_up", "link.carrier_up", None]
    assert changes[0] is not None
    assert changes[0].data["carrier"] is False
    assert changes[0].data["changes"] == {
        "admin_up": [False, True],
        "operstate": ["down", "lowerlayerdown"],
    }


def test_admin_up_with_carrier_at_once_is_one_admin_up_event() -> None:
    state = State()
    apply(state, link(BASE, "DOWN"), emit=False)
    change = apply(state, link(BASE | UP | LOWER, "UP"))
    assert change is not None
    assert change.type == "link.admin_up"
    assert change.data["carrier"] is True


def test_an_operstate_move_alone_is_link_changed_so_the_last_event_stays_true() -> None:
    # a consumer keeps the operstate of the last event: every move must reach it
    state = State()
    apply(state, link(BASE | UP, "DOWN"), emit=False)
    changes = [
        apply(state, m) for m in (link(BASE | UP, "LOWERLAYERDOWN"), link(BASE | UP, "DOWN"))
    ]
    assert [c.data["changes"] if c else None for c in changes] == [
        {"operstate": ["down", "lowerlayerdown"]},
        {"operstate": ["lowerlayerdown", "down"]},
    ]
    assert [c.type if c else None for c in changes] == ["link.changed", "link.changed"]
    assert kinds(state, link(BASE | UP, "DOWN")) == []  # a repeat is not a move


def test_an_operstate_the_carrier_event_could_not_tell_follows_as_link_changed() -> None:
    """A bridge loses its carrier while its operstate is still ``unknown``; the move to
    ``down`` comes in a later message and must not be swallowed as noise."""
    state = State()
    apply(state, link(BASE | UP | LOWER, "UNKNOWN"), emit=False)
    lost = apply(state, link(BASE | UP, "UNKNOWN"))
    assert lost is not None
    assert lost.type == "link.carrier_lost"
    assert lost.data["operstate"] == "unknown"
    settled = apply(state, link(BASE | UP, "DOWN"))
    assert settled is not None
    assert settled.type == "link.changed"
    assert settled.data["changes"] == {"operstate": ["unknown", "down"]}


def test_a_link_without_a_name_is_named_like_ip_monitor_does() -> None:
    # the kernel always sends IFLA_IFNAME; crafted input may not, and CloudEvents forbids an
    # empty subject: "if<index>" as ip monitor prints it, or the name it had
    state = State()
    nameless = apply(state, link(BASE | UP | LOWER, "UP", ifname=None))
    assert nameless is not None
    assert (nameless.subject, nameless.data["ifname"]) == ("if3", "if3")
    apply(state, link(BASE | UP | LOWER, "UP"))
    renamed_away = apply(state, link(BASE | UP, "DOWN", ifname=None))
    assert renamed_away is not None
    assert renamed_away.subject == renamed_away.data["ifname"] == "lm0"


def test_dormant_is_link_changed(state: State) -> None:
    change = apply(state, link(BASE | UP | LOWER | IFF_DORMANT, "DORMANT"))
    assert change is not None
    assert change.type == "link.changed"
    assert change.data["changes"] == {"operstate": ["up", "dormant"]}


def test_rename_is_link_changed_and_updates_the_name(state: State) -> None:
    change = apply(state, link(BASE | UP | LOWER, "UP", ifname="lmwan"))
    assert change is not None
    assert (change.type, change.subject) == ("link.changed", "lmwan")
    assert change.data["changes"] == {"ifname": ["lm0", "lmwan"]}
    assert state.ifname(3) == "lmwan"


def test_mtu_change_is_link_changed(state: State) -> None:
    change = apply(state, link(BASE | UP | LOWER, "UP", mtu=9000))
    assert change is not None
    assert change.type == "link.changed"
    assert change.data["changes"] == {"mtu": [1500, 9000]}


def test_mac_change_is_link_changed(state: State) -> None:
    change = apply(state, link(BASE | UP | LOWER, "UP", mac="02:00:00:00:00:99"))
    assert change is not None
    assert change.data["changes"] == {"mac": ["02:00:00:00:00:01", "02:00:00:00:00:99"]}


def test_master_change_is_reported_by_name(state: State) -> None:
    apply(state, link(BASE | UP | LOWER, "UP", index=7, ifname="lmbr0"))
    change = apply(state, link(BASE | UP | LOWER, "UP", master=7))
    assert change is not None
    assert change.type == "link.changed"
    assert change.data["changes"] == {"master": [None, "lmbr0"]}
    assert change.data["master"] == "lmbr0"
    change = apply(state, link(BASE | UP | LOWER, "UP"))
    assert change is not None
    assert change.data["changes"] == {"master": ["lmbr0", None]}


def test_promisc_is_link_changed_with_flags(state: State) -> None:
    change = apply(state, link(BASE | UP | LOWER | rtnl.IFF_PROMISC, "UP"))
    assert change is not None
    assert change.type == "link.changed"
    assert change.data["changes"] == {
        "flags": [["broadcast", "multicast"], ["broadcast", "multicast", "promisc"]]
    }


def test_emit_false_updates_the_cache_silently(state: State) -> None:
    assert apply(state, link(BASE | UP, "LOWERLAYERDOWN"), emit=False) is None
    assert state.tables["link"][3]["carrier"] is False
    # the next real message is diffed against the silently updated copy
    assert kinds(state, link(BASE | UP, "LOWERLAYERDOWN")) == []
    assert apply(state, addr("192.0.2.1", 24), emit=False) is None
    assert state.counts()["addr"] == 1


# -- addresses, routes, neighbours, rules -----------------------------------------------------


def test_addr_added_changed_removed(state: State) -> None:
    added = apply(state, addr("2001:db8::1", 64, flags=0x40))
    assert added is not None
    assert (added.type, added.subject, added.ifname) == ("addr.added", "lm0", "lm0")
    assert added.data["ifname"] == "lm0"
    assert added.data["flags"] == ["tentative"]
    changed = apply(state, addr("2001:db8::1", 64, flags=0x80))
    assert changed is not None
    assert changed.type == "addr.changed"
    assert changed.data["changes"] == {"flags": [["tentative"], ["permanent"]]}
    assert apply(state, addr("2001:db8::1", 64, flags=0x80)) is None
    removed = apply(state, addr("2001:db8::1", 64, deleted=True))
    assert removed is not None
    assert removed.type == "addr.removed"
    assert removed.data["address"] == "2001:db8::1"


def test_route_gateway_change_is_route_changed(state: State) -> None:
    added = apply(state, route(None, 0, gateway="192.0.2.254"))
    assert added is not None
    assert (added.type, added.subject) == ("route.added", "default")
    assert added.data["ifname"] == "lm0"
    # `ip route replace` announces the new route with NLM_F_REPLACE
    changed = apply(state, route(None, 0, gateway="192.0.2.253"), replace=True)
    assert changed is not None
    assert changed.type == "route.changed"
    assert changed.data["changes"] == {"gateway": ["192.0.2.254", "192.0.2.253"]}


def test_routes_of_one_slot_coexist_unless_one_replaces_the_other(state: State) -> None:
    """IPv4 `ip route append`: same destination and metric, another gateway, both exist."""
    apply(state, route("198.51.100.0", 24, gateway="192.0.2.2"))
    second = apply(state, route("198.51.100.0", 24, gateway="192.0.2.3"))
    assert second is not None
    assert second.type == "route.added"
    assert len(state.tables["route"]) == 2
    gone = apply(state, route("198.51.100.0", 24, gateway="192.0.2.2", deleted=True))
    assert gone is not None
    assert (gone.type, gone.data["gateway"]) == ("route.removed", "192.0.2.2")
    assert [r.gateway for r in state.tables["route"].values()] == ["192.0.2.3"]


def test_an_unmatched_route_deletion_asks_to_reread_the_devices_involved() -> None:
    asked: list[tuple[str, int, int | None, bool]] = []
    state = State(reread=lambda *what: asked.append(what))
    apply(state, route("198.51.100.0", 24, gateway="192.0.2.2"))
    deleted = route("198.51.100.0", 24, gateway="192.0.2.9", oif=4, deleted=True)
    assert apply(state, deleted) is None
    assert asked == [("route", socket.AF_INET, 3, False), ("route", socket.AF_INET, 4, False)]


def test_route_interface_change_also_reports_the_interface_names(state: State) -> None:
    apply(state, link(BASE | UP | LOWER, "UP", index=4, ifname="lm1"))
    apply(state, route("198.51.100.0", 24))
    change = apply(state, route("198.51.100.0", 24, oif=4), replace=True)
    assert change is not None
    assert (change.type, change.subject, change.ifname) == (
        "route.changed",
        "198.51.100.0/24",
        "lm1",
    )
    assert change.data["changes"] == {"ifindex": [3, 4], "ifname": ["lm0", "lm1"]}


def test_route_multipath_nexthops_are_named(state: State) -> None:
    apply(state, link(BASE | UP | LOWER, "UP", index=4, ifname="lm1"))
    hops = [
        {"oif": 3, "attrs": [("RTA_GATEWAY", "192.0.2.1")]},
        {"oif": 4, "attrs": [("RTA_GATEWAY", "198.51.100.1")]},
    ]
    fields = {"family": socket.AF_INET, "dst_len": 0, "table": 254, "proto": 4, "type": 1}
    decoded = _decode(rtmsg, rtnl.RTM_NEWROUTE, fields, [("RTA_MULTIPATH", hops)])
    change = apply(state, decoded)
    assert change is not None
    assert change.data["nexthops"] == [
        {"gateway": "192.0.2.1", "ifindex": 3, "weight": 1, "ifname": "lm0"},
        {"gateway": "198.51.100.1", "ifindex": 4, "weight": 1, "ifname": "lm1"},
    ]
    # the cache keeps the decoded form: naming happens on the event only
    assert "ifname" not in next(iter(state.tables["route"].values())).nexthops[0]._fields


def test_neigh_state_change_is_neigh_changed(state: State) -> None:
    added = apply(state, neigh("192.0.2.2", 0x02))
    assert added is not None
    assert (added.type, added.subject, added.ifname) == ("neigh.added", "192.0.2.2", "lm0")
    changed = apply(state, neigh("192.0.2.2", 0x04))
    assert changed is not None
    assert changed.type == "neigh.changed"
    assert changed.data["changes"] == {"state": ["reachable", "stale"]}
    changed = apply(state, neigh("192.0.2.2", 0x04, lladdr="02:00:00:00:00:0b"))
    assert changed is not None
    assert changed.data["changes"] == {"lladdr": ["02:00:00:00:00:0a", "02:00:00:00:00:0b"]}


def test_rule_added_once_and_a_repeat_changes_nothing() -> None:
    state = State()
    decoded = rule(100, 1000, FRA_FWMARK=0x10, FRA_FWMASK=0xFF, FRA_IIFNAME="lm0")
    change = apply(state, decoded)
    assert change is not None
    assert change.type == "rule.added"
    assert change.subject == "100: from all iif lm0 fwmark 0x10/0xff lookup 1000"
    assert change.ifname is None
    assert apply(state, decoded) is None
    assert (
        apply(state, rule(100, 1000, FRA_FWMARK=0x10, FRA_FWMASK=0xFF, FRA_IIFNAME="lm0")) is None
    )
    assert state.counts()["rule"] == 1
    removed = apply(state, ("rule", decoded[1], None))
    assert removed is not None
    assert removed.type == "rule.removed"


def test_rule_subject_reads_like_ip_rule_show() -> None:
    assert rule_subject(rule(32766, 254)[2]) == "32766: from all lookup main"
    assert rule_subject(rule(0, 255)[2]) == "0: from all lookup local"


# -- netconf ----------------------------------------------------------------------------------


def test_netconf_first_sight_is_silent_and_a_later_change_reports_only_that_field() -> None:
    state = State()
    assert apply(state, netconf(-1, forwarding=0, rp_filter=0, proxy_neigh=0)) is None
    change = apply(state, netconf(-1, forwarding=1))
    assert change is not None
    assert (change.type, change.subject, change.ifname) == ("netconf.changed", "all", None)
    assert change.data == {
        "family": "inet",
        "ifindex": -1,
        "ifname": "all",
        "forwarding": True,
        "rp_filter": "off",
        "proxy_neigh": False,
        "changes": {"forwarding": [False, True]},
        "resync": False,
    }
    assert apply(state, netconf(-1, forwarding=1)) is None
    change = apply(state, netconf(-1, rp_filter=2))
    assert change is not None
    assert change.data["changes"] == {"rp_filter": ["off", "loose"]}
    assert change.data["forwarding"] is True  # merged with what is known


def test_netconf_of_a_device_and_of_default_are_named(state: State) -> None:
    apply(state, netconf(3, socket.AF_INET6, forwarding=0))
    change = apply(state, netconf(3, socket.AF_INET6, forwarding=1))
    assert change is not None
    assert (change.subject, change.ifname, change.data["ifname"]) == ("lm0", "lm0", "lm0")
    assert change.data["family"] == "inet6"
    apply(state, netconf(-2, forwarding=0))
    change = apply(state, netconf(-2, forwarding=1))
    assert change is not None
    assert (change.subject, change.ifname) == ("default", None)


def test_netconf_emit_false_merges_silently() -> None:
    state = State()
    apply(state, netconf(-1, forwarding=0))
    assert apply(state, netconf(-1, forwarding=1), emit=False) is None
    assert state.tables["netconf"][(socket.AF_INET, -1)]["forwarding"] is True
    assert apply(state, netconf(-1, forwarding=1)) is None


# -- resync -----------------------------------------------------------------------------------


def test_resync_sweep_removes_untouched_keys_flagged_resync(state: State) -> None:
    apply(state, route("192.0.2.0", 24), emit=False)
    apply(state, route("198.51.100.0", 24), emit=False)
    apply(state, route(None, 0, gateway="192.0.2.254"), emit=False)
    state.begin_resync(Scope("route"))
    # the dump shows one route unchanged and the default route through another gateway (a
    # dump cannot say "replaced": IPv4 routes with different next hops may coexist); a
    # notification adds a new one
    assert apply(state, route("192.0.2.0", 24), resync=True) is None
    added = apply(state, route(None, 0, gateway="192.0.2.1"), resync=True)
    assert added is not None
    assert (added.type, added.data["resync"]) == ("route.added", True)
    apply(state, route("192.0.2.128", 25))
    removed = sweep(state, emit=True)
    assert sorted((c.type, c.subject, c.data["gateway"], c.data["resync"]) for c in removed) == [
        ("route.removed", "198.51.100.0/24", None, True),
        ("route.removed", "default", "192.0.2.254", True),
    ]
    assert sorted(o.dst for o in state.tables["route"].values()) == [
        "192.0.2.0/24",
        "192.0.2.128/25",
        "default",
    ]


def test_resync_sweep_without_emit_removes_silently(state: State) -> None:
    apply(state, neigh("192.0.2.2", 0x02), emit=False)
    state.begin_resync(Scope("neigh"))
    assert sweep(state, emit=False) == []
    assert state.counts()["neigh"] == 0


def test_aborted_resync_removes_nothing_and_a_later_resync_still_sweeps(state: State) -> None:
    apply(state, neigh("192.0.2.2", 0x02), emit=False)
    apply(state, neigh("192.0.2.3", 0x02), emit=False)
    state.begin_resync(Scope("neigh"))
    apply(state, neigh("192.0.2.2", 0x02), resync=True)
    state.abort_resync()
    assert state.counts()["neigh"] == 2
    state.begin_resync(Scope("neigh"))
    apply(state, neigh("192.0.2.3", 0x02), resync=True)
    removed = sweep(state, emit=True)
    assert [(c.type, c.subject, c.data["resync"]) for c in removed] == [
        ("neigh.removed", "192.0.2.2", True)
    ]


def test_resync_of_one_table_leaves_the_others_alone(state: State) -> None:
    apply(state, neigh("192.0.2.2", 0x02), emit=False)
    state.begin_resync(Scope("route"))
    removed = sweep(state, emit=True)
    assert removed == []
    assert state.counts()["neigh"] == 1
    assert state.counts()["link"] == 1


# -- glob filters -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("patterns", "passes", "blocked", "matches_all"),
    [
        (["eth*", "!eth9"], ["eth0", "eth10"], ["eth9", "lo", "veth0"], False),
        (["!veth*"], ["eth0", "lo", "lm0"], ["veth0", "veth"], False),
        (["*"], ["eth0", "", "a b"], [], True),
        ([], ["eth0", "lo"], [], True),
        (["lm[0-2]", "lo"], ["lm0", "lm2", "lo"], ["lm3", "lm00", "lol"], False),
        (["*", "!lo"], ["eth0"], ["lo"], False),
    ],
)
def test_glob_filter(
    patterns: list[str], passes: list[str], blocked: list[str], matches_all: bool
) -> None:
    flt = GlobFilter(patterns)
    for _ in range(2):  # the second round is answered from the cache
        assert [n for n in passes if not flt.match(n)] == []
        assert [n for n in blocked if flt.match(n)] == []
    assert flt.matches_all is matches_all


def test_glob_filter_matches_types_too() -> None:
    flt = GlobFilter(["link.*", "!link.changed"])
    assert flt.match("link.carrier_lost")
    assert not flt.match("link.changed")
    assert not flt.match("addr.added")


# -- events -----------------------------------------------------------------------------------

RFC3339_UTC = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z")


def test_event_ids_are_uuid7_strictly_increasing_and_seq_consecutive() -> None:
    factory = EventFactory("/linkmond/t", "default")
    before_ms = time.time_ns() // 1_000_000
    events = [factory.make("link.changed", "lm0", {"changes": {}}) for _ in range(1000)]
    after_ms = time.time_ns() // 1_000_000
    ids = [e.id for e in events]
    assert ids == sorted(ids)
    assert len(set(ids)) == len(ids)
    for e in events:
        u = uuid.UUID(e.id)
        assert str(u) == e.id  # canonical lowercase form
        assert u.version == 7
        assert u.variant == uuid.RFC_4122
        assert before_ms <= u.int >> 80 <= after_ms + 1
    assert [e.seq for e in events] == list(range(1, 1001))


def test_event_ids_increase_within_one_millisecond_and_when_time_goes_back() -> None:
    factory = EventFactory("/linkmond/t", "default")
    t_ns = 1_795_000_000_000_000_000
    stamps = [t_ns] * 5000 + [t_ns - 10_000_000_000] * 10 + [t_ns + 1_000_000_000]
    ids = [factory.make("route.added", "default", {}, t_ns=t).id for t in stamps]
    assert all(a < b for a, b in itertools.pairwise(ids))


def test_event_time_is_rfc3339_utc_with_microseconds() -> None:
    factory = EventFactory("/linkmond/t", "lmns")
    t_ns = 1_795_000_000_123_456_789
    event = factory.make("link.added", "lm0", {}, t_ns=t_ns)
    expected = datetime.fromtimestamp(t_ns // 10**9, tz=UTC).replace(
        microsecond=t_ns // 1000 % 10**6
    )
    assert event.time == expected.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    assert event.time == "2026-11-18T11:06:40.123456Z"
    assert uuid.UUID(event.id).int >> 80 == t_ns // 1_000_000
    now = factory.make("link.added", "lm0", {})
    assert RFC3339_UTC.fullmatch(now.time)
    age = datetime.now(UTC) - datetime.strptime(now.time, "%Y-%m-%dT%H:%M:%S.%fZ").replace(
        tzinfo=UTC
    )
    assert abs(age.total_seconds()) < 60


def test_event_json_follows_the_contract(state: State) -> None:
    change = apply(state, link(BASE | UP, "LOWERLAYERDOWN"))
    assert change is not None
    event = EventFactory("/linkmond/host1", "lmns").make(change.type, change.subject, change.data)
    doc = json.loads(event.json_line)
    assert list(doc) == [
        "specversion",
        "id",
        "source",
        "type",
        "time",
        "subject",
        "seq",
        "netns",
        "data",
    ]
    assert doc["specversion"] == "1.0"
    assert (doc["source"], doc["type"], doc["subject"], doc["seq"], doc["netns"]) == (
        "/linkmond/host1",
        "link.carrier_lost",
        "lm0",
        1,
        "lmns",
    )
    assert doc["data"]["changes"] == {
        "carrier": [True, False],
        "operstate": ["up", "lowerlayerdown"],
    }
    assert doc["data"]["resync"] is False
    assert event.ifname == "lm0"


def _event(change: Change | None) -> Event:
    assert change is not None
    return EventFactory("/linkmond/t", "default").make(change.type, change.subject, change.data)


def test_describe_link_events(state: State) -> None:
    lost = _event(apply(state, link(BASE | UP, "LOWERLAYERDOWN")))
    assert describe(lost) == "link lm0: carrier lost (admin up)"
    up = _event(apply(state, link(BASE | UP | LOWER, "UP")))
    assert describe(up) == "link lm0: carrier up (operstate up)"
    down = _event(apply(state, link(BASE, "DOWN")))
    assert describe(down) == "link lm0: admin down"
    admin_up = _event(apply(state, link(BASE | UP, "LOWERLAYERDOWN")))
    assert describe(admin_up) == "link lm0: admin up (no carrier)"
    mtu = _event(apply(state, link(BASE | UP, "LOWERLAYERDOWN", mtu=9000)))
    assert describe(mtu) == "link lm0: changed mtu 1500 → 9000"
    added = _event(apply(state, link(BASE, "DOWN", index=9, ifname="lm9")))
    assert describe(added) == "link lm9: added (veth, mtu 1500, admin down)"
    removed = _event(apply(state, link(BASE, "DOWN", index=9, deleted=True)))
    assert describe(removed) == "link lm9: removed"


def test_describe_other_groups(state: State) -> None:
    assert (
        describe(_event(apply(state, addr("192.0.2.1", 24))))
        == "addr lm0: added 192.0.2.1/24 (inet, scope global)"
    )
    assert (
        describe(_event(apply(state, route(None, 0, gateway="192.0.2.254"))))
        == "route default: added via 192.0.2.254 dev lm0 table main proto static"
    )
    assert (
        describe(_event(apply(state, neigh("192.0.2.2", 0x02))))
        == "neigh 192.0.2.2: added dev lm0 lladdr 02:00:00:00:00:0a reachable"
    )
    assert (
        describe(_event(apply(state, neigh("192.0.2.2", 0x04))))
        == "neigh 192.0.2.2: state reachable → stale dev lm0"
    )
    assert (
        describe(_event(apply(state, rule(100, 1000))))
        == "rule inet: added 100: from all lookup 1000"
    )
    apply(state, netconf(-1, forwarding=0))
    assert (
        describe(_event(apply(state, netconf(-1, forwarding=1))))
        == "netconf inet all: forwarding off → on"
    )


def test_describe_marks_resync_events(state: State) -> None:
    apply(state, route("192.0.2.0", 24), emit=False)
    state.begin_resync(Scope("route"))
    (removed,) = sweep(state, emit=True)
    assert describe(_event(removed)) == (
        "route 192.0.2.0/24: removed dev lm0 table main proto static [resync]"
    )


def test_netconf_all_event_is_not_bound_to_an_interface() -> None:
    state = State()
    apply(state, netconf(-1, forwarding=0))
    event = _event(apply(state, netconf(-1, forwarding=1)))
    assert event.ifname is None


def test_names_of_removed_links_are_kept_for_a_while_then_forgotten(state: State) -> None:
    from linkmond.state import REMEMBER_REMOVED_NAMES

    for index in range(10, 10 + REMEMBER_REMOVED_NAMES + 50):
        apply(state, link(BASE | UP, "DOWN", index=index, ifname=f"veth{index}"))
        apply(state, link(BASE | UP, "DOWN", index=index, ifname=f"veth{index}", deleted=True))
    assert len(state.names) == REMEMBER_REMOVED_NAMES + len(state.tables["link"])
    last = 10 + REMEMBER_REMOVED_NAMES + 49
    assert state.ifname(last) == f"veth{last}"  # a late message about it still resolves
    assert state.ifname(10) is None


# -- what the kernel changes silently: the re-read channel and scoped sweeps --------------------


def _recording_state() -> tuple[State, list[tuple[str, int, int | None, bool]]]:
    asked: list[tuple[str, int, int | None, bool]] = []
    return State(reread=lambda *what: asked.append(what)), asked


def test_admin_down_asks_to_reread_that_links_routes_and_neighbours_per_family() -> None:
    state, asked = _recording_state()
    apply(state, link(BASE | UP | LOWER, "UP", index=3), emit=False)
    apply(state, route("198.51.100.0", 24, oif=3), emit=False)
    apply(state, neigh("192.0.2.2", 0x02), emit=False)  # IPv4, on ifindex 3
    apply(state, link(BASE | UP, "LOWERLAYERDOWN", index=3))  # carrier loss: nothing flushed
    assert asked == []
    apply(state, link(BASE, "DOWN", index=3))
    # settling re-reads (the kernel flushes after it announced the admin-down), and only of
    # what the cache holds: there is no IPv6 route or neighbour on that link to lose
    assert asked == [("route", socket.AF_INET, 3, True), ("neigh", socket.AF_INET, 3, True)]


def test_admin_down_of_a_link_the_cache_holds_nothing_of_asks_for_no_dump() -> None:
    state, asked = _recording_state()
    apply(state, link(BASE | UP | LOWER, "UP", index=4, ifname="lm1"), emit=False)
    apply(state, route("198.51.100.0", 24, oif=3), emit=False)  # another link's
    apply(state, link(BASE, "DOWN", index=4, ifname="lm1"))
    assert asked == []


def test_address_removal_rereads_its_link_and_the_links_of_routes_using_it_as_source() -> None:
    state, asked = _recording_state()
    apply(state, addr("192.0.2.1", 24, index=3), emit=False)
    apply(state, route("192.0.2.0", 24, oif=3), emit=False)
    # a route through link 7, not using the address: link 7 is not re-read
    apply(state, route("198.51.100.0", 24, oif=7), emit=False)
    with_src = _decode(
        rtmsg,
        rtnl.RTM_NEWROUTE,
        {"family": socket.AF_INET, "dst_len": 24, "table": 254, "proto": 4, "type": 1},
        [("RTA_TABLE", 254), ("RTA_OIF", 9), ("RTA_DST", "203.0.113.0"),
         ("RTA_PREFSRC", "192.0.2.1")],
    )  # fmt: skip
    apply(state, with_src, emit=False)
    apply(state, addr("192.0.2.1", 24, index=3, deleted=True))
    assert asked == [("route", socket.AF_INET, 3, True), ("route", socket.AF_INET, 9, True)]


def test_link_removal_takes_its_routes_and_neighbours_along_reported_after_it() -> None:
    state, asked = _recording_state()
    apply(state, link(BASE | UP | LOWER, "UP", index=3), emit=False)
    apply(state, route("198.51.100.0", 24, oif=3), emit=False)
    apply(state, route("203.0.113.0", 24, oif=4), emit=False)
    apply(state, neigh("192.0.2.2", 0x02), emit=False)  # on ifindex 3
    removed = apply(state, link(BASE, "DOWN", index=3, deleted=True))
    assert removed is not None
    assert removed.type == "link.removed"
    # the neighbours go at once; the routes lazily, as they may be a million
    derived = state.take_derived() + state.drain()
    assert [(c.type, c.subject, c.data["resync"]) for c in derived] == [
        ("neigh.removed", "192.0.2.2", True),
        ("route.removed", "198.51.100.0/24", True),
    ]
    assert [r.dst for r in state.routes.values()] == ["203.0.113.0/24"]
    assert asked == []  # a device that is gone cannot be dumped: nothing to ask
    assert state.take_derived() == []
    assert state.drain() == []


def test_a_device_scoped_sweep_touches_only_that_devices_entries() -> None:
    state = State()
    for i, oif in enumerate((3, 3, 4)):
        apply(state, route(f"198.51.100.{i * 16}", 28, oif=oif), emit=False)
    apply(state, neigh("192.0.2.2", 0x02), emit=False)
    state.begin_resync(Scope("route", socket.AF_INET, 3))
    # the dump shows one of link 3's two routes; link 4's route is not its business
    apply(state, route("198.51.100.0", 28, oif=3), resync=True)
    removed = sweep(state, emit=True)
    assert [(c.type, c.subject) for c in removed] == [("route.removed", "198.51.100.16/28")]
    assert sorted(r.dst for r in state.routes.values()) == ["198.51.100.0/28", "198.51.100.32/28"]
    assert len(state.tables["neigh"]) == 1


def test_a_notification_during_a_scoped_dump_counts_as_seen() -> None:
    state = State()
    apply(state, route("198.51.100.0", 24, oif=3), emit=False)
    state.begin_resync(Scope("route", socket.AF_INET, 3))
    # the route was replaced by a notification while the dump ran: newer than the dump
    apply(state, route("198.51.100.0", 24, oif=3, gateway=None))
    assert sweep(state, emit=True) == []


def test_an_ipv6_scoped_sweep_leaves_ipv4_routes_of_the_same_device() -> None:
    state = State()
    apply(state, route("198.51.100.0", 24, oif=3), emit=False)
    state.begin_resync(Scope("route", socket.AF_INET6, 3))
    assert sweep(state, emit=True) == []
    assert len(state.routes) == 1


def test_routes_via_counts_next_hops_too() -> None:
    state = State()
    hops = [
        {"oif": 3, "attrs": [("RTA_GATEWAY", "192.0.2.1")]},
        {"oif": 4, "attrs": [("RTA_GATEWAY", "192.0.2.2")]},
    ]
    multipath = _decode(
        rtmsg,
        rtnl.RTM_NEWROUTE,
        {"family": socket.AF_INET, "dst_len": 24, "table": 254, "proto": 4, "type": 1},
        [("RTA_TABLE", 254), ("RTA_DST", "198.51.100.0"), ("RTA_MULTIPATH", hops)],
    )
    apply(state, multipath, emit=False)
    apply(state, route("203.0.113.0", 24, oif=4), emit=False)
    assert (state.routes_via(3), state.routes_via(4), state.routes_via(5)) == (1, 2, 0)


def test_event_json_is_exactly_pydantics_for_every_kind_of_payload(state: State) -> None:
    """The orjson fast path must write the text the pydantic model defines, byte for byte."""
    hops = [
        {"oif": 3, "attrs": [("RTA_GATEWAY", "192.0.2.1")]},
        {"oif": 4, "hops": 2, "attrs": [("RTA_GATEWAY", "192.0.2.2")]},
    ]
    multipath = _decode(
        rtmsg,
        rtnl.RTM_NEWROUTE,
        {"family": socket.AF_INET, "dst_len": 24, "table": 254, "proto": 4, "type": 1},
        [("RTA_TABLE", 254), ("RTA_DST", "198.51.100.0"), ("RTA_MULTIPATH", hops)],
    )
    changes = [
        apply(state, link(BASE | UP | LOWER, "UP", ifname="lm0-ünï", mtu=9000)),
        apply(state, link(BASE | UP, "LOWERLAYERDOWN", ifname="lm0-ünï", mtu=9000)),
        apply(state, addr("2001:db8::1", 64)),
        apply(state, multipath),
        apply(state, route("198.51.100.0", 24, gateway="192.0.2.9"), replace=True),
        apply(state, neigh("192.0.2.2", 0x02)),
        apply(state, rule(1000, 100)),
        apply(state, netconf(-1, forwarding=0, rp_filter=0)),
        apply(state, netconf(-1, forwarding=1)),
    ]
    factory = EventFactory("/linkmond/hôte", "lmns")
    made = [factory.make(c.type, c.subject, c.data) for c in changes if c is not None]
    assert len(made) == 8
    for event in made:
        validated = Event.model_validate(json.loads(event.jsonl))
        assert event.jsonl == validated.model_dump_json().encode() + b"\n"
        assert event.json_line == event.model_dump_json()


# -- a dump and the notifications read meanwhile (two sockets) --------------------------------


def test_a_notification_read_during_a_dump_wins_over_the_dumps_entry() -> None:
    state = State()
    apply(state, link(BASE | UP | LOWER, "UP", index=3), emit=False)
    apply(state, route("198.51.100.0", 24, oif=3), emit=False)
    state.begin_resync(Scope("route"))
    # the route changed (a notification), then the dump delivers what it read before that
    changed = apply(state, route("198.51.100.0", 24, oif=3, gateway="192.0.2.9"), replace=True)
    assert changed is not None
    assert apply(state, route("198.51.100.0", 24, oif=3), dump=True, resync=True) is None
    assert [r.gateway for r in state.routes.values()] == ["192.0.2.9"]
    # deleted meanwhile: the dump's older entry does not bring it back
    apply(state, route("198.51.100.0", 24, oif=3, gateway="192.0.2.9", deleted=True))
    assert apply(state, route("198.51.100.0", 24, oif=3, gateway="192.0.2.9"), dump=True) is None
    assert len(state.routes) == 0
    assert sweep(state, emit=True) == []


def test_a_dump_entry_through_a_link_removed_meanwhile_is_not_taken() -> None:
    state = State()
    apply(state, link(BASE | UP | LOWER, "UP", index=3), emit=False)
    apply(state, route("198.51.100.0", 24, oif=3), emit=False)
    state.begin_resync(Scope("route"))
    apply(state, link(BASE, "DOWN", index=3, deleted=True))
    removed = state.take_derived() + state.drain()
    assert [c.type for c in removed] == ["route.removed"]
    # the dump read the route before the link went away
    assert apply(state, route("198.51.100.0", 24, oif=3), dump=True, resync=True) is None
    assert len(state.routes) == 0


def test_a_neighbour_notification_during_its_dump_wins_and_is_not_swept() -> None:
    state = State()
    apply(state, link(BASE | UP | LOWER, "UP", index=3), emit=False)
    apply(state, neigh("192.0.2.2", 0x02), emit=False)
    state.begin_resync(Scope("neigh"))
    failed = apply(state, neigh("192.0.2.2", 0x20, lladdr=None))  # NUD_FAILED, notified
    assert failed is not None
    assert apply(state, neigh("192.0.2.2", 0x02), dump=True, resync=True) is None
    assert sweep(state, emit=True) == []
    assert [n["state"] for n in state.tables["neigh"].values()] == ["failed"]
