"""The struct decoders on real rtnetlink bytes: messages encoded by pyroute2 and built by hand.

Every decoder is checked against what the kernel's fields mean (carrier = admin up + lower up +
an operstate that can carry traffic; IFA_LOCAL is our address, IFA_ADDRESS the peer; ...), and
malformed input must surface as :class:`DecodeError`, never as any other exception.
"""

from __future__ import annotations

import contextlib
import random
import re
import socket
import struct
from pathlib import Path
from typing import Any

import pytest
from pyroute2.netlink.rtnl.fibmsg import fibmsg
from pyroute2.netlink.rtnl.ifaddrmsg import ifaddrmsg
from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg
from pyroute2.netlink.rtnl.ndmsg import ndmsg
from pyroute2.netlink.rtnl.rtmsg import rtmsg
from structlog.testing import capture_logs

from linkmond import rtnl
from linkmond.decode import DecodeError, decode, read_errno, split_messages
from linkmond.events import Event, EventFactory
from linkmond.publisher import Publisher
from linkmond.replay import CHUNK_SIZE, ReplaySource
from linkmond.routes import Hop
from linkmond.scheduler import DumpScheduler
from linkmond.source import NetlinkSocket
from linkmond.watcher import NetnsWatcher

AF_BRIDGE = 7
AF_MPLS = 28
IFF_BROADCAST = 0x2
IFF_RUNNING = 0x40
IFF_MULTICAST = 0x1000
IFF_DORMANT = 0x20000
#: what a veth with carrier reports: up, broadcast, running, multicast, lower_up
UP_FLAGS = rtnl.IFF_UP | IFF_BROADCAST | IFF_RUNNING | IFF_MULTICAST | rtnl.IFF_LOWER_UP
DOWN_FLAGS = IFF_BROADCAST | IFF_MULTICAST


# -- building messages -------------------------------------------------------------------------


def encode(cls: Any, mtype: int, fields: dict[str, Any], attrs: list[Any], flags: int = 0) -> bytes:
    """One complete netlink message (header included) encoded by pyroute2."""
    msg = cls()
    msg["header"]["type"] = mtype
    msg["header"]["flags"] = flags
    for name, value in fields.items():
        msg[name] = value
    msg["attrs"] = attrs
    msg.encode()
    return bytes(msg.data)


def nlattr(atype: int, payload: bytes) -> bytes:
    """A netlink attribute: length, type, payload, padded to four bytes."""
    raw = struct.pack("=HH", 4 + len(payload), atype) + payload
    return raw + b"\0" * (-len(raw) % 4)


def nlmsg(mtype: int, payload: bytes, flags: int = 0, seq: int = 0, pid: int = 0) -> bytes:
    """A netlink message around ``payload`` (padded to four bytes)."""
    raw = struct.pack("=IHHII", 16 + len(payload), mtype, flags, seq, pid) + payload
    return raw + b"\0" * (-len(raw) % 4)


def decode_all(buf: bytes) -> list[Any]:
    """Split a datagram and decode every message in it."""
    return [decode(mtype, buf, start, end) for mtype, _, _, _, start, end in split_messages(buf)]


def decode_one(buf: bytes) -> Any:
    (result,) = decode_all(buf)
    return result


def link_msg(
    flags: int,
    operstate: str,
    *,
    index: int = 3,
    family: int = 0,
    ifname: str = "lm0",
    mtype: int = rtnl.RTM_NEWLINK,
    extra: list[Any] | None = None,
) -> bytes:
    attrs: list[Any] = [("IFLA_IFNAME", ifname), ("IFLA_MTU", 1500), ("IFLA_OPERSTATE", operstate)]
    return encode(
        ifinfmsg,
        mtype,
        {"family": family, "index": index, "flags": flags, "change": 0},
        attrs + (extra or []),
    )


def netconf_msg(
    family: int, attrs: list[tuple[int, int]], mtype: int = rtnl.RTM_NEWNETCONF
) -> bytes:
    """struct netconfmsg (one family byte, three pad bytes) and s32 NETCONFA_* attributes."""
    payload = struct.pack("=Bxxx", family) + b"".join(
        nlattr(atype, struct.pack("=i", value)) for atype, value in attrs
    )
    return nlmsg(mtype, payload)


# -- split_messages ---------------------------------------------------------------------------


def test_split_messages_frames_every_message_of_a_datagram() -> None:
    first = link_msg(UP_FLAGS, "UP", index=3)
    second = netconf_msg(socket.AF_INET, [(rtnl.NETCONFA_IFINDEX, -1), (2, 1)])
    third = nlmsg(rtnl.NLMSG_DONE, struct.pack("=i", 0), flags=rtnl.NLM_F_MULTI, seq=7, pid=42)
    buf = first + second + third
    frames = list(split_messages(buf))
    assert [(t, f, s, p) for t, f, s, p, _, _ in frames] == [
        (rtnl.RTM_NEWLINK, 0, 0, 0),
        (rtnl.RTM_NEWNETCONF, 0, 0, 0),
        (rtnl.NLMSG_DONE, rtnl.NLM_F_MULTI, 7, 42),
    ]
    assert [(start, end) for *_, start, end in frames] == [
        (16, len(first)),
        (len(first) + 16, len(first) + len(second)),
        (len(first) + len(second) + 16, len(buf)),
    ]


def test_split_messages_honours_length_and_alignment_padding() -> None:
    # a message whose nlmsg_len is not a multiple of 4 is followed by padding, then the next one
    odd = struct.pack("=IHHII", 17, rtnl.NLMSG_NOOP, 0, 1, 0) + b"x" + b"\0\0\0"
    done = nlmsg(rtnl.NLMSG_DONE, struct.pack("=i", 0), seq=2)
    buf = odd + done + b"\xff" * 32  # what is beyond `length` is not looked at
    frames = list(split_messages(buf, len(odd) + len(done)))
    assert [(t, s, start, end) for t, _, s, _, start, end in frames] == [
        (rtnl.NLMSG_NOOP, 1, 16, 17),
        (rtnl.NLMSG_DONE, 2, 36, 40),
    ]


# -- links ------------------------------------------------------------------------------------


