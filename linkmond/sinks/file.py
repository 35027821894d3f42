"""File sink: JSON lines appended to a file, for log shippers (Vector, Fluent Bit, Promtail).

Each line is one ``os.write`` on an ``O_APPEND`` descriptor, so concurrent readers never see a
torn line and logrotate's ``copytruncate`` is safe too. SIGHUP reopens the path (logrotate's
``create`` mode). Writes happen in a worker thread: a slow disk never stalls the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

from linkmond.events import Event
from linkmond.sinks.base import Sink, SinkError


class FileSink(Sink):
    """Appends events as JSON lines; ``fsync`` is ``never``, ``interval`` or ``always``."""

    def __init__(
        self,
        path: Path,
        *,
        fsync: Literal["never", "interval", "always"] = "never",
        fsync_interval: float = 1.0,
    ) -> None:
        self.path = path
        self.fsync = fsync
        self.fsync_interval = fsync_interval
        self._fd: int | None = None
        self._reopen = False
        self._dirty = False
        self._lock = threading.Lock()  # the writer thread and the interval syncer share the fd
        self._syncer: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Open the file now, so a bad path is reported at start-up, and start the syncer."""
        if self.fsync == "interval":
            self._syncer = asyncio.create_task(self._sync_every_interval())
        await asyncio.to_thread(self._ensure_open)

    def _ensure_open(self) -> int:
        if self._fd is not None and self._reopen:
            os.close(self._fd)
            self._fd = None
        self._reopen = False
        if self._fd is None:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o750)
            self._fd = os.open(
                self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640
            )
        return self._fd

    def _write_batch(self, lines: list[bytes]) -> None:
        with self._lock:
            done = 0
            try:
                fd = self._ensure_open()
                for line in lines:
                    self._write_line(fd, line)
                    done += 1
                    if self.fsync == "always":
                        os.fdatasync(fd)
                self._dirty = True
            except OSError as exc:
                raise SinkError(f"{self.path}: {exc.strerror or exc}", delivered=done) from exc

    @staticmethod
    def _write_line(fd: int, line: bytes) -> None:
        written = os.write(fd, line)
        if written == len(line):
            return
        # A short write (the disk filled up mid-line): finish it, or take the torn start back
        # out so the retry does not glue a whole line onto half a line. linkmond is the only
        # writer of its file, so the file's end is where this line began plus `written`.
        try:
            while written < len(line):
                written += os.write(fd, memoryview(line)[written:])
        except OSError:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, os.fstat(fd).st_size - written)
            raise

    async def emit(self, events: Sequence[Event]) -> None:
        """Append one line per event."""
        lines = [f"{e.json_line}\n".encode() for e in events]
        await asyncio.to_thread(self._write_batch, lines)

    def _sync(self) -> None:
        with self._lock:
            if self._fd is not None and self._dirty:
                self._dirty = False
                with contextlib.suppress(OSError):
                    os.fdatasync(self._fd)

    async def _sync_every_interval(self) -> None:
        while True:
            await asyncio.sleep(self.fsync_interval)
            await asyncio.to_thread(self._sync)

    def reopen(self) -> None:
        """Reopen the path before the next write (after logrotate moved the file away)."""
        self._reopen = True

    async def aclose(self) -> None:
        """Sync (unless fsync is never) and close."""
        if self._syncer is not None:
            self._syncer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._syncer
        await asyncio.to_thread(self._close)

    def _close(self) -> None:
        with self._lock:  # never taken on the event loop: a writer may hold it on a slow disk
            if self._fd is not None:
                if self.fsync != "never" and self._dirty:
                    with contextlib.suppress(OSError):
                        os.fdatasync(self._fd)
                os.close(self._fd)
                self._fd = None
