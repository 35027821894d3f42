"""Durable delivery for remote sinks: a spool on disk, drained in order by one task.

A remote sink (webhook, nats) is a :class:`Transport`: one function, "send this batch", that
answers :class:`Delivered`, :class:`Retry` or :class:`Reject`. Everything else is here, once:

- ``put`` appends events to the SQLite spool (:mod:`linkmond.spool`, one transaction in a
  worker thread) and returns; no network here, so a slow or absent receiver delays no other
  sink, and an accepted event survives a crash or a restart (the next run sends it first).
- One task sends the oldest spooled events, ``batch`` at a time, and deletes a row only
  once the transport says it was delivered; the order is the spool's.
- A retry waits with full-jitter exponential backoff (:class:`linkmond.backoff.Backoff`),
  from ``retry_initial`` up to ``max_retry_delay``, raised to the receiver's own hint
  (``Retry-After``) within that cap. A transport may ask for one immediate retry (a pooled
  connection the peer had closed: nothing was sent).
- An event is given up, into the dead-letter file, when the transport rejects it, when it is
  older than ``max_age``, or when ``max_spool`` pushes it out.
- Log lines that recur (will retry, spool full, …) are written at most once per
  :data:`LOG_EVERY` seconds, with a count of those held back.

A reload reconfigures a queue in place (:meth:`DurableQueue.reconfigure`): same spool, same
task, a new transport and policy from the next attempt on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass
from typing import Any, Final, Protocol

import structlog

from linkmond.backoff import Backoff
from linkmond.events import Event
from linkmond.sinks.base import Sink, SinkError
from linkmond.spool import DeadLetter, Spool, SpooledEvent

log = structlog.get_logger("linkmond.durable")

#: a recurring log line of a sink (spool full, will retry, …) at most once per this many s
LOG_EVERY: Final = 10.0
#: at close, how long the delivery task may take to end once cancelled
CLOSE_WAIT: Final = 2.0


@dataclass(frozen=True)
class Delivered:
    """The receiver has every event of the batch: their rows are deleted."""


@dataclass(frozen=True)
class Retry:
    """Nothing (beyond the first ``delivered`` events) got through; try again later.

    ``after``: seconds the receiver asked for (capped at ``max_retry_delay``); ``immediate``:
    one retry at once is worth it (the request never left); ``message`` is the log line.
    """

    error: str = ""
    status: int | None = None
    response: str = ""
    after: float | None = None
    immediate: bool = False
    delivered: int = 0
    message: str = "delivery failed; will retry"
    level: int = logging.WARNING


@dataclass(frozen=True)
class Reject:
    """The receiver refused the event after the first ``delivered``: it can never be
    delivered, so it goes to the dead-letter file (``reason`` and the answer with it)."""

    reason: str
    status: int | None = None
    response: str = ""
    delivered: int = 0
    message: str = "the receiver refused the event; moved to the dead-letter file"


Outcome = Delivered | Retry | Reject


class Transport(Protocol):
    """What a remote sink contributes: how to send a batch, and where to (for the logs)."""

    #: ``scheme://host:port``, never a credential
    endpoint: str

    async def send(self, batch: Sequence[SpooledEvent]) -> Outcome:
        """Send ``batch`` (oldest first) and say what became of it; never raises for what
        the network or the receiver does."""


@dataclass(frozen=True)
class Policy:
    """How a queue retries and when it gives up (the sink's options)."""

    retry_initial: float = 1.0
    max_retry_delay: float = 300.0
    max_age: float = 86400.0
    #: events per :meth:`Transport.send`
    batch: int = 1


class Throttle:
    """At most one log line per ``every`` seconds for one recurring condition.

    :meth:`due` says whether to log now, and how many occurrences were not logged since the
    last line; :attr:`pending` is what was held back since then.
    """

    def __init__(self, every: float = LOG_EVERY) -> None:
        self.every = every
        self.pending = 0
        self._last: float | None = None

    def due(self, now: float | None = None) -> int | None:
        """None: suppress this occurrence (counted). Otherwise log it now, with the count."""
        now = time.monotonic() if now is None else now
        if self._last is not None and now - self._last < self.every:
            self.pending += 1
            return None
        self._last = now
        suppressed, self.pending = self.pending, 0
        return suppressed


def suppressed(count: int) -> dict[str, int]:
    """``suppressed=N`` for a throttled log line, when lines were held back since the last."""
    return {"suppressed": count} if count else {}


def explain(exc: BaseException) -> str:
    """An error for a log line: ``PATH: what is wrong`` for a file, else its type and text."""
    if isinstance(exc, OSError) and exc.filename and exc.strerror:
        return f"{exc.filename}: {exc.strerror}"
    return f"{type(exc).__name__}: {exc}"


def _count(outcome: Outcome, sent: int) -> int:
    """How many of the ``sent`` events ``outcome`` says were delivered."""
    return sent if isinstance(outcome, Delivered) else min(outcome.delivered, sent)


def _cancelling() -> bool:
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


class DurableSink(Sink):
    """A sink that delivers through a :class:`DurableQueue` (webhook, nats): ``emit`` only
    spools, ``aclose`` stops the queue, then the transport. A subclass sets :attr:`queue`
    and closes its transport in :meth:`close_transport`."""

    queue: DurableQueue

    def spooled(self) -> int:
        """Events spooled and not acknowledged yet."""
        return len(self.queue)

    async def emit(self, events: Sequence[Event]) -> None:
        """Spool the batch (one transaction) and wake the delivery; no network here."""
        await self.queue.put(events)

    async def aclose(self) -> None:
        """Stop delivering (after a short grace if healthy) and close; the spool keeps the
        rest for the next run."""
        await self.queue.close()
        await self.close_transport()

    async def close_transport(self) -> None:
        """Close what the transport holds open (sessions, connections)."""

    def retire(self, closing: Coroutine[Any, Any, None]) -> None:
        """Run ``closing`` (a replaced transport's close, at a reload) to its end in the
        background; a reference is kept so that the task is not collected midway."""
        task = asyncio.get_running_loop().create_task(closing)
        _retiring.add(task)
        task.add_done_callback(_retiring.discard)


#: replaced transports being closed (see DurableSink.retire)
_retiring: set[asyncio.Task[None]] = set()


class DurableQueue:
    """The spool of one remote sink and the task that delivers it through ``transport``.

    ``kind`` prefixes the log lines (``webhook delivery failed; will retry``); ``redact``
    cleans an error text of credentials before it is logged.
    """

    def __init__(
        self,
        name: str,
        kind: str,
        spool: Spool,
        transport: Transport,
        policy: Policy,
        *,
        grace: float = 1.0,
    ) -> None:
        self.name = name
        self.kind = kind
        self.spool = spool
        self.transport = transport
        self.policy = policy
        #: at close, how long a healthy queue may go on delivering what is spooled
        self.grace = grace
        self._backoff = Backoff(policy.retry_initial, policy.max_retry_delay, jitter=True)
        self._opened = False
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._empty = asyncio.Event()  # set while nothing is spooled
        self._changed = asyncio.Event()  # a reload replaced the transport: stop waiting
        #: the last attempt failed (a retry is pending); a healthy queue gets its grace
        self.failing = False
        self._throttles: dict[str, Throttle] = {}
        self._evicted = 0  # evictions since the last "spool full" line
        self._tries = (0, 0)  # (seq of the head row, attempts made at it)

    def __len__(self) -> int:
        """Events spooled, not delivered yet."""
        return len(self.spool)

    # -- lifecycle --------------------------------------------------------------------------

    async def open(self) -> None:
        """Open the spool (events of a previous run go first) and start delivering."""
        if not self._opened:
            try:
                pending = await asyncio.to_thread(self.spool.open)
            except Exception as exc:
                raise SinkError(f"cannot open the spool: {explain(exc)}") from exc
            self._opened = True
            if pending:
                log.info("resuming spooled events", sink=self.name, pending=pending)
        if self._task is None:
            self._wake.set()
            self._task = asyncio.create_task(self._run(), name=f"{self.kind}:{self.name}")

    def reconfigure(self, transport: Transport, policy: Policy) -> None:
        """Deliver through ``transport`` with ``policy`` from the next attempt on (a reload;
        a retry being waited for is made at once, with the new settings)."""
        self.transport = transport
        if policy != self.policy:
            self.policy = policy
            self._backoff = Backoff(policy.retry_initial, policy.max_retry_delay, jitter=True)
        self._changed.set()
        self._wake.set()

    async def put(self, events: Sequence[Event]) -> None:
        """Spool ``events`` (one transaction) and wake the delivery task."""
        await self.open()
        try:
            evicted = await asyncio.to_thread(
                self.spool.append, [(e.id, e.json_line) for e in events]
            )
        except Exception as exc:
            raise SinkError(f"cannot spool to {self.spool.db_path}: {explain(exc)}") from exc
        if evicted:
            self._evicted += evicted
            if (held := self._due("spool_full")) is not None:
                log.error(
                    f"{self.kind} spool full (max_spool): oldest events moved to the "
                    "dead-letter file",
                    sink=self.name,
                    evicted=self._evicted,
                    evicted_total=self.spool.evicted,
                    dead_letter=str(self.spool.deadletter_path),
                    **suppressed(held),
                )
                self._evicted = 0
        self._empty.clear()
        self._wake.set()

    async def close(self) -> None:
        """Stop delivering (after :attr:`grace` if healthy) and close; the spool keeps the
        rest for the next run."""
        if self._task is not None:
            if not self.failing:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.grace):
                        await self._empty.wait()
            self._task.cancel()
            # bounded: what is not acknowledged by then stays spooled for the next run
            await asyncio.wait([self._task], timeout=CLOSE_WAIT)
            self._task = None
        if self._opened:
            await asyncio.to_thread(self.spool.close)
            self._opened = False
        held = {what: t.pending for what, t in self._throttles.items() if t.pending}
        if held:
            log.warning(
                f"{self.kind} log lines held back by the rate limit since the last of each kind",
                sink=self.name,
                evicted=self._evicted or None,
                **held,
            )
            for throttle in self._throttles.values():
                throttle.pending = 0

    def _due(self, what: str) -> int | None:
        """Whether the recurring log line ``what`` may be written now (see :class:`Throttle`)."""
        return self._throttles.setdefault(what, Throttle()).due()

    # -- delivery ---------------------------------------------------------------------------

    async def _run(self) -> None:
        while not _cancelling():  # (a library may have swallowed the cancellation)
            self._wake.clear()  # before looking, so a put while we look is not missed
            policy = self.policy
            try:
                rows = await asyncio.to_thread(self.spool.oldest, policy.max_age, policy.batch)
            except Exception as exc:
                if (held := self._due("spool_read")) is not None:
                    log.error(
                        f"cannot read the {self.kind} spool",
                        sink=self.name,
                        error=explain(exc),
                        **suppressed(held),
                    )
                await asyncio.sleep(policy.retry_initial)
                continue
            if not rows:
                self._empty.set()
                await self._wake.wait()
                continue
            try:
                await self._attempt(rows)
            except Exception as exc:  # a spool (disk) error: keep the task alive, retry later
                if (held := self._due("delivery_error")) is not None:
                    log.error(
                        f"{self.kind} delivery error",
                        sink=self.name,
                        error=explain(exc),
                        **suppressed(held),
                    )
                await asyncio.sleep(policy.retry_initial)

    async def _attempt(self, rows: list[SpooledEvent]) -> None:
        """Send ``rows`` once (twice for an immediate retry) and act on the outcome; a retry
        waits here, then the caller reads the spool's head anew."""
        self._changed.clear()  # a reload from now on ends the wait for a retry at once
        outcome = await self._send(rows)
        delivered = _count(outcome, len(rows))
        if isinstance(outcome, Retry) and outcome.immediate and not _cancelling():
            outcome = await self._send(rows[delivered:])
            delivered += _count(outcome, len(rows) - delivered)
        if delivered:
            await asyncio.to_thread(self.spool.remove, *(row.seq for row in rows[:delivered]))
        if _cancelling():
            # a client library may swallow the cancellation (nats-py turns it into an error
            # it then ignores): closing ends this task all the same, once what was delivered
            # is off the spool (else the next run would send it again)
            raise asyncio.CancelledError
        if isinstance(outcome, Delivered):
            if self.failing:
                log.info(f"{self.kind} delivering again", sink=self.name)
            self.failing = False
            self._backoff.reset()
            return
        row = rows[delivered]
        seq, tries = self._tries
        attempts = tries + 1 if seq == row.seq else 1
        self._tries = (row.seq, attempts)
        if isinstance(outcome, Reject):
            if (held := self._due("refused")) is not None:
                log.error(
                    f"{self.kind}: {outcome.message}",
                    sink=self.name,
                    endpoint=self.transport.endpoint,
                    event_id=row.id,
                    status=outcome.status,
                    response=outcome.response or None,
                    reason=outcome.reason,
                    dead_letter=str(self.spool.deadletter_path),
                    **suppressed(held),
                )
            await asyncio.to_thread(
                self.spool.dead_letter,
                row,
                DeadLetter(outcome.reason, outcome.status, outcome.response or None, attempts),
            )
            return
        await self._wait_to_retry(row, outcome, attempts)

    async def _send(self, rows: Sequence[SpooledEvent]) -> Outcome:
        try:
            outcome = await self.transport.send(rows)
        except Exception as exc:  # a bug in a transport: a failed attempt, with its traceback
            log.error(f"{self.kind} transport error", sink=self.name, exc_info=exc)
            outcome = Retry(error=explain(exc))
        return outcome

    async def _wait_to_retry(self, row: SpooledEvent, outcome: Retry, attempts: int) -> None:
        self.failing = True
        policy = self.policy
        delay = self._backoff.next(outcome.after)
        if (held := self._due("tls" if outcome.level >= logging.ERROR else "retry")) is not None:
            log.log(
                outcome.level,
                f"{self.kind} {outcome.message}",
                sink=self.name,
                endpoint=self.transport.endpoint,
                event_id=row.id,
                status=outcome.status,
                error=outcome.error or None,
                response=outcome.response or None,
                attempt=attempts,
                retry_in=round(delay, 3),
                spooled=len(self.spool),
                **suppressed(held),
            )
        age_left = row.accepted + policy.max_age - time.time()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(max(0.0, min(delay, age_left))):
                await self._changed.wait()  # a reload: retry at once with the new settings
                return
        if age_left > delay:
            return  # pushed out by max_spool meanwhile? The spool's head says so
        await asyncio.to_thread(
            self.spool.dead_letter,
            row,
            DeadLetter(
                f"max_age: undelivered after {policy.max_age:g}s",
                outcome.status,
                outcome.response or outcome.error or None,
                attempts,
            ),
        )
        if (held := self._due("too_old")) is not None:
            log.error(
                f"{self.kind} event too old (max_age); moved to the dead-letter file",
                sink=self.name,
                event_id=row.id,
                attempts=attempts,
                **suppressed(held),
            )
