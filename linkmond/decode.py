"""Decode rtnetlink messages into plain dicts, reading only the attributes an event needs.

This is the hot path of a route storm: each decoder is a single pass of ``struct.unpack_from``
over the buffer it was handed (a ``bytes`` or ``memoryview``), with no per-message objects
beyond the dict it returns. pyroute2's generic parser decodes every attribute of every
message and manages ~13k routes/s; these decoders skip what no event uses.

A decoder returns ``(table, key, obj)``: ``table`` names the cache ("link", "addr", ...),
``key`` identifies the object within it as the kernel does, and ``obj`` is ``None`` for a
deletion. Messages that describe nothing linkmond reports (bridge-port link messages, cloned
routes, multicast routing tables, fdb entries) decode to ``None``.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Callable, Hashable, Iterator
from typing import Any, Final

from linkmond import rtnl
from linkmond.routes import Hop, Route

Buffer = bytes | bytearray | memoryview
Obj = dict[str, Any]
Decoded = tuple[str, Hashable, Any]  # the object: an Obj, a Route, or None for a deletion
Decoder = Callable[[Buffer, int, int, bool], Decoded | None]

_inet_ntop: Final = socket.inet_ntop
_NLMSGHDR: Final = struct.Struct("=IHHII")
_NLA: Final = struct.Struct("=HH")
_IFINFOMSG: Final = struct.Struct("=BxHiII")
_IFADDRMSG: Final = struct.Struct("=BBBBI")
_RTMSG: Final = struct.Struct("=BBBBBBBBI")
_NDMSG: Final = struct.Struct("=BxxxiHBB")
_FIB_RULE_HDR: Final = struct.Struct("=BBBBBBBBI")
_RTNEXTHOP: Final = struct.Struct("=HBBi")
_U32: Final = struct.Struct("=I")
_I32: Final = struct.Struct("=i")
_TIMEVAL: Final = struct.Struct("=II")

# Aliases of rtnl's tables for the route decoder: a global lookup instead of rtnl.X (the same
# dict objects, so names rtnl.load_system_names() adds at start-up show here too).
_FAMILIES: Final = rtnl.FAMILY_NAMES
_TABLES: Final = rtnl.TABLE_NAMES
_PROTOCOLS: Final = rtnl.PROTOCOL_NAMES
_SCOPES: Final = rtnl.SCOPE_NAMES
_ROUTE_TYPES: Final = rtnl.ROUTE_TYPE_NAMES
_N_ROUTE_TYPES: Final = len(rtnl.ROUTE_TYPE_NAMES)
_AF_INET6: Final = rtnl.AF_INET6
_new_route: Final = tuple.__new__  # Route(...) without NamedTuple's Python-level __new__

#: Repeated values of a route table (next hops, gateways, metrics) kept once: a full table
#: has a million routes but only a handful of distinct next hops. Bounded: cleared when full.
_INTERNED: dict[Any, Any] = {}
_INTERN_MAX: Final = 65536


def _intern(value: Any) -> Any:
    held = _INTERNED.get(value)
    if held is None:
        if len(_INTERNED) >= _INTERN_MAX:
            _INTERNED.clear()
        _INTERNED[value] = held = value
    return held


class DecodeError(ValueError):
    """A message is shorter than its fixed header says or its attributes overrun it."""


def split_messages(
    buf: Buffer, length: int | None = None
) -> Iterator[tuple[int, int, int, int, int, int]]:
    """Yield ``(type, flags, seq, pid, payload_start, end)`` for each message in a datagram.

    Raises :class:`DecodeError` on a truncated or zero-length header: the rest of that
    datagram cannot be framed and is skipped by the caller.
    """
    end_all = len(buf) if length is None else length
    off = 0
    unpack = _NLMSGHDR.unpack_from
    while off + 16 <= end_all:
        mlen, mtype, mflags, seq, pid = unpack(buf, off)
        if mlen < 16 or off + mlen > end_all:
            raise DecodeError(f"bad nlmsg_len {mlen} at offset {off} of {end_all}")
        yield mtype, mflags, seq, pid, off + 16, off + mlen
        off += (mlen + 3) & ~3
    if off < end_all:
        raise DecodeError(f"{end_all - off} stray bytes after the last message")


class _Attrs(dict[int, tuple[int, int]]):
    """Attribute type → (value start, value end) of one message, with typed getters."""

    __slots__ = ("buf",)

    def __init__(self, buf: Buffer, pos: int, end: int) -> None:
        super().__init__()
        self.buf = buf
        unpack = _NLA.unpack_from
        while pos + 4 <= end:
            alen, atype = unpack(buf, pos)
            if alen < 4 or pos + alen > end:
                raise DecodeError(f"attribute length {alen} at {pos} overruns its message")
            self[atype & 0x3FFF] = (pos + 4, pos + alen)
            pos += (alen + 3) & ~3

    def u32(self, atype: int, default: int = 0) -> int:
        span = self.get(atype)
        return default if span is None else _u32(self.buf, *span)

    def ip(self, atype: int, family: int) -> str | None:
        span = self.get(atype)
        return None if span is None else _ip(family, self.buf, *span)

    def text(self, atype: int) -> str | None:
        span = self.get(atype)
        return None if span is None else _cstr(self.buf, *span)

    def mac(self, atype: int) -> str | None:
        span = self.get(atype)
        return None if span is None else _mac(self.buf, *span)


def _u32(buf: Buffer, start: int, end: int) -> int:
    if end - start < 4:
        raise DecodeError("attribute too short for a u32")
    return int(_U32.unpack_from(buf, start)[0])


def _i32(buf: Buffer, start: int, end: int) -> int:
    if end - start < 4:
        raise DecodeError("attribute too short for an s32")
    return int(_I32.unpack_from(buf, start)[0])


def _cstr(buf: Buffer, start: int, end: int) -> str:
    raw = bytes(buf[start:end])
    return raw.split(b"\0", 1)[0].decode("utf-8", "replace")


def _ip(family: int, buf: Buffer, start: int, end: int) -> str:
    return _inet_ntop(family, buf[start:end])


def _mac(buf: Buffer, start: int, end: int) -> str | None:
    if end <= start:
        return None
    return bytes(buf[start:end]).hex(":")


class LinkObj(dict[str, Any]):
    """A decoded link: the event's fields as items and, beside them, what only the metrics
    read (``linkmond_link_carrier_changes_total``).

    ``carrier_changes`` is the kernel's IFLA_CARRIER_CHANGES (carrier transitions since the
    device was created; None when the message lacks it). It is an attribute, not an item: an
    event's ``data`` is built from the items (a closed JSON Schema), and the diff compares
    named fields only, so a count that changed alone never makes a ``link.changed``. The
    cache stores the object it is given, so the latest count sits beside the link's fields.
    It compares equal to a plain dict with the same items.
    """

    __slots__ = ("carrier_changes",)

    carrier_changes: int | None


def decode_link(buf: Buffer, off: int, end: int, deleted: bool) -> Decoded | None:
    """RTM_NEWLINK / RTM_DELLINK of family AF_UNSPEC (AF_BRIDGE port messages are ignored)."""
    if off + 16 > end:
        raise DecodeError("short ifinfomsg")
    family, _devtype, index, flags, _change = _IFINFOMSG.unpack_from(buf, off)
    if family != rtnl.AF_UNSPEC:
        return None
    if deleted:
        return "link", index, None
    attrs = _Attrs(buf, off + 16, end)
    if rtnl.IFLA_WIRELESS in attrs:
        # a wireless-extensions event (scan done, association) carrying only the name: it says
        # nothing about the link's state, and its missing fields must not read as changes
        return None
    operstate_span = attrs.get(rtnl.IFLA_OPERSTATE)
    operstate = (
        buf[operstate_span[0]] if operstate_span and operstate_span[1] > operstate_span[0] else 0
    )
    info = attrs.get(rtnl.IFLA_LINKINFO)
    kind = _Attrs(buf, *info).text(rtnl.IFLA_INFO_KIND) if info else None
    opername = (
        rtnl.OPERSTATE_NAMES[operstate] if operstate < len(rtnl.OPERSTATE_NAMES) else str(operstate)
    )
    admin_up = bool(flags & rtnl.IFF_UP)
    carrier = (
        admin_up and bool(flags & rtnl.IFF_LOWER_UP) and opername not in rtnl.NO_CARRIER_OPERSTATES
    )
    link = LinkObj(
        {
            "ifindex": index,
            "ifname": attrs.text(rtnl.IFLA_IFNAME) or "",
            "admin_up": admin_up,
            "carrier": carrier,
            "operstate": opername,
            "flags": rtnl.bit_names(flags, rtnl.IFF_NAMES),
            "mtu": attrs.u32(rtnl.IFLA_MTU),
            "mac": attrs.mac(rtnl.IFLA_ADDRESS),
            "kind": kind,
            "master": attrs.u32(rtnl.IFLA_MASTER) or None,
        }
    )
    changes = attrs.get(rtnl.IFLA_CARRIER_CHANGES)
    link.carrier_changes = None if changes is None else _u32(buf, *changes)
    return "link", index, link


def decode_addr(buf: Buffer, off: int, end: int, deleted: bool) -> Decoded | None:
    """RTM_NEWADDR / RTM_DELADDR for IPv4 and IPv6."""
    if off + 8 > end:
        raise DecodeError("short ifaddrmsg")
    family, prefixlen, flags, scope, index = _IFADDRMSG.unpack_from(buf, off)
    if family not in rtnl.FAMILY_NAMES:
        return None
    attrs = _Attrs(buf, off + 8, end)
    address = attrs.ip(rtnl.IFA_ADDRESS, family)
    local = attrs.ip(rtnl.IFA_LOCAL, family)
    label = attrs.text(rtnl.IFA_LABEL)
    flags = attrs.u32(rtnl.IFA_FLAGS, flags)  # the 32-bit flags, when present, win
    # IFA_LOCAL is the interface's own address; IFA_ADDRESS is the peer on point-to-point links.
    own = local or address
    if own is None:
        return None
    peer = address if local is not None and address not in (None, local) else None
    key = (family, index, own, prefixlen)
    if deleted:
        return "addr", key, None
    return (
        "addr",
        key,
        {
            "ifindex": index,
            "family": rtnl.FAMILY_NAMES[family],
            "address": own,
            "prefixlen": prefixlen,
            "peer": peer,
            "scope": rtnl.SCOPE_NAMES.get(scope, str(scope)),
            "label": label,
            "flags": rtnl.addr_flag_names(flags, family),
        },
    )


def decode_route(buf: Buffer, off: int, end: int, deleted: bool) -> Decoded | None:
    """RTM_NEWROUTE / RTM_DELROUTE for IPv4 and IPv6 (cloned/cache entries are ignored)."""
    if off + 12 > end:
        raise DecodeError("short rtmsg")
    family, dst_len, src_len, tos, table, proto, scope, rtype, rflags = _RTMSG.unpack_from(buf, off)
    if family not in _FAMILIES or rflags & 0x200:  # RTM_F_CLONED: a cache entry
        return None
    dst = src = gateway = prefsrc = None
    nexthops = None
    oif = metric = 0
    # one pass over the attributes; the literals are RTA_* numbers (rtnl.RTA_DST is 1, ...)
    # because a module attribute lookup per comparison shows in a route storm
    unpack = _NLA.unpack_from
    u32 = _U32.unpack_from
    ntop = _inet_ntop
    pos = off + 12
    while pos + 4 <= end:
        alen, atype = unpack(buf, pos)
        vend = pos + alen
        if alen < 4 or vend > end:
            raise DecodeError(f"attribute length {alen} at {pos} overruns its message")
        atype &= 0x3FFF
        if atype == 1:  # RTA_DST
            dst = ntop(family, buf[pos + 4 : vend])
        elif atype in {4, 6, 15}:  # RTA_OIF, RTA_PRIORITY, RTA_TABLE
            if alen < 8:
                raise DecodeError("attribute too short for a u32")
            value = u32(buf, pos + 4)[0]
            if atype == 4:
                oif = value
            elif atype == 6:
                metric = value
            else:
                table = value
        elif atype == 5:  # RTA_GATEWAY
            gateway = ntop(family, buf[pos + 4 : vend])
        elif atype == 7:  # RTA_PREFSRC
            prefsrc = ntop(family, buf[pos + 4 : vend])
        elif atype == 2:  # RTA_SRC
            src = ntop(family, buf[pos + 4 : vend])
        elif atype == 9:  # RTA_MULTIPATH
            nexthops = _nexthops(family, buf, pos + 4, vend)
        elif atype == 18:  # RTA_VIA
            gateway = _via(buf, pos + 4, vend)
        pos += (alen + 3) & ~3
    dst_s = "default" if dst is None and dst_len == 0 else f"{dst or _zero(family)}/{dst_len}"
    src_s = None if src is None else f"{src}/{src_len}"
    # The slot (family, table, dst, src, tos, metric) and the next hop(s): routes of one slot
    # coexist when their next hops differ (see State._route_slot for how they replace).
    intern = _intern
    if gateway is not None:
        gateway = intern(gateway)
    if metric > 256:  # small ints are shared by Python already
        metric = intern(metric)
    hops = intern(
        (gateway, oif) if nexthops is None else tuple((h.gateway, h.ifindex) for h in nexthops)
    )
    key = (family, table, dst_s, src_s, tos, metric, hops)
    if deleted:
        return "route", key, None
    return (
        "route",
        key,
        _new_route(
            Route,
            (
                _FAMILIES[family],
                dst_s,
                src_s,
                gateway,
                oif or None,
                _TABLES.get(table) or intern(str(table)),
                _PROTOCOLS.get(proto) or intern(str(proto)),
                _SCOPES.get(scope) or intern(str(scope)),
                _ROUTE_TYPES[rtype] if rtype < _N_ROUTE_TYPES else intern(str(rtype)),
                metric,
                None if prefsrc is None else intern(prefsrc),
                tos,
                nexthops,
            ),
        ),
    )


def _zero(family: int) -> str:
    return "0.0.0.0" if family == rtnl.AF_INET else "::"  # noqa: S104 - an address, not a bind


def _via(buf: Buffer, start: int, end: int) -> str | None:
    family = struct.unpack_from("=H", buf, start)[0]
    if family not in rtnl.FAMILY_NAMES:
        return None
    return _ip(family, buf, start + 2, end)


def _nexthops(family: int, buf: Buffer, pos: int, end: int) -> tuple[Hop, ...]:
    hops: list[Hop] = []
    while pos + 8 <= end:
        rlen, _flags, weight, ifindex = _RTNEXTHOP.unpack_from(buf, pos)
        if rlen < 8 or pos + rlen > end:
            raise DecodeError("rtnexthop overruns RTA_MULTIPATH")
        attrs = _Attrs(buf, pos + 8, pos + rlen)
        via = attrs.get(rtnl.RTA_VIA)
        gateway = _via(buf, *via) if via else attrs.ip(rtnl.RTA_GATEWAY, family)
        hops.append(Hop(gateway, ifindex, weight + 1))
        pos += (rlen + 3) & ~3
    interned: tuple[Hop, ...] = _intern(tuple(hops))
    return interned


def decode_neigh(buf: Buffer, off: int, end: int, deleted: bool) -> Decoded | None:
    """RTM_NEWNEIGH / RTM_DELNEIGH for ARP and NDP (bridge fdb entries are ignored)."""
    if off + 12 > end:
        raise DecodeError("short ndmsg")
    family, index, state, flags, _ntype = _NDMSG.unpack_from(buf, off)
    if family not in rtnl.FAMILY_NAMES:
        return None
    attrs = _Attrs(buf, off + 12, end)
    address = attrs.ip(rtnl.NDA_DST, family)
    lladdr = attrs.mac(rtnl.NDA_LLADDR)
    if address is None:
        return None
    key = (family, index, address)
    if deleted:
        return "neigh", key, None
    states = rtnl.bit_names(state, rtnl.NUD_NAMES)
    return (
        "neigh",
        key,
        {
            "ifindex": index,
            "family": rtnl.FAMILY_NAMES[family],
            "address": address,
            "lladdr": lladdr,
            "state": ",".join(states) if states else "none",
            "flags": rtnl.bit_names(flags, rtnl.NTF_NAMES),
        },
    )


def decode_rule(buf: Buffer, off: int, end: int, deleted: bool) -> Decoded | None:
    """RTM_NEWRULE / RTM_DELRULE: a rule is identified by all of its fields."""
    if off + 12 > end:
        raise DecodeError("short fib_rule_hdr")
    family, dst_len, src_len, tos, table, _r1, _r2, action, rflags = _FIB_RULE_HDR.unpack_from(
        buf, off
    )
    if family not in rtnl.FAMILY_NAMES:
        return None
    attrs = _Attrs(buf, off + 12, end)
    src = attrs.ip(rtnl.FRA_SRC, family)
    dst = attrs.ip(rtnl.FRA_DST, family)
    fwmark = attrs.get(rtnl.FRA_FWMARK)
    fwmask = attrs.u32(rtnl.FRA_FWMASK, 0xFFFFFFFF)
    mark = None
    if fwmark is not None:
        mark = f"0x{_u32(buf, *fwmark):x}" + ("" if fwmask == 0xFFFFFFFF else f"/0x{fwmask:x}")
    table = attrs.u32(rtnl.FRA_TABLE, table)
    obj: Obj = {
        "family": rtnl.FAMILY_NAMES[family],
        "priority": attrs.u32(rtnl.FRA_PRIORITY),
        "not": bool(rflags & rtnl.FIB_RULE_INVERT),
        "src": "all" if src is None else f"{src}/{src_len}",
        "dst": "all" if dst is None else f"{dst}/{dst_len}",
        "iif": attrs.text(rtnl.FRA_IIFNAME),
        "oif": attrs.text(rtnl.FRA_OIFNAME),
        "fwmark": mark,
        "tos": tos,
        "table": rtnl.TABLE_NAMES.get(table) or str(table) if action == 1 else None,
        "goto": attrs.u32(rtnl.FRA_GOTO) if rtnl.FRA_GOTO in attrs else None,
        "action": rtnl.RULE_ACTION_NAMES.get(action, str(action)),
    }
    # the selectors and modifiers newer `ip rule` knows; present ones are part of the identity
    for atype, name in rtnl.RULE_EXTRA_ATTRS.items():
        span = attrs.get(atype)
        if span is not None:
            value = _rule_extra(name, buf, *span)
            if value != _RULE_UNSET or not name.startswith("suppress_"):
                obj[name] = value  # newer kernels send suppress_* always, -1 meaning unset
    key = tuple(obj.items())
    return "rule", key, None if deleted else obj


#: the kernel's "not set" for suppress_prefixlength / suppress_ifgroup (-1 as a u32)
_RULE_UNSET: Final = 0xFFFFFFFF


def _rule_extra(name: str, buf: Buffer, start: int, end: int) -> int | str | bool:
    if name in ("uidrange", "sport", "dport"):  # struct {u32,u32} / {u16,u16} ranges
        fmt = "=II" if name == "uidrange" else "=HH"
        if end - start < struct.calcsize(fmt):
            raise DecodeError(f"FRA {name} too short")
        low, high = struct.unpack_from(fmt, buf, start)
        return f"{low}-{high}"
    if name == "ipproto":
        return int(buf[start]) if end > start else 0
    if name == "protocol":
        value = int(buf[start]) if end > start else 0
        return rtnl.PROTOCOL_NAMES.get(value) or str(value)
    if name == "l3mdev":
        return bool(buf[start]) if end > start else False
    return _u32(buf, start, end)  # suppress_prefixlength, suppress_ifgroup


def decode_netconf(buf: Buffer, off: int, end: int, deleted: bool) -> Decoded | None:
    """RTM_NEWNETCONF / RTM_DELNETCONF: a notification carries only the attribute that changed.

    pyroute2 decodes these as a bare header; the kernel's layout is ``struct netconfmsg``
    (one family byte, padded to four) followed by NETCONFA_* attributes.
    """
    if off + 1 > end:
        raise DecodeError("short netconfmsg")
    family = buf[off]
    if family not in rtnl.FAMILY_NAMES:
        return None
    attrs = _Attrs(buf, off + 4, end)
    if rtnl.NETCONFA_IFINDEX not in attrs:
        return None
    ifindex = _i32(buf, *attrs[rtnl.NETCONFA_IFINDEX])  # -1 all, -2 default
    values: Obj = {}
    for atype, name in rtnl.NETCONF_ATTRS.items():
        if atype in attrs:
            value = _i32(buf, *attrs[atype])
            values[name] = (
                rtnl.RP_FILTER_NAMES.get(value, str(value)) if name == "rp_filter" else bool(value)
            )
    key = (family, ifindex)
    if deleted:
        return "netconf", key, None
    values["family"] = rtnl.FAMILY_NAMES[family]
    values["ifindex"] = ifindex
    return "netconf", key, values


#: message type → (decoder, is_deletion)
DECODERS: Final[dict[int, tuple[Decoder, bool]]] = {
    rtnl.RTM_NEWLINK: (decode_link, False),
    rtnl.RTM_DELLINK: (decode_link, True),
    rtnl.RTM_NEWADDR: (decode_addr, False),
    rtnl.RTM_DELADDR: (decode_addr, True),
    rtnl.RTM_NEWROUTE: (decode_route, False),
    rtnl.RTM_DELROUTE: (decode_route, True),
    rtnl.RTM_NEWNEIGH: (decode_neigh, False),
    rtnl.RTM_DELNEIGH: (decode_neigh, True),
    rtnl.RTM_NEWRULE: (decode_rule, False),
    rtnl.RTM_DELRULE: (decode_rule, True),
    rtnl.RTM_NEWNETCONF: (decode_netconf, False),
    rtnl.RTM_DELNETCONF: (decode_netconf, True),
}


def decode(mtype: int, buf: Buffer, off: int, end: int) -> Decoded | None:
    """Decode one message's payload (``buf[off:end]``) of type ``mtype``; None if not ours."""
    entry = DECODERS.get(mtype)
    if entry is None:
        return None
    try:
        return entry[0](buf, off, end, entry[1])
    except (struct.error, IndexError, OSError, ValueError) as exc:
        if isinstance(exc, DecodeError):
            raise
        raise DecodeError(str(exc)) from exc


def read_errno(buf: Buffer, off: int, end: int | None = None) -> int:
    """The (negative) error code at the start of an NLMSG_ERROR (or NLMSG_DONE) payload.

    Raises :class:`DecodeError` when the payload (``buf[off:end]``) is too short to hold it.
    """
    if (len(buf) if end is None else end) - off < 4:
        raise DecodeError("NLMSG_ERROR/NLMSG_DONE payload shorter than its error code")
    return int(_I32.unpack_from(buf, off)[0])


def read_timestamp(buf: Buffer, off: int) -> float:
    """The time carried by an rtmon NLMSG_TSTAMP record (seconds, microseconds)."""
    secs, usecs = _TIMEVAL.unpack_from(buf, off)
    return float(secs + usecs / 1e6)
