"""The hot path: read the socket, decode, diff against the cache, stamp events, publish.

Everything here runs synchronously in the socket's readiness callback; nothing awaits, so
a slow sink can never slow the reader (publishing only puts into per-sink queues).

Dumps share the subscription socket. The kernel queues dump replies and notifications on it
in the order things happened, so processing the socket in order keeps the cache exact: a
notification that arrives mid-dump is newer than the parts already dumped and older than
the rest. The initial dump fills the cache silently; an overflow (``ENOBUFS``) re-dumps every
table and diffs it (``resync: true`` events, then one ``daemon.overflow``); a link going down
re-dumps routes and neighbours, which the kernel removes without telling anyone.
"""

from __future__ import annotations

import asyncio
import errno
import gc
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Final

import structlog

from linkmond import rtnl
from linkmond.decode import DecodeError, decode, read_errno, read_timestamp, split_messages
from linkmond.events import Event, EventFactory
from linkmond.filters import GlobFilter
from linkmond.source import READ_SIZE, NetlinkSocket, is_overflow
from linkmond.state import TABLES, Change, State

log = structlog.get_logger("linkmond.monitor")

#: Reads per readiness callback before yielding to the loop, so sinks and the watchdog run
#: during a storm. The socket is still readable, so the loop calls back at once.
READ_BUDGET: Final = 4096

#: Events that can mean the kernel removed routes or neighbours without a notification.
_RECONCILE_AFTER: Final = frozenset({"link.admin_down", "link.removed", "addr.removed"})
#: How often a dump flagged NLM_F_DUMP_INTR is tried before its result is taken as it is.
MAX_DUMP_ATTEMPTS: Final = 3
#: A dump that sends nothing for this long while the socket is read empty is stalled in the
#: kernel (see _reset_socket); a backlog of notifications ahead of it is not a stall.
DUMP_STALL_SECONDS: Final = 2.0