def test_link_up_with_lower_up_and_operstate_up_has_carrier() -> None:
    extra = [
        ("IFLA_ADDRESS", "02:00:00:00:00:01"),
        ("IFLA_MASTER", 7),
        ("IFLA_LINKINFO", {"attrs": [("IFLA_INFO_KIND", "veth")]}),
    ]
    assert decode_one(link_msg(UP_FLAGS, "UP", extra=extra)) == (
        "link",
        3,
        {
            "ifindex": 3,
            "ifname": "lm0",
            "admin_up": True,
            "carrier": True,
            "operstate": "up",
            "flags": ["broadcast", "lower_up", "multicast", "running", "up"],
            "mtu": 1500,
            "mac": "02:00:00:00:00:01",
            "kind": "veth",
            "master": 7,
        },
    )


def test_link_lower_up_with_operstate_lowerlayerdown_has_no_carrier() -> None:
    # a veth end brought up while its peer is still down reports LOWER_UP first
    _, _, obj = decode_one(link_msg(rtnl.IFF_UP | rtnl.IFF_LOWER_UP, "LOWERLAYERDOWN"))
    assert obj["admin_up"] is True
    assert obj["carrier"] is False
    assert obj["operstate"] == "lowerlayerdown"


def test_link_admin_down_has_no_carrier_even_with_lower_up() -> None:
    # ifb devices say "carrier" while admin down; IFF_UP is what admin state means
    _, _, obj = decode_one(link_msg(DOWN_FLAGS | rtnl.IFF_LOWER_UP, "DOWN"))
    assert obj["admin_up"] is False
    assert obj["carrier"] is False
    assert obj["operstate"] == "down"
    assert obj["flags"] == ["broadcast", "lower_up", "multicast"]


def test_link_up_without_lower_up_has_no_carrier() -> None:
    # the seed-001 case: a NIC with no cable is IFF_UP but not LOWER_UP/RUNNING
    _, _, obj = decode_one(link_msg(rtnl.IFF_UP | IFF_BROADCAST | IFF_MULTICAST, "DOWN"))
    assert (obj["admin_up"], obj["carrier"], obj["operstate"]) == (True, False, "down")


def test_link_operstate_unknown_with_lower_up_has_carrier() -> None:
    # loopback and tun report operstate "unknown" while passing traffic
    _, _, obj = decode_one(link_msg(rtnl.IFF_UP | rtnl.IFF_LOWER_UP | 0x8, "UNKNOWN", ifname="lo"))
    assert (obj["carrier"], obj["operstate"]) == (True, "unknown")
    assert obj["flags"] == ["loopback", "lower_up", "up"]


def test_link_dormant_keeps_lower_up_carrier_and_reports_operstate() -> None:
    _, _, obj = decode_one(link_msg(UP_FLAGS | IFF_DORMANT, "DORMANT"))
    assert obj["operstate"] == "dormant"
    assert "dormant" in obj["flags"]


def test_link_without_optional_attributes_has_none_values() -> None:
    _, _, obj = decode_one(link_msg(UP_FLAGS, "UP"))
    assert (obj["mac"], obj["kind"], obj["master"]) == (None, None, None)


def test_link_unknown_flag_bits_and_operstate_are_shown_as_numbers() -> None:
    raw = struct.pack("=BxHiII", 0, 1, 4, rtnl.IFF_UP | 0x800000, 0) + nlattr(
        rtnl.IFLA_OPERSTATE, b"\x09"
    )
    _, _, obj = decode_one(nlmsg(rtnl.RTM_NEWLINK, raw))
    assert obj["flags"] == ["0x800000", "up"]
    assert obj["operstate"] == "9"


def test_link_bridge_port_messages_are_ignored() -> None:
    assert decode_one(link_msg(UP_FLAGS, "UP", family=AF_BRIDGE)) is None
    assert decode_one(link_msg(UP_FLAGS, "UP", family=AF_BRIDGE, mtype=rtnl.RTM_DELLINK)) is None


def test_link_deletion_decodes_to_key_and_none() -> None:
    assert decode_one(link_msg(DOWN_FLAGS, "DOWN", index=9, mtype=rtnl.RTM_DELLINK)) == (
        "link",
        9,
        None,
    )


def test_hand_built_link_message_decodes_like_pyroute2_encoded_one() -> None:
    linkinfo = nlattr(rtnl.IFLA_INFO_KIND, b"bridge\0")
    payload = (
        struct.pack("=BxHiII", 0, 1, 5, UP_FLAGS, 0xFFFFFFFF)
        + nlattr(rtnl.IFLA_IFNAME, b"lmbr0\0")
        + nlattr(rtnl.IFLA_MTU, struct.pack("=I", 9000))
        + nlattr(rtnl.IFLA_ADDRESS, bytes.fromhex("020000000002"))
        + nlattr(rtnl.IFLA_OPERSTATE, bytes([6]))
        + nlattr(rtnl.IFLA_LINKINFO | 0x8000, linkinfo)  # NLA_F_NESTED is masked off
    )
    raw = decode_one(nlmsg(rtnl.RTM_NEWLINK, payload))
    encoded = decode_one(
        encode(
            ifinfmsg,
            rtnl.RTM_NEWLINK,
            {"family": 0, "index": 5, "flags": UP_FLAGS, "change": 0xFFFFFFFF},
            [
                ("IFLA_IFNAME", "lmbr0"),
                ("IFLA_MTU", 9000),
                ("IFLA_ADDRESS", "02:00:00:00:00:02"),
                ("IFLA_OPERSTATE", "UP"),
                ("IFLA_LINKINFO", {"attrs": [("IFLA_INFO_KIND", "bridge")]}),
            ],
        )
    )
    assert raw == encoded
    assert raw[2]["kind"] == "bridge"
    assert raw[2]["mtu"] == 9000


# -- addresses --------------------------------------------------------------------------------


def addr_msg(
    family: int,
    prefixlen: int,
    attrs: list[Any],
    *,
    flags: int = 0,
    scope: int = 0,
    index: int = 3,
    mtype: int = rtnl.RTM_NEWADDR,
) -> bytes:
    fields = {"family": family, "prefixlen": prefixlen, "flags": flags, "scope": scope}
    return encode(ifaddrmsg, mtype, {**fields, "index": index}, attrs)


def test_addr_v4_local_equal_to_address_has_no_peer() -> None:
    msg = addr_msg(
        socket.AF_INET,
        24,
        [("IFA_ADDRESS", "192.0.2.1"), ("IFA_LOCAL", "192.0.2.1"), ("IFA_LABEL", "lm0")],
        flags=0x80,
    )
    assert decode_one(msg) == (
        "addr",
        (socket.AF_INET, 3, "192.0.2.1", 24),
        {
            "ifindex": 3,
            "family": "inet",
            "address": "192.0.2.1",
            "prefixlen": 24,
            "peer": None,
            "scope": "global",
            "label": "lm0",
            "flags": ["permanent"],
        },
    )


