"""The interface every sink implements: ``start``, ``emit`` and ``aclose``.

Queues, filters, retries, drop counting and drain timeouts live in the shared
:class:`linkmond.fanout.SinkWorker`; a sink only knows how to deliver a batch of events to
its destination, which keeps each one small.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from linkmond.events import Event

if TYPE_CHECKING:
    from linkmond.config import SinkBase


class SinkError(Exception):
    """Delivery failed after ``delivered`` events of the batch; the worker retries the rest."""

    def __init__(self, message: str, delivered: int = 0) -> None:
        super().__init__(message)
        self.delivered = delivered


class LinkObserver(Protocol):
    """Something that keeps every current link (the nats sink's fleet view): told the whole
    set, then each link event, whatever the sink's own filters."""

    def sync(self, links: Iterable[tuple[str, dict[str, Any]]]) -> None:
        """Every current link as (netns, link fields)."""

    def link_event(self, event: Event) -> None:
        """One ``link.*`` event."""


class Sink(abc.ABC):
    """A destination for events. Methods are called from one worker task, never concurrently."""

    #: the sink's name in the config (``[sinks.<name>]``), for logs and counters
    name: str = "sink"

    async def start(self) -> None:  # noqa: B027 - optional hook
        """Acquire resources; failing here is logged and retried by the worker through emit."""

    @abc.abstractmethod
    async def emit(self, events: Sequence[Event]) -> None:
        """Deliver ``events`` in order; raise :class:`SinkError` saying how many got through.

        ``delivered`` must be exact: the worker retries from the event after them, so a count
        too high loses events and one too low repeats them.
        """

    async def aclose(self) -> None:  # noqa: B027 - optional hook
        """Flush and release resources."""

    def reopen(self) -> None:  # noqa: B027 - optional hook
        """SIGHUP: reopen files (logrotate). Called from the event loop; must not block."""

    def prepare(self, options: SinkBase) -> Callable[[], None] | None:
        """A reload with new ``options`` for this sink: check and load what they name (a
        secret, a CA file) and return what puts them in force, which cannot fail; raise
        :class:`linkmond.config.ConfigError` with nothing changed. None (the default): the
        sink cannot be reconfigured, and a reload builds a new one instead."""
        return None

    def spooled(self) -> int | None:
        """Events held on disk for delivery (a durable sink's spool); None: no spool."""
        return None

    def link_observer(self) -> LinkObserver | None:
        """What this sink keeps of the current links, if anything (see :class:`LinkObserver`)."""
        return None
