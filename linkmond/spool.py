"""The webhook sink's durable spool (SQLite, WAL) and its dead-letter file.

An event accepted by a webhook sink is a row here until the receiver answered 2xx; a row that
cannot be delivered (a permanent HTTP error, too old, or pushed out by ``max_spool``) is
appended to the dead-letter JSONL file before its row is deleted, so a crash in between
duplicates a dead letter rather than losing an event. The dead-letter file is bounded: before
it would grow past ``deadletter_max_bytes`` it is renamed to ``<file>.1`` (replacing the
previous one) and a new one is started. Every method blocks (disk I/O): the sink calls them
through ``asyncio.to_thread``; a lock makes them safe from any thread.

Both files are opened through :mod:`linkmond.safefile`: a symlink planted at their path is
refused, never followed. The database is created mode 0600 before SQLite opens it, so its
``-wal`` and ``-shm`` files (which SQLite gives the database's mode) are private too.
"""

from __future__ import annotations

import errno
import json
import os
import sqlite3
import stat
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from linkmond.safefile import UnsafeFileError, ensure_private, open_append

#: ``deadletter_max_bytes`` when the caller does not say (the config's default)
DEADLETTER_MAX_BYTES: Final = 4 * 1024**2
#: the files SQLite opens by name beside the database
_SIDECARS: Final = ("-wal", "-shm", "-journal")

_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS spool (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,  -- never reused: delivery order
    id TEXT NOT NULL,                       -- the event id (webhook-id)
    accepted REAL NOT NULL,                 -- Unix time the sink accepted it (for max_age)
    event TEXT NOT NULL                     -- the event's JSON (docs/events.md)
)
"""


@dataclass(frozen=True)
class SpooledEvent:
    """One undelivered event, as stored."""

    seq: int
    id: str
    accepted: float
    event: str


@dataclass(frozen=True)
class DeadLetter:
    """Why an event is given up: ``reason``, and the receiver's answer if there was one."""

    reason: str
    status: int | None = None
    response: str | None = None
    attempts: int = 0


def _now_rfc3339() -> str:
    t = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t % 1 * 1e6):06d}Z"


