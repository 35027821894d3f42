"""The command line (docs/linkmond.md) and the daemon's lifecycle: ``--version``/``--help``
everywhere, ``status``, ``monitor`` and ``replay`` against real kernel changes in a throwaway
namespace, SIGTERM drain, SIGHUP reopen (logrotate) and one failing sink not stopping the
others."""

from __future__ import annotations

import contextlib
import json
import os
import queue
import random
import re
import select
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import pytest

from linkmond import __version__
from linkmond.events import Event, describe
from tests.helpers import Daemon, NetNS, default_config, linkmond, wait_for

COMMANDS = ["run", "check-config", "monitor", "status", "replay"]
UUID7 = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")
RFC3339_UTC_US = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}Z$")


def in_ns(ns: NetNS, *args: str) -> subprocess.CompletedProcess[str]:
    """``python -m linkmond ARGS`` inside the namespace."""
    return ns.run(sys.executable, "-m", "linkmond", *args, check=False)


def operstate(ns: NetNS, ifname: str) -> str:
    return str(json.loads(ns.ip("-j", "link", "show", ifname).stdout)[0]["operstate"])


def settle(ns: NetNS, **expected: str) -> None:
    """Wait until the kernel reports each interface's operstate (linkwatch is asynchronous)."""
    for ifname, state in expected.items():
        wait_for(lambda i=ifname, s=state: operstate(ns, i) == s, what=f"{ifname} {state}")


def device_kind(ns: NetNS) -> str:
    """A single-ended virtual device kind this kernel offers: ``dummy``, else ``ifb`` (this
    project's CI kernel has no dummy driver)."""
    for kind in ("dummy", "ifb"):
        if ns.ip("link", "add", "lmkind", "type", kind, check=False).returncode == 0:
            ns.ip("link", "del", "lmkind")
            return kind
    raise AssertionError("the kernel offers neither dummy nor ifb devices")


def add_device(ns: NetNS, name: str) -> None:
    ns.ip("link", "add", name, "type", device_kind(ns))


def assert_envelope(event: dict[str, Any], netns: str) -> None:
    """The CloudEvents envelope of docs/events.md."""
    assert event["specversion"] == "1.0"
    assert UUID7.match(event["id"]), event["id"]
    assert event["source"] == f"/linkmond/{socket.gethostname()}"
    assert RFC3339_UTC_US.match(event["time"]), event["time"]
    assert event["netns"] == netns
    assert isinstance(event["seq"], int)
    assert event["seq"] >= 1


# -- --version and --help everywhere ------------------------------------------------------------


@pytest.mark.parametrize("command", [None, *COMMANDS])
def test_version_works_at_top_level_and_for_every_command(command: str | None) -> None:
    result = linkmond(*([command] if command else []), "--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"linkmond {__version__}"


def test_help_lists_every_command() -> None:
    result = linkmond("--help")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: linkmond")
    for command in COMMANDS:
        assert command in result.stdout
    assert "--version" in result.stdout


@pytest.mark.parametrize(
    ("command", "options"),
    [
        ("run", ["-c", "--config"]),
        ("check-config", ["-c", "--config"]),
        ("monitor", ["--json", "--type", "--interface"]),
        ("status", ["--json"]),
        ("replay", ["file"]),
    ],
)
def test_help_of_every_command_shows_its_options(command: str, options: list[str]) -> None:
    result = linkmond(command, "--help")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"usage: linkmond {command}")
    for option in [*options, "--version"]:
        assert option in result.stdout


def test_unknown_command_is_a_usage_error_without_traceback() -> None:
    result = linkmond("frobnicate")
    assert result.returncode == 2
    assert "usage: linkmond" in result.stderr
    assert "Traceback" not in result.stderr


# -- replay of files that are not recordings ------------------------------------------------------


def test_replay_of_a_missing_file_is_a_one_line_error(tmp_path: Path) -> None:
    missing = tmp_path / "nope.rtmon"
    result = linkmond("replay", str(missing))
    assert result.returncode != 0
    assert result.stdout == ""
    assert "Traceback" not in result.stderr
    assert len(result.stderr.splitlines()) == 1, result.stderr
    assert str(missing) in result.stderr
    assert "No such file" in result.stderr


