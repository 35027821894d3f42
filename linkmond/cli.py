"""The command line (docs/linkmond.md): run, check-config, monitor, status, replay."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import http.client
import json
import os
import socket
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from pydantic import ValidationError

from linkmond import __version__, cli_fleet, rtnl
from linkmond.config import (
    DEFAULT_PATH,
    EX_CONFIG,
    BufferConfig,
    Config,
    ConfigError,
    ConsoleSinkConfig,
    LogConfig,
    load_config,
    parse_config,
    split_listen,
)
from linkmond.events import Event, EventFactory, escape_controls
from linkmond.logs import configure as configure_logs
from linkmond.publisher import Publisher
from linkmond.source import current_netns_name, enter_netns, quiesce, take_passed_socket

if TYPE_CHECKING:
    from linkmond.state import State

# The daemon and the sinks (aiohttp among them) are imported by the commands that use them:
# `replay` and `status` start several times faster without them.

#: sysexits.h: the input data was incorrect (``replay`` of a damaged recording)
EX_DATAERR = 65

#: sysexits.h: the command was used incorrectly (``monitor --type`` matching no event type)
EX_USAGE = 64

#: ``monitor`` shows what changed, not the daemon's own start and stop
MONITOR_DEFAULT_TYPES = ["*", "!daemon.started", "!daemon.stopping"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="linkmond",
        description="Watch the kernel's network state over rtnetlink and report what changed.",
    )
    parser.add_argument("--version", action="version", version=f"linkmond {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def config_arg(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "-c",
            "--config",
            type=Path,
            help="config file (default /etc/linkmond/linkmond.toml; without it: console only)",
        )

    p = sub.add_parser("run", help="run the daemon")
    config_arg(p)
    p = sub.add_parser("check-config", help="validate and print the effective config")
    config_arg(p)
    p = sub.add_parser("monitor", help="show live semantic events, like `ip monitor`")
    p.add_argument("--json", action="store_true", help="JSON lines instead of human lines")
    p.add_argument(
        "-n",
        "--netns",
        metavar="NAME",
        help="watch the named network namespace (as `ip -n NAME monitor`; needs root)",
    )
    p.add_argument("--type", action="append", metavar="GLOB", help="event types (repeatable)")
    p.add_argument(
        "--interface",
        action="append",
        metavar="GLOB",
        help="interface names (repeatable; !excludes)",
    )
    p = sub.add_parser("status", help="current links: admin, carrier, operstate, addresses")
    p.add_argument("--json", action="store_true", help="JSON instead of a table")
    p.add_argument(
        "-c",
        "--config",
        type=Path,
        help="the daemon's config, whose [metrics] listen is asked for its health "
        "(default /etc/linkmond/linkmond.toml)",
    )
    p = sub.add_parser(
        "replay",
        help="decode a recorded netlink stream (rtmon / ip monitor file); exit 65 if damaged",
    )
    p.add_argument("file", type=Path, help="file written by `rtmon file F` or `ip monitor file`")
    cli_fleet.add_parser(sub)
    for command in sub.choices.values():
        command.add_argument("--version", action="version", version=f"linkmond {__version__}")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``linkmond`` command; returns the exit status."""
    args = _parser().parse_args(argv)
    try:
        if args.command == "run":
            return _run(args.config)
        if args.command == "check-config":
            return _check_config(args.config)
        if args.command == "monitor":
            return _monitor(args)
        if args.command == "status":
            return _status(args.json, args.config)
        if args.command == "fleet":
            return cli_fleet.run(args)
        return _replay(args.file)
    except ConfigError as exc:
        print(f"linkmond: configuration error: {exc}", file=sys.stderr)
        return EX_CONFIG
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `linkmond status | head`: the reader has all it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


def _load(path: Path | None) -> Config:
    """The config ``run`` and ``check-config`` use; says so when the default file is missing."""
    if path is None and not DEFAULT_PATH.exists():
        print(
            f"linkmond: no {DEFAULT_PATH}; using the built-in default: console only",
            file=sys.stderr,
        )
    return load_config(path)


