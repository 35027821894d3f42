"""The daemon's own logs (structlog), kept apart from events: they go to stderr.

``format = "auto"`` renders for humans on a TTY and as JSON lines otherwise (journald,
containers, CI).
"""

from __future__ import annotations

import logging
import sys
from typing import Literal

import structlog


def configure(level: str = "info", fmt: Literal["auto", "console", "json"] = "auto") -> None:
    """Set up structlog once per process; safe to call again on reload."""
    if fmt == "auto":
        fmt = "console" if sys.stderr.isatty() else "json"
    renderer: structlog.typing.Processor = (
        structlog.dev.ConsoleRenderer(colors=False)
        if fmt == "console"
        else structlog.processors.JSONRenderer()
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[level.upper()]
        ),
        logger_factory=_stderr_logger,
        cache_logger_on_first_use=False,
    )


def _stderr_logger(*args: object) -> structlog.PrintLogger:
    # sys.stderr as it is when a line is logged, not when logging was set up (a test's
    # captured stream, long closed, must not take a later line down with it)
    return structlog.PrintLogger(sys.stderr)
