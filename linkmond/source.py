"""The rtnetlink socket: subscription, receive buffer, dump requests and non-blocking reads.

A plain ``socket.socket`` rather than pyroute2's: after ``ENOBUFS`` (receive-buffer overflow)
a plain socket simply goes on working, which pyroute2's asyncio socket does not.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import struct
from collections.abc import Iterable
from pathlib import Path
from typing import Final

from linkmond import rtnl

SO_RCVBUFFORCE: Final = 33
_NLMSGHDR: Final = struct.Struct("=IHHII")

#: table name → (dump request type, size of its zeroed fixed header)
DUMP_REQUESTS: Final = {
    "link": (rtnl.RTM_GETLINK, 16),  # struct ifinfomsg
    "addr": (rtnl.RTM_GETADDR, 8),  # struct ifaddrmsg
    "route": (rtnl.RTM_GETROUTE, 12),  # struct rtmsg
    "neigh": (rtnl.RTM_GETNEIGH, 12),  # struct ndmsg
    "rule": (rtnl.RTM_GETRULE, 12),  # struct fib_rule_hdr
    "netconf": (rtnl.RTM_GETNETCONF, 4),  # struct netconfmsg, padded
}

#: Large enough for any datagram the kernel sends (dump batches are at most 32 KiB).
READ_SIZE: Final = 1 << 20
#: What a dump's answer is read with (see NetlinkSocket.recv_dump_into).
DUMP_READ: Final = 8192

#: the attribute that restricts a dump to one device: RTA_OIF for routes, NDA_IFINDEX for
#: neighbours (``ip_valid_fib_dump_req`` / ``neigh_valid_dump_req`` in the kernel)
_DEVICE_FILTER: Final = {"route": rtnl.RTA_OIF, "neigh": rtnl.NDA_IFINDEX}


def open_raw() -> socket.socket:
    """A new non-blocking NETLINK_ROUTE socket, unbound; it belongs to the network namespace
    of the thread that calls this."""
    return socket.socket(
        socket.AF_NETLINK,
        socket.SOCK_RAW | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC,
        rtnl.NETLINK_ROUTE,
    )


class NetlinkSocket:
    """A non-blocking NETLINK_ROUTE socket joined to rtnetlink multicast groups.

    Groups are joined one by one with ``NETLINK_ADD_MEMBERSHIP`` (the bind mask cannot name
    groups above 31, and using one mechanism for all keeps it simple). No privilege is needed.
    """

    def __init__(
        self,
        groups: Iterable[int] = (),
        receive_buffer: int = 0,
        *,
        passed: socket.socket | None = None,
        made: socket.socket | None = None,
    ) -> None:
        """``passed``: a socket systemd created, bound already; ``made``: one from
        :func:`open_raw` made elsewhere (inside another namespace), not bound yet; neither:
        one is made here, in this process's namespace."""
        #: True for a socket systemd created and passed (``linkmond.socket``): its receive
        #: buffer was forced by PID 1 and is only ever grown, never set lower
        self.passed = passed is not None
        if passed is not None:
            # `run` has quiesced it already (see linkmond.cli): an earlier run's memberships
            # and queued messages are gone before the groups are joined below
            passed.setblocking(False)
            self.sock = passed
        else:
            self.sock = made if made is not None else open_raw()
        try:
            self.requested_buffer = receive_buffer
            if receive_buffer:
                self.set_receive_buffer(receive_buffer)
            if passed is None:
                self.sock.bind((0, 0))
            self.portid: int = self.sock.getsockname()[0]
            for group in groups:
                self.sock.setsockopt(rtnl.SOL_NETLINK, rtnl.NETLINK_ADD_MEMBERSHIP, group)
        except BaseException:
            self.sock.close()
            raise
        self._seq = 0
        self._peek = bytearray(16)

    def set_receive_buffer(self, size: int) -> None:
        """Ask for ``size`` bytes of receive buffer (:attr:`receive_buffer` says what was given).

        A passed socket keeps the buffer PID 1 forced unless ``size`` is larger and this
        process may force it too: SO_RCVBUF would cut it down to ``net.core.rmem_max``.
        """
        if self.passed and size <= self.receive_buffer:
            return
        # SO_RCVBUFFORCE passes net.core.rmem_max but needs CAP_NET_ADMIN; without it,
        # SO_RCVBUF is silently capped at rmem_max (see receive_buffer).
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, size)
        except PermissionError:
            if not self.passed:
                self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)

    @property
    def receive_buffer(self) -> int:
        """The effective receive buffer in bytes (the kernel reports twice what it accounts)."""
        return self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) // 2

    def quiesce(self) -> int:
        """Leave every group and discard what is queued (see :func:`quiesce`)."""
        return quiesce(self.sock)

    def fileno(self) -> int:
        """The socket's descriptor, for ``loop.add_reader``."""
        return self.sock.fileno()

    def enable_strict_check(self) -> bool:
        """Turn on ``NETLINK_GET_STRICT_CHK`` (kernel >= 4.20), which filtered dumps need.

        Returns False where the kernel refuses it: dumps then ignore a device filter, so the
        caller must fall back to whole-table dumps.
        """
        try:
            self.sock.setsockopt(rtnl.SOL_NETLINK, rtnl.NETLINK_GET_STRICT_CHK, 1)
        except OSError:
            return False
        return True

    def request_dump(self, table: str, family: int = 0, oif: int | None = None) -> int:
        """Ask the kernel to dump ``table``; returns the request's seq.

        ``family`` 0 dumps every address family. ``oif`` restricts a ``route`` or ``neigh``
        dump to one device; the kernel honours it only under strict checking (see
        :meth:`enable_strict_check`). The fixed header is otherwise zero, as strict checking
        demands.
        """
        mtype, header = DUMP_REQUESTS[table]
        self._seq += 1
        payload = bytearray(header)
        if family:
            payload[0] = family  # the first byte of every rtnetlink header is the family
        if oif is not None:
            payload += struct.pack("=HHI", 8, _DEVICE_FILTER[table], oif)
        length = 16 + len(payload)
        msg = _NLMSGHDR.pack(length, mtype, rtnl.NLM_F_REQUEST | rtnl.NLM_F_DUMP, self._seq, 0)
        self.sock.send(msg + payload)
        return self._seq

    def recv_into(self, buf: bytearray | memoryview) -> int:
        """Read one datagram; raises BlockingIOError when drained, OSError(ENOBUFS) on overflow."""
        return self.sock.recv_into(buf)

    def recv_dump_into(self, buf: bytearray | memoryview) -> int:
        """Read one datagram of a dump's answer, asking the kernel to keep the parts small.

        The kernel sizes a dump's next part by the largest read this socket has made (up to
        32 KiB: ~600 routes, ~6 ms of work that nothing else gets between). Reading with
        :data:`DUMP_READ` bytes, after a peek at the true size so that a larger message (a
        link with many VFs) is still read whole, keeps parts at ~150 routes.
        """
        size = self.sock.recv_into(self._peek, 0, socket.MSG_PEEK | socket.MSG_TRUNC)
        return self.sock.recv_into(buf, max(size, DUMP_READ))

    def close(self) -> None:
        """Close the socket (idempotent)."""
        self.sock.close()


