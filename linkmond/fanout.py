"""Fan-out: per-sink filters, bounded buffers, one worker task per sink, retries and drain.

``publish`` is called on the reader's hot path and never awaits: it filters and appends to
each sink's queue. What a full queue does is the sink's ``buffer.when_full``:
``drop_newest`` refuses the event for that sink only and counts it; ``block`` always takes
it (lossless) and raises :attr:`Fanout.blocked`, which tells the reader to stop reading the
socket until :meth:`Fanout.on_unblocked` calls back, once every such queue has drained to
half. Each worker delivers batches in order and retries a failing sink with backoff; one
sink failing never touches another sink's events, though a failing ``block`` sink keeps the
reader paused (the kernel's buffer then overflows and the re-dump catches up later).

Whatever a sink's ``emit`` raises (:class:`SinkError`, a bug's exception, even a
``CancelledError`` nobody asked for) is a failed delivery: the batch is retried after an
exponential backoff capped at :data:`RETRY_MAX`, and the failure is logged at a bounded rate
(the first of a streak, then a reminder every :data:`FAILURE_LOG_EVERY` seconds while it
lasts, with counts). Only a cancellation of the worker itself (drain, shutdown) ends it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Final

import structlog

from linkmond.backoff import Backoff
from linkmond.config import SinkBase
from linkmond.events import Event, with_data
from linkmond.filters import GlobFilter
from linkmond.sinks.base import Sink, SinkError

log = structlog.get_logger("linkmond.fanout")

#: events handed to a sink at once: large batches let a sink write one block (file, console)
BATCH_MAX: Final = 2048
#: a failed delivery is retried after this many seconds, doubling up to RETRY_MAX
RETRY_INITIAL: Final = 0.2
RETRY_MAX: Final = 30.0
#: at most one log line about one sink's failures per this many seconds (counts in the next)
FAILURE_LOG_EVERY: Final = 60.0


class EventQueue:
    """One sink's FIFO: ``put`` never awaits, the worker takes batches. Lighter than
    asyncio.Queue, whose per-put bookkeeping shows in a storm. The bound is the worker's
    business (it drops or blocks); the queue only holds."""

    def __init__(self) -> None:
        self._items: deque[Event] = deque()
        self._waiter: asyncio.Future[None] | None = None

    def __len__(self) -> int:
        return len(self._items)

    def put(self, event: Event) -> None:
        """Append ``event`` and wake the worker."""
        self._items.append(event)
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)

    async def get_batch(self, limit: int) -> list[Event]:
        """Wait for at least one event; return up to ``limit`` of them, oldest first."""
        items = self._items
        while not items:
            self._waiter = asyncio.get_running_loop().create_future()
            await self._waiter
        if len(items) <= limit:
            batch = list(items)
            items.clear()
            return batch
        return [items.popleft() for _ in range(limit)]


#: A loss held back by hold-down → the recovery that cancels it.
_RECOVERY: Final = {"link.carrier_lost": "link.carrier_up", "link.admin_down": "link.admin_up"}


#: a link across namespaces: (netns, ifindex); every namespace numbers its links from 1
LinkKey = tuple[str, int]


def link_key(event: Event) -> LinkKey:
    """Which link a ``link.*`` event is about, in which namespace."""
    return event.netns, event.data["ifindex"]


class HoldDown:
    """Flap damping for one sink: a link loss is delivered only if still lost after ``delay``.

    ``link.carrier_lost`` / ``link.admin_down`` are held per link (by namespace and ifindex:
    :func:`link_key`); the matching recovery within ``delay`` swallows both and counts a
    suppressed flap (and, for an admin flap of a link that had carrier, the ``carrier_up``
    that follows ``admin_up``). It sees every link
    event before the sink's type filter, so a sink that does not want recoveries still has its
    flaps damped. The count rides on the next event delivered for that link as
    ``data.flaps_suppressed``. A held loss keeps its id, seq and time, so it arrives after
    events that happened later. What it keeps about a link is forgotten with the link
    (``link.removed``), so it holds state only for links that exist.
    """

    def __init__(
        self, delay: float, deliver: Callable[[Event], None], wants: Callable[[str], bool]
    ) -> None:
        self.delay = delay
        self.deliver = deliver
        self.wants = wants
        self.held: dict[LinkKey, tuple[Event, asyncio.TimerHandle]] = {}
        self.flaps: dict[LinkKey, int] = {}
        self._quiet_until: dict[LinkKey, float] = {}  # swallow carrier_up after an admin flap

    def offer(self, event: Event) -> None:
        """Hold, swallow or pass ``event`` on to ``deliver``."""
        if not event.type.startswith("link."):
            if self.wants(event.type):
                self.deliver(event)
            return
        link = link_key(event)
        now = asyncio.get_running_loop().time()
        if event.type == "link.carrier_up" and self._quiet_until.pop(link, 0.0) >= now:
            return
        held = self.held.get(link)
        if held is not None and _RECOVERY[held[0].type] == event.type:
            held[1].cancel()
            del self.held[link]
            self.flaps[link] = self.flaps.get(link, 0) + 1
            if held[0].type == "link.admin_down" and "carrier" in held[0].data.get("changes", {}):
                self._quiet_until[link] = now + self.delay
            return
        if held is not None:  # another kind of change: the held loss has happened for real
            self.release(link)
        if event.type in _RECOVERY:
            handle = asyncio.get_running_loop().call_later(self.delay, self.release, link)
            self.held[link] = (event, handle)
            return
        self._deliver(event, link)
        if event.type == "link.removed":
            self.forget(link)

    def forget(self, link: LinkKey) -> None:
        """``link`` was removed: deliver a loss still held for it and keep nothing more about
        it (its flap count would otherwise stay forever, or pass to the next link the kernel
        gives its ifindex)."""
        self.release(link)
        self.flaps.pop(link, None)
        self._quiet_until.pop(link, None)

    def forget_netns(self, netns: str) -> None:
        """Namespace ``netns`` is no longer watched: :meth:`forget` each of its links."""
        for link in {*self.held, *self.flaps, *self._quiet_until}:
            if link[0] == netns:
                self.forget(link)

    def release(self, link: LinkKey) -> None:
        """Deliver the loss held for ``link`` now (its hold-down expired, or shutdown)."""
        held = self.held.pop(link, None)
        if held is not None:
            held[1].cancel()
            self._deliver(held[0], link)

    def release_all(self) -> None:
        """Deliver every held loss (shutdown: better late than never)."""
        for link in list(self.held):
            self.release(link)

    def _deliver(self, event: Event, link: LinkKey) -> None:
        if not self.wants(event.type):
            return
        flaps = self.flaps.pop(link, 0)
        self.deliver(with_data(event, flaps_suppressed=flaps) if flaps else event)


def _delivered(error: BaseException, batch: int) -> int:
    """How many events of a failed batch got through: what a :class:`SinkError` says (kept
    within the batch), none for anything else."""
    if isinstance(error, SinkError) and isinstance(error.delivered, int):
        return min(max(error.delivered, 0), batch)
    return 0


def _describe_error(error: BaseException) -> str:
    """A sink's own message for a :class:`SinkError`; type and message for anything else."""
    try:
        text = str(error)
    except Exception:
        text = "(unprintable)"
    if isinstance(error, SinkError):
        return text
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


