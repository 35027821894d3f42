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
import sys
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

import structlog

from linkmond import __version__, rtnl
from linkmond.config import Config, ConfigError
from linkmond.events import Event, EventFactory
from linkmond.fanout import Fanout, SinkCounters, SinkWorker
from linkmond.filters import GlobFilter
from linkmond.logs import configure as configure_logs
from linkmond.notify import Notifier, watchdog_interval
from linkmond.publisher import Publisher
from linkmond.sinks import Sink, SinkError, build_sink
from linkmond.sinks.base import LinkObserver
from linkmond.source import current_netns_name
from linkmond.watcher import NetnsWatcher, tune_gc
from linkmond.watchers import Watchers

if TYPE_CHECKING:
    from linkmond.metrics import MetricsServer

log = structlog.get_logger("linkmond.daemon")

_IO_THREADS = "linkmond-io"

#: How soon a sink's writer thread gets the interpreter from the busy reader (CPython's
#: default is 5 ms, paid at every blocking call the writer makes).
SWITCH_INTERVAL = 0.001

#: How often STATUS= is refreshed when nothing else wakes the main loop.
STATUS_EVERY = 5.0

#: How long the save of the state at shutdown may take (a million routes: a few seconds);
#: below the unit's TimeoutStopSec, so that a hung disk cannot hold the exit up.
SAVE_AT_STOP_TIMEOUT = 20.0


class ReloadError(Exception):
    """A reload cannot be carried out (a new sink cannot be built or started); the message
    names the sink and the reason."""


def _reason(exc: BaseException) -> str:
    """Why a reload failed, for the log: a config error's or our own message as it is,
    anything else with its type (``ValueError: Port out of range 0-65535``)."""
    if isinstance(exc, ConfigError | ReloadError | SinkError):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"


