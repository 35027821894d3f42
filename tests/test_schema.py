"""The event JSON Schema (``linkmond.schema``, shipped as ``docs/events.schema.json``).

The shipped file must be what the code generates now, and the schema must accept every
event the daemon really produces: events made from kernel messages encoded by pyroute2 and
fed through the real decode → state → publisher path (no root needed), the daemon's own
``daemon.*`` events from a real daemon in the current namespace, and (as root) every line
the daemon wrote while real changes were made in a throwaway namespace. It must also refuse
what breaks the contract: an empty subject, a missing field, data of the wrong family.
"""

from __future__ import annotations

import copy
import json
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from pyroute2.netlink.rtnl.fibmsg import fibmsg
from pyroute2.netlink.rtnl.ifaddrmsg import ifaddrmsg
from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg
from pyroute2.netlink.rtnl.ndmsg import ndmsg
from pyroute2.netlink.rtnl.rtmsg import rtmsg

from linkmond import rtnl, schema
from linkmond.events import EVENT_TYPES, Event, EventFactory, with_data
from linkmond.publisher import Publisher
from linkmond.replay import ReplaySource
from linkmond.sinks.journal import MESSAGE_IDS
from tests.helpers import ROOT, Daemon, NetNS, default_config, wait_for
from tests.test_decode import encode, netconf_msg

SCHEMA_FILE = ROOT / "docs" / "events.schema.json"
REGENERATE = ".venv/bin/python -m linkmond.schema > docs/events.schema.json"

JsonEvent = dict[str, Any]


@pytest.fixture(scope="module")
def validator() -> jsonschema.Draft202012Validator:
    """A validator of the shipped schema file (what consumers use)."""
    return jsonschema.Draft202012Validator(json.loads(SCHEMA_FILE.read_text()))


def problems(validator: jsonschema.Draft202012Validator, event: JsonEvent) -> list[str]:
    """Every way ``event`` breaks the schema, as ``path: message``."""
    return [f"{e.json_path}: {e.message}" for e in validator.iter_errors(event)]


def assert_valid(validator: jsonschema.Draft202012Validator, events: list[JsonEvent]) -> None:
    """Every event validates; the failure message names each bad event and why."""
    bad = {
        f"{e.get('type')} {e.get('subject')}: {json.dumps(e)}": found
        for e in events
        if (found := problems(validator, e))
    }
    assert not bad, json.dumps(bad, indent=2)


# -- (a) the shipped file is the generated schema ------------------------------------------


def test_the_shipped_schema_file_is_what_linkmond_schema_generates() -> None:
    assert SCHEMA_FILE.read_text() == schema.schema_text(), (
        f"{SCHEMA_FILE.relative_to(ROOT)} is stale; regenerate it with: {REGENERATE}"
    )


def test_python_m_linkmond_schema_prints_it() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "linkmond.schema"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == schema.schema_text()
    assert result.stdout.endswith("}\n")


