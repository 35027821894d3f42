"""The nats sink, the fleet view and ``linkmond fleet`` against a real nats-server (issue 12).

Every test that needs a server starts its own ``nats-server -js`` (JetStream, its store in
the test's temporary directory, on a free port) and stops it by PID. The in-process tests
drive :class:`NatsSink` against a server on 127.0.0.1 of this namespace: they need no root.
The end-to-end ones run the daemon with ``ip netns exec`` in throwaway namespaces, where
127.0.0.1 is not ours: the server runs in a namespace the daemons can reach, and the test
reads the stream and the fleet view from inside it, with ``python -m tests.test_nats
client`` (a small nats-py client taking a JSON request on stdin) and ``python -m linkmond
fleet status``. IPv6 is off in those namespaces, so nothing but what a test does makes an
event (no link-local addresses appearing after a carrier comes up).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import structlog

from linkmond import cli, sinks
from linkmond.config import NatsSinkConfig
from linkmond.events import Event, EventFactory
from linkmond.fleet import key_token, link_key, open_bucket, read_links, select
from linkmond.sinks.nats import NatsSink, subject_for, subject_prefix, subject_token
from tests.helpers import (
    ROOT,
    Daemon,
    NetNS,
    default_config,
    linkmond,
    restart,
    running,
    until,
    wait_for,
)

Record = dict[str, Any]

NATS_SERVER = shutil.which("nats-server") or "/usr/sbin/nats-server"
HAVE_NATS = Path(NATS_SERVER).is_file()
NO_NATS = "nats-server is not installed (scripts/setup test installs it)"
#: this host's name, as a daemon in the same UTS namespace puts it in its subjects
HOST = socket.gethostname()
#: a JetStream key, as the server accepts it (the fleet view's keys must be this)
NATS_KEY = re.compile(r"[-/_=A-Za-z0-9]+(\.[-/_=A-Za-z0-9]+)*")


# -- a nats-server of the test's own ---------------------------------------------------------


def free_port(ns: NetNS | None = None) -> int:
    """A TCP port free on 127.0.0.1 of this namespace, or of ``ns``."""
    if ns is not None:
        code = "import socket; s = socket.socket(); s.bind(('', 0)); print(s.getsockname()[1])"
        return int(ns.run(sys.executable, "-c", code).stdout)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def accepts(host: str, port: int, timeout: float = 1.0) -> bool:
    """Whether a NATS server answers on ``host:port`` (it greets every client with INFO)."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.settimeout(timeout)
            return sock.recv(5) == b"INFO "
    except OSError:
        return False


