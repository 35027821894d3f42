"""The JSON Schema (draft 2020-12) of linkmond's events, generated from pydantic models.

``python -m linkmond.schema`` prints it; ``docs/events.schema.json`` is that output, and a
test keeps the two equal. ``docs/events.md`` explains the same contract in prose.

How it is built:

- The envelope is :class:`linkmond.events.Event`, restated by :class:`EventEnvelope` with the
  constraints every event meets by construction (a UUIDv7 ``id``, a non-empty ``subject``, as
  CloudEvents requires, ``seq`` from 1, the closed list of ``type`` names). The daemon itself
  never validates its own events on the hot path; these constraints live here, not in
  :class:`~linkmond.events.Event`.
- The ``data`` of each family is a model of its own (:class:`LinkData`, :class:`AddrData`,
  :class:`RouteData`, :class:`NeighData`, :class:`RuleData`, :class:`NetconfData`, and one per
  ``daemon.*`` type), with the field order and the types that ``linkmond.state`` (and
  ``linkmond.daemon``/``linkmond.watcher`` for ``daemon.*``) build.
- The ``type`` selects the ``data`` schema: the top level is the envelope plus one
  ``if``/``then`` per event type (``if`` the type is X, ``then`` data is X's model, refined
  with what that type guarantees: ``changes`` empty on ``*.added``/``*.removed`` and non-empty
  on the others, ``admin_up``/``carrier`` fixed on the link state events, and so on). Plain
  ``if``/``then`` rather than a ``oneOf`` over 22 variants: a validator then reports the one
  field that is wrong instead of "matches none of 22 alternatives", and the envelope appears
  once.

Extra fields: every object with a fixed set of keys is closed (``additionalProperties:
false``): the envelope, each family's ``data``, ``changes``, next hops. The schema is
generated from the same code that builds the events and is checked against real events by
the tests, so a field the code adds without documenting it fails the tests instead of
reaching consumers unannounced; consumers can rely on every documented field being there
with its documented type, and on nothing undocumented appearing. A later linkmond version
may *add* fields (it ships its own schema with them); consumers that must accept events of
newer daemons than their copy of the schema should ignore unknown keys rather than validate
strictly. Only maps whose keys are names the user or a future version picks stay open with
typed values: ``daemon.stopping``'s ``sinks`` (keyed by sink name) and its diagnostic
``stats`` counters.

Fields that the kernel reports only sometimes (the newer policy-rule selectors, the netconf
settings of one address family, ``flaps_suppressed``) are left out of ``data`` when absent,
never ``null``: they are optional properties, not nullable ones. Fields documented as
"string or null" are always present.
"""

from __future__ import annotations

import copy
import json
import sys
from dataclasses import dataclass, field
from typing import Annotated, Any, Final, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field
from pydantic.json_schema import (
    GenerateJsonSchema,
    JsonSchemaValue,
    SkipJsonSchema,
    models_json_schema,
)
from pydantic_core import core_schema

from linkmond.events import EVENT_TYPES, Event

JSON_SCHEMA_DIALECT: Final = "https://json-schema.org/draft/2020-12/schema"

# -- the names ---------------------------------------------------------------------------------

#: every ``type`` linkmond emits, by family, in the order of the contract
EventTypeName = Literal[
    "link.added",
    "link.removed",
    "link.admin_up",
    "link.admin_down",
    "link.carrier_up",
    "link.carrier_lost",
    "link.changed",
    "addr.added",
    "addr.removed",
    "addr.changed",
    "route.added",
    "route.removed",
    "route.changed",
    "neigh.added",
    "neigh.removed",
    "neigh.changed",
    "rule.added",
    "rule.removed",
    "netconf.changed",
    "daemon.started",
    "daemon.overflow",
    "daemon.stopping",
]

#: the address family of addr, route, neigh, rule and netconf events
Family = Literal["inet", "inet6"]
#: a ``[monitor] groups`` name
GroupName = Literal["link", "addr", "route", "neigh", "rule", "netconf"]

