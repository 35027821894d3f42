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

__all__ = ["Sink", "SinkError", "build_sink"]


def build_sink(name: str, config: SinkBase, state_directory: Path) -> Sink:
    """The sink object for one ``[sinks.<name>]`` table.

    May raise :class:`linkmond.config.ConfigError` for what only shows when the sink is
    built (an unreadable webhook secret).
    """
    # each sink's module (and what it needs: aiohttp, nats-py) is loaded only when configured
    sink: Sink
    if isinstance(config, ConsoleSinkConfig):
        from linkmond.sinks.console import ConsoleSink  # noqa: PLC0415

        sink = ConsoleSink(json_lines=config.json_lines, stream=config.stream)
    elif isinstance(config, FileSinkConfig):
        from linkmond.sinks.file import FileSink  # noqa: PLC0415

        sink = FileSink(config.path, fsync=config.fsync, fsync_interval=config.fsync_interval)
    elif isinstance(config, JournalSinkConfig):
        from linkmond.sinks.journal import JournalSink  # noqa: PLC0415

        sink = JournalSink(config.socket, config.priorities)
    elif isinstance(config, WebhookSinkConfig):
        from linkmond.sinks.webhook import WebhookSink  # noqa: PLC0415

        sink = WebhookSink(name, config, state_directory)
    elif isinstance(config, NatsSinkConfig):
        from linkmond.sinks.nats import NatsSink  # noqa: PLC0415

        sink = NatsSink(name, config, state_directory)
    else:  # pragma: no cover - the config union is closed
        raise TypeError(f"no sink for {type(config).__name__}")
    sink.name = name
    return sink
