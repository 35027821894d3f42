"""``linkmond replay``: a recorded rtnetlink stream as one more source of messages.

The file is what ``rtmon file F`` and ``ip monitor file F`` write: netlink messages back to
back, each 4-byte aligned, with iproute2's ``NLMSG_TSTAMP`` records giving the time of what
follows. Messages flagged ``NLM_F_MULTI`` are the recorder's initial dump: they fill the
cache silently, as the live daemon's initial dump does. Everything after goes through the
same decode → state → publisher path as live notifications, stamped with the recorded time.

Bad input costs only what is bad: a message that does not decode is skipped (counted in
:attr:`ReplaySource.malformed`), and where a header cannot be framed (a length that
overruns the file, a stray byte) the reader looks for the next plausible header and goes on
from there, counting the bytes it could not use (:attr:`ReplaySource.skipped_bytes`).

A file is read in chunks (:meth:`ReplaySource.feed_file`), so memory does not grow with the
recording. Framing decides nothing before it has :data:`LOOKAHEAD` bytes beyond the offset it
decides at (or the end of the file): every decision only ever looks at the longest message
and the header after it, so the outcome is exactly that of the whole file read at once
(:meth:`ReplaySource.feed`).
"""

from __future__ import annotations

import struct
from typing import BinaryIO, Final

import structlog

from linkmond import rtnl
from linkmond.decode import DECODERS, DecodeError, decode, read_timestamp
from linkmond.publisher import Publisher
from linkmond.state import State

log = structlog.get_logger("linkmond.replay")

_NLMSGHDR: Final = struct.Struct("=IHHII")
#: the message types a recording holds: what we decode, and netlink's and rtmon's own
_KNOWN_TYPES: Final = frozenset(DECODERS) | {
    rtnl.NLMSG_NOOP,
    rtnl.NLMSG_ERROR,
    rtnl.NLMSG_DONE,
    rtnl.NLMSG_TSTAMP,
}
#: anything longer is not a message the kernel sends (dump parts are at most 32 KiB)
_MAX_MESSAGE: Final = 1 << 20
#: what framing may look at beyond an offset: a message and the header of the next one (a
#: resynchronisation checks two in a row), each at most _MAX_MESSAGE long
LOOKAHEAD: Final = 2 * _MAX_MESSAGE
#: how much of a file is read at once
CHUNK_SIZE: Final = 4 << 20


class ReadError(Exception):
    """The recording could not be read (its message is the system's reason)."""