def test_addr_v4_point_to_point_local_is_the_address_and_address_the_peer() -> None:
    msg = addr_msg(socket.AF_INET, 32, [("IFA_ADDRESS", "192.0.2.9"), ("IFA_LOCAL", "192.0.2.1")])
    _, key, obj = decode_one(msg)
    assert key == (socket.AF_INET, 3, "192.0.2.1", 32)
    assert (obj["address"], obj["peer"]) == ("192.0.2.1", "192.0.2.9")


def test_addr_v6_flags_attribute_overrides_header_flags_and_bit0_is_temporary() -> None:
    # header says tentative (0x40); IFA_FLAGS (the full 32-bit set) says otherwise and wins
    msg = addr_msg(
        socket.AF_INET6,
        64,
        [("IFA_ADDRESS", "2001:db8::1"), ("IFA_FLAGS", 0x01 | 0x20 | 0x100 | 0x800)],
        flags=0x40,
    )
    _, key, obj = decode_one(msg)
    assert key == (socket.AF_INET6, 3, "2001:db8::1", 64)
    assert obj["family"] == "inet6"
    assert obj["peer"] is None
    assert obj["flags"] == ["deprecated", "managetempaddr", "stable-privacy", "temporary"]


def test_addr_v4_bit0_is_secondary() -> None:
    msg = addr_msg(
        socket.AF_INET,
        24,
        [("IFA_ADDRESS", "192.0.2.2"), ("IFA_LOCAL", "192.0.2.2")],
        flags=0x01,
    )
    assert decode_one(msg)[2]["flags"] == ["secondary"]


@pytest.mark.parametrize(("scope", "name"), [(0, "global"), (253, "link"), (254, "host"), (7, "7")])
def test_addr_scope_names(scope: int, name: str) -> None:
    msg = addr_msg(socket.AF_INET6, 64, [("IFA_ADDRESS", "2001:db8::5")], scope=scope)
    assert decode_one(msg)[2]["scope"] == name


def test_addr_deletion_has_the_same_key_as_its_addition() -> None:
    attrs = [("IFA_ADDRESS", "192.0.2.9"), ("IFA_LOCAL", "192.0.2.1")]
    added = decode_one(addr_msg(socket.AF_INET, 32, attrs))
    deleted = decode_one(addr_msg(socket.AF_INET, 32, attrs, mtype=rtnl.RTM_DELADDR))
    assert deleted == ("addr", added[1], None)


def test_addr_of_other_families_is_ignored() -> None:
    payload = struct.pack("=BBBBI", socket.AF_PACKET, 0, 0, 0, 3)
    assert decode_one(nlmsg(rtnl.RTM_NEWADDR, payload)) is None


# -- routes -----------------------------------------------------------------------------------


def route_msg(
    family: int,
    dst_len: int,
    attrs: list[Any],
    *,
    table: int = 254,
    proto: int = 2,
    scope: int = 0,
    rtype: int = 1,
    flags: int = 0,
    mtype: int = rtnl.RTM_NEWROUTE,
) -> bytes:
    fields = {"family": family, "dst_len": dst_len, "table": table, "proto": proto}
    fields |= {"scope": scope, "type": rtype, "flags": flags}
    return encode(rtmsg, mtype, fields, attrs)


def test_route_default_with_gateway_and_table_from_rta_table() -> None:
    # tables above 255 only fit RTA_TABLE; the header's u8 says RT_TABLE_COMPAT (252)
    msg = route_msg(
        socket.AF_INET,
        0,
        [
            ("RTA_TABLE", 1000),
            ("RTA_GATEWAY", "192.0.2.254"),
            ("RTA_OIF", 3),
            ("RTA_PRIORITY", 100),
        ],
        table=252,
        proto=4,
    )
    table, key, obj = decode_one(msg)
    assert (table, key) == (
        "route",
        (socket.AF_INET, 1000, "default", None, 0, 100, ("192.0.2.254", 3)),
    )
    assert obj._asdict() == {
        "family": "inet",
        "dst": "default",
        "src": None,
        "gateway": "192.0.2.254",
        "ifindex": 3,
        "table": "1000",
        "protocol": "static",
        "scope": "global",
        "type": "unicast",
        "metric": 100,
        "prefsrc": None,
        "tos": 0,
        "nexthops": None,
    }


def test_route_cidr_dst_with_names_for_table_protocol_scope() -> None:
    msg = route_msg(
        socket.AF_INET,
        24,
        [
            ("RTA_TABLE", 254),
            ("RTA_DST", "198.51.100.0"),
            ("RTA_OIF", 4),
            ("RTA_PREFSRC", "198.51.100.7"),
        ],
        proto=2,
        scope=253,
    )
    _, key, obj = decode_one(msg)
    assert key == (socket.AF_INET, 254, "198.51.100.0/24", None, 0, 0, (None, 4))
    assert obj.dst == "198.51.100.0/24"
    assert (obj.table, obj.protocol, obj.scope, obj.type) == (
        "main",
        "kernel",
        "link",
        "unicast",
    )
    assert (obj.ifindex, obj.prefsrc, obj.gateway) == (4, "198.51.100.7", None)


@pytest.mark.parametrize(
    ("rtype", "table", "name", "table_name"),
    [(2, 255, "local", "local"), (3, 255, "broadcast", "local"), (6, 254, "blackhole", "main")],
)
def test_route_type_names(rtype: int, table: int, name: str, table_name: str) -> None:
    msg = route_msg(
        socket.AF_INET, 32, [("RTA_TABLE", table), ("RTA_DST", "192.0.2.1")], rtype=rtype
    )
    _, _, obj = decode_one(msg)
    assert (obj.type, obj.table) == (name, table_name)


@pytest.mark.parametrize(
    ("proto", "name"), [(3, "boot"), (16, "dhcp"), (9, "ra"), (186, "bgp"), (222, "222")]
)
def test_route_protocol_names(proto: int, name: str) -> None:
    msg = route_msg(socket.AF_INET6, 0, [("RTA_TABLE", 254)], proto=proto)
    assert decode_one(msg)[2].protocol == name