def test_it_is_a_draft_2020_12_schema_naming_every_event_type() -> None:
    generated = schema.event_schema()
    jsonschema.Draft202012Validator.check_schema(generated)
    assert generated["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    # one list of types: the schema's, linkmond.events', the journal's MESSAGE_IDs (the catalog)
    assert generated["properties"]["type"]["enum"] == list(schema.TYPES) == list(EVENT_TYPES)
    assert set(schema.TYPES) == set(MESSAGE_IDS)
    assert [rule["if"]["properties"]["type"]["const"] for rule in generated["allOf"]] == list(
        schema.TYPES
    )
    assert generated["properties"]["subject"]["minLength"] == 1


# -- (b) real events validate ---------------------------------------------------------------

IFF_BROADCAST = 0x2
IFF_LOOPBACK = 0x8
IFF_RUNNING = 0x40
IFF_PROMISC = 0x100
IFF_MULTICAST = 0x1000
IFF_DORMANT = 0x20000
BASE = IFF_BROADCAST | IFF_MULTICAST
UP = rtnl.IFF_UP
CARRIER = rtnl.IFF_UP | rtnl.IFF_LOWER_UP | IFF_RUNNING
DUMP = rtnl.NLM_F_MULTI  # a recording's initial dump: fills the cache silently

NUD_INCOMPLETE, NUD_REACHABLE, NUD_STALE, NUD_PERMANENT = 0x01, 0x02, 0x04, 0x80
NTF_ROUTER = 0x80
IFA_F_TENTATIVE, IFA_F_PERMANENT = 0x40, 0x80


def padded(raw: bytes) -> bytes:
    """A message as it sits in a netlink stream: padded to four bytes."""
    return raw + b"\0" * (-len(raw) % 4)


def with_flags(raw: bytes, flags: int) -> bytes:
    """``raw`` with ``nlmsg_flags`` set (hand-built messages have none)."""
    return raw[:6] + flags.to_bytes(2, sys.byteorder) + raw[8:]


def link(
    index: int,
    name: str,
    flags: int,
    operstate: str,
    *,
    mtu: int = 1500,
    master: int | None = None,
    kind: str | None = "veth",
    mac: str | None = None,
    deleted: bool = False,
    nl_flags: int = 0,
) -> bytes:
    attrs: list[Any] = [
        ("IFLA_IFNAME", name),
        ("IFLA_MTU", mtu),
        ("IFLA_OPERSTATE", operstate),
        ("IFLA_ADDRESS", mac or f"02:00:00:00:00:{index:02x}"),
    ]
    if kind is not None:
        attrs.append(("IFLA_LINKINFO", {"attrs": [("IFLA_INFO_KIND", kind)]}))
    if master is not None:
        attrs.append(("IFLA_MASTER", master))
    mtype = rtnl.RTM_DELLINK if deleted else rtnl.RTM_NEWLINK
    fields = {"family": 0, "index": index, "flags": flags, "change": 0}
    return encode(ifinfmsg, mtype, fields, attrs, nl_flags)


def addr(
    index: int,
    address: str,
    prefixlen: int,
    *,
    peer: str | None = None,
    label: str | None = None,
    flags: int = IFA_F_PERMANENT,
    scope: int = 0,
    deleted: bool = False,
) -> bytes:
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    attrs: list[Any] = [("IFA_LOCAL", address), ("IFA_ADDRESS", peer or address)]
    attrs += [("IFA_FLAGS", flags)] + ([("IFA_LABEL", label)] if label else [])
    fields = {"family": family, "prefixlen": prefixlen, "flags": 0, "scope": scope, "index": index}
    return encode(ifaddrmsg, rtnl.RTM_DELADDR if deleted else rtnl.RTM_NEWADDR, fields, attrs)


def route(
    dst: str | None,
    dst_len: int,
    attrs: list[Any],
    *,
    family: int = socket.AF_INET,
    proto: int = 4,
    scope: int = 0,
    rtype: int = 1,
    src_len: int = 0,
    deleted: bool = False,
) -> bytes:
    head: list[Any] = [("RTA_TABLE", 254)] + ([("RTA_DST", dst)] if dst else [])
    fields = {"family": family, "dst_len": dst_len, "src_len": src_len, "table": 254}
    fields |= {"proto": proto, "scope": scope, "type": rtype}
    mtype = rtnl.RTM_DELROUTE if deleted else rtnl.RTM_NEWROUTE
    return encode(rtmsg, mtype, fields, head + attrs)


def neigh(
    index: int,
    address: str,
    state: int,
    lladdr: str | None,
    *,
    flags: int = 0,
    deleted: bool = False,
) -> bytes:
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    attrs: list[Any] = [("NDA_DST", address)] + ([("NDA_LLADDR", lladdr)] if lladdr else [])
    fields = {"family": family, "ifindex": index, "state": state, "flags": flags, "ndm_type": 1}
    return encode(ndmsg, rtnl.RTM_DELNEIGH if deleted else rtnl.RTM_NEWNEIGH, fields, attrs)


def rule(attrs: list[Any], *, action: int = 1, flags: int = 0, deleted: bool = False) -> bytes:
    fields = {"family": socket.AF_INET, "table": 252, "action": action, "flags": flags}
    fields |= {"src_len": 24 if any(a[0] == "FRA_SRC" for a in attrs) else 0}
    return encode(fibmsg, rtnl.RTM_DELRULE if deleted else rtnl.RTM_NEWRULE, fields, attrs)


def netconf(family: int, ifindex: int, nl_flags: int = 0, **values: int) -> bytes:
    numbers = {name: number for number, name in rtnl.NETCONF_ATTRS.items()}
    attrs = [(rtnl.NETCONFA_IFINDEX, ifindex)] + [(numbers[k], v) for k, v in values.items()]
    return with_flags(netconf_msg(family, attrs), nl_flags)


ALL_NETCONF = {
    "forwarding": 0,
    "rp_filter": 0,
    "mc_forwarding": 0,
    "proxy_neigh": 0,
    "ignore_routes_with_linkdown": 0,
    "bc_forwarding": 0,
}
V6_NETCONF = {k: v for k, v in ALL_NETCONF.items() if k not in ("rp_filter", "bc_forwarding")}


def kernel_stream() -> Iterator[bytes]:
    """What the kernel would say: an initial dump (lo, lm0 with carrier, the bridge lmbr0,
    netconf records) and then a change of every kind linkmond reports."""
    lo_flags = UP | rtnl.IFF_LOWER_UP | IFF_RUNNING | IFF_LOOPBACK
    yield link(1, "lo", lo_flags, "UNKNOWN", kind=None, mac="00:00:00:00:00:00", nl_flags=DUMP)
    yield link(3, "lm0", BASE | CARRIER, "UP", nl_flags=DUMP)
    yield link(4, "lm0p", BASE | CARRIER, "UP", nl_flags=DUMP)
    yield link(7, "lmbr0", BASE | CARRIER, "UP", kind="bridge", nl_flags=DUMP)
    yield netconf(socket.AF_INET, rtnl.NETCONFA_IFINDEX_ALL, DUMP, **ALL_NETCONF)
    yield netconf(socket.AF_INET, rtnl.NETCONFA_IFINDEX_DEFAULT, DUMP, **ALL_NETCONF)
    yield netconf(socket.AF_INET6, 3, DUMP, **V6_NETCONF)
    # links: a new one, brought up (LOWER_UP before operstate UP), a pulled cable, an
    # admin flap, then everything link.changed covers
    yield link(5, "lm1", BASE, "DOWN")
    yield link(5, "lm1", BASE | UP | rtnl.IFF_LOWER_UP, "LOWERLAYERDOWN")
    yield link(5, "lm1", BASE | CARRIER, "UP")
    yield link(3, "lm0", BASE | UP, "LOWERLAYERDOWN")
    yield link(3, "lm0", BASE | CARRIER, "UP")
    yield link(3, "lm0", BASE, "DOWN")
    yield link(3, "lm0", BASE | CARRIER, "UP")
    mac = "02:00:00:00:00:99"
    yield link(3, "lm0", BASE | CARRIER, "UP", mtu=9000)
    yield link(3, "lm0", BASE | CARRIER, "UP", mtu=9000, mac=mac)
    yield link(3, "lm0", BASE | CARRIER, "UP", mtu=9000, mac=mac, master=7)
    yield link(3, "lm0", BASE | CARRIER | IFF_PROMISC, "UP", mtu=9000, mac=mac, master=7)
    yield link(5, "lm1", BASE | CARRIER | IFF_DORMANT, "DORMANT")
    yield link(5, "lmwan", BASE | CARRIER | IFF_DORMANT, "DORMANT")
    # addresses: IPv4 with a label, a point-to-point one, IPv6 leaving tentative
    yield addr(3, "192.0.2.1", 24, label="lm0")
    yield addr(3, "192.0.2.5", 32, peer="192.0.2.6", label="lm0:ptp")
    yield addr(3, "2001:db8::1", 64, flags=IFA_F_PERMANENT | IFA_F_TENTATIVE)
    yield addr(3, "2001:db8::1", 64)
    yield addr(5, "fe80::1", 64, scope=253)
    yield addr(3, "192.0.2.5", 32, peer="192.0.2.6", deleted=True)
    # routes: via a gateway, changed; default; IPv6 multipath (bgp), re-weighted; IPv6
    # source routing; blackhole; removed
    via = [("RTA_OIF", 3), ("RTA_GATEWAY", "192.0.2.254"), ("RTA_PRIORITY", 100)]
    yield route("198.51.100.0", 24, via)
    yield route("198.51.100.0", 24, [*via, ("RTA_PREFSRC", "192.0.2.1")])
    yield route(None, 0, [("RTA_OIF", 3), ("RTA_GATEWAY", "192.0.2.254")], proto=16)
    hops = [
        {"oif": 3, "hops": 0, "attrs": [("RTA_GATEWAY", "fe80::1")]},
        {"oif": 4, "hops": 1, "attrs": [("RTA_GATEWAY", "fe80::2")]},
    ]
    v6 = socket.AF_INET6
    yield route("2001:db8:100::", 48, [("RTA_MULTIPATH", hops)], family=v6, proto=186)
    single = [("RTA_OIF", 3), ("RTA_GATEWAY", "fe80::1")]
    yield route("2001:db8:100::", 48, single, family=v6, proto=186)
    sourced = [("RTA_OIF", 3), ("RTA_SRC", "2001:db8:1::")]
    yield route("2001:db8:200::", 48, sourced, family=v6, src_len=64)
    yield route("203.0.113.0", 24, [], rtype=6)
    yield route("203.0.113.0", 24, [], rtype=6, deleted=True)
    # neighbours: resolved, gone stale, an unresolved IPv6 router, removed
    yield neigh(3, "192.0.2.2", NUD_REACHABLE, "02:00:00:00:00:0a")
    yield neigh(3, "192.0.2.2", NUD_STALE, "02:00:00:00:00:0a")
    yield neigh(3, "192.0.2.3", NUD_PERMANENT, "02:00:00:00:00:0b")
    yield neigh(3, "2001:db8::2", NUD_INCOMPLETE, None, flags=NTF_ROUTER)
    yield neigh(3, "2001:db8::2", NUD_INCOMPLETE, None, deleted=True)
    # rules: every selector the decoder knows, an inverted goto, a removal
    full = [
        ("FRA_PRIORITY", 1000),
        ("FRA_TABLE", 100),
        ("FRA_SRC", "192.0.2.0"),
        ("FRA_IIFNAME", "lm0"),
        ("FRA_OIFNAME", "lm1"),
        ("FRA_FWMARK", 0x10),
        ("FRA_FWMASK", 0xFF),
        ("FRA_SUPPRESS_PREFIXLEN", 0xFFFFFFFF),
        ("FRA_SUPPRESS_IFGROUP", 3),
        ("FRA_L3MDEV", 0),
        ("FRA_UID_RANGE", "1000:1999"),
        ("FRA_PROTOCOL", 4),
        ("FRA_IP_PROTO", 6),
        ("FRA_SPORT_RANGE", "1024:65535"),
        ("FRA_DPORT_RANGE", "443:443"),
    ]
    yield rule(full)
    yield rule([("FRA_PRIORITY", 2000), ("FRA_GOTO", 3000)], action=2, flags=rtnl.FIB_RULE_INVERT)
    yield rule(full, deleted=True)
    # netconf: all, default, one interface (IPv6), one device seen first now (silent), then
    # changed (named by its index: no such link is known)
    yield netconf(socket.AF_INET, rtnl.NETCONFA_IFINDEX_ALL, forwarding=1)
    yield netconf(socket.AF_INET, rtnl.NETCONFA_IFINDEX_DEFAULT, rp_filter=2)
    yield netconf(socket.AF_INET6, 3, forwarding=1)
    yield netconf(socket.AF_INET, 99, forwarding=0, rp_filter=1)
    yield netconf(socket.AF_INET, 99, rp_filter=0)
    yield netconf(socket.AF_INET6, 4, forwarding=1)  # never dumped: the old value is unknown
    # lm0 removed: its neighbours and routes go with it (derived, and swept: resync)
    yield link(3, "lm0", BASE, "DOWN", deleted=True)


def replayed_events() -> list[Event]:
    """The events the real decode → state → publisher path makes of :func:`kernel_stream`."""
    events: list[Event] = []
    factory = EventFactory(f"/linkmond/{socket.gethostname()}", "default")
    source = ReplaySource(Publisher(factory, events.append))
    source.feed(b"".join(padded(m) for m in kernel_stream()))
    assert (source.malformed, source.skipped_bytes) == (0, 0)
    return events


#: every type the kernel stream above must produce (all but daemon.*)
KERNEL_TYPES = [t for t in schema.TYPES if not t.startswith("daemon.")]


def test_events_of_every_kernel_family_validate(
    validator: jsonschema.Draft202012Validator,
) -> None:
    events = replayed_events()
    types = {e.type for e in events}
    assert types == set(KERNEL_TYPES), f"missing: {set(KERNEL_TYPES) - types}"
    assert any(e.data.get("resync") for e in events), "a removed link's routes are resync"
    assert any(e.data.get("nexthops") for e in events)
    # what a hold_down sink adds to a link event (the function the fan-out uses)
    damped = [with_data(e, flaps_suppressed=2) for e in events if e.type.startswith("link.")]
    assert_valid(validator, [json.loads(e.jsonl) for e in events + damped])


def test_each_family_example_in_docs_events_md_validates(
    validator: jsonschema.Draft202012Validator,
) -> None:
    """The examples consumers read must be events the schema accepts."""
    text = (ROOT / "docs" / "events.md").read_text()
    examples = [json.loads(b.split("```", 1)[0]) for b in text.split("```json\n")[1:]]
    families = {e["type"].partition(".")[0] for e in examples}
    assert families == {"link", "addr", "route", "neigh", "rule", "netconf", "daemon"}
    assert_valid(validator, examples)


class HostDaemon(Daemon):
    """``linkmond run`` in this process's own network namespace: no root needed (netlink
    needs no privilege), and what it reports of the host is validated too."""

    def command(self) -> list[str]:
        """No ``ip netns exec``: the daemon watches the namespace it is started in."""
        return [sys.executable, "-m", "linkmond", "run", "-c", str(self.config_path)]


def test_a_real_daemons_own_events_validate(
    validator: jsonschema.Draft202012Validator, tmp_path: Path
) -> None:
    daemon = HostDaemon(None, tmp_path)  # type: ignore[arg-type]  # no namespace of its own
    try:
        daemon.start()
    finally:
        code = daemon.stop()
    assert code == 0, daemon.stderr()
    events = daemon.events()
    assert events[0]["type"] == "daemon.started"
    assert events[-1]["type"] == "daemon.stopping"
    assert_valid(validator, events)


# -- (b, root) every line a real daemon wrote in a throwaway namespace ------------------------


def _jsonl(path: Path) -> list[JsonEvent]:
    """The events in a file sink's file, as ``Daemon.events`` reads its own: whole lines only."""
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().split("\n")[:-1] if line]


