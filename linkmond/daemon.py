"""The daemon's lifecycle: startup → main loop → shutdown, as three readable steps.

Signals only set flags or events: SIGTERM/SIGINT set the stop event, SIGHUP asks sinks to
reopen their files. Shutdown stops reading, publishes ``daemon.stopping`` last and drains every
sink queue within ``[daemon] drain_timeout``.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket

import structlog

from linkmond import __version__, rtnl
from linkmond.config import Config
from linkmond.events import EventFactory
from linkmond.fanout import Fanout, SinkWorker
from linkmond.filters import GlobFilter
from linkmond.monitor import Monitor, tune_gc
from linkmond.sinks import Sink, build_sink
from linkmond.source import current_netns_name

log = structlog.get_logger("linkmond.daemon")


class Daemon:
    """One run of linkmond: a monitor feeding a fan-out of sinks."""

    def __init__(self, config: Config, sinks: dict[str, Sink] | None = None) -> None:
        self.config = config
        netns = current_netns_name()
        self.factory = EventFactory(f"/linkmond/{socket.gethostname()}", netns)
        built = (
            sinks
            if sinks is not None
            else {
                name: build_sink(name, options, config.state_directory())
                for name, options in config.sinks.items()
            }
        )
        self.fanout = Fanout(
            SinkWorker(name, sink, config.sinks[name]) for name, sink in built.items()
        )
        self.monitor = Monitor(
            self.factory,
            self.fanout.publish,
            groups=config.monitor.groups,
            interfaces=GlobFilter(config.monitor.interfaces),
            receive_buffer=config.monitor.receive_buffer,
        )
        self.stop_reason = ""
        self._stop = asyncio.Event()

    def request_stop(self, reason: str) -> None:
        """Ask the main loop to end (signal handlers call this)."""
        self.stop_reason = reason
        self._stop.set()

    async def run(self) -> int:
        """Start, serve until stopped, shut down; returns the exit status."""
        await self.startup()
        try:
            await self.main_loop()
        finally:
            await self.shutdown()
        return 0

    async def startup(self) -> None:
        """Sinks first (so nothing published is lost), then subscribe and fill the cache."""
        rtnl.load_system_names()
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self.request_stop, "SIGTERM")
        loop.add_signal_handler(signal.SIGINT, self.request_stop, "SIGINT")
        loop.add_signal_handler(signal.SIGHUP, self._on_sighup)
        await self.fanout.start()
        await self.monitor.start()
        tune_gc()
        counts = self.monitor.state.counts()
        sock = self.monitor.sock
        self.fanout.publish(
            self.factory.make(
                "daemon.started",
                "linkmond",
                {
                    "version": __version__,
                    "pid": os.getpid(),
                    "netns": self.factory.netns,
                    "groups": list(self.config.monitor.groups),
                    "receive_buffer": sock.receive_buffer if sock else 0,
                    "counts": counts,
                    "links_with_carrier": self.monitor.state.links_with_carrier(),
                },
            )
        )
        log.info("started", netns=self.factory.netns, **counts)

    async def main_loop(self) -> None:
        """Everything happens in callbacks and sink tasks; wait for a stop request."""
        await self._stop.wait()

    async def shutdown(self) -> None:
        """Stop reading, publish ``daemon.stopping`` last, drain the sinks within the timeout."""
        self.monitor.stop()
        stats = self.monitor.stats.as_dict()
        self.fanout.publish(
            self.factory.make(
                "daemon.stopping",
                "linkmond",
                {
                    "reason": self.stop_reason or "stopped",
                    "stats": stats,
                    "sinks": self.fanout.counters(),
                },
            )
        )
        left = await self.fanout.drain(self.config.daemon.drain_timeout)
        log.info("stopped", reason=self.stop_reason, undelivered=sum(left.values()), **stats)

    def _on_sighup(self) -> None:
        log.info("SIGHUP: reopening sink files")
        self.fanout.reopen()