def test_route_multipath_nexthops_with_gateways_interfaces_and_weights() -> None:
    msg = route_msg(
        socket.AF_INET6,
        32,
        [
            ("RTA_TABLE", 254),
            ("RTA_DST", "2001:db8::"),
            (
                "RTA_MULTIPATH",
                [
                    {"oif": 3, "hops": 0, "attrs": [("RTA_GATEWAY", "fe80::1")]},
                    {"oif": 4, "hops": 2, "attrs": [("RTA_GATEWAY", "fe80::2")]},
                ],
            ),
        ],
        proto=186,
    )
    _, key, obj = decode_one(msg)
    assert key == (
        socket.AF_INET6,
        254,
        "2001:db8::/32",
        None,
        0,
        0,
        (("fe80::1", 3), ("fe80::2", 4)),
    )
    assert obj.ifindex is None
    assert obj.gateway is None
    # rtnh_hops is the weight minus one, as `ip route` shows it
    assert obj.nexthops == (Hop("fe80::1", 3, 1), Hop("fe80::2", 4, 3))


def test_route_via_attribute_gives_a_gateway_of_the_other_family() -> None:
    # an IPv4 route via an IPv6 next hop (RFC 5549) carries RTA_VIA, hand-built
    via = struct.pack("=H", socket.AF_INET6) + socket.inet_pton(socket.AF_INET6, "fe80::9")
    payload = (
        struct.pack("=BBBBBBBBI", socket.AF_INET, 24, 0, 0, 254, 4, 0, 1, 0)
        + nlattr(rtnl.RTA_TABLE, struct.pack("=I", 254))
        + nlattr(rtnl.RTA_DST, socket.inet_pton(socket.AF_INET, "198.51.100.0"))
        + nlattr(rtnl.RTA_VIA, via)
        + nlattr(rtnl.RTA_OIF, struct.pack("=I", 3))
    )
    _, _, obj = decode_one(nlmsg(rtnl.RTM_NEWROUTE, payload))
    assert (obj.dst, obj.gateway, obj.ifindex) == ("198.51.100.0/24", "fe80::9", 3)


def test_route_source_prefix_is_part_of_the_key() -> None:
    # a source-specific IPv6 route: `ip -6 route add default from 2001:db8:1::/48 dev ...`
    fields = {"family": socket.AF_INET6, "dst_len": 0, "src_len": 48, "table": 254}
    fields |= {"proto": 4, "scope": 0, "type": 1}
    attrs = [("RTA_TABLE", 254), ("RTA_SRC", "2001:db8:1::"), ("RTA_OIF", 3)]
    _, key, obj = decode_one(encode(rtmsg, rtnl.RTM_NEWROUTE, fields, attrs))
    assert obj.src == "2001:db8:1::/48"
    assert key == (socket.AF_INET6, 254, "default", "2001:db8:1::/48", 0, 0, (None, 3))


def test_route_cloned_entries_are_ignored() -> None:
    msg = route_msg(
        socket.AF_INET, 32, [("RTA_DST", "192.0.2.5")], flags=rtnl.RTM_F_CLONED, proto=2
    )
    assert decode_one(msg) is None


def test_route_deletion_has_the_same_key_as_its_addition() -> None:
    attrs = [("RTA_TABLE", 254), ("RTA_DST", "192.0.2.0"), ("RTA_PRIORITY", 5)]
    added = decode_one(route_msg(socket.AF_INET, 24, attrs))
    deleted = decode_one(route_msg(socket.AF_INET, 24, attrs, mtype=rtnl.RTM_DELROUTE))
    assert deleted == ("route", added[1], None)


def test_route_of_multicast_family_is_ignored() -> None:
    # RTNL_FAMILY_IPMR (128): multicast routing tables are not reported
    payload = struct.pack("=BBBBBBBBI", 128, 32, 0, 0, 254, 17, 0, 5, 0)
    assert decode_one(nlmsg(rtnl.RTM_NEWROUTE, payload)) is None


# -- neighbours -------------------------------------------------------------------------------


def neigh_msg(
    family: int,
    state: int,
    attrs: list[Any],
    *,
    flags: int = 0,
    mtype: int = rtnl.RTM_NEWNEIGH,
) -> bytes:
    fields = {"family": family, "ifindex": 3, "state": state, "flags": flags, "ndm_type": 1}
    return encode(ndmsg, mtype, fields, attrs)


def test_neigh_reachable_router_with_lladdr() -> None:
    msg = neigh_msg(
        socket.AF_INET6,
        0x02,
        [("NDA_DST", "2001:db8::2"), ("NDA_LLADDR", "02:00:00:00:00:0a")],
        flags=0x80,
    )
    assert decode_one(msg) == (
        "neigh",
        (socket.AF_INET6, 3, "2001:db8::2"),
        {
            "ifindex": 3,
            "family": "inet6",
            "address": "2001:db8::2",
            "lladdr": "02:00:00:00:00:0a",
            "state": "reachable",
            "flags": ["router"],
        },
    )


@pytest.mark.parametrize(
    ("state", "name"),
    [
        (0x00, "none"),
        (0x01, "incomplete"),
        (0x04, "stale"),
        (0x08, "delay"),
        (0x10, "probe"),
        (0x20, "failed"),
        (0x40, "noarp"),
        (0x80, "permanent"),
    ],
)
def test_neigh_state_names(state: int, name: str) -> None:
    msg = neigh_msg(socket.AF_INET, state, [("NDA_DST", "192.0.2.2")])
    _, _, obj = decode_one(msg)
    assert obj["state"] == name
    assert obj["lladdr"] is None


def test_neigh_bridge_fdb_entries_are_ignored() -> None:
    msg = neigh_msg(AF_BRIDGE, 0x80, [("NDA_LLADDR", "02:00:00:00:00:01")], flags=0x02)
    assert decode_one(msg) is None


def test_neigh_deletion_has_the_same_key_as_its_addition() -> None:
    attrs = [("NDA_DST", "192.0.2.2"), ("NDA_LLADDR", "02:00:00:00:00:0a")]
    added = decode_one(neigh_msg(socket.AF_INET, 0x02, attrs))
    deleted = decode_one(neigh_msg(socket.AF_INET, 0x02, attrs, mtype=rtnl.RTM_DELNEIGH))
    assert deleted == ("neigh", added[1], None)


# -- rules ------------------------------------------------------------------------------------


def rule_msg(attrs: list[Any], *, action: int = 1, table: int = 0, src_len: int = 0) -> bytes:
    fields = {"family": socket.AF_INET, "table": table, "action": action, "src_len": src_len}
    return encode(fibmsg, rtnl.RTM_NEWRULE, fields, attrs)


