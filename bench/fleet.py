"""A fleet against one NATS server: N simulated hosts publishing through the real nats sink.

For each N in ``--hosts`` (a fresh run each): one ``nats-server -js`` (its store in a temp
directory on disk, free ports on 127.0.0.1 for clients and for its monitoring endpoint,
whose ``/varz`` counters are read) and N simulated hosts spread round-robin over
``--workers`` worker processes (this script with ``--worker``; one asyncio loop each; 4 by
default: with 2, at N = 1000, the 2 cores were not kept busy (in 10 s: 9.4 CPU-s of the
workers, 3.0 of the server; 2,770 events/s), with 4 they were (15.6 + 4.5; 4,558 events/s);
one loop alone carried 1000 hosts at 2,100 events/s, one core busy). Every host is
the sink's real code: its own ``NatsSink`` (so its own ``DurableQueue``, SQLite ``Spool``
file, ``_Publisher`` connection and ``FleetView`` connection: 2 connections per host), with
its own host name (the publisher's ``host`` and a ``FleetView(connection, host)``: the sink
itself only knows ``socket.gethostname()``) and its own ``EventFactory`` (source
``/linkmond/<host>``). At start each host syncs 8 links (lo, eno1, eno2, ens1f0, ens1f1,
bond0, br0, docker0; docker0 admin up without carrier) into the fleet view and emits a
``daemon.started``; once every host's links are in the bucket and every spool is empty
(timed: ``setup``, with the messages the server sent meanwhile), each worker freezes its
objects out of the garbage collector as the daemon does once started
(``linkmond.watcher.tune_gc``), and the load starts, for ``--seconds``.

The load is a realistic mix, bursts handed to ``NatsSink.emit`` as the daemon's fan-out hands
them (link events also to ``FleetView.link_event``, as the daemon does): half carrier flaps of
a physical NIC (``link.carrier_lost`` / ``link.carrier_up``, alternating per NIC), 30%
``addr.*`` (an IPv6 temporary address rotation on br0: ``addr.added`` of the new one,
``addr.changed`` of the previous one (deprecated), ``addr.removed`` of the one before), 20%
``route.*`` (a /24 via a gateway announced, changed or withdrawn). By default the hosts
saturate the server in a closed loop: each host emits its next burst as soon as its previous
one is acknowledged (its spool row deleted), so N hosts keep N bursts in flight. With
``--rate R`` each host instead emits R events/s on average (Poisson bursts), whatever the
acknowledgements do.

Measured per N:

- events/s: the messages the stream gained from the start of the load until every spool
  was empty again (``stream_info().state.messages``, not a counter of ours), over that time.
  Then every message is read back (an ordered consumer) and checked: each host's events,
  by their ``seq``, are all there, exactly once, in order, on subject
  ``linkmond.<host>.<type>``, with ``Nats-Msg-Id`` = the event id; and no spool
  dead-lettered or evicted anything.
- latency, two ways: put→deleted, from ``emit`` (the spool append) to the spool row's
  deletion after the PubAck (what the sink's durability costs end to end); and
  publish→PubAck, from ``publish_async`` to its acknowledgement future completing (the
  server's round trip as the client's event loop sees it). p50/p99 over the load's events.
- ``linkmond fleet status --server URL --json`` as a subprocess after the load: the median
  wall time of 3 runs, its rows (must be N x 8) and rows whose admin/carrier state differs from
  what the host last told its fleet view.
- with ``--resync``: the fleet view's full rewrite, as after a reload or a reconnection,
  by every host at once (``FleetView.reconfigure``: a new connection, list the bucket's
  keys, write its 8): the time until all are written again, and the messages the server
  sent meanwhile. Each host lists every key of the fleet, so that is N x 8N messages: 9.2
  million and ~9 minutes here for N = 1000 (the simulated hosts' CPU), hence opt-in.
- the server: RSS (VmRSS) after the setup and after the load, its peak (VmHWM), CPU seconds
  during the load, its store on disk; and the worker processes' CPU seconds (the simulated
  hosts share the same 2 cores as the server, so events/s is what this machine carries,
  server and clients together; events per server CPU-second is what the server itself
  costs).

The spools go to ``--spool-dir`` (default /dev/shm, a tmpfs): N simulated hosts on one disk
would measure that disk's fsyncs (the spool commits with ``synchronous=FULL``), where each
real host has its own. ``--spool-dir /tmp`` measures with them.

    .venv/bin/python bench/fleet.py [--hosts 10,100,1000] [--seconds 30] [--workers 4]
                                    [--rate R] [--resync] [--spool-dir DIR] [--json]

No root needed; needs ``nats-server`` (``scripts/setup test`` installs it at
/usr/sbin/nats-server). Exits 1 if any event is missing, doubled or out of order, or the
fleet view is not N x 8 rows. Temp directories, the server and the workers (by PID) are removed
/ stopped at the end, also on an error or Ctrl-C.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import math
import os
import random
import resource
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import deque
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _common import (
    CLK_TCK,
    PYTHON,
    ROOT,
    bench_parser,
    emit,
    fail,
    median,
    percentile,
    print_table,
    stop_process,
)

NATS_SERVER = shutil.which("nats-server") or "/usr/sbin/nats-server"
STREAM = "LINKMOND"
LINKS_PER_HOST = 8
#: the physical NICs whose carrier flaps (ifindex 2 to 5)
NICS = ("eno1", "eno2", "ens1f0", "ens1f1")
#: share of bursts: carrier flap, address rotation, route change (the rest)
MIX = (0.5, 0.3)


# -- one simulated host ---------------------------------------------------------------------


def host_links(i: int) -> list[dict[str, Any]]:
    """The 8 links of host ``i``, as the daemon's link table holds them."""

    def mac(n: int) -> str:
        return f"02:00:{i >> 16 & 255:02x}:{i >> 8 & 255:02x}:{i & 255:02x}:{n:02x}"

    up = ["broadcast", "multicast", "up", "lower_up"]
    links = [
        {"ifindex": 1, "ifname": "lo", "admin_up": True, "carrier": True, "operstate": "unknown",
         "flags": ["loopback", "up", "lower_up"], "mtu": 65536, "mac": "00:00:00:00:00:00",
         "kind": None, "master": None},
    ]  # fmt: skip
    for n, name in enumerate(NICS, start=2):
        links.append(
            {"ifindex": n, "ifname": name, "admin_up": True, "carrier": True, "operstate": "up",
             "flags": [*up, "slave"] if n <= 3 else up, "mtu": 9000 if n <= 3 else 1500,
             "mac": mac(n), "kind": None, "master": 6 if n <= 3 else None}
        )  # fmt: skip
    links += [
        {"ifindex": 6, "ifname": "bond0", "admin_up": True, "carrier": True, "operstate": "up",
         "flags": [*up, "master"], "mtu": 9000, "mac": mac(2), "kind": "bond", "master": 7},
        {"ifindex": 7, "ifname": "br0", "admin_up": True, "carrier": True, "operstate": "up",
         "flags": up, "mtu": 9000, "mac": mac(2), "kind": "bridge", "master": None},
        {"ifindex": 8, "ifname": "docker0", "admin_up": True, "carrier": False,
         "operstate": "down", "flags": ["broadcast", "multicast", "up"], "mtu": 1500,
         "mac": mac(8), "kind": "bridge", "master": None},
    ]  # fmt: skip
    return links


