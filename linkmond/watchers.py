"""The watched namespaces: one :class:`~linkmond.watcher.NetnsWatcher` per namespace that
``[monitor] netns`` names, started, followed and ended as the config and /run/netns say.

Each namespace has its own sockets, cache, dumps and saved state, and its own
:class:`~linkmond.publisher.Publisher`, which stamps its name on every event; one
:class:`~linkmond.events.EventFactory` serves them all, so ``seq`` is one sequence per daemon.

- ``"default"`` is the daemon's own namespace: its sockets are made in this process, so it
  needs no privilege (and it takes the socket systemd passed, if any). Its events carry the
  name ``ip netns identify`` would give it, else ``default``.
- Any other name is a namespace in /run/netns, held by an open descriptor
  (:class:`~linkmond.namespaces.Namespace`) and entered from a short-lived thread to make its
  sockets, which needs CAP_SYS_ADMIN. One that cannot be entered is logged as an error with
  its name; the others go on.
- /run/netns is followed with inotify (:class:`~linkmond.namespaces.NamespaceDir`): a
  namespace added later that the config names (every one, with ``"all"``) is watched from
  then on, and announced with its own ``daemon.started``; one deleted is let go of — its
  queued notifications read, ``daemon.stopping`` with reason ``netns removed`` published for
  it, its saved state removed — and the daemon goes on.
"""

from __future__ import annotations

import asyncio
import errno
import os
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Final

import structlog

from linkmond import __version__
from linkmond.config import MonitorConfig
from linkmond.events import Event, EventFactory
from linkmond.fanout import Fanout
from linkmond.filters import GlobFilter
from linkmond.namespaces import RUN_NETNS, Namespace, NamespaceDir, named_namespaces
from linkmond.publisher import Publisher
from linkmond.snapshot import StateFile
from linkmond.watcher import NetnsWatcher

log = structlog.get_logger("linkmond.watchers")

#: the name that stands for the daemon's own namespace in ``[monitor] netns``
OWN: Final = "default"
#: the ``daemon.stopping`` reason of a namespace that was deleted while watched
REMOVED: Final = "netns removed"
#: ... and of one the config no longer names after a reload
UNLISTED: Final = "no longer in [monitor] netns"
#: why the saved state of a deleted namespace is removed (for the log)
DELETED_STATE: Final = "the network namespace was deleted"


def _why(exc: OSError) -> str:
    """An OSError as a reader wants it: ``Operation not permitted``, not pyroute2's text."""
    return os.strerror(exc.errno) if exc.errno else str(exc)


class Watched:
    """One watched namespace: its handle, its publisher and watcher, and its saved state."""

    def __init__(
        self,
        namespace: Namespace,
        publisher: Publisher,
        watcher: NetnsWatcher,
        state_file: StateFile,
    ) -> None:
        self.namespace = namespace
        self.publisher = publisher
        self.watcher = watcher
        self.state_file = state_file
        #: what the last save had seen (messages read, events published): nothing new, no save
        self.saved_at: tuple[int, int] | None = None
        #: the cache was filled from a saved state, not saved yet in this run
        self.restored = False
        #: the namespace was deleted: its state is removed, never saved again
        self.removed = False

    @property
    def name(self) -> str:
        """The namespace's name, as its events carry it."""
        return self.namespace.name

    async def start(self, saving: bool, groups: list[str]) -> None:
        """Load the saved state (``saving``; else remove it), subscribe and fill the cache,
        then publish ``daemon.started`` for this namespace; the reconciliation of a loaded
        state follows it (``resync: true``)."""
        watcher = self.watcher
        if saving:
            # in a thread: a million saved routes take seconds to load, and other namespaces
            # are being read meanwhile (nothing else touches this cache yet)
            restored = await asyncio.to_thread(self.state_file.load, watcher.state, watcher.tables)
        else:
            self.state_file.discard()
            restored = frozenset()
        self.restored = bool(restored)
        await watcher.make_sockets()
        await watcher.start(restored)
        sock = watcher.sock
        self.publisher.daemon_event(
            "started",
            {
                "version": __version__,
                "pid": os.getpid(),
                "netns": self.name,
                "groups": groups,
                "receive_buffer": sock.receive_buffer if sock else 0,
                "counts": watcher.state.counts(),
                "links_with_carrier": watcher.state.links_with_carrier(),
            },
        )

    async def save(self, slice_seconds: float, *, always: bool = False) -> None:
        """Save the cache, unless it is not filled yet or (unless ``always``) nothing was
        read since the last save. A failure is logged; the old file, if any, stays as it
        was."""
        watcher = self.watcher
        if watcher.scheduler is None or not watcher.scheduler.ready:
            return  # still being filled silently: it is not what the sinks were told
        seen = (watcher.stats.messages, self.publisher.events)
        if (seen == self.saved_at and not always) or self.removed:
            return
        state_file = self.state_file
        try:
            report = await state_file.save(watcher.state, watcher.tables, slice_seconds)
        except OSError as exc:
            log.warning(
                "state not saved", path=str(state_file.path), error=exc.strerror or str(exc)
            )
            return
        except Exception as exc:  # a bug must not end the saving for the rest of the run
            log.error("state not saved", path=str(state_file.path), exc_info=exc)
            return
        if self.removed:  # the namespace was deleted while the state was being written
            state_file.discard(DELETED_STATE)
            return
        self.saved_at = seen
        self.restored = False
        log.info(
            "state saved",
            netns=self.name,
            path=str(state_file.path),
            bytes=report.bytes,
            seconds=round(report.seconds, 3),
            longest_slice_ms=round(report.longest_slice_ms, 2),
            longest_slice_cpu_ms=round(report.longest_slice_cpu_ms, 2),
            sync_seconds=round(report.sync_seconds, 3),
            slices=report.slices,
            **report.counts,
        )

    def counters(self) -> dict[str, int]:
        """This namespace's reader counters, and the events it published."""
        return {"events": self.publisher.events, **self.watcher.counters()}