def _run(path: Path | None) -> int:
    # first, so that a socket systemd passed is left silent even if the config is refused
    # (joined and unread, it would fill and make systemd start the service again)
    passed = take_passed_socket()
    if passed is not None:
        quiesce(passed)
    config = _load(path)
    configure_logs(config.log.level, config.log.format)
    from linkmond.daemon import Daemon

    daemon = Daemon(config, reload_config=lambda: load_config(path), passed_socket=passed)
    try:
        return asyncio.run(daemon.run())
    except Exception as exc:
        from linkmond.metrics import ListenError

        if isinstance(exc, ListenError):  # [metrics] listen cannot be bound: nothing started
            raise ConfigError(path or DEFAULT_PATH, [("metrics.listen", str(exc))]) from None
        raise


def _check_config(path: Path | None) -> int:
    from linkmond.sinks import build_sink

    config = _load(path)
    for name, options in config.sinks.items():
        # what only shows when a sink is built (an unreadable secret or CA file), as `run` would
        build_sink(name, options, config.state_directory())
    print(json.dumps(config.effective(), indent=2))
    return 0


def _monitor(args: argparse.Namespace) -> int:
    configure_logs("warning", "auto")
    try:
        console = ConsoleSinkConfig(
            type="console",
            json=args.json,
            # the daemon's start and stop are left out in both output modes; daemon.overflow
            # (events were lost and re-read) is always shown
            events=args.type or MONITOR_DEFAULT_TYPES,
            interfaces=args.interface or ["*"],
            # a terminal that cannot keep up loses lines, never holds the reader back
            buffer=BufferConfig(max_events=100_000, when_full="drop_newest"),
        )
    except ValidationError as exc:
        problem = exc.errors()[0]["msg"].removeprefix("Value error, ")
        print(f"linkmond monitor: --type: {problem}", file=sys.stderr)
        return EX_USAGE
    if args.netns is not None:
        try:
            enter_netns(args.netns)
        except OSError as exc:
            why = os.strerror(exc.errno) if exc.errno else str(exc)
            print(
                f"linkmond monitor: cannot enter network namespace {args.netns!r}: {why}",
                file=sys.stderr,
            )
            return 1
    config = Config(log=LogConfig(level="warning"), sinks={"console": console})

    from linkmond.daemon import Daemon
    from linkmond.sinks.console import ConsoleSink

    async def go() -> int:
        daemon = Daemon(config)
        sink = daemon.fanout.workers[0].sink
        assert isinstance(sink, ConsoleSink)
        sink.on_closed = lambda: daemon.request_stop("stdout closed")
        return await daemon.run()

    return asyncio.run(go())


def _status(as_json: bool, config: Path | None = None) -> int:
    configure_logs("warning", "auto")
    rtnl.load_system_names()

    from linkmond.watcher import NetnsWatcher

    async def snapshot() -> State:
        publisher = Publisher(EventFactory("", ""), lambda e: None)
        watcher = NetnsWatcher(publisher, groups=("link", "addr"))
        await watcher.start()
        watcher.stop()
        return watcher.state

    state = asyncio.run(snapshot())
    addrs: dict[int, list[str]] = {}
    for addr in state.tables["addr"].values():
        addrs.setdefault(addr["ifindex"], []).append(f"{addr['address']}/{addr['prefixlen']}")
    rows = []
    for link in sorted(state.tables["link"].values(), key=lambda link: link["ifindex"]):
        rows.append(
            {
                "ifindex": link["ifindex"],
                "ifname": link["ifname"],
                "admin_up": link["admin_up"],
                "carrier": link["carrier"],
                "ready": link["admin_up"] and link["carrier"],
                "operstate": link["operstate"],
                "mtu": link["mtu"],
                "mac": link["mac"],
                "kind": link["kind"],
                "master": state.ifname(link["master"]),
                "addresses": addrs.get(link["ifindex"], []),
            }
        )
    if as_json:
        print(json.dumps(rows, indent=2))
        return 0
    daemons = running_daemons()
    print(f"daemon: {_daemon_line(daemons)}")
    # the health of a daemon watching this namespace (or of the one -c names): its metrics
    if config is not None or any(same is not False for _pid, same in daemons):
        print(f"daemon: {daemon_health(config)}")
    print(f"{'IFNAME':<16} {'ADMIN':<5} {'CARRIER':<7} {'OPERSTATE':<14} {'MTU':>6}  ", end="")
    print(f"{'MAC':<17}  ADDRESSES")
    for r in rows:
        # the kernel takes ESC and other control characters in a name: never raw to a terminal
        print(
            f"{escape_controls(r['ifname']):<16} {'up' if r['admin_up'] else 'down':<5} "
            f"{'yes' if r['carrier'] else 'no':<7} {r['operstate']:<14} {r['mtu']:>6}  "
            f"{r['mac'] or '-':<17}  {' '.join(r['addresses'])}"
        )
    return 0