class Daemon:
    """One run of linkmond: a watcher per namespace (:class:`~linkmond.watchers.Watchers`),
    each feeding its publisher, all feeding one fan-out of sinks.

    ``reload_config`` is called on SIGHUP for the new configuration (None: nothing to
    re-read, SIGHUP only reopens files); ``sinks`` overrides building them from the config;
    ``passed_socket`` is the rtnetlink socket systemd created for ``linkmond.socket``.
    """

    def __init__(
        self,
        config: Config,
        reload_config: Callable[[], Config] | None = None,
        sinks: dict[str, Sink] | None = None,
        passed_socket: socket.socket | None = None,
    ) -> None:
        self.config = config
        self.reload_config = reload_config
        self.factory = EventFactory(f"/linkmond/{socket.gethostname()}", current_netns_name())
        self.fanout = Fanout(self._workers(config, sinks))
        #: each sink's counters by name, kept across reloads (a rebuilt sink takes them over)
        self.sink_counters: dict[str, SinkCounters] = {
            w.name: w.counters for w in self.fanout.workers
        }
        #: events handed to the sinks, by (netns, type): linkmond_events_total
        self.event_counts: dict[tuple[str, str], int] = {}
        #: the daemon's own events (daemon.stopping at the end), in its own namespace's name
        self.publisher = Publisher(self.factory, self._deliver)
        #: save the cache and reconcile it at the next start ([monitor] reconcile_on_start,
        #: for the whole run)
        self.saving = config.monitor.reconcile_on_start
        self.watchers = Watchers(
            self.factory,
            self._deliver,
            self.fanout,
            config.monitor,
            saving=self.saving,
            state_directory=self._state_directory,
            passed_socket=passed_socket,
            changed=self._namespaces_changed,
        )
        self.notifier = Notifier()
        self._saver: asyncio.Task[None] | None = None
        self.metrics: MetricsServer | None = None
        self.stop_reason = ""
        self._stop = asyncio.Event()
        self._wake = asyncio.Event()  # a reload is waiting
        self._reload_requested = False
        self._retiring: set[asyncio.Task[None]] = set()
        #: what keeps the current links (a nats sink's fleet view): told every link event
        self._link_observers: list[LinkObserver] = []
        self._started = False
        #: what puts each sink's new options in force, for the reload being carried out
        self._reconfigured: dict[str, Callable[[], None]] = {}
        #: the threads sinks write from (asyncio.to_thread), joined with a limit at the end
        self._executor = ThreadPoolExecutor(thread_name_prefix=_IO_THREADS)

    @staticmethod
    def _workers(config: Config, sinks: dict[str, Sink] | None = None) -> list[SinkWorker]:
        state_directory = config.state_directory()
        built = sinks or {
            name: build_sink(name, options, state_directory)
            for name, options in config.sinks.items()
        }
        return [SinkWorker(name, sink, config.sinks[name]) for name, sink in built.items()]

    def _deliver(self, event: Event) -> None:
        """Count the event by namespace and type (the metrics), tell the link observers of a
        link event, then fan it out."""
        key = (event.netns, event.type)
        self.event_counts[key] = self.event_counts.get(key, 0) + 1
        if self._link_observers and event.type.startswith("link."):
            for observer in self._link_observers:
                observer.link_event(event)
        self.fanout.publish(event)

    def _sync_links(self) -> None:
        """Give every link observer (a nats sink's fleet view) the current links of every
        watched namespace, as ``[monitor] interfaces`` lets them through."""
        self._link_observers = [
            observer
            for worker in self.fanout.workers
            if (observer := worker.sink.link_observer()) is not None
        ]
        if not self._link_observers:
            return
        interfaces = GlobFilter(self.config.monitor.interfaces)
        links = [
            (netns, link)
            for netns, watcher in self.watchers.items()
            for link in watcher.state.tables["link"].values()
            if interfaces.matches_all or interfaces.match(link["ifname"])
        ]
        for observer in self._link_observers:
            observer.sync(links)

    def _namespaces_changed(self) -> None:
        if self._started:  # at start, the first sync follows every namespace's
            self._sync_links()

    def _state_directory(self) -> Path:
        return self.config.state_directory()  # the current config's: a reload may move it

    def namespaces(self) -> list[tuple[str, NetnsWatcher]]:
        """The watched namespaces by name, with their watchers (what the metrics read)."""
        return self.watchers.items()

    def resync_events(self) -> int:
        """Events flagged ``resync`` published during the run, in every namespace."""
        return self.watchers.resync_events()

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
            await self._join_threads()
        return 0

    async def _join_threads(self) -> None:
        """Wait (bounded) for the worker threads sinks wrote from, then let them go.

        asyncio.run would join them without a limit, so a thread stuck writing to a pipe
        nobody reads, or to a hung file system, would keep the process alive after SIGTERM.
        Past the drain timeout the process exits regardless: what could be delivered was.
        """
        self._executor.shutdown(wait=False, cancel_futures=True)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.config.daemon.drain_timeout
        while any(t.name.startswith(_IO_THREADS) for t in threading.enumerate()):
            if loop.time() > deadline:
                log.error("a sink's writer thread is stuck; exiting without it")
                with contextlib.suppress(Exception):
                    sys.stdout.flush()
                    sys.stderr.flush()
                os._exit(0)
            await asyncio.sleep(0.05)

    # -- the three steps -------------------------------------------------------------------

    async def startup(self) -> None:
        """Sinks first (so nothing published is lost), then subscribe and fill the cache of
        every watched namespace (each announced by its ``daemon.started``)."""
        rtnl.load_system_names()
        sys.setswitchinterval(SWITCH_INTERVAL)
        loop = asyncio.get_running_loop()
        loop.set_default_executor(self._executor)
        loop.add_signal_handler(signal.SIGTERM, self.request_stop, "SIGTERM")
        loop.add_signal_handler(signal.SIGINT, self.request_stop, "SIGINT")
        loop.add_signal_handler(signal.SIGHUP, self.request_reload)
        await self._start_metrics()
        await self.fanout.start()
        await self.watchers.start()
        self._started = True
        self._sync_links()
        tune_gc()
        self.notifier.ready(self.status_line())
        log.info("started", version=__version__, netns=sorted(self.watchers.active))
        if self.saving:  # a fresh cache is saved at once: a crash soon after still has one
            self._saver = asyncio.create_task(self._save_periodically())

    async def main_loop(self) -> None:
        """Refresh STATUS= and carry out reloads until asked to stop.

        The watchdog is fed by its own timer (see :meth:`_feed_watchdog`), so a long reload
        cannot starve it, while a stuck event loop still does.
        """
        interval = watchdog_interval()
        if interval:
            self._feed_watchdog(interval)
        last_status = ""
        while not self._stop.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(STATUS_EVERY):
                    await self._wake.wait()
            self._wake.clear()
            if self._stop.is_set():
                break
            if self._reload_requested:
                self._reload_requested = False
                await self.reload()
            status = self.status_line()
            if status != last_status:
                self.notifier.status(status)
                last_status = status

    def _feed_watchdog(self, interval: float) -> None:
        if self._stop.is_set():
            return
        self.notifier.watchdog()
        asyncio.get_running_loop().call_later(interval, self._feed_watchdog, interval)

    async def shutdown(self) -> None:
        """Stop reading, publish ``daemon.stopping`` last, drain the sinks within the timeout."""
        self.notifier.stopping()
        self.watchers.stop()
        await self.watchers.wait_started()
        self.fanout.release_held()  # so that daemon.stopping is the last event everywhere
        stats = self.stats()
        self.publisher.daemon_event(
            "stopping",
            {
                "reason": self.stop_reason or "stopped",
                "stats": stats,
                "sinks": self.fanout.counters(),
            },
        )
        saved = asyncio.create_task(self._save_at_stop())  # while the sinks drain
        left = await self.fanout.drain(self.config.daemon.drain_timeout)
        await saved
        self.watchers.close()
        if self._retiring:
            await asyncio.gather(*self._retiring, return_exceptions=True)
        if self.metrics is not None:  # served until now: the final counts can be scraped
            await self.metrics.stop()
        log.info("stopped", reason=self.stop_reason, undelivered=sum(left.values()), **stats)

    async def _start_metrics(self) -> None:
        """Serve ``[metrics] listen``, first of all: an address that cannot be bound starts
        nothing (:class:`linkmond.metrics.ListenError`; ``run`` exits 78)."""
        listen = self.config.metrics.listen
        if listen is None:
            return
        # prometheus-client is imported only when metrics are asked for
        from linkmond.metrics import MetricsServer, snapshot  # noqa: PLC0415

        server = MetricsServer(listen, lambda: snapshot(self))
        await server.start()
        self.metrics = server

    # -- reload ----------------------------------------------------------------------------

    async def reload(self) -> None:
        """SIGHUP: re-read the config; on success swap what changed, else keep the old one.

        Sinks whose settings did not change keep their queues and state (and reopen their
        files, for logrotate); durable sinks (webhook) are reconfigured in place, keeping
        their spool; other new or changed sinks start; removed ones drain and close.
        Everything that can fail (reading the config, building and starting the new sinks)
        happens before anything running is touched: a reload that fails for any reason is
        logged with the reason, leaves no new sink running, and the old configuration goes on
        (its files reopened all the same).
        """
        self.notifier.reloading()
        log.info("SIGHUP: reloading")
        try:
            new = self.reload_config() if self.reload_config else self.config
            unchanged, started = await self._start_sinks(new)
        except Exception as exc:
            log.error(
                "reload rejected; the old configuration stays in force",
                error=_reason(exc),
                # a traceback only for what no check foresaw: it is a bug somewhere
                **({} if isinstance(exc, ConfigError | ReloadError) else {"exc_info": exc}),
            )
            self.fanout.reopen()
            self.notifier.ready(self.status_line())
            return
        self._swap_sinks(new, unchanged, started)
        try:
            await self.watchers.reconfigure(new.monitor)
        except Exception as exc:  # the own namespace could not be watched again (EMFILE…)
            log.error("[monitor] not fully applied", error=_reason(exc), exc_info=exc)
        if list(new.monitor.groups) != list(self.config.monitor.groups):
            log.warning("[monitor] groups changed: takes effect at the next restart")
        if new.monitor.reconcile_on_start != self.saving:
            log.warning("[monitor] reconcile_on_start changed: takes effect at the next restart")
        if new.metrics != self.config.metrics:
            log.warning("[metrics] listen changed: takes effect at the next restart")
        configure_logs(new.log.level, new.log.format)
        self.config = new
        self._sync_links()
        log.info("reloaded", kept=sorted(unchanged), started=sorted(w.name for w in started))
        self.notifier.ready(self.status_line())

    async def _start_sinks(self, new: Config) -> tuple[set[str], list[SinkWorker]]:
        """Build and start the sinks ``new`` adds or changes; returns the names of the sinks
        kept as they are and the started workers. Raises (:class:`ConfigError`,
        :class:`ReloadError`) with nothing left running: a started sink is closed again."""
        old = {w.name: w for w in self.fanout.workers}
        self._reconfigured = {}
        for name, options in new.sinks.items():
            # a durable sink is reconfigured in place, keeping its spool and delivery; its
            # secret or CA file is read again even under the same name (new contents)
            if name in old and type(old[name].options) is type(options):
                apply = old[name].sink.prepare(options)
                if apply is not None:
                    self._reconfigured[name] = apply
        unchanged = {
            name
            for name, options in new.sinks.items()
            if name in self._reconfigured or (name in old and old[name].options == options)
        }
        state_directory = new.state_directory()
        fresh: dict[str, Sink] = {}
        for name, options in new.sinks.items():
            if name in unchanged:
                continue
            try:
                fresh[name] = build_sink(name, options, state_directory)
            except ConfigError:
                raise
            except Exception as exc:
                raise ReloadError(f"sinks.{name}: cannot build the sink: {_reason(exc)}") from exc
        started: list[SinkWorker] = []
        try:
            for name, sink in fresh.items():
                worker = SinkWorker(name, sink, new.sinks[name])
                try:
                    await worker.start(strict=True)
                except Exception as exc:
                    raise ReloadError(f"sinks.{name}: cannot start: {_reason(exc)}") from exc
                started.append(worker)
        except BaseException:
            await asyncio.gather(*(w.drain(0) for w in started))
            raise
        return unchanged, started

    def _swap_sinks(self, new: Config, unchanged: set[str], started: list[SinkWorker]) -> None:
        """Put the started workers in place of the ones they replace (nothing here fails)."""
        old = {w.name: w for w in self.fanout.workers}
        fresh = {w.name: w for w in started}
        for worker in started:  # counters by sink name: a rebuilt sink continues them
            worker.counters = self.sink_counters.setdefault(worker.name, worker.counters)
        self.fanout.workers = [
            old[name] if name in unchanged else fresh[name] for name in new.sinks
        ]
        for name, apply in self._reconfigured.items():
            apply()
            old[name].update(new.sinks[name])
        self._reconfigured = {}
        for name in unchanged:
            old[name].sink.reopen()
        retired = [w for name, w in old.items() if name not in unchanged]
        if retired:  # drained in the background, together: a reload never waits for them
            task = asyncio.create_task(self._retire(retired, new.daemon.drain_timeout))
            self._retiring.add(task)
            task.add_done_callback(self._retiring.discard)

    @staticmethod
    async def _retire(workers: list[SinkWorker], timeout: float) -> None:
        await asyncio.gather(*(w.drain(timeout) for w in workers))

    def stats(self) -> dict[str, int | float]:
        """The reader's counters: messages, events, malformed, overflows, resyncs, dumps by
        kind, and how often and how long full lossless sinks paused the reader."""
        stats: dict[str, int | float] = {"events": self.publisher.events}
        for key, value in self.watchers.counters().items():
            stats[key] = stats.get(key, 0) + value
        stats.update(self.fanout.pause_stats())
        return stats

    def status_line(self) -> str:
        """What ``systemctl status`` shows: carrier, events, drops, overflows, pauses."""
        carrier, links = self.watchers.link_counts()
        counters = self.fanout.counters()
        dropped = sum(c["dropped"] for c in counters.values())
        pauses = self.fanout.pause_stats()
        stats = self.watchers.counters()
        watched = len(self.watchers)
        return (
            (f"{watched} namespaces; " if watched != 1 else "")
            + f"{carrier}/{links} links with carrier; "
            f"{self.publisher.events + self.watchers.events()} events; {dropped} dropped; "
            f"{stats.get('overflows', 0)} overflows; "
            f"reader paused {pauses['pauses']}x for {pauses['paused_seconds']:.1f}s"
        )

    # -- the saved state (linkmond.snapshot) -----------------------------------------------

    async def _save_periodically(self) -> None:
        """Save the caches not filled from a saved state now, then every ``[daemon]
        save_interval`` (read anew each time, so a reload changes it from the next save on;
        0: only at shutdown)."""
        await self.watchers.save(fresh_only=True)
        while True:
            interval = self.config.daemon.save_interval
            await asyncio.sleep(interval or 60.0)
            if interval:
                await self.watchers.save()

    async def _save_at_stop(self) -> None:
        """The last save, after reading stopped (so it is exact), bounded in time."""
        if self._saver is not None:
            self._saver.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._saver
        if not self.saving:
            return
        try:
            async with asyncio.timeout(SAVE_AT_STOP_TIMEOUT):
                await self.watchers.save(0.02, always=True)  # nothing to read: larger slices
        except TimeoutError:
            log.error(
                "state not saved: took too long",
                directory=str(self.config.state_directory()),
                timeout=SAVE_AT_STOP_TIMEOUT,
            )