def is_overflow(exc: OSError) -> bool:
    """True for the error a netlink socket reports after the kernel dropped messages."""
    return exc.errno == errno.ENOBUFS


def enter_netns(name: str) -> None:
    """Move this process into the network namespace ``ip netns`` knows as ``name`` (a path
    when it contains a ``/``), as ``ip -n NAME`` does; never creates one.

    Python 3.11 has no ``os.setns``: pyroute2's ``setns`` makes the system call. Sockets
    opened afterwards belong to that namespace. Raises OSError (ENOENT: no such namespace;
    EPERM: entering one needs CAP_SYS_ADMIN).
    """
    from pyroute2 import netns  # noqa: PLC0415 - only ``monitor --netns`` needs it

    if "/" not in name and (not name or name in (".", "..")):
        raise OSError(errno.EINVAL, "not a namespace name")
    netns.setns(name, flags=0)


def quiesce(sock: socket.socket) -> int:
    """Leave every multicast group, then discard what is queued; returns how many datagrams
    were discarded.

    For a socket systemd passed, which lives on in PID 1 after this process: left joined, it
    would fill while no daemon reads it, and become readable, which makes systemd start the
    service again; and what it queued while no daemon ran is older than the next run's dump.
    """
    group = 1
    while True:
        try:
            sock.setsockopt(rtnl.SOL_NETLINK, rtnl.NETLINK_DROP_MEMBERSHIP, group)
        except OSError:  # EINVAL past the family's last group
            break
        group += 1
    discarded = 0
    buf = bytearray(READ_SIZE)
    while True:
        try:
            sock.recv_into(buf, 0, socket.MSG_DONTWAIT)
        except BlockingIOError:
            return discarded
        except OSError as exc:
            if exc.errno != errno.ENOBUFS:  # an overflow while nobody read: nothing to do
                raise
        discarded += 1


#: the first descriptor systemd passes (``sd_listen_fds``: SD_LISTEN_FDS_START)
_LISTEN_FDS_START: Final = 3


def take_passed_socket() -> socket.socket | None:
    """The rtnetlink socket systemd passed to this process (socket activation), else None.

    ``linkmond.socket`` has PID 1 create it with ``ListenNetlink=route`` and force its
    ``ReceiveBuffer=``, which an unprivileged process cannot (``SO_RCVBUFFORCE`` needs
    CAP_NET_ADMIN). Like ``sd_listen_fds(1)``: only for this PID, and the variables are
    removed so that no child takes the socket too. A passed descriptor that is not a
    NETLINK_ROUTE socket is left alone.
    """
    pid = os.environ.pop("LISTEN_PID", "")
    count = os.environ.pop("LISTEN_FDS", "")
    os.environ.pop("LISTEN_FDNAMES", None)
    if pid != str(os.getpid()) or not count.isdigit():
        return None
    for fd in range(_LISTEN_FDS_START, _LISTEN_FDS_START + int(count)):
        try:
            sock = socket.socket(fileno=fd)
        except OSError:
            continue
        if sock.family == socket.AF_NETLINK and sock.proto == rtnl.NETLINK_ROUTE:
            os.set_inheritable(fd, False)
            return sock
        sock.detach()  # not ours to close
    return None


def current_netns_name(run_netns: str = "/run/netns") -> str:
    """The name ``ip netns`` knows this process's network namespace by, else ``default``.

    Like ``ip netns identify``: compare our ``/proc/self/ns/net`` with the bind mounts in
    /run/netns. The initial namespace, or an unnamed one, is reported as ``default``.
    """
    try:
        mine = os.stat("/proc/self/ns/net")
    except OSError:
        return "default"
    with contextlib.suppress(OSError):
        for entry in sorted(Path(run_netns).iterdir()):
            with contextlib.suppress(OSError):
                st = entry.stat()
                if (st.st_dev, st.st_ino) == (mine.st_dev, mine.st_ino):
                    return entry.name
    return "default"
