"""Issue 9, a security and robustness review: what a hostile or unlucky environment must not
achieve.

- A symlink planted at a file sink's path is never followed, at start or at the reopen after
  a rotation (the daemon as root, as a real subprocess); files it creates are 0640 whatever
  the umask.
- A reload that fails for any reason (a sink that cannot be built, one that cannot start)
  keeps the old configuration running, says why, and leaves no new sink behind.
- A sink whose ``emit`` raises something unexpected is retried with capped exponential
  backoff, logged at a bounded rate, and loses nothing.
- Control characters in an interface name reach the terminal escaped (``monitor``,
  ``status``); JSON keeps the exact name.
- ``replay`` reads its file in chunks: its memory does not grow with the file.

Hold-down state forgotten with the link is in tests/test_hold_down.py, the journal's escaped
``MESSAGE`` in tests/test_journal.py, chunked replay decoding exactly as the whole file in
tests/test_decode.py.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
import stat
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from linkmond import fanout, rtnl
from linkmond.config import FileSinkConfig
from linkmond.events import Event, EventFactory
from linkmond.fanout import SinkWorker
from linkmond.sinks.base import Sink
from linkmond.sinks.console import human_line
from tests.helpers import Daemon, NetNS, default_config, wait_for
from tests.test_cli import Running, in_ns, settle, wait_monitor_ready

#: the unprivileged user who owns the directory the events go to
NOBODY = 65534


# -- helpers ---------------------------------------------------------------------------------------


def daemon_logs(daemon: Daemon) -> list[dict[str, Any]]:
    """The daemon's own log lines (JSON, as ``default_config`` asks for)."""
    out = []
    for line in daemon.stderr().splitlines():
        if line.startswith("{"):
            out.append(json.loads(line))
    return out


def wait_log(
    daemon: Daemon, match: Callable[[dict[str, Any]], bool], what: str, timeout: float = 10.0
) -> dict[str, Any]:
    """The first log line of ``daemon`` matching ``match``, waited for with a deadline."""

    def find() -> dict[str, Any] | None:
        return next((e for e in daemon_logs(daemon) if match(e)), None)

    try:
        return wait_for(find, timeout, what)  # type: ignore[no-any-return]
    except AssertionError:
        alive = daemon.proc is not None and daemon.proc.poll() is None
        raise AssertionError(
            f"{what} not logged (daemon alive: {alive}); log: {daemon.stderr()[-3000:]}"
        ) from None


def logged(event: str, sink: str | None = None) -> Callable[[dict[str, Any]], bool]:
    """Match a log line by its message (and the sink it names)."""
    return lambda e: e.get("event") == event and (sink is None or e.get("sink") == sink)


def precious_file(tmp_path: Path) -> Path:
    """A file of root's that no event may ever touch (what a planted symlink points at)."""
    private = tmp_path / "root-only"
    private.mkdir(mode=0o700)
    target = private / "shadow"
    target.write_bytes(b"root:$6$not-a-real-hash:19000:0:99999:7:::\n")
    target.chmod(0o600)
    return target


def snapshot(path: Path) -> tuple[bytes, int, int, int, int]:
    """Contents, mode, owner, size and modification time: all must stay as they were."""
    st = path.stat()
    return path.read_bytes(), st.st_mode, st.st_uid, st.st_size, st.st_mtime_ns


def plant_symlink(link: Path, target: Path) -> None:
    """What the unprivileged owner of a writable directory can do: a symlink of their own."""
    link.symlink_to(target)
    os.lchown(link, NOBODY, NOBODY)


def carrier_lost(ifname: str) -> Callable[[dict[str, Any]], bool]:
    return lambda e: e["type"] == "link.carrier_lost" and e["subject"] == ifname


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line]


def file_sink(name: str, path: Path) -> str:
    return f'\n[sinks.{name}]\ntype = "file"\npath = "{path}"\n'


def sighup(daemon: Daemon) -> None:
    assert daemon.proc is not None
    daemon.proc.send_signal(signal.SIGHUP)


# -- symlinks are never followed -------------------------------------------------------------------


@pytest.mark.netns
def test_a_symlink_planted_at_a_file_sink_path_is_refused_and_its_target_untouched(
    ns: NetNS, daemon_factory: Callable[..., Daemon], tmp_path: Path
) -> None:
    target = precious_file(tmp_path)
    before = snapshot(target)
    shared = tmp_path / "shared"  # a log directory its owner, an ordinary user, may write
    shared.mkdir()
    os.chown(shared, NOBODY, NOBODY)
    planted = shared / "events.jsonl"
    plant_symlink(planted, target)
    config = default_config(tmp_path / "events.jsonl", file_sink("shared", planted))
    daemon = daemon_factory(config=config, start=False)
    daemon.start(wait_started=False)
    assert daemon.proc is not None
    # found before anything starts: the config is refused (a symlink planted later, between
    # a rotation and the reopen, is refused by the sink: see the logrotate race below)
    assert daemon.proc.wait(30) == 78
    assert f"sinks.shared.path: {planted} is a symlink" in daemon.stderr()
    assert snapshot(target) == before
    assert planted.is_symlink()