def test_replay_of_garbage_says_so_and_exits_65(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.bin"
    garbage.write_bytes(random.Random(7).randbytes(4096))
    result = linkmond("replay", str(garbage))
    assert result.returncode == 65, result.stderr  # EX_DATAERR
    assert "Traceback" not in result.stderr
    assert result.stdout == ""
    assert re.search(r"\b4096 undecodable byte", result.stderr), result.stderr


def test_replay_of_an_empty_file_prints_nothing(tmp_path: Path) -> None:
    empty = tmp_path / "empty.bin"
    empty.write_bytes(b"")
    result = linkmond("replay", str(empty))
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""
    assert "malformed" not in result.stderr


# -- status ---------------------------------------------------------------------------------------


def _status_setup(ns: NetNS) -> None:
    """lm0/lm0p with the peer pulled (lm0 up, no carrier), lm1/lm1p both up; addresses on lm0."""
    ns.veth("lm0", "lm0p")
    ns.veth("lm1", "lm1p")
    ns.ip("addr", "add", "192.0.2.1/24", "dev", "lm0")
    ns.ip("-6", "addr", "add", "2001:db8::1/64", "dev", "lm0", "nodad")
    ns.ip("link", "set", "lm0p", "down")
    settle(ns, lm0="LOWERLAYERDOWN", lm0p="DOWN", lm1="UP", lm1p="UP")


@pytest.mark.netns
def test_status_json_shows_admin_carrier_operstate_and_addresses(ns: NetNS) -> None:
    _status_setup(ns)
    result = in_ns(ns, "status", "--json")
    assert result.returncode == 0, result.stderr
    links = {row["ifname"]: row for row in json.loads(result.stdout)}
    assert set(links) == {"lo", "lm0", "lm0p", "lm1", "lm1p"}
    kernel = {ln["ifname"]: ln for ln in json.loads(ns.ip("-j", "link", "show").stdout)}

    near = links["lm0"]
    assert near["admin_up"] is True
    assert near["carrier"] is False  # the peer is down: the cable is pulled
    assert near["ready"] is False
    assert near["operstate"] == "lowerlayerdown"
    assert near["kind"] == "veth"
    assert near["mtu"] == 1500
    assert near["mac"] == kernel["lm0"]["address"]
    assert near["ifindex"] == kernel["lm0"]["ifindex"]
    assert "192.0.2.1/24" in near["addresses"]
    assert "2001:db8::1/64" in near["addresses"]

    peer = links["lm0p"]
    assert (peer["admin_up"], peer["carrier"], peer["ready"]) == (False, False, False)
    assert peer["operstate"] == "down"
    assert peer["addresses"] == []

    for name in ("lm1", "lm1p"):
        row = links[name]
        assert (row["admin_up"], row["carrier"], row["ready"]) == (True, True, True), row
        assert row["operstate"] == "up"
        assert row["addresses"] == [] or all(a.startswith("fe80::") for a in row["addresses"])

    assert links["lo"]["admin_up"] is True
    assert "127.0.0.1/8" in links["lo"]["addresses"]
    assert "::1/128" in links["lo"]["addresses"]


@pytest.mark.netns
def test_status_prints_a_table_with_one_row_per_link(ns: NetNS) -> None:
    _status_setup(ns)
    result = in_ns(ns, "status")
    assert result.returncode == 0, result.stderr
    daemon, header, *lines = result.stdout.splitlines()
    # no daemon in this fresh namespace (one elsewhere on the machine may be named)
    assert daemon.startswith("daemon: not running"), daemon
    assert header.split() == ["IFNAME", "ADMIN", "CARRIER", "OPERSTATE", "MTU", "MAC", "ADDRESSES"]
    rows = {line.split()[0]: line.split() for line in lines}
    assert set(rows) == {"lo", "lm0", "lm0p", "lm1", "lm1p"}
    assert rows["lm0"][1:5] == ["up", "no", "lowerlayerdown", "1500"]
    assert "192.0.2.1/24" in rows["lm0"][6:]
    assert "2001:db8::1/64" in rows["lm0"][6:]
    assert rows["lm0p"][1:5] == ["down", "no", "down", "1500"]
    assert rows["lm1"][1:5] == ["up", "yes", "up", "1500"]


# -- monitor --------------------------------------------------------------------------------------


class Running:
    """A linkmond subprocess inside the namespace whose stdout lines are read by a thread, so a
    test can wait for a line with a deadline."""

    def __init__(self, ns: NetNS | None, stderr_path: Path, *args: str) -> None:
        """``ns`` None: start it in the test's own namespace (``monitor --netns`` enters one)."""
        self.stderr_path = stderr_path
        inside = ["ip", "netns", "exec", ns.name] if ns is not None else []
        self.proc = subprocess.Popen(
            [*inside, sys.executable, "-m", "linkmond", *args],
            stdout=subprocess.PIPE,
            stderr=stderr_path.open("wb"),
            text=True,
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.seen: list[str] = []
        assert self.proc.stdout is not None
        self._reader = threading.Thread(target=self._read, args=(self.proc.stdout,), daemon=True)
        self._reader.start()

    def _read(self, stream: IO[str]) -> None:
        for line in stream:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def wait_line(self, match: Callable[[str], bool], timeout: float = 10.0) -> str | None:
        """The next stdout line matching ``match`` within ``timeout`` s, else None."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                line = self.lines.get(timeout=left)
            except queue.Empty:
                break
            if line is None:
                raise AssertionError(
                    f"stdout closed (exit {self.proc.wait(5)}); seen: {self.seen}; "
                    f"stderr: {self.stderr_path.read_text(errors='replace')[-2000:]}"
                )
            self.seen.append(line)
            if match(line):
                return line
        return None

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int:
        """Signal our child (by PID) and wait for it; the rest of stdout lands in ``seen``."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise
        self._reader.join(timeout)
        while (line := self.lines.get_nowait() if not self.lines.empty() else None) is not None:
            self.seen.append(line)
        return code


def wait_monitor_ready(ns: NetNS, mon: Running, seen: Callable[[str, str], bool]) -> None:
    """Wait until the monitor reports changes: a change made before it subscribed is never
    reported, so add probe links until one shows up (``seen(line, probe_name)``)."""
    kind = device_kind(ns)
    deadline = time.monotonic() + 15
    for n in range(1000):
        name = f"lmprobe{n}"
        ns.ip("link", "add", name, "type", kind)
        if mon.wait_line(lambda line, p=name: seen(line, p), timeout=0.5) is not None:
            return
        if time.monotonic() > deadline:
            break
    raise AssertionError(f"monitor never reported a probe link; seen: {mon.seen}")


def _json_subject_is(line: str, subject: str, type_: str) -> bool:
    event = json.loads(line)
    return bool(event["type"] == type_ and event["subject"] == subject)


@pytest.mark.netns
def test_monitor_json_shows_carrier_lost_and_exits_0_on_sigterm(ns: NetNS, tmp_path: Path) -> None:
    ns.veth("lm0", "lm0p")
    ns.veth("xx0", "xx0p")  # not matched by --interface 'lm*'
    settle(ns, lm0="UP", xx0="UP")
    mon = Running(
        ns,
        tmp_path / "monitor.stderr",
        "monitor",
        "--json",
        "--type",
        "link.*",
        "--interface",
        "lm*",
    )
    try:
        wait_monitor_ready(ns, mon, lambda line, p: _json_subject_is(line, p, "link.added"))
        ns.ip("link", "set", "xx0p", "down")
        ns.ip("addr", "add", "192.0.2.1/24", "dev", "lm0")  # addr.*: not matched by --type
        ns.ip("link", "set", "lm0p", "down")
        line = mon.wait_line(lambda line: _json_subject_is(line, "lm0", "link.carrier_lost"))
        assert line is not None, f"no carrier_lost for lm0; seen: {mon.seen}"
    finally:
        code = mon.stop()
    assert code == 0, (tmp_path / "monitor.stderr").read_text()

    lost = json.loads(line)
    assert_envelope(lost, ns.name)
    assert lost["data"]["ifname"] == "lm0"
    assert lost["data"]["admin_up"] is True
    assert lost["data"]["carrier"] is False
    assert lost["data"]["changes"]["carrier"] == [True, False]
    assert lost["data"]["resync"] is False
    events = [json.loads(line) for line in mon.seen]
    assert all(e["type"].startswith("link.") for e in events), [e["type"] for e in events]
    assert all(e["subject"].startswith("lm") for e in events), [e["subject"] for e in events]
    assert not any(e["type"].startswith("daemon.") for e in events)


@pytest.mark.netns
def test_monitor_human_mode_prints_carrier_lost_line(ns: NetNS, tmp_path: Path) -> None:
    ns.veth("lm0", "lm0p")
    settle(ns, lm0="UP")
    mon = Running(ns, tmp_path / "monitor.stderr", "monitor", "--interface", "lm*")
    try:
        wait_monitor_ready(ns, mon, lambda line, p: f"link {p}: added" in line)
        ns.ip("link", "set", "lm0p", "down")
        line = mon.wait_line(lambda line: "link lm0:" in line and "carrier lost" in line)
        assert line is not None, f"no carrier lost line for lm0; seen: {mon.seen}"
    finally:
        code = mon.stop()
    assert code == 0
    # [22:28:19.464] link lm0: carrier lost (admin up)
    assert re.match(r"^\[\d{2}:\d{2}:\d{2}\.\d{3}\] link lm0: carrier lost \(admin up\)$", line)
    assert not any(line.startswith("{") for line in mon.seen)


# -- replay of an rtmon recording ----------------------------------------------------------------


def _messages(data: bytes) -> list[tuple[int, int]]:
    """``(offset, length)`` of every netlink message in a recording."""
    out = []
    off = 0
    while off + 16 <= len(data):
        (length,) = struct.unpack_from("=I", data, off)
        assert length >= 16
        out.append((off, length))
        off += (length + 3) & ~3
    return out


@contextlib.contextmanager
def rtmon(ns: NetNS, path: Path) -> Iterator[None]:
    """iproute2's ``rtmon file PATH`` recording inside the namespace for the ``with`` body."""
    proc = subprocess.Popen(
        ["ip", "netns", "exec", ns.name, "rtmon", "file", str(path)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        # rtmon subscribes, then writes its initial dump: a non-empty file means it listens
        wait_for(lambda: path.exists() and path.stat().st_size > 0, what="rtmon's initial dump")
        yield
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(10)


def record(ns: NetNS, path: Path) -> None:
    """Record with iproute2's ``rtmon file`` inside the namespace while lm0's peer is pulled
    and 198.51.100.1/24 is added to lm0."""
    ns.veth("lm0", "lm0p")
    settle(ns, lm0="UP")
    with rtmon(ns, path):
        ns.ip("link", "set", "lm0p", "down")
        ns.ip("addr", "add", "198.51.100.1/24", "dev", "lm0")
        # the address (c6 33 64 01) is announced after the carrier change: wait for it on disk
        wait_for(lambda: bytes([198, 51, 100, 1]) in path.read_bytes(), what="rtmon wrote addr")


@pytest.mark.netns
def test_replay_of_an_rtmon_recording_prints_carrier_lost_and_addr_added(
    ns: NetNS, tmp_path: Path
) -> None:
    recording = tmp_path / "rtmon.bin"
    record(ns, recording)
    result = linkmond("replay", str(recording))
    assert result.returncode == 0, result.stderr
    assert "malformed" not in result.stderr
    events = [json.loads(line) for line in result.stdout.splitlines()]
    kinds = [(e["type"], e["subject"]) for e in events]
    assert ("link.carrier_lost", "lm0") in kinds, kinds
    assert ("addr.added", "lm0") in kinds, kinds
    # the recorder's initial dump fills the cache silently: lo and lm0 were there already
    assert not any(t == "link.added" for t, _ in kinds), kinds
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    for event in events:
        assert_envelope(event, "default")  # replay runs in the host namespace
        assert event["data"]["resync"] is False

    lost = next(e for e in events if e["type"] == "link.carrier_lost")
    assert lost["data"]["admin_up"] is True
    assert lost["data"]["carrier"] is False
    assert lost["data"]["changes"]["carrier"] == [True, False]
    added = next(e for e in events if e["type"] == "addr.added")
    assert added["data"]["family"] == "inet"
    assert added["data"]["address"] == "198.51.100.1"
    assert added["data"]["prefixlen"] == 24
    assert added["data"]["scope"] == "global"
    assert kinds.index(("link.carrier_lost", "lm0")) < kinds.index(("addr.added", "lm0"))


@pytest.mark.netns
@pytest.mark.parametrize("cut", ["inside the last message", "inside the last header"])
def test_replay_of_a_truncated_recording_keeps_what_came_before(
    ns: NetNS, tmp_path: Path, cut: str
) -> None:
    recording = tmp_path / "rtmon.bin"
    record(ns, recording)
    data = recording.read_bytes()
    last_off, last_len = _messages(data)[-1]
    keep = last_off + (last_len - 4 if cut == "inside the last message" else 10)
    truncated = tmp_path / "truncated.bin"
    truncated.write_bytes(data[:keep])
    result = linkmond("replay", str(truncated))
    assert result.returncode == 65, result.stderr
    assert "Traceback" not in result.stderr
    events = [json.loads(line) for line in result.stdout.splitlines()]
    assert ("link.carrier_lost", "lm0") in [(e["type"], e["subject"]) for e in events]
    # the cut message is what could not be decoded, no more
    assert re.search(rf"\b{len(data[:keep]) - last_off} undecodable byte", result.stderr)


@pytest.mark.netns
def test_replay_of_a_recording_followed_by_garbage_keeps_the_events(
    ns: NetNS, tmp_path: Path
) -> None:
    recording = tmp_path / "rtmon.bin"
    record(ns, recording)
    spoiled = tmp_path / "spoiled.bin"
    spoiled.write_bytes(recording.read_bytes() + random.Random(3).randbytes(1000))
    result = linkmond("replay", str(spoiled))
    assert result.returncode == 65, result.stderr
    assert "Traceback" not in result.stderr
    kinds = [(e["type"], e["subject"]) for e in map(json.loads, result.stdout.splitlines())]
    assert ("link.carrier_lost", "lm0") in kinds
    assert ("addr.added", "lm0") in kinds
    assert "undecodable" in result.stderr


# -- the daemon's lifecycle: SIGTERM drain, SIGHUP reopen, a failing sink -----------------------


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line]


@pytest.mark.netns
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_stop_signal_drains_every_event_and_ends_with_daemon_stopping(
    ns: NetNS, daemon_factory, sig: signal.Signals
) -> None:
    daemon: Daemon = daemon_factory()
    kind = device_kind(ns)
    names = [f"lmd{i}" for i in range(100)]
    subprocess.run(
        ["ip", "-n", ns.name, "-batch", "-"],
        input="".join(f"link add {name} type {kind}\n" for name in names),
        text=True,
        check=True,
    )
    # no waiting for the events: the signal comes right after the kernel made the changes
    assert daemon.stop(sig) == 0, daemon.stderr()[-2000:]
    events = daemon.events()
    added = {e["subject"] for e in events if e["type"] == "link.added"}
    missing = [name for name in names if name not in added]
    assert not missing, f"events lost on {sig.name}: {missing}"
    assert events[0]["type"] == "daemon.started"
    assert events[-1]["type"] == "daemon.stopping"
    assert [e["type"] for e in events].count("daemon.stopping") == 1
    assert events[-1]["data"]["reason"] == sig.name
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    assert_envelope(events[-1], ns.name)
    assert "Traceback" not in daemon.stderr()


def _read_fifo_until(
    fd: int, buf: bytearray, done: Callable[[bytes], bool], timeout: float
) -> None:
    """Read the (non-blocking) FIFO ``fd`` into ``buf`` until ``done(buf)`` or end of file."""
    deadline = time.monotonic() + timeout
    while not done(bytes(buf)):
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"timed out reading the FIFO; got {len(buf)} bytes")
        ready, _, _ = select.select([fd], [], [], left)
        if ready:
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                return  # every writer closed it
            buf += chunk


@pytest.mark.netns
def test_sigterm_drains_a_backlog_queued_behind_a_stalled_sink(
    ns: NetNS, daemon_factory, tmp_path: Path
) -> None:
    """The daemon's stdout is a FIFO nobody reads while the changes happen, and a lossless
    console sink writes JSON lines there (a file sink appends only to regular files): the pipe
    fills, the sink's writes block and the rest waits in its queue. After SIGTERM the reader
    comes back, and every event must still arrive, followed by daemon.stopping, before the
    exit."""
    fifo = tmp_path / "events.fifo"
    os.mkfifo(fifo)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)  # so the daemon's open() need not wait
    # our own writer end keeps the FIFO from reading as end-of-file before the daemon opens it
    holder = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
    try:
        daemon: Daemon = daemon_factory(
            config='[daemon]\ndrain_timeout = "20s"\n\n[sinks.console]\ntype = "console"\n'
            'json = true\nbuffer = { when_full = "block" }\n',
            start=False,
        )
        daemon.stdout_path = fifo
        daemon.start(wait_started=False)
        got = bytearray()
        _read_fifo_until(reader, got, lambda b: b"daemon.started" in b, timeout=15)

        kind = device_kind(ns)
        names = [f"lmq{i}" for i in range(2000)]  # ~1 MB of JSON: far more than a pipe holds
        subprocess.run(
            ["ip", "-n", ns.name, "-batch", "-"],
            input="".join(f"link add {name} type {kind}\n" for name in names),
            text=True,
            check=True,
        )
        assert daemon.proc is not None
        daemon.proc.send_signal(signal.SIGTERM)
        _read_fifo_until(
            reader, got, lambda b: b"daemon.stopping" in b and b.endswith(b"\n"), timeout=30
        )
        assert daemon.proc.wait(15) == 0, daemon.stderr()[-2000:]
        os.close(holder)
        holder = -1
        _read_fifo_until(reader, got, lambda b: False, timeout=5)  # nothing after: end of file
    finally:
        if holder >= 0:
            os.close(holder)
        os.close(reader)

    events = [json.loads(line) for line in got.decode().splitlines()]
    added = {e["subject"] for e in events if e["type"] == "link.added"}
    missing = [name for name in names if name not in added]
    assert not missing, f"{len(missing)} events lost in the drain, e.g. {missing[:5]}"
    assert events[0]["type"] == "daemon.started"
    assert events[-1]["type"] == "daemon.stopping"
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    # the backlog was real: when daemon.stopping was made, most events were not yet written
    assert events[-1]["data"]["sinks"]["console"]["delivered"] < len(names)


@pytest.mark.netns
def test_sighup_reopens_the_events_file_after_logrotate_moved_it(ns: NetNS, daemon: Daemon) -> None:
    rotated = daemon.events_path.with_name("events.jsonl.1")
    daemon.events_path.rename(rotated)
    # until SIGHUP the daemon keeps appending to the file it has open (now events.jsonl.1)
    add_device(ns, "lmold")
    wait_for(
        lambda: any(e["subject"] == "lmold" for e in _read_jsonl(rotated)),
        what="lmold in the rotated file",
    )
    assert not daemon.events_path.exists()

    assert daemon.proc is not None
    daemon.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: "SIGHUP" in daemon.stderr(), what="the daemon logging SIGHUP")
    add_device(ns, "lmnew")
    event = daemon.wait_event(
        lambda e: e["type"] == "link.added" and e["subject"] == "lmnew", what="lmnew in new file"
    )
    assert_envelope(event, ns.name)
    assert not any(e["subject"] == "lmnew" for e in _read_jsonl(rotated))
    assert daemon.proc.poll() is None  # SIGHUP does not stop the daemon
    assert daemon.stop() == 0
    # seq goes on across the reopen: rotated file then new file is one consecutive run
    both = _read_jsonl(rotated) + daemon.events()
    assert [e["seq"] for e in both] == list(range(1, len(both) + 1))
    assert both[-1]["type"] == "daemon.stopping"