#: a kernel number without a name: its decimal digits as a string
_Number = Annotated[str, Field(pattern=r"^[0-9]+$")]
#: IFLA_OPERSTATE (RFC 2863) by name
Operstate = (
    Literal["unknown", "notpresent", "down", "lowerlayerdown", "testing", "dormant", "up"] | _Number
)
#: a link-layer address: lower-case hex bytes joined by colons
Mac = Annotated[str, Field(pattern=r"^[0-9a-f]{2}(:[0-9a-f]{2})*$")]
#: address/prefix length: 192.0.2.0/24, 2001:db8::/32
Prefix = Annotated[str, Field(pattern=r"^[0-9a-fA-F.:]+/[0-9]{1,3}$")]
#: the names of the flag bits that are set, sorted; unknown bits as hex (0x...)
Flags = list[str]


#: a key left out of ``data`` when it does not apply (never ``null``): an optional property
Absent = SkipJsonSchema[None]


def _was(what: str) -> Any:
    """An optional ``changes`` entry: ``[old, new]`` of ``what``, present only if it changed."""
    return Field(None, description=f"[old, new] {what}")


class _Closed(BaseModel):
    """Base of every model with a fixed set of keys: nothing else may appear."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


# -- link --------------------------------------------------------------------------------------


class LinkChanges(_Closed):
    """What changed, field by field, as [old, new]; empty on link.added/link.removed."""

    admin_up: tuple[bool, bool] | Absent = _was("administrative state (IFF_UP)")
    carrier: tuple[bool, bool] | Absent = _was("carrier")
    operstate: tuple[Operstate, Operstate] | Absent = _was("RFC 2863 operational state")
    ifname: tuple[str, str] | Absent = _was("name (a rename)")
    mtu: tuple[int, int] | Absent = _was("MTU")
    mac: tuple[Mac | None, Mac | None] | Absent = _was("link-layer address")
    master: tuple[str | None, str | None] | Absent = _was("master device name (bridge, bond, VRF)")
    kind: tuple[str | None, str | None] | Absent = _was("device kind")
    flags: tuple[Flags, Flags] | Absent = _was(
        "flags other than up/running/lower_up/dormant (promisc, ...)"
    )


class LinkData(_Closed):
    """data of link.*: the link's state after the change (before it, for removed)."""

    ifindex: Annotated[int, Field(ge=1, description="Kernel interface index")]
    ifname: Annotated[str, Field(description="Interface name")]
    admin_up: Annotated[bool, Field(description="IFF_UP: administratively up (ip link set up)")]
    carrier: Annotated[
        bool,
        Field(
            description="Admin up AND IFF_LOWER_UP AND operstate not down/lowerlayerdown/"
            "notpresent: the link can carry traffic"
        ),
    ]
    operstate: Annotated[Operstate, Field(description="IFLA_OPERSTATE (RFC 2863), by name")]
    flags: Annotated[Flags, Field(description="Interface flags (IFF_*), by name")]
    mtu: Annotated[int, Field(ge=0)]
    mac: Annotated[Mac | None, Field(description="IFLA_ADDRESS; null when the link has none")]
    kind: Annotated[str | None, Field(description="Device kind (veth, bridge, ...); null if none")]
    master: Annotated[
        str | None,
        Field(description="Name of the master device; null when none (or not known yet)"),
    ]
    changes: LinkChanges
    resync: Annotated[
        bool, Field(description="Found by re-dumping the table, not announced by the kernel")
    ]
    flaps_suppressed: Annotated[int, Field(ge=1)] | Absent = Field(
        None,
        description="Only from sinks with hold_down: flaps of this link swallowed since its "
        "last delivered event",
    )


# -- addr --------------------------------------------------------------------------------------


class AddrChanges(_Closed):
    """What changed, as [old, new]; empty on addr.added/addr.removed."""

    peer: tuple[str | None, str | None] | Absent = _was("peer address")
    scope: tuple[str, str] | Absent = _was("scope")
    label: tuple[str | None, str | None] | Absent = _was("label")
    flags: tuple[Flags, Flags] | Absent = _was("address flags")


