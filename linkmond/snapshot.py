"""The cache saved across restarts, so that what changed while linkmond was stopped is reported.

The daemon saves its cache (links, addresses, routes, neighbours, rules, netconf, and the
operstate each link was last described with) to ``<state directory>/state-<netns>.jsonl`` at
shutdown and every ``[daemon] save_interval``. At the next start, before subscribing, it puts
that state back into the cache silently; the dumps that would have filled an empty cache then
run as a *reconciliation* round, the full re-dump an overflow triggers
(:meth:`linkmond.scheduler.DumpScheduler.reconcile`), so every difference becomes its normal
event flagged ``resync`` through the one diff there is (:meth:`linkmond.state.State.apply`).

The file is input, so it is never trusted further than checked: it is opened without
following a symlink and only as a regular file of the daemon's own user
(:func:`linkmond.safefile.open_read`), parsed as JSON (orjson; never pickle), every object
checked field by field, and a CRC-32 over everything before the end record catches damage
and truncation. A file saved during another boot (``/proc/sys/kernel/random/boot_id``, or
where that is hidden, as under the unit's ``ProcSubset=pid``, the boot and wall clocks: see
:func:`other_boot`) or in another instance of the network namespace (device and inode of
``/proc/self/ns/net``, and the namespace cookie where the kernel has one) describes
interface indexes and objects that mean nothing here. Any of these is set aside, renamed with
a suffix that says why (``.foreign``, ``.corrupt``, ``.unsafe``), with a warning naming it,
and the daemon starts fresh (a silent initial dump, as without a saved state).

Format (version 1), one JSON value per line::

    {"format": "linkmond-state", "version": 1, "boot_id": "…" or "", "boottime": 5.2,
     "realtime": 1796135167.9, "netns": {"name": "…", "dev": 4, "ino": 4026531840,
     "cookie": 1}, "saved": "2026-…Z", "linkmond": "0.1.0", "tables": ["link", "addr", …]}
    ["told", [[ifindex, operstate], …]]
    ["link", [{link as in link events' data, without changes/resync}, …]]   (addr, neigh,
                                                                             rule, netconf)
    ["route-prefixes", [[family, table, src, tos, metric, family name, table name], …]]
    ["route-names", [[protocol, scope, type], …]]
    ["route", [[dst, prefix number, gateway, ifindex, names number, prefsrc,
                [[gateway, ifindex, weight], …] or null], …]]
    {"end": true, "counts": {"link": 3, …}, "crc32": 1234567890}

Prefix and name numbers count the ``route-prefixes`` and ``route-names`` entries before them.
Routes, a million of them, are written in records of :data:`ROUTES_PER_RECORD` (about 40
bytes each: 40 MB per million host routes).

Saving never holds the event loop up for long: the file is made in slices of about
:data:`SLICE` seconds on the loop (the cache is not safe to read from another thread; the
route destinations are copied 25,000 at a time, see
:meth:`linkmond.routes.RouteTable.destinations_in_steps`), each handed to a thread to write
while the loop serves the reader, then fsync'ed and renamed over
the old file (written as a temporary file of random name in the same directory, created
0600 without following symlinks). A save while running is fuzzy: what changes while it runs
may or may not be in the file, so after a crash such a change may be reported once more at
the next start (at least once, never lost). The save at shutdown runs after reading has
stopped, and is exact.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import time
import zlib
from collections.abc import Hashable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final, NamedTuple

import orjson
import structlog

from linkmond import __version__, rtnl
from linkmond.namespaces import Namespace, netns_cookie
from linkmond.routes import SEPARATOR, Hop, Route
from linkmond.safefile import PRIVATE_MODE, UnsafeFileError, open_append, open_read
from linkmond.state import TABLES, State

log = structlog.get_logger("linkmond.snapshot")

FORMAT: Final = "linkmond-state"
VERSION: Final = 1
BOOT_ID: Final = Path("/proc/sys/kernel/random/boot_id")
#: set by the unit to systemd's ``%b`` (the boot ID), which it cannot read from /proc
BOOT_ID_ENV: Final = "LINKMOND_BOOT_ID"
NETNS: Final = Path("/proc/self/ns/net")
#: seconds the wall clock may have moved against the boot clock since a save in this boot
#: (NTP slewing); only consulted when the boot ID cannot be read
CLOCK_SLACK: Final = 2.0
#: a state file larger than this is not read (a million routes make ~50 MB)
MAX_SIZE: Final = 2 * 1024**3
#: seconds of work on the event loop per slice of a save
SLICE: Final = 0.001
OBJECTS_PER_RECORD: Final = 256
ROUTES_PER_RECORD: Final = 512
#: the mode of a state directory the daemon creates (as the spool and the file sink do)
DIRECTORY_MODE: Final = 0o750

_NONE = type(None)
_STR: Final = (str,)
_INT: Final = (int,)
_BOOL: Final = (bool,)
_LIST: Final = (list,)
_OPT_STR: Final = (str, _NONE)
_OPT_INT: Final = (int, _NONE)

#: every field of a cached object, in the order the decoder makes them (events show that order)
_FIELDS: Final[dict[str, dict[str, tuple[type, ...]]]] = {
    "link": {
        "ifindex": _INT, "ifname": _STR, "admin_up": _BOOL, "carrier": _BOOL,
        "operstate": _STR, "flags": _LIST, "mtu": _INT, "mac": _OPT_STR, "kind": _OPT_STR,
        "master": _OPT_INT,
    },
    "addr": {
        "ifindex": _INT, "family": _STR, "address": _STR, "prefixlen": _INT, "peer": _OPT_STR,
        "scope": _STR, "label": _OPT_STR, "flags": _LIST,
    },
    "neigh": {
        "ifindex": _INT, "family": _STR, "address": _STR, "lladdr": _OPT_STR, "state": _STR,
        "flags": _LIST,
    },
    "rule": {
        "family": _STR, "priority": _INT, "not": _BOOL, "src": _STR, "dst": _STR,
        "iif": _OPT_STR, "oif": _OPT_STR, "fwmark": _OPT_STR, "tos": _INT, "table": _OPT_STR,
        "goto": _OPT_INT, "action": _STR,
    },
    "netconf": {"family": _STR, "ifindex": _INT},
}  # fmt: skip
#: fields present only sometimes (rules: the newer selectors; netconf: the settings dumped)
_OPTIONAL: Final[dict[str, dict[str, tuple[type, ...]]]] = {
    "rule": {
        "suppress_ifgroup": _INT, "suppress_prefixlength": _INT, "l3mdev": _BOOL,
        "uidrange": _STR, "protocol": _STR, "ipproto": _INT, "sport": _STR, "dport": _STR,
    },
    "netconf": {
        name: _STR if name == "rp_filter" else _BOOL for name in rtnl.NETCONF_ATTRS.values()
    },
}  # fmt: skip
_FAMILY_NUMBERS: Final = {name: number for number, name in rtnl.FAMILY_NAMES.items()}


class Identity(NamedTuple):
    """What a state file must have been saved under to describe this namespace now: the
    boot ("" when its ID cannot be read), the namespace instance, and the clocks that tell
    the boot when its ID is hidden."""

    boot_id: str
    dev: int
    ino: int
    cookie: int | None
    #: CLOCK_BOOTTIME (seconds since this boot, suspend included) and the wall clock
    boottime: float = 0.0
    realtime: float = 0.0


def identity(namespace: Namespace | None = None) -> Identity:
    """This boot and this network namespace instance (``namespace``'s; None: our own)."""
    # the unit passes systemd's %b, as /proc/sys is hidden from it (ProcSubset=pid)
    boot_id = os.environ.get(BOOT_ID_ENV, "")
    if not boot_id:
        try:
            boot_id = BOOT_ID.read_text(encoding="ascii").strip()
        except (OSError, UnicodeDecodeError):
            boot_id = ""
    boot_id = boot_id.replace("-", "").lower()  # %b has no dashes, /proc's has
    st = os.stat(NETNS if namespace is None else namespace.path)
    cookie = None
    with contextlib.suppress(OSError):
        cookie = netns_cookie() if namespace is None else namespace.cookie()
    boottime = time.clock_gettime(time.CLOCK_BOOTTIME)
    return Identity(boot_id, st.st_dev, st.st_ino, cookie, boottime, time.time())


def other_boot(saved: Identity, now: Identity) -> str | None:
    """Why a state saved under ``saved`` is of another boot than ``now``; None if it is not.

    The boot IDs decide when both are known. Without one (under the shipped unit,
    ``ProcSubset=pid`` hides ``/proc/sys``), the clocks do: the boot clock restarts at every
    boot, and since a save in this boot it has advanced as the wall clock has. In another
    boot they part by at least that boot's uptime when it saved plus the time the machine
    was down; a wall clock set meanwhile (more than :data:`CLOCK_SLACK`) also counts as
    another boot, which only costs a fresh start.
    """
    if saved.boot_id and now.boot_id:
        if saved.boot_id.replace("-", "").lower() != now.boot_id:
            return f"saved during another boot (boot_id {saved.boot_id})"
        return None
    if now.boottime < saved.boottime:
        return "saved during another boot (the boot clock started again since)"
    drift = (now.realtime - saved.realtime) - (now.boottime - saved.boottime)
    if abs(drift) > CLOCK_SLACK:
        return (
            "saved during another boot, or the wall clock was set since "
            f"({drift:+.1f} s against the boot clock)"
        )
    return None


class Unusable(Exception):
    """A state file that cannot be used: ``suffix`` is what it is renamed with."""

    def __init__(self, suffix: str, reason: str) -> None:
        super().__init__(reason)
        self.suffix = suffix
        self.reason = reason


def _corrupt(reason: str) -> Unusable:
    return Unusable(".corrupt", reason)


@dataclass
class SaveReport:
    """What a save did: bytes written, seconds from start to rename, the longest time it
    held the event loop (wall clock, and the CPU time of that thread: the difference is time
    the machine gave to others meanwhile), in how many slices, the objects saved per table,
    and the seconds of the end of it, fsync and rename (in a thread, the loop free)."""

    bytes: int
    seconds: float
    longest_slice_ms: float
    longest_slice_cpu_ms: float
    slices: int
    counts: dict[str, int]
    sync_seconds: float = 0.0


class StateFile:
    """The saved state of one watched namespace: ``<directory>/state-<netns>.jsonl``."""

    def __init__(self, directory: Path, netns: str, namespace: Namespace | None = None) -> None:
        """``namespace``: the instance the state describes (None: this process's own)."""
        self.path = directory / f"state-{netns}.jsonl"
        self.netns = netns
        self.namespace = namespace

    # -- at start --------------------------------------------------------------------------

    def load(self, state: State, tables: Iterable[str]) -> frozenset[str]:
        """Put the saved state of ``tables`` back into ``state`` (empty, before any dump).

        Returns the tables restored; none when there is no usable file, which is then set
        aside with a warning (``state`` is left empty). Never raises for what the file holds.
        """
        began = time.monotonic()
        path = self.path
        try:
            data = _read(path)
        except FileNotFoundError:
            log.info("no saved state: starting fresh", path=str(path))
            return frozenset()
        except UnsafeFileError as exc:
            self._set_aside(".unsafe", exc.strerror or str(exc))
            return frozenset()
        except Unusable as exc:
            self._set_aside(exc.suffix, exc.reason)
            return frozenset()
        except OSError as exc:
            log.warning(
                "saved state not readable: starting fresh",
                path=str(path),
                error=exc.strerror or str(exc),
            )
            return frozenset()
        try:
            ident = identity(self.namespace)
        except OSError as exc:
            log.warning(
                "cannot tell this boot and namespace: saved state not used",
                path=str(path),
                error=exc.strerror or str(exc),
            )
            return frozenset()
        try:
            header, counts = restore(data, state, frozenset(tables), ident)
        except Unusable as exc:
            state.clear()
            self._set_aside(exc.suffix, exc.reason)
            return frozenset()
        except Exception as exc:  # the file is input: whatever is wrong with it, start fresh
            state.clear()
            self._set_aside(".corrupt", f"{type(exc).__name__}: {exc}")
            return frozenset()
        restored = frozenset(header["tables"]) & frozenset(tables)
        log.info(
            "saved state loaded; reconciling it with the kernel",
            path=str(path),
            saved=header["saved"],
            seconds=round(time.monotonic() - began, 3),
            **{t: counts[t] for t in sorted(restored, key=TABLES.index)},
        )
        return restored

    def discard(self, why: str = "reconcile_on_start is off") -> None:
        """Remove the saved state, logging ``why`` (``reconcile_on_start = false``: an old
        state must never be reconciled later as if it were recent; or the namespace it
        describes was deleted)."""
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            return
        except OSError as exc:
            log.warning("cannot remove the saved state", path=str(self.path), error=exc.strerror)
            return
        log.info(f"{why}: removed the saved state", path=str(self.path))

    def _set_aside(self, suffix: str, reason: str) -> None:
        path = self.path
        aside = path.with_name(path.name + suffix)
        try:
            os.replace(path, aside)
        except OSError as exc:
            log.warning(
                "saved state not usable, and not set aside; starting fresh",
                path=str(path),
                reason=reason,
                error=exc.strerror or str(exc),
            )
            return
        log.warning(
            "saved state not usable: set aside; starting fresh",
            path=str(path),
            reason=reason,
            moved_to=str(aside),
        )

    # -- while running and at shutdown -------------------------------------------------------

    async def save(
        self, state: State, tables: Iterable[str], slice_seconds: float = SLICE
    ) -> SaveReport:
        """Write ``state`` to the file atomically (temporary file, fsync, rename).

        The cache is read on the event loop in slices of about ``slice_seconds``, each
        written by a thread while the loop serves others. Raises OSError (the directory
        cannot be made or written, :class:`UnsafeFileError`); a save cancelled or failed
        leaves the old file as it was and no temporary file behind.
        """
        loop = asyncio.get_running_loop()
        clock = time.perf_counter
        began = clock()
        tables = [t for t in TABLES if t in set(tables)]
        ident = identity(self.namespace)
        header = {
            "format": FORMAT,
            "version": VERSION,
            "boot_id": ident.boot_id,
            "boottime": ident.boottime,
            "realtime": ident.realtime,
            "netns": {
                "name": self.netns,
                "dev": ident.dev,
                "ino": ident.ino,
                "cookie": ident.cookie,
            },
            "saved": datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z"),
            "linkmond": __version__,
            "tables": tables,
        }
        directory = self.path.parent
        directory.mkdir(parents=True, exist_ok=True, mode=DIRECTORY_MODE)
        tmp = directory / f".{self.path.name}.{secrets.token_hex(6)}.tmp"
        fd = open_append(tmp, PRIVATE_MODE)
        writing: asyncio.Future[None] | None = None
        handed_over = False
        try:
            encoder = _Encoder(state, tables, header)
            chunks = encoder.chunks()
            crc = size = slices = 0
            longest = longest_cpu = 0.0
            more = True
            while more:
                start, start_cpu = clock(), time.thread_time()
                deadline = start + slice_seconds
                parts = []
                for part in chunks:
                    if part is not None:
                        parts.append(part)
                    if clock() >= deadline:
                        break
                else:
                    more = False
                data = b"".join(parts)
                crc = zlib.crc32(data, crc)
                if not more:
                    end = {"end": True, "counts": encoder.counts, "crc32": crc}
                    data += orjson.dumps(end) + b"\n"
                size += len(data)
                slices += 1
                longest = max(longest, clock() - start)
                longest_cpu = max(longest_cpu, time.thread_time() - start_cpu)
                if writing is not None:
                    await writing
                writing = loop.run_in_executor(None, _write_all, fd, data)
                await asyncio.sleep(0)  # the loop's turn, even when the write is done already
            assert writing is not None
            await writing
            handed_over = True  # from here on the thread closes fd and removes tmp if need be
            sync_began = clock()
            await loop.run_in_executor(None, _commit, fd, tmp, self.path)
        finally:
            if not handed_over:
                if writing is not None and not writing.done():
                    writing.add_done_callback(lambda f: _abandon(fd, tmp, f))
                else:
                    _abandon(fd, tmp, writing)
        now = clock()
        return SaveReport(
            size,
            now - began,
            longest * 1000,
            longest_cpu * 1000,
            slices,
            encoder.counts,
            now - sync_began,
        )


def _read(path: Path) -> bytes:
    fd = open_read(path)
    with open(fd, "rb") as f:  # closes fd
        size = os.fstat(f.fileno()).st_size
        if size > MAX_SIZE:
            raise _corrupt(f"{size} bytes: larger than a state file can be")
        return f.read(MAX_SIZE + 1)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _commit(fd: int, tmp: Path, path: Path) -> None:
    """fsync the temporary file, rename it over ``path``, fsync the directory."""
    try:
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)  # a symlink at path is replaced, never followed
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    with contextlib.suppress(OSError):
        dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def _abandon(fd: int, tmp: Path, writing: asyncio.Future[None] | None) -> None:
    if writing is not None and not writing.cancelled():
        writing.exception()  # retrieved: the save's own error is what is reported
    with contextlib.suppress(OSError):
        os.close(fd)
    with contextlib.suppress(OSError):
        os.unlink(tmp)


