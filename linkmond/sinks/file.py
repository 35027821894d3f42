"""File sink: JSON lines appended to a file, for log shippers (Vector, Fluent Bit, Promtail).

A batch of events is one ``os.write`` of whole lines (in chunks of at most :data:`CHUNK_BYTES`)
on an ``O_APPEND`` descriptor. A write the disk cuts short never leaves a torn line behind:
the rest is written, or the torn start is truncated back out, so the file always ends with a
whole line and the retry appends exactly the lines that did not make it. (A writer killed
mid-write cannot do that: the next open ends its torn line, see ``_mend``.) logrotate's
``copytruncate`` is safe too. SIGHUP reopens the path (logrotate's ``create`` mode). Writes
happen in a worker thread: a slow disk never stalls the event loop.

The path is opened by :func:`linkmond.safefile.open_append`, at start and at every reopen: a
symlink there is never followed, and only a regular file of the daemon's own user is appended
to (one the daemon creates is 0640 whatever the umask). Whoever may write the directory, a
daemon running as root must not append its events to a file they point it at. A refused file
fails like a full disk: :class:`SinkError` names the path and why, and the worker retries.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import stat
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Final, Literal

from linkmond.events import Event
from linkmond.safefile import LOG_MODE, UnsafeFileError, open_append
from linkmond.sinks.base import Sink, SinkError

#: at most this much per ``os.write`` (a longer line is written alone): a batch is normally
#: one call, and one call never copies an unbounded buffer
CHUNK_BYTES: Final = 1024 * 1024


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
        """Open the file now, so a bad path is reported at start-up, and start the syncer.

        Raises :class:`SinkError` naming the path and the reason (a refused file included).
        """
        if self.fsync == "interval":
            self._syncer = asyncio.create_task(self._sync_every_interval())
        try:
            await asyncio.to_thread(self._ensure_open)
        except OSError as exc:
            raise SinkError(f"{self.path}: {exc.strerror or exc}") from exc

    def _ensure_open(self) -> int:
        if self._fd is not None and self._reopen:
            os.close(self._fd)
            self._fd = None
        self._reopen = False
        if self._fd is None:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o750)
            try:
                fd = open_append(self.path, LOG_MODE)
            except UnsafeFileError as exc:
                raise SinkError(f"refusing to append to {self.path}: it {exc.strerror}") from None
            try:
                self._mend(fd)
            except OSError:
                os.close(fd)
                raise
            self._fd = fd
        return self._fd

    def _mend(self, fd: int) -> None:
        """End a torn last line that a writer killed mid-write left behind (``kill -9`` or a
        crash stops a write at a page boundary), so that the first line written now starts a
        line of its own instead of being glued to the fragment. Never truncates: the
        fragment may not be ours."""
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or not st.st_size:
            return
        try:  # the write descriptor cannot read; the same file, opened to read its last byte
            # (never following a symlink, nor waiting on a FIFO swapped in meanwhile)
            reader = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK)
        except OSError:
            return  # not readable for us: leave it as it is
        try:
            same = os.fstat(reader)
            if (same.st_dev, same.st_ino) != (st.st_dev, st.st_ino):
                return
            last = os.pread(reader, 1, st.st_size - 1)
        finally:
            os.close(reader)
        if last not in (b"\n", b""):
            os.write(fd, b"\n")

    def _write_batch(self, lines: list[bytes]) -> None:
        with self._lock:
            done = 0
            try:
                fd = self._ensure_open()
                for chunk in _chunks(lines, CHUNK_BYTES):
                    whole, error = self._write_lines(fd, chunk)
                    done += whole
                    if whole:
                        self._dirty = True
                    if error is not None:
                        raise error
                    if self.fsync == "always":  # before emit returns, as with one line a write
                        os.fdatasync(fd)
            except OSError as exc:
                raise SinkError(f"{self.path}: {exc.strerror or exc}", delivered=done) from exc

    @staticmethod
    def _write_lines(fd: int, lines: list[bytes]) -> tuple[int, OSError | None]:
        """Append ``lines`` in one ``os.write`` (more only if the kernel writes less).

        Returns how many whole lines reached the file, and the error that stopped the rest.
        """
        data = lines[0] if len(lines) == 1 else b"".join(lines)
        view = memoryview(data)
        pos = 0
        try:
            while pos < len(data):
                n = os.write(fd, view[pos:])
                if not n:
                    raise OSError(errno.EIO, "write made no progress")
                pos += n
        except OSError as exc:
            whole = end = 0
            for line in lines:
                if end + len(line) > pos:
                    break
                end += len(line)
                whole += 1
            if pos > end:
                # The disk filled up mid-line: take the torn start back out so that the retry
                # does not glue a whole line onto half a line. linkmond is the only writer of
                # its file, so the file ends with the `pos - end` bytes of that line.
                with contextlib.suppress(OSError):
                    os.ftruncate(fd, os.fstat(fd).st_size - (pos - end))
            return whole, exc
        return len(lines), None

    async def emit(self, events: Sequence[Event]) -> None:
        """Append one line per event; a failure says how many whole lines got there."""
        lines = [e.jsonl for e in events]
        await asyncio.to_thread(self._write_batch, lines)

    def _sync(self) -> None:
        # the sync runs on a duplicate of the descriptor, outside the lock: after a storm,
        # syncing hundreds of MB of the file's dirty pages can take seconds, and the writer
        # must not wait for it (events were seen delayed by 150-400 ms by exactly that)
        with self._lock:
            if self._fd is None or not self._dirty:
                return
            self._dirty = False
            fd = os.dup(self._fd)
        try:
            with contextlib.suppress(OSError):
                os.fdatasync(fd)
        finally:
            os.close(fd)

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


def _chunks(lines: list[bytes], limit: int) -> Iterator[list[bytes]]:
    """``lines`` in order, grouped into runs of at most ``limit`` bytes (a longer line alone)."""
    chunk: list[bytes] = []
    size = 0
    for line in lines:
        if chunk and size + len(line) > limit:
            yield chunk
            chunk, size = [], 0
        chunk.append(line)
        size += len(line)
    if chunk:
        yield chunk