@pytest.mark.netns
def test_every_line_the_daemon_wrote_for_real_changes_validates(
    validator: jsonschema.Draft202012Validator, ns: NetNS, daemon_factory, tmp_path: Path
) -> None:
    events_path = tmp_path / "events.jsonl"
    damped_path = tmp_path / "damped.jsonl"
    # a second file sink with flap damping, so that flaps_suppressed is in the output too
    damped = (
        f'\n[sinks.damped]\ntype = "file"\npath = "{damped_path}"\n'
        'events = ["link.*"]\nhold_down = "30s"\n'
    )
    config = default_config(events_path, damped)
    ns.veth("lm0", "lm0p")
    daemon: Daemon = daemon_factory(config=config)

    def wait(type_: str, subject: str, after: int, **data: Any) -> JsonEvent:
        return daemon.wait_event(
            lambda e: (
                e["seq"] > after
                and e["type"] == type_
                and e["subject"] == subject
                and all(e["data"].get(k) == v for k, v in data.items())
            ),
            timeout=20,
            what=f"{type_} {subject} {data or ''}",
        )

    # a cable pulled and plugged back (lm0 stays admin up): the damped sink swallows the flap
    # and reports it on lm0's next event
    mark = daemon.mark()
    ns.ip("link", "set", "lm0p", "down")
    lost = wait("link.carrier_lost", "lm0", mark)
    ns.ip("link", "set", "lm0p", "up")
    wait("link.carrier_up", "lm0", lost["seq"])
    ns.ip("link", "set", "lm0", "mtu", "1400")
    wait("link.changed", "lm0", lost["seq"])
    wait_for(
        lambda: any(e["data"].get("flaps_suppressed") for e in _jsonl(damped_path)),
        timeout=20,
        what="flaps_suppressed in the damped sink's file",
    )
    # addresses, routes, neighbours, a rule, a sysctl
    mark = daemon.mark()
    ns.ip("addr", "add", "192.0.2.1/24", "dev", "lm0")
    ns.ip("addr", "add", "2001:db8::1/64", "dev", "lm0", "nodad")
    ns.ip("route", "add", "198.51.100.0/24", "via", "192.0.2.254", "dev", "lm0")
    ns.ip("route", "replace", "198.51.100.0/24", "via", "192.0.2.253", "dev", "lm0")
    ns.ip("neigh", "add", "192.0.2.2", "lladdr", "02:00:00:00:00:02", "dev", "lm0")
    ns.ip("neigh", "replace", "192.0.2.2", "lladdr", "02:00:00:00:00:03", "dev", "lm0")
    ns.ip("rule", "add", "from", "192.0.2.0/24", "table", "100", "priority", "1000")
    ns.ip("rule", "del", "from", "192.0.2.0/24", "table", "100", "priority", "1000")
    ns.run("sysctl", "-w", "net.ipv4.conf.all.forwarding=1")
    wait("addr.added", "lm0", mark, address="2001:db8::1")
    wait("route.changed", "198.51.100.0/24", mark)
    wait("neigh.changed", "192.0.2.2", mark)
    wait("rule.removed", "1000: from 192.0.2.0/24 lookup 100", mark)
    wait("netconf.changed", "all", mark)
    # admin down: the kernel deletes lm0's IPv4 routes without a word; the re-read finds them
    mark = daemon.mark()
    ns.ip("link", "set", "lm0", "down")
    wait("route.removed", "198.51.100.0/24", mark, resync=True)
    ns.ip("link", "set", "lm0", "up")
    daemon.wait_event(  # admin_up then carrier_up, or one admin_up with carrier
        lambda e: e["seq"] > mark and e["subject"] == "lm0" and e["data"].get("carrier") is True,
        timeout=20,
        what="lm0 up with carrier again",
    )
    # an overflow: reload with the smallest receive buffer, then a burst of routes
    assert daemon.proc is not None
    daemon.config_path.write_text(config + '\n[monitor]\nreceive_buffer = "1KiB"\n')
    daemon.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: '"reloaded"' in daemon.stderr(), timeout=20, what="the reload")
    batch = tmp_path / "routes.batch"
    batch.write_text("".join(f"route add 2001:db8:1::{i:x}/128 dev lm0\n" for i in range(1, 2001)))
    ns.ip("-6", "-batch", str(batch))
    daemon.wait_event(lambda e: e["type"] == "daemon.overflow", timeout=30, what="overflow")
    assert daemon.stop() == 0, daemon.stderr()

    events = daemon.events()
    assert events[-1]["type"] == "daemon.stopping"
    families = {e["type"].partition(".")[0] for e in events}
    assert families == {"link", "addr", "route", "neigh", "rule", "netconf", "daemon"}
    daemon_types = {e["type"] for e in events if e["type"].startswith("daemon.")}
    assert daemon_types == {"daemon.started", "daemon.overflow", "daemon.stopping"}
    assert_valid(validator, events)
    assert_valid(validator, _jsonl(damped_path))


