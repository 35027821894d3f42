"""One watched network namespace: its sockets, its cache and its dumps — the reader's hot path.

Everything here runs synchronously in the sockets' readiness callbacks; nothing awaits.

Two sockets, and why that keeps the cache exact and live events prompt:

- Notifications arrive on a subscribed socket; dumps are asked for and answered on a second
  socket joined to no group. On one shared socket the kernel would append a further dump
  part after *every* read, of a notification too, so a dump read among many notifications
  runs ahead of them by megabytes, and a carrier loss waited 400 ms behind a full-table
  resync (measured). On its own socket a dump advances only as its own answer is read: in
  slices of :data:`READ_SLICE` seconds, and only while the lossless sinks hold fewer than
  :data:`DUMP_PACING` events, so an event published meanwhile never has many ahead of it.
- Without the shared order, what a dump says of an object and what a notification says of
  it can arrive either way round. The rule: a notification processed after the dump began
  is at least as new as the dump's entry, and wins (:meth:`State.apply` with ``dump``; for
  routes, marks say which write came from where). That is sound because the notification
  stream is complete — any later change brings a later notification — except where the
  kernel drops notifications (``ENOBUFS``). So the full resync after an overflow begins only
  once the notification socket has been read empty: what was queued before the loss is then
  behind us, and everything read during the resync is newer than the loss.
- Silent changes (routes flushed when a link goes down) are what dumps are for: the change
  that makes them (the admin-down) is itself notified, and the re-read it asks for begins
  after it was processed.
- A full lossless sink pauses both readers (:attr:`Fanout.blocked`): notifications wait in
  the receive buffer, a running dump waits in the kernel, and if the buffer overflows, the
  resync after ``ENOBUFS`` turns what was missed into events (``resync: true``).
- A dump's sweep, or the routes of a removed link, can be a million removals. They are made
  lazily (:attr:`State.pending`), in slices paced like a dump, while notifications go on
  being read. Interleaving them is sound: a route is removed only if it still carries a mark
  older than the dump's when its turn comes, so a newer notification about it always wins.
- A dump request is sent after the current read slice (``call_soon``), never inside it: the
  kernel builds a dump's first part inside ``send()``, walking the whole table even for a
  device-filtered dump, and notifications already queued should not wait for that.

Dumps are chosen by :class:`~linkmond.scheduler.DumpScheduler`; what needs re-reading after
a change comes from :class:`~linkmond.state.State` through its one ``reread`` channel, and
costs what the change touched: a per-device dump (``NETLINK_GET_STRICT_CHK``) of routes and
neighbours, never the whole table (except where the kernel refuses strict checking).
"""

from __future__ import annotations

import asyncio
import bisect
import gc
import socket
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

import structlog

from linkmond import rtnl
from linkmond.decode import DecodeError, decode, read_errno, split_messages
from linkmond.namespaces import Namespace
from linkmond.publisher import Publisher
from linkmond.scheduler import Dump, DumpScheduler
from linkmond.source import READ_SIZE, NetlinkSocket, is_overflow, open_raw
from linkmond.state import TABLES, Change, State

log = structlog.get_logger("linkmond.watcher")

#: Seconds of reading per readiness callback before yielding to the loop, so sink writers,
#: timers and the watchdog run during a storm or a large dump.
READ_SLICE: Final = 0.001
#: A dump's answer (and pending removals) are read only while every lossless sink holds fewer
#: queued events than this: an event published meanwhile has at most this many ahead of it.
DUMP_PACING: Final = 1024
#: Datagrams read at most when stopping (a storm must not keep shutdown from ending).
STOP_READ_BUDGET: Final = 65536
#: How often the running dump is checked for a stall (see DumpScheduler.check_stall).
DUMP_STALL_SECONDS: Final = 2.0


class Backpressure(Protocol):
    """What the reader needs of the fan-out (see :class:`linkmond.fanout.Fanout`)."""

    @property
    def blocked(self) -> bool:
        """True while a lossless sink's buffer is full."""

    def backlog(self) -> int:
        """Events queued in the deepest lossless sink."""

    def on_unblocked(self, callback: Any) -> None:
        """Call ``callback`` once no lossless sink is full any more."""

    def on_backlog_below(self, limit: int, callback: Any) -> None:
        """Call ``callback`` once every lossless sink holds fewer than ``limit`` events."""


