"""``linkmond replay``: a recorded rtnetlink stream as one more source of messages.

The file is what ``rtmon file F`` and ``ip monitor file F`` write: netlink messages back to
back, each 4-byte aligned, with iproute2's ``NLMSG_TSTAMP`` records giving the time of what
follows. Messages flagged ``NLM_F_MULTI`` are the recorder's initial dump: they fill the
cache silently, as the live daemon's initial dump does. Everything after goes through the
same decode → state → publisher path as live notifications, stamped with the recorded time.
"""

from __future__ import annotations

import structlog

from linkmond import rtnl
from linkmond.decode import DecodeError, decode, read_timestamp, split_messages
from linkmond.publisher import Publisher
from linkmond.state import State

log = structlog.get_logger("linkmond.replay")


class ReplaySource:
    """Feeds a recording through a :class:`State` of its own to ``publisher``."""

    def __init__(self, publisher: Publisher) -> None:
        self.publisher = publisher
        self.state = State()  # no kernel to ask: nothing is re-read
        self.messages = 0
        self.malformed = 0

    def feed(self, data: bytes) -> None:
        """Decode every message of ``data`` in order and publish what changed."""
        state = self.state
        publish = self.publisher.publish
        t_ns: int | None = None
        try:
            for mtype, mflags, _seq, _pid, start, end in split_messages(data):
                self.messages += 1
                if mtype == rtnl.NLMSG_TSTAMP:
                    if end - start < 8:
                        raise DecodeError("short NLMSG_TSTAMP record")
                    t_ns = int(read_timestamp(data, start) * 1e9)
                    continue
                try:
                    decoded = decode(mtype, data, start, end)
                except DecodeError as exc:
                    self.malformed += 1
                    log.warning("malformed netlink message skipped", type=mtype, error=str(exc))
                    continue
                if decoded is None:
                    continue
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
        except DecodeError as exc:
            self.malformed += 1
            log.warning("malformed netlink data: the rest of the file is skipped", error=str(exc))