def running_daemons(proc: Path = Path("/proc")) -> list[tuple[int, bool | None]]:
    """Every ``linkmond run`` process this user can see: ``(pid, in our network namespace)``,
    None where its namespace cannot be read (another user's process, unless root)."""
    try:
        mine: os.stat_result | None = os.stat(proc / "self/ns/net")
    except OSError:
        mine = None
    found: list[tuple[int, bool | None]] = []
    for entry in proc.iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue  # gone meanwhile
        if not _is_linkmond_run(argv):
            continue
        try:
            theirs = os.stat(entry / "ns/net")
            same = (
                None
                if mine is None
                else (theirs.st_dev, theirs.st_ino)
                == (
                    mine.st_dev,
                    mine.st_ino,
                )
            )
        except OSError:
            same = None
        found.append((int(entry.name), same))
    return sorted(found)


def _is_linkmond_run(argv: list[bytes]) -> bool:
    """``linkmond run …``, ``/opt/linkmond/bin/linkmond run …``, ``python -m linkmond run …``."""
    for i, arg in enumerate(argv[:-1]):
        before = argv[i - 1] if i else b""
        program = os.path.basename(arg) == b"linkmond" and before != b"-c"
        module = arg == b"linkmond" and before == b"-m"
        if (program or module) and argv[i + 1] == b"run":
            return True
    return False


def _daemon_line(daemons: list[tuple[int, bool | None]]) -> str:
    here = [pid for pid, same in daemons if same is not False]
    elsewhere = [pid for pid, same in daemons if same is False]
    if here:
        pids = ", ".join(map(str, here))
        return f"linkmond is running (pid {pids})"
    if elsewhere:
        pids = ", ".join(map(str, elsewhere))
        return f"not running in this network namespace (running in another: pid {pids})"
    return "not running (these links are read from the kernel now)"


#: how long ``status`` waits for the daemon's ``/metrics`` (s)
SCRAPE_TIMEOUT = 2.0


def daemon_health(path: Path | None) -> str:
    """One line on the health of the daemon whose config is ``path`` (else the default
    file), from the ``/metrics`` its ``[metrics] listen`` serves; or why there is none."""
    file = path if path is not None else DEFAULT_PATH
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        if path is None:
            return f"no [metrics] listen configured (no {file}: the built-in default has none)"
        return f"metrics not checked: {file}: no such file"
    except (OSError, UnicodeDecodeError) as exc:
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        return f"metrics not checked: {file}: cannot read: {why}"
    try:
        listen = parse_config(text, file).metrics.listen
    except ConfigError as exc:
        return f"metrics not checked: {str(exc).splitlines()[0]}"
    if listen is None:
        return f"no [metrics] listen configured in {file}"
    try:
        exposition = scrape(listen)
    except (OSError, http.client.HTTPException, UnicodeDecodeError) as exc:
        why = (exc.strerror if isinstance(exc, OSError) else None) or str(exc) or type(exc).__name__
        return f"metrics not reachable at {listen} ({why})"
    return f"health from {listen}: {summarize_health(exposition)}"