class Spool:
    """A FIFO of undelivered events in ``db_path``, bounded to ``max_spool`` rows."""

    def __init__(
        self,
        db_path: Path,
        deadletter_path: Path,
        max_spool: int,
        deadletter_max_bytes: int = DEADLETTER_MAX_BYTES,
    ) -> None:
        self.db_path = db_path
        self.deadletter_path = deadletter_path
        #: where the dead-letter file goes when it is full (the previous one is replaced)
        self.deadletter_rotated = deadletter_path.with_name(deadletter_path.name + ".1")
        self.max_spool = max_spool
        self.deadletter_max_bytes = deadletter_max_bytes
        #: how often the dead-letter file was rotated since this spool was opened
        self.rotations = 0
        #: events pushed out by ``max_spool`` since this spool was opened
        self.evicted = 0
        #: events dead-lettered for any reason since this spool was opened
        self.dead_lettered = 0
        self._lock = threading.Lock()
        self._db: sqlite3.Connection | None = None
        self._count = 0

    def open(self) -> int:
        """Create or open the database (WAL); returns how many events are pending.

        Raises :class:`linkmond.safefile.UnsafeFileError` when the database or a file SQLite
        keeps beside it is a symlink, not a regular file, or another user's.
        """
        with self._lock:
            if self._db is None:
                self.db_path.parent.mkdir(parents=True, exist_ok=True, mode=0o750)
                ensure_private(self.db_path)
                for suffix in _SIDECARS:
                    _check_sidecar(self.db_path.with_name(self.db_path.name + suffix))
                db = sqlite3.connect(self.db_path, isolation_level=None, check_same_thread=False)
                try:
                    db.execute("PRAGMA journal_mode=WAL")
                    # an fsync of the WAL per transaction: an accepted event survives power loss
                    db.execute("PRAGMA synchronous=FULL")
                    db.execute("PRAGMA busy_timeout=5000")
                    db.execute(_SCHEMA)
                    (self._count,) = db.execute("SELECT count(*) FROM spool").fetchone()
                except sqlite3.Error:
                    db.close()
                    raise
                self._db = db
            return self._count

    def __len__(self) -> int:
        """Pending events as this process counted them (exact unless two sinks share it)."""
        return max(self._count, 0)

    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            raise sqlite3.ProgrammingError("spool is not open")
        return self._db

    def append(self, events: Iterable[tuple[str, str]], now: float | None = None) -> int:
        """Store ``(id, event_json)`` pairs in one transaction; returns how many old events
        were pushed out to the dead-letter file to stay within ``max_spool``."""
        accepted = time.time() if now is None else now
        rows = [(event_id, accepted, event) for event_id, event in events]
        with self._lock:
            db = self._conn()
            db.execute("BEGIN IMMEDIATE")
            try:
                db.executemany("INSERT INTO spool (id, accepted, event) VALUES (?, ?, ?)", rows)
                count = self._count + len(rows)
                evicted: list[SpooledEvent] = []
                if count > self.max_spool:
                    # exact before evicting: another Spool on this file (the sink before a
                    # reload) may have delivered rows meanwhile
                    (count,) = db.execute("SELECT count(*) FROM spool").fetchone()
                if count > self.max_spool:
                    evicted = self._select(db, "ORDER BY seq LIMIT ?", (count - self.max_spool,))
                    self._dead_letter(evicted, DeadLetter("max_spool: the spool is full"))
                    db.executemany("DELETE FROM spool WHERE seq = ?", [(e.seq,) for e in evicted])
                    count -= len(evicted)
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
            self._count = count
            self.evicted += len(evicted)
            return len(evicted)

    def head(self, max_age: float, now: float | None = None) -> SpooledEvent | None:
        """The oldest event, once every event older than ``max_age`` s has been moved to the
        dead-letter file."""
        rows = self.oldest(max_age, 1, now)
        return rows[0] if rows else None

    def oldest(self, max_age: float, limit: int, now: float | None = None) -> list[SpooledEvent]:
        """Up to ``limit`` oldest events, in order, once every event older than ``max_age``
        s has been moved to the dead-letter file."""
        cutoff = (time.time() if now is None else now) - max_age
        why = DeadLetter(f"max_age: undelivered after {max_age:g}s")
        with self._lock:
            db = self._conn()
            while True:
                rows = self._select(db, "ORDER BY seq LIMIT ?", (limit,))
                if not rows or rows[0].accepted >= cutoff:
                    return [row for row in rows if row.accepted >= cutoff]
                expired = self._select(db, "WHERE accepted < ? ORDER BY seq LIMIT 1000", (cutoff,))
                self._give_up(db, expired, why)

    def contains(self, seq: int) -> bool:
        """Whether the row is still spooled (``max_spool`` may have pushed it out)."""
        with self._lock:
            row = self._conn().execute("SELECT 1 FROM spool WHERE seq = ?", (seq,)).fetchone()
            return row is not None

    def remove(self, *seqs: int) -> None:
        """Delete delivered events (one transaction)."""
        with self._lock:
            db = self._conn()
            if len(seqs) == 1:
                deleted = db.execute("DELETE FROM spool WHERE seq = ?", seqs).rowcount
            else:
                db.execute("BEGIN IMMEDIATE")
                try:
                    deleted = sum(
                        db.execute("DELETE FROM spool WHERE seq = ?", (seq,)).rowcount
                        for seq in seqs
                    )
                    db.execute("COMMIT")
                except BaseException:
                    db.execute("ROLLBACK")
                    raise
            self._count -= deleted

    def dead_letter(self, event: SpooledEvent, why: DeadLetter) -> None:
        """Give up on ``event``: append it to the dead-letter file, then delete its row."""
        with self._lock:
            db = self._conn()
            if db.execute("SELECT 1 FROM spool WHERE seq = ?", (event.seq,)).fetchone():
                self._give_up(db, [event], why)

    def close(self) -> None:
        """Close the database (pending rows stay for the next run)."""
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None

    # -- under the lock ------------------------------------------------------------------

    @staticmethod
    def _select(db: sqlite3.Connection, tail: str, args: tuple[float, ...]) -> list[SpooledEvent]:
        sql = f"SELECT seq, id, accepted, event FROM spool {tail}"  # noqa: S608 - fixed tails
        return [SpooledEvent(*row) for row in db.execute(sql, args)]

    def _give_up(
        self, db: sqlite3.Connection, events: Sequence[SpooledEvent], why: DeadLetter
    ) -> None:
        if not events:
            return
        self._dead_letter(events, why)
        db.execute("BEGIN IMMEDIATE")
        try:
            deleted = db.executemany(
                "DELETE FROM spool WHERE seq = ?", [(e.seq,) for e in events]
            ).rowcount
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        self._count -= deleted

    def _dead_letter(self, events: Sequence[SpooledEvent], why: DeadLetter) -> None:
        head = json.dumps(
            {
                "time": _now_rfc3339(),
                "reason": why.reason,
                "status": why.status,
                "response": why.response,
                "attempts": why.attempts,
            },
            ensure_ascii=False,
        )[:-1]
        # the event's own JSON is spliced in unchanged: exactly what the receiver would get
        self._append([f'{head}, "event": {e.event}}}\n'.encode() for e in events])
        self.dead_lettered += len(events)

    def _append(self, lines: Sequence[bytes]) -> None:
        """Append ``lines`` to the dead-letter file (fsynced), rotating it between two lines
        whenever the next one would take it past ``deadletter_max_bytes``."""
        fd = open_append(self.deadletter_path)
        try:
            size = os.fstat(fd).st_size
            pending: list[bytes] = []
            for line in lines:
                if size and size + len(line) > self.deadletter_max_bytes:
                    _write_all(fd, b"".join(pending))
                    pending.clear()
                    os.fsync(fd)
                    os.close(fd)
                    fd = -1
                    self._rotate()
                    fd = open_append(self.deadletter_path)
                    size = os.fstat(fd).st_size
                pending.append(line)
                size += len(line)
            _write_all(fd, b"".join(pending))
            os.fsync(fd)
        finally:
            if fd >= 0:
                os.close(fd)

    def _rotate(self) -> None:
        # rename() replaces whatever is at the .1 path, a symlink included, without following
        try:
            os.replace(self.deadletter_path, self.deadletter_rotated)
        except FileNotFoundError:  # logrotate moved it away meanwhile
            return
        self.rotations += 1


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _check_sidecar(path: Path) -> None:
    """Refuse a ``-wal``/``-shm``/``-journal`` file that SQLite would follow or another user
    planted; a missing one is fine (SQLite creates it with the database's mode)."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISLNK(st.st_mode):
        raise UnsafeFileError(errno.ELOOP, "is a symlink: not followed", str(path))
    if not stat.S_ISREG(st.st_mode):
        raise UnsafeFileError(errno.EPERM, "is not a regular file", str(path))
    if st.st_uid != os.geteuid():
        raise UnsafeFileError(
            errno.EPERM,
            f"is owned by uid {st.st_uid}, not by the daemon's user (uid {os.geteuid()})",
            str(path),
        )