def test_rule_with_fwmark_mask_iif_source_and_numeric_table() -> None:
    msg = rule_msg(
        [
            ("FRA_PRIORITY", 100),
            ("FRA_TABLE", 1000),
            ("FRA_FWMARK", 0x10),
            ("FRA_FWMASK", 0xFF),
            ("FRA_SRC", "192.0.2.0"),
            ("FRA_IIFNAME", "lm0"),
        ],
        table=252,
        src_len=24,
    )
    table, key, obj = decode_one(msg)
    assert table == "rule"
    assert obj == {
        "family": "inet",
        "priority": 100,
        "not": False,
        "src": "192.0.2.0/24",
        "dst": "all",
        "iif": "lm0",
        "oif": None,
        "fwmark": "0x10/0xff",
        "tos": 0,
        "table": "1000",
        "goto": None,
        "action": "lookup",
    }
    assert key == tuple(obj.items())


@pytest.mark.parametrize(
    ("attrs", "shown"),
    [
        ([("FRA_FWMARK", 0x10), ("FRA_FWMASK", 0xFFFFFFFF)], "0x10"),
        ([("FRA_FWMARK", 0x10)], "0x10"),
        ([("FRA_FWMARK", 0xABC), ("FRA_FWMASK", 0xF00)], "0xabc/0xf00"),
        ([], None),
    ],
)
def test_rule_fwmark_formatting(attrs: list[Any], shown: str | None) -> None:
    msg = rule_msg([("FRA_PRIORITY", 5), ("FRA_TABLE", 254), *attrs])
    _, _, obj = decode_one(msg)
    assert obj["fwmark"] == shown
    assert obj["table"] == "main"


@pytest.mark.parametrize(
    ("value", "shown"), [(0xFFFFFFFF, None), (0, 0), (32, 32)], ids=["unset", "0", "32"]
)
def test_rule_suppress_selectors_are_left_out_when_the_kernel_says_unset(
    value: int, shown: int | None
) -> None:
    # current kernels send both on every rule, -1 meaning "not set": no magic number in events
    attrs = [("FRA_PRIORITY", 5), ("FRA_TABLE", 254)]
    msg = rule_msg([*attrs, ("FRA_SUPPRESS_PREFIXLEN", value), ("FRA_SUPPRESS_IFGROUP", value)])
    _, _, obj = decode_one(msg)
    assert obj.get("suppress_prefixlength") == shown
    assert obj.get("suppress_ifgroup") == shown
    assert ("suppress_prefixlength" in obj) == (shown is not None)


def test_rule_goto_has_no_table() -> None:
    msg = rule_msg([("FRA_PRIORITY", 10), ("FRA_GOTO", 200)], action=2)
    _, _, obj = decode_one(msg)
    assert (obj["action"], obj["goto"], obj["table"]) == ("goto", 200, None)


def test_rule_deletion_has_the_same_key_as_its_addition() -> None:
    attrs = [("FRA_PRIORITY", 100), ("FRA_TABLE", 1000), ("FRA_FWMARK", 1)]
    _, key, _ = decode_one(rule_msg(attrs))
    raw = bytearray(rule_msg(attrs))
    struct.pack_into("=H", raw, 4, rtnl.RTM_DELRULE)
    assert decode_one(bytes(raw)) == ("rule", key, None)


# -- netconf (hand-built: pyroute2 has no encoder for netconfmsg) -----------------------------


def test_netconf_all_with_forwarding_and_loose_rp_filter() -> None:
    msg = netconf_msg(
        socket.AF_INET,
        [(rtnl.NETCONFA_IFINDEX, rtnl.NETCONFA_IFINDEX_ALL), (2, 1), (3, 2)],
    )
    assert decode_one(msg) == (
        "netconf",
        (socket.AF_INET, -1),
        {"forwarding": True, "rp_filter": "loose", "family": "inet", "ifindex": -1},
    )


def test_netconf_notification_carries_only_the_changed_attribute() -> None:
    msg = netconf_msg(socket.AF_INET6, [(rtnl.NETCONFA_IFINDEX, 3), (2, 0)])
    assert decode_one(msg) == (
        "netconf",
        (socket.AF_INET6, 3),
        {"forwarding": False, "family": "inet6", "ifindex": 3},
    )


def test_netconf_full_device_record() -> None:
    attrs = [(rtnl.NETCONFA_IFINDEX, rtnl.NETCONFA_IFINDEX_DEFAULT)]
    attrs += [(2, 0), (3, 1), (4, 0), (5, 0), (6, 0), (7, 1)]
    _, key, obj = decode_one(netconf_msg(socket.AF_INET, attrs))
    assert key == (socket.AF_INET, -2)
    assert obj == {
        "forwarding": False,
        "rp_filter": "strict",
        "mc_forwarding": False,
        "proxy_neigh": False,
        "ignore_routes_with_linkdown": False,
        "input": True,
        "family": "inet",
        "ifindex": -2,
    }


def test_netconf_without_ifindex_or_of_another_family_is_ignored() -> None:
    assert decode_one(netconf_msg(socket.AF_INET, [(2, 1)])) is None
    assert decode_one(netconf_msg(AF_MPLS, [(rtnl.NETCONFA_IFINDEX, 3), (2, 1)])) is None


def test_netconf_deletion_decodes_to_key_and_none() -> None:
    msg = netconf_msg(socket.AF_INET, [(rtnl.NETCONFA_IFINDEX, 7)], mtype=rtnl.RTM_DELNETCONF)
    assert decode_one(msg) == ("netconf", (socket.AF_INET, 7), None)


def test_messages_of_other_types_decode_to_none() -> None:
    assert decode_one(nlmsg(rtnl.NLMSG_DONE, struct.pack("=i", 0))) is None
    assert decode_one(nlmsg(rtnl.RTM_GETLINK, b"\0" * 16)) is None


# -- malformed input --------------------------------------------------------------------------

#: a valid fixed header for each decoder's message type
FIXED_HEADERS = {
    "link": (rtnl.RTM_NEWLINK, struct.pack("=BxHiII", 0, 1, 3, UP_FLAGS, 0)),
    "addr": (rtnl.RTM_NEWADDR, struct.pack("=BBBBI", socket.AF_INET, 24, 0, 0, 3)),
    "route": (
        rtnl.RTM_NEWROUTE,
        struct.pack("=BBBBBBBBI", socket.AF_INET, 24, 0, 0, 254, 4, 0, 1, 0),
    ),
    "neigh": (rtnl.RTM_NEWNEIGH, struct.pack("=BxxxiHBB", socket.AF_INET, 3, 2, 0, 1)),
    "rule": (rtnl.RTM_NEWRULE, struct.pack("=BBBBBBBBI", socket.AF_INET, 0, 0, 0, 254, 0, 0, 1, 0)),
    "netconf": (rtnl.RTM_NEWNETCONF, struct.pack("=Bxxx", socket.AF_INET)),
}


