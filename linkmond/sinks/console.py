"""Console sink: one human line per event (``[22:28:19.464] link eth0: carrier lost (admin up)``)
or, with ``json``, the event's JSON line. The human line shows control characters escaped
(``\\x1b``, see :func:`linkmond.events.escape_controls`), so an interface name cannot drive
the terminal; the JSON line is left as JSON writes it (``\\u001b``)."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable, Sequence
from typing import Literal

from linkmond.events import Event, describe
from linkmond.sinks.base import Sink, SinkError


def human_line(event: Event) -> str:
    """The console form: the event's UTC time of day to the millisecond, then its description
    (control characters escaped)."""
    return f"[{event.time[11:23]}] {describe(event)}"


class ConsoleSink(Sink):
    """Writes to stdout (or stderr) from a worker thread, so a stalled terminal stalls nobody."""

    def __init__(
        self,
        *,
        json_lines: bool = False,
        stream: Literal["stdout", "stderr"] = "stdout",
        on_closed: Callable[[], None] | None = None,
    ) -> None:
        self.json_lines = json_lines
        self.stream = stream
        self.on_closed = on_closed

    def _write(self, text: str) -> None:
        out = sys.stdout if self.stream == "stdout" else sys.stderr
        out.write(text)
        out.flush()

    async def emit(self, events: Sequence[Event]) -> None:
        """Write the batch as one block of lines."""
        if self.json_lines:
            text = "".join(f"{e.json_line}\n" for e in events)
        else:
            text = "".join(f"{human_line(e)}\n" for e in events)
        try:
            await asyncio.to_thread(self._write, text)
        except BrokenPipeError:
            # the reader went away (`linkmond monitor | head`): nothing more to show
            if self.on_closed is not None:
                self.on_closed()
                return
            raise SinkError("stdout is closed") from None
