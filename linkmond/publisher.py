"""From semantic changes to events: the monitor-wide filters, then stamping, then the fan-out.

One :class:`Publisher` serves each source (a watched namespace, or a replayed file): it
applies ``[monitor] groups`` and ``interfaces``, asks whether any sink wants the event at all
(an event nobody wants is never built), stamps ``seq``/``id``/``time``/``netns`` through the
:class:`~linkmond.events.EventFactory` and hands the event on.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from linkmond.events import Event, EventFactory
from linkmond.filters import GlobFilter
from linkmond.state import TABLES, Change

#: ``wants(type, ifname)``: whether any sink would take an event of this type and interface
Wants = Callable[[str, "str | None"], bool]


def _everything(type_: str, ifname: str | None) -> bool:
    return True


class Publisher:
    """Filters and stamps changes into events and passes them to ``deliver``."""

    def __init__(
        self,
        factory: EventFactory,
        deliver: Callable[[Event], None],
        *,
        groups: Iterable[str] = TABLES,
        interfaces: GlobFilter | None = None,
        wants: Wants = _everything,
        netns: str | None = None,
    ) -> None:
        """``netns``: the namespace stamped on the events (None: the factory's)."""
        self.factory = factory
        self.netns = netns
        self.deliver = deliver
        self.groups = frozenset(groups) | {"daemon"}
        self.interfaces = interfaces or GlobFilter(())
        self.wants = wants
        #: events published (after the filters)
        self.events = 0
        #: events flagged resync published (daemon.overflow reports how many a re-dump found)
        self.resync_events = 0

    def publish(self, change: Change, t_ns: int | None = None) -> bool:
        """Publish ``change`` unless a filter drops it; True if it was published."""
        type_ = change.type
        if type_.partition(".")[0] not in self.groups:
            return False
        ifname = change.ifname
        interfaces = self.interfaces
        if not interfaces.matches_all and ifname and not interfaces.match(ifname):
            return False
        if change.data.get("resync"):
            self.resync_events += 1
        self.events += 1
        if not self.wants(type_, ifname):
            return True  # counted as seen; no sink takes it, so it is never built
        self.deliver(self.factory.make(type_, change.subject, change.data, t_ns, self.netns))
        return True

    def daemon_event(self, kind: str, data: dict[str, Any]) -> Event:
        """Publish a ``daemon.<kind>`` event (never filtered) and return it."""
        event = self.factory.make(f"daemon.{kind}", "linkmond", data, netns=self.netns)
        self.events += 1
        self.deliver(event)
        return event
