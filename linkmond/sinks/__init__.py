"""Sinks: where events go. One module per sink; :func:`build_sink` maps config to sink."""

from __future__ import annotations

from linkmond.config import ConsoleSinkConfig, FileSinkConfig, SinkBase
from linkmond.sinks.base import Sink, SinkError
from linkmond.sinks.console import ConsoleSink
from linkmond.sinks.file import FileSink

__all__ = ["Sink", "SinkError", "build_sink"]


def build_sink(name: str, config: SinkBase) -> Sink:
    """The sink object for one ``[sinks.<name>]`` table."""
    sink: Sink
    if isinstance(config, ConsoleSinkConfig):
        sink = ConsoleSink(json_lines=config.json_lines, stream=config.stream)
    elif isinstance(config, FileSinkConfig):
        sink = FileSink(config.path, fsync=config.fsync, fsync_interval=config.fsync_interval)
    else:  # pragma: no cover - the config union is closed
        raise TypeError(f"no sink for {type(config).__name__}")
    sink.name = name
    return sink
