"""Prometheus metrics: ``[metrics] listen`` serves ``/metrics`` from the daemon's own loop.

Design. The endpoint is an aiohttp web server (a TCP site for ``HOST:PORT``, a unix site for
a path) running on the daemon's asyncio loop, not prometheus-client's own HTTP server: that
one serves from a thread of its own, which would read the daemon's dicts (the link cache,
the sink list, the counters) while the loop mutates them — iterating the link table while
the reader inserts a link raises, and counters read across several structures mid-update
disagree. Every counter here is a plain integer the loop already keeps; a scrape costs the
reader nothing until it happens, and then very little:

1. on the loop, :func:`snapshot` copies the numbers (a few per sink, four per link) into
   plain tuples — consistent, because nothing else runs meanwhile, and microseconds per link;
2. in a worker thread, :func:`render` turns that snapshot into the text format with
   ``prometheus_client.generate_latest`` over :class:`DaemonCollector`, a custom collector fed
   the snapshot (plus prometheus-client's process collector: memory, CPU, open files).

The reader runs between the two, so the formatting, the bulk of a scrape's work, never
stands between a notification and its event.

Every per-namespace series carries ``netns`` (the watched namespace's name, as in the
events): today one namespace, and :meth:`Daemon.namespaces` is where several plug in. What
belongs to the daemon as a whole (resync events, reader pauses: one publisher, one fan-out)
has no such label; sinks are labelled ``sink``. Counters survive a SIGHUP reload: a rebuilt
sink takes over the counters of the sink of the same name (the daemon keeps them by name),
and the others live in objects a reload does not replace. A change of ``[metrics] listen``
itself takes effect at the next restart.

``linkmond_link_carrier_changes_total`` is the kernel's own count (IFLA_CARRIER_CHANGES),
read by the decoder into :class:`~linkmond.decode.LinkObj` beside the event's fields, never
into an event. ``linkmond_sink_spool_depth`` is the rows a durable sink's SQLite spool holds
as the sink counts them (no query on the loop).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import structlog
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, ProcessCollector, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from linkmond.config import split_listen
from linkmond.watcher import DUMP_BUCKETS

if TYPE_CHECKING:
    from linkmond.daemon import Daemon

log = structlog.get_logger("linkmond.metrics")

#: how long stopping the server waits for a scrape in progress (s)
SHUTDOWN_TIMEOUT = 1.0


class ListenError(Exception):
    """``[metrics] listen`` cannot be bound; the message says the address and why."""


# -- the snapshot, taken on the loop -----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class NetnsCounts:
    """What one watched namespace counts."""

    netns: str
    #: events handed to the sinks, by type
    events: dict[str, int]
    #: (ifname, admin_up, carrier, carrier_changes or None) of every cached link
    links: list[tuple[str, bool, bool, int | None]]
    overflows: int
    decode_errors: int
    #: the notification socket's receive buffer (None: no socket yet, or closed)
    receive_buffer: int | None
    #: dumps per DUMP_BUCKETS bound (not cumulative), then those above every bound
    dump_counts: tuple[int, ...]
    dump_seconds: float


@dataclass(frozen=True, slots=True)
class SinkCounts:
    """What one sink counts."""

    name: str
    queued: int
    delivered: int
    dropped: int
    failures: int
    #: rows in a webhook sink's spool; None for other sinks
    spooled: int | None


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Every number ``/metrics`` shows, copied at one instant."""

    namespaces: list[NetnsCounts]
    sinks: list[SinkCounts]
    resync_events: int
    paused_seconds: float


def snapshot(daemon: Daemon) -> Snapshot:
    """Copy the daemon's live counters (call on its loop: nothing changes meanwhile)."""
    namespaces = []
    for netns, watcher in daemon.namespaces():
        sock = watcher.sock
        namespaces.append(
            NetnsCounts(
                netns=netns,
                events={t: n for (ns, t), n in daemon.event_counts.items() if ns == netns},
                links=[
                    (
                        link["ifname"],
                        link["admin_up"],
                        link["carrier"],
                        getattr(link, "carrier_changes", None),
                    )
                    for link in watcher.state.tables["link"].values()
                ],
                overflows=watcher.stats.overflows,
                decode_errors=watcher.stats.malformed,
                receive_buffer=sock.receive_buffer if sock is not None else None,
                dump_counts=tuple(watcher.dump_times.counts),
                dump_seconds=watcher.dump_times.total,
            )
        )
    sinks = [
        SinkCounts(
            name=worker.name,
            queued=len(worker.queue),
            delivered=worker.counters.delivered,
            dropped=worker.counters.dropped,
            failures=worker.counters.failures,
            spooled=worker.sink.spooled(),
        )
        for worker in daemon.fanout.workers
    ]
    return Snapshot(
        namespaces=namespaces,
        sinks=sinks,
        resync_events=daemon.resync_events(),
        paused_seconds=float(daemon.fanout.pause_stats()["paused_seconds"]),
    )


