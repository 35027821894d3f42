"""Files the daemon writes are opened without following symlinks, must be regular files of
the daemon's own user, and are created with exactly their mode whatever the umask."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from linkmond.safefile import LOG_MODE, PRIVATE_MODE, UnsafeFileError, ensure_private, open_append


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize("mask", [0o022, 0o077, 0o000])
def test_a_created_file_has_exactly_its_mode_whatever_the_umask(tmp_path: Path, mask: int) -> None:
    old = os.umask(mask)
    try:
        os.close(open_append(tmp_path / "events.jsonl"))
        ensure_private(tmp_path / "spool.sqlite")
    finally:
        os.umask(old)
    assert _mode(tmp_path / "events.jsonl") == LOG_MODE
    assert _mode(tmp_path / "spool.sqlite") == PRIVATE_MODE


def test_an_existing_file_is_appended_to_and_keeps_its_mode(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    path.write_text("old\n")
    path.chmod(0o644)
    fd = open_append(path)
    try:
        os.write(fd, b"new\n")
    finally:
        os.close(fd)
    assert path.read_text() == "old\nnew\n"
    assert _mode(path) == 0o644


@pytest.mark.parametrize("dangling", [False, True], ids=["to a file", "dangling"])
def test_a_symlink_is_never_followed(tmp_path: Path, dangling: bool) -> None:
    target = tmp_path / "target"
    if not dangling:
        target.write_text("precious\n")
    link = tmp_path / "events.jsonl"
    link.symlink_to(target)
    for opener in (open_append, ensure_private):
        with pytest.raises(UnsafeFileError, match="symlink"):
            opener(link)
    assert target.exists() is not dangling
    if not dangling:
        assert target.read_text() == "precious\n"


def test_a_directory_or_a_fifo_is_refused(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    for opener in (open_append, ensure_private):  # without waiting for the other end
        with pytest.raises(UnsafeFileError, match="not a regular file"):
            opener(fifo)
    with pytest.raises(UnsafeFileError, match="not a regular file"):
        ensure_private(tmp_path)
    with pytest.raises(IsADirectoryError):
        open_append(tmp_path)


@pytest.mark.root
def test_a_file_of_another_user_is_refused(tmp_path: Path) -> None:
    planted = tmp_path / "events.jsonl"
    planted.write_text("")
    os.chown(planted, 65534, 65534)
    with pytest.raises(UnsafeFileError, match="owned by uid 65534"):
        open_append(planted)


def test_a_hard_link_is_refused(tmp_path: Path) -> None:
    precious = tmp_path / "precious"
    precious.write_text("keep\n")
    planted = tmp_path / "events.jsonl"
    os.link(precious, planted)
    with pytest.raises(UnsafeFileError, match="2 hard links"):
        open_append(planted)
    assert precious.read_text() == "keep\n"