# -- writing -----------------------------------------------------------------------------------


class _Encoder:
    """The lines of a state file, made a record at a time (None: a pause in a long walk)."""

    def __init__(self, state: State, tables: list[str], header: dict[str, Any]) -> None:
        self.state = state
        self.tables = tables
        self.header = header
        self.counts = dict.fromkeys(tables, 0)

    def chunks(self) -> Iterator[bytes | None]:
        state = self.state
        yield _line(self.header)
        yield _line(["told", sorted(state.operstates_told().items())])
        for table in self.tables:
            if table == "route":
                continue
            objects = list(state.tables[table].values())
            for i in range(0, len(objects), OBJECTS_PER_RECORD):
                part = objects[i : i + OBJECTS_PER_RECORD]
                self.counts[table] += len(part)
                yield _line([table, part])
        if "route" in self.tables:
            yield from self._routes()

    def _routes(self) -> Iterator[bytes | None]:
        routes = self.state.routes
        copy: list[str] = []
        for step in routes.destinations_in_steps():
            if step is None:
                yield None
            else:
                copy = step
        names: dict[int, int] = {}
        name_list: list[tuple[str, str, str]] = []
        prefixes = named = 0
        for i, joined in enumerate(copy):
            copy[i] = ""  # freed as it goes
            dsts = joined.split(SEPARATOR)
            for j in range(0, len(dsts), ROUTES_PER_RECORD):
                rows = routes.export(dsts[j : j + ROUTES_PER_RECORD], names, name_list)
                new = routes.prefixes(prefixes)
                if new:
                    prefixes += len(new)
                    yield _line(["route-prefixes", new])
                if len(name_list) > named:
                    yield _line(["route-names", name_list[named:]])
                    named = len(name_list)
                self.counts["route"] += len(rows)
                yield _line(["route", rows])


