"""The journal sink against a real systemd-journald (the native protocol).

A private journald runs in its own mount namespace (tmpfs on /run/systemd and /run/log, a
volatile journald.conf, linkmond's catalog compiled in), the daemon runs there under
``ip netns exec``, and ``journalctl -D /run/log/journal`` reads back what arrived: every field
of a real carrier loss, ``journalctl -x`` explaining it from the catalog, a multi-line value,
an entry larger than a datagram (the memfd path), a stopped journald that never blocks the
event loop, and a daemon that keeps its file sink going while journald is absent and catches
up once it appears. Encoder, fields, priorities, the MESSAGE_ID table, the catalog and the
absent-socket error need no root.
"""

from __future__ import annotations

import asyncio
import errno
import json
import os
import re
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from linkmond import events
from linkmond.events import Event, EventFactory, describe
from linkmond.sinks.base import SinkError
from linkmond.sinks.console import human_line
from linkmond.sinks.journal import MESSAGE_IDS, JournalSink, encode_field
from tests.helpers import IS_ROOT, NEEDS_ROOT, ROOT, Daemon, NetNS, default_config, wait_for

Entry = dict[str, Any]

JOURNALD = Path("/lib/systemd/systemd-journald")
CATALOG = ROOT / "systemd" / "linkmond.catalog"
SOCKET = "/run/systemd/journal/socket"

#: every event type of docs/events.md (test_schema holds the list equal to the docs')
EVENT_TYPES = set(events.EVENT_TYPES)
WARNING_TYPES = {"link.carrier_lost", "link.admin_down", "link.removed", "daemon.overflow"}
#: the fields the sink sets on an interface-bound event; journald adds only "_"-prefixed ones
OUR_FIELDS = {
    "MESSAGE",
    "PRIORITY",
    "SYSLOG_IDENTIFIER",
    "MESSAGE_ID",
    "LINKMOND_TYPE",
    "LINKMOND_IFNAME",
    "LINKMOND_IFINDEX",
    "LINKMOND_EVENT_ID",
    "LINKMOND_SEQ",
    "LINKMOND_NETNS",
    "LINKMOND_JSON",
}

#: journald for a test: nothing persistent, no kernel log import, no rate limit
JOURNALD_CONF = """\
[Journal]
Storage=volatile
ReadKMsg=no
ForwardToSyslog=no
ForwardToKMsg=no
ForwardToConsole=no
ForwardToWall=no
RateLimitBurst=0
"""

#: runs under ``unshare -m --propagation private``; $1 is the work directory. Mounts stay in
#: the private namespace and vanish with its last process; the shell becomes the keeper.
KEEPER_SCRIPT = r"""
set -eu
mkdir -p /run/systemd /run/log /var/lib/systemd/catalog
mount -t tmpfs -o mode=0755 tmpfs /run/systemd
mount -t tmpfs -o mode=0755 tmpfs /run/log
if [ -e /etc/systemd/journald.conf ]; then
  mount --bind "$1/journald.conf" /etc/systemd/journald.conf
fi
mount --bind "$1/root/var/lib/systemd/catalog" /var/lib/systemd/catalog
touch "$1/ready"
exec sleep infinity
"""


# -- a private journald ----------------------------------------------------------------------