class AddrData(_Closed):
    """data of addr.*: one IPv4 or IPv6 address of an interface."""

    ifindex: Annotated[int, Field(ge=1)]
    ifname: Annotated[
        str | None, Field(description="Interface name; null if the link is not known")
    ]
    family: Family
    address: Annotated[str, Field(description="The interface's own address (IFA_LOCAL)")]
    prefixlen: Annotated[int, Field(ge=0, le=128)]
    peer: Annotated[str | None, Field(description="Peer of a point-to-point address, else null")]
    scope: Annotated[str, Field(description="global, site, link, host, nowhere, or the number")]
    label: Annotated[str | None, Field(description="IPv4 label (eth0:1); null for IPv6")]
    flags: Annotated[
        Flags,
        Field(
            description="permanent, secondary (IPv4) / temporary (IPv6), tentative, dadfailed, "
            "deprecated, nodad, noprefixroute, ..."
        ),
    ]
    changes: AddrChanges
    resync: bool


# -- route -------------------------------------------------------------------------------------


class NextHop(_Closed):
    """One next hop of a multipath route."""

    gateway: str | None
    ifindex: Annotated[int, Field(ge=0)]
    weight: Annotated[int, Field(ge=1, le=256)]
    ifname: str | None


class NextHopChange(_Closed):
    """A next hop as changes.nexthops shows it (without the name)."""

    gateway: str | None
    ifindex: Annotated[int, Field(ge=0)]
    weight: Annotated[int, Field(ge=1, le=256)]


class RouteChanges(_Closed):
    """What changed, as [old, new]; empty on route.added/route.removed."""

    gateway: tuple[str | None, str | None] | Absent = _was("gateway")
    ifindex: tuple[int | None, int | None] | Absent = _was("output device index")
    protocol: tuple[str, str] | Absent = _was("protocol")
    scope: tuple[str, str] | Absent = _was("scope")
    type: tuple[str, str] | Absent = _was("route type")
    prefsrc: tuple[str | None, str | None] | Absent = _was("preferred source")
    nexthops: tuple[list[NextHopChange] | None, list[NextHopChange] | None] | Absent = _was(
        "next hops"
    )
    ifname: tuple[str | None, str | None] | Absent = _was("output device name (with ifindex)")


class RouteData(_Closed):
    """data of route.*: one IPv4 or IPv6 route."""

    family: Family
    dst: Annotated[
        str,
        Field(
            pattern=r"^(default|[0-9a-fA-F.:]+/[0-9]{1,3})$",
            description="Destination prefix, or default",
        ),
    ]
    src: Annotated[Prefix | None, Field(description="Source prefix (IPv6 source routing)")]
    gateway: str | None
    ifindex: Annotated[int | None, Field(ge=1, description="Output device; null if none")]
    table: Annotated[
        str, Field(description="main, local, default, a name from rt_tables, or the number")
    ]
    protocol: Annotated[
        str,
        Field(description="kernel, boot, static, dhcp, ra, bgp, ... or the number"),
    ]
    scope: Annotated[str, Field(description="global, site, link, host, nowhere, or the number")]
    type: Annotated[
        str,
        Field(
            description="unicast, local, broadcast, anycast, multicast, blackhole, "
            "unreachable, prohibit, throw, nat, ... or the number"
        ),
    ]
    metric: Annotated[int, Field(ge=0)]
    prefsrc: str | None
    tos: Annotated[int, Field(ge=0, le=255)]
    nexthops: Annotated[
        list[NextHop] | None, Field(description="The next hops of a multipath route, else null")
    ]
    ifname: Annotated[str | None, Field(description="Name of ifindex; null if none or unknown")]
    changes: RouteChanges
    resync: bool


# -- neigh -------------------------------------------------------------------------------------


class NeighChanges(_Closed):
    """What changed, as [old, new]; empty on neigh.added/neigh.removed."""

    lladdr: tuple[Mac | None, Mac | None] | Absent = _was("link-layer address")
    state: tuple[str, str] | Absent = _was("NUD state")
    flags: tuple[Flags, Flags] | Absent = _was("neighbour flags")