def _line(value: Any) -> bytes:
    return orjson.dumps(value) + b"\n"


# -- reading -----------------------------------------------------------------------------------


def restore(
    data: bytes, state: State, tables: frozenset[str], ident: Identity
) -> tuple[dict[str, Any], dict[str, int]]:
    """Check a state file's contents and put its ``tables`` into ``state``.

    Returns the header and the objects per saved table; raises :class:`Unusable` (and
    possibly anything else, for a file that is damaged in a way no check foresaw: the caller
    treats that as corrupt too). ``state`` may be partly filled then.
    """
    # lines are read in place (memoryview slices): a copy of each would double what a
    # million routes take while loading
    view = memoryview(data)
    last = data.rfind(b"\n", 0, len(data) - 1) + 1  # where the end record begins
    first = data.find(b"\n")  # where the header ends
    if not data.endswith(b"\n") or last <= 0 or first >= last:
        raise _corrupt("truncated: no end record")
    header = _header(view[:first], ident)
    saved = header["tables"]
    end = _json(view[last:-1])
    if (
        not isinstance(end, dict)
        or end.keys() != {"end", "counts", "crc32"}
        or end["end"] is not True
        or type(end["crc32"]) is not int
        or not isinstance(end["counts"], dict)
    ):
        raise _corrupt("truncated: no end record")
    if zlib.crc32(view[:last]) != end["crc32"]:
        raise _corrupt("damaged: checksum mismatch")
    reader = _Reader(state, saved, tables & set(saved))
    pos = first + 1
    while pos < last:
        eol = data.find(b"\n", pos)
        reader.record(_json(view[pos:eol]))
        pos = eol + 1
    if end["counts"] != reader.counts:
        raise _corrupt(f"incomplete: {reader.counts} of {end['counts']}")
    return header, reader.counts


