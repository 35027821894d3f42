"""Journal sink: the systemd journal's native protocol (systemd's JOURNAL_NATIVE_PROTOCOL).

Each event becomes one entry: ``MESSAGE`` (the human line, as the console prints it without
its time, control characters escaped as ``\\xNN``), ``PRIORITY``, ``SYSLOG_IDENTIFIER=linkmond``,
a fixed ``MESSAGE_ID`` per event type (explained by ``systemd/linkmond.catalog`` for
``journalctl -x``) and ``LINKMOND_*`` fields, which keep the exact values
(``LINKMOND_IFNAME=`` is the name as the kernel has it).

The protocol: one ``AF_UNIX``/``SOCK_DGRAM`` datagram per entry to journald's socket. A field
is ``KEY=value\\n``, or, when the value holds a newline, ``KEY\\n``, its length as a 64-bit
little-endian integer, the raw bytes and ``\\n``. An entry too large for a datagram
(``EMSGSIZE``) is written to a sealed memfd whose descriptor is passed with ``SCM_RIGHTS`` in an
empty datagram.

The socket is non-blocking and waits for writability on the event loop, so a stuck journald
never stalls the loop; after ``send_timeout`` seconds without progress, or when journald
is absent (no socket, ``ECONNREFUSED``), :meth:`JournalSink.emit` raises :class:`SinkError`
and the shared worker retries with backoff, logging at a bounded rate.
"""

from __future__ import annotations

import asyncio
import errno
import fcntl
import os
import socket
import struct
from collections.abc import Mapping, Sequence
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Final

from linkmond.events import Event, describe, escape_controls
from linkmond.sinks.base import Sink, SinkError

#: one fixed MESSAGE_ID per event type (generated once, never at run time); the catalog
#: ``systemd/linkmond.catalog`` has an entry for each, and a test keeps the two equal
MESSAGE_IDS: Final[Mapping[str, str]] = {
    "link.added": "10489eb6aba4410e8f6284a34da53f5c",
    "link.removed": "32410c5193ec4747969a0b5742fe375a",
    "link.admin_up": "9e0a880b9c1a4342a70bba9b8d2efb37",
    "link.admin_down": "80a8633f8abc4196a4c02ec8785e550b",
    "link.carrier_up": "b3260be0c4c34fe29f28e6ba3b6d80b8",
    "link.carrier_lost": "5caebebb3b464a1fb6d65993d294ae3c",
    "link.changed": "d18d4c19e81649b29ff3c76e2d2eb11f",
    "addr.added": "25380353cc3e450e97e5fb9ac33c7377",
    "addr.removed": "cf9cfbd871fc4f4795c908af8173bb40",
    "addr.changed": "7d8fb56405f94f698923c00db7ffb784",
    "route.added": "f77f694429174fab9c5f27f94e6cd0a3",
    "route.removed": "31a26c8b402e42d4b0fe831d483c3a46",
    "route.changed": "fea0f182e184423ab6ded0e1d0fb83e9",
    "neigh.added": "ceba8b2e7d9844c4a7f8d8eb1b079ccc",
    "neigh.removed": "78bbc592c39046b0b63032bb71d4b97c",
    "neigh.changed": "38b611b50775463f956d4ab7e84cc1c1",
    "rule.added": "8fbd6847f7714c98b0ba2b19dd89355b",
    "rule.removed": "7151de5cca8248d2a81af58d8af0b92a",
    "netconf.changed": "94d8e3b97eb6484ab369fb3b3bc00197",
    "daemon.started": "92528c94d61946f3aa6ba68e7b32becb",
    "daemon.overflow": "28e9eed3aaef40aba602f81cd06745f3",
    "daemon.stopping": "31d932acd49d4fdcb94f4b59424a89cc",
}

#: syslog priorities: warning for losses of connectivity and lost notifications, info otherwise
PRIORITY_WARNING: Final = 4
PRIORITY_INFO: Final = 6
WARNING_TYPES: Final = frozenset(
    {"link.carrier_lost", "link.admin_down", "link.removed", "daemon.overflow"}
)

SYSLOG_IDENTIFIER: Final = "linkmond"
#: how long one entry may wait for journald to take it before the batch fails and is retried
SEND_TIMEOUT: Final = 5.0

#: errors that mean "too large for one datagram": the entry goes through a memfd instead
_TOO_BIG: Final = frozenset({errno.EMSGSIZE, errno.ENOBUFS})
#: errors on a connected socket after journald restarted (its socket is a new one): reconnect
_PEER_GONE: Final = frozenset({errno.ECONNREFUSED, errno.ENOTCONN, errno.ECONNRESET, errno.EPIPE})
_SEALS: Final = fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE | fcntl.F_SEAL_SEAL
_LE64: Final = struct.Struct("<Q")


def encode_field(name: str, value: str | bytes) -> bytes:
    """One field in the native protocol: ``NAME=value\\n``, or the binary-safe form
    ``NAME\\n<le64 length><bytes>\\n`` when the value contains a newline."""
    raw = value.encode() if isinstance(value, str) else value
    key = name.encode("ascii")
    if b"\n" in raw:
        return b"".join((key, b"\n", _LE64.pack(len(raw)), raw, b"\n"))
    return b"".join((key, b"=", raw, b"\n"))