class Watchers:
    """Every watched namespace by name, and the following of /run/netns.

    ``deliver`` takes every event (counted and fanned out by the daemon); ``fanout`` pauses
    the readers when a lossless sink is full and says which events any sink wants;
    ``state_directory`` says where saved states live (read anew: a reload may move it).
    """

    def __init__(
        self,
        factory: EventFactory,
        deliver: Callable[[Event], None],
        fanout: Fanout,
        monitor: MonitorConfig,
        *,
        saving: bool,
        state_directory: Callable[[], Path],
        passed_socket: socket.socket | None = None,
        run_dir: Path = RUN_NETNS,
        changed: Callable[[], None] | None = None,
    ) -> None:
        self.factory = factory
        self.deliver = deliver
        self.fanout = fanout
        self.monitor = monitor
        self.saving = saving
        self.state_directory = state_directory
        self.run_dir = run_dir
        #: called after a namespace was added or let go of
        self.changed = changed or (lambda: None)
        self._passed_socket = passed_socket
        #: the watched namespaces, by the name their events carry
        self.active: dict[str, Watched] = {}
        #: counters of the namespaces let go of during the run (daemon.stopping sums them)
        self.ended: dict[str, int] = {}
        self._ended_resync_events = 0
        self._starting: dict[str, asyncio.Task[None]] = {}
        #: namespaces let go of, being saved and closed
        self._closing: set[asyncio.Task[None]] = set()
        #: namespaces being started (their caches being filled), not announced yet
        self._opening: dict[str, Watched] = {}
        self._dir: NamespaceDir | None = None
        self._stopped = False

    # -- which namespaces ------------------------------------------------------------------

    @property
    def own_name(self) -> str:
        """The name the daemon's own namespace is reported by."""
        return self.factory.netns

    def _wants_own(self) -> bool:
        selection = self.monitor.netns
        return selection == "all" or OWN in selection or self.own_name in selection

    def _wants(self, name: str) -> bool:
        """Whether ``name`` in /run/netns is to be watched."""
        selection = self.monitor.netns
        return selection == "all" or name in selection

    def _named(self) -> list[str]:
        """The names other than the daemon's own that the config lists (all: none)."""
        selection = self.monitor.netns
        if selection == "all":
            return []
        return [n for n in selection if n not in (OWN, self.own_name)]

    def items(self) -> list[tuple[str, NetnsWatcher]]:
        """The watched namespaces by name, with their watchers (what the metrics read)."""
        return [(name, w.watcher) for name, w in self.active.items()]

    # -- start, follow, stop ---------------------------------------------------------------

    async def start(self) -> None:
        """Watch the daemon's own namespace (if named) and every named one there is now, each
        cache filled before this returns; then follow /run/netns."""
        if self._wants_own():
            await self._add(Namespace.own(self.own_name), own=True)
        elif self._passed_socket is not None:
            self._passed_socket.close()  # quiesced by `run`; PID 1 keeps its own copy
            self._passed_socket = None
        present = self._follow()
        names = present if self.monitor.netns == "all" else self._named()
        for name in names:
            if name not in present:
                log.warning(
                    "network namespace not there (yet): watched once it is added",
                    netns=name,
                    directory=str(self.run_dir),
                )
                continue
            self._start_named(name)
        await self.wait_started()

    def _follow(self) -> list[str]:
        """Follow /run/netns if any named namespace is wanted; the names there now."""
        if self.monitor.netns != "all" and not self._named():
            return named_namespaces(self.run_dir)
        if self._dir is None:
            self._dir = NamespaceDir(self._appeared, self._gone, self.run_dir)
            return self._dir.start()
        return named_namespaces(self.run_dir)

    def _appeared(self, name: str) -> None:
        if self._stopped or not self._wants(name):
            return
        if name in self.active or name in self._starting:
            return
        log.info("network namespace added: watching it", netns=name)
        self._start_named(name)

    def _start_named(self, name: str) -> None:
        """Start watching ``name`` in a task of its own, which :meth:`_gone` (the name
        deleted meanwhile), a reload or the stop can cancel."""
        task = asyncio.create_task(self._add_named(name), name=f"netns:{name}")
        self._starting[name] = task

        def done(finished: asyncio.Task[None]) -> None:
            if self._starting.get(name) is finished:  # not a successor of the same name
                del self._starting[name]

        task.add_done_callback(done)

    def _gone(self, name: str) -> None:
        starting = self._starting.pop(name, None)
        if starting is not None:
            starting.cancel()  # it cleans up after itself, and announced nothing yet
            return
        watched = self.active.get(name)
        if watched is not None and not watched.namespace.is_own:
            self.remove(name, REMOVED)

    async def _add_named(self, name: str) -> None:
        """Watch ``name`` of /run/netns; an error is logged with its name, not raised."""
        try:
            namespace = Namespace.open(name, self.run_dir)
        except OSError as exc:
            log.error("cannot open network namespace", netns=name, error=_why(exc))
            return
        try:
            ident = namespace.inode()
            for other in [*self.active.values(), *self._opening.values()]:
                if other.namespace.inode() == ident:
                    log.info("network namespace already watched", netns=name, as_=other.name)
                    namespace.close()
                    return
        except OSError as exc:
            namespace.close()
            log.error("cannot open network namespace", netns=name, error=_why(exc))
            return
        if name in (OWN, self.own_name):
            # another namespace under the name the daemon's own is reported by: its events
            # and saved state could not be told apart
            log.warning(
                "a namespace in /run/netns has the name of the daemon's own namespace: not watched",
                netns=name,
            )
            namespace.close()
            return
        await self._add(namespace, own=False)

    async def _add(self, namespace: Namespace, *, own: bool) -> None:
        """Start watching ``namespace``; its own namespace's failures are raised (nothing
        can be watched then), another's are logged and let go of."""
        monitor = self.monitor
        publisher = Publisher(
            self.factory,
            self.deliver,
            groups=monitor.groups,
            interfaces=GlobFilter(monitor.interfaces),
            wants=self.fanout.wants,
            netns=namespace.name,
        )
        passed, self._passed_socket = (self._passed_socket, None) if own else (None, None)
        watcher = NetnsWatcher(
            publisher,
            groups=monitor.groups,
            receive_buffer=monitor.receive_buffer,
            backpressure=self.fanout,
            passed_socket=passed,
            namespace=namespace,
        )
        state_file = StateFile(self.state_directory(), namespace.name, namespace)
        watched = Watched(namespace, publisher, watcher, state_file)
        self._opening[namespace.name] = watched
        try:
            await watched.start(self.saving, list(monitor.groups))
        except BaseException as exc:
            self._opening.pop(namespace.name, None)
            watcher.stop()
            if not own:
                namespace.close()
            if own or not isinstance(exc, Exception):
                raise
            if isinstance(exc, OSError) and exc.errno == errno.EPERM:
                log.error(
                    "cannot enter network namespace: entering another namespace needs "
                    "CAP_SYS_ADMIN (see the netns drop-in in docs/install.md)",
                    netns=namespace.name,
                    error=_why(exc),
                )
            elif isinstance(exc, OSError):
                log.error("cannot watch network namespace", netns=namespace.name, error=_why(exc))
            else:
                log.error("cannot watch network namespace", netns=namespace.name, exc_info=exc)
            return
        self._opening.pop(namespace.name, None)
        self.active[namespace.name] = watched
        counts = watcher.state.counts()
        log.info("watching network namespace", netns=namespace.name, **counts)
        self.changed()

    def remove(self, name: str, reason: str) -> None:
        """Let go of ``name``: read what its socket holds, publish ``daemon.stopping`` for it,
        then close it: a deleted namespace's saved state is removed (that instance is gone),
        an unlisted one's saved (it may be listed again: its state must be what was told)."""
        watched = self.active.pop(name)
        watched.watcher.stop()
        self.fanout.forget_netns(name)
        counters = watched.counters()
        watched.publisher.daemon_event(
            "stopping", {"reason": reason, "stats": counters, "sinks": self.fanout.counters()}
        )
        for key, value in counters.items():
            self.ended[key] = self.ended.get(key, 0) + value
        self._ended_resync_events += watched.publisher.resync_events
        log.info("stopped watching network namespace", netns=name, reason=reason, **counters)
        task = asyncio.create_task(self._close(watched, reason == REMOVED))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)
        self.changed()

    async def _close(self, watched: Watched, deleted: bool) -> None:
        if deleted:
            watched.removed = True
            watched.state_file.discard(DELETED_STATE)
        elif self.saving:
            await watched.save(0.02, always=True)  # nothing is read any more: exact
        watched.namespace.close()

    async def reconfigure(self, monitor: MonitorConfig) -> None:
        """A reload: new interface filters and receive buffer for every watcher, and the
        namespaces ``netns`` names now watched, those it no longer names let go of."""
        self.monitor = monitor
        interfaces = GlobFilter(monitor.interfaces)
        for watched in self.active.values():
            watched.publisher.interfaces = interfaces
            try:
                watched.watcher.set_receive_buffer(monitor.receive_buffer)
            except OSError as exc:
                log.warning("receive buffer not changed", netns=watched.name, error=_why(exc))
        for name, watched in list(self.active.items()):
            wanted = self._wants_own() if watched.namespace.is_own else self._wants(name)
            if not wanted:
                self.remove(name, UNLISTED)
        for name, task in list(self._starting.items()):
            if not self._wants(name):
                task.cancel()
        if self._wants_own() and not any(w.namespace.is_own for w in self.active.values()):
            await self._add(Namespace.own(self.own_name), own=True)
        present = self._follow()
        names = present if monitor.netns == "all" else self._named()
        for name in names:
            if name in present and name not in self.active and name not in self._starting:
                self._start_named(name)
        await self.wait_started()

    def stop(self) -> None:
        """Stop following /run/netns and every watcher (each reads what its socket holds)."""
        self._stopped = True
        if self._dir is not None:
            self._dir.close()
        for task in self._starting.values():
            task.cancel()  # each stops its watcher as it ends
        for watched in self.active.values():
            watched.watcher.stop()

    async def wait_started(self) -> None:
        """Wait for namespaces still being started (cancelled at stop) or closed."""
        tasks = [*self._starting.values(), *self._closing]
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    def close(self) -> None:
        """Let go of every namespace (after the last save)."""
        for watched in self.active.values():
            watched.namespace.close()

    # -- saving ----------------------------------------------------------------------------

    async def save(
        self, slice_seconds: float = 0.001, *, fresh_only: bool = False, always: bool = False
    ) -> None:
        """Save the cache of every watched namespace, one after the other; ``fresh_only``:
        only those not filled from a saved state (at start: a crash soon after still finds
        a state to reconcile); ``always``: even if nothing was read since the last save (at
        shutdown: the file is rewritten whatever happened to it meanwhile)."""
        for watched in list(self.active.values()):
            if not (fresh_only and watched.restored):
                await watched.save(slice_seconds, always=always)

    # -- numbers ---------------------------------------------------------------------------

    def counters(self) -> dict[str, int]:
        """Reader counters summed over every namespace watched during the run."""
        total = dict(self.ended)
        for watched in self.active.values():
            for key, value in watched.counters().items():
                total[key] = total.get(key, 0) + value
        return total

    def events(self) -> int:
        """Events published for every namespace watched during the run."""
        return self.ended.get("events", 0) + sum(w.publisher.events for w in self.active.values())

    def resync_events(self) -> int:
        """Events flagged ``resync`` published for every namespace watched during the run."""
        ended = self._ended_resync_events
        return ended + sum(w.publisher.resync_events for w in self.active.values())

    def link_counts(self) -> tuple[int, int]:
        """(links with carrier, links) over every watched namespace."""
        carrier = links = 0
        for watched in self.active.values():
            state = watched.watcher.state
            carrier += state.links_with_carrier()
            links += len(state.tables["link"])
        return carrier, links

    def __contains__(self, name: object) -> bool:
        return name in self.active

    def __len__(self) -> int:
        return len(self.active)