def _json(line: bytes | memoryview) -> Any:
    try:
        return orjson.loads(line)
    except orjson.JSONDecodeError as exc:
        raise _corrupt(f"not JSON: {exc}") from None


def _header(line: bytes | memoryview, ident: Identity) -> dict[str, Any]:
    try:
        header = orjson.loads(line)
    except orjson.JSONDecodeError:
        header = None
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise _corrupt("not a linkmond state file")
    if header.get("version") != VERSION:
        raise _corrupt(
            f"format version {header.get('version')!r}; this linkmond reads version {VERSION}"
        )
    netns = header.get("netns")
    if (
        type(header.get("boot_id")) is not str
        or type(header.get("boottime")) is not float
        or type(header.get("realtime")) is not float
        or not isinstance(netns, dict)
        or type(netns.get("dev")) is not int
        or type(netns.get("ino")) is not int
        or type(netns.get("cookie")) not in _OPT_INT
        or type(header.get("saved")) is not str
        or not isinstance(header.get("tables"), list)
        or not set(header["tables"]) <= set(TABLES)
        or len(set(header["tables"])) != len(header["tables"])
    ):
        raise _corrupt("damaged header")
    saved = Identity(
        header["boot_id"],
        netns["dev"],
        netns["ino"],
        netns["cookie"],
        header["boottime"],
        header["realtime"],
    )
    why = other_boot(saved, ident)
    if why is not None:
        raise Unusable(".foreign", why)
    if (netns["dev"], netns["ino"]) != (ident.dev, ident.ino) or (
        netns["cookie"] is not None and ident.cookie is not None and netns["cookie"] != ident.cookie
    ):
        raise Unusable(
            ".foreign",
            f"saved in another network namespace (inode {netns['ino']}, now {ident.ino})",
        )
    return header


