"""What to dump when: the initial fill, per-device re-reads, full resyncs after an overflow.

:class:`DumpScheduler` is pure bookkeeping with the socket injected (anything with
``request_dump(table, family, oif) -> seq``) and the consequences handed to callbacks, so
every rule here is unit-tested without a kernel:

- One dump runs at a time, on a socket of its own (see :mod:`linkmond.watcher`).
- The initial dump of every watched table fills the cache silently; the daemon is ready when
  it is done.
- A re-read of one device's routes or neighbours (after the kernel may have removed them
  silently) is queued unless an equal or wider dump is already queued. One that is already
  running does not count: it may have passed the entries before the change that asked.
- A cache restored from a saved state (:mod:`linkmond.snapshot`) is stale the way a cache
  is after an overflow: a *reconciliation* round re-dumps every table at once and reports
  what differs (:meth:`DumpScheduler.reconcile`); the daemon is ready before it runs. A table
  the saved state did not hold is filled silently in that round.
- An overflow (``ENOBUFS`` on read) re-dumps every table once the running dump ends; that
  covers whatever else was queued. Another overflow during that round means one more round.
  The round begins only once the notification socket has been read empty
  (:meth:`notifications_drained`): what was queued there before the loss is older than the
  loss, and must not count as newer than the dump.
- ``NLM_F_DUMP_INTR`` (the table changed under the dump, which may have skipped entries):
  the dump is retried; after :data:`MAX_DUMP_ATTEMPTS` its entries are kept but nothing is
  swept on its word.
- ``ENOBUFS``/``EBUSY`` answering the request, or a dump that stops sending parts although
  the socket is read empty (the kernel can leave a dump that met a full buffer stalled),
  means a fresh socket and a full resync.
- ``ENODEV`` answering a per-device dump: the device is gone, so is everything through it.
- A *settling* re-read (after an admin-down or an address removal) is repeated
  :data:`SETTLE_DELAY` seconds later, and again while a pass still finds entries gone. The
  kernel announces the admin-down (``RTM_NEWLINK``) *before* its NETDEV_DOWN notifiers flush
  the device's routes and neighbours, and route and neighbour dumps no longer wait for the
  RTNL lock (Linux 6.x), so the first dump can run while the flush is still under way and see
  routes that are gone a moment later. The kernel sends nothing when the flush is done.
"""

from __future__ import annotations

import errno
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Final, Protocol

import structlog

from linkmond.state import Scope

log = structlog.get_logger("linkmond.scheduler")

#: How often a dump flagged NLM_F_DUMP_INTR is tried before its result is taken as it is.
MAX_DUMP_ATTEMPTS: Final = 3
#: Seconds between the passes of a settling re-read, and how many passes at most.
SETTLE_DELAY: Final = 0.25
MAX_SETTLE_PASSES: Final = 8


class DumpSocket(Protocol):
    """What the scheduler needs of a socket: sending a dump request."""

    def request_dump(self, table: str, family: int = 0, oif: int | None = None) -> int:
        """Send the request; return its sequence number."""


@dataclass
class Dump:
    """One dump request and what has been seen of its answer."""

    scope: Scope
    #: report what the dump finds (False only while the cache is first filled)
    emit: bool = True
    attempt: int = 1
    seq: int = 0
    interrupted: bool = False
    #: answer messages received so far, for the stall check
    parts: int = 0
    #: the socket was read empty since the last part arrived
    drained: bool = False
    #: parts counted at the previous stall check
    parts_at_check: int = field(default=-1, repr=False)
    #: 0, or which pass of a settling re-read this is (see the module docstring)
    settle_pass: int = 0

    @property
    def table(self) -> str:
        """The table dumped."""
        return self.scope.table

    @property
    def targeted(self) -> bool:
        """True for a dump of one device (or family) rather than the whole table."""
        return self.scope.oif is not None or self.scope.family != 0

    def covers(self, scope: Scope) -> bool:
        """Whether this dump, when it runs, reads everything ``scope`` names."""
        mine = self.scope
        return (
            mine.table == scope.table
            and mine.family in (0, scope.family)
            and (mine.oif is None or mine.oif == scope.oif)
        )


@dataclass
class DumpCounters:
    """How many dumps of each kind were started (stats, and the tests' proof of cost)."""

    full: int = 0
    targeted: int = 0