def encode_entry(fields: Sequence[tuple[str, str | bytes]]) -> bytes:
    """A whole entry: its fields one after another."""
    return b"".join(encode_field(name, value) for name, value in fields)


class JournalSink(Sink):
    """Sends each event as one journal entry to journald's native socket."""

    def __init__(
        self,
        socket_path: Path,
        priorities: dict[str, int] | None = None,
        *,
        send_timeout: float = SEND_TIMEOUT,
    ) -> None:
        self.socket_path = socket_path
        #: how long one entry may wait for room in journald's queue before the batch fails
        self.send_timeout = send_timeout
        #: event-type glob → priority; the first glob (in config order) that matches wins
        self.priorities = dict(priorities or {})
        #: entries that went through the memfd path (too large for a datagram)
        self.memfd_entries = 0
        self._priority_of: dict[str, int] = {}
        self._sock: socket.socket | None = None

    # -- the entry ---------------------------------------------------------------------------

    def priority(self, type_: str) -> int:
        """The syslog priority of an event type: a configured glob, else 4 or 6."""
        found = self._priority_of.get(type_)
        if found is None:
            found = next(
                (p for glob, p in self.priorities.items() if fnmatchcase(type_, glob)),
                PRIORITY_WARNING if type_ in WARNING_TYPES else PRIORITY_INFO,
            )
            self._priority_of[type_] = found
        return found

    def fields(self, event: Event) -> list[tuple[str, str]]:
        """The journal fields of ``event``, in the order they are sent."""
        try:
            message = describe(event)
        except Exception:  # a malformed payload must not wedge the sink in retries
            message = escape_controls(f"{event.type} {event.subject}")
        out = [
            ("MESSAGE", message),
            ("PRIORITY", str(self.priority(event.type))),
            ("SYSLOG_IDENTIFIER", SYSLOG_IDENTIFIER),
        ]
        message_id = MESSAGE_IDS.get(event.type)
        if message_id is not None:
            out.append(("MESSAGE_ID", message_id))
        out.append(("LINKMOND_TYPE", event.type))
        ifname = event.ifname
        if ifname is not None:
            out.append(("LINKMOND_IFNAME", ifname))
        ifindex = event.data.get("ifindex")
        if isinstance(ifindex, int) and not isinstance(ifindex, bool) and ifindex > 0:
            out.append(("LINKMOND_IFINDEX", str(ifindex)))
        out += [
            ("LINKMOND_EVENT_ID", event.id),
            ("LINKMOND_SEQ", str(event.seq)),
            ("LINKMOND_NETNS", event.netns),
            ("LINKMOND_JSON", event.json_line),
        ]
        return out

    def encode(self, event: Event) -> bytes:
        """The datagram (or memfd contents) for ``event``."""
        return encode_entry(self.fields(event))

    # -- delivery ----------------------------------------------------------------------------

    async def emit(self, events: Sequence[Event]) -> None:
        """Send one entry per event; a failure says how many entries journald took."""
        for done, event in enumerate(events):
            entry = self.encode(event)
            try:
                async with asyncio.timeout(self.send_timeout):
                    await self._send(entry)
            except TimeoutError:
                self._close()
                raise SinkError(
                    f"{self.socket_path}: journald took no entry for {self.send_timeout:g}s",
                    delivered=done,
                ) from None
            except OSError as exc:
                self._close()
                raise SinkError(
                    f"{self.socket_path}: {exc.strerror or exc}", delivered=done
                ) from exc

    def _connect(self) -> socket.socket:
        if self._sock is None:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            try:
                sock.setblocking(False)
                sock.connect(os.fspath(self.socket_path))
            except OSError:
                sock.close()
                raise
            self._sock = sock
        return self._sock

    async def _send(self, entry: bytes) -> None:
        sock = self._connect()
        reconnected = False
        while True:
            try:
                sock.send(entry)
                return
            except BlockingIOError:  # journald's queue is full: wait, without blocking the loop
                await _writable(sock)
            except OSError as exc:
                if exc.errno in _TOO_BIG:
                    await self._send_memfd(sock, entry)
                    return
                if exc.errno in _PEER_GONE and not reconnected:
                    self._close()
                    sock = self._connect()
                    reconnected = True
                    continue
                raise

    async def _send_memfd(self, sock: socket.socket, entry: bytes) -> None:
        """The entry in a sealed memfd, its descriptor passed in an empty datagram."""
        fd = os.memfd_create("linkmond-journal", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        try:
            view = memoryview(entry)
            while view:
                view = view[os.write(fd, view) :]
            fcntl.fcntl(fd, fcntl.F_ADD_SEALS, _SEALS)
            rights = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack("i", fd))]
            while True:
                try:
                    sock.sendmsg([], rights)
                    break
                except BlockingIOError:
                    await _writable(sock)
        finally:
            os.close(fd)
        self.memfd_entries += 1

    def _close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    async def aclose(self) -> None:
        """Close the socket (journald keeps what it received)."""
        self._close()


async def _writable(sock: socket.socket) -> None:
    """Wait until ``sock`` can send (on a connected datagram socket: journald has room)."""
    loop = asyncio.get_running_loop()
    ready: asyncio.Future[None] = loop.create_future()

    def wake() -> None:
        if not ready.done():
            ready.set_result(None)

    fd = sock.fileno()
    loop.add_writer(fd, wake)
    try:
        await ready
    finally:
        loop.remove_writer(fd)