class NeighData(_Closed):
    """data of neigh.*: one ARP (IPv4) or NDP (IPv6) neighbour entry."""

    ifindex: Annotated[int, Field(ge=1)]
    ifname: Annotated[
        str | None, Field(description="Interface name; null if the link is not known")
    ]
    family: Family
    address: str
    lladdr: Annotated[Mac | None, Field(description="null while unresolved")]
    state: Annotated[
        str,
        Field(
            description="NUD states joined by commas: incomplete, reachable, stale, delay, "
            "probe, failed, noarp, permanent; none for NUD_NONE"
        ),
    ]
    flags: Annotated[Flags, Field(description="router, proxy, extern_learn, ...")]
    changes: NeighChanges
    resync: bool


# -- rule --------------------------------------------------------------------------------------


#: low-high
Range = Annotated[str, Field(pattern=r"^[0-9]+-[0-9]+$")]


class NoChanges(_Closed):
    """Always empty: a rule is identified by all of its fields, so it never changes."""


class RuleData(_Closed):
    """data of rule.*: one policy routing rule, as ip rule shows it."""

    family: Family
    priority: Annotated[int, Field(ge=0)]
    not_: Annotated[bool, Field(alias="not", description="The selector is inverted")]
    src: Annotated[str, Field(description="Source prefix, or all")]
    dst: Annotated[str, Field(description="Destination prefix, or all")]
    iif: str | None
    oif: str | None
    fwmark: Annotated[str | None, Field(description="0x1 or 0x1/0xff")]
    tos: Annotated[int, Field(ge=0, le=255)]
    table: Annotated[str | None, Field(description="For action lookup: table name or number")]
    goto: Annotated[int | None, Field(description="For action goto: the target priority")]
    action: Annotated[
        str,
        Field(description="lookup, goto, nop, blackhole, unreachable, prohibit, or the number"),
    ]
    # the selectors and modifiers of newer kernels: present when the kernel sends them
    suppress_ifgroup: Annotated[int, Field(ge=0)] | Absent = None
    suppress_prefixlength: Annotated[int, Field(ge=0)] | Absent = Field(
        None, description="4294967295 when not set"
    )
    l3mdev: bool | Absent = None
    uidrange: Range | Absent = None
    protocol: str | Absent = Field(None, description="Who installed the rule (boot, static, ...)")
    ipproto: Annotated[int, Field(ge=0, le=255)] | Absent = None
    sport: Range | Absent = None
    dport: Range | Absent = None
    changes: NoChanges
    resync: bool


# -- netconf -----------------------------------------------------------------------------------

#: reverse-path filtering: 0 off, 1 strict, 2 loose
RpFilter = Literal["off", "strict", "loose"] | _Number


def _setting() -> Any:
    """An optional netconf ``changes`` entry: old is null when never seen before."""
    return Field(None, description="[old, new]; old is null when the value was not known before")


class NetconfChanges(_Closed):
    """What changed, as [old, new]; never empty."""

    forwarding: tuple[bool | None, bool] | Absent = _setting()
    rp_filter: tuple[RpFilter | None, RpFilter] | Absent = _setting()
    mc_forwarding: tuple[bool | None, bool] | Absent = _setting()
    proxy_neigh: tuple[bool | None, bool] | Absent = _setting()
    ignore_routes_with_linkdown: tuple[bool | None, bool] | Absent = _setting()
    input: tuple[bool | None, bool] | Absent = _setting()
    bc_forwarding: tuple[bool | None, bool] | Absent = _setting()


class NetconfData(_Closed):
    """data of netconf.changed: the per-interface IP settings (sysctl
    net.ipv4.conf.* / net.ipv6.conf.*) the kernel announces, all known values after
    the change. Which settings appear depends on the family and the kernel (IPv6 has no
    rp_filter)."""

    family: Family
    ifindex: Annotated[int, Field(ge=-2, description="-1 for all, -2 for default")]
    ifname: Annotated[
        str, Field(description="all, default, the interface name, or if<index> if unknown")
    ]
    forwarding: bool | Absent = None
    rp_filter: RpFilter | Absent = None
    mc_forwarding: bool | Absent = None
    proxy_neigh: bool | Absent = None
    ignore_routes_with_linkdown: bool | Absent = None
    input: bool | Absent = None
    bc_forwarding: bool | Absent = None
    changes: NetconfChanges
    resync: bool


