"""Test helpers: throwaway network namespaces and the daemon as a real subprocess."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from linkmond.sinks.base import Sink

ROOT = Path(__file__).resolve().parent.parent
IS_ROOT = os.geteuid() == 0
NEEDS_ROOT = "needs root to create network namespaces (CI runs as root)"


def wait_for(predicate: Callable[[], Any], timeout: float = 10.0, what: str = "condition") -> Any:
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    delay = 0.01
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(delay)
        delay = min(delay * 1.5, 0.1)


class NetNS:
    """A network namespace with a unique name, deleted by :meth:`delete`."""

    def __init__(self) -> None:
        self.name = f"lmtest-{uuid.uuid4().hex[:10]}"
        subprocess.run(["ip", "netns", "add", self.name], check=True)
        self.ip("link", "set", "lo", "up")

    def ip(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run ``ip -n <ns> ARGS``."""
        return subprocess.run(
            ["ip", "-n", self.name, *args], check=check, capture_output=True, text=True
        )

    def run(self, *cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run a command inside the namespace."""
        return subprocess.run(
            ["ip", "netns", "exec", self.name, *cmd], check=check, capture_output=True, text=True
        )

    def veth(self, name: str, peer: str, *, up: bool = True) -> None:
        """Create a veth pair inside the namespace, both ends up unless ``up`` is false."""
        self.ip("link", "add", name, "type", "veth", "peer", "name", peer)
        if up:
            self.ip("link", "set", name, "up")
            self.ip("link", "set", peer, "up")

    def delete(self) -> None:
        """Remove the namespace (and with it every interface in it)."""
        subprocess.run(["ip", "netns", "del", self.name], check=False, capture_output=True)


class Daemon:
    """``linkmond run`` as a subprocess inside a namespace, with a JSONL file sink to read back."""

    def __init__(self, ns: NetNS, workdir: Path, config: str | None = None) -> None:
        self.ns = ns
        self.events_path = workdir / "events.jsonl"
        self.config_path = workdir / "linkmond.toml"
        self.stderr_path = workdir / "daemon.stderr"
        self.stdout_path = workdir / "daemon.stdout"
        self.config_path.write_text(config or default_config(self.events_path))
        self.proc: subprocess.Popen[bytes] | None = None

    def command(self) -> list[str]:
        """How the daemon is started: ``ip netns exec <ns> python -m linkmond run -c …``."""
        run = [sys.executable, "-m", "linkmond", "run", "-c", str(self.config_path)]
        return ["ip", "netns", "exec", self.ns.name, *run]

    def start(self, wait_started: bool = True, env: dict[str, str] | None = None) -> Daemon:
        """Start the daemon (``env`` added to ours); by default wait for ``daemon.started``.

        Its state directory (the saved state, webhook spools) is ``state`` in the work
        directory, unless ``env`` names another ``STATE_DIRECTORY``: never the system's.
        """
        state = {"STATE_DIRECTORY": str(self.config_path.parent / "state")}
        self.proc = subprocess.Popen(
            self.command(),
            stdout=self.stdout_path.open("wb"),
            stderr=self.stderr_path.open("wb"),
            cwd=self.config_path.parent,
            env={**os.environ, **state, **(env or {})},
        )
        if wait_started:
            self.wait_event(lambda e: e["type"] == "daemon.started", what="daemon.started")
        return self

    def events(self) -> list[dict[str, Any]]:
        """Every event written to the JSONL file so far."""
        try:
            text = self.events_path.read_text()
        except FileNotFoundError:
            return []
        # only newline-terminated lines: the last one may be half written
        return [json.loads(line) for line in text.split("\n")[:-1] if line]

    def wait_event(
        self, match: Callable[[dict[str, Any]], bool], timeout: float = 10.0, what: str = "event"
    ) -> dict[str, Any]:
        """The first event matching ``match``, waiting for it with a deadline."""

        def find() -> dict[str, Any] | None:
            self._check_alive()
            return next((e for e in self.events() if match(e)), None)

        try:
            return wait_for(find, timeout, what)  # type: ignore[no-any-return]
        except AssertionError:
            raise AssertionError(
                f"{what} not seen; events: {self.summary()}; stderr: {self.stderr()[-2000:]}"
            ) from None

    def summary(self) -> list[str]:
        """``type subject`` of every event so far, for assertion messages."""
        return [f"{e['type']} {e['subject']}" for e in self.events()]

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace") if self.stderr_path.exists() else ""

    def _check_alive(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(
                f"daemon exited with {self.proc.returncode}: {self.stderr()[-2000:]}"
            )

    def barrier(self) -> None:
        """Make a distinctive change and wait for its event: everything the kernel announced
        before it has then been processed (events are written in order)."""
        name = f"bar{uuid.uuid4().hex[:8]}"
        self.ns.ip("link", "add", name, "type", "ifb")  # no dummy module on these kernels
        self.wait_event(
            lambda e: e["type"] == "link.added" and e["subject"] == name, what=f"barrier {name}"
        )
        self.ns.ip("link", "del", name)
        self.wait_event(
            lambda e: e["type"] == "link.removed" and e["subject"] == name,
            what=f"barrier {name} removal",
        )

    def mark(self) -> int:
        """The number of events so far: pass to :meth:`since` to see only what came after."""
        return len(self.events())

    def since(self, mark: int) -> list[dict[str, Any]]:
        return self.events()[mark:]

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int:
        """Send ``sig`` to the daemon (our own child, by PID) and wait for it to exit."""
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise


def linkmond(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    """``python -m linkmond ARGS`` as a subprocess in the current namespace."""
    return subprocess.run(
        [sys.executable, "-m", "linkmond", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=60,
        check=False,
    )


def default_config(events_path: Path, extra: str = "") -> str:
    """A config with one JSONL file sink that receives every event."""
    return (
        '[log]\nlevel = "debug"\nformat = "json"\n\n'
        f'[sinks.file]\ntype = "file"\npath = "{events_path}"\n' + extra
    )


@contextlib.contextmanager
def netns() -> Iterator[NetNS]:
    ns = NetNS()
    try:
        yield ns
    finally:
        ns.delete()


def restart(factory: Callable[..., Daemon], config: str) -> Daemon:
    """A new daemon on the same files, waiting for *its* daemon.started."""
    daemon = factory(config, start=False)
    mark = daemon.mark()
    daemon.start(wait_started=False)
    assert daemon.proc is not None
    pid = daemon.proc.pid
    wait_for(
        lambda: any(
            e["type"] == "daemon.started" and e["data"]["pid"] == pid for e in daemon.since(mark)
        ),
        15,
        "the restarted daemon",
    )
    return daemon


_S = TypeVar("_S", bound=Sink)


@contextlib.asynccontextmanager
async def running(sink: _S) -> AsyncIterator[_S]:
    """``sink`` started, and closed at the end."""
    await sink.start()
    try:
        yield sink
    finally:
        await sink.aclose()


async def until(predicate: Callable[[], Any], timeout: float = 10.0, what: str = "it") -> Any:
    """Poll ``predicate`` on the event loop until truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not (result := predicate()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.01)
    return result