@pytest.mark.netns
def test_a_sink_whose_disk_is_full_does_not_stop_the_others(
    ns: NetNS, daemon_factory, tmp_path: Path
) -> None:
    full = tmp_path / "full"
    full.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16k", "tmpfs", str(full)], check=True)
    try:
        _test_a_full_disk(ns, daemon_factory, tmp_path, full)
    finally:
        subprocess.run(["umount", "--lazy", str(full)], check=False)


def _test_a_full_disk(ns: NetNS, daemon_factory, tmp_path: Path, full: Path) -> None:
    with (full / "filler").open("wb", buffering=0) as filler, contextlib.suppress(OSError):
        while True:  # until the disk is full
            filler.write(b"x" * 4096)
    config = default_config(
        tmp_path / "events.jsonl",
        extra=f'\n[sinks.full]\ntype = "file"\npath = "{full / "events.jsonl"}"\n\n'
        '[daemon]\ndrain_timeout = "1s"\n',
    )
    ns.veth("lm0", "lm0p")
    settle(ns, lm0="UP")
    daemon: Daemon = daemon_factory(config=config)  # waits for daemon.started in the good file
    ns.ip("link", "set", "lm0p", "down")
    lost = daemon.wait_event(
        lambda e: e["type"] == "link.carrier_lost" and e["subject"] == "lm0", what="carrier_lost"
    )
    assert lost["data"]["carrier"] is False

    def failure_logged() -> bool:
        return any(
            "full" in line and "No space left on device" in line
            for line in daemon.stderr().splitlines()
        )

    wait_for(failure_logged, what="the full sink's failure in the daemon's log")
    assert daemon.proc is not None
    assert daemon.proc.poll() is None, "the daemon died with its failing sink"
    ns.ip("link", "set", "lm0p", "up")
    daemon.wait_event(
        lambda e: e["type"] == "link.carrier_up" and e["subject"] == "lm0", what="carrier_up"
    )
    assert daemon.stop() == 0
    events = daemon.events()
    assert events[-1]["type"] == "daemon.stopping"
    sinks = events[-1]["data"]["sinks"]
    assert sinks["full"]["delivered"] == 0
    assert sinks["full"]["failures"] >= 1
    assert sinks["file"]["dropped"] == 0
    assert "Traceback" not in daemon.stderr()