# -- daemon ------------------------------------------------------------------------------------


class TableCounts(_Closed):
    """Objects in the cache per table after the initial dump."""

    link: Annotated[int, Field(ge=0)]
    addr: Annotated[int, Field(ge=0)]
    route: Annotated[int, Field(ge=0)]
    neigh: Annotated[int, Field(ge=0)]
    rule: Annotated[int, Field(ge=0)]
    netconf: Annotated[int, Field(ge=0)]


class DaemonStartedData(_Closed):
    """data of daemon.started: published once the kernel's state is cached (once per
    watched namespace)."""

    version: Annotated[str, Field(description="linkmond's version")]
    pid: Annotated[int, Field(ge=1)]
    netns: Annotated[str, Field(description="The watched namespace, as in the envelope")]
    groups: Annotated[list[GroupName], Field(description="[monitor] groups")]
    receive_buffer: Annotated[
        int, Field(ge=0, description="Effective netlink receive buffer, bytes")
    ]
    counts: TableCounts
    links_with_carrier: Annotated[int, Field(ge=0, description="Links admin up with carrier")]


class DaemonOverflowData(_Closed):
    """data of daemon.overflow: the receive buffer overflowed and the re-dump ended."""

    events: Annotated[int, Field(ge=0, description="Events (resync: true) the re-dump produced")]
    overflows: Annotated[int, Field(ge=1, description="Overflows since the daemon started")]


class StopStats(BaseModel):
    """The reader's counters over the whole run; more counters may appear (all numbers)."""

    model_config = ConfigDict(
        extra="allow", frozen=True, json_schema_extra={"additionalProperties": {"type": "number"}}
    )

    events: Annotated[int, Field(ge=0, description="Events published")]
    messages: Annotated[int, Field(ge=0, description="Netlink messages read")]
    malformed: Annotated[int, Field(ge=0, description="Messages that did not decode")]
    overflows: Annotated[int, Field(ge=0)]
    resyncs: Annotated[int, Field(ge=0, description="Full re-dumps after overflows")]
    dumps_full: Annotated[int, Field(ge=0)]
    dumps_targeted: Annotated[int, Field(ge=0, description="Per-device re-reads")]
    pauses: Annotated[int, Field(ge=0, description="Times full lossless sinks paused the reader")]
    paused_seconds: Annotated[float, Field(ge=0)]


class SinkCounters(_Closed):
    """What happened to the events offered to one sink."""

    delivered: Annotated[int, Field(ge=0)]
    dropped: Annotated[int, Field(ge=0, description="Refused by a full drop_newest buffer")]
    failures: Annotated[int, Field(ge=0, description="Failed deliveries (retried)")]
    queued: Annotated[int, Field(ge=0, description="Still waiting when shutdown began")]


class DaemonStoppingData(_Closed):
    """data of daemon.stopping: the last event of a run, before the sinks drain (or of one
    namespace's watch, when the daemon lets go of it)."""

    reason: Annotated[
        str,
        Field(
            description="SIGTERM, SIGINT, stdout closed (monitor), or stopped; for one "
            "namespace let go of while the daemon runs: netns removed, or no longer in "
            "[monitor] netns"
        ),
    ]
    stats: StopStats
    sinks: Annotated[dict[str, SinkCounters], Field(description="Counters by sink name")]


# -- the envelope ------------------------------------------------------------------------------

_UUID7: Final = r"^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$"
_RFC3339_MICROS_UTC: Final = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{6}Z$"


