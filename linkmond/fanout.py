"""Fan-out: per-sink filters, bounded queues, one worker task per sink, retries and drain.

``publish`` is called on the reader's hot path and never awaits: it filters and
``put_nowait``s into each sink's queue. A full queue drops the event for that sink only and
counts it. Each worker delivers batches in order and retries a failing sink with backoff
while its queue absorbs (and, when full, drops) what comes meanwhile; one sink failing never
touches another.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Final

import structlog

from linkmond.config import SinkBase
from linkmond.events import Event, with_data
from linkmond.filters import GlobFilter
from linkmond.sinks.base import Sink, SinkError

log = structlog.get_logger("linkmond.fanout")

BATCH_MAX: Final = 512
RETRY_INITIAL: Final = 0.2
RETRY_MAX: Final = 30.0


class EventQueue:
    """A bounded FIFO for one sink: ``put`` never awaits (it refuses when full), the worker
    takes batches. Lighter than asyncio.Queue, whose per-put bookkeeping shows in a storm."""

    def __init__(self, maxsize: int) -> None:
        self.maxsize = maxsize
        self._items: deque[Event] = deque()
        self._waiter: asyncio.Future[None] | None = None

    def __len__(self) -> int:
        return len(self._items)

    def put(self, event: Event) -> bool:
        """Append ``event``; False (and nothing appended) when the queue is full."""
        if len(self._items) >= self.maxsize:
            return False
        self._items.append(event)
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)
        return True

    async def get_batch(self, limit: int) -> list[Event]:
        """Wait for at least one event; return up to ``limit`` of them, oldest first."""
        items = self._items
        while not items:
            self._waiter = asyncio.get_running_loop().create_future()
            await self._waiter
        return [items.popleft() for _ in range(min(limit, len(items)))]


#: A loss held back by hold-down → the recovery that cancels it.
_RECOVERY: Final = {"link.carrier_lost": "link.carrier_up", "link.admin_down": "link.admin_up"}


class HoldDown:
    """Flap damping for one sink: a link loss is delivered only if still lost after ``delay``.

    ``link.carrier_lost`` / ``link.admin_down`` are held per link; the matching recovery
    within ``delay`` swallows both and counts a suppressed flap (and, for an admin flap of a
    link that had carrier, the ``carrier_up`` that follows ``admin_up``). It sees every link
    event before the sink's type filter, so a sink that does not want recoveries still has its
    flaps damped. The count rides on the next event delivered for that link as
    ``data.flaps_suppressed``. A held loss keeps its id, seq and time, so it arrives after
    events that happened later.
    """

    def __init__(
        self, delay: float, deliver: Callable[[Event], None], wants: Callable[[str], bool]
    ) -> None:
        self.delay = delay
        self.deliver = deliver
        self.wants = wants
        self.held: dict[int, tuple[Event, asyncio.TimerHandle]] = {}
        self.flaps: dict[int, int] = {}
        self._quiet_until: dict[int, float] = {}  # swallow carrier_up after an admin flap

    def offer(self, event: Event) -> None:
        """Hold, swallow or pass ``event`` on to ``deliver``."""
        if not event.type.startswith("link."):
            if self.wants(event.type):
                self.deliver(event)
            return
        link = event.data["ifindex"]
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

    def release(self, link: int) -> None:
        """Deliver the loss held for ``link`` now (its hold-down expired, or shutdown)."""
        held = self.held.pop(link, None)
        if held is not None:
            held[1].cancel()
            self._deliver(held[0], link)

    def release_all(self) -> None:
        """Deliver every held loss (shutdown: better late than never)."""
        for link in list(self.held):
            self.release(link)

    def _deliver(self, event: Event, link: int) -> None:
        if not self.wants(event.type):
            return
        flaps = self.flaps.pop(link, 0)
        self.deliver(with_data(event, flaps_suppressed=flaps) if flaps else event)


@dataclass
class SinkCounters:
    """What happened to the events offered to one sink."""

    delivered: int = 0
    dropped: int = 0
    failures: int = 0


class SinkWorker:
    """One sink with its filters, bounded queue and delivery task."""

    def __init__(self, name: str, sink: Sink, options: SinkBase) -> None:
        self.name = name
        self.sink = sink
        self.options = options
        self.types = GlobFilter(options.events)
        self.interfaces = GlobFilter(options.interfaces)
        self.queue = EventQueue(options.queue_size)
        self.hold_down = (
            HoldDown(options.hold_down, self._enqueue, self._wants) if options.hold_down else None
        )
        self.counters = SinkCounters()
        self._task: asyncio.Task[None] | None = None
        self._in_flight = 0  # events of the batch being delivered, not yet through
        self._idle = asyncio.Event()  # set while the worker waits with nothing to deliver

    def offer(self, event: Event) -> None:
        """Queue ``event`` if the filters let it through; count a drop if the queue is full."""
        if not self.interfaces.matches_all:
            ifname = event.ifname
            if ifname is not None and not self.interfaces.match(ifname):
                return
        if self.hold_down is not None:
            self.hold_down.offer(event)  # it applies the type filter itself, after damping
        elif self.types.matches_all or self.types.match(event.type):
            self._enqueue(event)

    def _wants(self, type_: str) -> bool:
        return self.types.matches_all or self.types.match(type_)

    def _enqueue(self, event: Event) -> None:
        if not self.queue.put(event):
            self.counters.dropped += 1
            if self.counters.dropped == 1 or self.counters.dropped % 1000 == 0:
                log.warning(
                    "sink queue full, dropping events",
                    sink=self.name,
                    dropped=self.counters.dropped,
                )

    async def start(self) -> None:
        """Start the sink (a failure is logged; delivery retries it) and the worker task."""
        try:
            await self.sink.start()
        except Exception as exc:
            log.error(
                "sink failed to start; will retry on delivery", sink=self.name, error=str(exc)
            )
        self._task = asyncio.create_task(self._run(), name=f"sink:{self.name}")

    async def _run(self) -> None:
        while True:
            self._idle.set()
            batch = await self.queue.get_batch(BATCH_MAX)
            self._idle.clear()
            await self._deliver(batch)

    async def _deliver(self, batch: list[Event]) -> None:
        delay = RETRY_INITIAL
        failing = False
        while batch:
            self._in_flight = len(batch)
            try:
                await self.sink.emit(batch)
            except Exception as exc:
                delivered = exc.delivered if isinstance(exc, SinkError) else 0
                self.counters.delivered += delivered
                batch = batch[delivered:]
                self.counters.failures += 1
                if not failing:
                    log.error(
                        "sink failed; retrying",
                        sink=self.name,
                        error=str(exc),
                        pending=len(batch) + len(self.queue),
                    )
                failing = True
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX)
                continue
            self.counters.delivered += len(batch)
            self._in_flight = 0
            if failing:
                log.info("sink recovered", sink=self.name)
            return

    async def drain(self, timeout: float) -> int:
        """Wait up to ``timeout`` s for the queue to empty, then stop; returns events left."""
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
        try:
            await self.sink.aclose()
        except Exception as exc:
            log.error("sink failed to close", sink=self.name, error=str(exc))
        return left


class Fanout:
    """All sink workers; ``publish`` hands an event to each of them."""

    def __init__(self, workers: Iterable[SinkWorker]) -> None:
        self.workers = list(workers)

    def publish(self, event: Event) -> None:
        """Offer ``event`` to every sink (never blocks)."""
        for worker in self.workers:
            worker.offer(event)

    async def start(self) -> None:
        """Start every sink and worker."""
        for worker in self.workers:
            await worker.start()

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