class _Reader:
    """Restores records into a State as they are read, checking every value."""

    def __init__(self, state: State, saved: list[str], restored: frozenset[str]) -> None:
        self.state = state
        self.saved = set(saved)
        self.restored = restored
        self.counts = dict.fromkeys(saved, 0)
        self.told: dict[int, str] = {}
        self.prefixes: list[tuple[Any, ...]] = []
        self.names: list[tuple[str, str, str]] = []
        self._interned: dict[Any, Any] = {}

    def record(self, record: Any) -> None:
        if not (
            isinstance(record, list)
            and len(record) == 2
            and type(record[0]) is str
            and isinstance(record[1], list)
        ):
            raise _corrupt("damaged record")
        kind, items = record
        if kind == "route":
            self._check_table("route")
            self.counts["route"] += len(items)
            if "route" in self.restored:
                self._routes(items)
        elif kind in _FIELDS:
            self._check_table(kind)
            self.counts[kind] += len(items)
            restore = self.state.restore
            for item in items:
                obj = _checked(kind, item)
                if kind in self.restored:
                    told = self.told.get(obj["ifindex"]) if kind == "link" else None
                    restore(kind, _key(kind, obj), obj, told)
        elif kind == "route-prefixes":
            self.prefixes.extend(_prefix(item) for item in items)
        elif kind == "route-names":
            self.names.extend(_names(item) for item in items)
        elif kind == "told":
            for item in items:
                if not (
                    isinstance(item, list)
                    and len(item) == 2
                    and type(item[0]) is int
                    and type(item[1]) is str
                ):
                    raise _corrupt("damaged operstate record")
                self.told[item[0]] = item[1]
        else:
            raise _corrupt(f"unknown record {kind!r}")

    def _check_table(self, table: str) -> None:
        if table not in self.saved:
            raise _corrupt(f"{table} records in a file that did not save that table")

    def _routes(self, rows: list[Any]) -> None:
        prefixes, names = self.prefixes, self.names
        n_prefixes, n_names = len(prefixes), len(names)
        intern = self._interned.setdefault
        restore = self.state.routes.restore
        new_route = tuple.__new__
        for row in rows:
            if type(row) is not list or len(row) != 7:
                raise _corrupt("damaged route")
            dst, number, gateway, ifindex, named, prefsrc, hops = row
            if (
                type(dst) is not str
                or type(number) is not int
                or not 0 <= number < n_prefixes
                or type(named) is not int
                or not 0 <= named < n_names
                or type(gateway) not in _OPT_STR
                or type(ifindex) not in _OPT_INT
                or type(prefsrc) not in _OPT_STR
            ):
                raise _corrupt(f"damaged route {dst!r}")
            family, table, src, tos, metric, family_name, table_name = prefixes[number]
            protocol, scope, type_ = names[named]
            if gateway is not None:
                gateway = intern(gateway, gateway)
            if prefsrc is not None:
                prefsrc = intern(prefsrc, prefsrc)
            if hops is None:
                nexthops = None
                key_hops = intern((gateway, ifindex or 0), (gateway, ifindex or 0))
            else:
                parsed = _hops(hops, dst)
                nexthops = intern(parsed, parsed)
                key_hops = tuple((hop.gateway, hop.ifindex) for hop in nexthops)
            key = (family, table, dst, src, tos, metric, key_hops)
            route = new_route(
                Route,
                (family_name, dst, src, gateway, ifindex or None, table_name, protocol, scope,
                 type_, metric, prefsrc, tos, nexthops),
            )  # fmt: skip
            restore(key, route)