# -- the text, made in a thread ----------------------------------------------------------------


class DaemonCollector(Collector):
    """The metric families of one :class:`Snapshot` (and of ``process``, if given)."""

    def __init__(self, snap: Snapshot, process: Collector | None = None) -> None:
        self.snap = snap
        self.process = process

    def collect(self) -> Iterator[Metric]:
        snap = self.snap
        ns = ["netns"]
        events = CounterMetricFamily(
            "linkmond_events", "Events published to the sinks, by type.", labels=["type", *ns]
        )
        admin = GaugeMetricFamily(
            "linkmond_link_admin_up",
            "1 if the link is administratively up (IFF_UP).",
            labels=["ifname", *ns],
        )
        carrier = GaugeMetricFamily(
            "linkmond_link_carrier",
            "1 if the link has carrier (admin up, lower up, an operstate that carries traffic).",
            labels=["ifname", *ns],
        )
        changes = CounterMetricFamily(
            "linkmond_link_carrier_changes",
            "Carrier transitions since the device was created (the kernel's count).",
            labels=["ifname", *ns],
        )
        overflows = CounterMetricFamily(
            "linkmond_netlink_overflows",
            "Netlink receive buffer overflows (ENOBUFS); each is recovered by a re-dump.",
            labels=ns,
        )
        decode_errors = CounterMetricFamily(
            "linkmond_decode_errors", "Malformed netlink messages skipped.", labels=ns
        )
        buffers = GaugeMetricFamily(
            "linkmond_receive_buffer_bytes",
            "The notification socket's receive buffer as the kernel reports it.",
            labels=ns,
        )
        dumps = HistogramMetricFamily(
            "linkmond_dump_duration_seconds",
            "How long dumps took, from request to end (complete, failed or given up).",
            labels=ns,
        )
        for counts in snap.namespaces:
            netns = counts.netns
            for type_, n in sorted(counts.events.items()):
                events.add_metric([type_, netns], n)
            for ifname, admin_up, has_carrier, carrier_changes in counts.links:
                admin.add_metric([ifname, netns], int(admin_up))
                carrier.add_metric([ifname, netns], int(has_carrier))
                if carrier_changes is not None:
                    changes.add_metric([ifname, netns], carrier_changes)
            overflows.add_metric([netns], counts.overflows)
            decode_errors.add_metric([netns], counts.decode_errors)
            if counts.receive_buffer is not None:
                buffers.add_metric([netns], counts.receive_buffer)
            cumulative, buckets = 0, []
            for bound, n in zip(
                (*map(repr, DUMP_BUCKETS), "+Inf"), counts.dump_counts, strict=True
            ):
                cumulative += n
                buckets.append((bound, cumulative))
            dumps.add_metric([netns], buckets, counts.dump_seconds)
        yield from (events, admin, carrier, changes, overflows, decode_errors, buffers, dumps)

        resyncs = CounterMetricFamily(
            "linkmond_resync_events",
            "Events found by re-dumping a table (resync: true) rather than announced.",
        )
        resyncs.add_metric([], snap.resync_events)
        paused = CounterMetricFamily(
            "linkmond_reader_paused_seconds",
            "Time the netlink reader waited for full lossless sinks (backpressure).",
        )
        paused.add_metric([], snap.paused_seconds)
        yield from (resyncs, paused)

        sink = ["sink"]
        depth = GaugeMetricFamily(
            "linkmond_sink_queue_depth", "Events queued for the sink.", labels=sink
        )
        delivered = CounterMetricFamily(
            "linkmond_sink_delivered", "Events the sink accepted.", labels=sink
        )
        dropped = CounterMetricFamily(
            "linkmond_sink_dropped",
            "Events dropped because the sink's buffer was full (when_full = drop_newest).",
            labels=sink,
        )
        failures = CounterMetricFamily(
            "linkmond_sink_failures", "Failed deliveries (each is retried).", labels=sink
        )
        spool = GaugeMetricFamily(
            "linkmond_sink_spool_depth",
            "Events in a durable (webhook, nats) sink's spool, not yet acknowledged.",
            labels=sink,
        )
        for s in snap.sinks:
            depth.add_metric([s.name], s.queued)
            delivered.add_metric([s.name], s.delivered)
            dropped.add_metric([s.name], s.dropped)
            failures.add_metric([s.name], s.failures)
            if s.spooled is not None:
                spool.add_metric([s.name], s.spooled)
        yield from (depth, delivered, dropped, failures, spool)
        if self.process is not None:
            yield from self.process.collect()