class SimHost:
    """One host: a real NatsSink under its own name, fed a realistic event mix."""

    def __init__(self, index: int, name: str, config: Any, state_dir: Path, stats: Stats) -> None:
        # linkmond.sinks.nats first: at f5d543d, importing linkmond.fleet (or .durable)
        # before linkmond.sinks failed on a circular import
        from linkmond.sinks.nats import NatsSink  # noqa: I001
        from linkmond.events import EventFactory
        from linkmond.fleet import FleetView

        self.index = index
        self.name = name
        self.stats = stats
        self.sink = NatsSink("fleet", config, state_dir)
        # the sink names itself socket.gethostname(): per simulated host, set it on the
        # publisher (the subject's {host}) and give it a fleet view of its own name
        publisher = self.sink._publisher
        publisher.host = name
        self.sink.fleet = FleetView(publisher.connection, name)
        self.factory = EventFactory(f"/linkmond/{name}", "default")
        self.links = {link["ifname"]: link for link in host_links(index)}
        self.rand = random.Random(index)
        self.temporaries: deque[str] = deque()
        self.routes: dict[str, str] = {}  # dst → gateway of the routes announced
        self.pending: deque[tuple[float, bool]] = deque()  # (put time, measured) per row
        self.acked = asyncio.Event()
        self.loop = asyncio.get_running_loop()
        self._instrument()

    def _instrument(self) -> None:
        """Time each row from put to deletion (rows are deleted in the order put: nothing is
        dead-lettered, which the result checks) and each publish to its PubAck."""
        spool = self.sink.queue.spool
        remove = spool.remove
        pending, stats = self.pending, self.stats

        def timed_remove(*seqs: int) -> None:
            remove(*seqs)
            now = time.perf_counter()
            for _ in seqs:
                t0, measured = pending.popleft()
                if measured:
                    stats.e2e.append(now - t0)
            if not pending:
                self.loop.call_soon_threadsafe(self.acked.set)

        spool.remove = timed_remove  # type: ignore[method-assign]
        publisher = self.sink._publisher
        jetstream = publisher._jetstream

        async def timed_jetstream() -> Any:
            js = await jetstream()
            if not getattr(js, "_fleet_bench", False):
                publish_async = js.publish_async

                async def timed_publish(*args: Any, **kwargs: Any) -> Any:
                    t0, measured = time.perf_counter(), stats.measuring
                    future = await publish_async(*args, **kwargs)
                    if measured:

                        def done(f: asyncio.Future[Any]) -> None:
                            if not f.cancelled() and f.exception() is None:
                                stats.ack.append(time.perf_counter() - t0)

                        future.add_done_callback(done)
                    return future

                js.publish_async = timed_publish
                js._fleet_bench = True
            return js

        publisher._jetstream = timed_jetstream  # type: ignore[method-assign]

    async def start(self) -> None:
        await self.sink.start()
        self.sink.fleet.sync(("default", dict(link)) for link in self.links.values())
        started = self.factory.make(
            "daemon.started",
            "linkmond",
            {"version": "0.1.0", "pid": 1000 + self.index, "netns": "default",
             "groups": ["link", "addr", "route", "neigh", "rule", "netconf"],
             "receive_buffer": 16777216,
             "counts": {"link": 8, "addr": 12, "route": 14, "neigh": 9, "rule": 5,
                        "netconf": 24},
             "links_with_carrier": 6},
        )  # fmt: skip
        await self.put([started])

    def fleet_clean(self) -> bool:
        """Every link this host told its fleet view has been written to the bucket."""
        view = self.sink.fleet
        return not view._full and not view._dirty

    async def put(self, events: list[Any]) -> None:
        now, measured = time.perf_counter(), self.stats.measuring
        for _ in events:
            self.pending.append((now, measured))
        self.acked.clear()
        self.stats.events += len(events)
        await self.sink.emit(events)

    # -- the event mix ------------------------------------------------------------------

    def burst(self) -> list[Any]:
        r = self.rand.random()
        if r < MIX[0]:
            return [self._flap()]
        if r < MIX[0] + MIX[1]:
            return self._addresses()
        return [self._route()]

    def _flap(self) -> Any:
        link = self.links[self.rand.choice(NICS)]
        lost = link["carrier"]
        old = (link["carrier"], link["operstate"])
        link["carrier"], link["operstate"] = (False, "down") if lost else (True, "up")
        flags = [f for f in link["flags"] if f != "lower_up"]
        link["flags"] = flags if lost else [*flags[:3], "lower_up", *flags[3:]]
        data = {
            **link,
            "changes": {"carrier": [old[0], link["carrier"]],
                        "operstate": [old[1], link["operstate"]]},
            "resync": False,
        }  # fmt: skip
        event = self.factory.make(
            "link.carrier_lost" if lost else "link.carrier_up", link["ifname"], data
        )
        self.sink.fleet.link_event(event)  # what the daemon tells its link observers
        return event

    def _addr(self, address: str, flags: list[str], changes: dict[str, Any]) -> dict[str, Any]:
        return {"ifindex": 7, "ifname": "br0", "family": "inet6", "address": address,
                "prefixlen": 64, "peer": None, "scope": "global", "label": None,
                "flags": flags, "changes": changes, "resync": False}  # fmt: skip

    def _addresses(self) -> list[Any]:
        make, events = self.factory.make, []
        iid = ":".join(f"{self.rand.getrandbits(16):x}" for _ in range(4))
        new = f"2001:db8:{self.index & 0xFFFF:x}:7:{iid}"
        events.append(make("addr.added", "br0", self._addr(new, ["temporary"], {})))
        if self.temporaries:
            prev = self.temporaries[-1]
            changes = {"flags": [["temporary"], ["temporary", "deprecated"]]}
            events.append(
                make("addr.changed", "br0", self._addr(prev, ["temporary", "deprecated"], changes))
            )
        if len(self.temporaries) >= 2:
            gone = self.temporaries.popleft()
            events.append(
                make("addr.removed", "br0", self._addr(gone, ["temporary", "deprecated"], {}))
            )
        self.temporaries.append(new)
        return events

    def _route(self) -> Any:
        dst = f"198.51.{self.rand.randrange(100, 104)}.0/24"
        gateways = ("192.0.2.1", "192.0.2.2")
        old = self.routes.get(dst)
        if old is None:
            kind, gateway, changes = "route.added", self.rand.choice(gateways), {}
            self.routes[dst] = gateway
        elif self.rand.random() < 0.5:
            gateway = gateways[old == gateways[0]]
            kind, changes = "route.changed", {"gateway": [old, gateway]}
            self.routes[dst] = gateway
        else:
            kind, gateway, changes = "route.removed", old, {}
            del self.routes[dst]
        data = {"family": "inet", "dst": dst, "src": None, "gateway": gateway, "ifindex": 6,
                "table": "main", "protocol": "bgp", "scope": "global", "type": "unicast",
                "metric": 20, "prefsrc": None, "tos": 0, "nexthops": None, "ifname": "bond0",
                "changes": changes, "resync": False}  # fmt: skip
        return self.factory.make(kind, dst, data)

    # -- load ---------------------------------------------------------------------------

    async def saturate(self, until: float) -> None:
        """Closed loop: the next burst once the previous one is acknowledged."""
        while time.monotonic() < until:
            await self.put(self.burst())
            await self.acked.wait()

    async def offer(self, until: float, rate: float) -> None:
        """Open loop: Poisson bursts averaging ``rate`` events/s."""
        mean_burst = MIX[0] * 1 + MIX[1] * 2.9 + (1 - MIX[0] - MIX[1]) * 1
        gap = self.rand.random() * mean_burst / rate  # spread the starts
        while (left := until - time.monotonic()) > 0:
            if gap >= left:
                await asyncio.sleep(left)
                break
            await asyncio.sleep(gap)
            await self.put(self.burst())
            gap = self.rand.expovariate(rate / mean_burst)