def _hops(hops: Any, dst: str) -> tuple[Hop, ...]:
    if type(hops) is not list or not hops:
        raise _corrupt(f"damaged next hops of route {dst!r}")
    result = []
    for hop in hops:
        if (
            type(hop) is not list
            or len(hop) != 3
            or type(hop[0]) not in _OPT_STR
            or type(hop[1]) is not int
            or type(hop[2]) is not int
        ):
            raise _corrupt(f"damaged next hops of route {dst!r}")
        result.append(Hop(hop[0], hop[1], hop[2]))
    return tuple(result)


def _prefix(item: Any) -> tuple[Any, ...]:
    if (
        type(item) is not list
        or len(item) != 7
        or item[0] not in rtnl.FAMILY_NAMES
        or type(item[0]) is not int
        or type(item[1]) is not int
        or type(item[2]) not in _OPT_STR
        or type(item[3]) is not int
        or type(item[4]) is not int
        or item[5] != rtnl.FAMILY_NAMES[item[0]]
        or type(item[6]) is not str
    ):
        raise _corrupt("damaged route prefix")
    return tuple(item)


def _names(item: Any) -> tuple[str, str, str]:
    if type(item) is not list or len(item) != 3 or any(type(name) is not str for name in item):
        raise _corrupt("damaged route names")
    return (item[0], item[1], item[2])


