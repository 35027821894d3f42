"""Opening the files the daemon writes (events, dead letters, the spool) without being tricked.

When the daemon runs as root, whoever can write the directory of a file it appends to could
plant a symlink there and have events appended to any file on the system. So every file the
daemon creates or appends to is opened here: the last path component is never followed
(``O_NOFOLLOW``), and what was opened must be a regular file owned by the daemon's own user
(checked on the descriptor, ``fstat``, so nothing can be swapped in between). A file it
creates gets exactly ``mode`` whatever the umask; an existing file keeps the mode the operator
gave it.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path
from typing import Final

#: events and dead letters: the daemon's user writes, its group (log readers) reads
LOG_MODE: Final = 0o640
#: the spool and other state: the daemon's user only
PRIVATE_MODE: Final = 0o600


class UnsafeFileError(OSError):
    """The path is a symlink, not a regular file, or owned by another user."""


def open_append(path: Path, mode: int = LOG_MODE) -> int:
    """A descriptor appending to ``path``, created with exactly ``mode`` if it does not exist.

    Raises :class:`UnsafeFileError` for a symlink, a non-regular file or a file owned by
    another user, and OSError for anything the system refuses.
    """
    flags = os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC | os.O_NOFOLLOW
    return _open(path, flags, mode)


def ensure_private(path: Path, mode: int = PRIVATE_MODE) -> None:
    """Create ``path`` empty with exactly ``mode`` if it does not exist, and check it as
    :func:`open_append` does: for files another library opens by name afterwards (SQLite,
    which gives its ``-wal`` and ``-shm`` files the mode of the database file)."""
    os.close(_open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW, mode))


def open_read(path: Path) -> int:
    """A descriptor reading ``path``, a file the daemon wrote itself (the saved state).

    Held to the rules of :func:`open_append`, so that nobody can make the daemon read what
    they planted: :class:`UnsafeFileError` for a symlink, a non-regular file, or a file owned
    by another user or with more than one link; FileNotFoundError when there is none.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise UnsafeFileError(exc.errno, "is a symlink: not followed", str(path)) from None
        if exc.errno == errno.ENXIO:
            raise UnsafeFileError(exc.errno, "is not a regular file", str(path)) from None
        raise
    _check(fd, path)
    os.set_blocking(fd, True)
    return fd


def _open(path: Path, flags: int, mode: int) -> int:
    try:
        fd = os.open(path, flags | os.O_CREAT | os.O_EXCL, mode)
    except FileExistsError:
        try:
            # O_NONBLOCK: opening a planted FIFO must not wait for a reader or writer (it has
            # no effect on the regular files that pass the check)
            fd = os.open(path, flags | os.O_NONBLOCK)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise UnsafeFileError(exc.errno, "is a symlink: not followed", str(path)) from None
            if exc.errno == errno.ENXIO:  # a FIFO or socket with no one at the other end
                raise UnsafeFileError(exc.errno, "is not a regular file", str(path)) from None
            raise
        _check(fd, path)
        os.set_blocking(fd, True)
        return fd
    try:
        os.fchmod(fd, mode)  # the umask may have taken bits away that the mode asks for
    except OSError:
        os.close(fd)
        raise
    return fd


def _check(fd: int, path: Path) -> None:
    st = os.fstat(fd)
    problem = None
    if not stat.S_ISREG(st.st_mode):
        problem = "is not a regular file"
    elif st.st_uid != os.geteuid():
        problem = f"is owned by uid {st.st_uid}, not by the daemon's user (uid {os.geteuid()})"
    elif st.st_nlink > 1:  # a hard link to another file (fs.protected_hardlinks=0)
        problem = f"has {st.st_nlink} hard links: it may be another file too"
    if problem is not None:
        os.close(fd)
        raise UnsafeFileError(errno.EPERM, problem, str(path))
