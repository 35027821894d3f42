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
"""

from __future__ import annotations

import struct
from typing import Final

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

    def feed(self, data: bytes) -> None:
        """Decode every message of ``data`` in order and publish what changed."""
        end = len(data)
        off = 0
        t_ns: int | None = None
        unpack = _NLMSGHDR.unpack_from
        known = _KNOWN_TYPES
        while off + 16 <= end:
            mlen, mtype, mflags, _seq, _pid = unpack(data, off)
            if not (16 <= mlen <= _MAX_MESSAGE and off + mlen <= end and mtype in known):
                resume = _next_header(data, off + 1, end)
                self.skipped_bytes += resume - off
                log.warning("undecodable bytes skipped", offset=off, length=resume - off)
                off = resume
                continue
            start, stop = off + 16, off + mlen
            off += (mlen + 3) & ~3
            self.messages += 1
            if mtype == rtnl.NLMSG_TSTAMP:
                if stop - start < 8:
                    self.malformed += 1
                    log.warning("short NLMSG_TSTAMP record skipped", offset=start - 16)
                else:
                    t_ns = int(read_timestamp(data, start) * 1e9)
                continue
            self._apply(data, mtype, mflags, start, stop, t_ns)
        if off < end:
            self.skipped_bytes += end - off
            log.warning("undecodable bytes at the end skipped", length=end - off)

    def _apply(
        self, data: bytes, mtype: int, mflags: int, start: int, stop: int, t_ns: int | None
    ) -> None:
        try:
            decoded = decode(mtype, data, start, stop)
        except DecodeError as exc:
            self.malformed += 1
            log.warning("malformed netlink message skipped", type=mtype, error=str(exc))
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


def _plausible(data: bytes, off: int, end: int) -> bool:
    """Whether a message header that makes sense starts at ``off``."""
    if off + 16 > end:
        return False
    mlen, mtype, _flags, _seq, _pid = _NLMSGHDR.unpack_from(data, off)
    return 16 <= mlen <= _MAX_MESSAGE and off + mlen <= end and mtype in _KNOWN_TYPES


def _next_header(data: bytes, off: int, end: int) -> int:
    """The first offset from ``off`` where a plausible header is followed by another one (or
    by the end of the data); ``end`` if there is none. Two in a row make a false find in
    corrupt data unlikely."""
    while off + 16 <= end:
        if _plausible(data, off, end):
            mlen = _NLMSGHDR.unpack_from(data, off)[0]
            after = off + ((mlen + 3) & ~3)
            if after >= end or _plausible(data, after, end):
                return off
        off += 1
    return end