class NatsServer:
    """``nats-server -js`` listening on ``host:port`` (inside ``ns`` if given), its store in
    ``workdir``; started and stopped by the test, by PID (``ip netns exec`` execs it)."""

    def __init__(
        self, workdir: Path, port: int, *, ns: NetNS | None = None, host: str = "127.0.0.1"
    ) -> None:
        self.workdir = workdir
        self.store = workdir / "nats-store"
        self.port = port
        self.ns = ns
        self.host = host
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = workdir / "nats-server.log"
        self._starts = 0

    @property
    def url(self) -> str:
        return f"nats://{self.host}:{self.port}"

    def start(self, *, auth: tuple[str, str] | None = None) -> NatsServer:
        """Start (again: same store, same port), and wait until it accepts connections."""
        assert self.proc is None or self.proc.poll() is not None, "already running"
        self._starts += 1
        self.log = self.workdir / f"nats-server-{self._starts}.log"
        command = [NATS_SERVER, "-js", "-sd", str(self.store), "-a", self.host]
        command += ["-p", str(self.port)]
        if auth is not None:
            command += ["--user", auth[0], "--pass", auth[1]]
        if self.ns is not None:
            command = ["ip", "netns", "exec", self.ns.name, *command]
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        if self.ns is None:
            wait_for(lambda: self._alive() and accepts(self.host, self.port), 15, self.url)
        else:  # its log says so first; then a client in the namespace checks
            ready = "Server is ready"
            wait_for(lambda: self._alive() and ready in self.log.read_text(), 15, self.url)
            client(self.ns, {"op": "ping", "host": self.host, "port": self.port})
        return self

    def _alive(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(
                f"nats-server exited with {self.proc.returncode}: {self.log.read_text()[-2000:]}"
            )
        return True

    def stop(self) -> None:
        """Stop it (our own child, by PID) and wait for it to exit."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
def local_server(tmp_path: Path) -> Iterator[NatsServer]:
    """A server on a free port of 127.0.0.1 here (not started yet); stopped afterwards."""
    if not HAVE_NATS:
        pytest.skip(NO_NATS)
    server = NatsServer(tmp_path, free_port())
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def ns_server(ns: NetNS, tmp_path: Path) -> Iterator[NatsServer]:
    """A server on a free port of 127.0.0.1 inside ``ns`` (not started yet); stopped
    afterwards. Ask for it before ``daemon_factory``: the daemons are stopped first."""
    if not HAVE_NATS:
        pytest.skip(NO_NATS)
    server = NatsServer(tmp_path, free_port(ns), ns=ns)
    try:
        yield server
    finally:
        server.stop()


# -- a client: in this process, or in a namespace (python -m tests.test_nats client) -----------


async def _open(server: str, user: str | None = None, password: str | None = None) -> Any:
    import nats

    async def quiet_errors(exc: Exception) -> None:
        pass

    # nats-py gives up on a server only after max_reconnect_attempts (> 0) failures
    return await nats.connect(
        servers=[server],
        allow_reconnect=False,
        max_reconnect_attempts=1,
        reconnect_time_wait=0.5,
        connect_timeout=5,
        error_cb=quiet_errors,
        user=user,
        password=password,
    )


async def read_stream(
    server: str,
    stream: str = "LINKMOND",
    wait_ids: Sequence[str] = (),
    timeout: float = 20.0,
    user: str | None = None,
    password: str | None = None,
) -> Record:
    """Every message of ``stream`` (a stream get for each sequence number) and the stream's
    config; first waiting, up to ``timeout``, until the ids ``wait_ids`` are all there
    (``complete`` says whether they were)."""
    import nats.js.errors

    nc = await _open(server, user, password)
    try:
        js = nc.jetstream()
        wanted = set(wait_ids)
        messages: dict[int, Record] = {}
        config: Record | None = None
        deadline = time.monotonic() + timeout
        while True:
            try:
                info = await js.stream_info(stream)
            except nats.js.errors.NotFoundError:
                info = None
            if info is not None:
                config = {
                    "subjects": info.config.subjects,
                    "storage": getattr(info.config.storage, "value", info.config.storage),
                    "duplicate_window": info.config.duplicate_window,
                    "max_age": info.config.max_age,
                    "max_msgs_per_subject": info.config.max_msgs_per_subject,
                }
                if info.state.messages:
                    for seq in range(max(info.state.first_seq, 1), info.state.last_seq + 1):
                        if seq in messages:
                            continue
                        try:
                            msg = await js.get_msg(stream, seq)
                        except nats.js.errors.NotFoundError:
                            continue
                        headers = dict(msg.headers or {})
                        messages[seq] = {
                            "seq": seq,
                            "subject": msg.subject,
                            "headers": headers,
                            "id": headers.get("Nats-Msg-Id"),
                            "data": (msg.data or b"").decode(),
                        }
            complete = wanted <= {m["id"] for m in messages.values()}
            if complete or time.monotonic() > deadline:
                ordered = [messages[seq] for seq in sorted(messages)]
                return {"stream": config, "messages": ordered, "complete": complete}
            await asyncio.sleep(0.05)
    finally:
        await nc.close()


async def set_stream(server: str, name: str, subjects: list[str], *, update: bool) -> None:
    """Create (or update) stream ``name`` with ``subjects``."""
    from nats.js.api import StreamConfig

    nc = await _open(server)
    try:
        js = nc.jetstream()
        config = StreamConfig(name=name, subjects=subjects)
        await (js.update_stream(config) if update else js.add_stream(config))
    finally:
        await nc.close()


async def fleet_keys(server: str) -> list[Record]:
    """Every link in the fleet's bucket ([] while there is no bucket)."""
    import nats.js.errors

    nc = await _open(server)
    try:
        try:
            kv = await open_bucket(nc.jetstream(), create=False)
        except nats.js.errors.BucketNotFoundError:
            return []
        return await read_links(kv)
    finally:
        await nc.close()


def _client(request: Record) -> Any:
    """One request of :func:`client`, answered in JSON."""
    op = request.pop("op")
    if op == "ping":  # a NATS server answering there, within a deadline
        wait_for(lambda: accepts(request["host"], request["port"]), 15, "a NATS server")
        return {"ok": True}
    if op == "get":  # an HTTP GET (the daemon's metrics)
        with urllib.request.urlopen(request["url"], timeout=10) as answer:  # noqa: S310
            return {"status": answer.status, "body": answer.read().decode()}
    if op == "read":
        return asyncio.run(read_stream(**request))
    if op in ("add_stream", "update_stream"):
        asyncio.run(set_stream(**request, update=op == "update_stream"))
        return {"ok": True}
    raise SystemExit(f"unknown op {op}")


def client(ns: NetNS, request: Record) -> Any:
    """Run ``request`` (see :func:`_client`) with a client inside ``ns``; its JSON answer."""
    result = subprocess.run(
        ["ip", "netns", "exec", ns.name, sys.executable, "-m", "tests.test_nats", "client"],
        input=json.dumps(request),
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=90,
        check=False,
    )
    assert result.returncode == 0, f"client {request}: {result.stderr[-2000:]}"
    return json.loads(result.stdout)


def fleet_cli(ns: NetNS, *args: str) -> subprocess.CompletedProcess[str]:
    """``linkmond fleet ARGS`` inside ``ns``."""
    return subprocess.run(
        ["ip", "netns", "exec", ns.name, sys.executable, "-m", "linkmond", "fleet", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
        check=False,
    )


def fleet_status(ns: NetNS, server: NatsServer, *args: str) -> list[Record]:
    """``linkmond fleet status --json`` inside ``ns``: the links."""
    result = fleet_cli(ns, "status", "--server", server.url, "--json", *args)
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout)  # type: ignore[no-any-return]


# -- helpers: configs, the daemon, its files -------------------------------------------------


def sink_toml(url: str, extra: str = "") -> str:
    """The ``[sinks.fleet]`` table of the issue's example (quick retries, 1 s timeout)."""
    return (
        f'\n[sinks.fleet]\ntype = "nats"\nservers = ["{url}"]\nstream = "LINKMOND"\n'
        'subject = "linkmond.{host}.{type}"\nretry_initial = "50ms"\n'
        'max_retry_delay = "200ms"\ntimeout = "1s"\n' + extra
    )


def daemon_config(workdir: Path, url: str, extra: str = "") -> str:
    """A file sink of every event and the nats sink, both unfiltered."""
    return default_config(workdir / "events.jsonl") + sink_toml(url, extra)


def quiet(*namespaces: NetNS) -> None:
    """IPv6 off: no link-local address, DAD or router solicitation makes events of its own."""
    for ns in namespaces:
        ns.run(
            "sysctl",
            "-qw",
            "net.ipv6.conf.all.disable_ipv6=1",
            "net.ipv6.conf.default.disable_ipv6=1",
        )


def lines(daemon: Daemon) -> list[str]:
    """The file sink's lines, as written (newline-terminated ones only)."""
    try:
        return daemon.events_path.read_text().split("\n")[:-1]
    except FileNotFoundError:
        return []


def spooled_ids(state: Path, name: str = "fleet") -> list[str]:
    """The event ids in the nats spool on disk (read through SQLite, not the sink)."""
    path = state / f"nats-{name}.sqlite"
    if not path.exists():
        return []
    db = sqlite3.connect(path)
    try:
        return [row[0] for row in db.execute("SELECT id FROM spool ORDER BY seq")]
    except sqlite3.OperationalError:  # not created yet
        return []
    finally:
        db.close()


def logs(daemon: Daemon) -> list[Record]:
    """The daemon's own log lines (JSON on stderr)."""
    found = []
    for line in daemon.stderr().splitlines():
        with contextlib.suppress(ValueError):
            found.append(json.loads(line))
    return found


def wait_logged(daemon: Daemon, match: Callable[[Record], bool], what: str) -> Record:
    def find() -> Record | None:
        assert alive(daemon), daemon.stderr()[-2000:]
        return next((entry for entry in logs(daemon) if match(entry)), None)

    return wait_for(find, 20, what)  # type: ignore[no-any-return]


def alive(daemon: Daemon) -> bool:
    assert daemon.proc is not None
    return daemon.proc.poll() is None


def flap(ns: NetNS, daemon: Daemon, link: str = "lm0") -> None:
    """Pull ``link``'s cable (its peer down) and plug it back, waiting for both events."""
    for state, event in (("down", "link.carrier_lost"), ("up", "link.carrier_up")):
        pull(ns, daemon, link, state, event)


def pull(ns: NetNS, daemon: Daemon, link: str, state: str, event: str) -> Record:
    """Set ``link``'s peer ``state`` and wait for ``event`` on ``link``; the event."""
    mark = daemon.mark()
    ns.ip("link", "set", f"{link}p", state)

    def seen() -> Record | None:
        assert alive(daemon), daemon.stderr()[-2000:]
        found = (e for e in daemon.since(mark) if e["type"] == event and e["subject"] == link)
        return next(found, None)

    return wait_for(seen, 10, f"{event} {link}")  # type: ignore[no-any-return]


def spooled_all(daemon: Daemon, ids: Sequence[str]) -> None:
    """Wait until every id of ``ids`` is in the daemon's nats spool."""
    state = daemon.config_path.parent / "state"
    wait_for(lambda: set(ids) <= set(spooled_ids(state)), 10, "the events in the nats spool")


class HostDaemon(Daemon):
    """The daemon in ``ns`` and in a UTS namespace of its own whose host name is
    ``hostname`` (``unshare`` and ``sh`` exec: the PID stays the daemon's)."""

    def __init__(self, ns: NetNS, workdir: Path, config: str, hostname: str) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        super().__init__(ns, workdir, config)
        self.hostname = hostname

    def command(self) -> list[str]:
        run = [sys.executable, "-m", "linkmond", "run", "-c", str(self.config_path)]
        return [
            *("ip", "netns", "exec", self.ns.name, "unshare", "--uts", "sh", "-c"),
            'hostname "$0" && exec "$@"',
            self.hostname,
            *run,
        ]


# -- in process: helpers -----------------------------------------------------------------------


def sink_config(url: str, **options: Any) -> NatsSinkConfig:
    options = {"retry_initial": "50ms", "max_retry_delay": "200ms", "timeout": "1s", **options}
    return NatsSinkConfig(type="nats", servers=[url], **options)


async def until_async(predicate: Callable[[], Any], timeout: float = 10.0, what: str = "it") -> Any:
    """:func:`until` for a coroutine function ``predicate``."""
    deadline = time.monotonic() + timeout
    while not (result := await predicate()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.05)
    return result


def link_data(ifname: str = "lm0", *, carrier: bool = False, ifindex: int = 7) -> Record:
    return {
        "ifindex": ifindex,
        "ifname": ifname,
        "admin_up": True,
        "carrier": carrier,
        "operstate": "up" if carrier else "lowerlayerdown",
        "flags": ["up", "broadcast", "multicast"],
        "mtu": 1500,
        "mac": "02:00:00:00:00:07",
        "kind": "veth",
        "master": None,
        "changes": {"carrier": [not carrier, carrier]},
        "resync": False,
    }


@pytest.fixture
def factory() -> EventFactory:
    return EventFactory(f"/linkmond/{HOST}", "default")


def carrier_lost(factory: EventFactory, ifname: str = "lm0", netns: str | None = None) -> Event:
    return factory.make("link.carrier_lost", ifname, link_data(ifname), netns=netns)


# -- unit: subjects, keys, selection (no server, no root) ------------------------------------


@pytest.mark.parametrize(
    ("value", "token"),
    [
        ("web1", "web1"),
        ("web1.example.com", "web1_example_com"),
        ("my host", "my_host"),
        ("tab\there\n", "tab_here_"),
        ("a*b>c", "a_b_c"),
        ("ns-1_x=y", "ns-1_x=y"),
        ("", "_"),
    ],
)
def test_subject_token(value: str, token: str) -> None:
    assert subject_token(value) == token
    assert not re.search(r"[.*>\s]", subject_token(value))


def test_subject_for_escapes_host_and_netns_and_keeps_the_types_dot() -> None:
    event = EventFactory("/linkmond/x", "blue ns.1").make("link.carrier_lost", "lm0", link_data())
    assert event.type == "link.carrier_lost"
    template = "linkmond.{host}.{type}"
    assert (
        subject_for(template, "web 1.example.com", event)
        == "linkmond.web_1_example_com.link.carrier_lost"
    )
    assert (
        subject_for("lm.events.{netns}.{host}.{type}", "h*>", event)
        == "lm.events.blue_ns_1.h__.link.carrier_lost"
    )
    assert subject_prefix(template) == "linkmond"
    assert subject_prefix("lm.events.{netns}.{host}.{type}") == "lm.events"


@pytest.mark.parametrize(
    ("value", "token"),
    [
        ("web1", "web1"),
        ("web1.example.com", "web1_example_com"),
        ("eth0.100", "eth0_100"),
        ("ns 1", "ns_1"),
        ("a/b:c*>", "a_b_c__"),
        ("x=y-z_w", "x=y-z_w"),
        ("é", "_"),
        ("", "_"),
    ],
)
def test_key_token(value: str, token: str) -> None:
    assert key_token(value) == token


def test_link_key_is_three_escaped_tokens_a_server_accepts() -> None:
    key = link_key("web1.example.com", "blue ns", "eth0.100")
    assert key == "web1_example_com.blue_ns.eth0_100"
    assert NATS_KEY.fullmatch(key)
    assert NATS_KEY.fullmatch(link_key("", "", ""))
    assert link_key("h", "default", "lo") == "h.default.lo"


FLEET = [
    {"host": "web1", "ifname": "eth0", "admin_up": True, "carrier": True},
    {"host": "web1", "ifname": "eth1", "admin_up": True, "carrier": False},
    {"host": "web2.example", "ifname": "eth0", "admin_up": False, "carrier": False},
    {"host": "db1", "ifname": "eth0", "admin_up": True, "carrier": False},
]


@pytest.mark.parametrize(
    ("host", "down", "expected"),
    [
        (None, False, [0, 1, 2, 3]),
        ("web*", False, [0, 1, 2]),
        ("web?", False, [0, 1]),
        ("web2.example", False, [2]),
        ("WEB*", False, []),  # host names are matched as they are
        (None, True, [1, 3]),  # admin up without carrier; an admin-down link is not "down"
        ("web*", True, [1]),
        ("db1", True, [3]),
    ],
)
def test_select(host: str | None, down: bool, expected: list[int]) -> None:
    assert select(FLEET, host, down) == [FLEET[i] for i in expected]


@pytest.mark.parametrize("module", ["linkmond.durable", "linkmond.fleet"])
def test_the_modules_import_on_their_own(module: str) -> None:
    result = subprocess.run(
        [sys.executable, "-c", f"import {module}"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]


# -- configuration (check-config; no server, no root) ----------------------------------------

EXAMPLE = """\
[sinks.fleet]
type = "nats"
servers = ["nats://127.0.0.1:{port}"]
stream = "LINKMOND"                     # created if missing, subjects "linkmond.>"
subject = "linkmond.{{host}}.{{type}}"      # {{host}}: hostname with . * > and spaces as _
# credentials_file / nkey_file / token_env / user + password_env; ca_file
retry_initial = "50ms"
max_retry_delay = "200ms"
"""


def write_config(tmp_path: Path, sink: str) -> Path:
    path = tmp_path / "linkmond.toml"
    state = tmp_path / "state"
    path.write_text(f'[daemon]\nstate_directory = "{state}"\n\n{sink}')
    return path


def test_check_config_accepts_the_example(tmp_path: Path) -> None:
    path = write_config(tmp_path, EXAMPLE.format(port=free_port()))
    result = linkmond("check-config", "-c", str(path))
    assert result.returncode == 0, result.stderr
    sink = json.loads(result.stdout)["sinks"]["fleet"]
    assert sink["type"] == "nats"
    assert sink["stream"] == "LINKMOND"
    assert sink["subject"] == "linkmond.{host}.{type}"
    assert sink["retry_initial"] == 0.05
    assert sink["max_retry_delay"] == 0.2
    assert not (tmp_path / "state" / "nats-fleet.sqlite").exists()  # checked, not opened


NATS_HEAD = '[sinks.fleet]\ntype = "nats"\n'
SERVERS = 'servers = ["nats://127.0.0.1:4222"]\n'


@pytest.mark.parametrize(
    ("body", "key", "message"),
    [
        pytest.param(
            'servers = ["nats://u:p@127.0.0.1:4222"]\n',
            "sinks.fleet.servers.0",
            "credentials in the URL would sit in the config",
            id="credentials-in-url",
        ),
        pytest.param(
            'servers = ["http://127.0.0.1:4222"]\n',
            "sinks.fleet.servers.0",
            "expected nats://HOST[:PORT] or tls://HOST[:PORT]",
            id="http-url",
        ),
        pytest.param("servers = []\n", "sinks.fleet.servers", "at least 1 item", id="no-servers"),
        pytest.param(
            SERVERS + 'token_env = "LM_T"\nuser = "u"\npassword_env = "LM_P"\n',
            "sinks.fleet",
            "set at most one of token_env, user",
            id="two-auth-methods",
        ),
        pytest.param(
            SERVERS + 'user = "u"\n',
            "sinks.fleet",
            "user and password_env go together",
            id="user-without-password-env",
        ),
        pytest.param(
            SERVERS + 'password_env = "LM_P"\n',
            "sinks.fleet",
            "user and password_env go together",
            id="password-env-without-user",
        ),
        pytest.param(
            SERVERS + 'subject = "linkmond.*.{type}"\n',
            "sinks.fleet.subject",
            "wildcards are not allowed",
            id="subject-star",
        ),
        pytest.param(
            SERVERS + 'subject = "linkmond.{host}.>"\n',
            "sinks.fleet.subject",
            "wildcards are not allowed",
            id="subject-gt",
        ),
        pytest.param(
            SERVERS + 'subject = "linkmond.{hostname}.{type}"\n',
            "sinks.fleet.subject",
            "unknown field {hostname}",
            id="subject-unknown-field",
        ),
        pytest.param(
            SERVERS + 'token_env = "LM_TEST_NATS_UNSET_TOKEN"\n',
            "sinks.fleet.token_env",
            "environment variable LM_TEST_NATS_UNSET_TOKEN is not set or empty",
            id="token-env-unset",
        ),
        pytest.param(
            SERVERS + 'stream = "LINK.MOND"\n',
            "sinks.fleet.stream",
            "",
            id="stream-with-a-dot",
        ),
    ],
)
def test_check_config_refuses(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    body: str,
    key: str,
    message: str,
) -> None:
    monkeypatch.delenv("LM_TEST_NATS_UNSET_TOKEN", raising=False)
    path = write_config(tmp_path, NATS_HEAD + body)
    assert cli.main(["check-config", "-c", str(path)]) == 78
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith("linkmond: configuration error: ")
    assert f"{key}: " in err
    assert message in err


def test_a_sink_without_type_names_nats_among_the_types(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_config(tmp_path, "[sinks.fleet]\n" + SERVERS)
    assert cli.main(["check-config", "-c", str(path)]) == 78
    err = capsys.readouterr().err
    assert "sinks.fleet.type: required key is missing" in err
    assert "nats" in err


def test_check_config_exits_78_in_a_real_process(tmp_path: Path) -> None:
    path = write_config(tmp_path, NATS_HEAD + 'servers = ["nats://u:p@127.0.0.1:4222"]\n')
    result = linkmond("check-config", "-c", str(path))
    assert result.returncode == 78
    assert "sinks.fleet.servers.0: credentials in the URL" in result.stderr
    assert ":p@" not in result.stderr


def test_fleet_command_refuses_a_url_it_cannot_use(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["fleet", "status", "--server", "http://127.0.0.1:4222"]) == 64
    assert "expected nats://HOST[:PORT]" in capsys.readouterr().err
    assert cli.main(["fleet", "watch", "--server", "nats://u:p@127.0.0.1:4222"]) == 64
    assert "credentials in the URL" in capsys.readouterr().err


def test_fleet_status_exits_69_when_no_server_answers() -> None:
    port = free_port()  # nothing listens there: every connection is refused at once
    url = f"nats://127.0.0.1:{port}"
    try:
        result = subprocess.run(
            [sys.executable, "-m", "linkmond", "fleet", "status", "--server", url],
            capture_output=True,
            text=True,
            cwd=ROOT,
            timeout=3,  # a deadline for a hang, not a speed requirement
            check=False,
        )
    except subprocess.TimeoutExpired as exc:  # the child was killed (ours, by PID)
        raise AssertionError(f"still retrying after 3 s: {exc.stderr!r:.300}") from None
    assert result.returncode == 69
    assert f"cannot reach nats://127.0.0.1:{port}" in result.stderr


# -- in process: NatsSink against a server on 127.0.0.1 (no root) ----------------------------


async def test_each_event_is_stored_once_in_order_with_its_id_even_when_sent_twice(
    tmp_path: Path, local_server: NatsServer, factory: EventFactory
) -> None:
    local_server.start()
    url = local_server.url
    events = [carrier_lost(factory, f"lm{i}") for i in range(6)]
    async with running(NatsSink("fleet", sink_config(url), tmp_path / "a")) as sink:
        await sink.emit(events[:2])
        await sink.emit(events[2:])
        await until(lambda: sink.spooled() == 0, what="an empty spool")
    # as after a crash between the publish and the spool's delete: the same events again
    # (another spool), then one more; the stream drops what it already holds by Nats-Msg-Id
    extra = carrier_lost(factory, "lm9")
    async with running(NatsSink("fleet", sink_config(url), tmp_path / "b")) as again:
        await again.emit([*events, extra])
        await until(lambda: again.spooled() == 0, what="the second spool empty")
    got = await read_stream(url, wait_ids=[extra.id])
    assert got["complete"]
    assert [m["id"] for m in got["messages"]] == [e.id for e in [*events, extra]]
    for message, event in zip(got["messages"], [*events, extra], strict=True):
        assert message["subject"] == f"linkmond.{subject_token(HOST)}.link.carrier_lost"
        assert message["headers"]["Nats-Msg-Id"] == event.id
        assert message["data"] == event.json_line
    assert got["stream"]["subjects"] == ["linkmond.>"]
    assert got["stream"]["storage"] == "file"
    assert got["stream"]["duplicate_window"] == 86400  # max_age: the longest an event waits


async def test_a_created_stream_takes_the_templates_prefix_and_limits(
    tmp_path: Path, local_server: NatsServer, factory: EventFactory
) -> None:
    local_server.start()
    config = sink_config(
        local_server.url,
        stream="LMTEST",
        subject="lm.events.{netns}.{host}.{type}",
        max_age="2h",
        stream_limits={"max_age": "1h", "max_msgs_per_subject": 10},
    )
    event = carrier_lost(factory, netns="blue.ns")
    sink = sinks.build_sink("fleet", config, tmp_path)  # as the daemon builds it
    assert isinstance(sink, NatsSink)
    async with running(sink):
        await sink.emit([event])
        await until(lambda: sink.spooled() == 0, what="the delivery")
    got = await read_stream(local_server.url, "LMTEST", [event.id])
    (message,) = got["messages"]
    assert message["subject"] == f"lm.events.blue_ns.{subject_token(HOST)}.link.carrier_lost"
    assert got["stream"]["subjects"] == ["lm.events.>"]
    assert got["stream"]["max_age"] == 3600
    assert got["stream"]["duplicate_window"] == 3600  # within the stream's own max_age
    assert got["stream"]["max_msgs_per_subject"] == 10


async def test_the_fleet_view_keeps_this_hosts_links(
    tmp_path: Path, local_server: NatsServer, factory: EventFactory
) -> None:
    local_server.start()
    url = local_server.url
    async with running(NatsSink("fleet", sink_config(url), tmp_path)) as sink:
        view = sink.fleet
        view.sync([("default", link_data("lm0", carrier=True)), ("blue", link_data("eth0.5"))])
        await until_async(lambda: _has_links(url, 2), what="two links in the bucket")
        lost = carrier_lost(factory, "lm0")
        view.link_event(lost)
        removed = factory.make("link.removed", "eth0.5", link_data("eth0.5"), netns="blue")
        view.link_event(removed)
        await until_async(lambda: _lm0_lost(url, lost.id), what="lm0 without carrier, alone")
    (link,) = await fleet_keys(url)
    assert link["host"] == HOST
    assert link["netns"] == "default"
    assert (link["admin_up"], link["carrier"], link["operstate"]) == (True, False, "lowerlayerdown")
    assert link["since"] == lost.time


async def test_the_fleet_view_is_rewritten_regularly_and_its_bucket_forgets_old_keys(
    tmp_path: Path, local_server: NatsServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Keys not written for a day leave the bucket (a retired host's links); a daemon writes
    its whole set again every REFRESH, so its own never do (a key lost meanwhile is back)."""
    import linkmond.fleet

    monkeypatch.setattr(linkmond.fleet, "REFRESH", 0.2)
    local_server.start()
    url = local_server.url
    async with running(NatsSink("fleet", sink_config(url), tmp_path)) as sink:
        sink.fleet.sync([("default", link_data("lm0", carrier=True))])
        await until_async(lambda: _has_links(url, 1), what="lm0 in the bucket")
        nc = await _open(url)
        try:
            kv = await open_bucket(nc.jetstream(), create=False)
            assert (await kv.status()).ttl == linkmond.fleet.BUCKET_TTL
            await kv.delete(link_key(HOST, "default", "lm0"))  # lost, say, by a restore
        finally:
            await nc.close()
        assert not await _has_links(url, 1)
        await until_async(lambda: _has_links(url, 1), 5, "lm0 written again by the refresh")


async def test_fleet_watch_follows_every_hosts_events_live_with_its_filters(
    tmp_path: Path, local_server: NatsServer, factory: EventFactory
) -> None:
    """``linkmond fleet watch``: new events as they are stored, filtered by type and by the
    host in their source; one line each, the event's JSON with ``--json``, else
    ``HOST [NETNS] <human line>``."""
    local_server.start()
    url = local_server.url
    other = EventFactory("/linkmond/elsewhere", "default")
    async with running(NatsSink("fleet", sink_config(url), tmp_path / "state")) as sink:
        await sink.emit([carrier_lost(factory)])  # the stream exists before the watch
        await until(lambda: sink.spooled() == 0, what="the stream made")

        async def watch(*args: str) -> asyncio.subprocess.Process:
            return await asyncio.create_subprocess_exec(
                *[sys.executable, "-m", "linkmond", "fleet", "watch", "--server", url, *args],
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                cwd=ROOT,
            )

        async def first_line(
            proc: asyncio.subprocess.Process, emit: Callable[[], list[Event]]
        ) -> tuple[str, list[Event]]:
            # it subscribes for new events only: publish until it has printed one
            assert proc.stdout is not None
            sent: list[Event] = []
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline:
                batch = emit()
                sent += batch
                await sink.emit(batch)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(0.5):
                        return (await proc.stdout.readline()).decode(), sent
            raise AssertionError("fleet watch printed nothing in 15 s")

        host = HOST.partition(".")[0]
        as_json = await watch("--json", "--type", "link.carrier_*", "--host", f"{host}*")
        human = await watch("--type", "link.*")
        try:

            def mixed() -> list[Event]:
                # another host's loss and an address event go by; ours is shown
                addr = factory.make("addr.added", "lm0", {"ifindex": 7, "ifname": "lm0"})
                return [carrier_lost(other), addr, carrier_lost(factory, netns="blue")]

            line, sent = await first_line(as_json, mixed)
            shown = json.loads(line)
            ours = [e.id for e in sent if e.type == "link.carrier_lost" and e.source.endswith(HOST)]
            assert shown["id"] in ours
            assert shown["netns"] == "blue"
            line, _ = await first_line(human, lambda: [carrier_lost(factory, netns="blue")])
            assert line.startswith(
                (
                    "elsewhere [default] link lm0: carrier lost",
                    f"{HOST} [blue] link lm0: carrier lost",
                )
            ), line
        finally:
            for proc in (as_json, human):  # our children, by PID
                proc.terminate()
                await proc.wait()


async def test_fleet_watch_connects_again_after_the_server_restarts(
    tmp_path: Path, local_server: NatsServer, factory: EventFactory
) -> None:
    """A server restart ends the subscription: ``fleet watch`` says so on stderr, connects
    again (with backoff) and goes on showing new events, instead of exiting."""
    local_server.start()
    url = local_server.url
    proc: asyncio.subprocess.Process | None = None
    async with running(NatsSink("fleet", sink_config(url), tmp_path / "state")) as sink:
        await sink.emit([carrier_lost(factory)])  # the stream exists before the watch
        await until(lambda: sink.spooled() == 0, what="the stream made")
        proc = await asyncio.create_subprocess_exec(
            *[sys.executable, "-m", "linkmond", "fleet", "watch", "--server", url, "--json"],
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            cwd=ROOT,
        )
        assert proc.stdout is not None
        assert proc.stderr is not None
        try:

            async def shown_after_emitting() -> Record:
                assert proc is not None
                assert proc.stdout is not None
                deadline = time.monotonic() + 20
                while time.monotonic() < deadline:
                    event = carrier_lost(factory)
                    await sink.emit([event])
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(0.5):
                            line = await proc.stdout.readline()
                            assert line, "fleet watch exited"
                            return dict(json.loads(line))
                raise AssertionError("fleet watch showed nothing in 20 s")

            await shown_after_emitting()
            await asyncio.to_thread(local_server.stop)
            async with asyncio.timeout(20):
                lost = await proc.stderr.readline()
            assert b"connection lost; connecting again" in lost, lost
            await asyncio.to_thread(local_server.start)
            shown = await shown_after_emitting()  # the same process, connected again
            assert shown["type"] == "link.carrier_lost"
            assert proc.returncode is None
        finally:
            if proc.returncode is None:  # our child, by PID
                proc.terminate()
            await proc.wait()


async def _has_links(url: str, count: int) -> bool:
    return len(await fleet_keys(url)) == count


async def _lm0_lost(url: str, event_id: str) -> bool:
    links = await fleet_keys(url)
    return [(link["ifname"], link["event_id"]) for link in links] == [("lm0", event_id)]


# -- in process: failures and recoveries -----------------------------------------------------------


@pytest.mark.parametrize("cause", ["nothing-listening", "wrong-password"])
async def test_a_server_that_cannot_be_used_is_logged_as_a_warning(
    tmp_path: Path,
    local_server: NatsServer,
    factory: EventFactory,
    monkeypatch: pytest.MonkeyPatch,
    cause: str,
) -> None:
    monkeypatch.setenv("LM_TEST_NATS_PASSWORD", "not-the-servers")
    if cause == "wrong-password":
        local_server.start(auth=("linkmond", "the-servers"))
    config = sink_config(local_server.url, user="linkmond", password_env="LM_TEST_NATS_PASSWORD")  # noqa: S106
    with structlog.testing.capture_logs() as captured:
        async with running(NatsSink("fleet", config, tmp_path)) as sink:
            sink.fleet.sync([("default", link_data("lm0"))])  # as the daemon does at start
            await sink.emit([carrier_lost(factory)])

            def warned(what: str) -> bool:
                return any(
                    e["log_level"] in ("warning", "error") and e["event"].endswith(what)
                    for e in captured
                )

            # a failed first connection is an attempt like any other: Retry, logged, backoff
            await until(lambda: warned("will retry"), 3, "the sink's warning")
            await until(lambda: warned("fleet view not written; will retry"), 3, "the fleet's")
            assert sink.spooled() == 1
            assert sink.queue.failing


async def test_a_reload_with_the_right_password_delivers_what_was_spooled(
    tmp_path: Path,
    local_server: NatsServer,
    factory: EventFactory,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("LM_TEST_NATS_WRONG", "not-the-servers")
    monkeypatch.setenv("LM_TEST_NATS_RIGHT", "the-servers")
    auth = ("linkmond", "the-servers")
    local_server.start(auth=auth)
    url = local_server.url
    event = carrier_lost(factory)
    config = sink_config(url, user="linkmond", password_env="LM_TEST_NATS_WRONG")  # noqa: S106
    async with running(NatsSink("fleet", config, tmp_path)) as sink:
        await sink.emit([event])
        # refused: the queue waits to retry (the warning is another test's business)
        await until(lambda: sink.queue.failing, what="the publisher refused")
        assert sink.spooled() == 1
        # what the daemon's reload does: prepare (reads the credentials), then apply
        right = sink_config(url, user="linkmond", password_env="LM_TEST_NATS_RIGHT")  # noqa: S106
        apply = sink.prepare(right)
        assert apply is not None
        apply()
        await until(lambda: sink.spooled() == 0, 4, "the spooled event delivered")
    got = await read_stream(url, wait_ids=[event.id], timeout=1, user=auth[0], password=auth[1])
    assert got["complete"]


async def test_a_server_back_without_its_store_gets_the_stream_again(
    tmp_path: Path, local_server: NatsServer, factory: EventFactory
) -> None:
    local_server.start()
    url = local_server.url
    first, second = carrier_lost(factory), carrier_lost(factory)
    async with running(NatsSink("fleet", sink_config(url), tmp_path / "state")) as sink:
        await sink.emit([first])
        await until(lambda: sink.spooled() == 0, what="the first delivery")
        await asyncio.to_thread(local_server.stop)
        local_server.store = tmp_path / "new-store"  # a new server, or one that lost its disk
        await asyncio.to_thread(local_server.start)
        await sink.emit([second])
        await until(lambda: sink.spooled() == 0, 4, "the second event delivered")
    got = await read_stream(url, wait_ids=[second.id], timeout=1)
    assert [m["id"] for m in got["messages"]] == [second.id]


async def test_the_fleet_view_is_written_again_after_a_reconnection(
    tmp_path: Path, local_server: NatsServer
) -> None:
    local_server.start()
    url = local_server.url
    async with running(NatsSink("fleet", sink_config(url), tmp_path / "state")) as sink:
        sink.fleet.sync([("default", link_data("lm0", carrier=True))])
        await until_async(lambda: _has_links(url, 1), what="lm0 in the bucket")
        await asyncio.to_thread(local_server.stop)
        local_server.store = tmp_path / "new-store"
        await asyncio.to_thread(local_server.start)
        await until_async(lambda: _has_links(url, 1), 4, "lm0 in the bucket again")


# -- end to end: the daemon in a namespace, the server beside it -----------------------------


@pytest.mark.netns
def test_events_reach_the_stream_with_their_id_and_the_file_sinks_json(
    ns: NetNS, ns_server: NatsServer, daemon_factory: Callable[..., Daemon], tmp_path: Path
) -> None:
    quiet(ns)
    ns_server.start()
    ns.veth("lm0", "lm0p")
    daemon = daemon_factory(daemon_config(tmp_path, ns_server.url))
    lost = pull(ns, daemon, "lm0", "down", "link.carrier_lost")
    daemon.barrier()  # every event is in the file now
    written = lines(daemon)
    ids = [json.loads(line)["id"] for line in written]
    assert lost["id"] in ids
    got = client(ns, {"op": "read", "server": ns_server.url, "wait_ids": ids})
    assert got["complete"], (
        f"missing from the stream: {set(ids) - {m['id'] for m in got['messages']}}"
    )
    messages = got["messages"]
    # the stream holds exactly the file's events, in its order, each once
    assert [m["id"] for m in messages] == ids
    for message, line in zip(messages, written, strict=True):
        event = json.loads(line)
        assert message["headers"]["Nats-Msg-Id"] == event["id"]
        assert message["data"] == line  # the same JSON text, byte for byte
        assert message["subject"] == f"linkmond.{subject_token(HOST)}.{event['type']}"
    carrier = next(m for m in messages if m["id"] == lost["id"])
    assert carrier["subject"] == f"linkmond.{subject_token(HOST)}.link.carrier_lost"
    assert json.loads(carrier["data"])["data"]["changes"]["carrier"] == [True, False]
    assert got["stream"]["subjects"] == ["linkmond.>"]
    state = tmp_path / "state"
    wait_for(lambda: spooled_ids(state) == [], 10, "an empty spool")
    assert not (state / "nats-fleet.deadletter.jsonl").exists()


HOST_A = "lmtest-a"
HOST_B = "lmtest-b.example.net"  # dots: escaped in subjects and keys, not in the view


@pytest.fixture
def ns_b(ns: NetNS) -> Iterator[NetNS]:
    """A second namespace (after ``ns``, so root is checked), deleted afterwards."""
    second = NetNS()
    try:
        yield second
    finally:
        second.delete()


@pytest.fixture
def daemons() -> Iterator[list[Daemon]]:
    """Daemons a test starts itself; stopped (by PID) afterwards."""
    started: list[Daemon] = []
    yield started
    for daemon in started:
        daemon.stop()


@pytest.mark.netns
def test_two_hosts_keep_apart_in_subjects_and_in_the_fleet_view(
    ns: NetNS, ns_b: NetNS, tmp_path: Path, daemons: list[Daemon]
) -> None:
    if not HAVE_NATS:
        pytest.skip(NO_NATS)
    quiet(ns, ns_b)
    # one wire between the two "hosts"; the server listens on A's end of it
    ns.ip("link", "add", "xa", "type", "veth", "peer", "name", "xb", "netns", ns_b.name)
    ns.ip("addr", "add", "192.0.2.1/24", "dev", "xa")
    ns_b.ip("addr", "add", "192.0.2.2/24", "dev", "xb")
    ns.ip("link", "set", "xa", "up")
    ns_b.ip("link", "set", "xb", "up")
    server = NatsServer(tmp_path, free_port(ns), ns=ns, host="192.0.2.1")
    try:
        server.start()
        ns.veth("lm0", "lm0p")
        ns.veth("lm1", "lm1p", up=False)  # admin down: never "down" in the fleet's sense
        ns_b.veth("lm0", "lm0p")
        a = HostDaemon(ns, tmp_path / "a", daemon_config(tmp_path / "a", server.url), HOST_A)
        b = HostDaemon(ns_b, tmp_path / "b", daemon_config(tmp_path / "b", server.url), HOST_B)
        for daemon in (a, b):
            daemons.append(daemon)
            daemon.start()
        assert a.events()[0]["source"] == f"/linkmond/{HOST_A}"
        assert b.events()[0]["source"] == f"/linkmond/{HOST_B}"
        lost = pull(ns_b, b, "lm0", "down", "link.carrier_lost")  # B's lm0 loses its carrier
        pull(ns, a, "lm0", "down", "link.carrier_lost")  # A's flaps: back up at the end
        up = pull(ns, a, "lm0", "up", "link.carrier_up")

        ids = {d: [e["id"] for e in d.events()] for d in (a, b)}
        got = client(ns, {"op": "read", "server": server.url, "wait_ids": [*ids[a], *ids[b]]})
        assert got["complete"]
        by_id = {m["id"]: m for m in got["messages"]}
        for daemon, host in ((a, HOST_A), (b, HOST_B)):
            prefix = f"linkmond.{subject_token(host)}."
            for event in daemon.events():
                if event["id"] in by_id:
                    message = by_id[event["id"]]
                    assert message["subject"] == prefix + event["type"]
                    assert json.loads(message["data"])["source"] == f"/linkmond/{host}"
            # nothing of the other host under this host's subjects
            mine = [m["id"] for m in got["messages"] if m["subject"].startswith(prefix)]
            assert set(mine) <= {e["id"] for e in daemon.events()}
            assert set(ids[daemon]) <= set(mine)
        assert by_id[lost["id"]]["subject"] == "linkmond.lmtest-b_example_net.link.carrier_lost"
        assert by_id[up["id"]]["subject"] == "linkmond.lmtest-a.link.carrier_up"

        expected = {
            (HOST_A, "lo"), (HOST_A, "xa"), (HOST_A, "lm0"), (HOST_A, "lm0p"),
            (HOST_A, "lm1"), (HOST_A, "lm1p"),
            (HOST_B, "lo"), (HOST_B, "xb"), (HOST_B, "lm0"), (HOST_B, "lm0p"),
        }  # fmt: skip

        def settled() -> list[Record] | None:
            links = fleet_status(ns, server)
            found = {(link["host"], link["ifname"]): link for link in links}
            if set(found) != expected:
                return None
            a_lm0, b_lm0 = found[HOST_A, "lm0"], found[HOST_B, "lm0"]
            if not a_lm0["carrier"] or b_lm0["carrier"] is not False:
                return None
            return links

        links = wait_for(settled, 20, "both hosts' links in the fleet view")
        b_lm0 = next(x for x in links if (x["host"], x["ifname"]) == (HOST_B, "lm0"))
        assert b_lm0["netns"] == ns_b.name  # as `ip netns` names the daemon's namespace
        assert b_lm0["event_id"] == lost["id"]
        assert (b_lm0["admin_up"], b_lm0["operstate"]) == (True, "lowerlayerdown")
        a_lm0 = next(x for x in links if (x["host"], x["ifname"]) == (HOST_A, "lm0"))
        assert a_lm0["event_id"] == up["id"]

        only_b = fleet_status(ns, server, "--host", "lmtest-b*")
        assert {(x["host"], x["ifname"]) for x in only_b} == {x for x in expected if x[0] == HOST_B}
        down = fleet_status(ns, server, "--down")
        assert [(x["host"], x["ifname"]) for x in down] == [(HOST_B, "lm0")]
        assert fleet_status(ns, server, "--down", "--host", HOST_A) == []

        table = fleet_cli(ns, "status", "--server", server.url)
        assert table.returncode == 0, table.stderr
        rows = table.stdout.splitlines()
        assert rows[0].split() == [
            *("HOST", "NETNS", "LINK", "ADMIN", "CARRIER", "OPERSTATE", "MTU", "SINCE")
        ]
        assert len(rows) == 1 + len(expected)
        assert any(r.split()[:5] == [HOST_B, ns_b.name, "lm0", "up", "no"] for r in rows)
        down_table = fleet_cli(ns, "status", "--server", server.url, "--down")
        print(f"\n$ linkmond fleet status --server {server.url}\n{table.stdout}")
        print(f"$ linkmond fleet status --server {server.url} --down\n{down_table.stdout}")
    finally:
        for daemon in daemons:
            daemon.stop()
        daemons.clear()
        server.stop()


@pytest.mark.netns
def test_outage_kill9_and_restart_store_every_event_once_in_order(
    ns: NetNS, ns_server: NatsServer, daemon_factory: Callable[..., Daemon], tmp_path: Path
) -> None:
    quiet(ns)
    ns.veth("lm0", "lm0p")
    ns_server.start()
    config = daemon_config(tmp_path, ns_server.url)
    first = daemon_factory(config)
    first.barrier()
    delivered = [e["id"] for e in first.events()]
    assert client(ns, {"op": "read", "server": ns_server.url, "wait_ids": delivered})["complete"]

    ns_server.stop()  # the outage
    outage = first.mark()
    for _ in range(3):
        flap(ns, first)
    first.barrier()
    spooled_all(first, [e["id"] for e in first.since(outage)])
    assert first.stop(signal.SIGKILL) == -signal.SIGKILL
    run2 = first.mark()

    second = restart(daemon_factory, config)  # the server is still down
    flap(ns, second)
    last = pull(ns, second, "lm0", "down", "link.carrier_lost")  # the cable stays out
    second.barrier()
    spooled_all(second, [e["id"] for e in second.since(run2)])

    ns_server.start()  # the same store, the same port
    events = second.events()  # both runs', in the order they were written
    ids = [e["id"] for e in events]
    got = client(ns, {"op": "read", "server": ns_server.url, "wait_ids": ids, "timeout": 30})
    assert got["complete"], f"missing: {set(ids) - {m['id'] for m in got['messages']}}"
    messages = got["messages"]
    msg_ids = [m["id"] for m in messages]
    bodies = [json.loads(m["data"]) for m in messages]
    assert len(msg_ids) == len(set(msg_ids)), "a Nats-Msg-Id stored twice"
    assert [b["id"] for b in bodies] == msg_ids, "an event id stored twice"
    assert msg_ids == ids  # each event once, run 1's before run 2's, each run in seq order
    assert [m["headers"]["Nats-Msg-Id"] for m in messages] == msg_ids
    seqs = [b["seq"] for b in bodies]
    for run in (seqs[:run2], seqs[run2:]):  # each run's own seq, strictly rising
        assert all(a < b for a, b in itertools.pairwise(run)), seqs
    assert bodies[run2]["type"] == "daemon.started"
    assert bodies[run2]["data"]["pid"] == second.proc.pid  # type: ignore[union-attr]
    state = tmp_path / "state"
    wait_for(lambda: spooled_ids(state) == [], 10, "an empty spool")
    assert not (state / "nats-fleet.deadletter.jsonl").exists()

    def settled() -> dict[str, Record] | None:
        links = {x["ifname"]: x for x in fleet_status(ns, ns_server) if x["host"] == HOST}
        ok = set(links) == {"lo", "lm0", "lm0p"} and links["lm0"]["event_id"] == last["id"]
        return links if ok else None

    links = wait_for(settled, 20, "the fleet view after the outage")
    assert (links["lm0"]["admin_up"], links["lm0"]["carrier"]) == (True, False)
    assert links["lm0p"]["admin_up"] is False
    assert [x["ifname"] for x in fleet_status(ns, ns_server, "--down")] == ["lm0"]


AUTH_TOML = 'user = "linkmond"\npassword_env = "LM_TEST_NATS_PASSWORD"\n'


def spool_depth(ns: NetNS, port: int) -> float | None:
    """``linkmond_sink_spool_depth{sink="fleet"}`` scraped inside ``ns``."""
    text = client(ns, {"op": "get", "url": f"http://127.0.0.1:{port}/metrics"})["body"]
    found = re.search(r'^linkmond_sink_spool_depth\{sink="fleet"\} (\S+)$', text, re.M)
    return float(found.group(1)) if found else None


def names_the_cause(entry: Record, cause: str) -> bool:
    """A log line (any level) whose error says ``cause``."""
    return cause in str(entry.get("error"))


@pytest.mark.netns
def test_unreachable_then_refusing_server_keeps_events_spooled_until_it_takes_them(
    ns: NetNS, ns_server: NatsServer, daemon_factory: Callable[..., Daemon], tmp_path: Path
) -> None:
    quiet(ns)
    ns.veth("lm0", "lm0p")
    metrics = free_port(ns)
    config = daemon_config(tmp_path, ns_server.url, AUTH_TOML)
    config += f'\n[metrics]\nlisten = "127.0.0.1:{metrics}"\n'
    daemon = daemon_factory(config, start=False)
    daemon.start(env={"LM_TEST_NATS_PASSWORD": "the-daemons"})
    state = tmp_path / "state"

    def all_spooled() -> int:
        ids = [e["id"] for e in daemon.events()]
        spooled_all(daemon, ids)
        assert spooled_ids(state) == ids  # in order, nothing else
        wait_for(lambda: spool_depth(ns, metrics) == len(ids), 10, "the spool depth metric")
        assert alive(daemon)
        return len(ids)

    # nothing listens: the daemon runs on, the events wait in the spool, the log says why
    # (at debug level only: see test_a_server_that_cannot_be_used_is_logged_as_a_warning)
    flap(ns, daemon)
    daemon.barrier()
    all_spooled()
    wait_logged(daemon, lambda e: names_the_cause(e, "Connect call failed"), "the refusal")

    # a server that refuses the daemon's password: the same
    ns_server.start(auth=("linkmond", "the-servers"))
    flap(ns, daemon)
    daemon.barrier()
    all_spooled()
    wait_logged(
        daemon, lambda e: names_the_cause(e, "Authorization Violation"), "the authorization error"
    )
    assert "the-daemons" not in daemon.stderr()  # the password is never logged
    auth = {"user": "linkmond", "password": "the-servers"}
    assert client(ns, {"op": "read", "server": ns_server.url, "timeout": 0, **auth}) == {
        "stream": None,  # the daemon never got in
        "messages": [],
        "complete": True,
    }

    # the cause fixed: the server takes the daemon's password (same store, same port)
    ns_server.stop()
    ns_server.start(auth=("linkmond", "the-daemons"))
    ids = [e["id"] for e in daemon.events()]
    auth = {"user": "linkmond", "password": "the-daemons"}
    got = client(ns, {"op": "read", "server": ns_server.url, "wait_ids": ids, **auth})
    assert got["complete"]
    assert [m["id"] for m in got["messages"]] == ids
    wait_for(lambda: spooled_ids(state) == [], 10, "an empty spool")
    wait_for(lambda: spool_depth(ns, metrics) == 0, 10, "the spool depth metric at 0")
    assert alive(daemon)


@pytest.mark.netns
def test_a_stream_that_does_not_take_our_subjects_is_a_clear_error_until_fixed(
    ns: NetNS, ns_server: NatsServer, daemon_factory: Callable[..., Daemon], tmp_path: Path
) -> None:
    quiet(ns)
    ns.veth("lm0", "lm0p")
    ns_server.start()
    other = {"server": ns_server.url, "name": "LINKMOND", "subjects": ["other.>"]}
    client(ns, {"op": "add_stream", **other})
    daemon = daemon_factory(daemon_config(tmp_path, ns_server.url))
    flap(ns, daemon)
    daemon.barrier()
    ids = [e["id"] for e in daemon.events()]
    spooled_all(daemon, ids)
    line = wait_logged(
        daemon, lambda e: e.get("event") == "nats publish not stored; will retry", "the error"
    )
    assert line["level"] == "warning"
    assert "stream LINKMOND" in line["error"]
    assert f"linkmond.{subject_token(HOST)}.daemon.started" in line["error"]
    assert alive(daemon)
    got = client(ns, {"op": "read", "server": ns_server.url, "timeout": 0})
    assert got["stream"]["subjects"] == ["other.>"]  # used as it is, not changed
    assert got["messages"] == []

    # the stream fixed by its owner: everything spooled arrives, in order
    client(ns, {"op": "update_stream", **other, "subjects": ["other.>", "linkmond.>"]})
    got = client(ns, {"op": "read", "server": ns_server.url, "wait_ids": ids})
    assert got["complete"]
    assert [m["id"] for m in got["messages"]][: len(ids)] == ids
    wait_for(lambda: spooled_ids(tmp_path / "state") == [], 10, "an empty spool")
    assert alive(daemon)


if __name__ == "__main__" and sys.argv[1:2] == ["client"]:
    print(json.dumps(_client(json.load(sys.stdin))))
