"""The route cache: compact enough for a full BGP table, indexed by device for cheap re-reads.

A route's identity is its *slot* — ``(family, table, dst, src, tos, metric)``, the place it
occupies in the kernel's FIB — plus its next hop(s): a slot holds several routes when their
next hops differ (IPv4 ``ip route append``, IPv6 device routes). The decoder's key is
``(family, table, dst, src, tos, metric, hops)`` and :class:`RouteTable` answers to it like a
dict, so :mod:`linkmond.state` treats routes like every other table.

Memory is what decides the layout (a full table is a million routes):

- Routes are stored by their ``dst`` string, the one object per route that cannot be shared.
  Everything else of the slot (family, table, source, tos, metric) is a *prefix* shared by
  every route with the same values, kept once and referred to by a small integer.
- What is stored of a route is a plain tuple (``Stored``): that prefix number, the next hop,
  the interned ``(protocol, scope, type)`` names, prefsrc and the *mark* of the last dump or
  notification that wrote it. A dump's sweep removes what carries an older mark than the
  dump's own, so a resync needs no set of the keys it saw.
- Several routes under one ``dst`` (another table, metric or next hop) are a dict of them by
  ``(prefix number, hops)``; the one-route case, nearly all of them, is the tuple alone.

Full :class:`Route` tuples are built only when a route is handed out (a diff, an event).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from itertools import islice
from typing import Any, Final, NamedTuple

#: ``(gateway, oif)`` for one next hop, or a tuple of them for a multipath route
Hops = Any
Key = tuple[Any, ...]


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


#: What is kept of a route besides its ``dst``: a plain tuple ``(prefix number, gateway,
#: ifindex, (protocol, scope, type), prefsrc, nexthops, mark)``. Plain, not a NamedTuple:
#: CPython's collector stops tracking an exact tuple of atoms, never a subclass's instance,
#: and a million tracked entries made every full collection take ~175 ms.
Stored = tuple[Any, ...]
_PREFIX, _GATEWAY, _IFINDEX, _NAMES, _PREFSRC, _NEXTHOPS, _MARK = range(7)


def hops_of(route: Route) -> Hops:
    """The next-hop part of a route's key, as the decoder builds it."""
    nexthops = route.nexthops
    if nexthops is None:
        return (route.gateway, route.ifindex or 0)
    return tuple((hop.gateway, hop.ifindex) for hop in nexthops)


def devices_of(route: Route) -> set[int]:
    """Every device a route goes through: its own and its next hops'."""
    nexthops = route.nexthops
    if nexthops:
        return {hop.ifindex for hop in nexthops if hop.ifindex}
    oif = route.ifindex
    return {oif} if oif else set()


def _stored_hops(value: Stored) -> Hops:
    nexthops = value[_NEXTHOPS]
    if nexthops is None:
        return (value[_GATEWAY], value[_IFINDEX] or 0)
    return tuple((hop.gateway, hop.ifindex) for hop in nexthops)


def _stored_devices(value: Stored) -> set[int]:
    nexthops = value[_NEXTHOPS]
    if nexthops:
        return {hop.ifindex for hop in nexthops if hop.ifindex}
    oif = value[_IFINDEX]
    return {oif} if oif else set()


def replaces_slot(route: Route) -> bool:
    """Whether a new route of this shape describes its whole slot.

    A multipath route, and an IPv6 gateway route (IPv6 merges those into one ECMP route),
    take the place of every other route in their slot.
    """
    return route.nexthops is not None or (route.gateway is not None and route.family == "inet6")


_new: Final = tuple.__new__
#: what joins destinations in a copy made in steps (see RouteTable.destinations_in_steps)
SEPARATOR: Final = "\0"
Entry = Stored | dict[tuple[int, Hops], Stored]


def _values(entry: Entry) -> Iterator[Stored]:
    if isinstance(entry, dict):
        yield from entry.values()
    else:
        yield entry