@pytest.mark.netns
def test_replay_reports_the_first_netconf_change_of_entries_rtmon_never_dumped(
    ns: NetNS, tmp_path: Path
) -> None:
    """rtmon dumps only links: a forwarding switch of ``all``, ``default`` and ``lo`` comes
    with no old value to compare with, and is reported with what is known, not swallowed."""
    recording = tmp_path / "rtmon.bin"
    with rtmon(ns, recording):
        ns.run("sysctl", "-qw", "net.ipv4.conf.all.forwarding=1")

        def netconf_subjects() -> set[str]:
            result = linkmond("replay", str(recording))
            return {
                e["subject"]
                for e in map(json.loads, result.stdout.splitlines())
                if e["type"] == "netconf.changed"
            }

        wait_for(lambda: {"all", "default", "lo"} <= netconf_subjects(), what="netconf on disk")
    result = linkmond("replay", str(recording))
    assert result.returncode == 0, result.stderr
    changed = {
        e["subject"]: e
        for e in map(json.loads, result.stdout.splitlines())
        if e["type"] == "netconf.changed" and e["data"]["family"] == "inet"
    }
    for subject in ("all", "default", "lo"):
        assert changed[subject]["data"]["changes"] == {"forwarding": [None, True]}, changed
        assert changed[subject]["data"]["forwarding"] is True
    # the human line says what is not known
    line = describe(Event.model_validate(changed["all"]))
    assert line == "netconf inet all: forwarding unknown → on"