class Stats:
    """What one worker measures (latencies in seconds)."""

    def __init__(self) -> None:
        #: the load has begun: what is put or published from now on is measured
        self.measuring = False
        self.events = 0
        self.e2e: list[float] = []
        self.ack: list[float] = []


# -- the worker process ---------------------------------------------------------------------


def cpu_self() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> float:
    t0 = time.monotonic()
    while not predicate():
        if time.monotonic() - t0 > timeout:
            raise RuntimeError(f"{what}: not within {timeout:g} s")
        await asyncio.sleep(0.05)
    return time.monotonic() - t0


def say(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


async def worker(spec: dict[str, Any]) -> None:
    """Run the hosts of ``spec``; say ``ready``, wait for ``go`` on stdin, load, say the
    result. stdin closing (the parent gone) ends it."""
    from linkmond import logs
    from linkmond.config import NatsSinkConfig
    from linkmond.watcher import tune_gc

    logs.configure("warning", "json")
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    config = NatsSinkConfig(type="nats", servers=[spec["url"]], batch=spec["batch"])
    stats = Stats()
    t0 = time.monotonic()
    hosts = [
        SimHost(i, name, config, Path(spec["spool_root"]) / name, stats)
        for i, name in spec["hosts"]
    ]
    await asyncio.gather(*(h.start() for h in hosts))
    published = await wait_until(
        lambda: all(not h.pending for h in hosts),
        spec["setup_timeout"],
        "every host's daemon.started acknowledged",
    )
    written = await wait_until(
        lambda: all(h.fleet_clean() for h in hosts),
        spec["setup_timeout"],
        "every host's links in the fleet view",
    )
    tune_gc()  # what each daemon does once started (here: N hosts' objects frozen at once)
    say(
        {
            "ready": True,
            "setup_s": round(time.monotonic() - t0, 3),
            "started_s": round(published, 3),
            "fleet_s": round(published + written, 3),
        }
    )
    if (await reader.readline()).strip() != b"go":
        os._exit(3)  # the parent is gone (see below)
    gone: asyncio.Future[Any] = asyncio.ensure_future(reader.readline())  # b"": parent gone
    stats.measuring = True
    t_go, cpu0 = time.time(), cpu_self()
    until = time.monotonic() + spec["seconds"]
    rate = spec["rate"]
    load: asyncio.Future[Any] = asyncio.gather(
        *(h.offer(until, rate) if rate else h.saturate(until) for h in hosts)
    )
    done, _ = await asyncio.wait([load, gone], return_when=asyncio.FIRST_COMPLETED)
    if gone in done:
        # the parent is gone: leave at once. Cancelling a busy nats sink may not stop it
        # (nats-py swallows a cancellation inside publish_async, and the queue goes on),
        # and the parent removes the spools.
        os._exit(3)
    drain_s = await wait_until(
        lambda: all(not h.pending for h in hosts), spec["drain_timeout"], "spools drained"
    )
    t_drained, cpu = time.time(), cpu_self() - cpu0
    await wait_until(lambda: all(h.fleet_clean() for h in hosts), 60, "fleet views written")
    dead = sum(h.sink.queue.spool.dead_lettered for h in hosts)
    evicted = sum(h.sink.queue.spool.evicted for h in hosts)
    say(
        {
            "t_go": t_go,
            "t_drained": t_drained,
            "drain_s": round(drain_s, 3),
            "cpu_s": round(cpu, 3),
            "events": stats.events,
            "dead_lettered": dead,
            "evicted": evicted,
            "e2e_ms": [round(x * 1000, 3) for x in stats.e2e],
            "ack_ms": [round(x * 1000, 3) for x in stats.ack],
            "hosts": {
                h.name: {
                    "events": h.factory.seq,
                    "links": {n: [lk["admin_up"], lk["carrier"]] for n, lk in h.links.items()},
                }
                for h in hosts
            },
        }
    )
    if (await gone).strip() == b"resync":
        # what a reload, or (with a reconnected_cb) a server restart, makes every host do
        t1 = time.monotonic()
        for h in hosts:
            h.sink.fleet.reconfigure(h.sink._publisher.connection)
        await wait_until(lambda: all(h.fleet_clean() for h in hosts), 600, "fleet views resynced")
        say({"resync_s": round(time.monotonic() - t1, 3)})
        await reader.readline()  # EOF: the parent is done
    await asyncio.gather(*(h.sink.aclose() for h in hosts))


# -- the server and the parent --------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """``nats-server -js`` on a free port with its store in ``store``; stopped by PID."""

    def __init__(self, store: Path) -> None:
        self.store = store
        self.port = free_port()
        self.monitor_port = free_port()
        self.url = f"nats://127.0.0.1:{self.port}"
        self.log = store.parent / "nats-server.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 15) -> Server:
        cmd = [NATS_SERVER, "-js", "-sd", str(self.store), "-a", "127.0.0.1",
               "-p", str(self.port), "-m", str(self.monitor_port)]  # fmt: skip
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=log)
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"nats-server exited {self.proc.returncode}: {self.tail()}")
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), timeout=1) as s,
            ):
                if s.recv(4096).startswith(b"INFO ") and self._jetstream_ready():
                    return self
            if time.monotonic() > deadline:
                raise RuntimeError(f"nats-server not ready within {timeout} s: {self.tail()}")
            time.sleep(0.05)

    def _jetstream_ready(self) -> bool:
        return b"Server is ready" in self.log.read_bytes()

    def tail(self) -> str:
        try:
            return self.log.read_text(errors="replace")[-2000:]
        except FileNotFoundError:
            return ""

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)

    def cpu_seconds(self) -> float:
        assert self.proc is not None
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK

    def memory_mib(self) -> tuple[float, float]:
        """(VmRSS, VmHWM) in MiB."""
        assert self.proc is not None
        values = {}
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                values[key] = int(rest.split()[0]) / 1024
        return values.get("VmRSS", float("nan")), values.get("VmHWM", float("nan"))

    def varz(self) -> dict[str, Any]:
        """The server's own counters (its monitoring endpoint, on 127.0.0.1)."""
        url = f"http://127.0.0.1:{self.monitor_port}/varz"
        with urllib.request.urlopen(url, timeout=10) as response:
            varz: dict[str, Any] = json.load(response)
        return varz

    def store_mib(self) -> float:
        total = sum(p.stat().st_size for p in self.store.rglob("*") if p.is_file())
        return total / 1024**2


