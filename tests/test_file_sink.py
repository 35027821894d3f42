"""File sink: a batch is written as whole lines in one write, a full disk never leaves a torn
line, and the retry completes the file from the first line that did not make it."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from linkmond.events import EventFactory
from linkmond.sinks.base import SinkError
from linkmond.sinks.file import CHUNK_BYTES, FileSink


@pytest.fixture
def tiny_fs(tmp_path: Path) -> Iterator[Path]:
    """A 16 KiB tmpfs: room for about fifteen 1 KiB lines."""
    mount = tmp_path / "tiny"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16k", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        # lazy: a failed test may still hold the file open; the mount must not outlive it
        subprocess.run(["umount", "--lazy", str(mount)], check=False)


def write_syscalls() -> int:
    """Write-family system calls this process made so far (every thread), from /proc."""
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("syscw:"):
            return int(line.split()[1])
    raise AssertionError("no syscw in /proc/self/io")


def seqs_in(path: Path) -> list[int]:
    """The seq of every line of ``path``, each of which must be whole JSON."""
    raw = path.read_bytes()
    assert not raw or raw.endswith(b"\n"), "the file ends in a torn line"
    return [json.loads(line)["seq"] for line in raw.splitlines()]


async def test_a_batch_lands_as_whole_lines_in_order_with_one_write_per_chunk(
    tmp_path: Path,
) -> None:
    factory = EventFactory("/linkmond/t", "default")
    # ~1.5 MiB: more than one chunk, so two writes where one write a line would be 3000
    events = [factory.make("route.added", "lm0", {"pad": "x" * 450}) for _ in range(3000)]
    assert sum(len(e.json_line) + 1 for e in events) > CHUNK_BYTES
    path = tmp_path / "events.jsonl"
    sink = FileSink(path)
    await sink.start()
    before = write_syscalls()
    await sink.emit(events)
    writes = write_syscalls() - before
    await sink.emit(events[:1])  # a later batch appends
    await sink.aclose()
    assert seqs_in(path) == [e.seq for e in events] + [events[0].seq]
    assert path.read_text().splitlines()[0] == events[0].json_line
    assert 2 <= writes < 10, writes


@pytest.mark.parametrize("fsync", ["always", "interval"])
async def test_fsync_policies_write_the_whole_batch(tmp_path: Path, fsync: str) -> None:
    factory = EventFactory("/linkmond/t", "default")
    events = [factory.make("addr.added", "lm0", {"ifindex": 2}) for _ in range(100)]
    path = tmp_path / "events.jsonl"
    sink = FileSink(path, fsync=fsync)  # type: ignore[arg-type]
    await sink.start()
    await sink.emit(events)
    await sink.aclose()
    assert seqs_in(path) == [e.seq for e in events]


@pytest.mark.parametrize(
    ("before", "kept"),
    [
        (b"", b""),
        (b'{"seq":1}\n', b'{"seq":1}\n'),
        # a writer killed mid-write (kill -9 stops a big write at a page boundary)
        (
            b'{"seq":1}\n{"specversion":"1.0","id":"01',
            b'{"seq":1}\n{"specversion":"1.0","id":"01\n',
        ),
    ],
)
async def test_a_torn_last_line_left_by_a_killed_writer_is_ended_not_glued_to(
    tmp_path: Path, before: bytes, kept: bytes
) -> None:
    factory = EventFactory("/linkmond/t", "default")
    events = [factory.make("addr.added", "lm0", {"ifindex": 2}) for _ in range(3)]
    path = tmp_path / "events.jsonl"
    path.write_bytes(before)
    sink = FileSink(path)
    await sink.start()
    await sink.emit(events)
    sink.reopen()  # the same, whole file again: nothing more added
    await sink.emit(events[:1])
    await sink.aclose()
    raw = path.read_bytes()
    assert raw.startswith(kept)  # the fragment is never removed: it may not be ours
    ours = [json.loads(line)["seq"] for line in raw[len(kept) :].splitlines()]
    assert ours == [e.seq for e in events] + [events[0].seq]


async def test_a_device_is_not_a_file_to_append_to() -> None:
    """/dev/full once stood in for a full disk; a character device is refused like any file
    that is not a regular one (a full disk: the tmpfs tests below)."""
    factory = EventFactory("/linkmond/t", "default")
    sink = FileSink(Path("/dev/full"))
    with pytest.raises(SinkError, match="refusing to append to /dev/full: it is not a regular"):
        await sink.start()
    with pytest.raises(SinkError) as failure:
        await sink.emit([factory.make("addr.added", "lm0", {"ifindex": 2}) for _ in range(5)])
    assert failure.value.delivered == 0
    assert "not a regular file" in str(failure.value)
    await sink.aclose()


@pytest.mark.root
async def test_full_disk_leaves_whole_lines_and_the_retry_appends_the_rest(tiny_fs: Path) -> None:
    factory = EventFactory("/linkmond/t", "default")
    events = [factory.make("link.changed", "lm0", {"pad": "x" * 900}) for _ in range(40)]
    sink = FileSink(tiny_fs / "events.jsonl")
    await sink.start()
    with pytest.raises(SinkError) as failure:
        await sink.emit(events)
    delivered = failure.value.delivered
    assert 0 < delivered < len(events)
    raw = (tiny_fs / "events.jsonl").read_bytes()
    assert raw.endswith(b"\n")
    lines = [json.loads(line) for line in raw.splitlines()]  # every line is whole JSON
    assert [e["seq"] for e in lines] == [e.seq for e in events[:delivered]]

    # room again: the worker's retry of the rest completes the file, nothing doubled
    (tiny_fs / "events.jsonl").rename(tiny_fs / "old.jsonl")
    (tiny_fs / "old.jsonl").unlink()
    sink.reopen()
    await sink.emit(events[delivered : delivered + 5])
    await sink.aclose()
    again = [json.loads(line) for line in (tiny_fs / "events.jsonl").read_text().splitlines()]
    assert [e["seq"] for e in again] == [e.seq for e in events[delivered : delivered + 5]]


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A 3 MiB tmpfs: room for three chunks, not five."""
    mount = tmp_path / "small"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        # lazy: a failed test may still hold the file open; the mount must not outlive it
        subprocess.run(["umount", "--lazy", str(mount)], check=False)