class EventEnvelope(Event):
    """One linkmond event: a CloudEvents 1.0 structured-mode JSON object."""

    specversion: Annotated[Literal["1.0"], Field(description="CloudEvents version")]
    id: Annotated[
        str,
        Field(
            pattern=_UUID7,
            description="UUIDv7: unique, time-ordered; the same on every webhook retry",
        ),
    ]
    source: Annotated[str, Field(pattern=r"^/linkmond/.+$", description="/linkmond/<hostname>")]
    type: Annotated[EventTypeName, Field(description="What happened; selects the data schema")]
    time: Annotated[
        str,
        Field(
            pattern=_RFC3339_MICROS_UTC,
            json_schema_extra={"format": "date-time"},
            description="When the change was seen (replay: when it was recorded); "
            "RFC 3339, UTC, microseconds",
        ),
    ]
    subject: Annotated[
        str,
        Field(
            min_length=1,
            description="Interface name (link, addr, netconf: or all/default), route "
            "destination, neighbour address, rule as ip rule shows it, linkmond (daemon)",
        ),
    ]
    seq: Annotated[
        int, Field(ge=1, description="Consecutive per daemon run, from 1 (CloudEvents extension)")
    ]
    netns: Annotated[
        str,
        Field(
            min_length=1,
            description="Watched network namespace as ip netns names it, or default "
            "(CloudEvents extension)",
        ),
    ]
    data: Annotated[dict[str, Any], Field(description="The payload; its schema depends on type")]


# -- what each type guarantees -----------------------------------------------------------------

_NO_CHANGES: Final = {"changes": {"maxProperties": 0}}
_SOME_CHANGES: Final = {"changes": {"minProperties": 1}}


@dataclass(frozen=True)
class TypeContract:
    """One event type: its ``data`` model, what triggers it, and what it guarantees beyond
    the model (JSON Schema keywords applied to ``data.properties``)."""

    data: type[BaseModel]
    trigger: str
    data_properties: dict[str, Any] = field(default_factory=dict)
    subject: dict[str, Any] = field(default_factory=dict)


def _link_state(admin_up: bool, carrier: bool, changed: str) -> dict[str, Any]:
    return {
        "admin_up": {"const": admin_up},
        "carrier": {"const": carrier},
        "changes": {"required": [changed]},
    }


_DAEMON_SUBJECT: Final = {"const": "linkmond"}

#: every event type, in the order of the contract
TYPES: Final[dict[str, TypeContract]] = {
    "link.added": TypeContract(LinkData, "A network interface appeared", _NO_CHANGES),
    "link.removed": TypeContract(
        LinkData, "An interface was deleted; data is its last known state", _NO_CHANGES
    ),
    "link.admin_up": TypeContract(
        LinkData,
        "IFF_UP was set (ip link set X up); carrier may still be false",
        {"admin_up": {"const": True}, "changes": {"required": ["admin_up"]}},
    ),
    "link.admin_down": TypeContract(
        LinkData,
        "IFF_UP was cleared (ip link set X down, ifconfig X down); never also carrier_lost",
        _link_state(False, False, "admin_up"),
    ),
    "link.carrier_up": TypeContract(
        LinkData,
        "An administratively up link gained carrier",
        _link_state(True, True, "carrier"),
    ),
    "link.carrier_lost": TypeContract(
        LinkData,
        "An administratively up link lost carrier (cable pulled, peer down)",
        _link_state(True, False, "carrier"),
    ),
    "link.changed": TypeContract(
        LinkData,
        "mtu, name, mac, master, kind or flags (promisc, ...) changed, or the operstate "
        "changed without an admin or carrier change",
        _SOME_CHANGES,
    ),
    "addr.added": TypeContract(AddrData, "An address was added", _NO_CHANGES),
    "addr.removed": TypeContract(AddrData, "An address was removed", _NO_CHANGES),
    "addr.changed": TypeContract(
        AddrData, "peer, scope, label or flags of an address changed", _SOME_CHANGES
    ),
    "route.added": TypeContract(RouteData, "A route appeared", _NO_CHANGES),
    "route.removed": TypeContract(
        RouteData,
        "A route went away (resync: true when the kernel removed it silently)",
        _NO_CHANGES,
    ),
    "route.changed": TypeContract(
        RouteData,
        "gateway, device, protocol, scope, type, prefsrc or next hops of a route changed",
        _SOME_CHANGES,
    ),
    "neigh.added": TypeContract(NeighData, "A neighbour entry appeared", _NO_CHANGES),
    "neigh.removed": TypeContract(NeighData, "A neighbour entry went away", _NO_CHANGES),
    "neigh.changed": TypeContract(
        NeighData, "lladdr, NUD state or flags of a neighbour changed", _SOME_CHANGES
    ),
    "rule.added": TypeContract(RuleData, "A policy routing rule was added"),
    "rule.removed": TypeContract(RuleData, "A policy routing rule was removed"),
    "netconf.changed": TypeContract(
        NetconfData,
        "A per-interface IP setting changed (forwarding, rp_filter, ...)",
        _SOME_CHANGES,
    ),
    "daemon.started": TypeContract(
        DaemonStartedData,
        "The daemon subscribed and cached the kernel's state",
        subject=_DAEMON_SUBJECT,
    ),
    "daemon.overflow": TypeContract(
        DaemonOverflowData,
        "Notifications were lost (receive buffer overflow); the re-dump that recovered them "
        "has ended",
        subject=_DAEMON_SUBJECT,
    ),
    "daemon.stopping": TypeContract(
        DaemonStoppingData,
        "The daemon is stopping; the last event of a run",
        subject=_DAEMON_SUBJECT,
    ),
}

