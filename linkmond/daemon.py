"""The daemon's lifecycle: startup → main loop → shutdown, as three readable steps.

Signals only set flags and events: SIGTERM/SIGINT set the stop event, SIGHUP queues a reload.
The main loop feeds the systemd watchdog, keeps ``STATUS=`` current and carries out reloads;
shutdown stops reading, publishes ``daemon.stopping`` last and drains every sink queue
within ``[daemon] drain_timeout``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
from collections.abc import Callable

import structlog

from linkmond import __version__, rtnl
from linkmond.config import Config, ConfigError
from linkmond.events import EventFactory
from linkmond.fanout import Fanout, SinkWorker
from linkmond.filters import GlobFilter
from linkmond.logs import configure as configure_logs
from linkmond.monitor import Monitor, tune_gc
from linkmond.notify import Notifier, watchdog_interval
from linkmond.sinks import Sink, build_sink
from linkmond.source import current_netns_name

log = structlog.get_logger("linkmond.daemon")

#: How often STATUS= is refreshed when nothing else wakes the main loop.
STATUS_EVERY = 5.0


class Daemon:
    """One run of linkmond: a monitor feeding a fan-out of sinks.

    ``reload_config`` is called on SIGHUP for the new configuration (None: nothing to
    re-read, SIGHUP only reopens files); ``sinks`` overrides building them from the config.
    """

    def __init__(
        self,
        config: Config,
        reload_config: Callable[[], Config] | None = None,
        sinks: dict[str, Sink] | None = None,
    ) -> None:
        self.config = config
        self.reload_config = reload_config
        self.factory = EventFactory(f"/linkmond/{socket.gethostname()}", current_netns_name())
        self.fanout = Fanout(self._workers(config, sinks))
        self.monitor = Monitor(
            self.factory,
            self.fanout.publish,
            groups=config.monitor.groups,
            interfaces=GlobFilter(config.monitor.interfaces),
            receive_buffer=config.monitor.receive_buffer,
        )
        self.notifier = Notifier()
        self.stop_reason = ""
        self._stop = asyncio.Event()
        self._wake = asyncio.Event()  # a reload is waiting
        self._reload_requested = False

    @staticmethod
    def _workers(config: Config, sinks: dict[str, Sink] | None = None) -> list[SinkWorker]:
        state_directory = config.state_directory()
        built = sinks or {
            name: build_sink(name, options, state_directory)
            for name, options in config.sinks.items()
        }
        return [SinkWorker(name, sink, config.sinks[name]) for name, sink in built.items()]

    def request_stop(self, reason: str) -> None:
        """Ask the main loop to end (signal handlers call this)."""
        self.stop_reason = reason
        self._stop.set()
        self._wake.set()

    def request_reload(self) -> None:
        """Ask the main loop to reload the configuration (SIGHUP)."""
        self._reload_requested = True
        self._wake.set()

    async def run(self) -> int:
        """Start, serve until stopped, shut down; returns the exit status."""
        await self.startup()
        try:
            await self.main_loop()
        finally:
            await self.shutdown()
        return 0

    # -- the three steps -------------------------------------------------------------------

    async def startup(self) -> None:
        """Sinks first (so nothing published is lost), then subscribe and fill the cache."""
        rtnl.load_system_names()
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self.request_stop, "SIGTERM")
        loop.add_signal_handler(signal.SIGINT, self.request_stop, "SIGINT")
        loop.add_signal_handler(signal.SIGHUP, self.request_reload)
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
        self.notifier.ready(self.status_line())
        log.info("started", netns=self.factory.netns, **counts)

    async def main_loop(self) -> None:
        """Feed the watchdog, refresh STATUS=, reload on SIGHUP, until asked to stop."""
        interval = watchdog_interval()
        tick = min(interval, STATUS_EVERY) if interval else STATUS_EVERY
        last_status = ""
        while not self._stop.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(tick):
                    await self._wake.wait()
            self._wake.clear()
            if self._stop.is_set():
                break
            if self._reload_requested:
                self._reload_requested = False
                await self.reload()
            if interval:
                self.notifier.watchdog()
            status = self.status_line()
            if status != last_status:
                self.notifier.status(status)
                last_status = status

    async def shutdown(self) -> None:
        """Stop reading, publish ``daemon.stopping`` last, drain the sinks within the timeout."""
        self.notifier.stopping()
        self.monitor.stop()
        self.fanout.release_held()  # so that daemon.stopping is the last event everywhere
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

    # -- reload ----------------------------------------------------------------------------

    async def reload(self) -> None:
        """SIGHUP: re-read the config; on success swap what changed, else keep the old one.

        Sinks whose settings did not change keep their queues and state (and reopen their
        files, for logrotate); new or changed sinks start; removed ones drain and close.
        """
        self.notifier.reloading()
        log.info("SIGHUP: reloading")
        try:
            new = self.reload_config() if self.reload_config else self.config
            kept, started = await self._swap_sinks(new)
        except ConfigError as exc:
            log.error("reload rejected; the old configuration stays in force", error=str(exc))
            self.fanout.reopen()
            self.notifier.ready(self.status_line())
            return
        if new.monitor.groups != self.config.monitor.groups:
            log.warning("[monitor] groups changed: takes effect at the next restart")
        self.monitor.interfaces = GlobFilter(new.monitor.interfaces)
        self.monitor.set_receive_buffer(new.monitor.receive_buffer)
        configure_logs(new.log.level, new.log.format)
        self.config = new
        log.info("reloaded", kept=kept, started=started)
        self.notifier.ready(self.status_line())

    async def _swap_sinks(self, new: Config) -> tuple[list[str], list[str]]:
        old = {w.name: w for w in self.fanout.workers}
        unchanged = {
            name
            for name, options in new.sinks.items()
            if name in old and old[name].options == options
        }
        state_directory = new.state_directory()
        # build every new sink before touching the running ones: a failure changes nothing
        fresh = {
            name: build_sink(name, options, state_directory)
            for name, options in new.sinks.items()
            if name not in unchanged
        }
        workers = []
        for name, options in new.sinks.items():
            if name in unchanged:
                workers.append(old[name])
            else:
                worker = SinkWorker(name, fresh[name], options)
                await worker.start()
                workers.append(worker)
        retired = [w for name, w in old.items() if name not in unchanged]
        self.fanout.workers = workers
        for worker in workers:
            if worker.name in unchanged:
                worker.sink.reopen()
        for worker in retired:
            await worker.drain(new.daemon.drain_timeout)
        return sorted(unchanged), sorted(fresh)

    def status_line(self) -> str:
        """What ``systemctl status`` shows: carrier, events, drops."""
        state = self.monitor.state
        links = len(state.tables["link"])
        counters = self.fanout.counters()
        dropped = sum(c["dropped"] for c in counters.values())
        return (
            f"{state.links_with_carrier()}/{links} links with carrier; "
            f"{self.monitor.stats.events} events; {dropped} dropped; "
            f"{self.monitor.stats.overflows} overflows"
        )