async def _messages(url: str) -> int:
    import nats
    import nats.js.errors

    nc = await nats.connect(url, connect_timeout=5, allow_reconnect=False)
    try:
        try:
            info = await nc.jetstream().stream_info(STREAM)
        except nats.js.errors.NotFoundError:
            return 0
        return int(info.state.messages)
    finally:
        await nc.close()


def stream_messages(url: str) -> int:
    """``stream_info().state.messages`` of the stream, from a connection of its own."""
    return asyncio.run(_messages(url))


async def _audit(url: str, expected: dict[str, int], timeout: float) -> dict[str, Any]:
    """Read the whole stream back and check every host's events: by ``seq`` (1 to the
    host's count), each once, in order, on its subject, with its id as ``Nats-Msg-Id``."""
    import nats
    import orjson
    from nats.js.api import ConsumerConfig, DeliverPolicy

    nc = await nats.connect(url, connect_timeout=5, allow_reconnect=False)
    seqs: dict[str, list[int]] = {host: [] for host in expected}
    audit = {"read": 0, "bad_subject": 0, "bad_id": 0, "foreign": 0}
    try:
        js = nc.jetstream()
        total = (await js.stream_info(STREAM)).state.messages
        sub = await js.subscribe(
            "linkmond.>",
            stream=STREAM,
            ordered_consumer=True,
            config=ConsumerConfig(deliver_policy=DeliverPolicy.ALL),
            pending_msgs_limit=-1,
            pending_bytes_limit=-1,
        )
        while audit["read"] < total:
            msg = await sub.next_msg(timeout)
            audit["read"] += 1
            event = orjson.loads(msg.data)
            host = event["source"].rpartition("/")[2]
            if host not in seqs:
                audit["foreign"] += 1
                continue
            if msg.subject != f"linkmond.{host}.{event['type']}":
                audit["bad_subject"] += 1
            if (msg.headers or {}).get("Nats-Msg-Id") != event["id"]:
                audit["bad_id"] += 1
            seqs[host].append(event["seq"])
        await sub.unsubscribe()
    finally:
        await nc.close()
    missing = duplicates = out_of_order = 0
    for host, got in seqs.items():
        unique = set(got)
        duplicates += len(got) - len(unique)
        missing += len(set(range(1, expected[host] + 1)) - unique)
        out_of_order += sum(1 for a, b in itertools.pairwise(got) if b <= a)
    return {**audit, "missing": missing, "duplicates": duplicates, "out_of_order": out_of_order}