# -- (c) what breaks the contract is refused ------------------------------------------------


@pytest.fixture(scope="module")
def good() -> dict[str, JsonEvent]:
    """One valid event per type family, from the replayed stream."""
    found: dict[str, JsonEvent] = {}
    for event in replayed_events():
        found.setdefault(event.type, json.loads(event.jsonl))
    return found


def _without(event: JsonEvent, *path: str) -> JsonEvent:
    broken = copy.deepcopy(event)
    target = broken
    for key in path[:-1]:
        target = target[key]
    del target[path[-1]]
    return broken


def _with(event: JsonEvent, value: Any, *path: str) -> JsonEvent:
    broken = copy.deepcopy(event)
    target = broken
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    return broken


@pytest.mark.parametrize("kind", ["link.carrier_lost", "route.added", "netconf.changed"])
def test_an_empty_subject_is_rejected(
    validator: jsonschema.Draft202012Validator, good: dict[str, JsonEvent], kind: str
) -> None:
    assert not problems(validator, good[kind])
    found = problems(validator, _with(good[kind], "", "subject"))
    assert found == ["$.subject: '' should be non-empty"]


@pytest.mark.parametrize(
    ("kind", "path"),
    [
        ("link.added", ("id",)),
        ("link.added", ("specversion",)),
        ("link.added", ("type",)),
        ("link.added", ("seq",)),
        ("addr.added", ("data",)),
        ("link.carrier_lost", ("data", "carrier")),
        ("link.carrier_lost", ("data", "changes", "carrier")),
        ("addr.changed", ("data", "ifindex")),
        ("route.changed", ("data", "dst")),
        ("neigh.added", ("data", "lladdr")),  # null when unresolved, never left out
        ("rule.added", ("data", "not")),
        ("netconf.changed", ("data", "ifname")),
    ],
)
def test_a_missing_required_field_is_rejected(
    validator: jsonschema.Draft202012Validator,
    good: dict[str, JsonEvent],
    kind: str,
    path: tuple[str, ...],
) -> None:
    found = problems(validator, _without(good[kind], *path))
    assert any(f"'{path[-1]}' is a required property" in p for p in found), found