def decode_payload(mtype: int, payload: bytes) -> Any:
    buf = nlmsg(mtype, payload)
    ((_, _, _, _, start, end),) = list(split_messages(buf))
    return decode(mtype, buf, start, end)


def test_split_messages_rejects_a_header_shorter_than_16_bytes() -> None:
    with pytest.raises(DecodeError):
        list(split_messages(struct.pack("=IHH", 20, rtnl.RTM_NEWLINK, 0)))


def test_split_messages_rejects_a_truncated_header_after_a_good_message() -> None:
    good = link_msg(UP_FLAGS, "UP")
    frames = split_messages(good + struct.pack("=IHH", 40, rtnl.RTM_NEWLINK, 0))
    assert next(frames)[0] == rtnl.RTM_NEWLINK
    with pytest.raises(DecodeError):
        next(frames)


def test_split_messages_rejects_a_message_longer_than_the_datagram() -> None:
    good = link_msg(UP_FLAGS, "UP")
    with pytest.raises(DecodeError):
        list(split_messages(good[:-4]))


@pytest.mark.parametrize("mlen", [0, 8, 15])
def test_split_messages_rejects_a_length_below_the_header_size(mlen: int) -> None:
    # a zero length would otherwise frame the same bytes forever
    buf = struct.pack("=IHHII", mlen, rtnl.RTM_NEWLINK, 0, 0, 0) + b"\0" * 16
    with pytest.raises(DecodeError):
        list(split_messages(buf))


@pytest.mark.parametrize("table", sorted(set(FIXED_HEADERS) - {"netconf"}))
def test_payload_shorter_than_the_fixed_header_is_a_decode_error(table: str) -> None:
    mtype, header = FIXED_HEADERS[table]
    with pytest.raises(DecodeError):
        decode_payload(mtype, header[:-1])


@pytest.mark.parametrize("table", sorted(FIXED_HEADERS))
def test_attribute_overrunning_its_message_is_a_decode_error(table: str) -> None:
    mtype, header = FIXED_HEADERS[table]
    overrun = struct.pack("=HH", 64, 1) + b"\0" * 8  # says 64 bytes, has 12
    with pytest.raises(DecodeError):
        decode_payload(mtype, header + overrun)


@pytest.mark.parametrize("table", sorted(FIXED_HEADERS))
def test_attribute_overrunning_its_message_into_the_next_one_is_a_decode_error(table: str) -> None:
    # the bytes after the message are readable (the next message): the end must still hold
    mtype, header = FIXED_HEADERS[table]
    first = nlmsg(mtype, header + struct.pack("=HH", 24, 1) + b"\0" * 4)
    buf = first + link_msg(UP_FLAGS, "UP")
    frames = list(split_messages(buf))
    _, _, _, _, start, end = frames[0]
    with pytest.raises(DecodeError):
        decode(mtype, buf, start, end)


@pytest.mark.parametrize("alen", [0, 1, 3])
@pytest.mark.parametrize("table", sorted(FIXED_HEADERS))
def test_attribute_shorter_than_its_own_header_is_a_decode_error(table: str, alen: int) -> None:
    mtype, header = FIXED_HEADERS[table]
    with pytest.raises(DecodeError):
        decode_payload(mtype, header + struct.pack("=HH", alen, 1) + b"\0" * 8)


def test_nexthop_overrunning_the_multipath_attribute_is_a_decode_error() -> None:
    msg = bytearray(
        route_msg(
            socket.AF_INET,
            24,
            [
                ("RTA_DST", "192.0.2.0"),
                ("RTA_MULTIPATH", [{"oif": 3, "attrs": [("RTA_GATEWAY", "198.51.100.1")]}]),
            ],
        )
    )
    # rtnh_len of the one next hop (after header, rtmsg, RTA_DST, RTA_MULTIPATH header)
    hop = 16 + 12 + 8 + 4
    assert struct.unpack_from("=H", msg, hop)[0] == 16
    struct.pack_into("=H", msg, hop, 64)
    buf = bytes(msg) + link_msg(UP_FLAGS, "UP")
    _, _, _, _, start, end = next(split_messages(buf))
    with pytest.raises(DecodeError):
        decode(rtnl.RTM_NEWROUTE, buf, start, end)


def test_address_of_the_wrong_size_is_a_decode_error() -> None:
    mtype, header = FIXED_HEADERS["addr"]
    with pytest.raises(DecodeError):
        decode_payload(mtype, header + nlattr(rtnl.IFA_LOCAL, b"\xc0\x00\x02"))


def _samples() -> list[bytes]:
    return [
        link_msg(
            UP_FLAGS,
            "UP",
            extra=[
                ("IFLA_ADDRESS", "02:00:00:00:00:01"),
                ("IFLA_LINKINFO", {"attrs": [("IFLA_INFO_KIND", "veth")]}),
            ],
        ),
        addr_msg(socket.AF_INET, 32, [("IFA_ADDRESS", "192.0.2.9"), ("IFA_LOCAL", "192.0.2.1")]),
        addr_msg(socket.AF_INET6, 64, [("IFA_ADDRESS", "2001:db8::1"), ("IFA_FLAGS", 0x100)]),
        route_msg(
            socket.AF_INET6,
            32,
            [
                ("RTA_TABLE", 254),
                ("RTA_DST", "2001:db8::"),
                ("RTA_MULTIPATH", [{"oif": 3, "attrs": [("RTA_GATEWAY", "fe80::1")]}]),
            ],
        ),
        neigh_msg(
            socket.AF_INET, 2, [("NDA_DST", "192.0.2.2"), ("NDA_LLADDR", "02:00:00:00:00:0a")]
        ),
        rule_msg([("FRA_PRIORITY", 100), ("FRA_TABLE", 1000), ("FRA_IIFNAME", "lm0")]),
        netconf_msg(socket.AF_INET, [(rtnl.NETCONFA_IFINDEX, -1), (2, 1), (3, 2)]),
    ]


