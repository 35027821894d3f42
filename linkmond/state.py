"""The kernel-state cache and the diff that turns rtnetlink messages into semantic changes.

The kernel repeats itself (several RTM_NEWLINK for one ``ip link set``, a carrier flip with
``ifi_change == 0``), so no event is derived from a message alone: each decoded object is
compared with the cached copy of the same object, and only a real difference of a field users
care about becomes a :class:`Change`. One kernel message yields at most one change.

Dumps feed the same cache. While a table (or the part of it one device holds: a filtered
dump) is being re-dumped, every key the dump or a newer notification touches is marked; at the
end of the dump the keys of that scope nobody touched are gone from the kernel (lost in an
overflow, or deleted silently as IPv4 routes are on link-down) and become ``*.removed``
changes.

What the kernel changes without telling anyone is known here, next to the diff, and asked
for through one channel, :attr:`State.reread`: a link going admin-down re-reads the routes and
neighbours of that link, an address removed re-reads the routes of its link and of routes
that used it as source; a link removed takes its routes and neighbours with it, which the
cache derives itself (the kernel can no longer be asked about a device that is gone).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Hashable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Final

from linkmond import rtnl
from linkmond.decode import Obj
from linkmond.routes import Hop, Route, RouteTable, devices_of

TABLES: Final = ("link", "addr", "route", "neigh", "rule", "netconf")
#: how many removed links keep their name for late messages
REMEMBER_REMOVED_NAMES: Final = 1024

#: Flags already represented by admin_up / carrier / operstate: not reported again as flags.
_STATE_FLAGS: Final = frozenset({"up", "running", "lower_up", "dormant"})
#: Operstates that say something beyond admin state and carrier.
_NOTABLE_OPERSTATES: Final = frozenset({"dormant", "testing", "notpresent"})

_LINK_FIELDS: Final = ("ifname", "mtu", "mac", "master", "kind")
_ADDR_FIELDS: Final = ("peer", "scope", "label", "flags")
_ROUTE_TYPES: Final = {kind: f"route.{kind}" for kind in ("added", "removed", "changed")}
#: the fields of a route whose change is a route.changed, with their index in Route
_ROUTE_FIELDS: Final = tuple(
    (name, Route._fields.index(name))
    for name in ("gateway", "ifindex", "protocol", "scope", "type", "prefsrc", "nexthops")
)
_NEIGH_FIELDS: Final = ("lladdr", "state", "flags")


@dataclass(slots=True)
class Change:
    """One semantic change: the event type, its subject and its ``data`` payload."""

    type: str
    subject: str
    data: dict[str, Any]
    ifname: str | None


#: A request to re-read part of a table: (table, address family or 0 for all, device or
#: None, settle) — ``settle``: the kernel may still be removing entries of that scope.
Reread = Callable[[str, int, "int | None", bool], None]

_FAMILIES: Final = (rtnl.AF_INET, rtnl.AF_INET6)


def _no_reread(table: str, family: int, oif: int | None, settle: bool = False) -> None:
    """Replay and snapshots have no kernel to ask: nothing is re-read."""


@dataclass(slots=True)
class Scope:
    """What one dump covers: a table, or the entries of one family and/or device in it."""

    table: str
    family: int = 0
    oif: int | None = None


class State:
    """Caches of links, addresses, routes, neighbours, rules and netconf, keyed as the kernel does.

    ``apply`` is the only way in: it updates the cache and returns the change, if any.
    ``reread`` is called with what must be dumped again because the kernel may have changed
    it silently (see the module docstring); the watcher schedules those dumps.
    """

    def __init__(self, reread: Reread = _no_reread) -> None:
        #: the route cache, compact (see linkmond.routes); also ``tables["route"]``
        self.routes = RouteTable()
        self.tables: dict[str, Any] = {name: {} for name in TABLES}
        self.tables["route"] = self.routes
        #: last known name of every ifindex seen, kept a while after removal (late messages)
        self.names: dict[int, str] = {}
        #: the operstate each link was last described with (an event, or the dump): what a
        #: consumer believes, so that a change the diff would call noise still goes out when
        #: that belief is wrong (see _link)
        self._operstate_told: dict[int, str] = {}
        self.reread = reread
        self._removed: deque[Any] = deque()
        #: the scope of the dump in progress and the keys touched since it began (routes
        #: carry the mark of what wrote them instead: see linkmond.routes)
        self._scope: Scope | None = None
        self._touched: set[Hashable] = set()
        #: keys a notification changed, and routes one deleted, since the dump began
        self._notified: set[Hashable] = set()
        self._deleted: set[Hashable] = set()
        self._route_mark = 0
        #: removals still to be made and reported, oldest first: a sweep's, or a removed
        #: link's routes; lazy, so that a million of them wait for the sinks, not in memory.
        #: The reader works them off under backpressure, between reads (see end_resync for
        #: why interleaving them with newer notifications is sound).
        self.pending: deque[Iterator[Change | None]] = deque()
        #: changes made alongside the last one applied (a removed link's neighbours), to be
        #: reported right after it
        self.derived: list[Change] = []

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

    def routes_via(self, ifindex: int) -> int:
        """How many cached routes use device ``ifindex`` (as their device or a next hop's)."""
        return self.routes.count_via(ifindex)

    def take_derived(self) -> list[Change]:
        """The changes made alongside the last one applied, to report right after it."""
        derived, self.derived = self.derived, []
        return derived

    def drain(self) -> list[Change]:
        """Make every pending removal now and return the changes (replay, tests)."""
        changes: list[Change] = []
        while self.pending:
            changes.extend(c for c in self.pending.popleft() if c is not None)
        return changes

    # -- a saved state (linkmond.snapshot) ----------------------------------------------------

    def restore(
        self, table: str, key: Hashable, obj: Any, operstate_told: str | None = None
    ) -> None:
        """Put one object of a saved state back into the cache, silently: no change is made
        and nothing is re-read. Links take ``operstate_told``, what the last event about them
        said (default: their operstate). Only before the first dump."""
        if table == "route":
            self.routes.restore(key, obj)  # type: ignore[arg-type]
            return
        self.tables[table][key] = obj
        if table == "link":
            self.names[key] = obj["ifname"]  # type: ignore[index]
            self._operstate_told[key] = operstate_told or obj["operstate"]  # type: ignore[index]

    def operstates_told(self) -> dict[int, str]:
        """The operstate the last event about each link told (what a saved state keeps)."""
        return dict(self._operstate_told)

    def clear(self) -> None:
        """Forget everything cached: a saved state found unusable halfway through being
        restored. Only before the first dump."""
        self.routes = RouteTable()
        self.tables = {name: {} for name in TABLES}
        self.tables["route"] = self.routes
        self.names = {}
        self._operstate_told = {}

    # -- resync bookkeeping ----------------------------------------------------------------

    def begin_resync(self, scope: Scope) -> None:
        """Start marking the keys that a dump of ``scope`` or a newer notification touches.

        One dump runs at a time, so one scope is tracked.
        """
        self._scope = scope
        self._touched = set()
        self._notified = set()
        self._deleted = set()
        if scope.table == "route":
            self._route_mark = self.routes.begin_mark()

    def abort_resync(self) -> None:
        """Forget the marks of a dump whose result cannot be trusted to be complete."""
        self._scope = None
        self._touched = set()
        self._notified = set()
        self._deleted = set()

    def end_resync(self, *, emit: bool) -> tuple[list[Change], int]:
        """Remove what the dump's scope held that nobody touched since :meth:`begin_resync`.

        Returns the ``*.removed`` changes made now (flagged ``resync``; none unless ``emit``)
        and how many more are queued in :attr:`pending` (routes, counted by destination). A
        device-filtered dump looks only at that device's entries (an index for routes), so
        its cost follows the device, not the table.

        Routes are swept lazily: a million of them must wait for the sinks, not in memory.
        That is safe while newer notifications are applied in between, because a route is
        removed only if it still carries a mark older than the dump's when its turn comes.
        The other tables are small and swept at once.
        """
        scope, touched = self._scope, self._touched | self._notified
        self.abort_resync()
        if scope is None:
            return [], 0
        table, family, oif = scope.table, scope.family, scope.oif
        if table == "route":
            mark = self._route_mark
            if oif is None:
                # the whole table: even finding what to remove is a million look-ups, so
                # that happens lazily too (from a list of the destinations: C speed)
                dsts = self.routes.destinations()
                self.pending.append(self._sweep_routes(dsts, mark, family, oif, emit))
                return [], 0
            dsts = self.routes.unmarked(mark, family, oif)
            if dsts:
                self.pending.append(self._sweep_routes(dsts, mark, family, oif, emit))
            return [], len(dsts)
        cache = self.tables[table]
        gone = [
            key
            for key in cache
            if key not in touched
            and (table != "neigh" or ((oif is None or key[1] == oif) and family in (0, key[0])))
        ]
        return self._remove(table, gone, emit), 0

    def _sweep_routes(
        self,
        dsts: list[str],
        mark: int,
        family: int,
        oif: int | None,
        emit: bool,
        multipath: bool = True,
    ) -> Iterator[Change | None]:
        """Remove the stale routes under ``dsts``; yields each change, and None every few
        hundred destinations so that whoever drives it can stop on time even when there is
        nothing to remove (a full-table sweep after a resync that found everything)."""
        stale_keys = self.routes.stale_keys
        for count, dst in enumerate(dsts):
            if not count % 256:
                yield None
            for key in stale_keys(dst, mark, family, oif):
                if not multipath and _is_multipath(key):
                    continue
                change = self.apply("route", key, None, emit=emit, resync=True)
                if change is not None:
                    yield change

    def _links_known(self, ifindexes: Iterable[int]) -> bool:
        """Whether every one of these devices is a link the cache holds.

        A dump entry through an unknown device is older than that device's removal (or than
        its creation, whose notification is still to come and precedes the entry's own):
        taking it would bring back what the removal took away.
        """
        links = self.tables["link"]
        return all(index in links for index in ifindexes)

    def _remove(self, table: str, keys: Iterable[Hashable], emit: bool) -> list[Change]:
        changes = []
        for key in keys:
            change = self.apply(table, key, None, emit=emit, resync=True)
            if change is not None:
                changes.append(change)
        return changes

    def _superseded(self, table: str, key: Hashable, obj: Any, dump: bool) -> bool:
        """Track what the dump in progress shows and what notifications change meanwhile;
        True for a dump entry a notification since the dump began has made stale."""
        if table == "route":  # routes carry marks; only deletions need remembering
            if not dump:
                if obj is None:
                    self._deleted.add(key)
                return False
            return (
                key in self._deleted
                or self.routes.notified_since(key, self._route_mark)  # type: ignore[arg-type]
                or (obj is not None and not self._links_known(devices_of(obj)))
            )
        if not dump:
            self._notified.add(key)
            return False
        if key in self._notified:
            return True
        if table == "neigh" and obj is not None and not self._links_known({obj["ifindex"]}):
            return True
        self._touched.add(key)
        return False

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
        dump: bool = False,
    ) -> Change | None:
        """Fold one decoded object (None: deleted) into the cache; return the change if any.

        ``emit=False`` updates the cache silently (the initial dump); ``resync`` flags the
        change as found by a re-dump rather than announced by the kernel; ``replace`` is the
        message's NLM_F_REPLACE (a route that takes the place of another); ``dump`` says the
        object comes from the answer of the dump in progress, which a notification about the
        same object since the dump began overrides (it is newer, see linkmond.watcher).
        """
        scope = self._scope
        if scope is not None and scope.table == table and self._superseded(table, key, obj, dump):
            return None
        if table == "route":
            mark = self._route_mark if dump and self._scope is not None else None
            return self._route(key, obj, emit, resync, replace, mark)  # type: ignore[arg-type]
        cache = self.tables[table]
        old = cache.get(key)
        if table == "netconf":
            return self._netconf(cache, key, old, obj, emit, resync)
        if obj is None:
            if old is None:
                return None
            del cache[key]
            change = self._build(table, "removed", old, {}, resync) if emit else None
            if table == "link":
                self._operstate_told.pop(key, None)  # type: ignore[call-overload]
                self._forget_name_later(key)
                self.derived.extend(self._link_gone(key, emit))  # type: ignore[arg-type]
            elif table == "addr":
                self._addr_gone(old)
            return change
        if table == "link":
            if not obj["ifname"]:  # the kernel always names a link; crafted input may not
                obj["ifname"] = old["ifname"] if old is not None else f"if{obj['ifindex']}"
            self.names[obj["ifindex"]] = obj["ifname"]
            if old is None:
                self._operstate_told[obj["ifindex"]] = obj["operstate"]
        cache[key] = obj
        if table == "link" and old is not None and old["admin_up"] and not obj["admin_up"]:
            self._reread_device(obj["ifindex"], ("route", "neigh"))
        if old is None:
            if not emit:
                return None
            return self._build(table, "added", obj, {}, resync)
        if table == "link":
            return self._link(old, obj, emit, resync)
        if table == "rule":
            return None  # a rule's key is all of its fields: a repeat changes nothing
        fields = _ADDR_FIELDS if table == "addr" else _NEIGH_FIELDS
        changes = {f: [old[f], obj[f]] for f in fields if old[f] != obj[f]}
        if not changes or not emit:
            return None
        return self._build(table, "changed", obj, changes, resync)

    def _route(
        self,
        key: tuple[Any, ...],
        route: Route | None,
        emit: bool,
        resync: bool,
        replace: bool,
        dump_mark: int | None = None,
    ) -> Change | None:
        routes = self.routes
        if route is None:
            old, others = routes.pop(key)
            if old is None:
                if others:
                    # a next hop we hold only inside a multipath entry (or the reverse): the
                    # cache cannot tell what is left; re-reading the devices involved will
                    devices = {oif for _gw, oif in _hops(key)}
                    for other in others:
                        devices.update(oif for _gw, oif in _hops(other))
                    for oif in sorted(d for d in devices if d):
                        self.reread("route", key[0], oif, False)
                return None
            return self._build_route("removed", old, {}, resync) if emit else None
        # a notification that takes the place of other routes deletes them: while a route
        # dump runs, that must outlive what the dump read of them before
        superseded: list[Any] | None = (
            []
            if dump_mark is None and self._scope is not None and self._scope.table == "route"
            else None
        )
        old = routes.put(key, route, replace, dump_mark, superseded)
        if superseded:
            self._deleted.update(superseded)
        if old is None:
            return self._build_route("added", route, {}, resync) if emit else None
        if old == route or not emit:
            return None
        changes: dict[str, list[Any]] = {}
        for field, index in _ROUTE_FIELDS:
            before: Any = old[index]
            after: Any = route[index]
            if before != after:
                if field == "nexthops":
                    before, after = _hop_dicts(before), _hop_dicts(after)
                changes[field] = [before, after]
        if not changes:
            return None
        if "ifindex" in changes:
            changes["ifname"] = [self.ifname(old.ifindex), self.ifname(route.ifindex)]
        return self._build_route("changed", route, changes, resync)

    def _build_route(
        self, kind: str, route: Route, changes: dict[str, list[Any]], resync: bool
    ) -> Change:
        (
            family,
            dst,
            src,
            gateway,
            index,
            table,
            protocol,
            scope,
            type_,
            metric,
            prefsrc,
            tos,
            hops,
        ) = route
        ifname = self.ifname(index)
        data = {  # the event's field order (docs/events.md); a literal is twice as fast as _asdict
            "family": family, "dst": dst, "src": src, "gateway": gateway, "ifindex": index,
            "table": table, "protocol": protocol, "scope": scope, "type": type_,
            "metric": metric, "prefsrc": prefsrc, "tos": tos,
            "nexthops": None if hops is None else [
                {"gateway": h.gateway, "ifindex": h.ifindex, "weight": h.weight,
                 "ifname": self.ifname(h.ifindex)}
                for h in hops
            ],
            "ifname": ifname, "changes": changes, "resync": resync,
        }  # fmt: skip
        return Change(_ROUTE_TYPES[kind], dst, data, ifname)

    def _forget_name_later(self, ifindex: Any) -> None:
        # a removed link's name still serves late messages about its addresses and routes;
        # the oldest of the removed ones are forgotten, so container churn cannot grow it
        self._removed.append(ifindex)
        if len(self._removed) > REMEMBER_REMOVED_NAMES:
            gone = self._removed.popleft()
            if gone not in self.tables["link"]:
                self.names.pop(gone, None)

    def _reread_device(self, ifindex: int, tables: Iterable[str]) -> None:
        # what the cache holds nothing of, the kernel can flush nothing of: no dump (a dump
        # filtered by device still walks the whole table in the kernel)
        for table in tables:
            for family in _FAMILIES:
                if self._holds(table, family, ifindex):
                    self.reread(table, family, ifindex, True)

    def _holds(self, table: str, family: int, ifindex: int) -> bool:
        if table == "route":
            return self.routes.has_via(ifindex, family)
        return any(k[1] == ifindex and k[0] == family for k in self.tables[table])

    def _link_gone(self, ifindex: int, emit: bool) -> list[Change]:
        """A removed device takes its routes and neighbours along, mostly without a word.

        It cannot be dumped any more (the kernel answers ENODEV), so the cache drops what it
        held through it: the neighbours now (returned), the routes lazily (:attr:`pending`,
        as a sweep of everything through the device written before now). Multipath routes
        through it and other devices are re-read there.
        """
        routes = self.routes
        others: set[tuple[int, int]] = set()
        for key in routes.keys_via(ifindex):
            if _is_multipath(key):  # the other hops may live on
                others.update((key[0], oif) for _gw, oif in key[6] if oif != ifindex)
        mark = routes.begin_mark()
        dsts = routes.unmarked(mark, 0, ifindex)
        if dsts:
            self.pending.append(self._sweep_routes(dsts, mark, 0, ifindex, emit, multipath=False))
        for family, oif in sorted(others):
            self.reread("route", family, oif, True)
        neigh = [k for k in self.tables["neigh"] if k[1] == ifindex]
        return self._remove("neigh", neigh, emit)

    def _addr_gone(self, addr: Obj) -> None:
        """An address removed: IPv4 flushes routes through its device when it was the last
        one, and routes using it as preferred source anywhere; IPv6 clears such prefsrcs."""
        family = rtnl.AF_INET if addr["family"] == "inet" else rtnl.AF_INET6
        devices = {addr["ifindex"]}
        routes = self.routes
        for key in routes.keys_with_prefsrc(addr["address"]):
            route = routes.get(key)
            if route is not None:
                devices.update(devices_of(route))
        for oif in sorted(devices):
            if routes.has_via(oif, family):
                self.reread("route", family, oif, True)

    def _link(self, old: Obj, new: Obj, emit: bool, resync: bool) -> Change | None:
        changes: dict[str, list[Any]] = {}
        for field in ("admin_up", "carrier", "operstate", *_LINK_FIELDS):
            if old[field] != new[field]:
                changes[field] = [old[field], new[field]]
        old_flags = [f for f in old["flags"] if f not in _STATE_FLAGS]
        new_flags = [f for f in new["flags"] if f not in _STATE_FLAGS]
        if old_flags != new_flags:
            changes["flags"] = [old_flags, new_flags]
        if not changes:
            return None
        told = self._operstate_told
        ifindex = new["ifindex"]
        if not emit:
            told[ifindex] = new["operstate"]
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
        elif told.get(ifindex, new["operstate"]) != new["operstate"]:
            # an operstate the last event did not tell yet (a bridge's carrier and operstate
            # arrive in separate messages): the last event must describe the link as it is
            changes["operstate"] = [told[ifindex], new["operstate"]]
            kind = "changed"
        else:
            # operstate moving between down-like states adds nothing to what was reported
            return None
        told[ifindex] = new["operstate"]
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
            settings = [f for f in values if f not in ("family", "ifindex")]
            if len(settings) != 1 or not emit:
                return None  # a new device's defaults (the kernel sends them all at once)
            # one setting is the kernel's notification of a change, here of an entry never
            # dumped (a recording made by rtmon, which dumps only links): the old value is
            # unknown, the change is not
            changes = {settings[0]: [None, values[settings[0]]]}
            return self._build("netconf", "changed", values, changes, resync)
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
        elif table == "netconf":
            index = obj["ifindex"]
            if index == -1:
                ifname, name = None, "all"
            elif index == -2:
                ifname, name = None, "default"
            else:
                ifname = name = self.ifname(index) or f"if{index}"
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
            subject = obj["address"] if table == "neigh" else (ifname or f"if{obj['ifindex']}")
        data["changes"] = changes
        data["resync"] = resync
        return Change(f"{table}.{kind}", subject, data, ifname)


def _is_multipath(key: Any) -> bool:
    """Whether a route key's next-hop part is a tuple of ``(gateway, oif)`` pairs."""
    hops = key[6]
    return bool(hops) and isinstance(hops[0], tuple)


def _hops(key: Any) -> tuple[tuple[Any, int], ...]:
    """The next hops in a route key: ``(gateway, oif)`` or a tuple of those (multipath)."""
    return key[6] if _is_multipath(key) else (key[6],)


def _hop_dicts(hops: tuple[Hop, ...] | None) -> list[dict[str, Any]] | None:
    """Next hops as the event JSON shows them in ``changes``."""
    if hops is None:
        return None
    return [{"gateway": h.gateway, "ifindex": h.ifindex, "weight": h.weight} for h in hops]


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