assert tuple(TYPES) == get_args(EventTypeName) == EVENT_TYPES, "the lists of event types disagree"


# -- generation --------------------------------------------------------------------------------


class _Generator(GenerateJsonSchema):
    """pydantic's generator without per-field titles and defaults.

    Titles repeat the field name; defaults are meaningless for events (every listed field
    is written, and the optional ones are left out, not defaulted).
    """

    def field_title_should_be_set(self, schema: Any) -> bool:
        """Never: the property name says it."""
        return False

    def default_schema(self, schema: core_schema.WithDefaultSchema) -> JsonSchemaValue:
        """The inner schema, without ``default``."""
        return self.generate_inner(schema["schema"])


#: the models whose schemas go into ``$defs`` (nested ones follow by reference)
_MODELS: Final[tuple[type[BaseModel], ...]] = (
    EventEnvelope,
    *dict.fromkeys(c.data for c in TYPES.values()),
)


def event_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of one event, as a dict."""
    _, top = models_json_schema(
        [(model, "validation") for model in _MODELS],
        ref_template="#/$defs/{model}",
        schema_generator=_Generator,
    )
    defs: dict[str, Any] = top["$defs"]
    envelope = defs.pop(EventEnvelope.__name__)
    rules = []
    for name, contract in TYPES.items():
        data: dict[str, Any] = {"$ref": f"#/$defs/{contract.data.__name__}"}
        if contract.data_properties:
            data["properties"] = copy.deepcopy(contract.data_properties)
        then: dict[str, Any] = {"properties": {"data": data}}
        if contract.subject:
            then["properties"]["subject"] = dict(contract.subject)
        rules.append(
            {
                "if": {"properties": {"type": {"const": name}}, "required": ["type"]},
                "then": then,
                "description": f"{name}: {contract.trigger}",
            }
        )
    return {
        "$schema": JSON_SCHEMA_DIALECT,
        "title": "linkmond event",
        "description": (
            "One event of linkmond: a CloudEvents 1.0 structured-mode JSON object whose type "
            "selects the schema of data. Generated by python -m linkmond.schema; explained "
            "in docs/events.md."
        ),
        "type": "object",
        "properties": envelope["properties"],
        "required": envelope["required"],
        "additionalProperties": envelope["additionalProperties"],
        "allOf": rules,
        "$defs": defs,
    }


def schema_text() -> str:
    """The schema as ``python -m linkmond.schema`` prints it: sorted keys, indent 2, newline."""
    return json.dumps(event_schema(), sort_keys=True, indent=2) + "\n"


def main() -> int:
    """Print the schema on stdout."""
    sys.stdout.write(schema_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
