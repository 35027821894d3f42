"""Per-sink buffer policy (`buffer.when_full`): a ``block`` sink never loses an event and pauses the
reader while its queue is full; a ``drop_newest`` sink beside it drops and counts, and never
pauses anyone. Real workers and fan-out; the sinks are small recorders."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any

from linkmond.config import ConsoleSinkConfig
from linkmond.events import Event, EventFactory
from linkmond.fanout import Fanout, SinkWorker
from linkmond.sinks.base import Sink, SinkError


class Slow(Sink):
    """Records every batch; yields to the event loop a few times per batch, so a reader that
    publishes a datagram's events at once outruns it. ``observe`` is called as a batch
    arrives, to note what the fan-out looked like then."""

    def __init__(self, observe: Callable[[], Any] | None = None) -> None:
        self.received: list[Event] = []
        self.batch_sizes: list[int] = []
        self.observe = observe
        self.observed: list[Any] = []

    async def emit(self, events: Sequence[Event]) -> None:
        if self.observe is not None:
            self.observed.append(self.observe())
        self.batch_sizes.append(len(events))
        for _ in range(3):
            await asyncio.sleep(0)
        self.received.extend(events)


class Gated(Sink):
    """Records what it receives, but holds every batch until ``gate`` opens."""

    def __init__(self) -> None:
        self.gate = asyncio.Event()
        self.received: list[Event] = []

    async def emit(self, events: Sequence[Event]) -> None:
        await self.gate.wait()
        self.received.extend(events)


class Broken(Sink):
    """Fails every delivery (a disk that stays full)."""

    async def emit(self, events: Sequence[Event]) -> None:
        raise SinkError("No space left on device", delivered=0)


def options(when_full: str, max_events: int, **kw: Any) -> ConsoleSinkConfig:
    buffer = {"max_events": max_events, "when_full": when_full}
    return ConsoleSinkConfig(type="console", buffer=buffer, **kw)  # type: ignore[arg-type]


def make_events(n: int) -> list[Event]:
    factory = EventFactory("/linkmond/t", "default")
    return [factory.make("route.added", "2001:db8::/64", {"ifindex": 2}) for _ in range(n)]


async def wait_until(predicate: Callable[[], Any], timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():  # noqa: ASYNC110 - polling another task's outcome, with a deadline
            await asyncio.sleep(0.001)


async def resumed(fanout: Fanout, on_call: Callable[[], None] = lambda: None) -> None:
    """Register with ``on_unblocked`` and wait (with a deadline) until it calls back."""
    called = asyncio.Event()

    def callback() -> None:
        on_call()
        called.set()

    fanout.on_unblocked(callback)
    async with asyncio.timeout(10):
        await called.wait()


async def test_block_sink_gets_every_event_once_in_order_while_a_drop_sink_drops() -> None:
    events = make_events(20_000)
    lossless_sink = Slow()
    lossless = SinkWorker("lossless", lossless_sink, options("block", 16))
    lossy_sink = Gated()  # stuck until the end
    lossy = SinkWorker("lossy", lossy_sink, options("drop_newest", 16))
    fanout = Fanout([lossless, lossy])
    await fanout.start()
    queued_at_resume: list[int] = []

    def note_queue() -> None:
        queued_at_resume.append(len(lossless.queue))

    # the first 16 without yielding: the block sink's queue reaches max_events at the 16th
    for event in events[:15]:
        fanout.publish(event)
        assert not fanout.blocked
    fanout.publish(events[15])
    assert fanout.blocked
    assert len(lossless.queue) == 16
    await resumed(fanout, note_queue)
    pauses = 1

    # then as the reader does: a datagram's events at once, `blocked` checked after each
    per_datagram = 5
    for start in range(16, len(events), per_datagram):
        for event in events[start : start + per_datagram]:
            fanout.publish(event)
        if fanout.blocked:
            await resumed(fanout, note_queue)
            pauses += 1

    await wait_until(lambda: len(lossless_sink.received) == len(events))
    # every event, in order, exactly once; nothing dropped although the sink was slower
    assert [e.seq for e in lossless_sink.received] == [e.seq for e in events]
    assert lossless.counters.dropped == 0
    assert lossless.counters.delivered == len(events)
    # a whole datagram is taken even past the mark: the queue went over 16 rather than drop
    assert max(lossless_sink.batch_sizes) > 16
    # the reader waited each time until the queue was under the low-water mark (8)
    assert pauses > 1
    assert len(queued_at_resume) == pauses
    assert max(queued_at_resume) < 8
    stats = fanout.pause_stats()
    assert stats["pauses"] == pauses
    assert isinstance(stats["paused_seconds"], float)
    assert stats["paused_seconds"] >= 0

    # the drop sink, stuck all along, dropped and counted, and never held the reader back
    assert lossy.counters.dropped > 0
    assert len(lossy.queue) == 16
    assert not fanout.blocked
    lossy_sink.gate.set()
    assert await fanout.drain(5) == {"lossless": 0, "lossy": 0}
    assert len(lossy_sink.received) + lossy.counters.dropped == len(events)
    seqs = [e.seq for e in lossy_sink.received]
    assert seqs == sorted(seqs)


async def test_the_reader_resumes_only_below_half_not_as_soon_as_under_max() -> None:
    events = make_events(16)
    fanout: Fanout
    state: dict[str, bool] = {"resumed": False}
    sink = Slow(observe=lambda: (len(worker.queue), fanout.blocked, state["resumed"]))
    worker = SinkWorker("lossless", sink, options("block", 16), batch_max=4)
    fanout = Fanout([worker])
    await fanout.start()
    for event in events:
        fanout.publish(event)
    assert fanout.blocked
    queued_at_resume: list[int] = []

    def note() -> None:
        state["resumed"] = True
        queued_at_resume.append(len(worker.queue))

    await resumed(fanout, note)
    assert queued_at_resume[0] < 8
    # in between, the queue was under max_events (not blocked) but the reader still waited
    assert (12, False, False) in sink.observed
    assert (8, False, False) in sink.observed
    await wait_until(lambda: len(sink.received) == 16)
    assert [e.seq for e in sink.received] == [e.seq for e in events]
    assert fanout.pause_stats()["pauses"] == 1
    await fanout.drain(5)


async def test_on_unblocked_with_nothing_blocked_calls_back_soon_and_is_no_pause() -> None:
    worker = SinkWorker("lossless", Slow(), options("block", 4))
    fanout = Fanout([worker])
    called: list[bool] = []
    await resumed(fanout, lambda: called.append(True))
    assert called == [True]
    assert fanout.pause_stats() == {"pauses": 0, "paused_seconds": 0.0}


async def test_a_block_sink_that_keeps_failing_keeps_the_reader_paused_until_shutdown() -> None:
    events = make_events(8)
    worker = SinkWorker("broken", Broken(), options("block", 4))
    fanout = Fanout([worker])
    await fanout.start()
    for event in events[:4]:
        fanout.publish(event)
    assert fanout.blocked
    # the worker takes them as one batch, which fails and is retried; the queue is free again
    await wait_until(lambda: worker.counters.failures >= 1)
    assert not fanout.blocked
    for event in events[4:]:
        fanout.publish(event)
    assert fanout.blocked
    called = asyncio.Event()
    fanout.on_unblocked(called.set)
    await wait_until(lambda: worker.counters.failures >= 2)  # a retry came and went
    assert fanout.blocked
    assert not called.is_set()
    assert fanout.pause_stats()["pauses"] == 1

    # shutdown gives up on it at the deadline (lossless ends where the process does)
    async with asyncio.timeout(10):
        left = await fanout.drain(0.3)
    assert left == {"broken": 8}
    assert worker.counters.dropped == 0
    assert not fanout.blocked
    async with asyncio.timeout(10):
        await called.wait()


async def test_a_retired_worker_does_not_keep_the_fanout_blocked() -> None:
    events = make_events(8)
    kept = SinkWorker("kept", Gated(), options("block", 2))
    retired_sink = Gated()
    retired = SinkWorker("retired", retired_sink, options("block", 2))
    fanout = Fanout([kept, retired])  # not started: nothing drains the queues
    retired.offer(events[0])
    retired.offer(events[1])
    assert fanout.blocked
    called = asyncio.Event()
    fanout.on_unblocked(called.set)

    fresh = SinkWorker("retired", Gated(), options("block", 2))
    fanout.workers = [kept, fresh]  # a reload replaced "retired"
    assert not fanout.blocked
    async with asyncio.timeout(10):
        await called.wait()
    # the retired worker still filling, then draining in the background: none of the fan-out's
    # business any more
    for event in events[2:5]:
        retired.offer(event)
    assert not fanout.blocked
    await retired.start()
    await wait_until(lambda: len(retired.queue) == 0)
    assert not fanout.blocked

    kept.offer(events[5])
    kept.offer(events[6])
    assert fanout.blocked
    fanout.workers = [fresh, kept]  # kept again by the next reload: still blocked
    assert fanout.blocked
    fanout.workers = [fresh]
    assert not fanout.blocked
    fanout.workers = [fresh, kept]  # and a worker that comes back counts again
    assert fanout.blocked
    assert fanout.pause_stats()["pauses"] == 1
    retired_sink.gate.set()
    assert await retired.drain(5) == 0
    assert len(retired_sink.received) == 5


async def test_hold_down_releases_into_a_full_block_queue_without_dropping() -> None:
    factory = EventFactory("/linkmond/t", "default")
    worker = SinkWorker("lossless", Gated(), options("block", 2, hold_down=60.0))
    fanout = Fanout([worker])
    for ifindex in range(2, 7):
        fanout.publish(factory.make("link.carrier_lost", f"lm{ifindex}", {"ifindex": ifindex}))
    assert len(worker.queue) == 0  # all held
    assert not fanout.blocked
    fanout.release_held()
    assert len(worker.queue) == 5
    assert worker.counters.dropped == 0
    assert fanout.blocked
    assert fanout.counters()["lossless"] == {
        "delivered": 0,
        "dropped": 0,
        "failures": 0,
        "queued": 5,
    }