def fleet_status(url: str, expected: dict[str, dict[str, list[bool]]]) -> dict[str, Any]:
    """``linkmond fleet status --json`` 3 times: median wall seconds, rows, mismatches."""
    times, rows = [], []
    for _ in range(3):
        t0 = time.perf_counter()
        proc = subprocess.run(
            [PYTHON, "-m", "linkmond", "fleet", "status", "--server", url, "--json"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        times.append(time.perf_counter() - t0)
        if proc.returncode:
            raise RuntimeError(f"linkmond fleet status exited {proc.returncode}: {proc.stderr}")
        rows = json.loads(proc.stdout)
    wrong = 0
    for row in rows:
        want = expected.get(row.get("host", ""), {}).get(row.get("ifname", ""))
        if want is None or want != [row.get("admin_up"), row.get("carrier")]:
            wrong += 1
    down = sum(1 for r in rows if r.get("admin_up") and not r.get("carrier"))
    return {
        "status_s": round(median(times), 3),
        "status_runs_s": [round(t, 3) for t in times],
        "rows": len(rows),
        "rows_down": down,
        "rows_wrong": wrong,
        "hosts_seen": len({r.get("host") for r in rows}),
    }


class Workers:
    """The worker processes of one run (each a subprocess with pipes); stopped by PID."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[str]] = []
        self.errs: list[Path] = []

    def spawn(self, spec: dict[str, Any], work: Path) -> None:
        n = len(self.procs)
        err = work / f"worker{n}.stderr"
        (work / f"worker{n}.json").write_text(json.dumps(spec))
        self.errs.append(err)
        with err.open("wb") as stderr:
            self.procs.append(
                subprocess.Popen(
                    [PYTHON, __file__, "--worker", str(work / f"worker{n}.json")],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    stderr=stderr,
                    text=True,
                    cwd=ROOT,
                )
            )

    def stderr(self) -> str:
        return "\n".join(e.read_text(errors="replace")[-1500:] for e in self.errs if e.exists())

    def read_all(self, timeout: float, what: str) -> list[dict[str, Any]]:
        """One JSON line from every worker, within ``timeout`` s in all."""
        deadline = time.monotonic() + timeout
        out = []
        for proc in self.procs:
            assert proc.stdout is not None
            with selectors.DefaultSelector() as sel:
                sel.register(proc.stdout, selectors.EVENT_READ)
                if not sel.select(max(0.0, deadline - time.monotonic())):
                    raise RuntimeError(f"no {what} from worker {proc.pid}: {self.stderr()}")
            line = proc.stdout.readline()
            if not line:
                raise RuntimeError(f"worker {proc.pid} exited ({what}): {self.stderr()}")
            out.append(json.loads(line))
        return out

    def send(self, line: str) -> None:
        for proc in self.procs:
            assert proc.stdin is not None
            proc.stdin.write(line + "\n")
            proc.stdin.flush()

    def stop(self) -> list[int | None]:
        """Close every worker's stdin (a worker leaves on EOF), wait up to 10 s in all, then
        SIGTERM (SIGKILL) whichever is left, by PID."""
        for proc in self.procs:
            with contextlib.suppress(OSError):
                if proc.stdin is not None:
                    proc.stdin.close()
        deadline = time.monotonic() + 10
        for proc in self.procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(max(0.0, deadline - time.monotonic()))
            stop_process(proc, timeout=5)
        return [proc.returncode for proc in self.procs]


def run_n(n: int, args: Any) -> dict[str, Any]:
    names = [(i, f"h{i:04d}") for i in range(1, n + 1)]
    workers_n = max(1, min(args.workers, n))
    with contextlib.ExitStack() as stack:
        work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="lmbench-fleet-")))
        spools = Path(
            stack.enter_context(
                tempfile.TemporaryDirectory(prefix="lmbench-fleet-spool-", dir=args.spool_dir)
            )
        )
        (work / "store").mkdir()
        server = Server(work / "store")
        stack.callback(server.stop)
        server.start()
        v_start = server.varz()
        workers = Workers()
        stack.callback(workers.stop)
        t_setup = time.monotonic()
        for w in range(workers_n):
            spec = {
                "url": server.url,
                "hosts": names[w::workers_n],
                "seconds": args.seconds,
                "rate": args.rate,
                "batch": args.batch,
                "spool_root": str(spools),
                "setup_timeout": args.setup_timeout,
                "drain_timeout": args.drain_timeout,
            }
            workers.spawn(spec, work)
        ready = workers.read_all(args.setup_timeout + 60, "ready")
        setup_s = time.monotonic() - t_setup
        v_ready = server.varz()  # before our own connection to read the stream
        m0, cpu0 = stream_messages(server.url), server.cpu_seconds()
        rss_ready = server.memory_mib()[0]
        t_go = time.time()
        workers.send("go")
        samples = [(0.0, m0)]
        while time.time() - t_go < args.seconds:
            time.sleep(min(1.0, max(0.0, args.seconds - (time.time() - t_go))))
            samples.append((time.time() - t_go, stream_messages(server.url)))
        results = workers.read_all(args.drain_timeout + 120, "result")
        t_drained = max(r["t_drained"] for r in results)
        server_cpu = server.cpu_seconds() - cpu0
        m1, v_end = stream_messages(server.url), server.varz()
        rss, hwm = server.memory_mib()
        store = server.store_mib()
        expected = {h: v["events"] for r in results for h, v in r["hosts"].items()}
        audit = asyncio.run(_audit(server.url, expected, 30))
        links = {h: v["links"] for r in results for h, v in r["hosts"].items()}
        status = fleet_status(server.url, links)
        resync = {"resync_s": float("nan"), "resync_server_msgs_out": None}
        if args.resync:
            v_resync = server.varz()
            workers.send("resync")
            took = max(r["resync_s"] for r in workers.read_all(660, "resync"))
            resync = {
                "resync_s": took,
                "resync_server_msgs_out": server.varz()["out_msgs"] - v_resync["out_msgs"],
                "server_peak_rss_after_resync_mib": round(server.memory_mib()[1], 1),
            }
        codes = workers.stop()
    elapsed = t_drained - t_go
    load = m1 - m0
    e2e = [x for r in results for x in r["e2e_ms"]]
    ack = [x for r in results for x in r["ack_ms"]]
    # the steady rate: between the first sample after 1 s and the last one of the load
    steady = [s for s in samples if s[0] >= 1.0]
    steady_rate = (
        (steady[-1][1] - steady[0][1]) / (steady[-1][0] - steady[0][0])
        if len(steady) >= 2 and steady[-1][0] > steady[0][0]
        else float("nan")
    )
    generated = sum(r["events"] for r in results)
    return {
        "hosts": n,
        "links": n * LINKS_PER_HOST,
        "workers": workers_n,
        "setup_s": round(setup_s, 2),
        "setup_worker_s": max(r["setup_s"] for r in ready),
        "setup_started_s": max(r["started_s"] for r in ready),
        "setup_fleet_s": max(r["fleet_s"] for r in ready),
        "setup_server_msgs_in": v_ready["in_msgs"] - v_start["in_msgs"],
        "setup_server_msgs_out": v_ready["out_msgs"] - v_start["out_msgs"],
        "load_server_msgs_in": v_end["in_msgs"] - v_ready["in_msgs"],
        "load_server_msgs_out": v_end["out_msgs"] - v_ready["out_msgs"],
        "connections": v_ready["connections"],
        "slow_consumers": v_end["slow_consumers"],
        "load_s": round(elapsed, 3),
        "drain_s": max(r["drain_s"] for r in results),
        "events": load,
        "events_generated": generated - n,  # each host's daemon.started came before
        "stream_messages": m1,
        "events_per_s": round(load / elapsed) if elapsed > 0 else 0,
        "steady_events_per_s": steady_rate if math.isnan(steady_rate) else round(steady_rate),
        "e2e_p50_ms": round(percentile(e2e, 50), 2),
        "e2e_p99_ms": round(percentile(e2e, 99), 2),
        "ack_p50_ms": round(percentile(ack, 50), 2),
        "ack_p99_ms": round(percentile(ack, 99), 2),
        "latency_samples": len(e2e),
        "ack_samples": len(ack),
        "server_rss_ready_mib": round(rss_ready, 1),
        "server_rss_mib": round(rss, 1),
        "server_peak_rss_mib": round(hwm, 1),
        "server_cpu_s": round(server_cpu, 2),
        "events_per_server_cpu_s": round(load / server_cpu) if server_cpu > 0 else 0,
        "clients_cpu_s": round(sum(r["cpu_s"] for r in results), 2),
        "store_mib": round(store, 1),
        "dead_lettered": sum(r["dead_lettered"] for r in results),
        "evicted": sum(r["evicted"] for r in results),
        "audit": audit,
        **status,
        **resync,
        "worker_exit": codes,
    }


def problems(r: dict[str, Any]) -> list[str]:
    """What makes a run wrong (exit status 1)."""
    a, out = r["audit"], []
    if r["stream_messages"] != r["events_generated"] + r["hosts"]:
        out.append(
            f"{r['stream_messages']} messages in the stream, {r['events_generated'] + r['hosts']}"
            " events emitted"
        )
    for key in ("missing", "duplicates", "out_of_order", "bad_subject", "bad_id", "foreign"):
        if a[key]:
            out.append(f"read back: {a[key]} {key.replace('_', ' ')}")
    if r["dead_lettered"] or r["evicted"]:
        out.append(f"{r['dead_lettered']} dead-lettered, {r['evicted']} evicted")
    if r["rows"] != r["links"]:
        out.append(f"fleet status printed {r['rows']} rows, not {r['links']}")
    if r["rows_wrong"]:
        out.append(f"{r['rows_wrong']} fleet status rows differ from the hosts' last state")
    if any(r["worker_exit"]):
        out.append(f"worker exit codes {r['worker_exit']}")
    return out


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")  # unwinds through every cleanup


def main() -> int:
    if len(sys.argv) == 3 and sys.argv[1] == "--worker":
        asyncio.run(worker(json.loads(Path(sys.argv[2]).read_text())))
        return 0
    parser = bench_parser(__doc__)
    parser.add_argument("--hosts", default="10,100,1000", help="comma-separated N values")
    parser.add_argument("--seconds", type=float, default=30.0, help="load per N (default 30)")
    parser.add_argument(
        "--rate", type=float, default=0.0, help="events/s per host (default 0: saturate)"
    )
    parser.add_argument("--workers", type=int, default=4, help="worker processes (default 4)")
    parser.add_argument("--batch", type=int, default=256, help="the sink's batch (default 256)")
    parser.add_argument(
        "--spool-dir",
        default="/dev/shm" if os.path.isdir("/dev/shm") else None,
        help="where the hosts' spools go (default /dev/shm)",
    )
    parser.add_argument(
        "--resync", action="store_true", help="time every host's fleet view rewrite at once"
    )
    parser.add_argument("--setup-timeout", type=float, default=120.0, help="seconds")
    parser.add_argument("--drain-timeout", type=float, default=120.0, help="seconds")
    args = parser.parse_args()
    host_values = [int(n) for n in args.hosts.split(",")]
    if min(host_values) < 1 or args.seconds <= 0 or args.workers < 1 or args.rate < 0:
        parser.error("N >= 1, --seconds > 0, --workers >= 1, --rate >= 0")
    if not os.access(NATS_SERVER, os.X_OK):
        return fail(RuntimeError(f"{NATS_SERVER} not found (scripts/setup test installs it)"))
    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGHUP, _terminate)
    results = []
    try:
        for n in host_values:
            results.append(run_n(n, args))
    except (RuntimeError, OSError, subprocess.SubprocessError, TimeoutError) as exc:
        return fail(exc)
    except KeyboardInterrupt:
        print("interrupted (everything made was removed)", file=sys.stderr)
        return 130
    for r in results:
        r["problems"] = problems(r)

    def table() -> None:
        load = f"{args.rate:g} events/s per host" if args.rate else "saturating (closed loop)"
        print(
            f"fleet: N hosts x {LINKS_PER_HOST} links, each a real nats sink (own spool, own "
            f"connections), {load}, {args.seconds:g} s, one nats-server"
        )
        print_table(
            ["N", "events", "ev/s", "steady ev/s", "put->deleted p50 ms", "p99",
             "publish->PubAck p50 ms", "p99"],
            [[r["hosts"], r["events"], r["events_per_s"], r["steady_events_per_s"],
              r["e2e_p50_ms"], r["e2e_p99_ms"], r["ack_p50_ms"], r["ack_p99_ms"]]
             for r in results],
        )  # fmt: skip
        print()
        print_table(
            ["N", "fleet status s", "rows", "conns", "server RSS MiB", "peak", "server CPU s",
             "ev/server CPU s", "clients CPU s", "setup s", "msgs out", "resync s",
             "msgs out"],
            [[r["hosts"], r["status_s"], r["rows"], r["connections"], r["server_rss_mib"],
              r["server_peak_rss_mib"], r["server_cpu_s"], r["events_per_server_cpu_s"],
              r["clients_cpu_s"], r["setup_s"], r["setup_server_msgs_out"], r["resync_s"],
              r["resync_server_msgs_out"] or "-"]
             for r in results],
        )  # fmt: skip
        for r in results:
            a = r["audit"]
            print(
                f"N={r['hosts']}: {r['stream_messages']} messages in the stream "
                f"({r['hosts']} daemon.started + {r['events_generated']} load events), read "
                f"back: {a['missing']} missing, {a['duplicates']} duplicates, "
                f"{a['out_of_order']} out of order; {r['workers']} workers, drain "
                f"{r['drain_s']} s, store {r['store_mib']} MiB"
            )
            for problem in r["problems"]:
                print(f"N={r['hosts']}: PROBLEM: {problem}")

    emit(args, {"args": {k: v for k, v in vars(args).items() if k != "json"},
                "results": results}, table)  # fmt: skip
    return 1 if any(r["problems"] for r in results) else 0


if __name__ == "__main__":
    raise SystemExit(main())