@pytest.mark.netns
def test_the_events_file_is_created_0640_whatever_the_umask(
    daemon_factory: Callable[..., Daemon],
) -> None:
    old = os.umask(0o077)  # inherited by the daemon
    try:
        daemon = daemon_factory()
    finally:
        os.umask(old)
    assert stat.S_IMODE(daemon.events_path.stat().st_mode) == 0o640


@pytest.mark.netns
def test_a_symlink_planted_after_logrotate_moved_the_file_is_refused_on_sighup(
    ns: NetNS, daemon_factory: Callable[..., Daemon], tmp_path: Path
) -> None:
    """logrotate moves the file away and sends SIGHUP; between the two, the directory's owner
    plants a symlink where the daemon reopens. Nothing reaches the target, the refusal is
    logged, and once the symlink is gone the retry delivers every event (a ``block`` sink)."""
    target = precious_file(tmp_path)
    before = snapshot(target)
    os.chown(tmp_path, NOBODY, NOBODY)  # the events' directory belongs to an ordinary user
    ns.veth("lm0", "lm0p")
    settle(ns, lm0="UP")
    old = os.umask(0o077)
    try:
        daemon = daemon_factory()
    finally:
        os.umask(old)
    rotated = daemon.events_path.with_name("events.jsonl.1")
    daemon.events_path.rename(rotated)  # logrotate's `create` mode
    plant_symlink(daemon.events_path, target)  # the race: before the daemon reopens
    sighup(daemon)
    # the config check sees the symlink too: the reload is rejected, the files reopened
    rejected = wait_log(
        daemon, logged("reload rejected; the old configuration stays in force"), "the reload"
    )
    assert "is a symlink" in rejected["error"]
    ns.ip("link", "set", "lm0p", "down")  # the first event after the reopen
    refused = wait_log(daemon, logged("sink failed; retrying", "file"), "refused reopen")
    assert str(daemon.events_path) in refused["error"]
    assert "symlink" in refused["error"]
    assert snapshot(target) == before
    assert daemon.proc is not None
    assert daemon.proc.poll() is None

    # the operator removes the symlink: the next retry creates a fresh file, nothing is lost
    daemon.events_path.unlink()
    daemon.wait_event(carrier_lost("lm0"), timeout=20, what="carrier_lost after the retry")
    assert stat.S_IMODE(daemon.events_path.stat().st_mode) == 0o640  # umask 077 or not
    assert daemon.stop() == 0
    assert snapshot(target) == before
    both = read_jsonl(rotated) + daemon.events()
    assert [e["seq"] for e in both] == list(range(1, len(both) + 1))  # each once, in order
    assert both[-1]["type"] == "daemon.stopping"


# -- a reload that fails keeps the old configuration -----------------------------------------------


def _secret() -> str:
    return "whsec_" + base64.b64encode(os.urandom(24)).decode()


@pytest.mark.netns
def test_a_reload_whose_sink_cannot_be_built_keeps_the_old_configuration_running(
    ns: NetNS, daemon_factory: Callable[..., Daemon], tmp_path: Path
) -> None:
    """``url = "http://127.0.0.1:99999/x"`` once killed the daemon on SIGHUP (``ValueError:
    Port out of range``, raised while the sink was built). Whether the config or the sink
    refuses it, the daemon must go on with the old configuration and say why."""
    ns.veth("lm0", "lm0p")
    settle(ns, lm0="UP")
    daemon = daemon_factory(start=False)
    daemon.start(env={"LM_TEST_SECRET": _secret()})
    state = tmp_path / "state"
    daemon.config_path.write_text(
        default_config(
            daemon.events_path,
            f'\n[daemon]\nstate_directory = "{state}"\n\n'
            '[sinks.hook]\ntype = "webhook"\nurl = "http://127.0.0.1:99999/x"\n'
            'secret_env = "LM_TEST_SECRET"\n',
        )
    )
    sighup(daemon)
    rejected = wait_log(
        daemon, logged("reload rejected; the old configuration stays in force"), "rejection"
    )
    assert "sinks.hook" in rejected["error"]
    assert "port" in rejected["error"].lower()

    ns.ip("link", "set", "lm0p", "down")
    daemon.wait_event(carrier_lost("lm0"), what="carrier_lost after the failed reload")
    assert daemon.proc is not None
    assert daemon.proc.poll() is None

    # and a good reload afterwards is taken
    later = tmp_path / "later.jsonl"
    daemon.config_path.write_text(default_config(daemon.events_path, file_sink("later", later)))
    sighup(daemon)
    wait_log(daemon, logged("reloaded"), "the good reload")
    ns.ip("link", "set", "lm0p", "up")
    wait_for(
        lambda: any(e["type"] == "link.carrier_up" for e in read_jsonl(later)),
        what="carrier_up in the sink added by the good reload",
    )
    assert daemon.stop() == 0
    assert "Traceback" not in daemon.stderr()