@pytest.mark.parametrize(
    ("kind", "path", "value"),
    [
        ("link.added", ("id",), "not-a-uuid"),
        ("link.added", ("seq",), 0),
        ("link.added", ("type",), "link.exploded"),
        ("link.added", ("extra",), "an unknown envelope field"),
        ("link.added", ("data", "surprise"), 1),  # data is closed: documented fields only
        ("link.added", ("data", "changes"), {"mtu": [1500, 9000]}),  # added: changes is {}
        ("link.changed", ("data", "changes"), {}),  # changed: something did
        ("link.carrier_lost", ("data", "admin_up"), False),  # carrier events only while up
        ("link.admin_up", ("data", "admin_up"), "yes"),
        ("route.added", ("data", "flaps_suppressed"), 1),
        ("addr.added", ("data", "family"), "inet4"),
        ("neigh.added", ("data", "lladdr"), "02-00-00-00-00-0a"),
        ("netconf.changed", ("data", "forwarding"), None),  # absent or boolean, never null
    ],
)
def test_a_field_that_breaks_the_contract_is_rejected(
    validator: jsonschema.Draft202012Validator,
    good: dict[str, JsonEvent],
    kind: str,
    path: tuple[str, ...],
    value: Any,
) -> None:
    assert problems(validator, _with(good[kind], value, *path))


def test_data_of_another_family_is_rejected(
    validator: jsonschema.Draft202012Validator, good: dict[str, JsonEvent]
) -> None:
    swapped = _with(good["addr.added"], good["link.added"]["data"], "data")
    assert problems(validator, swapped)
    daemon_subject = _with(good["link.added"], "daemon.overflow", "type")
    assert problems(validator, daemon_subject)
