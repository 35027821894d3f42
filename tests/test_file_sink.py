"""File sink: a full disk never leaves a torn line, and the retry completes the file."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from linkmond.events import EventFactory
from linkmond.sinks.base import SinkError
from linkmond.sinks.file import FileSink


@pytest.fixture
def tiny_fs(tmp_path: Path) -> Iterator[Path]:
    """A 16 KiB tmpfs: room for about fifteen 1 KiB lines."""
    mount = tmp_path / "tiny"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16k", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=False)


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
