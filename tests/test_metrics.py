"""Prometheus metrics (``[metrics] listen``, linkmond/metrics.py).

The daemon runs as a subprocess in a throwaway namespace and is scraped over real HTTP: on
127.0.0.1 inside that namespace (by a Python client started there: the test's own
127.0.0.1 is another stack) and on a unix socket. What it exports is compared with what
its file sink wrote and with what the kernel says. Without root only the configuration, the
decoder, the text the collector makes and the alert-rule file are checked.
"""

from __future__ import annotations

import json
import re
import signal
import socket
import stat
import struct
import subprocess
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from prometheus_client.parser import text_string_to_metric_families

from linkmond import rtnl
from linkmond.decode import DecodeError, LinkObj, decode, split_messages
from linkmond.events import EventFactory
from linkmond.metrics import NetnsCounts, SinkCounts, Snapshot, render
from linkmond.state import State
from linkmond.watcher import DUMP_BUCKETS
from tests.helpers import ROOT, Daemon, NetNS, default_config, linkmond, wait_for
from tests.test_decode import UP_FLAGS, link_msg, nlattr, nlmsg

ALERTS = ROOT / "config" / "linkmond.alerts.yml"
SCHEMA = ROOT / "docs" / "events.schema.json"

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]

#: run inside the namespace: the port the kernel picks there for a fresh socket
FREE_PORT = (
    "import socket; s = socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])"
)
#: run inside the namespace: GET the URL, print its Content-Type and body as JSON
GET = """
import json, sys, urllib.request
with urllib.request.urlopen(sys.argv[1], timeout=5) as r:
    print(json.dumps({"status": r.status, "type": r.headers["Content-Type"],
                      "body": r.read().decode()}))
"""


# -- helpers -------------------------------------------------------------------------------------


def free_port(ns: NetNS) -> int:
    return int(ns.run(sys.executable, "-c", FREE_PORT).stdout)


def get(ns: NetNS, url: str) -> dict[str, Any]:
    """GET ``url`` from inside the namespace."""
    result = ns.run(sys.executable, "-c", GET, url, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout)  # type: ignore[no-any-return]


def scrape(ns: NetNS, port: int) -> str:
    """The text of ``/metrics`` on 127.0.0.1:``port`` in the namespace."""
    return str(get(ns, f"http://127.0.0.1:{port}/metrics")["body"])


def unix_get(path: Path, target: str = "/metrics") -> tuple[int, str]:
    """``GET target`` over the unix socket at ``path`` (HTTP/1.0: the server closes)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(5)
        sock.connect(str(path))
        sock.sendall(f"GET {target} HTTP/1.0\r\nHost: localhost\r\n\r\n".encode())
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body.decode()


def samples(text: str) -> Samples:
    """Every sample of an exposition: (name, labels) → value."""
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(found: Samples, name: str, **labels: str) -> float | None:
    return found.get((name, frozenset(labels.items())))


def by_label(found: Samples, name: str, label: str, **others: str) -> dict[str, float]:
    """``name``'s samples by the value of ``label`` (among those with ``others``)."""
    out = {}
    for (sample, labels), v in found.items():
        d = dict(labels)
        if sample == name and all(d.get(k) == w for k, w in others.items()):
            out[d[label]] = v
    return out


def metrics_config(tmp_path: Path, listen: str, extra: str = "") -> str:
    """The helpers' file-sink config with ``[metrics] listen``."""
    return default_config(tmp_path / "events.jsonl", f'{extra}\n[metrics]\nlisten = "{listen}"\n')