@pytest.mark.netns
def test_a_new_sink_that_cannot_start_rejects_the_reload_and_leaves_nothing_running(
    ns: NetNS, daemon_factory: Callable[..., Daemon], tmp_path: Path
) -> None:
    """A reload adds two sinks; the second cannot start (its path is a FIFO). The whole reload
    is rejected: the first new sink, already started, is closed again and gets no event; the
    old sinks go on. Fixing the config and reloading again takes it."""
    ns.veth("lm0", "lm0p")
    settle(ns, lm0="UP")
    daemon = daemon_factory()
    extra = tmp_path / "extra.jsonl"
    fifo = tmp_path / "events.fifo"
    os.mkfifo(fifo)
    daemon.config_path.write_text(
        default_config(daemon.events_path, file_sink("extra", extra) + file_sink("pipe", fifo))
    )
    sighup(daemon)
    rejected = wait_log(
        daemon, logged("reload rejected; the old configuration stays in force"), "rejection"
    )
    assert "sinks.pipe" in rejected["error"]
    assert str(fifo) in rejected["error"]
    assert "regular file" in rejected["error"]
    assert not any(e.get("event") == "reloaded" for e in daemon_logs(daemon))

    ns.ip("link", "set", "lm0p", "down")
    daemon.wait_event(carrier_lost("lm0"), what="carrier_lost in the old sink")
    daemon.barrier()  # everything before it has reached every sink there is
    assert read_jsonl(extra) == []  # the rolled-back sink took nothing

    daemon.config_path.write_text(default_config(daemon.events_path, file_sink("extra", extra)))
    sighup(daemon)
    wait_log(daemon, logged("reloaded"), "the fixed reload")
    ns.ip("link", "set", "lm0p", "up")
    wait_for(
        lambda: any(e["type"] == "link.carrier_up" for e in read_jsonl(extra)),
        what="carrier_up in the sink of the fixed reload",
    )
    assert daemon.stop() == 0
    assert read_jsonl(extra)[-1]["type"] == "daemon.stopping"


# -- unexpected exceptions in a sink back off ------------------------------------------------------


class Exploding(Sink):
    """A sink whose first ``failures`` emits raise ``make_error()``; then it works. Notes when
    it was called and keeps what it received."""

    def __init__(self, make_error: Callable[[], BaseException], failures: int) -> None:
        self.make_error = make_error
        self.failures = failures
        self.calls: list[float] = []
        self.received: list[Event] = []

    async def emit(self, events: Sequence[Event]) -> None:
        self.calls.append(time.monotonic())
        if len(self.calls) <= self.failures:
            raise self.make_error()
        self.received.extend(events)


class FailsEveryOtherCall(Sink):
    """Fails the first attempt at every batch, takes the retry: a sink that keeps failing."""

    def __init__(self) -> None:
        self.calls = 0
        self.received: list[Event] = []

    async def emit(self, events: Sequence[Event]) -> None:
        self.calls += 1
        if self.calls % 2:
            raise OSError(5, "Input/output error")
        self.received.extend(events)


def block_options() -> FileSinkConfig:
    return FileSinkConfig(type="file", path=Path("/nonexistent/unused"))


def some_events(n: int) -> list[Event]:
    factory = EventFactory("/linkmond/t", "default")
    return [factory.make("link.changed", "lm0", {"ifindex": 3, "ifname": "lm0"}) for _ in range(n)]


