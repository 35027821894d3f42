"""The route cache: compact enough for a full BGP table, indexed by device for cheap re-reads.

A route is a :class:`Route` named tuple (not a dict: a 13-key dict costs four times the
memory). Routes are stored by *slot* — ``(family, table, dst, src, tos, metric)``, the place
a route occupies in the kernel's FIB — holding what the slot does not already say of the
route (:class:`Stored`), or, in the rare case that several routes share a slot (IPv4
``ip route append``, IPv6 device routes), a dict of those by next hop(s). A slot is stored as
``(prefix, dst)``, where the prefix is one tuple shared by every slot of the same family,
table, source, tos and metric; the indexes by device and by preferred source hold the same
slot objects. Repeated values (next hops, gateways, metrics) are interned by the decoder.
The full key the decoder produces is ``(family, table, dst, src, tos, metric, hops)``, and
:class:`RouteTable` answers to it like a dict, so the diff in :mod:`linkmond.state` treats
routes like every other table.

Measured with ``bench/storm.py``: see README's performance section for the bytes per route.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Final, NamedTuple

#: ``(gateway, oif)`` for one next hop, or a tuple of them for a multipath route
Hops = Any
Slot = tuple[Any, ...]


class Hop(NamedTuple):
    """One next hop of a multipath route."""

    gateway: str | None
    ifindex: int
    weight: int


class Route(NamedTuple):
    """One route as events show it (names for the kernel's numbers)."""

    family: str
    dst: str
    src: str | None
    gateway: str | None
    ifindex: int | None
    table: str
    protocol: str
    scope: str
    type: str
    metric: int
    prefsrc: str | None
    tos: int
    nexthops: tuple[Hop, ...] | None


def hops_of(route: Route) -> Hops:
    """The next-hop part of a route's key, as the decoder builds it."""
    nexthops = route.nexthops
    if nexthops is None:
        return (route.gateway, route.ifindex or 0)
    return tuple((hop.gateway, hop.ifindex) for hop in nexthops)


def devices_of(route: Route | Stored) -> set[int]:
    """Every device a route goes through: its own and its next hops'."""
    nexthops = route.nexthops
    if nexthops:
        return {hop.ifindex for hop in nexthops if hop.ifindex}
    oif = route.ifindex
    return {oif} if oif else set()


def replaces_slot(route: Route) -> bool:
    """Whether a new route of this shape describes its whole slot.

    A multipath route, and an IPv6 gateway route (IPv6 merges those into one ECMP route),
    take the place of every other route in their slot.
    """
    return route.nexthops is not None or (route.gateway is not None and route.family == "inet6")


class Stored(NamedTuple):
    """What is stored of a route: the fields its slot does not already say."""

    gateway: str | None
    ifindex: int | None
    protocol: str
    scope: str
    type: str
    prefsrc: str | None
    nexthops: tuple[Hop, ...] | None


_new: Final = tuple.__new__


def _stored_hops(value: Stored) -> Hops:
    nexthops = value[6]
    if nexthops is None:
        return (value[0], value[1] or 0)
    return tuple((hop.gateway, hop.ifindex) for hop in nexthops)


class RouteTable:
    """Routes by slot, with a dict-like face keyed by the decoder's full route key.

    The key is ``(family, table, dst, src, tos, metric, hops)``. What is stored per slot is
    ``(prefix, dst)`` — ``prefix`` being one shared tuple for every route with the same
    family, table, source, tos and metric (with the family's and table's names) — and a
    :class:`Stored` tuple, or a dict of them by next hop(s).
    """

    def __init__(self) -> None:
        self._slots: dict[Slot, Stored | dict[Hops, Stored]] = {}
        self._len = 0
        #: (family, table, src, tos, metric) → the shared prefix of slots (those five, then
        #: the family's and table's names)
        self._prefixes: dict[tuple[Any, ...], tuple[Any, ...]] = {}
        #: device → slots with a route through it (any next hop)
        self._via: dict[int, set[Slot]] = {}
        #: preferred source address → slots with a route carrying it
        self._prefsrc: dict[str, set[Slot]] = {}

    # -- keys, slots and routes --------------------------------------------------------------

    def _slot(self, key: tuple[Any, ...], route: Route | None = None) -> Slot | None:
        """The stored slot of ``key`` (a new prefix is registered only with its ``route``)."""
        five = (key[0], key[1], key[3], key[4], key[5])
        prefix = self._prefixes.get(five)
        if prefix is None:
            if route is None:
                return None
            prefix = self._prefixes[five] = (*five, route.family, route.table)
        return (prefix, key[2])

    @staticmethod
    def _route(slot: Slot, value: Stored) -> Route:
        prefix, dst = slot
        _family, _table, src, tos, metric, family_name, table_name = prefix
        gateway, ifindex, protocol, scope, type_, prefsrc, nexthops = value
        return _new(
            Route,
            (family_name, dst, src, gateway, ifindex, table_name, protocol, scope, type_,
             metric, prefsrc, tos, nexthops),
        )  # fmt: skip

    @staticmethod
    def _key(slot: Slot, hops: Hops) -> tuple[Any, ...]:
        prefix, dst = slot
        return (prefix[0], prefix[1], dst, prefix[2], prefix[3], prefix[4], hops)

    # -- the dict-like face ------------------------------------------------------------------

    def __len__(self) -> int:
        return self._len

    def get(self, key: tuple[Any, ...]) -> Route | None:
        """The route under ``key``, or None."""
        slot = self._slot(key)
        if slot is None:
            return None
        held = self._slots.get(slot)
        if held is None:
            return None
        if isinstance(held, dict):
            value = held.get(key[6])
            return None if value is None else self._route(slot, value)
        return self._route(slot, held) if _stored_hops(held) == key[6] else None

    def __contains__(self, key: object) -> bool:
        return isinstance(key, tuple) and self.get(key) is not None

    def __iter__(self) -> Iterator[tuple[Any, ...]]:
        for slot, held in list(self._slots.items()):
            for hops in _all_hops(held):
                yield self._key(slot, hops)

    def values(self) -> Iterator[Route]:
        """Every cached route."""
        for slot, held in self._slots.items():
            for value in held.values() if isinstance(held, dict) else (held,):
                yield self._route(slot, value)

    def keys_via(self, ifindex: int) -> list[tuple[Any, ...]]:
        """Keys of the routes through device ``ifindex`` (its own or a next hop's)."""
        keys = []
        for slot in self._via.get(ifindex, ()):
            held = self._slots[slot]
            for value in held.values() if isinstance(held, dict) else (held,):
                if ifindex in devices_of(value):
                    keys.append(self._key(slot, _stored_hops(value)))
        return keys

    def keys_with_prefsrc(self, address: str) -> list[tuple[Any, ...]]:
        """Keys of the routes whose preferred source is ``address``."""
        keys = []
        for slot in self._prefsrc.get(address, ()):
            held = self._slots[slot]
            for value in held.values() if isinstance(held, dict) else (held,):
                if value.prefsrc == address:
                    keys.append(self._key(slot, _stored_hops(value)))
        return keys

    # -- changes -----------------------------------------------------------------------------

    def put(self, key: tuple[Any, ...], route: Route, replace: bool) -> Route | None:
        """Store ``route`` under ``key`` with the kernel's replace semantics.

        Returns what the route is to be compared with: the route that was under ``key``,
        else one it superseded (NLM_F_REPLACE, or a route that describes its whole slot).
        """
        slot = self._slot(key, route)
        assert slot is not None
        hops = key[6]
        value = _new(
            Stored,
            (route.gateway, route.ifindex, route.protocol, route.scope, route.type,
             route.prefsrc, route.nexthops),
        )  # fmt: skip
        held = self._slots.get(slot)
        if held is None:
            self._slots[slot] = value
            self._len += 1
            self._reindex(slot, (), (value,))
            return None
        if not isinstance(held, dict):
            if _stored_hops(held) == hops:  # the common case: the same route again
                self._slots[slot] = value
                self._reindex(slot, (held,), (value,))
                return self._route(slot, held)
            before: tuple[Stored, ...] = (held,)
            group = {_stored_hops(held): held}
        else:
            group = held
            before = tuple(group.values())
        old = group.get(hops)
        if replace or replaces_slot(route):
            for other in [h for h in group if h != hops]:
                superseded = group.pop(other)
                if old is None:
                    old = superseded
        group[hops] = value
        self._len += len(group) - len(before)
        self._slots[slot] = value if len(group) == 1 else group
        self._reindex(slot, before, tuple(group.values()))
        return None if old is None else self._route(slot, old)

    def pop(self, key: tuple[Any, ...]) -> tuple[Route | None, list[tuple[Any, ...]]]:
        """Remove the route under ``key``: ``(the route or None, other keys in its slot)``.

        A deletion that matches nothing while its slot holds other routes (a next hop held
        only inside a multipath entry, or the reverse) cannot be resolved from the cache;
        the caller re-reads the devices of the keys returned.
        """
        slot = self._slot(key)
        held = None if slot is None else self._slots.get(slot)
        if slot is None or held is None:
            return None, []
        if not isinstance(held, dict):
            if _stored_hops(held) != key[6]:
                return None, [self._key(slot, _stored_hops(held))]
            del self._slots[slot]
            self._len -= 1
            self._reindex(slot, (held,), ())
            return self._route(slot, held), []
        before = tuple(held.values())
        value = held.pop(key[6], None)
        if value is None:
            return None, [self._key(slot, hops) for hops in held]
        self._len -= 1
        if len(held) == 1:
            self._slots[slot] = next(iter(held.values()))
        self._reindex(slot, before, tuple(held.values()))
        return self._route(slot, value), []

    # -- indexes -----------------------------------------------------------------------------

    def _reindex(self, slot: Slot, before: tuple[Stored, ...], after: tuple[Stored, ...]) -> None:
        """Keep ``slot`` indexed under every device and prefsrc its routes use."""
        if len(before) == 1 and len(after) == 1:
            old, new = before[0], after[0]
            if (
                old.ifindex == new.ifindex
                and old.nexthops == new.nexthops
                and old.prefsrc == new.prefsrc
            ):
                return  # the common repeat: the indexes already say the same
        old_devices = set().union(*(devices_of(v) for v in before))
        new_devices = set().union(*(devices_of(v) for v in after))
        _move(self._via, slot, old_devices - new_devices, new_devices - old_devices)
        old_src = {v.prefsrc for v in before if v.prefsrc is not None}
        new_src = {v.prefsrc for v in after if v.prefsrc is not None}
        _move(self._prefsrc, slot, old_src - new_src, new_src - old_src)


def _all_hops(held: Stored | dict[Hops, Stored]) -> list[Hops]:
    if isinstance(held, dict):
        return list(held)
    return [_stored_hops(held)]


def _move(index: dict[Any, set[Slot]], slot: Slot, gone: set[Any], new: set[Any]) -> None:
    for name in gone:
        slots = index.get(name)
        if slots is not None:
            slots.discard(slot)
            if not slots:
                del index[name]
    for name in new:
        index.setdefault(name, set()).add(slot)