def _decode_or_error(buf: bytes) -> None:
    with contextlib.suppress(DecodeError):
        for mtype, _, _, _, start, end in split_messages(buf):
            decode(mtype, buf, start, end)


def test_every_truncation_of_a_valid_message_decodes_or_raises_decode_error() -> None:
    for sample in _samples():
        mtype = struct.unpack_from("=H", sample, 4)[0]
        for cut in range(16, len(sample)):
            # the message claims only what is left: attributes are cut mid-way
            buf = bytearray(sample[:cut])
            struct.pack_into("=I", buf, 0, cut)
            _decode_or_error(bytes(buf))
            # the payload end is cut while the bytes beyond it remain readable
            with contextlib.suppress(DecodeError):
                decode(mtype, sample, 16, cut)


def test_random_corruption_decodes_or_raises_decode_error() -> None:
    rng = random.Random(20261121)
    samples = _samples()
    for _ in range(3000):
        buf = bytearray(rng.choice(samples))
        for _ in range(rng.randint(1, 4)):
            buf[rng.randrange(16, len(buf))] = rng.randrange(256)
        _decode_or_error(bytes(buf))


# -- the monitor's hot path on bad input ------------------------------------------------------


def make_replay() -> tuple[ReplaySource, list[Event]]:
    events: list[Event] = []
    source = ReplaySource(Publisher(EventFactory("/linkmond/t", "default"), events.append))
    return source, events


def make_watcher() -> tuple[NetnsWatcher, list[Event]]:
    """A watcher without a socket: feed() is its hot path on one datagram."""
    events: list[Event] = []
    watcher = NetnsWatcher(Publisher(EventFactory("/linkmond/t", "default"), events.append))
    return watcher, events


@pytest.mark.parametrize(
    "garbage",
    [
        b"\x01\x02\x03",
        b"\xff" * 64,
        bytes(range(200)),
        struct.pack("=IHHII", 0, rtnl.RTM_NEWLINK, 0, 0, 0) + b"\0" * 16,
    ],
)
def test_feed_counts_garbage_as_malformed_and_does_not_raise(garbage: bytes) -> None:
    source, events = make_replay()
    source.feed(garbage)
    assert source.skipped_bytes == len(garbage)  # nothing in it frames as a message
    assert events == []
    watcher, events = make_watcher()
    watcher.feed(garbage, len(garbage))
    assert watcher.stats.malformed == 1
    assert events == []


def test_replay_skips_a_bad_message_and_keeps_the_next_one() -> None:
    source, events = make_replay()
    bad = nlmsg(rtnl.RTM_NEWLINK, FIXED_HEADERS["link"][1] + struct.pack("=HH", 0, 3))
    good = link_msg(UP_FLAGS, "UP", ifname="lm1", index=4)
    source.feed(bad + good)
    assert source.malformed == 1
    assert source.messages == 2
    assert [(e.type, e.subject, e.seq) for e in events] == [("link.added", "lm1", 1)]


def test_watcher_feed_handles_garbage_without_a_socket() -> None:
    watcher, events = make_watcher()
    good = link_msg(UP_FLAGS, "UP", ifname="lm1", index=4)
    buf = good + b"\xff" * 20
    watcher.feed(buf, len(buf))
    assert watcher.stats.malformed == 1
    assert [e.type for e in events] == ["link.added"]


def test_replay_fills_the_cache_from_dump_messages_silently() -> None:
    source, events = make_replay()
    dumped = encode(
        ifinfmsg,
        rtnl.RTM_NEWLINK,
        {"family": 0, "index": 3, "flags": UP_FLAGS, "change": 0},
        [("IFLA_IFNAME", "lm0"), ("IFLA_MTU", 1500), ("IFLA_OPERSTATE", "UP")],
        flags=rtnl.NLM_F_MULTI,
    )
    lost = link_msg(
        rtnl.IFF_UP | IFF_BROADCAST | IFF_MULTICAST, "LOWERLAYERDOWN", ifname="lm0", index=3
    )
    source.feed(dumped + lost)
    assert source.malformed == 0
    assert [(e.type, e.subject) for e in events] == [("link.carrier_lost", "lm0")]
    assert events[0].data["changes"] == {
        "carrier": [True, False],
        "operstate": ["up", "lowerlayerdown"],
    }


def test_read_errno_refuses_a_payload_too_short_for_the_code() -> None:
    assert read_errno(struct.pack("=i", -16), 0) == -16
    with pytest.raises(DecodeError):
        read_errno(b"\0\0", 0)
    with pytest.raises(DecodeError):
        read_errno(struct.pack("=i", -16), 0, 2)


class _RecordingSocket:
    def __init__(self) -> None:
        self.requests: list[tuple[str, int, int | None]] = []

    def request_dump(self, table: str, family: int = 0, oif: int | None = None) -> int:
        self.requests.append((table, family, oif))
        return 7000 + len(self.requests)


def test_a_short_nlmsg_error_in_a_dump_reply_is_malformed_not_a_crash() -> None:
    """Found by fuzzing: NLMSG_ERROR with < 4 bytes of payload inside a dump's answer."""
    watcher, events = make_watcher()
    sock = NetlinkSocket()  # a real socket (no privilege needed): replies carry its portid
    try:
        watcher.dump_sock = sock
        watcher.scheduler = DumpScheduler(
            _RecordingSocket(),
            ("link", "route"),
            begin=watcher._begin_dump,
            finish=watcher._finish_dump,
            idle=lambda _round: None,
            reset=lambda _why: None,
        )
        watcher.scheduler.reread("route", socket.AF_INET, 7)
        current = watcher.scheduler.current
        assert current is not None
        short = struct.pack("=IHHII", 18, rtnl.NLMSG_ERROR, 0, current.seq, sock.portid)
        buf = short + b"\0\0" + b"\0\0"  # two bytes of payload, padded to four
        watcher.feed_dump(buf, len(buf))
        assert watcher.stats.malformed == 1
        assert watcher.scheduler.current is None  # the dump ended, as a failure
        assert events == []
    finally:
        sock.close()


# -- replay resynchronises after bad input --------------------------------------------------


def _recording(n: int) -> bytes:
    """``n`` link messages (lm1, lm2, ...) as a recorder writes them, each one an event."""
    return b"".join(link_msg(UP_FLAGS, "UP", ifname=f"lm{i}", index=i + 10) for i in range(n))