async def wait_until(predicate: Callable[[], Any], timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():  # noqa: ASYNC110 - polling another task's outcome, with a deadline
            await asyncio.sleep(0.005)


async def test_unexpected_errors_in_emit_back_off_capped_without_spinning_or_losing_events(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(fanout, "RETRY_INITIAL", 0.01)
    monkeypatch.setattr(fanout, "RETRY_MAX", 0.08)
    sink = Exploding(lambda: KeyError("ifname"), failures=9)
    worker = SinkWorker("bad", sink, block_options())
    assert worker.blocking
    events = some_events(50)
    for event in events:
        worker.offer(event)
    cpu, wall = time.process_time(), time.monotonic()
    with capture_logs() as logs:
        await worker.start()
        await wait_until(lambda: len(sink.received) == len(events))
    cpu, wall = time.process_time() - cpu, time.monotonic() - wall

    assert sink.received == events  # nothing lost, nothing doubled, in order
    assert worker.counters.failures == 9
    assert worker.counters.delivered == len(events)
    gaps = list(pairwise(sink.calls))
    waits = [b - a for a, b in gaps]
    # exponential from RETRY_INITIAL, then capped at RETRY_MAX
    for waited, least in zip(waits, [0.01, 0.02, 0.04] + [0.08] * 6, strict=True):
        assert waited >= least * 0.9, waits
    assert max(waits) < 0.5, waits  # capped at 0.08 s: uncapped the last would be 2.56 s
    assert cpu < wall / 2, (cpu, wall)  # it slept between attempts, it did not spin

    failed = [e for e in logs if e["event"] == "sink failed; retrying"]
    assert len(failed) == 1, logs  # once per streak, not once per attempt
    assert failed[0]["error"].startswith("KeyError")  # an unexpected error says what it is
    assert failed[0]["exc_info"]  # with its traceback: it is a bug somewhere
    assert [e["event"] for e in logs].count("sink recovered") == 1
    assert await worker.drain(1) == 0


async def test_a_cancelled_error_raised_inside_emit_does_not_end_the_worker(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A library's internal future cancelled by someone else raises CancelledError into emit
    although nobody cancelled the worker: that is a failed delivery, retried; the worker (and
    with it every later event of a ``block`` sink) must not silently end."""
    monkeypatch.setattr(fanout, "RETRY_INITIAL", 0.01)

    async def cancelled_elsewhere() -> BaseException:
        future = asyncio.get_running_loop().create_future()
        future.cancel()
        try:
            await future
        except asyncio.CancelledError as exc:
            return exc
        raise AssertionError("not cancelled")

    error = await cancelled_elsewhere()
    sink = Exploding(lambda: error, failures=2)
    worker = SinkWorker("cancelling", sink, block_options())
    await worker.start()
    events = some_events(5)
    for event in events:
        worker.offer(event)
    await wait_until(lambda: len(sink.received) == len(events))
    assert sink.received == events
    assert worker.counters.failures == 2
    # a real cancellation (drain, shutdown) still ends it
    assert await worker.drain(1) == 0


async def test_a_sink_that_keeps_failing_is_logged_at_a_bounded_rate(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(fanout, "RETRY_INITIAL", 0.001)
    sink = FailsEveryOtherCall()
    worker = SinkWorker("flaky", sink, block_options())
    await worker.start()
    events = some_events(40)
    with capture_logs() as logs:
        for n, event in enumerate(events, 1):
            worker.offer(event)
            await wait_until(lambda n=n: len(sink.received) == n)  # one batch each
    assert sink.received == events
    assert worker.counters.failures == len(events)
    messages = [e["event"] for e in logs]
    # 40 failure streaks within a minute: the first is logged, the rest only counted
    assert messages.count("sink failed; retrying") == 1, messages
    assert messages.count("sink recovered") == 1, messages
    await worker.drain(1)


async def test_a_sink_failing_for_long_is_reminded_of_with_counts(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(fanout, "RETRY_INITIAL", 0.005)
    monkeypatch.setattr(fanout, "RETRY_MAX", 0.02)
    monkeypatch.setattr(fanout, "FAILURE_LOG_EVERY", 0.2)
    sink = Exploding(lambda: RuntimeError("wedged"), failures=10**9)
    worker = SinkWorker("wedged", sink, block_options())
    events = some_events(3)
    with capture_logs() as logs:
        await worker.start()
        for event in events:
            worker.offer(event)
        await wait_until(lambda: sum(e["event"] == "sink still failing" for e in logs) >= 3)
        await worker.drain(0)
    reminders = [e for e in logs if e["event"] == "sink still failing"]
    attempts = [e["failures"] for e in reminders]
    assert attempts == sorted(attempts)
    assert attempts[0] > 1
    assert all(e["pending"] == len(events) for e in reminders)
    assert all(e["error"] == "RuntimeError: wedged" for e in reminders)
    since = [e["failing_for"] for e in reminders]
    assert all(b - a >= 0.2 * 0.9 for a, b in pairwise(since)), since
    # between reminders, attempts went on without a line each
    assert len(sink.calls) > len(reminders) + 1


# -- control characters in interface names ---------------------------------------------------------

#: the kernel takes ESC in a name (it refuses only '/', ':', whitespace, "." and ".."):
#: `ip link add $'lm\e[31mx' …` would turn the operator's terminal red
ESC_NAME = "lm\x1b[31mx"
SHOWN = "lm\\x1b[31mx"


def test_every_control_character_is_escaped_in_human_lines_and_nothing_else() -> None:
    controls = "".join(map(chr, [*range(0x20), *range(0x7F, 0xA0)]))
    name = f"é→\u00a0{controls}\\end"
    factory = EventFactory("/linkmond/t", "default")
    event = factory.make("link.admin_down", name, {"ifindex": 3, "ifname": name, "admin_up": False})
    line = human_line(event)
    shown = "".join(f"\\x{ord(c):02x}" for c in controls)
    assert line.endswith(f"] link é→\u00a0{shown}\\\\end: admin down")
    assert not any(c in controls for c in line)
    assert json.loads(event.json_line)["subject"] == name  # JSON: the exact name


@pytest.mark.netns
def test_monitor_prints_control_characters_of_an_interface_name_escaped(
    ns: NetNS, tmp_path: Path
) -> None:
    ns.veth(ESC_NAME, "lmq0")
    mon = Running(ns, tmp_path / "monitor.stderr", "monitor", "--interface", "lm*")
    try:
        wait_monitor_ready(ns, mon, lambda line, p: f"link {p}: added" in line)
        ns.ip("link", "set", "lmq0", "down")
        line = mon.wait_line(lambda line: SHOWN in line and "carrier lost" in line)
        assert line is not None, f"no carrier lost line for {SHOWN}; seen: {mon.seen}"
    finally:
        code = mon.stop()
    assert code == 0
    assert line.endswith(f"] link {SHOWN}: carrier lost (admin up)"), line
    assert not any("\x1b" in seen for seen in mon.seen), mon.seen


@pytest.mark.netns
def test_status_prints_control_characters_escaped_and_json_keeps_the_exact_name(
    ns: NetNS,
) -> None:
    ns.veth(ESC_NAME, "lmq0")
    result = in_ns(ns, "status")
    assert result.returncode == 0, result.stderr
    assert "\x1b" not in result.stdout
    rows = {line.split()[0]: line.split() for line in result.stdout.splitlines()[2:]}
    assert SHOWN in rows, rows
    assert rows[SHOWN][1] == "up"
    result = in_ns(ns, "status", "--json")
    names = {row["ifname"] for row in json.loads(result.stdout)}
    assert ESC_NAME in names


# -- replay in constant memory ---------------------------------------------------------------------


def _max_rss_kib(*args: str, cwd: Path) -> int:
    """Peak RSS of ``python -m linkmond ARGS`` (this child alone, from wait4)."""
    with (cwd / "replay.stderr").open("wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "linkmond", *args],
            stdout=subprocess.DEVNULL,
            stderr=err,
            cwd=cwd,
        )
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    assert proc.returncode == 0, (cwd / "replay.stderr").read_text()[-2000:]
    return usage.ru_maxrss


def test_replay_of_a_file_that_cannot_be_read_is_a_one_line_error() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "linkmond", "replay", "/proc/self/mem"],  # opens, then EIO
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 66
    assert result.stderr == "linkmond: /proc/self/mem: Input/output error\n"


def test_replay_of_a_large_recording_runs_in_constant_memory(tmp_path: Path) -> None:
    """96 MiB of the longest messages a recording may hold (NLMSG_NOOP, just under 1 MiB,
    cheap to decode) around rtmon's timestamps: replay's peak memory stays far below the
    file's size (it was file + interpreter: the whole file was read at once)."""
    stamp = struct.pack("=IHHII", 24, rtnl.NLMSG_TSTAMP, 0, 0, 0) + struct.pack("=II", 1, 0)
    big = struct.pack("=IHHII", (1 << 20) - 4, rtnl.NLMSG_NOOP, 0, 0, 0) + bytes((1 << 20) - 20)
    recording = tmp_path / "large.rtmon"
    with recording.open("wb") as f:
        for _ in range(96):
            f.write(stamp + big)
    empty = tmp_path / "empty.rtmon"
    empty.touch()
    baseline = _max_rss_kib("replay", str(empty), cwd=tmp_path)
    peak = _max_rss_kib("replay", str(recording), cwd=tmp_path)
    assert peak - baseline < 24 * 1024, (baseline, peak)  # KiB: far below the 96 MiB
