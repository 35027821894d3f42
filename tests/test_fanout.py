"""The shared fan-out: a slow or failing sink drops or retries on its own, never for others."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from linkmond.config import ConsoleSinkConfig
from linkmond.events import Event, EventFactory
from linkmond.fanout import Fanout, SinkWorker
from linkmond.sinks.base import Sink, SinkError


class Recorder(Sink):
    """Keeps what it receives; ``gate`` (when set) holds every batch until opened."""

    def __init__(self, gate: asyncio.Event | None = None, fail_first: int = 0) -> None:
        self.received: list[Event] = []
        self.gate = gate
        self.fail_first = fail_first

    async def emit(self, events: Sequence[Event]) -> None:
        if self.gate is not None:
            await self.gate.wait()
        if self.fail_first:
            self.fail_first -= 1
            self.received.append(events[0])
            raise SinkError("disk full", delivered=1)
        self.received.extend(events)


def options(**kw: object) -> ConsoleSinkConfig:
    return ConsoleSinkConfig(type="console", **kw)  # type: ignore[arg-type]


async def wait_until(predicate, timeout: float = 5.0) -> None:  # type: ignore[no-untyped-def]
    async with asyncio.timeout(timeout):
        while not predicate():  # noqa: ASYNC110 - polling another task's outcome, with a deadline
            await asyncio.sleep(0.01)


async def test_full_queue_drops_for_that_sink_only_and_counts() -> None:
    factory = EventFactory("/linkmond/t", "default")
    gate = asyncio.Event()
    # a console sink's buffer drops when full (when_full = "drop_newest" by default)
    stuck = SinkWorker("stuck", Recorder(gate), options(buffer={"max_events": 3}))
    healthy_sink = Recorder()
    healthy = SinkWorker("healthy", healthy_sink, options())
    fanout = Fanout([stuck, healthy])
    await fanout.start()
    events = [factory.make("link.changed", "lm0", {"ifindex": 2}) for _ in range(10)]
    for event in events:
        fanout.publish(event)  # never awaits, whatever the sinks do
    await wait_until(lambda: len(healthy_sink.received) == 10)
    assert healthy_sink.received == events
    # publishing never yielded to the worker: three events fit its queue, seven were dropped
    assert stuck.counters.dropped == 7
    assert healthy.counters.dropped == 0
    gate.set()
    left = await fanout.drain(5)
    assert left == {"stuck": 0, "healthy": 0}
    assert stuck.counters.delivered == 3


async def test_failing_sink_is_retried_without_duplicates_or_loss() -> None:
    factory = EventFactory("/linkmond/t", "default")
    sink = Recorder(fail_first=2)  # takes one event, then fails, twice
    worker = SinkWorker("flaky", sink, options())
    await worker.start()
    events = [factory.make("addr.added", "lm0", {"ifindex": 2}) for _ in range(5)]
    for event in events:
        worker.offer(event)
    await wait_until(lambda: len(sink.received) == 5)
    assert sink.received == events
    assert worker.counters.failures == 2
    assert await worker.drain(1) == 0


async def test_type_and_interface_filters() -> None:
    factory = EventFactory("/linkmond/t", "default")
    sink = Recorder()
    worker = SinkWorker(
        "links", sink, options(events=["link.*", "!link.changed"], interfaces=["eth*", "!eth9"])
    )
    await worker.start()
    worker.offer(factory.make("link.carrier_lost", "eth0", {"ifindex": 2, "ifname": "eth0"}))
    worker.offer(factory.make("link.carrier_lost", "eth9", {"ifindex": 3, "ifname": "eth9"}))
    worker.offer(factory.make("link.changed", "eth0", {"ifindex": 2, "ifname": "eth0"}))
    worker.offer(factory.make("addr.added", "eth0", {"ifindex": 2, "ifname": "eth0"}))
    worker.offer(factory.make("daemon.started", "linkmond", {}))
    await worker.drain(1)
    assert [(e.type, e.subject) for e in sink.received] == [("link.carrier_lost", "eth0")]
