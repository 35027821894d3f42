"""Journal sink: the systemd journal's native protocol (to be written: issue 3)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from linkmond.events import Event
from linkmond.sinks.base import Sink, SinkError


class JournalSink(Sink):
    """Placeholder with the final constructor; see issue 3."""

    def __init__(self, socket_path: Path, priorities: dict[str, int] | None = None) -> None:
        self.socket_path = socket_path
        self.priorities = dict(priorities or {})

    async def emit(self, events: Sequence[Event]) -> None:
        """Not implemented yet."""
        raise SinkError("journal sink not implemented yet")
