"""Secrets a sink reads from files (a webhook secret, NATS credentials): never from a file
every user may read.

A file readable by every user is refused (:class:`linkmond.config.ConfigError`, exit 78); one
a group the daemon is not in may read is accepted with a warning for the daemon to log.
"""

from __future__ import annotations

import grp
import os
import stat
from pathlib import Path

from linkmond.config import ConfigError


def read_private(path: Path, key: str, what: str) -> tuple[bytes, str | None]:
    """The bytes of a file holding a credential, and a warning if its group may read it.

    A file every user may read is refused (:class:`ConfigError`); one readable by a group the
    daemon is not in is accepted with a warning, for the daemon to log when it starts.
    """
    try:
        with path.open("rb") as f:
            st = os.fstat(f.fileno())
            mode = stat.S_IMODE(st.st_mode)
            if mode & stat.S_IROTH:
                raise ConfigError(
                    path,
                    [
                        (
                            key,
                            f"the {what} file is readable by every user (mode {mode:04o}): "
                            f"chmod o-r {path}, or hand it over with LoadCredential= "
                            "(docs/install.md)",
                        )
                    ],
                )
            data = f.read()
    except OSError as exc:
        raise ConfigError(path, [(key, f"cannot read the {what}: {exc.strerror}")]) from None
    warning = None
    if mode & stat.S_IRGRP and st.st_gid != os.getegid() and st.st_gid not in os.getgroups():
        try:
            group = grp.getgrgid(st.st_gid).gr_name
        except KeyError:
            group = str(st.st_gid)
        warning = (
            f"{path} ({key}) is readable by group {group} (mode {mode:04o}): every member of "
            f"it can read the {what}; chmod g-r it unless that is meant"
        )
    return data, warning