def test_replay_after_a_length_that_overruns_finds_the_next_message() -> None:
    data = bytearray(_recording(50))
    first_ten = len(_recording(10))
    size = len(link_msg(UP_FLAGS, "UP", ifname="lm10", index=20))
    struct.pack_into("=I", data, first_ten, 0xFFFFFF)  # the 11th message's length: nonsense
    source, events = make_replay()
    source.feed(bytes(data))
    subjects = [e.subject for e in events]
    assert len(subjects) == 49
    assert "lm10" not in subjects
    assert subjects[-1] == "lm49"  # everything after the damage is still there
    assert source.skipped_bytes == size


def test_replay_with_a_stray_leading_byte_loses_only_that_byte() -> None:
    source, events = make_replay()
    source.feed(b"\x07" + _recording(20))
    assert len(events) == 20
    assert source.skipped_bytes == 1
    assert source.malformed == 0


def test_replay_skips_a_short_timestamp_record_and_goes_on() -> None:
    short = struct.pack("=IHHII", 18, rtnl.NLMSG_TSTAMP, 0, 0, 0) + b"\0\0\0\0"
    data = _recording(5)
    source, events = make_replay()
    source.feed(data[: len(data) // 5 * 2] + short + data[len(data) // 5 * 2 :])
    assert len(events) == 5
    assert source.malformed == 1
    assert source.skipped_bytes == 0


def test_replay_of_a_clean_recording_skips_nothing() -> None:
    source, events = make_replay()
    source.feed(_recording(10))
    assert (len(events), source.malformed, source.skipped_bytes) == (10, 0, 0)


# -- replay reads a recording in chunks, exactly as the whole file --------------------------------


def _stamp(seconds: int) -> bytes:
    """rtmon's NLMSG_TSTAMP record: seconds and microseconds of what follows."""
    return nlmsg(rtnl.NLMSG_TSTAMP, struct.pack("=II", seconds, 0))


def _noop(size: int) -> bytes:
    """A record of ``size`` bytes (a multiple of 4) that decodes to nothing: bulk, cheaply."""
    return nlmsg(rtnl.NLMSG_NOOP, bytes(size - 16))


def _large_damaged_recording() -> tuple[bytes, list[tuple[int, int]]]:
    """~9 MiB as rtmon writes it: a dump of lm0, then carrier flips of lm0 (an event each)
    after timestamps, between records of up to 1 MiB (the longest a message may be), and
    damaged in every way replay must survive. Returns it with the (start, end) of every run
    of damage."""
    rng = random.Random(9)
    down = link_msg(rtnl.IFF_UP | IFF_BROADCAST | IFF_MULTICAST, "LOWERLAYERDOWN")
    up = link_msg(UP_FLAGS, "UP")
    out = bytearray(
        _stamp(1_700_000_000)
        + encode(
            ifinfmsg,
            rtnl.RTM_NEWLINK,
            {"family": 0, "index": 3, "flags": UP_FLAGS, "change": 0},
            [("IFLA_IFNAME", "lm0"), ("IFLA_MTU", 1500), ("IFLA_OPERSTATE", "UP")],
            flags=rtnl.NLM_F_MULTI,
        )
    )
    damage: list[tuple[int, int]] = []

    def spoil(data: bytes) -> None:
        damage.append((len(out), len(out) + len(data)))
        out.extend(data)

    t = 1_700_000_001
    for n in range(10**6):
        if len(out) >= 9 << 20:
            break
        for _ in range(rng.randint(1, 400)):
            out.extend(_stamp(t) + down + _stamp(t + 1) + up)
            t += 2
        out.extend(_noop(rng.choice([1 << 20, rng.randrange(64, 1 << 20, 4)])))
        kind = n % 5
        if kind == 0:  # bytes no header can be framed from, up to 2.5 MiB of them
            spoil(rng.randbytes(rng.choice([1, 3, 4093, 70_000, 5 << 19])))
        elif kind == 1:  # a length that overruns everything
            message = bytearray(down)
            struct.pack_into("=I", message, 0, 0xFFFFFF)
            spoil(bytes(message))
        elif kind == 2:  # a plausible header of the longest length, then garbage
            spoil(
                struct.pack("=IHHII", 1 << 20, rtnl.RTM_NEWLINK, 0, 0, 0)
                + rng.randbytes(rng.randrange(16, 3 << 20))
            )
        elif kind == 3:  # a timestamp record too short to hold a time, a message cut short
            out.extend(nlmsg(rtnl.NLMSG_TSTAMP, b"\0\0\0\0"))
            out.extend(nlmsg(rtnl.RTM_NEWLINK, FIXED_HEADERS["link"][1] + struct.pack("=HH", 0, 3)))
    spoil(up[:-7])  # the recorder was killed mid-write
    return bytes(out), damage


def _replayed(feed: Any) -> tuple[list[tuple[Any, ...]], tuple[int, int, int], list[Any]]:
    """What ``feed(source)`` makes of a recording: the events, the counters, the warnings
    (a decoder's error names a position in the buffer it was given: left out)."""
    source, events = make_replay()
    with capture_logs() as logs:
        feed(source)
    counts = (source.messages, source.malformed, source.skipped_bytes)
    for entry in logs:
        if "error" in entry:
            entry["error"] = re.sub(r" at \d+", " at N", entry["error"])
    return [(e.type, e.subject, e.seq, e.time, e.data) for e in events], counts, logs


def test_replay_from_a_file_in_chunks_decodes_exactly_as_the_whole_file(tmp_path: Path) -> None:
    data, damage = _large_damaged_recording()
    path = tmp_path / "damaged.rtmon"
    path.write_bytes(data)
    whole = _replayed(lambda source: source.feed(data))
    events, (_, malformed, skipped), warnings = whole
    assert len(events) > 1000
    assert {e[0] for e in events} == {"link.carrier_lost", "link.carrier_up"}
    assert malformed > 0
    assert skipped > 0
    assert warnings

    for chunk in (65_521, 1_000_003, 3 << 20, None):
        size = chunk or CHUNK_SIZE
        assert size < len(data)
        # records and runs of damage cross the boundaries between two reads
        assert any(start // size != (end - 1) // size for start, end in damage), size
        with path.open("rb") as f:
            if chunk is None:
                streamed = _replayed(lambda source, f=f: source.feed_file(f))
            else:
                streamed = _replayed(lambda source, f=f, n=chunk: source.feed_file(f, n))
        assert streamed[1] == whole[1], chunk
        assert streamed[2] == whole[2], chunk
        assert streamed[0] == whole[0], chunk
