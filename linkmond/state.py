"""The kernel-state cache and the diff that turns rtnetlink messages into semantic changes.

The kernel repeats itself (several RTM_NEWLINK for one ``ip link set``, a carrier flip with
``ifi_change == 0``), so no event is derived from a message alone: each decoded object is
compared with the cached copy of the same object, and only a real difference of a field users
care about becomes a :class:`Change`. One kernel message yields at most one change.

Dumps feed the same cache. While a table is being re-dumped, every key the dump or a newer
notification touches is marked; at the end of the dump the keys nobody touched are gone from
the kernel (lost in an overflow, or deleted silently as IPv4 routes are on link-down) and
become ``*.removed`` changes.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Any, Final

from linkmond.decode import Obj

TABLES: Final = ("link", "addr", "route", "neigh", "rule", "netconf")
#: how many removed links keep their name for late messages
REMEMBER_REMOVED_NAMES: Final = 1024

#: Flags already represented by admin_up / carrier / operstate: not reported again as flags.
_STATE_FLAGS: Final = frozenset({"up", "running", "lower_up", "dormant"})
#: Operstates that say something beyond admin state and carrier.
_NOTABLE_OPERSTATES: Final = frozenset({"dormant", "testing", "notpresent"})

_LINK_FIELDS: Final = ("ifname", "mtu", "mac", "master", "kind")
_ADDR_FIELDS: Final = ("peer", "scope", "label", "flags")
_ROUTE_FIELDS: Final = (
    "gateway",
    "ifindex",
    "protocol",
    "scope",
    "type",
    "prefsrc",
    "nexthops",
)
_NEIGH_FIELDS: Final = ("lladdr", "state", "flags")


@dataclass(slots=True)
class Change:
    """One semantic change: the event type, its subject and its ``data`` payload."""

    type: str
    subject: str
    data: dict[str, Any]
    ifname: str | None


class State:
    """Caches of links, addresses, routes, neighbours, rules and netconf, keyed as the kernel does.

    ``apply`` is the only way in: it updates the cache and returns the change, if any.
    """

    def __init__(self) -> None:
        self.tables: dict[str, dict[Hashable, Obj]] = {name: {} for name in TABLES}
        #: last known name of every ifindex seen, kept a while after removal (late messages)
        self.names: dict[int, str] = {}
        self._removed: deque[Any] = deque()
        self._touched: dict[str, set[Hashable]] = {}
        #: route slot → the key of the route in it, or a set when several share it
        self._slots: dict[Any, Any] = {}
        #: set when a route deletion could not be matched; the monitor re-dumps routes
        self.needs_route_dump = False

    # -- lookups -------------------------------------------------------------------------

    def ifname(self, ifindex: int | None) -> str | None:
        """The name of an interface index, or None when unknown."""
        if not ifindex:
            return None
        return self.names.get(ifindex)

    def counts(self) -> dict[str, int]:
        """Number of cached objects per table."""
        return {name: len(table) for name, table in self.tables.items()}

    def links_with_carrier(self) -> int:
        """How many links are admin up with carrier: "really ready" NICs."""
        return sum(1 for link in self.tables["link"].values() if link["carrier"])

    # -- resync bookkeeping ----------------------------------------------------------------

    def begin_resync(self, table: str) -> None:
        """Start marking the keys of ``table`` that a dump or a newer notification touches."""
        self._touched[table] = set()

    def abort_resync(self, table: str) -> None:
        """Forget the marks of a dump whose result cannot be trusted to be complete."""
        self._touched.pop(table, None)

    def end_resync(self, table: str, *, emit: bool) -> list[Change]:
        """Drop the keys of ``table`` nobody touched since :meth:`begin_resync`.

        Returns their ``*.removed`` changes (flagged ``resync``) when ``emit`` is true.
        """
        touched = self._touched.pop(table, set())
        cache = self.tables[table]
        gone = [key for key in cache if key not in touched]
        changes: list[Change] = []
        for key in gone:
            change = self.apply(table, key, None, emit=emit, resync=True)
            if change is not None:
                changes.append(change)
        return changes

    # -- the diff --------------------------------------------------------------------------

    def apply(
        self,
        table: str,
        key: Hashable,
        obj: Obj | None,
        *,
        emit: bool = True,
        resync: bool = False,
        replace: bool = False,
    ) -> Change | None:
        """Fold one decoded object (None: deleted) into the cache; return the change if any.

        ``emit=False`` updates the cache silently (the initial dump); ``resync`` flags the
        change as found by a re-dump rather than announced by the kernel; ``replace`` is the
        message's NLM_F_REPLACE (a route that takes the place of another).
        """
        touched = self._touched.get(table)
        if touched is not None:
            touched.add(key)
        cache = self.tables[table]
        old = cache.get(key)
        if table == "netconf":
            return self._netconf(cache, key, old, obj, emit, resync)
        if table == "route":
            old = self._route_slot(key, old, obj, replace)
        if obj is None:
            if old is None:
                return None
            del cache[key]
            if table == "link":
                self._forget_name_later(key)
            if table == "route":
                self._unslot(key)
            if not emit:
                return None
            return self._build(table, "removed", old, {}, resync)
        cache[key] = obj
        if table == "link":
            self.names[obj["ifindex"]] = obj["ifname"]
        if old is None:
            if not emit:
                return None
            return self._build(table, "added", obj, {}, resync)
        if table == "link":
            return self._link(old, obj, emit, resync)
        if table == "rule":
            return None  # a rule's key is all of its fields: a repeat changes nothing
        fields = (
            _ADDR_FIELDS
            if table == "addr"
            else _ROUTE_FIELDS
            if table == "route"
            else _NEIGH_FIELDS
        )
        changes = {f: [old[f], obj[f]] for f in fields if old[f] != obj[f]}
        if not changes or not emit:
            return None
        if "ifindex" in changes:
            changes["ifname"] = [self.ifname(old["ifindex"]), self.ifname(obj["ifindex"])]
        return self._build(table, "changed", obj, changes, resync)

    def _forget_name_later(self, ifindex: Any) -> None:
        # a removed link's name still serves late messages about its addresses and routes;
        # the oldest of the removed ones are forgotten, so container churn cannot grow it
        self._removed.append(ifindex)
        if len(self._removed) > REMEMBER_REMOVED_NAMES:
            gone = self._removed.popleft()
            if gone not in self.tables["link"]:
                self.names.pop(gone, None)

    def _route_slot(self, key: Any, old: Obj | None, obj: Obj | None, replace: bool) -> Obj | None:
        """Keep the index of routes by slot (family, table, dst, src, tos, metric) and apply
        the kernel's replace semantics; returns the entry ``obj`` is to be compared with.

        A slot holds several routes when they differ in next hop (IPv4 ``ip route append``,
        IPv6 device routes). A message that replaces (NLM_F_REPLACE), a multipath message and
        an IPv6 gateway route (IPv6 merges those into one ECMP route) describe the whole slot:
        the entries they supersede leave the cache, and the change is reported against them.
        """
        slot = key[:6]
        held = self._slots.get(slot)  # one key (the common case), or a set of them
        if obj is None:
            if old is None and held is not None:
                # a next hop we hold only inside a multipath entry (or the reverse): the
                # cache cannot tell what is left; a route re-dump will
                self.needs_route_dump = True
            return old
        if held is None or held == key:
            self._slots[slot] = key
            return old
        keys = held if isinstance(held, set) else {held}
        if (
            replace
            or obj["nexthops"] is not None
            or (obj["gateway"] is not None and obj["family"] == "inet6")
        ):
            cache = self.tables["route"]
            for other in [k for k in keys if k != key]:
                superseded = cache.pop(other)
                keys.discard(other)
                if old is None:
                    old = superseded
        keys.add(key)
        self._slots[slot] = keys if len(keys) > 1 else key
        return old

    def _unslot(self, key: Any) -> None:
        slot = key[:6]
        held = self._slots.get(slot)
        if held == key:
            del self._slots[slot]
        elif isinstance(held, set):
            held.discard(key)
            if len(held) == 1:
                self._slots[slot] = next(iter(held))

    def _link(self, old: Obj, new: Obj, emit: bool, resync: bool) -> Change | None:
        changes: dict[str, list[Any]] = {}
        for field in ("admin_up", "carrier", "operstate", *_LINK_FIELDS):
            if old[field] != new[field]:
                changes[field] = [old[field], new[field]]
        old_flags = [f for f in old["flags"] if f not in _STATE_FLAGS]
        new_flags = [f for f in new["flags"] if f not in _STATE_FLAGS]
        if old_flags != new_flags:
            changes["flags"] = [old_flags, new_flags]
        if not changes or not emit:
            return None
        if "master" in changes:
            changes["master"] = [self.ifname(old["master"]), self.ifname(new["master"])]
        if "admin_up" in changes:
            kind = "admin_up" if new["admin_up"] else "admin_down"
        elif "carrier" in changes and new["admin_up"]:
            kind = "carrier_up" if new["carrier"] else "carrier_lost"
        elif changes.keys() - {"operstate", "carrier"} or (
            "operstate" in changes and not _NOTABLE_OPERSTATES.isdisjoint(changes["operstate"])
        ):
            kind = "changed"
        else:
            # operstate moving between down-like states adds nothing to what was reported
            return None
        return self._build("link", kind, new, changes, resync)

    def _netconf(
        self,
        cache: dict[Hashable, Obj],
        key: Hashable,
        old: Obj | None,
        values: Obj | None,
        emit: bool,
        resync: bool,
    ) -> Change | None:
        if values is None:
            cache.pop(key, None)
            return None
        if old is None:
            cache[key] = values
            return None  # a new device's defaults are not a change of anything
        changes = {
            f: [old[f], v]
            for f, v in values.items()
            if f not in ("family", "ifindex") and f in old and old[f] != v
        }
        merged = {**old, **values}
        cache[key] = merged
        if not changes or not emit:
            return None
        return self._build("netconf", "changed", merged, changes, resync)

    # -- event payloads --------------------------------------------------------------------

    def _build(
        self, table: str, kind: str, obj: Obj, changes: dict[str, list[Any]], resync: bool
    ) -> Change:
        data: dict[str, Any]
        if table == "link":
            data = {**obj, "master": self.ifname(obj["master"])}
            ifname: str | None = obj["ifname"]
            subject = obj["ifname"]
        elif table == "route":
            ifname = self.ifname(obj["ifindex"])
            data = {**obj}
            data["ifname"] = ifname
            if obj["nexthops"]:
                data["nexthops"] = [
                    {**hop, "ifname": self.ifname(hop["ifindex"])} for hop in obj["nexthops"]
                ]
            subject = obj["dst"]
        elif table == "netconf":
            index = obj["ifindex"]
            if index == -1:
                ifname, name = None, "all"
            elif index == -2:
                ifname, name = None, "default"
            else:
                ifname = name = self.ifname(index) or str(index)
            data = {"family": obj["family"], "ifindex": index, "ifname": name}
            data.update((k, v) for k, v in obj.items() if k not in data)
            subject = name
        elif table == "rule":
            ifname = None
            data = {**obj}
            subject = rule_subject(obj)
        else:  # addr, neigh
            ifname = self.ifname(obj["ifindex"])
            data = {"ifindex": obj["ifindex"], "ifname": ifname, **obj}
            subject = obj["address"] if table == "neigh" else (ifname or str(obj["ifindex"]))
        data["changes"] = changes
        data["resync"] = resync
        return Change(f"{table}.{kind}", subject, data, ifname)


def rule_subject(rule: Obj) -> str:
    """A rule as ``ip rule show`` prints it: ``32766: from all lookup main``."""
    parts = [f"{rule['priority']}:"]
    if rule.get("not"):
        parts.append("not")
    parts += ["from", rule["src"]]
    if rule["dst"] != "all":
        parts += ["to", rule["dst"]]
    for field in ("iif", "oif", "fwmark"):
        if rule[field] is not None:
            parts += [field, str(rule[field])]
    for field in ("uidrange", "ipproto", "sport", "dport"):
        if field in rule:
            parts += [field, str(rule[field])]
    if rule["action"] == "lookup":
        parts += ["lookup", str(rule["table"])]
    elif rule["action"] == "goto":
        parts += ["goto", str(rule["goto"])]
    else:
        parts.append(rule["action"])
    return " ".join(parts)
