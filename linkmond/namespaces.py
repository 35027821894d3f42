"""Named network namespaces: which exist, which appear and go, and opening sockets in one.

``ip netns add NAME`` makes ``/run/netns/NAME`` and bind-mounts the new namespace on it;
``ip netns del`` unmounts and removes it. This module follows that directory with inotify
(pyroute2's ``Inotify``: Python has no inotify of its own), on the daemon's event loop and
without polling, and creates sockets inside a namespace from a short-lived thread that
enters it (``setns`` moves only the calling thread; a socket keeps the namespace it was made
in). Entering a namespace needs CAP_SYS_ADMIN.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import socket
import struct
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final, TypeVar

import structlog

log = structlog.get_logger("linkmond.namespaces")

RUN_NETNS: Final = Path("/run/netns")
#: inotify's IN_CREATE | IN_DELETE | IN_MOVED_FROM | IN_MOVED_TO
_DIR_EVENTS: Final = 0x100 | 0x200 | 0x40 | 0x80
#: how long a new name may take to become a namespace (``ip netns add`` creates the file,
#: then mounts the namespace on it): checked after 1 ms, doubling, for about 8 s in all
_READY_FIRST: Final = 0.001
_READY_TRIES: Final = 13

_T = TypeVar("_T")


#: getsockopt: the network namespace's 64-bit cookie, never reused during a boot (Linux 5.14)
SO_NETNS_COOKIE: Final = 71


def netns_cookie() -> int | None:
    """The cookie of the namespace this thread is in (None where the kernel has none)."""
    with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        value: int = struct.unpack("=Q", sock.getsockopt(socket.SOL_SOCKET, SO_NETNS_COOKIE, 8))[0]
        return value
    return None


def named_namespaces(run_dir: Path = RUN_NETNS) -> list[str]:
    """The names ``ip netns list`` shows that are namespaces now (sorted)."""
    try:
        entries = sorted(run_dir.iterdir())
    except OSError:
        return []
    return [entry.name for entry in entries if is_namespace(entry)]


def is_namespace(path: Path) -> bool:
    """Whether ``path`` is a network namespace (a mounted nsfs file), not just a name."""
    try:
        return os.stat(path).st_dev == os.stat("/proc/self/ns/net").st_dev
    except OSError:
        return False


def namespace_path(name: str, run_dir: Path = RUN_NETNS) -> Path:
    """``/run/netns/NAME``; a name with a ``/`` is taken as a path."""
    return Path(name) if "/" in name else run_dir / name


def inside(name: str, make: Callable[[], _T], run_dir: Path = RUN_NETNS) -> _T:
    """``make()`` called inside namespace ``name``, from a thread of its own that enters it
    and then ends, so no other thread (the event loop's least of all) ever changes namespace.

    Raises OSError when the namespace cannot be entered (ENOENT: no such name; EPERM: this
    process may not enter namespaces; EINVAL: not a namespace).
    """
    return _in_thread(str(namespace_path(name, run_dir)), name, make)


def _in_thread(target: str | int, label: str, make: Callable[[], _T]) -> _T:
    """``make()`` from a new thread that first enters ``target`` (a path or an open nsfs
    descriptor) and ends afterwards."""
    from pyroute2 import netns  # noqa: PLC0415 - only multi-namespace setups need it

    result: list[_T] = []
    error: list[BaseException] = []

    def run() -> None:
        try:
            netns.setns(target, flags=0)  # flags=0: never create a namespace
            result.append(make())
        except BaseException as exc:  # handed to the caller's thread
            error.append(exc)

    thread = threading.Thread(target=run, name=f"linkmond-netns-{label}", daemon=True)
    thread.start()
    thread.join()
    if error:
        raise error[0]
    return result[0]


class Namespace:
    """One watched network namespace: its name and a handle on that very instance.

    The daemon's own namespace (:meth:`own`) needs nothing: sockets made anywhere in this
    process belong to it. Another one (:meth:`open`) is held by an open descriptor of its
    ``/run/netns`` file, so that every socket made for it later (a dump socket replaced after
    a stall) lands in the same instance, even once the name is deleted or given to a new
    namespace. Holding it keeps the namespace alive: :meth:`close` it when the name goes.
    """

    def __init__(self, name: str, fd: int | None) -> None:
        self.name = name
        #: an open nsfs descriptor; None for the daemon's own namespace
        self.fd = fd
        self.closed = False
        self._cookie: int | None = None
        self._cookie_known = False

    @classmethod
    def own(cls, name: str) -> Namespace:
        """The namespace this process runs in, reported as ``name``."""
        return cls(name, None)

    @classmethod
    def open(cls, name: str, run_dir: Path = RUN_NETNS) -> Namespace:
        """The namespace ``ip netns`` knows as ``name``; raises OSError when there is none
        (ENOENT) or the name is no namespace (EINVAL)."""
        path = namespace_path(name, run_dir)
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        if os.fstat(fd).st_dev != os.stat("/proc/self/ns/net").st_dev:
            os.close(fd)
            raise OSError(errno.EINVAL, "not a network namespace (not mounted yet?)", str(path))
        return cls(name, fd)

    @property
    def is_own(self) -> bool:
        """True for the daemon's own namespace."""
        return self.fd is None

    @property
    def path(self) -> str:
        """A path that names this namespace instance (for ``stat``)."""
        return "/proc/self/ns/net" if self.fd is None else f"/proc/self/fd/{self.fd}"

    def inode(self) -> tuple[int, int]:
        """(st_dev, st_ino): what tells namespace instances apart during a boot."""
        st = os.stat(self.path)
        return st.st_dev, st.st_ino

    def cookie(self) -> int | None:
        """The namespace's cookie (see :func:`netns_cookie`); asked once, it never changes."""
        if not self._cookie_known:
            self._cookie = netns_cookie() if self.fd is None else self.make(netns_cookie)
            self._cookie_known = True
        return self._cookie

    def make(self, make: Callable[[], _T]) -> _T:
        """``make()`` inside this namespace (see :func:`inside`). Raises OSError (EPERM:
        entering namespaces needs CAP_SYS_ADMIN)."""
        if self.fd is None:
            return make()
        return _in_thread(self.fd, self.name, make)

    def close(self) -> None:
        """Let go of the namespace (idempotent)."""
        if self.fd is not None and not self.closed:
            self.closed = True
            os.close(self.fd)

    def __repr__(self) -> str:
        return f"Namespace({self.name!r})"


class NamespaceDir:
    """Calls ``appeared(name)`` and ``gone(name)`` as namespaces are added to and deleted
    from ``run_dir``, from the event loop.

    A name is reported once it is a namespace (the mount follows the file), and gone as soon
    as its file is. A missing ``run_dir`` (no namespace was ever added) is watched for from
    its parent.
    """

    def __init__(
        self,
        appeared: Callable[[str], None],
        gone: Callable[[str], None],
        run_dir: Path = RUN_NETNS,
    ) -> None:
        self.appeared = appeared
        self.gone = gone
        self.run_dir = run_dir
        self._inotify: Any = None  # pyroute2 Inotify (untyped)
        self._fd = -1
        self._watching_parent = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pending: dict[str, asyncio.TimerHandle] = {}

    def start(self) -> list[str]:
        """Begin watching; returns the namespaces there now (reported by the caller)."""
        from pyroute2.inotify.inotify_fd import Inotify  # noqa: PLC0415

        self._loop = asyncio.get_running_loop()
        ino = Inotify(path=[])
        ino.bind()
        self._inotify = ino
        self._fd = ino.fd
        self._watch()
        self._loop.add_reader(self._fd, self._on_readable)
        present = named_namespaces(self.run_dir)
        self._check_unmounted(present)
        return present

    def _check_unmounted(self, known: list[str]) -> None:
        """Names in the directory that are not namespaces yet: ``ip netns add`` made the file
        before we watched and mounts the namespace on it next; report them once it has."""
        try:
            names = [entry.name for entry in self.run_dir.iterdir()]
        except OSError:
            return
        for name in names:
            if name not in known and name not in self._pending:
                self._check(name, _READY_TRIES, _READY_FIRST)

    def _watch(self) -> None:
        ino = self._inotify
        assert ino is not None
        if self.run_dir.is_dir():
            ino.register_path(str(self.run_dir), _DIR_EVENTS)
            self._watching_parent = False
        else:
            ino.register_path(str(self.run_dir.parent), 0x100)
            self._watching_parent = True

    def _on_readable(self) -> None:
        ino = self._inotify
        assert ino is not None
        try:
            data = os.read(self._fd, 65536)
        except BlockingIOError:
            return
        run_dir = str(self.run_dir)
        for msg in ino.parse(data):
            name, mask, where = msg["name"], msg["mask"], msg["path"]
            if where != run_dir:  # the parent: has the directory been made?
                if self._watching_parent and name == self.run_dir.name and self.run_dir.is_dir():
                    self._watch()
                    # what was made before the watch (the first `ip netns add` makes the
                    # directory and then, at once, its file): each reported once it is mounted
                    self._check_unmounted([])
                continue
            if not name:
                continue
            if mask & (0x200 | 0x40):  # IN_DELETE, IN_MOVED_FROM
                handle = self._pending.pop(name, None)
                if handle is not None:
                    handle.cancel()  # it never became a namespace: nothing to report
                else:
                    self.gone(name)
            elif mask & (0x100 | 0x80):  # IN_CREATE, IN_MOVED_TO
                self._check(name, _READY_TRIES, _READY_FIRST)

    def _check(self, name: str, tries: int, delay: float) -> None:
        handle = self._pending.pop(name, None)
        if handle is not None:
            handle.cancel()  # checked anew now (harmless if it is the handle calling)
        if is_namespace(self.run_dir / name):
            self.appeared(name)
            return
        if tries <= 0:
            log.warning("a name in the namespace directory never became a namespace", name=name)
            return
        assert self._loop is not None
        self._pending[name] = self._loop.call_later(delay, self._check, name, tries - 1, delay * 2)

    def close(self) -> None:
        """Stop watching (idempotent)."""
        for handle in self._pending.values():
            handle.cancel()
        self._pending.clear()
        if self._inotify is not None:
            if self._loop is not None:
                self._loop.remove_reader(self._fd)
            self._inotify.close()
            self._inotify = None
