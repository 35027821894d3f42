"""Shutdown is bounded even when a sink's writer thread is stuck in a write."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import NetNS, wait_for

pytestmark = pytest.mark.netns


def test_sigterm_exits_although_stdout_is_a_pipe_nobody_reads(ns: NetNS, tmp_path: Path) -> None:
    config = tmp_path / "linkmond.toml"
    config.write_text(
        '[daemon]\ndrain_timeout = "1s"\n\n[sinks.console]\ntype = "console"\njson = true\n'
    )
    fifo = tmp_path / "stdout.fifo"
    os.mkfifo(fifo)
    keep_open = os.open(fifo, os.O_RDWR | os.O_NONBLOCK)  # a reader that never reads
    stderr = tmp_path / "stderr"
    with open(fifo, "wb") as out, stderr.open("wb") as err:
        proc = subprocess.Popen(
            [
                "ip",
                "netns",
                "exec",
                ns.name,
                sys.executable,
                "-m",
                "linkmond",
                "run",
                "-c",
                str(config),
            ],
            stdout=out,
            stderr=err,
        )
    try:
        wait_for(lambda: '"started"' in stderr.read_text(), what="daemon started")
        for i in range(300):  # ~600 events of ~400 bytes: far more than a 64 KiB pipe holds
            ns.ip("link", "add", f"st{i}", "type", "veth", "peer", "name", f"sp{i}")
        proc.send_signal(signal.SIGTERM)
        # before the fix it never exited: asyncio.run joined the stuck thread without a limit
        assert proc.wait(timeout=30) == 0
        log = stderr.read_text()
        assert "events not delivered before shutdown" in log
        assert "writer thread is stuck" in log
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(keep_open)