def _checked(table: str, item: Any) -> dict[str, Any]:
    """``item`` as the cache holds an object of ``table``: every field there with its type
    (lists of strings where lists), in the decoder's order; raises Unusable otherwise."""
    if not isinstance(item, dict):
        raise _corrupt(f"damaged {table} entry")
    fields = _FIELDS[table]
    optional = _OPTIONAL.get(table, {})
    obj: dict[str, Any] = {}
    for name, types in fields.items():
        if name not in item or type(item[name]) not in types:
            raise _corrupt(f"damaged {table} entry: {name}")
        obj[name] = item[name]
    for name, types in optional.items():
        if name in item:
            if type(item[name]) not in types:
                raise _corrupt(f"damaged {table} entry: {name}")
            obj[name] = item[name]
    if len(obj) != len(item):
        raise _corrupt(f"damaged {table} entry: unknown field {sorted(item.keys() - obj)[0]!r}")
    if any(type(flag) is not str for flag in obj.get("flags", ())):
        raise _corrupt(f"damaged {table} entry: flags")
    if table != "link" and obj["family"] not in _FAMILY_NUMBERS:
        raise _corrupt(f"damaged {table} entry: family")
    if table == "netconf":  # the settings first, as the decoder makes them
        obj = {**{k: v for k, v in obj.items() if k in optional}, **{k: obj[k] for k in fields}}
    return obj


def _key(table: str, obj: dict[str, Any]) -> Hashable:
    """The cache key of an object, as the decoder makes it (linkmond.decode)."""
    if table == "link":
        return obj["ifindex"]  # type: ignore[no-any-return]
    if table == "rule":
        return tuple(obj.items())
    family = _FAMILY_NUMBERS[obj["family"]]
    if table == "addr":
        return (family, obj["ifindex"], obj["address"], obj["prefixlen"])
    if table == "neigh":
        return (family, obj["ifindex"], obj["address"])
    return (family, obj["ifindex"])  # netconf