class _UnixHTTPConnection(http.client.HTTPConnection):
    """HTTP over a unix socket (``[metrics] listen = "/path"``)."""

    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self.unix_path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self.unix_path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


def scrape(listen: str, timeout: float = SCRAPE_TIMEOUT) -> str:
    """GET ``/metrics`` from ``listen`` (``HOST:PORT`` or a unix socket path)."""
    address = split_listen(listen)
    conn = (
        _UnixHTTPConnection(address, timeout)
        if isinstance(address, str)
        else http.client.HTTPConnection(*address, timeout=timeout)
    )
    try:
        conn.request("GET", "/metrics")
        response = conn.getresponse()
        body = response.read()
    finally:
        conn.close()
    if response.status != 200:
        raise OSError(f"HTTP {response.status} {response.reason}")
    return body.decode("utf-8")


def summarize_health(exposition: str) -> str:
    """``0 netlink overflows; sink file: 12 delivered, 0 dropped, 0 failures, 0 queued``
    from the text of a daemon's ``/metrics``."""
    from prometheus_client.parser import text_string_to_metric_families

    overflows = 0.0
    sinks: dict[str, dict[str, float]] = {}
    found = False
    for family in text_string_to_metric_families(exposition):
        for sample in family.samples:
            if sample.name == "linkmond_netlink_overflows_total":
                overflows += sample.value
                found = True
            elif sample.name.startswith("linkmond_sink_") and "sink" in sample.labels:
                what = sample.name.removeprefix("linkmond_sink_").removesuffix("_total")
                sinks.setdefault(sample.labels["sink"], {})[what] = sample.value
    if not found:
        return "no linkmond metrics there"
    parts = [f"{overflows:.0f} netlink overflows"]
    for name, c in sinks.items():
        line = (
            f"sink {escape_controls(name)}: {c.get('delivered', 0):.0f} delivered, "
            f"{c.get('dropped', 0):.0f} dropped, {c.get('failures', 0):.0f} failures, "
            f"{c.get('queue_depth', 0):.0f} queued"
        )
        if "spool_depth" in c:
            line += f", {c['spool_depth']:.0f} spooled"
        parts.append(line)
    return "; ".join(parts)


def _replay(path: Path) -> int:
    try:
        recording = path.open("rb")
    except OSError as exc:
        print(f"linkmond: {path}: {exc.strerror or exc}", file=sys.stderr)
        return 66  # EX_NOINPUT
    with recording:
        return _replay_from(path, recording)


def _replay_from(path: Path, recording: BinaryIO) -> int:
    """Decode ``recording`` in chunks (constant memory, whatever its size) to JSON lines."""
    configure_logs("warning", "auto")
    rtnl.load_system_names()
    factory = EventFactory(f"/linkmond/{socket.gethostname()}", current_netns_name())
    out = sys.stdout.buffer
    pending: list[bytes] = []

    def publish(event: Event) -> None:
        pending.append(event.jsonl)
        if len(pending) >= 4096:
            flush()

    def flush() -> None:
        out.write(b"".join(pending))
        pending.clear()

    from linkmond.replay import ReadError, ReplaySource

    source = ReplaySource(Publisher(factory, publish))
    gc.disable()  # a short-lived run whose cache only grows: the collector would only re-walk it
    try:
        source.feed_file(recording)
        flush()
        out.flush()
    except BrokenPipeError:  # `linkmond replay F | head`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except ReadError as exc:  # what was decoded before is out; the reason, as at open
        with contextlib.suppress(OSError):
            flush()
            out.flush()
        print(f"linkmond: {path}: {exc}", file=sys.stderr)
        return 66
    if source.malformed or source.skipped_bytes:
        print(
            f"linkmond: {path}: skipped {source.malformed} malformed message(s) and "
            f"{source.skipped_bytes} undecodable byte(s); decoded {source.messages}",
            file=sys.stderr,
        )
        return EX_DATAERR
    return 0