@dataclass
class SinkCounters:
    """What happened to the events offered to one sink."""

    delivered: int = 0
    dropped: int = 0
    failures: int = 0


class SinkWorker:
    """One sink with its filters, bounded buffer and delivery task.

    With ``buffer.when_full = "block"`` the queue never refuses an event: reaching
    ``max_events`` marks the worker *over* (its :class:`Fanout` reports ``blocked``), and it
    counts as drained again only below ``low_water`` (half of it), so that the reader resumes
    with room for a good run of datagrams instead of stopping again at once.
    """

    def __init__(
        self, name: str, sink: Sink, options: SinkBase, *, batch_max: int = BATCH_MAX
    ) -> None:
        self.name = name
        self.sink = sink
        self.options = options
        #: at most this many events per ``emit``
        self.batch_max = batch_max
        self.types = GlobFilter(options.events)
        self.interfaces = GlobFilter(options.interfaces)
        self.max_events = options.buffer.max_events
        self.blocking = options.buffer.when_full == "block"
        #: a blocking queue lets the reader go on again once it holds fewer events than this
        self.low_water = max(1, self.max_events // 2)
        self.queue = EventQueue()
        self.hold_down = (
            HoldDown(options.hold_down, self._enqueue, self._wants) if options.hold_down else None
        )
        #: the sink keeps the current links (a fleet view): it wants every link event built
        self.observes_links = sink.link_observer() is not None
        self.counters = SinkCounters()
        #: the fan-out this worker reports ``over``/``high`` to (set by Fanout.workers); a
        #: retired worker has none, so draining it in the background never pauses the reader
        self.fanout: Fanout | None = None
        self.over = False  # blocking, and the queue holds >= max_events
        self.high = False  # blocking, went over and has not drained below low_water yet
        self._stopped = False
        self._task: asyncio.Task[None] | None = None
        self._in_flight = 0  # events of the batch being delivered, not yet through
        self._idle = asyncio.Event()  # set while the worker waits with nothing to deliver
        self._streak_start: float | None = None  # when the current run of failures began
        self._streak_failures = 0
        self._streak_logged = False  # a line about this streak was written
        self._last_logged: float | None = None  # when a failure of this sink was last logged
        self._unlogged_streaks = 0  # streaks not logged since then (a sink failing again and again)

    def offer(self, event: Event) -> None:
        """Queue ``event`` if the filters let it through (a full queue drops or blocks)."""
        if not self.interfaces.matches_all:
            ifname = event.ifname
            if ifname is not None and not self.interfaces.match(ifname):
                if self.hold_down is not None and event.type == "link.removed":
                    self.hold_down.forget(link_key(event))  # renamed out of the filter
                return
        if self.hold_down is not None:
            self.hold_down.offer(event)  # it applies the type filter itself, after damping
        elif self.types.matches_all or self.types.match(event.type):
            self._enqueue(event)

    def _wants(self, type_: str) -> bool:
        return self.types.matches_all or self.types.match(type_)

    def update(self, options: SinkBase) -> None:
        """A reload changed this sink's options, and the sink was reconfigured in place
        (a durable sink keeps its spool): filters, hold-down and buffer follow ``options``."""
        old = self.options
        self.options = options
        self.types = GlobFilter(options.events)
        self.interfaces = GlobFilter(options.interfaces)
        if options.hold_down != old.hold_down:
            if self.hold_down is not None:
                self.hold_down.release_all()
            self.hold_down = (
                HoldDown(options.hold_down, self._enqueue, self._wants)
                if options.hold_down
                else None
            )
        if options.buffer != old.buffer:
            over, high = self.over, self.high
            self.max_events = options.buffer.max_events
            self.blocking = options.buffer.when_full == "block"
            self.low_water = max(1, self.max_events // 2)
            self.over = self.blocking and len(self.queue) >= self.max_events and not self._stopped
            self.high = self.over or (self.blocking and high and len(self.queue) >= self.low_water)
            if self.fanout is not None:
                self.fanout._count(int(self.over) - int(over), int(self.high) - int(high))

    def _enqueue(self, event: Event) -> None:
        queue = self.queue
        if len(queue) >= self.max_events and not self.blocking:
            self.counters.dropped += 1
            if self.counters.dropped == 1 or self.counters.dropped % 1000 == 0:
                log.warning(
                    "sink queue full, dropping events",
                    sink=self.name,
                    dropped=self.counters.dropped,
                )
            return
        queue.put(event)
        if len(queue) >= self.max_events and self.blocking and not self.over:
            self._went_over()

    def _went_over(self) -> None:
        if self._stopped:  # nobody will drain it any more: pausing the reader helps nothing
            return
        self.over = True
        newly_high = not self.high
        self.high = True
        if self.fanout is not None:
            self.fanout._count(1, 1 if newly_high else 0)

    def _took(self) -> None:
        """The worker took a batch off the queue: maybe it is no longer over, or drained."""
        if self.fanout is not None and self.fanout._backlog_waiters:
            self.fanout._check_backlog()
        if not self.high:
            return
        left = len(self.queue)
        under = self.over and left < self.max_events
        drained = left < self.low_water
        if under:
            self.over = False
        if drained:
            self.high = False
        if (under or drained) and self.fanout is not None:
            self.fanout._count(-1 if under else 0, -1 if drained else 0)

    def _settle(self) -> None:
        """Stopped: this worker holds nobody back any more, whatever its queue holds."""
        self._stopped = True
        over, high = self.over, self.high
        self.over = self.high = False
        if (over or high) and self.fanout is not None:
            self.fanout._count(-1 if over else 0, -1 if high else 0)

    async def start(self, *, strict: bool = False) -> None:
        """Start the sink and the worker task.

        A sink that fails to start is logged and retried on delivery: the daemon starts with
        what it has. With ``strict`` (a reload, which can keep the sink it would replace) the
        sink is closed again, the error raised, and no task started.
        """
        try:
            await self.sink.start()
        except Exception as exc:
            if strict:
                await self._close_sink()
                raise
            log.error(
                "sink failed to start; will retry on delivery",
                sink=self.name,
                error=_describe_error(exc),
            )
        self._task = asyncio.create_task(self._run(), name=f"sink:{self.name}")
        self._task.add_done_callback(self._ended)

    def _ended(self, task: asyncio.Task[None]) -> None:
        if task.cancelled():  # drain or shutdown
            return
        log.error(
            "sink worker ended unexpectedly; nothing more is delivered to this sink",
            sink=self.name,
            queued=len(self.queue),
            exc_info=task.exception(),
        )

    async def _run(self) -> None:
        while True:
            self._idle.set()
            batch = await self.queue.get_batch(self.batch_max)
            self._idle.clear()
            self._took()
            await self._deliver(batch)

    async def _deliver(self, batch: list[Event]) -> None:
        backoff = Backoff(RETRY_INITIAL, RETRY_MAX)
        while batch:
            self._in_flight = len(batch)
            error: BaseException
            try:
                await self.sink.emit(batch)
            except asyncio.CancelledError as exc:
                task = asyncio.current_task()
                if task is None or task.cancelling():  # drain or shutdown: stop here
                    raise
                error = exc  # a future inside the sink was cancelled: a failed delivery
            except Exception as exc:
                error = exc
            else:
                self.counters.delivered += len(batch)
                self._in_flight = 0
                self._recovered()
                return
            delivered = _delivered(error, len(batch))
            self.counters.delivered += delivered
            self.counters.failures += 1
            batch = batch[delivered:]
            self._failed(error, pending=len(batch) + len(self.queue))
            await asyncio.sleep(backoff.next())
        self._in_flight = 0

    def _failed(self, error: BaseException, pending: int) -> None:
        """Count a failed delivery; log it if this sink's last line is old enough.

        The first failure of a streak is logged (with the traceback if it is not a
        :class:`SinkError`: a bug somewhere), then a reminder every FAILURE_LOG_EVERY while
        the streak lasts. A sink that fails again and again between successes logs its first
        streak and counts the rest (``unlogged_streaks`` in its next line).
        """
        now = asyncio.get_running_loop().time()
        self._streak_failures += 1
        due = self._last_logged is None or now - self._last_logged >= FAILURE_LOG_EVERY
        if self._streak_start is None:
            self._streak_start = now
            if not due:
                self._unlogged_streaks += 1
                return
            extra: dict[str, object] = {}
            if not isinstance(error, SinkError):
                extra["exc_info"] = error
            if self._unlogged_streaks:
                extra["unlogged_streaks"] = self._unlogged_streaks
            log.error(
                "sink failed; retrying",
                sink=self.name,
                error=_describe_error(error),
                pending=pending,
                **extra,
            )
        elif due:
            log.error(
                "sink still failing",
                sink=self.name,
                error=_describe_error(error),
                failures=self._streak_failures,
                failing_for=round(now - self._streak_start, 3),
                pending=pending,
            )
        else:
            return
        self._last_logged = now
        self._unlogged_streaks = 0
        self._streak_logged = True

    def _recovered(self) -> None:
        """A delivery went through: a failure streak (if any) is over."""
        if self._streak_start is None:
            return
        if self._streak_logged:
            log.info(
                "sink recovered",
                sink=self.name,
                failures=self._streak_failures,
                failed_for=round(asyncio.get_running_loop().time() - self._streak_start, 3),
            )
        self._streak_start = None
        self._streak_failures = 0
        self._streak_logged = False

    async def _close_sink(self) -> None:
        try:
            await self.sink.aclose()
        except Exception as exc:
            log.error("sink failed to close", sink=self.name, error=_describe_error(exc))

    async def drain(self, timeout: float) -> int:
        """Wait up to ``timeout`` s for the queue to empty, then stop; returns events left.

        A sink that keeps failing is given up on at the deadline, ``block`` policy or not.
        """
        if self.hold_down is not None:
            self.hold_down.release_all()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                while len(self.queue) or not self._idle.is_set():
                    self._idle.clear()
                    await self._idle.wait()
        left = len(self.queue) + self._in_flight
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._settle()
        await self._close_sink()
        return left


class Fanout:
    """All sink workers; ``publish`` hands an event to each of them.

    The reader checks :attr:`blocked` after every datagram; when it is true it stops reading
    and registers :meth:`on_unblocked` to resume. Replace the workers by assigning
    :attr:`workers` (a reload), never by mutating it.
    """

    def __init__(self, workers: Iterable[SinkWorker]) -> None:
        self._workers: tuple[SinkWorker, ...] = ()
        self._over = 0  # attached workers with SinkWorker.over
        self._high = 0  # attached workers with SinkWorker.high
        self._waiters: list[Callable[[], None]] = []
        self._backlog_waiters: list[tuple[int, Callable[[], None]]] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pause_started: float | None = None
        self._pauses = 0
        self._paused = 0.0
        self.workers = workers

    @property
    def workers(self) -> tuple[SinkWorker, ...]:
        """The sink workers events are published to."""
        return self._workers

    @workers.setter
    def workers(self, workers: Iterable[SinkWorker]) -> None:
        # a worker left out (retired by a reload) gets no new events and drains on its own:
        # it stops counting towards `blocked` at once
        new = tuple(workers)
        for worker in self._workers:
            if worker not in new:
                worker.fanout = None
        if self._backlog_waiters and self._loop is not None:
            self._check_backlog()
        for worker in new:
            worker.fanout = self
        self._workers = new
        #: a sink without type or interface filters wants every event: no need to ask each
        self._takes_everything = any(w.types.matches_all and w.interfaces.matches_all for w in new)
        self._over = sum(w.over for w in new)
        self._high = sum(w.high for w in new)
        if not self._high:
            self._release()

    @property
    def blocked(self) -> bool:
        """True while a ``block`` sink's queue holds its ``max_events``: stop reading."""
        return self._over > 0

    def on_unblocked(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` once (soon, from the event loop) when every ``block`` sink's
        queue has drained below its low-water mark; at once if none is above it now.

        The time from the first registration until then is one pause (:meth:`pause_stats`).
        """
        loop = asyncio.get_running_loop()
        if not self._high:
            loop.call_soon(callback)
            return
        self._waiters.append(callback)
        if self._pause_started is None:
            self._loop = loop
            self._pause_started = loop.time()
            self._pauses += 1

    def backlog(self) -> int:
        """Events queued (not yet taken for delivery) in the deepest ``block`` sink."""
        return max((len(w.queue) for w in self._workers if w.blocking), default=0)

    def on_backlog_below(self, limit: int, callback: Callable[[], None]) -> None:
        """Call ``callback`` once (soon, from the event loop) when every ``block`` sink holds
        fewer than ``limit`` queued events: the reader paces a dump with it, so that an event
        published mid-dump never has many events ahead of it. Not counted as a pause."""
        loop = asyncio.get_running_loop()
        if self.backlog() < limit:
            loop.call_soon(callback)
            return
        self._backlog_waiters.append((limit, callback))

    def _check_backlog(self) -> None:
        depth = self.backlog()
        ready = [cb for limit, cb in self._backlog_waiters if depth < limit]
        if not ready:
            return
        self._backlog_waiters = [(n, cb) for n, cb in self._backlog_waiters if depth >= n]
        loop = asyncio.get_running_loop()
        for callback in ready:
            loop.call_soon(callback)

    def wants(self, type_: str, ifname: str | None) -> bool:
        """Whether any sink would take an event of this type about this interface.

        The publisher asks before it builds an event, so an event no sink wants costs
        nothing. A sink with hold-down sees every link event of its interfaces (recoveries
        cancel held losses), and every removal of a link (it forgets the link).
        """
        if self._takes_everything:
            return True
        for worker in self._workers:
            if worker.hold_down is not None and type_ == "link.removed":
                return True  # it forgets the link, whatever its filters say
            if worker.observes_links and type_.startswith("link."):
                return True  # its view of the links sees every change
            interfaces = worker.interfaces
            if ifname is not None and not interfaces.matches_all and not interfaces.match(ifname):
                continue
            if worker.types.matches_all or worker.types.match(type_):
                return True
            if worker.hold_down is not None and type_.startswith("link."):
                return True
        return False

    def pause_stats(self) -> dict[str, float | int]:
        """How often the reader waited on ``block`` sinks, and for how long in all (s)."""
        paused = self._paused
        if self._pause_started is not None and self._loop is not None:
            paused += self._loop.time() - self._pause_started
        return {"pauses": self._pauses, "paused_seconds": round(paused, 3)}

    def _count(self, over: int, high: int) -> None:
        """A worker's ``over``/``high`` changed by these amounts."""
        self._over += over
        self._high += high
        if not self._high:
            self._release()

    def _release(self) -> None:
        waiters, self._waiters = self._waiters, []
        loop = self._loop
        if loop is None:
            return
        if self._pause_started is not None:
            self._paused += loop.time() - self._pause_started
            self._pause_started = None
        for callback in waiters:
            loop.call_soon(callback)

    def publish(self, event: Event) -> None:
        """Offer ``event`` to every sink (never blocks)."""
        for worker in self.workers:
            worker.offer(event)

    async def start(self) -> None:
        """Start every sink and worker."""
        for worker in self.workers:
            await worker.start()

    def forget_netns(self, netns: str) -> None:
        """Namespace ``netns`` is no longer watched: every sink delivers the losses it holds
        for its links and forgets them."""
        for worker in self.workers:
            if worker.hold_down is not None:
                worker.hold_down.forget_netns(netns)

    def release_held(self) -> None:
        """Deliver every loss held by hold-down now (shutdown, before ``daemon.stopping``)."""
        for worker in self.workers:
            if worker.hold_down is not None:
                worker.hold_down.release_all()

    def reopen(self) -> None:
        """SIGHUP: let every sink reopen its files."""
        for worker in self.workers:
            worker.sink.reopen()

    async def drain(self, timeout: float) -> dict[str, int]:
        """Drain all sinks concurrently within ``timeout``; returns undelivered counts per sink."""
        left = await asyncio.gather(*(w.drain(timeout) for w in self.workers))
        for worker, n in zip(self.workers, left, strict=True):
            if n:
                log.error("events not delivered before shutdown", sink=worker.name, events=n)
        return {w.name: n for w, n in zip(self.workers, left, strict=True)}

    def counters(self) -> dict[str, dict[str, int]]:
        """Per-sink delivered/dropped/failures/queued."""
        return {
            w.name: {
                "delivered": w.counters.delivered,
                "dropped": w.counters.dropped,
                "failures": w.counters.failures,
                "queued": len(w.queue),
            }
            for w in self.workers
        }