def tune_gc() -> None:
    """Keep the cyclic garbage collector off the hot path.

    The cache holds one dict per route (a BGP table is ~1M); CPython's default thresholds
    make the collector walk them again and again during a storm (~20% of the CPU per event
    in bench/hot_path.py). Objects alive after the initial dump are frozen out of collection,
    and young collections run less often. Called once the cache is filled.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(10_000, 10, 10)


@dataclass
class Stats:
    """Counters of the reader, shown in logs, ``daemon.stopping`` and the systemd STATUS."""

    messages: int = 0
    events: int = 0
    malformed: int = 0
    overflows: int = 0
    resyncs: int = 0

    def as_dict(self) -> dict[str, int]:
        """The counters as a JSON-ready dict."""
        return {
            "messages": self.messages,
            "events": self.events,
            "malformed": self.malformed,
            "overflows": self.overflows,
            "resyncs": self.resyncs,
        }


@dataclass
class _Dump:
    table: str
    emit: bool
    attempt: int = 1
    seq: int = 0
    interrupted: bool = False
    parts: int = 0  # messages received so far, for the stall watchdog
    drained: bool = False  # the socket was read empty since the last part arrived


class Monitor:
    """Turns the kernel's rtnetlink stream into :class:`Event` objects handed to ``publish``.

    ``groups`` are DESIGN's group names whose events are published; links are always
    watched (every other event names its interface). ``interfaces`` is the monitor-wide
    interface filter.
    """

    def __init__(
        self,
        factory: EventFactory,
        publish: Callable[[Event], None],
        *,
        groups: Iterable[str] = TABLES,
        interfaces: GlobFilter | None = None,
        receive_buffer: int = 0,
    ) -> None:
        self.factory = factory
        self.publish = publish
        self.groups = frozenset(groups)
        self.tables = tuple(t for t in TABLES if t == "link" or t in self.groups)
        self.interfaces = interfaces or GlobFilter(())
        self.receive_buffer = receive_buffer
        self.state = State()
        self.stats = Stats()
        self.sock: NetlinkSocket | None = None
        self._buf = bytearray(READ_SIZE)
        self._view = memoryview(self._buf)
        self._dumps: deque[_Dump] = deque()
        self._current: _Dump | None = None
        self._overflow_pending = False
        self._overflow_events: int | None = None  # counting while an overflow resync runs
        self._ready: asyncio.Future[None] | None = None
        self._stopping = False
        self._loop: asyncio.AbstractEventLoop | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Subscribe, then dump every watched table into the cache; return once it is filled.

        Subscribing first means nothing that happens during the dump is missed.
        """
        self._loop = asyncio.get_running_loop()
        self._ready = self._loop.create_future()
        self._open_socket()
        if self.sock is not None and self.receive_buffer > self.sock.receive_buffer:
            log.warning(
                "receive buffer capped by net.core.rmem_max",
                requested=self.receive_buffer,
                effective=self.sock.receive_buffer,
                hint="run with CAP_NET_ADMIN, or raise net.core.rmem_max",
            )
        for table in self.tables:
            self._dumps.append(_Dump(table, emit=False))
        self._next_dump()
        await self._ready

    def _open_socket(self) -> None:
        groups = [g for t in self.tables for g in rtnl.GROUPS[t]]
        self.sock = NetlinkSocket(groups, self.receive_buffer)
        assert self._loop is not None
        self._loop.add_reader(self.sock.fileno(), self._on_readable)

    def _reset_socket(self, why: str) -> None:
        """Replace the socket and re-dump everything: the way out of a dump the kernel stalled.

        A dump that met a full receive buffer can stay "running" in the kernel without ever
        sending another part (it only resumes inside a later read). A new socket, subscribed
        before the old one closes, and a full resync lose nothing.
        """
        if self._stopping:
            return
        log.warning("resetting the netlink socket", reason=why)
        old = self.sock
        self._current = None
        self._dumps.clear()
        for table in TABLES:
            self.state.abort_resync(table)
        self._open_socket()
        if old is not None:
            assert self._loop is not None
            self._loop.remove_reader(old.fileno())
            old.close()
        carried = self._overflow_events or 0  # a re-dump round cut short: count it in the next
        self._overflow_events = None
        self._on_overflow()
        if self._overflow_events is not None:
            self._overflow_events += carried

    def set_receive_buffer(self, size: int) -> None:
        """Change the socket's receive buffer (a reload); kept for sockets opened later."""
        self.receive_buffer = size
        if self.sock is not None and size:
            self.sock.set_receive_buffer(size)

    def stop(self) -> None:
        """Process what the kernel has already queued on the socket, then close it."""
        self._stopping = True
        if self.sock is not None:
            if self._loop is not None:
                self._loop.remove_reader(self.sock.fileno())
            self._on_readable()  # reads until EAGAIN (or the budget): nothing queued is lost
            self.sock.close()
            self.sock = None

    # -- reading -----------------------------------------------------------------------------

    def _on_readable(self) -> None:
        sock = self.sock
        if sock is None:
            return
        view = self._view
        for _ in range(READ_BUDGET):
            try:
                n = sock.recv_into(view)
            except BlockingIOError:
                if self._current is not None:
                    self._current.drained = True  # all read, and the dump sent nothing more
                return
            except InterruptedError:
                continue
            except OSError as exc:
                if not is_overflow(exc):
                    raise
                self._on_overflow()
                continue
            self.feed(view, n)
            if self.sock is not sock:
                return  # replaced while processing (see _reset_socket); the new one has a reader

    def feed(self, buf: Any, length: int, t_ns: int | None = None, *, replay: bool = False) -> None:
        """Process one datagram (or, in replay, a stream of messages) of ``length`` bytes.

        In replay, messages flagged NLM_F_MULTI are the recorder's initial dump: they fill the
        cache silently, as the live daemon's initial dump does.
        """
        current = self._current
        portid = self.sock.portid if self.sock is not None else -1
        if not isinstance(buf, bytes):
            buf = bytes(buf[:length])  # one copy per datagram; slicing bytes is then cheap
        try:
            for mtype, mflags, seq, pid, start, end in split_messages(buf, length):
                self.stats.messages += 1
                if replay:
                    if mtype == rtnl.NLMSG_TSTAMP:
                        if end - start < 8:
                            raise DecodeError("short NLMSG_TSTAMP record")
                        t_ns = int(read_timestamp(buf, start) * 1e9)
                        continue
                    emit = not (mflags & rtnl.NLM_F_MULTI)
                    replace = bool(mflags & rtnl.NLM_F_REPLACE)
                    self._apply(mtype, buf, start, end, emit, False, t_ns, replace)
                elif current is not None and pid == portid and seq == current.seq:
                    current.parts += 1
                    current.drained = False
                    if mflags & rtnl.NLM_F_DUMP_INTR:
                        current.interrupted = True
                    if mtype == rtnl.NLMSG_DONE:
                        # a dump that failed midway says so in NLMSG_DONE's payload
                        self._dump_done(current, read_errno(buf, start) if end - start >= 4 else 0)
                        current = self._current
                    elif mtype == rtnl.NLMSG_ERROR:
                        self._dump_done(current, read_errno(buf, start) or -1)
                        current = self._current
                    else:
                        self._apply(mtype, buf, start, end, current.emit, True, t_ns)
                else:
                    # a notification (its pid is the portid of whoever made the change)
                    replace = bool(mflags & rtnl.NLM_F_REPLACE)
                    self._apply(mtype, buf, start, end, True, False, t_ns, replace)
        except DecodeError as exc:
            self.stats.malformed += 1
            log.warning("malformed netlink datagram skipped", error=str(exc))

    def _apply(
        self,
        mtype: int,
        buf: Any,
        start: int,
        end: int,
        emit: bool,
        resync: bool,
        t_ns: int | None,
        replace: bool = False,
    ) -> None:
        try:
            decoded = decode(mtype, buf, start, end)
        except DecodeError as exc:
            self.stats.malformed += 1
            log.warning("malformed netlink message skipped", type=mtype, error=str(exc))
            return
        if decoded is None:
            return
        table, key, obj = decoded
        state = self.state
        change = state.apply(table, key, obj, emit=emit, resync=resync, replace=replace)
        if change is not None:
            self._emit(change, t_ns)
        if state.needs_route_dump:
            state.needs_route_dump = False
            self._queue_reconcile()

    def _emit(self, change: Change, t_ns: int | None = None) -> None:
        if change.type in _RECONCILE_AFTER:
            self._queue_reconcile()
        group = change.type.partition(".")[0]
        if group not in self.groups and group != "daemon":
            return
        interfaces = self.interfaces
        if not interfaces.matches_all and change.ifname and not interfaces.match(change.ifname):
            return
        if self._overflow_events is not None and change.data.get("resync"):
            self._overflow_events += 1
        self.stats.events += 1
        self.publish(self.factory.make(change.type, change.subject, change.data, t_ns))

    # -- dumps -------------------------------------------------------------------------------

    def _queue_reconcile(self) -> None:
        if self.sock is None:
            return  # replay: there is no kernel to ask
        for table in ("route", "neigh"):
            if table in self.tables and not any(d.table == table for d in self._dumps):
                self._dumps.append(_Dump(table, emit=True))
        if self._current is None:
            self._next_dump()

    def _on_overflow(self) -> None:
        self.stats.overflows += 1
        if not self._overflow_pending and self._overflow_events is None:  # once per re-dump
            log.warning(
                "netlink receive buffer overflowed; re-dumping", overflows=self.stats.overflows
            )
        if self._ready is not None and not self._ready.done():
            # still filling the cache: what was lost predates readiness; fill it again, silently
            self._dumps = deque(_Dump(t, emit=False) for t in self.tables)
        else:
            self._overflow_pending = True
        if self._current is None:
            self._next_dump()

    def _next_dump(self) -> None:
        if self._overflow_pending and self._overflow_events is None:
            # an overflow re-dumps every table; that covers whatever else was queued
            self._overflow_pending = False
            self._overflow_events = 0
            self.stats.resyncs += 1
            self._dumps = deque(_Dump(t, emit=True) for t in self.tables)
        if not self._dumps or self.sock is None or self._stopping:
            self._current = None
            return
        dump = self._dumps.popleft()
        self.state.begin_resync(dump.table)
        dump.seq = self.sock.request_dump(dump.table)
        self._current = dump
        if self._loop is not None:
            self._loop.call_later(DUMP_STALL_SECONDS, self._check_dump, dump, 0)

    def _check_dump(self, dump: _Dump, parts_before: int) -> None:
        if self._current is not dump or self.sock is None:
            return
        if dump.parts == parts_before and dump.drained:
            # no part for a while although everything queued was read: a healthy dump always
            # has its next part queued by then (the kernel adds it as we read)
            self._reset_socket(f"{dump.table} dump stalled")
        elif self._loop is not None:
            self._loop.call_later(DUMP_STALL_SECONDS, self._check_dump, dump, dump.parts)

    def _dump_done(self, dump: _Dump, error: int) -> None:
        if error in (-errno.ENOBUFS, -errno.EBUSY):
            # notifications filled the receive buffer as the dump began: the kernel may keep
            # it half-started on this socket, so start over on a fresh one
            self._reset_socket(f"{dump.table} dump failed: {errno.errorcode[-error]}")
            return
        if error:
            log.error("dump refused by the kernel", table=dump.table, errno=-error)
            self.state.abort_resync(dump.table)
        elif dump.interrupted and dump.attempt < MAX_DUMP_ATTEMPTS:
            # NLM_F_DUMP_INTR: the table changed during the dump, which may have skipped entries
            self._dumps.appendleft(_Dump(dump.table, dump.emit, attempt=dump.attempt + 1))
        elif dump.interrupted:
            # still torn after retries (a storm): keep what it added, remove nothing on its word
            log.warning("dump kept being interrupted; not sweeping", table=dump.table)
            self.state.abort_resync(dump.table)
        else:
            for change in self.state.end_resync(dump.table, emit=dump.emit):
                self._emit(change)
        self._current = None
        self._next_dump()
        if self._current is None:
            self._all_dumps_done()

    def _all_dumps_done(self) -> None:
        if self._ready is not None and not self._ready.done():
            self._ready.set_result(None)
        if self._overflow_events is not None:
            produced = self._overflow_events
            self._overflow_events = None
            self._emit(
                Change(
                    "daemon.overflow",
                    "linkmond",
                    {"events": produced, "overflows": self.stats.overflows},
                    None,
                )
            )
            if self._overflow_pending:
                self._next_dump()  # overflowed again during the re-dump: go round once more