class _NoBackpressure:
    blocked = False

    def backlog(self) -> int:
        return 0

    def on_unblocked(self, callback: Any) -> None:
        callback()

    def on_backlog_below(self, limit: int, callback: Any) -> None:
        callback()


class _Hold:
    """One of the reader's activities that a full sink can hold up: reading notifications,
    reading a dump's answer, making pending removals.

    :meth:`pause` stops it (``stop``) and gives ``arrange`` the callback that starts it again
    (``start``) once the fan-out has room.
    """

    __slots__ = ("paused", "start", "stop")

    def __init__(self, stop: Callable[[], None], start: Callable[[], None]) -> None:
        self.paused = False
        self.stop = stop
        self.start = start

    def pause(self, arrange: Callable[[Callable[[], None]], None]) -> None:
        """Stop until ``arrange``'s callback is called."""
        if self.paused:
            return
        self.paused = True
        self.stop()
        arrange(self._resume)

    def _resume(self) -> None:
        if self.paused:
            self.paused = False
            self.start()


_READ_BUFFER: memoryview | None = None


def _read_buffer() -> memoryview:
    """The buffer every watcher reads datagrams into: one for all of them (1 MiB, resident
    once written), as they all read on the event loop's thread, one datagram at a time, and
    :meth:`NetnsWatcher.feed` copies what it read before anything else can read."""
    global _READ_BUFFER  # noqa: PLW0603 - one per process, made on first use
    if _READ_BUFFER is None:
        _READ_BUFFER = memoryview(bytearray(READ_SIZE))
    return _READ_BUFFER