class PrivateJournal:
    """A private mount namespace kept alive by a ``sleep`` (the keeper), with journald started
    in it on demand. Commands run inside with ``nsenter -m``; the test process reaches the
    namespace's files (and journald's socket) through ``/proc/<keeper>/root``."""

    def __init__(self, workdir: Path) -> None:
        self.dir = workdir / "journal-ns"
        catalogs = self.dir / "root" / "usr" / "lib" / "systemd" / "catalog"
        catalogs.mkdir(parents=True)
        (catalogs / "linkmond.catalog").write_text(CATALOG.read_text())
        (self.dir / "journald.conf").write_text(JOURNALD_CONF)
        # the catalog database `journalctl -x` reads, compiled from linkmond's catalog alone
        subprocess.run(
            ["journalctl", f"--root={self.dir / 'root'}", "--update-catalog"],
            check=True,
            capture_output=True,
        )
        self.keeper_log = self.dir / "keeper.log"
        self.journald_log = self.dir / "journald.log"
        self.keeper = subprocess.Popen(
            [
                *("unshare", "-m", "--propagation", "private"),
                *("sh", "-c", KEEPER_SCRIPT, "keeper", str(self.dir)),
            ],
            stdout=subprocess.DEVNULL,
            stderr=self.keeper_log.open("wb"),
        )
        self.journald: subprocess.Popen[bytes] | None = None

        def ready() -> bool:
            if self.keeper.poll() is not None:
                raise AssertionError(f"mount namespace setup failed: {self.keeper_log.read_text()}")
            return (self.dir / "ready").exists()

        wait_for(ready, what="the private mount namespace")

    @property
    def pid(self) -> int:
        return self.keeper.pid

    def outside(self, path: str) -> Path:
        """``path`` inside the namespace, as the test process reaches it."""
        return Path(f"/proc/{self.pid}/root{path}")

    def nsenter(self, *cmd: str) -> list[str]:
        return ["nsenter", "-t", str(self.pid), "-m", "--", *cmd]

    def run(self, *cmd: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(self.nsenter(*cmd), capture_output=True, text=True, check=False)

    def start_journald(self) -> None:
        """Start journald (in the host's network namespace) and wait for its native socket."""
        self.journald = subprocess.Popen(
            self.nsenter(str(JOURNALD)),
            env={**os.environ, "SYSTEMD_LOG_TARGET": "console"},
            stdout=subprocess.DEVNULL,
            stderr=self.journald_log.open("wb"),
        )
        socket_path = str(self.outside(SOCKET))

        def listening() -> bool:
            if self.journald is not None and self.journald.poll() is not None:
                raise AssertionError(f"journald exited: {self.journald_log.read_text()}")
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as probe:
                try:
                    probe.connect(socket_path)  # a previous journald's socket file refuses
                except (FileNotFoundError, ConnectionRefusedError):
                    return False
            return True

        wait_for(listening, what="journald's socket")

    def stop_journald(self) -> None:
        """Stop journald (our own child, by PID) and wait for it to exit."""
        assert self.journald is not None
        self.journald.terminate()
        self.journald.wait(10)

    def entries(self, *matches: str) -> list[Entry]:
        """Every linkmond entry so far (``journalctl -t linkmond -o json --all``), values
        decoded (journalctl writes values it deems binary as lists of byte values)."""
        out = self.run(
            "journalctl",
            *("-D", "/run/log/journal", "-t", "linkmond", "-o", "json", "--all", "-q"),
            *matches,
        )
        return [_decode(json.loads(line)) for line in out.stdout.splitlines() if line.strip()]

    def wait_entry(self, match: Callable[[Entry], bool], what: str, timeout: float = 10.0) -> Entry:
        """The first entry matching ``match``, waiting for it with a deadline."""
        try:
            return wait_for(  # type: ignore[no-any-return]
                lambda: next((e for e in self.entries() if match(e)), None), timeout, what
            )
        except AssertionError:
            seen = [e.get("MESSAGE") for e in self.entries()]
            raise AssertionError(f"{what} not in the journal; entries: {seen}") from None

    def by_event_id(self, event_id: str, timeout: float = 10.0) -> Entry:
        return self.wait_entry(
            lambda e: e.get("LINKMOND_EVENT_ID") == event_id, f"entry {event_id}", timeout
        )

    def close(self) -> None:
        """Stop journald and the keeper (our own children, by PID); the namespace goes too."""
        for proc in (self.journald, self.keeper):
            if proc is None or proc.poll() is not None:
                continue
            os.kill(proc.pid, signal.SIGCONT)  # a test may have stopped it
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _decode(raw: dict[str, Any]) -> Entry:
    def value(v: Any) -> Any:
        if isinstance(v, list) and all(isinstance(b, int) for b in v):
            return bytes(v).decode()
        if isinstance(v, list):
            return [value(x) for x in v]
        return v

    return {k: value(v) for k, v in raw.items()}


class JournalDaemon(Daemon):
    """The daemon started from inside the private mount namespace: ``nsenter -m`` then
    ``ip netns exec`` (both exec, so the PID is the daemon's own)."""

    def __init__(self, ns: NetNS, workdir: Path, config: str, journal: PrivateJournal) -> None:
        super().__init__(ns, workdir, config)
        self.journal = journal

    def command(self) -> list[str]:
        return self.journal.nsenter(*super().command())

    def logs(self) -> list[dict[str, Any]]:
        """The daemon's own JSON log records (stderr)."""
        records = []
        for line in self.stderr().splitlines():
            if line.startswith("{"):
                records.append(json.loads(line))
        return records


def journal_config(events_path: Path, extra: str = "") -> str:
    """A file sink of every event plus a journal sink on journald's usual socket."""
    return default_config(
        events_path, f'\n[sinks.journal]\ntype = "journal"\nsocket = "{SOCKET}"\n{extra}'
    )


@pytest.fixture
def journal_ns(tmp_path: Path) -> Iterator[PrivateJournal]:
    """The private mount namespace, journald not started yet."""
    if not IS_ROOT:
        pytest.skip(NEEDS_ROOT)
    private = PrivateJournal(tmp_path)
    try:
        yield private
    finally:
        private.close()


@pytest.fixture
def journal(journal_ns: PrivateJournal) -> PrivateJournal:
    """The private mount namespace with journald running."""
    journal_ns.start_journald()
    return journal_ns


@pytest.fixture
def start_daemon(
    ns: NetNS, journal_ns: PrivateJournal, tmp_path: Path
) -> Iterator[Callable[..., JournalDaemon]]:
    """``start_daemon(extra="")``: the daemon in ``ns`` with file + journal sinks; stopped
    afterwards."""
    started: list[JournalDaemon] = []

    def start(extra: str = "") -> JournalDaemon:
        d = JournalDaemon(
            ns, tmp_path, journal_config(tmp_path / "events.jsonl", extra), journal_ns
        )
        started.append(d)
        return d.start()

    yield start
    for d in started:
        d.stop()


def factory() -> EventFactory:
    return EventFactory("/linkmond/test", "default")


def kernel_ifindex(ns: NetNS, ifname: str) -> int:
    (info,) = json.loads(ns.ip("-j", "link", "show", "dev", ifname).stdout)
    return int(info["ifindex"])


# -- the entry, without journald -------------------------------------------------------------


def test_encoder_uses_the_binary_safe_form_exactly_for_values_with_newlines() -> None:
    assert encode_field("MESSAGE", "a = b → c") == "MESSAGE=a = b → c\n".encode()
    assert encode_field("MESSAGE", "one\ntwo") == (
        b"MESSAGE\n" + (7).to_bytes(8, "little") + b"one\ntwo" + b"\n"
    )
    assert encode_field("X", "\n") == b"X\n" + (1).to_bytes(8, "little") + b"\n\n"
    assert encode_field("X", "") == b"X=\n"


def test_interface_fields_are_omitted_for_events_without_an_interface() -> None:
    f = factory()
    sink = JournalSink(Path(SOCKET))
    started = f.make("daemon.started", "linkmond", {"netns": "default", "counts": {}})
    netconf_all = f.make(
        "netconf.changed",
        "all",
        {
            "family": "inet",
            "ifindex": -1,
            "ifname": "all",
            "forwarding": 1,
            "changes": {"forwarding": [0, 1]},
            "resync": False,
        },
    )
    for event in (started, netconf_all):
        names = [name for name, _ in sink.fields(event)]
        assert "LINKMOND_IFNAME" not in names
        assert "LINKMOND_IFINDEX" not in names
        assert set(names) == OUR_FIELDS - {"LINKMOND_IFNAME", "LINKMOND_IFINDEX"}
        assert len(names) == len(set(names))


#: what the kernel takes in an interface name: ESC (a colour sequence), BEL, DEL, a C1 control
#: (CSI, U+009B) and a backslash
HOSTILE_NAME = "a\x1b[31mb\x07\x7f\u009bc\\"


def test_message_escapes_control_characters_and_the_other_fields_keep_the_exact_name() -> None:
    f = factory()
    lost = f.make(
        "link.carrier_lost",
        HOSTILE_NAME,
        {"ifindex": 7, "ifname": HOSTILE_NAME, "admin_up": True, "carrier": False},
    )
    fields = dict(JournalSink(Path(SOCKET)).fields(lost))
    assert fields["MESSAGE"] == "link a\\x1b[31mb\\x07\\x7f\\x9bc\\\\: carrier lost (admin up)"
    assert not any(c < " " or "\x7f" <= c <= "\x9f" for c in fields["MESSAGE"])
    assert fields["MESSAGE"] == describe(lost)
    # the structured fields are for programs: the exact name (LINKMOND_JSON as JSON escapes it)
    assert fields["LINKMOND_IFNAME"] == HOSTILE_NAME
    assert json.loads(fields["LINKMOND_JSON"])["subject"] == HOSTILE_NAME
    # an event describe() cannot handle falls back to type and subject, escaped as well
    broken = f.make("link.carrier_lost", HOSTILE_NAME, {"ifindex": 7, "ifname": HOSTILE_NAME})
    message = dict(JournalSink(Path(SOCKET)).fields(broken))["MESSAGE"]
    assert message == "link.carrier_lost a\\x1b[31mb\\x07\\x7f\\x9bc\\\\"


def test_priority_is_warning_for_losses_info_otherwise_and_globs_override_in_order() -> None:
    default = JournalSink(Path(SOCKET))
    for type_ in EVENT_TYPES:
        assert default.priority(type_) == (4 if type_ in WARNING_TYPES else 6), type_
    custom = JournalSink(
        Path(SOCKET), {"link.carrier_*": 2, "link.*": 5, "daemon.overflow": 3, "link.added": 7}
    )
    assert custom.priority("link.carrier_lost") == 2
    assert custom.priority("link.carrier_up") == 2
    assert custom.priority("link.added") == 5  # the first matching glob wins
    assert custom.priority("link.removed") == 5
    assert custom.priority("daemon.overflow") == 3
    assert custom.priority("daemon.stopping") == 6
    assert custom.priority("route.removed") == 6


def test_message_ids_are_fixed_distinct_literals_for_every_event_type() -> None:
    assert set(MESSAGE_IDS) == EVENT_TYPES
    ids = list(MESSAGE_IDS.values())
    assert len(set(ids)) == len(ids)
    source = Path(sys.modules[JournalSink.__module__].__file__ or "").read_text()
    for message_id in ids:
        assert re.fullmatch(r"[0-9a-f]{32}", message_id)
        assert f'"{message_id}"' in source  # a literal in the code, not generated at run time


# -- the catalog ------------------------------------------------------------------------------


def catalog_entries() -> dict[str, tuple[dict[str, str], str]]:
    """``-- <id>`` sections of the catalog: id → (headers, body text)."""
    entries: dict[str, tuple[dict[str, str], str]] = {}
    for chunk in re.split(r"^-- ", CATALOG.read_text(), flags=re.MULTILINE)[1:]:
        head, _, body = chunk.partition("\n\n")
        first, *header_lines = head.splitlines()
        assert first.strip() not in entries, f"duplicate catalog id {first}"
        headers = dict(line.split(": ", 1) for line in header_lines)
        entries[first.strip()] = (headers, body)
    return entries


def test_catalog_ids_equal_the_message_id_table_with_every_header() -> None:
    entries = catalog_entries()
    assert set(entries) == set(MESSAGE_IDS.values())
    for message_id, (headers, body) in entries.items():
        assert set(headers) == {"Subject", "Defined-By", "Support", "Documentation"}, message_id
        assert headers["Defined-By"] == "linkmond"
        assert body.strip(), message_id
    headers, body = entries[MESSAGE_IDS["link.carrier_lost"]]
    assert "@LINKMOND_IFNAME@" in headers["Subject"]
    for advice in ("cable", "switch port", "peer", "ip -s link", "ethtool"):
        assert advice in body


def test_journalctl_compiles_the_catalog_and_lists_every_message_id(tmp_path: Path) -> None:
    catalogs = tmp_path / "usr" / "lib" / "systemd" / "catalog"
    catalogs.mkdir(parents=True)
    (catalogs / "linkmond.catalog").write_text(CATALOG.read_text())
    subprocess.run(["journalctl", f"--root={tmp_path}", "--update-catalog"], check=True)
    listed = subprocess.run(
        ["journalctl", f"--root={tmp_path}", "--list-catalog"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    subjects = dict(line.split(" ", 1) for line in listed.splitlines())
    assert set(subjects) == set(MESSAGE_IDS.values())
    for message_id, (headers, _) in catalog_entries().items():
        assert subjects[message_id] == f"linkmond: {headers['Subject']}"


# -- journald absent ---------------------------------------------------------------------------


def test_missing_socket_raises_sink_error_naming_the_path(tmp_path: Path) -> None:
    path = tmp_path / "no-journald" / "socket"
    sink = JournalSink(path)
    event = factory().make("daemon.started", "linkmond", {"netns": "default", "counts": {}})
    with pytest.raises(SinkError) as err:
        asyncio.run(sink.emit([event]))
    assert err.value.delivered == 0
    assert str(path) in str(err.value)
    assert isinstance(err.value.__cause__, FileNotFoundError)


def test_socket_without_journald_behind_it_raises_sink_error(tmp_path: Path) -> None:
    path = tmp_path / "socket"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as dead:
        dead.bind(str(path))  # the file stays after close: nobody listens (ECONNREFUSED)
    sink = JournalSink(path)
    event = factory().make("daemon.started", "linkmond", {"netns": "default", "counts": {}})
    with pytest.raises(SinkError) as err:
        asyncio.run(sink.emit([event]))
    assert err.value.delivered == 0
    assert isinstance(err.value.__cause__, OSError)
    assert err.value.__cause__.errno == errno.ECONNREFUSED


# -- a real journald ----------------------------------------------------------------------------


@pytest.mark.journald
def test_carrier_loss_reaches_journald_with_every_field(
    ns: NetNS, journal: PrivateJournal, start_daemon: Callable[..., JournalDaemon]
) -> None:
    ns.veth("lm0", "lm0p")
    daemon = start_daemon('[sinks.journal.priorities]\n"daemon.*" = 5\n')
    ns.ip("link", "set", "lm0p", "down")  # pull the cable: lm0 stays admin up
    lost = daemon.wait_event(
        lambda e: e["type"] == "link.carrier_lost" and e["subject"] == "lm0", what="carrier_lost"
    )
    entry = journal.by_event_id(lost["id"])

    assert entry["MESSAGE"] == "link lm0: carrier lost (admin up)"
    event = Event.model_validate(lost)
    assert entry["MESSAGE"] == describe(event)
    assert human_line(event) == f"[{lost['time'][11:23]}] {entry['MESSAGE']}"  # as on the console
    assert entry["PRIORITY"] == "4"
    assert entry["SYSLOG_IDENTIFIER"] == "linkmond"
    assert entry["MESSAGE_ID"] == MESSAGE_IDS["link.carrier_lost"]
    assert entry["LINKMOND_TYPE"] == "link.carrier_lost"
    assert entry["LINKMOND_IFNAME"] == "lm0"
    assert entry["LINKMOND_IFINDEX"] == str(kernel_ifindex(ns, "lm0"))
    assert entry["LINKMOND_EVENT_ID"] == lost["id"]
    assert entry["LINKMOND_SEQ"] == str(lost["seq"])
    assert entry["LINKMOND_NETNS"] == ns.name
    assert json.loads(entry["LINKMOND_JSON"]) == lost  # the very event the file sink got
    assert {k for k in entry if not k.startswith("_")} == OUR_FIELDS
    assert entry["_TRANSPORT"] == "journal"  # the native protocol, not syslog or stdout
    assert daemon.proc is not None
    assert entry["_PID"] == str(daemon.proc.pid)

    # an event without an interface, with a configured priority
    started = daemon.wait_event(lambda e: e["type"] == "daemon.started")
    first = journal.by_event_id(started["id"])
    assert first["PRIORITY"] == "5"
    assert first["MESSAGE_ID"] == MESSAGE_IDS["daemon.started"]
    assert first["MESSAGE"] == describe(Event.model_validate(started))
    assert {k for k in first if not k.startswith("_")} == OUR_FIELDS - {
        "LINKMOND_IFNAME",
        "LINKMOND_IFINDEX",
    }


@pytest.mark.journald
def test_journalctl_x_explains_a_carrier_loss_from_the_catalog(
    ns: NetNS, journal: PrivateJournal, start_daemon: Callable[..., JournalDaemon]
) -> None:
    ns.veth("lm0", "lm0p")
    daemon = start_daemon()
    ns.ip("link", "set", "lm0p", "down")
    lost = daemon.wait_event(
        lambda e: e["type"] == "link.carrier_lost" and e["subject"] == "lm0", what="carrier_lost"
    )
    journal.by_event_id(lost["id"])
    shown = journal.run(
        "journalctl",
        "-D",
        "/run/log/journal",
        "-x",
        "-q",
        "--no-pager",
        f"MESSAGE_ID={MESSAGE_IDS['link.carrier_lost']}",
        f"LINKMOND_EVENT_ID={lost['id']}",
    ).stdout
    assert "link lm0: carrier lost (admin up)" in shown
    assert "Subject: Interface lm0 lost its carrier" in shown  # @LINKMOND_IFNAME@ filled in
    assert "Defined-By: linkmond" in shown
    assert "ethtool lm0" in shown
    assert "ip -s link show lm0" in shown


@pytest.mark.journald
def test_multi_line_values_round_trip_through_the_binary_safe_encoding(
    journal: PrivateJournal,
) -> None:
    """MESSAGE escapes a line break like any control character; a field that holds one (here
    a field of a test's own) travels in the binary-safe form and arrives whole."""

    class WithNote(JournalSink):
        def fields(self, event: Event) -> list[tuple[str, str]]:
            return [*super().fields(event), ("LINKMOND_NOTE", "first line\nsecond line\n\nend")]

    f = factory()
    multi = f.make("daemon.stopping", "linkmond", {"reason": "first line\nsecond line\n\nend"})
    unicode = f.make(
        "link.changed",
        "lm9",
        {
            "ifindex": 9,
            "ifname": "lm9",
            "admin_up": True,
            "changes": {"mtu": [1500, 9000]},
            "resync": False,
        },
    )
    sink = WithNote(journal.outside(SOCKET))
    asyncio.run(sink.emit([multi, unicode]))
    asyncio.run(sink.aclose())

    entry = journal.by_event_id(multi.id)
    assert entry["MESSAGE"] == "daemon: stopping (first line\\x0asecond line\\x0a\\x0aend)"
    assert entry["LINKMOND_NOTE"] == "first line\nsecond line\n\nend"
    assert json.loads(entry["LINKMOND_JSON"]) == json.loads(multi.json_line)
    changed = journal.by_event_id(unicode.id)
    assert changed["MESSAGE"] == "link lm9: changed mtu 1500 → 9000"
    assert changed["LINKMOND_IFINDEX"] == "9"
    assert sink.memfd_entries == 0


@pytest.mark.journald
def test_entry_larger_than_a_datagram_arrives_through_a_sealed_memfd(
    journal: PrivateJournal,
) -> None:
    f = factory()
    big = f.make("daemon.overflow", "linkmond", {"events": 7, "blob": "x" * (1 << 20)})
    small = f.make("daemon.stopping", "linkmond", {"reason": "after the big one"})
    sink = JournalSink(journal.outside(SOCKET))
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as probe:
        datagram_limit = probe.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)
    assert len(sink.encode(big)) > datagram_limit
    asyncio.run(sink.emit([big, small]))
    asyncio.run(sink.aclose())
    assert sink.memfd_entries == 1

    entry = journal.by_event_id(big.id)
    assert entry["LINKMOND_JSON"] == big.json_line  # all of it, byte for byte
    assert entry["MESSAGE_ID"] == MESSAGE_IDS["daemon.overflow"]
    assert entry["PRIORITY"] == "4"
    assert entry["MESSAGE"] == describe(big)
    assert journal.by_event_id(small.id)["LINKMOND_SEQ"] == str(small.seq)


@pytest.mark.journald
def test_sink_reconnects_by_itself_when_journald_restarts(journal: PrivateJournal) -> None:
    f = factory()
    before = f.make("daemon.started", "linkmond", {"netns": "default", "counts": {}})
    after = f.make("daemon.stopping", "linkmond", {"reason": "after the restart"})
    sink = JournalSink(journal.outside(SOCKET))

    async def scenario() -> None:
        await sink.emit([before])
        journal.by_event_id(before.id)
        journal.stop_journald()
        journal.start_journald()  # a new socket at the same path
        await sink.emit([after])  # the old connection is refused: reconnect, no error
        await sink.aclose()

    asyncio.run(scenario())
    assert journal.by_event_id(after.id)["LINKMOND_SEQ"] == str(after.seq)


@pytest.mark.journald
def test_stopped_journald_never_blocks_the_loop_and_nothing_is_lost_or_doubled(
    journal: PrivateJournal,
) -> None:
    assert journal.journald is not None
    f = factory()
    events = [f.make("daemon.stopping", "linkmond", {"reason": f"r{i}"}) for i in range(1000)]
    sink = JournalSink(journal.outside(SOCKET), send_timeout=1.0)

    async def emit_while_stuck() -> tuple[SinkError, int]:
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        task = asyncio.create_task(ticker())
        try:
            await sink.emit(events)
        except SinkError as exc:
            return exc, ticks
        finally:
            task.cancel()
        raise AssertionError("a stopped journald took 1000 entries")

    os.kill(journal.journald.pid, signal.SIGSTOP)  # journald: our own child
    try:
        error, ticks = asyncio.run(emit_while_stuck())
    finally:
        os.kill(journal.journald.pid, signal.SIGCONT)
    assert ticks > 0  # the event loop ran while the sink waited for journald
    assert 0 < error.delivered < len(events)

    # the worker's retry: the rest of the batch, after what journald already took
    asyncio.run(sink.emit(events[error.delivered :]))
    asyncio.run(sink.aclose())
    wanted = [e.id for e in events]

    def all_arrived() -> list[str] | None:
        ids = [e["LINKMOND_EVENT_ID"] for e in journal.entries()]
        return ids if len(ids) >= len(wanted) else None

    assert wait_for(all_arrived, timeout=20, what="all 1000 entries") == wanted


@pytest.mark.journald
def test_daemon_without_journald_keeps_the_file_sink_and_catches_up_when_it_starts(
    ns: NetNS, journal_ns: PrivateJournal, start_daemon: Callable[..., JournalDaemon]
) -> None:
    ns.veth("lm0", "lm0p")
    daemon = start_daemon()  # no journald yet: daemon.started still reaches the file
    ns.ip("link", "set", "lm0p", "down")
    lost = daemon.wait_event(
        lambda e: e["type"] == "link.carrier_lost" and e["subject"] == "lm0", what="carrier_lost"
    )
    ns.ip("link", "set", "lm0p", "up")
    up = daemon.wait_event(
        lambda e: e["type"] == "link.carrier_up" and e["subject"] == "lm0", what="carrier_up"
    )

    journal_ns.start_journald()
    journal_ns.by_event_id(up["id"], timeout=30)  # the sink retried and delivered its backlog
    journaled = [int(e["LINKMOND_SEQ"]) for e in journal_ns.entries()]
    assert journaled == sorted(journaled)
    assert {lost["seq"], up["seq"]} <= set(journaled)
    assert 1 in journaled  # daemon.started, queued while journald was absent

    def journal_logs(message: str) -> list[dict[str, Any]]:
        return [r for r in daemon.logs() if r.get("sink") == "journal" and r["event"] == message]

    wait_for(lambda: journal_logs("sink recovered"), what="'sink recovered' logged")
    failures = journal_logs("sink failed; retrying")
    assert len(failures) == 1, failures  # said once, however many retries
    assert SOCKET in failures[0]["error"]
    assert len(journal_logs("sink recovered")) == 1