def grow_tmpfs(mount: Path, size: str) -> None:
    subprocess.run(["mount", "-o", f"remount,size={size}", str(mount)], check=True)


@pytest.mark.root
async def test_a_disk_filling_up_in_a_later_chunk_counts_every_whole_line_before_it(
    small_fs: Path,
) -> None:
    factory = EventFactory("/linkmond/t", "default")
    # ~5 MiB of 1 KiB lines in one batch: chunks 1 and 2 fit, the disk fills in chunk 3
    events = [factory.make("route.added", "lm0", {"pad": "y" * 999}) for _ in range(5000)]
    per_chunk = CHUNK_BYTES // (len(events[0].json_line) + 1)
    path = small_fs / "events.jsonl"
    sink = FileSink(path)
    await sink.start()
    with pytest.raises(SinkError) as failure:
        await sink.emit(events)
    delivered = failure.value.delivered
    assert 2 * per_chunk < delivered < len(events)
    assert seqs_in(path) == [e.seq for e in events[:delivered]]

    # room again: the worker retries from the first line that did not make it
    grow_tmpfs(small_fs, "16m")
    await sink.emit(events[delivered:])
    await sink.aclose()
    assert seqs_in(path) == [e.seq for e in events]  # every line once, in order


async def test_a_symlink_is_never_followed_at_start_nor_at_a_reopen(tmp_path: Path) -> None:
    factory = EventFactory("/linkmond/t", "default")
    events = [factory.make("addr.added", "lm0", {"ifindex": 2}) for _ in range(3)]
    target = tmp_path / "precious"
    target.write_bytes(b"keep me\n")
    path = tmp_path / "events.jsonl"
    path.symlink_to(target)
    sink = FileSink(path)
    with pytest.raises(SinkError, match=f"refusing to append to {path}: it is a symlink"):
        await sink.start()
    with pytest.raises(SinkError, match="symlink"):
        await sink.emit(events)

    path.unlink()  # gone: the retry creates the file
    await sink.emit(events[:1])
    path.rename(tmp_path / "events.jsonl.1")  # logrotate moves it away ...
    path.symlink_to(target)  # ... and a symlink takes its place before the reopen
    sink.reopen()
    with pytest.raises(SinkError, match="symlink") as failure:
        await sink.emit(events[1:])
    assert failure.value.delivered == 0
    path.unlink()
    await sink.emit(events[1:])
    await sink.aclose()
    assert target.read_bytes() == b"keep me\n"
    assert seqs_in(tmp_path / "events.jsonl.1") == [events[0].seq]
    assert seqs_in(path) == [e.seq for e in events[1:]]