def tune_gc() -> None:
    """Keep the cyclic garbage collector off the hot path.

    The cache holds one entry per route (a BGP table is ~1M); CPython's default thresholds
    make the collector walk them again and again during a storm. Objects alive after the
    initial dump are frozen out of collection, and young collections run less often. Called
    once the cache is filled.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(10_000, 10, 10)


@dataclass
class WatcherStats:
    """Counters of one watcher, shown in ``daemon.stopping`` and the systemd STATUS."""

    messages: int = 0
    malformed: int = 0
    overflows: int = 0
    resyncs: int = 0

    def as_dict(self) -> dict[str, int]:
        """The counters as a JSON-ready dict."""
        return {
            "messages": self.messages,
            "malformed": self.malformed,
            "overflows": self.overflows,
            "resyncs": self.resyncs,
        }


#: upper bounds (s) of the dump-duration histogram (``linkmond_dump_duration_seconds``): from
#: a device's few routes (~1 ms) to a full table of a million (~20 s)
DUMP_BUCKETS: Final = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0
)  # fmt: skip


@dataclass
class DumpTimes:
    """How long this watcher's dumps took, from request to end (complete, failed or given
    up), as a histogram: ``counts[i]`` dumps took at most ``DUMP_BUCKETS[i]`` seconds and
    more than the bound before it; the last entry counts those above every bound."""

    counts: list[int] = field(default_factory=lambda: [0] * (len(DUMP_BUCKETS) + 1))
    total: float = 0.0

    def observe(self, seconds: float) -> None:
        """Count one dump that took ``seconds``."""
        self.counts[bisect.bisect_left(DUMP_BUCKETS, seconds)] += 1
        self.total += seconds


class NetnsWatcher:
    """Turns one namespace's rtnetlink stream into changes handed to the publisher.

    ``groups`` are ``[monitor] groups`` names; links are always watched (every other event names
    its interface), and only watched groups are dumped.
    """

    def __init__(
        self,
        publisher: Publisher,
        *,
        groups: Iterable[str] = TABLES,
        receive_buffer: int = 0,
        backpressure: Backpressure | None = None,
        passed_socket: socket.socket | None = None,
        namespace: Namespace | None = None,
    ) -> None:
        """``passed_socket``: the rtnetlink socket systemd created for us (socket activation,
        see :func:`linkmond.source.take_passed_socket`), used for notifications instead of
        opening one; it is never replaced, so its forced receive buffer lasts.
        ``namespace``: the namespace to watch, whose sockets are made inside it (None: this
        process's own)."""
        self.publisher = publisher
        self.namespace = namespace
        self._log = log.bind(netns=namespace.name) if namespace is not None else log
        #: sockets made inside the namespace beforehand (:meth:`make_sockets`)
        self._premade: list[socket.socket] = []
        self._passed_socket = passed_socket
        groups = frozenset(groups)
        self.tables = tuple(t for t in TABLES if t == "link" or t in groups)
        self.receive_buffer = receive_buffer
        self.backpressure: Backpressure = backpressure or _NoBackpressure()
        self.stats = WatcherStats()
        #: durations of the dumps that ended (the metrics' histogram)
        self.dump_times = DumpTimes()
        self._dump_began = 0.0
        self.state = State(reread=self._reread)
        #: the subscribed socket: notifications only
        self.sock: NetlinkSocket | None = None
        #: the socket dumps are requested and answered on (joined to no group)
        self.dump_sock: NetlinkSocket | None = None
        self.scheduler: DumpScheduler | None = None
        self._view = _read_buffer()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ready: asyncio.Future[None] | None = None
        self._reading = _Hold(self._stop_reading, self._start_reading)
        self._dumping = _Hold(self._stop_dump_reading, self._start_dump_reading)
        self._working = _Hold(lambda: None, self._schedule_work)
        self._work_scheduled = False
        self._stopping = False
        self._resync_mark = 0  # publisher.resync_events when the overflow round began
        self._overflow_warned = False

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self, restored: Iterable[str] = ()) -> None:
        """Subscribe, then dump every watched table into the cache; return once it is filled.

        Subscribing first means nothing that happens during the dump is missed. ``restored``:
        the tables the cache already holds from a saved state (linkmond.snapshot); then the
        dumps are a reconciliation round that reports what differs (``resync``), run after
        this returns, once subscribed.
        """
        self._loop = asyncio.get_running_loop()
        self._ready = self._loop.create_future()
        sock = self._open_socket()
        dump_sock = self._open_dump_socket()
        filtered = dump_sock.enable_strict_check()
        if not filtered:
            self._log.warning("the kernel refuses NETLINK_GET_STRICT_CHK; re-reading whole tables")
        if sock.passed:
            self._log.info(
                "using the netlink socket systemd passed", receive_buffer=sock.receive_buffer
            )
        if self.receive_buffer > sock.receive_buffer:
            self._log.warning(
                "receive buffer capped by net.core.rmem_max",
                requested=self.receive_buffer,
                effective=sock.receive_buffer,
                hint="start by linkmond.socket (ReceiveBuffer=), run with CAP_NET_ADMIN, "
                "or raise net.core.rmem_max",
            )
        self.scheduler = DumpScheduler(
            dump_sock,
            self.tables,
            begin=self._begin_dump,
            finish=self._finish_dump,
            idle=self._dumps_idle,
            reset=self._reset_socket,
            later=self._loop.call_later,
            kick=self._kick,
            filtered=filtered,
        )
        self._loop.call_later(DUMP_STALL_SECONDS, self._check_stall)
        restored = frozenset(restored)
        if restored:
            self.scheduler.reconcile(restored)
            return
        self.scheduler.initial()
        await self._ready

    def _kick(self, start: Any) -> None:
        # a dump request is sent after the current read slice, not in the middle of it: the
        # kernel builds the first part inside send(), walking the whole table even for a
        # device-filtered dump, and notifications already queued should not wait for that
        assert self._loop is not None
        self._loop.call_soon(start)

    def _open_socket(self) -> NetlinkSocket:
        groups = [g for t in self.tables for g in rtnl.GROUPS[t]]
        passed, self._passed_socket = self._passed_socket, None
        made = None if passed is not None else self._make_raw()
        sock = NetlinkSocket(groups, self.receive_buffer, passed=passed, made=made)
        self.sock = sock
        assert self._loop is not None
        if not self._reading.paused:
            self._loop.add_reader(sock.fileno(), self._on_readable)
        return sock

    async def make_sockets(self) -> None:
        """Make the sockets :meth:`start` will use inside the watched namespace, off the
        event loop (entering a namespace waits for the kernel); nothing for our own."""
        namespace = self.namespace
        if namespace is None or namespace.is_own:
            return

        def make() -> list[socket.socket]:
            return [namespace.make(open_raw) for _ in range(2)]

        self._premade = await asyncio.to_thread(make)

    def _make_raw(self) -> socket.socket | None:
        """A raw socket made inside the watched namespace; None: make one here."""
        namespace = self.namespace
        if namespace is None or namespace.is_own:
            return None
        if self._premade:
            return self._premade.pop()
        return namespace.make(open_raw)  # a dump socket replaced after a stall: rare, quick

    def _open_dump_socket(self) -> NetlinkSocket:
        sock = NetlinkSocket(made=self._make_raw())
        self.dump_sock = sock
        assert self._loop is not None
        if not self._dumping.paused:
            self._loop.add_reader(sock.fileno(), self._on_dump_readable)
        return sock

    def _reset_socket(self, why: str) -> None:
        """Replace the dump socket (the scheduler then re-dumps everything on the new one).

        A dump the kernel left stalled, or an answer that cannot be trusted, ends with the
        socket it was on; notifications go on arriving on theirs meanwhile.
        """
        if self._stopping:
            return
        scheduler = self.scheduler
        if scheduler is not None and not (
            scheduler.in_overflow_round or scheduler.overflow_pending
        ):
            self._resync_mark = self.publisher.resync_events
        old = self.dump_sock
        if old is not None:
            assert self._loop is not None
            self._loop.remove_reader(old.fileno())
            old.close()
        new = self._open_dump_socket()
        if scheduler is not None:
            if not new.enable_strict_check():
                scheduler.filtered = False
            scheduler.sock = new

    def set_receive_buffer(self, size: int) -> None:
        """Change the socket's receive buffer (a reload); kept for sockets opened later."""
        self.receive_buffer = size
        if self.sock is not None and size:
            self.sock.set_receive_buffer(size)

    def stop(self) -> None:
        """Process what the kernel has already queued on the socket, then close it."""
        self._stopping = True
        if self._ready is not None and not self._ready.done():
            self._ready.cancel()  # a start still filling the cache ends (CancelledError)
        if self.scheduler is not None:
            self.scheduler.stop()
        if self.sock is not None:
            if self._loop is not None:
                self._loop.remove_reader(self.sock.fileno())
            self._reading.paused = False
            self._read(until_empty=True)  # nothing the kernel queued is lost
            if self.sock.passed:
                self.sock.quiesce()  # PID 1 keeps it open: leave it silent
            self.sock.close()
            self.sock = None
        if self.dump_sock is not None:
            if self._loop is not None:
                self._loop.remove_reader(self.dump_sock.fileno())
            self.dump_sock.close()
            self.dump_sock = None
        for unused in self._premade:
            unused.close()
        self._premade.clear()
        self.finish_pending()

    def counters(self) -> dict[str, int]:
        """Reader counters plus dumps started, by kind."""
        counts = self.stats.as_dict()
        if self.scheduler is not None:
            counts["dumps_full"] = self.scheduler.counters.full
            counts["dumps_targeted"] = self.scheduler.counters.targeted
        return counts

    # -- reading -----------------------------------------------------------------------------

    def _on_readable(self) -> None:
        self._read(until_empty=False)

    def _read(self, *, until_empty: bool) -> None:
        """Read notifications until the socket is empty, the slice is over or a lossless
        sink is full."""
        sock = self.sock
        if sock is None or self._reading.paused:
            return
        view = self._view
        clock = time.monotonic
        deadline = clock() + READ_SLICE
        budget = STOP_READ_BUDGET
        while True:
            try:
                n = sock.recv_into(view)
            except BlockingIOError:
                if self.scheduler is not None:
                    self.scheduler.notifications_drained()
                return
            except InterruptedError:
                continue
            except OSError as exc:
                if not is_overflow(exc):
                    raise
                self._on_overflow()
                continue
            self.feed(view, n)
            if until_empty:
                budget -= 1
                if budget:
                    continue
                return
            if self._held_up(self._reading, pace=False):
                return
            if clock() > deadline:
                return  # still readable: the loop calls back after the others had a turn

    def _held_up(self, hold: _Hold, *, pace: bool) -> bool:
        """Pause ``hold`` while a lossless sink is full or, with ``pace``, while one holds
        :data:`DUMP_PACING` events or more; True if it was paused."""
        backpressure = self.backpressure
        if backpressure.blocked:
            hold.pause(backpressure.on_unblocked)
            return True
        if pace and backpressure.backlog() >= DUMP_PACING:
            hold.pause(lambda resume: backpressure.on_backlog_below(DUMP_PACING, resume))
            return True
        return False

    def _stop_reading(self) -> None:
        if self.sock is not None and self._loop is not None:
            self._loop.remove_reader(self.sock.fileno())

    def _start_reading(self) -> None:
        if self.sock is not None and self._loop is not None and not self._stopping:
            self._loop.add_reader(self.sock.fileno(), self._on_readable)

    def _on_dump_readable(self) -> None:
        """Read the running dump's answer: in slices, paced by the sinks' backlog."""
        sock = self.dump_sock
        scheduler = self.scheduler
        if sock is None or scheduler is None or self._dumping.paused:
            return
        view = self._view
        clock = time.monotonic
        deadline = clock() + READ_SLICE
        while True:
            try:
                n = sock.recv_dump_into(view)
            except BlockingIOError:
                scheduler.drained()
                return
            except InterruptedError:
                continue
            except OSError as exc:
                # nothing but answers arrives here, so this is no lost notification: the
                # answer is incomplete; start over on a fresh socket
                if scheduler.current is not None:
                    scheduler.done(-exc.errno if exc.errno else -1)
                return
            self.feed_dump(view, n)
            if self.dump_sock is not sock:
                return  # replaced while processing (a reset); the new one has a reader
            if self._held_up(self._dumping, pace=True) or clock() > deadline:
                return

    def _stop_dump_reading(self) -> None:
        if self.dump_sock is not None and self._loop is not None:
            self._loop.remove_reader(self.dump_sock.fileno())

    def _start_dump_reading(self) -> None:
        if self.dump_sock is not None and self._loop is not None and not self._stopping:
            self._loop.add_reader(self.dump_sock.fileno(), self._on_dump_readable)

    def feed(self, buf: Any, length: int) -> None:
        """Process one datagram of notifications, ``length`` bytes."""
        if not isinstance(buf, bytes):
            buf = bytes(buf[:length])  # one copy per datagram; slicing bytes is then cheap
        try:
            for mtype, mflags, _seq, _pid, start, end in split_messages(buf, length):
                self.stats.messages += 1
                self._apply(mtype, buf, start, end, replace=bool(mflags & rtnl.NLM_F_REPLACE))
        except DecodeError as exc:
            self.stats.malformed += 1
            self._log.warning("malformed netlink datagram skipped", error=str(exc))

    def feed_dump(self, buf: Any, length: int) -> None:
        """Process one datagram of the dump socket: parts of the running dump's answer."""
        if not isinstance(buf, bytes):
            buf = bytes(buf[:length])
        scheduler = self.scheduler
        portid = self.dump_sock.portid if self.dump_sock is not None else -1
        try:
            for mtype, mflags, seq, pid, start, end in split_messages(buf, length):
                self.stats.messages += 1
                if scheduler is None or pid != portid or not scheduler.is_answer(seq):
                    continue  # what is left of a dump given up on
                current = scheduler.current
                assert current is not None
                scheduler.part(bool(mflags & rtnl.NLM_F_DUMP_INTR))
                if mtype == rtnl.NLMSG_DONE:
                    # a dump that failed midway says so in NLMSG_DONE's payload
                    scheduler.done(self._errno(buf, start, end, 0))
                elif mtype == rtnl.NLMSG_ERROR:
                    scheduler.done(self._errno(buf, start, end, -1) or -1)
                else:
                    self._apply(mtype, buf, start, end, emit=current.emit, dump=True)
        except DecodeError as exc:
            self.stats.malformed += 1
            self._log.warning("malformed netlink datagram skipped", error=str(exc))

    def _errno(self, buf: bytes, start: int, end: int, default: int) -> int:
        if end - start < 4 and not default:
            return 0  # an NLMSG_DONE may come without a payload: a dump that ended well
        try:
            return read_errno(buf, start, end)
        except DecodeError:
            # an NLMSG_ERROR without its error code: the dump ended, as a failure
            self.stats.malformed += 1
            return default

    def _apply(
        self,
        mtype: int,
        buf: bytes,
        start: int,
        end: int,
        *,
        emit: bool = True,
        dump: bool = False,
        replace: bool = False,
    ) -> None:
        try:
            decoded = decode(mtype, buf, start, end)
        except DecodeError as exc:
            self.stats.malformed += 1
            self._log.warning("malformed netlink message skipped", type=mtype, error=str(exc))
            return
        if decoded is None:
            return
        table, key, obj = decoded
        state = self.state
        change = state.apply(table, key, obj, emit=emit, resync=dump, replace=replace, dump=dump)
        if change is not None:
            self.publisher.publish(change)
        if state.derived:
            for derived in state.take_derived():
                self.publisher.publish(derived)
        if state.pending:
            self._schedule_work()

    # -- pending removals --------------------------------------------------------------------

    def _schedule_work(self) -> None:
        if not self._work_scheduled and not self._working.paused and self._loop is not None:
            self._work_scheduled = True
            self._loop.call_soon(self._work)

    def _work(self) -> None:
        """Make and publish pending removals (a sweep, a removed link's routes) in slices.

        Like the reader, it stops for a full lossless sink, and it lets the sinks' backlog
        fall below :data:`DUMP_PACING` between slices, so that a live event read meanwhile
        (the socket is read all along) has few events ahead of it.
        """
        self._work_scheduled = False
        if self._working.paused:
            return
        state = self.state
        publish = self.publisher.publish
        clock = time.monotonic
        deadline = clock() + READ_SLICE
        while state.pending:
            for change in state.pending[0]:
                if change is not None:  # None: a pause for breath in a long walk
                    publish(change)
                if self._held_up(self._working, pace=True):
                    return
                if clock() > deadline:
                    self._schedule_work()
                    return
            state.pending.popleft()

    def finish_pending(self) -> None:
        """Make every pending removal now, whatever the sinks' state (shutdown)."""
        for change in self.state.drain():
            self.publisher.publish(change)

    # -- dumps -------------------------------------------------------------------------------

    def _reread(self, table: str, family: int, oif: int | None, settle: bool = False) -> None:
        if self.scheduler is not None and not self._stopping:
            self.scheduler.reread(table, family, oif, settle=settle)

    def _begin_dump(self, dump: Dump) -> None:
        self._dump_began = time.monotonic()
        self.state.begin_resync(dump.scope)

    def _finish_dump(self, dump: Dump, sweep: bool) -> int:
        self.dump_times.observe(time.monotonic() - self._dump_began)
        if not sweep:
            self._log.debug("dump ended without a sweep", scope=str(dump.scope), parts=dump.parts)
            self.state.abort_resync()
            return 0
        removed, queued = self.state.end_resync(emit=dump.emit)
        self._log.debug(
            "dump ended",
            scope=str(dump.scope),
            parts=dump.parts,
            removed=len(removed) + queued,
            settle_pass=dump.settle_pass,
        )
        for change in removed:
            self.publisher.publish(change)
        for derived in self.state.take_derived():
            self.publisher.publish(derived)
        if self.state.pending:
            self._schedule_work()
        return len(removed) + queued

    def _on_overflow(self) -> None:
        self.stats.overflows += 1
        scheduler = self.scheduler
        if scheduler is None:
            return
        if not self._overflow_warned:
            self._log.warning(
                "netlink receive buffer overflowed; re-dumping", overflows=self.stats.overflows
            )
            self._overflow_warned = True
        if scheduler.ready and not scheduler.overflow_pending and not scheduler.in_overflow_round:
            self._resync_mark = self.publisher.resync_events
        scheduler.overflow()

    def _dumps_idle(self, overflow_round: bool) -> None:
        if self._ready is not None and not self._ready.done():
            self._ready.set_result(None)
        scheduler = self.scheduler
        if overflow_round and scheduler is not None and scheduler.round_kind == "reconcile":
            produced = self.publisher.resync_events - self._resync_mark
            self._resync_mark = self.publisher.resync_events
            self._log.info("reconciled the saved state with the kernel", events=produced)
        elif overflow_round:
            self.stats.resyncs += 1
            produced = self.publisher.resync_events - self._resync_mark
            self._resync_mark = self.publisher.resync_events
            self._overflow_warned = False
            self.publisher.publish(
                Change(
                    "daemon.overflow",
                    "linkmond",
                    {"events": produced, "overflows": self.stats.overflows},
                    None,
                )
            )

    def _check_stall(self) -> None:
        if self._stopping or self._loop is None:
            return
        if self.scheduler is not None:
            self.scheduler.check_stall(reading=not self._dumping.paused)
        self._loop.call_later(DUMP_STALL_SECONDS, self._check_stall)