class ReplaySource:
    """Feeds a recording through a :class:`State` of its own to ``publisher``."""

    def __init__(self, publisher: Publisher) -> None:
        self.publisher = publisher
        self.state = State()  # no kernel to ask: nothing is re-read
        self.messages = 0
        #: messages skipped because they did not decode (a short timestamp record included)
        self.malformed = 0
        #: bytes that could not be framed as messages (a bad length, stray bytes)
        self.skipped_bytes = 0
        self._t_ns: int | None = None  # the time of the last NLMSG_TSTAMP record
        self._skipping_from: int | None = None  # file offset of the bytes being skipped

    def feed(self, data: bytes) -> None:
        """Decode every message of ``data``, a whole recording, in order and publish what
        changed."""
        self._begin()
        self._frame(data, 0, final=True)

    def feed_file(self, file: BinaryIO, chunk_size: int = CHUNK_SIZE) -> None:
        """Decode the recording ``file`` (from where it stands to its end) as :meth:`feed`
        would decode all of it at once, reading ``chunk_size`` bytes at a time: at most
        ``chunk_size + LOOKAHEAD`` bytes of it are held, whatever its size. Raises
        :class:`ReadError` if reading fails (what came before is published)."""
        self._begin()
        base = 0  # file offset of data[0]
        data = b""
        while chunk := _read(file, chunk_size):
            data = data + chunk if data else chunk
            done = self._frame(data, base, final=False)
            base += done
            data = data[done:]
        self._frame(data, base, final=True)

    def _begin(self) -> None:
        self._t_ns = None
        self._skipping_from = None

    def _frame(self, data: bytes, base: int, *, final: bool) -> int:
        """Decode the messages of ``data`` (file offset ``base``); returns how many bytes
        of it were used. Without ``final`` (more of the file follows) it stops where fewer
        than LOOKAHEAD bytes are left to decide with."""
        end = len(data)
        last = end - 16 if final else end - LOOKAHEAD  # the last offset to decide at
        off = 0
        t_ns = self._t_ns
        unpack = _NLMSGHDR.unpack_from
        known = _KNOWN_TYPES
        while off <= last:
            if self._skipping_from is None:
                mlen, mtype, mflags, _seq, _pid = unpack(data, off)
                if 16 <= mlen <= _MAX_MESSAGE and off + mlen <= end and mtype in known:
                    start, stop = off + 16, off + mlen
                    off += (mlen + 3) & ~3
                    self.messages += 1
                    if mtype != rtnl.NLMSG_TSTAMP:
                        self._apply(data, mtype, mflags, start, stop, t_ns, base)
                    elif stop - start < 8:
                        self.malformed += 1
                        log.warning("short NLMSG_TSTAMP record skipped", offset=base + start - 16)
                    else:
                        t_ns = int(read_timestamp(data, start) * 1e9)
                    continue
                self._skipping_from = base + off
                off += 1
            off = _next_header(data, off, end, last)
            if off <= last:
                self._skipped(base + off)
        self._t_ns = t_ns
        if not final:
            return off
        if self._skipping_from is not None:
            self._skipped(base + end)
        elif off < end:
            self.skipped_bytes += end - off
            log.warning("undecodable bytes at the end skipped", length=end - off)
        return end

    def _skipped(self, resume: int) -> None:
        """The bytes being skipped end at file offset ``resume``: count them, say so once."""
        assert self._skipping_from is not None
        start, self._skipping_from = self._skipping_from, None
        self.skipped_bytes += resume - start
        log.warning("undecodable bytes skipped", offset=start, length=resume - start)

    def _apply(
        self,
        data: bytes,
        mtype: int,
        mflags: int,
        start: int,
        stop: int,
        t_ns: int | None,
        base: int,
    ) -> None:
        try:
            decoded = decode(mtype, data, start, stop)
        except DecodeError as exc:
            self.malformed += 1
            log.warning(
                "malformed netlink message skipped",
                offset=base + start - 16,
                type=mtype,
                error=str(exc),
            )
            return
        if decoded is None:
            return
        state = self.state
        publish = self.publisher.publish
        table, key, obj = decoded
        change = state.apply(
            table,
            key,
            obj,
            emit=not (mflags & rtnl.NLM_F_MULTI),
            replace=bool(mflags & rtnl.NLM_F_REPLACE),
        )
        if change is not None:
            publish(change, t_ns)
        if state.derived:
            for derived in state.take_derived():
                publish(derived, t_ns)
        if state.pending:  # a removed link's routes: no sinks to wait for here
            for removed in state.drain():
                publish(removed, t_ns)


def _read(file: BinaryIO, size: int) -> bytes:
    try:
        return file.read(size)
    except OSError as exc:
        raise ReadError(exc.strerror or str(exc)) from exc


def _plausible(data: bytes, off: int, end: int) -> bool:
    """Whether a message header that makes sense starts at ``off``."""
    if off + 16 > end:
        return False
    mlen, mtype, _flags, _seq, _pid = _NLMSGHDR.unpack_from(data, off)
    return 16 <= mlen <= _MAX_MESSAGE and off + mlen <= end and mtype in _KNOWN_TYPES


def _next_header(data: bytes, off: int, end: int, last: int) -> int:
    """The first offset from ``off`` up to ``last`` where a plausible header is followed by
    another one (or by the end of the data); ``last + 1`` if there is none (in the middle of
    a file, the data after ``last`` decides). Two in a row make a false find in corrupt data
    unlikely."""
    while off <= last:
        if _plausible(data, off, end):
            mlen = _NLMSGHDR.unpack_from(data, off)[0]
            after = off + ((mlen + 3) & ~3)
            if after >= end or _plausible(data, after, end):
                return off
        off += 1
    return off