def in_ns(ns: NetNS, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """``python -m linkmond ARGS`` inside the namespace."""
    return subprocess.run(
        ["ip", "netns", "exec", ns.name, sys.executable, "-m", "linkmond", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def agreeing(
    daemon: Daemon, ns: NetNS, port: int, sink: str = "file"
) -> Callable[[], tuple[Samples, list[dict[str, Any]]] | None]:
    """A predicate for wait_for: the scrape and the file sink agree (events by type, lines
    delivered), as they do once the daemon is idle; returns both."""

    def check() -> tuple[Samples, list[dict[str, Any]]] | None:
        found = samples(scrape(ns, port))
        events = daemon.events()
        exported = by_label(found, "linkmond_events_total", "type", netns=ns.name)
        written = Counter(e["type"] for e in events)
        delivered = value(found, "linkmond_sink_delivered_total", sink=sink)
        if exported == written and delivered == len(events):
            return found, events
        return None

    return check


# -- the daemon, scraped ---------------------------------------------------------------------------


@pytest.mark.netns
def test_a_pulled_cable_shows_in_the_link_gauges_and_the_kernels_count(
    ns: NetNS, daemon_factory: Callable[..., Daemon], tmp_path: Path
) -> None:
    port = free_port(ns)
    daemon = daemon_factory(metrics_config(tmp_path, f"127.0.0.1:{port}"))
    ns.veth("lm0", "lm0p")

    def link(name: str) -> tuple[float | None, float | None, float | None]:
        found = samples(scrape(ns, port))
        labels = {"ifname": name, "netns": ns.name}
        return (
            value(found, "linkmond_link_admin_up", **labels),
            value(found, "linkmond_link_carrier", **labels),
            value(found, "linkmond_link_carrier_changes_total", **labels),
        )

    def lm0_when(carrier: float) -> Callable[[], tuple[Any, ...] | None]:
        def check() -> tuple[Any, ...] | None:
            seen = link("lm0")
            return seen if seen is not None and seen[1] == carrier else None

        return check

    up = wait_for(lm0_when(1.0), what="lm0 with carrier in the metrics")
    assert up[0] == 1.0
    assert up[2] is not None  # the kernel's count (veth: every bring-up counts)

    ns.ip("link", "set", "lm0p", "down")
    lost = daemon.wait_event(
        lambda e: e["type"] == "link.carrier_lost" and e["subject"] == "lm0", what="carrier_lost"
    )
    assert "carrier_changes" not in lost["data"]  # the event contract is untouched
    down = wait_for(lm0_when(0.0), what="lm0 without carrier in the metrics")
    assert down[0] == 1.0  # still admin up: the cable is pulled, not the link downed
    assert down[2] is not None
    assert down[2] > up[2]
    text = scrape(ns, port)
    assert f'linkmond_link_carrier{{ifname="lm0",netns="{ns.name}"}} 0.0' in text
    assert f'linkmond_link_admin_up{{ifname="lm0",netns="{ns.name}"}} 1.0' in text
    # the peer was downed: admin down, and so no carrier either
    assert link("lm0p")[:2] == (0.0, 0.0)


@pytest.mark.netns
def test_events_and_deliveries_count_what_the_file_sink_got(
    ns: NetNS, daemon_factory: Callable[..., Daemon], tmp_path: Path
) -> None:
    port = free_port(ns)
    daemon = daemon_factory(metrics_config(tmp_path, f"127.0.0.1:{port}"))
    ns.veth("lm0", "lm0p")
    ns.ip("addr", "add", "192.0.2.1/24", "dev", "lm0")
    ns.ip("route", "add", "198.51.100.0/24", "via", "192.0.2.254", "dev", "lm0")
    ns.ip("link", "set", "lm0p", "down")
    daemon.barrier()

    found, events = wait_for(agreeing(daemon, ns, port), what="the scrape to match the file")
    types = {e["type"] for e in events}
    assert {"daemon.started", "link.added", "addr.added", "route.added"} <= types
    assert "link.carrier_lost" in types
    assert all(e["netns"] == ns.name for e in events)

    labels = {"netns": ns.name}
    assert value(found, "linkmond_netlink_overflows_total", **labels) == 0
    assert value(found, "linkmond_decode_errors_total", **labels) == 0
    assert (value(found, "linkmond_receive_buffer_bytes", **labels) or 0) > 0
    # the initial dump alone is one dump per table
    assert (value(found, "linkmond_dump_duration_seconds_count", **labels) or 0) >= 6
    assert value(found, "linkmond_dump_duration_seconds_bucket", le="+Inf", **labels) == value(
        found, "linkmond_dump_duration_seconds_count", **labels
    )
    assert value(found, "linkmond_resync_events_total") is not None
    assert value(found, "linkmond_reader_paused_seconds_total") is not None
    assert value(found, "linkmond_sink_dropped_total", sink="file") == 0
    assert value(found, "linkmond_sink_failures_total", sink="file") == 0
    assert value(found, "linkmond_sink_queue_depth", sink="file") == 0
    assert value(found, "linkmond_sink_spool_depth", sink="file") is None  # webhooks only

    answer = get(ns, f"http://127.0.0.1:{port}/metrics")
    assert answer["status"] == 200
    assert answer["type"].startswith("text/plain; version=")


@pytest.mark.netns
def test_a_reload_that_rebuilds_the_sink_keeps_its_counters(
    ns: NetNS, daemon_factory: Callable[..., Daemon], tmp_path: Path
) -> None:
    port = free_port(ns)
    daemon = daemon_factory(metrics_config(tmp_path, f"127.0.0.1:{port}"))
    assert daemon.proc is not None
    ns.veth("lm0", "lm0p")
    daemon.barrier()
    before, written = wait_for(agreeing(daemon, ns, port), what="the scrape to match the file")
    delivered = value(before, "linkmond_sink_delivered_total", sink="file")
    assert delivered == len(written)

    # a changed option rebuilds the sink: a new worker, a new sink object, the same name
    daemon.config_path.write_text(
        metrics_config(tmp_path, f"127.0.0.1:{port}").replace(
            'type = "file"\n', 'type = "file"\nfsync = "always"\n'
        )
    )
    daemon.proc.send_signal(signal.SIGHUP)

    def reloaded() -> bool:
        for line in daemon.stderr().splitlines():
            with_json = line.startswith("{")
            if with_json and (record := json.loads(line)).get("event") == "reloaded":
                return bool(record.get("started") == ["file"])
        return False

    wait_for(reloaded, what="the reload that rebuilds the file sink")
    ns.ip("link", "set", "lm0p", "down")
    daemon.barrier()
    after, events = wait_for(agreeing(daemon, ns, port), what="the scrape to match the file")
    # the file holds every event of the run, and the counter counts all of them: not reset
    assert value(after, "linkmond_sink_delivered_total", sink="file") == len(events)
    assert len(events) > len(written)
    old = by_label(before, "linkmond_events_total", "type", netns=ns.name)
    new = by_label(after, "linkmond_events_total", "type", netns=ns.name)
    assert all(new[t] >= n for t, n in old.items()), (old, new)
    assert sum(new.values()) > sum(old.values())


@pytest.mark.netns
def test_the_endpoint_works_on_a_unix_socket(
    ns: NetNS, daemon_factory: Callable[..., Daemon], tmp_path: Path
) -> None:
    path = tmp_path / "metrics.sock"
    daemon = daemon_factory(metrics_config(tmp_path, str(path)))
    assert stat.S_ISSOCK(path.lstat().st_mode)
    status, text = unix_get(path)
    assert status == 200
    found = samples(text)
    assert (value(found, "linkmond_sink_delivered_total", sink="file") or 0) >= 0
    assert by_label(found, "linkmond_link_admin_up", "ifname", netns=ns.name)["lo"] == 1.0
    assert unix_get(path, "/nope")[0] == 404
    assert daemon.stop() == 0
    assert not path.exists()  # removed at exit: the next run binds it afresh


@pytest.mark.netns
def test_a_listen_address_in_use_exits_78_and_starts_nothing(
    ns: NetNS, daemon_factory: Callable[..., Daemon], tmp_path: Path
) -> None:
    port = free_port(ns)
    daemon_factory(metrics_config(tmp_path, f"127.0.0.1:{port}"))
    other = tmp_path / "other"
    other.mkdir()
    config = other / "linkmond.toml"
    config.write_text(metrics_config(other, f"127.0.0.1:{port}"))
    result = in_ns(ns, "run", "-c", str(config))
    assert result.returncode == 78, result.stderr
    assert (
        f"linkmond: configuration error: {config}: metrics.listen: cannot listen on "
        f"127.0.0.1:{port}: Address already in use"
    ) in result.stderr
    assert "Traceback" not in result.stderr
    assert not (other / "events.jsonl").exists()  # no sink was started


# -- status ------------------------------------------------------------------------------------


@pytest.mark.netns
def test_status_shows_the_running_daemons_health(
    ns: NetNS, daemon_factory: Callable[..., Daemon], tmp_path: Path
) -> None:
    port = free_port(ns)
    daemon = daemon_factory(metrics_config(tmp_path, f"127.0.0.1:{port}"))
    assert daemon.proc is not None
    daemon.barrier()  # no veth here: IPv6 on one would add events at any time
    wait_for(agreeing(daemon, ns, port), what="the daemon to be idle")
    delivered = len(daemon.events())

    result = in_ns(ns, "status", "-c", str(daemon.config_path))
    assert result.returncode == 0, result.stderr
    first, health, header, *rows = result.stdout.splitlines()
    assert first == f"daemon: linkmond is running (pid {daemon.proc.pid})"
    assert health == (
        f"daemon: health from 127.0.0.1:{port}: 0 netlink overflows; "
        f"sink file: {delivered} delivered, 0 dropped, 0 failures, 0 queued"
    )
    assert header.split()[0] == "IFNAME"
    assert [row.split()[0] for row in rows] == ["lo"]

    # --json keeps its shape: the links, nothing about the daemon
    result = in_ns(ns, "status", "--json", "-c", str(daemon.config_path))
    assert result.returncode == 0, result.stderr
    links = json.loads(result.stdout)
    assert isinstance(links, list)
    assert [link["ifname"] for link in links] == ["lo"]


@pytest.mark.netns
def test_status_says_when_it_cannot_reach_the_daemons_metrics(ns: NetNS, tmp_path: Path) -> None:
    port = free_port(ns)
    config = tmp_path / "linkmond.toml"
    config.write_text(metrics_config(tmp_path, f"127.0.0.1:{port}"))
    result = in_ns(ns, "status", "-c", str(config))
    assert result.returncode == 0, result.stderr
    first, second, header, *_ = result.stdout.splitlines()
    assert first.startswith("daemon: not running"), first
    assert second == f"daemon: metrics not reachable at 127.0.0.1:{port} (Connection refused)"
    assert header.split()[0] == "IFNAME"

    socket_path = tmp_path / "gone.sock"
    config.write_text(metrics_config(tmp_path, str(socket_path)))
    second = in_ns(ns, "status", "-c", str(config)).stdout.splitlines()[1]
    assert second == f"daemon: metrics not reachable at {socket_path} (No such file or directory)"

    config.write_text(default_config(tmp_path / "events.jsonl"))
    second = in_ns(ns, "status", "-c", str(config)).stdout.splitlines()[1]
    assert second == f"daemon: no [metrics] listen configured in {config}"

    config.write_text('[metrics]\nlisten = "nowhere"\n[sinks.c]\ntype = "console"\n')
    second = in_ns(ns, "status", "-c", str(config)).stdout.splitlines()[1]
    assert second.startswith(f"daemon: metrics not checked: {config}: metrics.listen: ")


# -- configuration ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("listen", "problem"),
    [
        ('"127.0.0.1:99999"', "port 99999 is out of range (1-65535)"),
        ('"127.0.0.1:0"', "port 0 is out of range (1-65535)"),
        ('"127.0.0.1:http"', "the port 'http' is not a number"),
        ('"127.0.0.1"', "'127.0.0.1' is neither HOST:PORT (such as 127.0.0.1:9741) nor the"),
        ('"metrics.sock"', "'metrics.sock' is neither HOST:PORT"),
        ('"::1:9741"', "an IPv6 address goes in brackets: [::1]:9741"),
        ('"[nope]:9741"', "'nope' in [ ] is not an IPv6 address"),
        ('":9741"', "no host: name one"),
        ('"bad host:9741"', "'bad host' is not a host name or an IP address"),
        ('"/run/linkmond/"', "'/run/linkmond/' is not a file path for a unix socket"),
        ('"/' + "x" * 120 + '"', "a unix socket path is at most 107 bytes"),
        ("9741", "Input should be a valid string, not the number 9741"),
        ("true", "Input should be a valid string, not the boolean true"),
    ],
)
def test_a_bad_listen_value_exits_78_naming_metrics_listen(
    tmp_path: Path, listen: str, problem: str
) -> None:
    config = tmp_path / "bad.toml"
    config.write_text(f'[metrics]\nlisten = {listen}\n\n[sinks.c]\ntype = "console"\n')
    for command in ("check-config", "run"):
        result = linkmond(command, "-c", str(config))
        assert result.returncode == 78, (command, result.stderr)
        assert f"{config}: metrics.listen: {problem}" in result.stderr, result.stderr
        assert "Traceback" not in result.stderr
        assert result.stdout == ""


def test_metrics_is_off_by_default_and_strict(tmp_path: Path) -> None:
    config = tmp_path / "linkmond.toml"
    config.write_text('[sinks.c]\ntype = "console"\n')
    result = linkmond("check-config", "-c", str(config))
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["metrics"] == {"listen": None}

    for listen in ("127.0.0.1:9741", "[::1]:9741", "localhost:9741", "/run/linkmond/m.sock"):
        config.write_text(f'[metrics]\nlisten = "{listen}"\n[sinks.c]\ntype = "console"\n')
        result = linkmond("check-config", "-c", str(config))
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout)["metrics"] == {"listen": listen}

    config.write_text('[metrics]\nport = 9741\n[sinks.c]\ntype = "console"\n')
    result = linkmond("check-config", "-c", str(config))
    assert result.returncode == 78
    assert f"{config}: metrics.port: unknown key" in result.stderr


# -- the decoder: IFLA_CARRIER_CHANGES beside the event's fields ----------------------------------


def decode_one(buf: bytes) -> Any:
    ((mtype, _, _, _, start, end),) = list(split_messages(buf))
    return decode(mtype, buf, start, end)


def test_the_kernels_carrier_count_is_kept_beside_the_link_never_in_an_event() -> None:
    counted = [("IFLA_CARRIER_CHANGES", 3)]
    _, _, link = decode_one(link_msg(UP_FLAGS, "UP", extra=counted))
    assert isinstance(link, LinkObj)
    assert link.carrier_changes == 3
    assert "carrier_changes" not in link  # not an item: not in any event's data
    _, _, without = decode_one(link_msg(UP_FLAGS, "UP"))
    assert without.carrier_changes is None

    state = State()
    assert state.apply("link", 3, link, emit=False) is None
    # only the count moved (a flap too quick for the messages between): no link.changed,
    # and the cache holds the new count
    _, _, recounted = decode_one(link_msg(UP_FLAGS, "UP", extra=[("IFLA_CARRIER_CHANGES", 5)]))
    assert state.apply("link", 3, recounted) is None
    assert state.tables["link"][3].carrier_changes == 5

    no_carrier = UP_FLAGS & ~rtnl.IFF_LOWER_UP
    lost = link_msg(no_carrier, "LOWERLAYERDOWN", extra=[("IFLA_CARRIER_CHANGES", 6)])
    change = state.apply("link", 3, decode_one(lost)[2])
    assert change is not None
    assert change.type == "link.carrier_lost"
    assert "carrier_changes" not in change.data
    event = EventFactory("/linkmond/test", "default").make(change.type, change.subject, change.data)
    validator = jsonschema.Draft202012Validator(json.loads(SCHEMA.read_text()))
    assert not list(validator.iter_errors(json.loads(event.json_line)))
    assert state.tables["link"][3].carrier_changes == 6


def test_a_truncated_carrier_count_is_a_decode_error() -> None:
    payload = struct.pack("=BxHiII", 0, 1, 3, UP_FLAGS, 0)  # struct ifinfomsg
    payload += nlattr(rtnl.IFLA_IFNAME, b"lm0\0") + nlattr(rtnl.IFLA_CARRIER_CHANGES, b"\1\0")
    with pytest.raises(DecodeError):
        decode_one(nlmsg(rtnl.RTM_NEWLINK, payload))


# -- the text the collector makes --------------------------------------------------------------


def sample_snapshot() -> Snapshot:
    counts = [0] * (len(DUMP_BUCKETS) + 1)
    counts[0], counts[5], counts[-1] = 4, 1, 1  # ≤1 ms, ≤50 ms, above every bound
    return Snapshot(
        namespaces=[
            NetnsCounts(
                netns="lab",
                events={"link.carrier_lost": 2, "daemon.started": 1},
                links=[("eth0", True, False, 7), ('we"ird\\', False, False, None)],
                overflows=1,
                decode_errors=0,
                receive_buffer=16 * 1024**2,
                dump_counts=tuple(counts),
                dump_seconds=75.5,
            )
        ],
        sinks=[
            SinkCounts("file", queued=0, delivered=3, dropped=0, failures=0, spooled=None),
            SinkCounts("oncall", queued=1, delivered=2, dropped=4, failures=5, spooled=6),
        ],
        resync_events=9,
        paused_seconds=1.25,
    )


def test_the_collector_exports_every_documented_metric_with_its_labels() -> None:
    text = render(sample_snapshot()).decode()
    found = samples(text)
    lab = {"netns": "lab"}
    assert value(found, "linkmond_events_total", type="link.carrier_lost", **lab) == 2
    assert value(found, "linkmond_link_admin_up", ifname="eth0", **lab) == 1
    assert value(found, "linkmond_link_carrier", ifname="eth0", **lab) == 0
    assert value(found, "linkmond_link_carrier_changes_total", ifname="eth0", **lab) == 7
    # a link the kernel gave no count for has no such series; label values are escaped
    assert value(found, "linkmond_link_carrier_changes_total", ifname='we"ird\\', **lab) is None
    assert value(found, "linkmond_link_admin_up", ifname='we"ird\\', **lab) == 0
    assert value(found, "linkmond_netlink_overflows_total", **lab) == 1
    assert value(found, "linkmond_decode_errors_total", **lab) == 0
    assert value(found, "linkmond_receive_buffer_bytes", **lab) == 16 * 1024**2
    assert value(found, "linkmond_resync_events_total") == 9
    assert value(found, "linkmond_reader_paused_seconds_total") == 1.25
    # the histogram's buckets are cumulative
    assert value(found, "linkmond_dump_duration_seconds_bucket", le="0.001", **lab) == 4
    assert value(found, "linkmond_dump_duration_seconds_bucket", le="0.025", **lab) == 4
    assert value(found, "linkmond_dump_duration_seconds_bucket", le="0.05", **lab) == 5
    assert value(found, "linkmond_dump_duration_seconds_bucket", le="60.0", **lab) == 5
    assert value(found, "linkmond_dump_duration_seconds_bucket", le="+Inf", **lab) == 6
    assert value(found, "linkmond_dump_duration_seconds_count", **lab) == 6
    assert value(found, "linkmond_dump_duration_seconds_sum", **lab) == 75.5
    for sink, numbers in {"file": (0, 3, 0, 0), "oncall": (1, 2, 4, 5)}.items():
        assert (
            value(found, "linkmond_sink_queue_depth", sink=sink),
            value(found, "linkmond_sink_delivered_total", sink=sink),
            value(found, "linkmond_sink_dropped_total", sink=sink),
            value(found, "linkmond_sink_failures_total", sink=sink),
        ) == numbers
    assert by_label(found, "linkmond_sink_spool_depth", "sink") == {"oncall": 6}
    kinds = {f.name: f.type for f in text_string_to_metric_families(text)}
    assert kinds["linkmond_events"] == "counter"
    assert kinds["linkmond_link_carrier"] == "gauge"
    assert kinds["linkmond_dump_duration_seconds"] == "histogram"


# -- the example alert rules ---------------------------------------------------------------------


def parse_yaml_subset(text: str) -> Any:
    """The block-style YAML the rule file is written in: mappings, ``- `` sequences, plain and
    double-quoted one-line scalars, full-line comments. Anything else is an error (PyYAML is
    not a dependency; this is enough to hold the file's structure)."""
    lines: list[tuple[int, str]] = []
    for number, raw in enumerate(text.splitlines(), 1):
        assert "\t" not in raw, f"line {number}: a tab"
        content = raw.strip()
        if content and not content.startswith("#"):
            lines.append((len(raw) - len(raw.lstrip(" ")), content))

    def scalar(text: str) -> Any:
        if text.startswith('"'):
            return json.loads(text)  # the escapes used (\") mean the same in both
        assert text[0] not in "'{[&*!|>%@`", f"unsupported scalar {text!r}"
        return text

    def block(i: int, indent: int) -> tuple[Any, int]:
        if lines[i][1].startswith("- "):
            items = []
            while i < len(lines) and lines[i][0] == indent and lines[i][1].startswith("- "):
                lines[i] = (indent + 2, lines[i][1][2:])  # "- key: v": a mapping two deeper
                item, i = block(i, indent + 2)
                items.append(item)
            return items, i
        mapping: dict[str, Any] = {}
        while i < len(lines) and lines[i][0] == indent and not lines[i][1].startswith("- "):
            key, sep, rest = lines[i][1].partition(": ")
            if not sep:
                key, sep, rest = lines[i][1].rpartition(":")
                if not sep or rest:
                    raise AssertionError(f"not a mapping entry: {lines[i][1]!r}")
            assert key not in mapping, f"duplicate key {key!r}"
            i += 1
            if rest.strip():
                mapping[key] = scalar(rest.strip())
            else:
                nested = i < len(lines) and (
                    lines[i][0] > indent or lines[i][1].startswith("- ")  # a sequence may align
                )
                if not nested:
                    raise AssertionError(f"{key}: nothing under it")
                mapping[key], i = block(i, lines[i][0])
        return mapping, i

    document, end = block(0, lines[0][0])
    assert end == len(lines), f"unparsed from {lines[end]!r}"
    return document


def test_the_example_alert_rules_are_well_formed_and_use_exported_metrics() -> None:
    rules_file = parse_yaml_subset(ALERTS.read_text())
    assert list(rules_file) == ["groups"]
    (group,) = rules_file["groups"]
    assert group["name"] == "linkmond"
    rules = {rule["alert"]: rule for rule in group["rules"]}
    families = list(text_string_to_metric_families(render(sample_snapshot()).decode()))
    exported = {f.name for f in families} | {s.name for f in families for s in f.samples}
    for name, rule in rules.items():
        assert re.fullmatch(r"[A-Z][A-Za-z]+", name)
        assert set(rule) <= {"alert", "expr", "for", "labels", "annotations"}, name
        assert rule["labels"]["severity"] in {"info", "warning", "critical"}
        assert rule["annotations"]["summary"]
        assert rule["annotations"]["description"]
        if "for" in rule:
            assert re.fullmatch(r"\d+[smh]", rule["for"])
        for metric in re.findall(r"\blinkmond_\w+", rule["expr"]):
            assert metric in exported, f"{name}: {metric} is not exported"
        assert rule["expr"].count("(") == rule["expr"].count(")")
    carrier = rules["LinkmondCarrierLost"]["expr"]
    assert "linkmond_link_carrier == 0" in carrier
    assert "linkmond_link_admin_up == 1" in carrier
    assert rules["LinkmondEventsDropped"]["expr"] == "increase(linkmond_sink_dropped_total[5m]) > 0"