def render(snap: Snapshot, process: Collector | None = None) -> bytes:
    """The text exposition format of ``snap`` (runs in a worker thread)."""
    return generate_latest(DaemonCollector(snap, process))


# -- the server ----------------------------------------------------------------------------------


class MetricsServer:
    """``/metrics`` on ``listen`` (``HOST:PORT`` or a unix socket path), answered from
    ``collect()``'s snapshot (called on the loop, once per scrape)."""

    def __init__(self, listen: str, collect: Callable[[], Snapshot]) -> None:
        self.listen = listen
        self.address = split_listen(listen)
        self._collect = collect
        self._process = ProcessCollector(registry=None)
        self._runner: web.AppRunner | None = None
        self._socket_file: tuple[int, int] | None = None  # (st_dev, st_ino) of our unix socket

    async def start(self) -> None:
        """Bind and serve; raises :class:`ListenError` when the address cannot be bound."""
        if isinstance(self.address, str) and _is_served(self.address):
            raise ListenError(
                f"cannot listen on {self.listen}: another process serves on this socket"
            )
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/", self._index)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=SHUTDOWN_TIMEOUT)
        await runner.setup()
        site: web.BaseSite
        if isinstance(self.address, str):
            site = web.UnixSite(runner, self.address, shutdown_timeout=SHUTDOWN_TIMEOUT)
        else:
            host, port = self.address
            site = web.TCPSite(runner, host, port, shutdown_timeout=SHUTDOWN_TIMEOUT)
        try:
            await site.start()
        except OSError as exc:
            await runner.cleanup()
            # asyncio wraps the errno in a sentence of its own; name resolution has only text
            errno_ = exc.errno or 0
            why = os.strerror(errno_) if errno_ > 0 else (exc.strerror or str(exc))
            raise ListenError(f"cannot listen on {self.listen}: {why}") from None
        if isinstance(self.address, str):
            st = os.stat(self.address)
            self._socket_file = (st.st_dev, st.st_ino)
        self._runner = runner
        log.info("serving metrics", listen=self.listen, path="/metrics")

    async def stop(self) -> None:
        """Stop serving (a scrape in progress gets :data:`SHUTDOWN_TIMEOUT` s) and remove the
        unix socket, if it is still the one we made."""
        runner, self._runner = self._runner, None
        if runner is None:
            return
        await runner.cleanup()
        if isinstance(self.address, str) and self._socket_file is not None:
            with contextlib.suppress(OSError):
                st = os.stat(self.address)
                if (st.st_dev, st.st_ino) == self._socket_file:
                    os.unlink(self.address)

    async def _metrics(self, request: web.Request) -> web.Response:
        snap = self._collect()  # on the loop: the live counters, at one instant
        body = await asyncio.get_running_loop().run_in_executor(None, render, snap, self._process)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _index(self, request: web.Request) -> web.Response:
        return web.Response(text="linkmond: metrics at /metrics\n")


def _is_served(path: str) -> bool:
    """Whether a process answers on the unix socket at ``path``. asyncio removes a socket
    file in the way before it binds: a live one (another daemon's) must be left alone."""
    try:
        if not stat.S_ISSOCK(os.stat(path).st_mode):
            return False  # not a socket: bind fails on it by itself, and leaves it alone
    except FileNotFoundError:
        return False
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(1.0)
        try:
            probe.connect(path)
        except OSError:
            return False  # nobody listens: a stale socket of an earlier run
    return True