class DumpScheduler:
    """Queues dumps and runs them one at a time on ``sock``.

    Callbacks: ``begin(dump)`` before a dump's request is sent (start marking keys);
    ``finish(dump, sweep)`` when it ended (sweep: remove what it did not show, and return how
    many; else forget the marks); ``idle(overflow_round)`` when nothing is left to dump
    (``overflow_round``: a full resync after an overflow just ended); ``reset(reason)`` when
    the socket must be replaced (the callee assigns :attr:`sock`, then the scheduler starts a
    full resync); ``later(delay, fn, *args)`` runs ``fn`` after ``delay`` seconds (the event
    loop's ``call_later``; a test's recorder).
    """

    def __init__(
        self,
        sock: DumpSocket,
        tables: Iterable[str],
        *,
        begin: Callable[[Dump], None],
        finish: Callable[[Dump, bool], int],
        idle: Callable[[bool], None],
        reset: Callable[[str], None],
        later: Callable[..., object] | None = None,
        kick: Callable[[Callable[[], None]], object] | None = None,
        filtered: bool = True,
    ) -> None:
        self.sock = sock
        self.tables = tuple(tables)
        self.begin = begin
        self.finish = finish
        self.idle = idle
        self.reset = reset
        self.later = later
        #: ``kick(fn)`` runs ``fn`` soon (the loop's call_soon): dumps then start after the
        #: caller's current work instead of inside it; None starts them at once
        self.kick = kick
        self._kicked = False
        #: the kernel accepted strict checking: per-device dumps are filtered by the kernel
        self.filtered = filtered
        self.queue: deque[Dump] = deque()
        self.current: Dump | None = None
        self.counters = DumpCounters()
        self.ready = False  # the initial fill is done
        self.overflow_pending = False
        self.in_overflow_round = False
        #: what the current (or last) full round is: "overflow", or "reconcile" (a restored
        #: cache, see :meth:`reconcile`); the next round's kind waits in _next_round
        self.round_kind = "overflow"
        self._next_round = "overflow"
        #: tables whose cache was never filled: a full round dumps them silently
        self.quiet: set[str] = set()
        #: an overflow's round waits until the notifications queued before it are read
        self.wait_for_drain = False
        self.stopped = False
        self._failed_requests = 0

    # -- what is asked for ------------------------------------------------------------------

    def initial(self) -> None:
        """Fill the cache: every table, silently."""
        self.queue.extend(Dump(Scope(t), emit=False) for t in self.tables)
        self._start_soon()

    def reconcile(self, restored: Iterable[str]) -> None:
        """The cache holds a saved state of the ``restored`` tables instead of nothing: ready
        at once, then one full round (like an overflow's) that reports, flagged resync, what
        differs from the kernel. The other watched tables are filled silently in it."""
        restored = set(restored)
        self.quiet = {t for t in self.tables if t not in restored}
        self.ready = True
        self.overflow_pending = True
        self._next_round = "reconcile"
        self._start_soon()

    def reread(
        self, table: str, family: int = 0, oif: int | None = None, *, settle: bool = False
    ) -> None:
        """Dump ``table`` (of one family and/or device) again and report what differs.

        ``settle``: the kernel may still be removing entries of that scope (see the module
        docstring); read it again after a moment, until nothing more has gone.
        """
        if table not in self.tables:
            return
        if not self.filtered:
            family, oif = 0, None  # the kernel would ignore the filter: dump it whole
        self._queue(Dump(Scope(table, family, oif), settle_pass=1 if settle else 0))

    def _queue(self, dump: Dump) -> None:
        for queued in self.queue:
            if queued.covers(dump.scope):
                # a fresh trigger restarts settling; a later pass rides on a plain dump
                if dump.settle_pass == 1 or (dump.settle_pass and not queued.settle_pass):
                    queued.settle_pass = dump.settle_pass
                return
        self.queue.append(dump)
        self._start_soon()

    def notifications_drained(self) -> None:
        """The notification socket was read empty: a waiting overflow round may begin."""
        if self.wait_for_drain:
            self.wait_for_drain = False
            self._start_soon()

    def _settle_again(self, scope: Scope, settle_pass: int) -> None:
        if not self.stopped:
            self._queue(Dump(scope, settle_pass=settle_pass))

    def overflow(self) -> None:
        """Notifications were lost: re-dump everything (after the running dump, and after
        the notifications still queued are read: :meth:`notifications_drained`)."""
        self.wait_for_drain = True
        if not self.ready:
            # still filling the cache: what was lost predates readiness; fill it again
            self.queue = deque(Dump(Scope(t), emit=False) for t in self.tables)
        else:
            self.overflow_pending = True
        self._start_soon()

    # -- what the socket says ---------------------------------------------------------------

    def is_answer(self, seq: int) -> bool:
        """Whether a message with ``seq`` (sent to us) belongs to the running dump."""
        current = self.current
        return current is not None and current.seq == seq

    def part(self, interrupted: bool) -> None:
        """One message of the running dump's answer arrived."""
        current = self.current
        if current is not None:
            current.parts += 1
            current.drained = False
            if interrupted:
                current.interrupted = True

    def drained(self) -> None:
        """The socket was read until empty."""
        if self.current is not None:
            self.current.drained = True

    def done(self, error: int = 0) -> None:
        """The running dump ended (NLMSG_DONE or NLMSG_ERROR; ``error`` is negative errno)."""
        dump = self.current
        if dump is None:
            return
        self.current = None
        if error in (-errno.ENOBUFS, -errno.EBUSY):
            # the request met a full receive buffer: the kernel may keep the dump
            # half-started on this socket, so start over on a fresh one
            self._reset(f"{dump.table} dump failed: {errno.errorcode[-error]}", dump)
            return
        if error == -errno.ENODEV and dump.scope.oif is not None:
            self.finish(dump, True)  # the device is gone, and so is all that went through it
        elif error:
            log.error("dump refused by the kernel", table=dump.table, errno=-error)
            self.finish(dump, False)
        elif dump.interrupted and dump.attempt < MAX_DUMP_ATTEMPTS:
            self.finish(dump, False)
            retry = Dump(dump.scope, dump.emit, attempt=dump.attempt + 1)
            retry.settle_pass = dump.settle_pass
            self.queue.appendleft(retry)
        elif dump.interrupted:
            # still torn after retries (a storm): keep what it added, remove nothing on its word
            log.warning("dump kept being interrupted; not sweeping", table=dump.table)
            self.finish(dump, False)
        else:
            removed = self.finish(dump, True)
            if not dump.targeted:
                self.quiet.discard(dump.table)  # filled now: later rounds report
            again = dump.settle_pass == 1 or removed > 0
            if dump.settle_pass and again and dump.settle_pass < MAX_SETTLE_PASSES and self.later:
                self.later(SETTLE_DELAY, self._settle_again, dump.scope, dump.settle_pass + 1)
        self._start_soon()

    def check_stall(self, reading: bool = True) -> None:
        """Called every few seconds: a dump that sent nothing since the last check although
        the socket was read empty is stalled in the kernel. ``reading`` False (the reader is
        paused by a full sink) makes no judgement: the dump waits for us, not we for it."""
        dump = self.current
        if dump is None:
            return
        if reading and dump.parts == dump.parts_at_check and dump.drained:
            self.current = None
            self._reset(f"{dump.table} dump stalled", dump)
            return
        dump.parts_at_check = dump.parts

    def stop(self) -> None:
        """No more dumps (shutdown)."""
        self.stopped = True
        self.queue.clear()

    # -- running them -----------------------------------------------------------------------

    def _start_soon(self) -> None:
        if self.kick is None:
            self._start_next()
        elif not self._kicked:
            self._kicked = True
            self.kick(self._kicked_start)

    def _kicked_start(self) -> None:
        self._kicked = False
        self._start_next()

    def _reset(self, reason: str, dump: Dump) -> None:
        self.finish(dump, False)
        self.queue.clear()
        if self.stopped:
            return
        log.warning("resetting the netlink socket", reason=reason)
        self.reset(reason)
        if self.in_overflow_round and self.round_kind == "reconcile":
            self._next_round = "reconcile"  # the round cut short is carried on as what it was
        if self.ready:
            self.overflow_pending = True
            self.in_overflow_round = False  # a round cut short: the next one covers it
        else:
            self.queue.extend(Dump(Scope(t), emit=False) for t in self.tables)
        self._start_next()

    def _start_next(self) -> None:
        if self.current is not None or self.stopped:
            return
        if self.wait_for_drain and (self.overflow_pending or not self.ready):
            return  # notifications from before the loss are still queued
        if self.overflow_pending and not self.in_overflow_round:
            self.overflow_pending = False
            self.in_overflow_round = True
            self.round_kind, self._next_round = self._next_round, "overflow"
            self.queue = deque(Dump(Scope(t), emit=t not in self.quiet) for t in self.tables)
        while self.queue:
            dump = self.queue.popleft()
            self.begin(dump)
            try:
                dump.seq = self.sock.request_dump(dump.table, dump.scope.family, dump.scope.oif)
            except OSError as exc:
                self._failed_requests += 1
                if self._failed_requests > MAX_DUMP_ATTEMPTS:
                    # fresh sockets keep refusing: give up until the next overflow or re-read
                    log.error("dump requests keep failing", table=dump.table, error=str(exc))
                    self.finish(dump, False)
                    self.queue.clear()
                    self._failed_requests = 0
                    return
                self._reset(f"{dump.table} dump request failed: {exc}", dump)
                return
            self._failed_requests = 0
            if dump.targeted:
                self.counters.targeted += 1
            else:
                self.counters.full += 1
            self.current = dump
            return
        was_round = self.in_overflow_round
        self.in_overflow_round = False
        self.ready = True
        self.idle(was_round)
        if self.overflow_pending:
            self._start_next()  # overflowed again during the round: once more