class RouteTable:
    """Routes by ``dst``, with a dict-like face keyed by the decoder's full route key."""

    def __init__(self) -> None:
        self._by_dst: dict[str, Entry] = {}
        self._len = 0
        #: (family, table, src, tos, metric) → prefix number, and the prefixes by number
        #: with the family's and table's names appended
        self._prefix_numbers: dict[tuple[Any, ...], int] = {}
        self._prefixes: list[tuple[Any, ...]] = []
        self._names: dict[tuple[str, str, str], tuple[str, str, str]] = {}
        #: device → dst strings with a route through it (any next hop); dicts used as sets,
        #: because the collector stops tracking a dict of strings, never a set
        self._via: dict[int, dict[str, None]] = {}
        #: preferred source address → dst strings with a route carrying it (likewise)
        self._prefsrc: dict[str, dict[str, None]] = {}
        #: written into every route stored; a dump's sweep removes routes with an older one
        self.mark = 0
        #: how often a destination was added or removed: a walk spread over several turns of
        #: the event loop (destinations_in_steps) sees the table changed under it
        self.reshaped = 0

    # -- keys and routes ---------------------------------------------------------------------

    def _prefix(self, key: Key, route: Route | None = None) -> int | None:
        five = (key[0], key[1], key[3], key[4], key[5])
        number = self._prefix_numbers.get(five)
        if number is None and route is not None:
            number = self._prefix_numbers[five] = len(self._prefixes)
            self._prefixes.append((*five, route.family, route.table))
        return number

    def _route(self, dst: str, value: Stored) -> Route:
        _f, _t, src, tos, metric, family_name, table_name = self._prefixes[value[_PREFIX]]
        _p, gateway, ifindex, (protocol, scope, type_), prefsrc, nexthops, _m = value
        return _new(
            Route,
            (family_name, dst, src, gateway, ifindex, table_name, protocol, scope, type_,
             metric, prefsrc, tos, nexthops),
        )  # fmt: skip

    def _key(self, dst: str, value: Stored) -> Key:
        family, table, src, tos, metric = self._prefixes[value[_PREFIX]][:5]
        return (family, table, dst, src, tos, metric, _stored_hops(value))

    def _find(self, entry: Entry, prefix: int, hops: Hops) -> Stored | None:
        if isinstance(entry, dict):
            return entry.get((prefix, hops))
        if entry[_PREFIX] == prefix and _stored_hops(entry) == hops:
            return entry
        return None

    # -- the dict-like face ------------------------------------------------------------------

    def __len__(self) -> int:
        return self._len

    def get(self, key: Key) -> Route | None:
        """The route under ``key``, or None."""
        entry = self._by_dst.get(key[2])
        prefix = self._prefix(key)
        if entry is None or prefix is None:
            return None
        value = self._find(entry, prefix, key[6])
        return None if value is None else self._route(key[2], value)

    def __contains__(self, key: object) -> bool:
        return isinstance(key, tuple) and self.get(key) is not None

    def __iter__(self) -> Iterator[Key]:
        for dst, entry in list(self._by_dst.items()):
            for value in _values(entry):
                yield self._key(dst, value)

    def values(self) -> Iterator[Route]:
        """Every cached route."""
        for dst, entry in self._by_dst.items():
            for value in _values(entry):
                yield self._route(dst, value)

    def has_via(self, ifindex: int, family: int = 0) -> bool:
        """Whether any route goes through ``ifindex`` (of ``family``, 0: any)."""
        return next(self._via_values(ifindex, family), None) is not None

    def count_via(self, ifindex: int, family: int = 0) -> int:
        """How many routes go through ``ifindex`` (of ``family``, 0: any)."""
        return sum(1 for _ in self._via_values(ifindex, family))

    def _via_values(self, ifindex: int, family: int) -> Iterator[tuple[str, Stored]]:
        prefixes = self._prefixes
        for dst in self._via.get(ifindex, ()):
            for value in _values(self._by_dst[dst]):
                if (
                    not family or prefixes[value[_PREFIX]][0] == family
                ) and ifindex in _stored_devices(value):
                    yield dst, value

    def keys_via(self, ifindex: int, family: int = 0) -> list[Key]:
        """Keys of the routes through ``ifindex`` (its own or a next hop's)."""
        return [self._key(dst, value) for dst, value in self._via_values(ifindex, family)]

    def keys_with_prefsrc(self, address: str) -> list[Key]:
        """Keys of the routes whose preferred source is ``address``."""
        return [
            self._key(dst, value)
            for dst in self._prefsrc.get(address, ())
            for value in _values(self._by_dst[dst])
            if value[_PREFSRC] == address
        ]

    # -- sweeps ------------------------------------------------------------------------------

    def begin_mark(self) -> int:
        """Start a dump: returns the mark its entries are written with (``dump_mark`` of
        :meth:`put`); everything written otherwise from now on carries a higher one, so a
        newer notification is recognisable, and a sweep removes what carries a lower one."""
        self.mark += 2
        return self.mark - 1

    def notified_since(self, key: Key, mark: int) -> bool:
        """Whether the route under ``key`` was written after the dump of ``mark`` began."""
        entry = self._by_dst.get(key[2])
        prefix = self._prefix(key)
        if entry is None or prefix is None:
            return False
        value = self._find(entry, prefix, key[6])
        return value is not None and value[_MARK] > mark

    def destinations(self) -> list[str]:
        """Every destination held (a snapshot, to walk while the table changes)."""
        return list(self._by_dst)

    def unmarked(self, mark: int, family: int = 0, oif: int | None = None) -> list[str]:
        """The dst strings holding a route of the scope stored before ``mark``: what a dump
        that began with ``mark`` did not show. Only references are collected, no keys."""
        prefixes = self._prefixes
        if oif is None:
            candidates: Any = self._by_dst.items()
        else:
            by_dst = self._by_dst
            candidates = ((dst, by_dst[dst]) for dst in self._via.get(oif, ()))
        found = []
        for dst, entry in candidates:
            for value in _values(entry):
                if (
                    value[_MARK] < mark
                    and (not family or prefixes[value[_PREFIX]][0] == family)
                    and (oif is None or oif in _stored_devices(value))
                ):
                    found.append(dst)
                    break
        return found

    def stale_keys(self, dst: str, mark: int, family: int = 0, oif: int | None = None) -> list[Key]:
        """Keys under ``dst`` of the scope stored before ``mark`` (see :meth:`unmarked`)."""
        entry = self._by_dst.get(dst)
        if entry is None:
            return []
        prefixes = self._prefixes
        return [
            self._key(dst, value)
            for value in _values(entry)
            if value[_MARK] < mark
            and (not family or prefixes[value[_PREFIX]][0] == family)
            and (oif is None or oif in _stored_devices(value))
        ]

    # -- changes -----------------------------------------------------------------------------

    def put(
        self,
        key: Key,
        route: Route,
        replace: bool,
        dump_mark: int | None = None,
        superseded: list[Key] | None = None,
    ) -> Route | None:
        """Store ``route`` under ``key`` with the kernel's replace semantics.

        Returns what the route is to be compared with: the route that was under ``key``,
        else one it superseded (NLM_F_REPLACE, or a route that describes its whole slot).
        A dump's entry is written with its ``dump_mark`` (see :meth:`begin_mark`); the keys
        of routes this one took the place of are added to ``superseded``.
        """
        prefix = self._prefix(key, route)
        assert prefix is not None
        dst = key[2]
        hops = key[6]
        names = (route.protocol, route.scope, route.type)
        names = self._names.setdefault(names, names)
        value = (
            prefix,
            route.gateway,
            route.ifindex,
            names,
            route.prefsrc,
            route.nexthops,
            self.mark,
        )
        entry = self._by_dst.get(dst)
        if entry is None:
            self._by_dst[dst] = value
            self._len += 1
            self.reshaped += 1
            self._reindex(dst, (), (value,))
            return None
        if not isinstance(entry, dict):
            if (
                entry[_PREFIX] == prefix and _stored_hops(entry) == hops
            ):  # the common case: a repeat
                self._by_dst[dst] = value
                self._reindex(dst, (entry,), (value,))
                return self._route(dst, entry)
            before: tuple[Stored, ...] = (entry,)
            group = {(entry[_PREFIX], _stored_hops(entry)): entry}
        else:
            group = entry
            before = tuple(group.values())
        old = group.get((prefix, hops))
        if replace or replaces_slot(route):
            for other in [k for k in group if k[0] == prefix and k[1] != hops]:
                gone = group.pop(other)
                if superseded is not None:
                    superseded.append(self._key(dst, gone))
                if old is None:
                    old = gone
        group[(prefix, hops)] = value
        self._len += len(group) - len(before)
        self._by_dst[dst] = value if len(group) == 1 else group
        self._reindex(dst, before, tuple(group.values()))
        return None if old is None else self._route(dst, old)

    def pop(self, key: Key) -> tuple[Route | None, list[Key]]:
        """Remove the route under ``key``: ``(the route or None, other keys in its slot)``.

        A deletion that matches nothing while its slot holds other routes (a next hop held
        only inside a multipath entry, or the reverse) cannot be resolved from the cache;
        the caller re-reads the devices of the keys returned.
        """
        dst = key[2]
        entry = self._by_dst.get(dst)
        prefix = self._prefix(key)
        if entry is None or prefix is None:
            return None, []
        hops = key[6]
        if not isinstance(entry, dict):
            if entry[_PREFIX] != prefix:
                return None, []
            if _stored_hops(entry) != hops:
                return None, [self._key(dst, entry)]
            del self._by_dst[dst]
            self._len -= 1
            self.reshaped += 1
            self._reindex(dst, (entry,), ())
            return self._route(dst, entry), []
        before = tuple(entry.values())
        value = entry.pop((prefix, hops), None)
        if value is None:
            return None, [self._key(dst, v) for k, v in entry.items() if k[0] == prefix]
        self._len -= 1
        if len(entry) == 1:
            self._by_dst[dst] = next(iter(entry.values()))
        self._reindex(dst, before, tuple(entry.values()))
        return self._route(dst, value), []

    # -- a saved state (linkmond.snapshot) ---------------------------------------------------

    def destinations_in_steps(
        self, step: int = 25_000, piece: int = 1024, tries: int = 3
    ) -> Iterator[list[str] | None]:
        """Every destination held, like :meth:`destinations`, copied ``step`` at a time, so
        that no step holds the event loop up for long (a million at once took ~11 ms).

        Yields None after every step but the last, then the copy: a list of strings, each
        holding up to ``piece`` destinations joined by NUL (which no destination contains;
        split them with ``split("\\0")``). Strings, because a list of a million references
        costs ~10 ms to free and as much again when the garbage collector looks through it.

        The caller may let the table change between steps; a destination added or removed
        meanwhile makes the copy start over (a dict iterator cannot go on after that). After
        ``tries`` such restarts (a storm) the keys are taken in one go (the one hold that
        grows with the table) and joined in steps from there.
        """
        by_dst = self._by_dst
        join = SEPARATOR.join
        per_step = max(1, step // piece)
        for _ in range(tries):
            stamp = self.reshaped
            walk = iter(by_dst)
            pieces: list[str] = []
            while True:
                for _ in range(per_step):
                    part = list(islice(walk, piece))
                    if part:
                        pieces.append(join(part))
                    if len(part) < piece:
                        yield pieces
                        return
                yield None
                if self.reshaped != stamp:
                    break
        keys = list(by_dst)
        pieces = []
        while keys:
            for _ in range(per_step):
                pieces.append(join(keys[-piece:]))
                del keys[-piece:]  # freed as it goes
                if not keys:
                    break
            yield None
        yield pieces

    def prefixes(self, start: int = 0) -> list[tuple[Any, ...]]:
        """The prefixes numbered ``start`` and up: ``(family, table, src, tos, metric,
        family name, table name)``. Numbers are never reused, so a list read in parts stays
        valid."""
        return self._prefixes[start:]

    def export(
        self, dsts: Iterable[str], names: dict[int, int], name_list: list[tuple[str, str, str]]
    ) -> list[tuple[Any, ...]]:
        """The routes under ``dsts`` (those still held) as rows of a saved state: ``(dst,
        prefix number, gateway, ifindex, names number, prefsrc, nexthops)``, nexthops as
        ``(gateway, ifindex, weight)`` tuples.

        ``names`` numbers the ``(protocol, scope, type)`` tuples in the order first met (keyed
        by the interned tuple's id); a tuple met for the first time is appended to
        ``name_list``, for the caller to write before these rows.
        """
        get = self._by_dst.get
        rows: list[tuple[Any, ...]] = []
        add = rows.append
        for dst in dsts:
            entry = get(dst)
            if entry is None:
                continue
            for value in entry.values() if isinstance(entry, dict) else (entry,):
                triple = value[_NAMES]
                number = names.get(id(triple))
                if number is None:
                    number = names[id(triple)] = len(name_list)
                    name_list.append(triple)
                hops = value[_NEXTHOPS]
                add(
                    (dst, value[_PREFIX], value[_GATEWAY], value[_IFINDEX], number,
                     value[_PREFSRC], None if hops is None else [tuple(h) for h in hops])
                )  # fmt: skip
        return rows

    def restore(self, key: Key, route: Route) -> None:
        """Put a saved route back as the saved table held it (no replace semantics: the
        saved table was consistent as it was)."""
        prefix = self._prefix(key, route)
        assert prefix is not None
        dst = key[2]
        names = (route.protocol, route.scope, route.type)
        names = self._names.setdefault(names, names)
        value = (
            prefix, route.gateway, route.ifindex, names, route.prefsrc, route.nexthops, self.mark
        )  # fmt: skip
        entry = self._by_dst.get(dst)
        if entry is None:
            self._by_dst[dst] = value
            self._len += 1
            self.reshaped += 1
            self._reindex(dst, (), (value,))
            return
        group = entry if isinstance(entry, dict) else {(entry[_PREFIX], _stored_hops(entry)): entry}
        before = tuple(group.values())
        group[(prefix, key[6])] = value
        self._len += len(group) - len(before)
        self._by_dst[dst] = value if len(group) == 1 else group
        self._reindex(dst, before, tuple(group.values()))

    # -- indexes -----------------------------------------------------------------------------

    def _reindex(self, dst: str, before: tuple[Stored, ...], after: tuple[Stored, ...]) -> None:
        """Keep ``dst`` indexed under every device and prefsrc its routes use."""
        if not before and len(after) == 1:  # a new destination: the storm's case
            new = after[0]
            via = self._via
            for oif in _stored_devices(new):
                dsts = via.get(oif)
                if dsts is None:
                    via[oif] = dsts = {}
                dsts[dst] = None
            if new[_PREFSRC] is not None:
                self._prefsrc.setdefault(new[_PREFSRC], {})[dst] = None
            return
        if len(before) == 1 and len(after) == 1:
            old, new = before[0], after[0]
            if (
                old[_IFINDEX] == new[_IFINDEX]
                and old[_NEXTHOPS] == new[_NEXTHOPS]
                and old[_PREFSRC] == new[_PREFSRC]
            ):
                return  # the common repeat: the indexes already say the same
        old_devices = set().union(*(_stored_devices(v) for v in before))
        new_devices = set().union(*(_stored_devices(v) for v in after))
        _move(self._via, dst, old_devices - new_devices, new_devices - old_devices)
        old_src = {v[_PREFSRC] for v in before if v[_PREFSRC] is not None}
        new_src = {v[_PREFSRC] for v in after if v[_PREFSRC] is not None}
        _move(self._prefsrc, dst, old_src - new_src, new_src - old_src)


def _move(index: dict[Any, dict[str, None]], dst: str, gone: set[Any], new: set[Any]) -> None:
    for name in gone:
        dsts = index.get(name)
        if dsts is not None:
            dsts.pop(dst, None)
            if not dsts:
                del index[name]
    for name in new:
        index.setdefault(name, {})[dst] = None
