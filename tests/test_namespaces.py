"""Named namespaces: listing them, following ``ip netns add``/``del`` without polling, and
making sockets inside one from a thread of its own."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import uuid
from pathlib import Path

import pytest

from linkmond.namespaces import NamespaceDir, inside, is_namespace, named_namespaces
from tests.helpers import NetNS

pytestmark = pytest.mark.netns


def test_named_namespaces_lists_only_real_namespaces(ns: NetNS, tmp_path: Path) -> None:
    assert ns.name in named_namespaces()
    (tmp_path / "plain").write_text("")  # a file is a name, not a namespace
    assert named_namespaces(tmp_path) == []
    assert is_namespace(Path("/run/netns") / ns.name)


def test_a_socket_made_inside_belongs_to_that_namespace(ns: NetNS) -> None:
    ns.ip("link", "add", "lmin0", "type", "veth", "peer", "name", "lmin0p")
    mine = os.stat("/proc/self/ns/net").st_ino

    def make() -> tuple[socket.socket, int]:
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 0)
        return sock, os.stat("/proc/thread-self/ns/net").st_ino

    sock, theirs = inside(ns.name, make)
    try:
        assert theirs == os.stat(f"/run/netns/{ns.name}").st_ino != mine
        assert os.stat("/proc/thread-self/ns/net").st_ino == mine  # this thread never moved
    finally:
        sock.close()


def test_entering_a_name_that_is_no_namespace_is_an_oserror() -> None:
    with pytest.raises(FileNotFoundError):
        inside(f"lmtest-absent-{uuid.uuid4().hex[:8]}", lambda: None)


def test_namespaces_added_and_deleted_are_reported_as_they_happen() -> None:
    async def scenario() -> tuple[list[str], list[str], list[str]]:
        seen: list[str] = []
        gone: list[str] = []
        changed = asyncio.Event()

        def appeared(name: str) -> None:
            seen.append(name)
            changed.set()

        def removed(name: str) -> None:
            gone.append(name)
            changed.set()

        watcher = NamespaceDir(appeared, removed)
        before = watcher.start()
        name = f"lmtest-{uuid.uuid4().hex[:10]}"
        try:
            await asyncio.to_thread(subprocess.run, ["ip", "netns", "add", name], check=True)
            async with asyncio.timeout(10):
                while name not in seen:
                    changed.clear()
                    await changed.wait()
        finally:
            await asyncio.to_thread(subprocess.run, ["ip", "netns", "del", name], check=False)
        async with asyncio.timeout(10):
            while name not in gone:
                changed.clear()
                await changed.wait()
        watcher.close()
        return before, [n for n in seen if n == name], [n for n in gone if n == name]

    before, seen, gone = asyncio.run(scenario())
    assert all(is_namespace(Path("/run/netns") / n) or n.startswith("lm") for n in before)
    assert seen == gone  # once each, by the namespace's own name
    assert len(seen) == 1


def test_names_made_before_the_watch_are_reported_once_their_namespace_is_mounted(
    ns: NetNS, tmp_path: Path
) -> None:
    """The first ``ip netns add`` makes the directory and, at once, the name's file, then
    mounts the namespace on it: a watcher that saw the directory appear (or started between
    the file and the mount) must still report the name once it is a namespace."""
    run_dir = tmp_path / "netns"
    source = f"/run/netns/{ns.name}"

    async def scenario() -> list[str]:
        seen: list[str] = []
        changed = asyncio.Event()

        def appeared(name: str) -> None:
            seen.append(name)
            changed.set()

        watcher = NamespaceDir(appeared, lambda name: None, run_dir)
        assert watcher.start() == []  # no directory yet: its parent is watched
        # the directory and a file in it, in one go, before the watcher had a turn
        run_dir.mkdir()
        (run_dir / "early").write_text("")
        mounted: list[Path] = []
        try:
            async with asyncio.timeout(5):  # the watcher has seen the directory (not the file)
                while watcher._watching_parent:  # noqa: ASYNC110 - its own task, with a deadline
                    await asyncio.sleep(0.005)
            assert seen == []  # a plain file is no namespace
            early = run_dir / "early"
            await asyncio.to_thread(
                subprocess.run, ["mount", "--bind", source, str(early)], check=True
            )
            mounted.append(early)
            async with asyncio.timeout(10):
                while "early" not in seen:
                    changed.clear()
                    await changed.wait()
        finally:
            for path in mounted:
                await asyncio.to_thread(subprocess.run, ["umount", str(path)], check=False)
            watcher.close()
        return seen

    assert asyncio.run(scenario()) == ["early"]