@pytest.mark.netns
def test_status_says_whether_a_daemon_watches_this_namespace(
    ns: NetNS, daemon_factory: Callable[..., Daemon]
) -> None:
    daemon = daemon_factory()
    assert daemon.proc is not None
    result = in_ns(ns, "status")
    assert result.returncode == 0, result.stderr
    first = result.stdout.splitlines()[0]
    assert first == f"daemon: linkmond is running (pid {daemon.proc.pid})"
    # seen from another namespace, the same daemon is not watching that one's links
    other = NetNS()
    try:
        result = in_ns(other, "status")
    finally:
        other.delete()
    # (other daemons on this machine, a booted container's, may be listed too)
    first = result.stdout.splitlines()[0]
    prefix = "daemon: not running in this network namespace (running in another: pid "
    assert first.startswith(prefix), first
    assert first.endswith(")"), first
    assert str(daemon.proc.pid) in first.removeprefix(prefix).removesuffix(")").split(", ")


@pytest.mark.netns
def test_monitor_netns_enters_the_named_namespace(ns: NetNS, tmp_path: Path) -> None:
    ns.veth("lm0", "lm0p")
    settle(ns, lm0="UP")
    # started in the test's own namespace, like `ip -n NAME monitor`
    mon = Running(None, tmp_path / "monitor.stderr", "monitor", "--json", "--netns", ns.name)
    try:
        wait_monitor_ready(ns, mon, lambda line, p: _json_subject_is(line, p, "link.added"))
        ns.ip("link", "set", "lm0p", "down")
        line = mon.wait_line(lambda line: _json_subject_is(line, "lm0", "link.carrier_lost"))
        assert line is not None, f"no carrier_lost for lm0; seen: {mon.seen}"
    finally:
        code = mon.stop()
    assert code == 0, (tmp_path / "monitor.stderr").read_text()
    events = [json.loads(line) for line in mon.seen]
    assert {e["netns"] for e in events} == {ns.name}
    # only the namespace's links: its probes, lm0/lm0p and their routes, never the host's
    ours = {"lo", "lm0", "lm0p"} | {e["subject"] for e in events if e["type"] == "link.added"}
    assert all(e["data"].get("ifname") in ours for e in events if "ifname" in e["data"]), events


