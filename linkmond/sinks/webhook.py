"""Webhook sink: signed CloudEvents POSTs with a durable spool (to be written: issue 4)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from linkmond.config import WebhookSinkConfig
from linkmond.events import Event
from linkmond.sinks.base import Sink, SinkError


class WebhookSink(Sink):
    """Placeholder with the final constructor; see issue 4."""

    def __init__(self, name: str, config: WebhookSinkConfig, state_directory: Path) -> None:
        self.name = name
        self.config = config
        self.state_directory = state_directory

    async def emit(self, events: Sequence[Event]) -> None:
        """Not implemented yet."""
        raise SinkError("webhook sink not implemented yet")
