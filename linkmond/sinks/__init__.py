"""Sinks: where events go. One module per sink; :func:`build_sink` maps config to sink."""

from __future__ import annotations

from pathlib import Path

from linkmond.config import (
    ConsoleSinkConfig,
    FileSinkConfig,
    JournalSinkConfig,
    NatsSinkConfig,
    SinkBase,
    WebhookSinkConfig,
)
from linkmond.sinks.base import Sink, SinkError
from linkmond.sinks.console import ConsoleSink
from linkmond.sinks.file import FileSink
from linkmond.sinks.journal import JournalSink
from linkmond.sinks.webhook import WebhookSink

__all__ = ["Sink", "SinkError", "build_sink"]


def build_sink(name: str, config: SinkBase, state_directory: Path) -> Sink:
    """The sink object for one ``[sinks.<name>]`` table.

    May raise :class:`linkmond.config.ConfigError` for what only shows when the sink is
    built (an unreadable webhook secret).
    """
    sink: Sink
    if isinstance(config, ConsoleSinkConfig):
        sink = ConsoleSink(json_lines=config.json_lines, stream=config.stream)
    elif isinstance(config, FileSinkConfig):
        sink = FileSink(config.path, fsync=config.fsync, fsync_interval=config.fsync_interval)
    elif isinstance(config, JournalSinkConfig):
        sink = JournalSink(config.socket, config.priorities)
    elif isinstance(config, WebhookSinkConfig):
        sink = WebhookSink(name, config, state_directory)
    elif isinstance(config, NatsSinkConfig):
        from linkmond.sinks.nats import NatsSink  # noqa: PLC0415 - loads only when configured

        sink = NatsSink(name, config, state_directory)
    else:  # pragma: no cover - the config union is closed
        raise TypeError(f"no sink for {type(config).__name__}")
    sink.name = name
    return sink