def test_monitor_netns_that_does_not_exist_is_one_line_and_exit_1() -> None:
    result = linkmond("monitor", "--netns", f"lmtest-absent-{os.getpid()}")
    assert result.returncode == 1
    assert result.stderr == (
        f"linkmond monitor: cannot enter network namespace 'lmtest-absent-{os.getpid()}': "
        "No such file or directory\n"
    )


def test_monitor_type_matching_no_event_type_is_a_usage_error() -> None:
    result = linkmond("monitor", "--type", "link.carier_lost")
    assert result.returncode == 64
    assert result.stderr == (
        "linkmond monitor: --type: 'link.carier_lost' matches no event type; "
        "did you mean 'link.carrier_lost'?\n"
    )


@pytest.mark.netns
@pytest.mark.parametrize("mode", ["human", "json"])
def test_monitor_treats_daemon_events_the_same_in_both_output_modes(
    ns: NetNS, tmp_path: Path, mode: str
) -> None:
    """Hidden by default in both modes; with ``--type 'daemon.*'`` both show the start first
    and the stop last."""
    as_json = ["--json"] if mode == "json" else []

    def is_daemon(line: str, kind: str) -> bool:
        if mode == "json":
            return bool(json.loads(line)["type"] == f"daemon.{kind}")
        return line.split("] ", 1)[-1].startswith(f"daemon: {kind}")

    shown = Running(ns, tmp_path / "shown.stderr", "monitor", *as_json, "--type", "daemon.*")
    hidden = Running(ns, tmp_path / "hidden.stderr", "monitor", *as_json)
    try:
        assert shown.wait_line(lambda line: is_daemon(line, "started")) is not None, shown.seen
        wait_monitor_ready(
            ns,
            hidden,
            lambda line, p: (
                _json_subject_is(line, p, "link.added")
                if mode == "json"
                else f"link {p}: added" in line
            ),
        )
    finally:
        assert shown.stop() == 0
        assert hidden.stop() == 0
    assert len(shown.seen) == 2, shown.seen
    assert is_daemon(shown.seen[0], "started")
    assert is_daemon(shown.seen[-1], "stopping")
    assert hidden.seen
    assert not any(
        is_daemon(line, "started") or is_daemon(line, "stopping") for line in hidden.seen
    )
