"""Many network namespaces, as a user sees it: ``[monitor] netns = "all"`` with N of them.

For each N in ``--namespaces`` (a fresh run each): the real daemon (``python -m linkmond
run``) runs in a fresh namespace ``lmbench-<uuid>`` on a copy of the shipped
``config/linkmond.toml`` with ``netns = "all"`` (its file sink in a temp dir), and N more
namespaces ``lmbench-<uuid>`` each hold a veth pair c0/c1, both up. They are made before the
daemon starts, by two ``ip -batch`` runs (``netns add``, then ``link add c0 netns NS type veth
peer name c1 netns NS``) and SIOCSIFFLAGS from inside each to bring the ends up; that setup is
timed apart and counted in nothing else. Three things are measured, each read from the
daemon's events file as a user would read it:

1. Start: from spawning the daemon to the moment the file holds a ``daemon.started`` for each
   of the N+1 namespaces (polled every 5 ms). At that moment: the daemon's peak RSS (VmHWM)
   and its CPU seconds (utime+stime, all threads); memory per namespace is the peak RSS with
   N minus that with the smallest N, divided by the difference in N.
2. Follow: ``--follows`` times, ``ip netns add X`` (then a veth pair in X, made by one more
   ``ip link add`` right after), timed from ``ip netns add`` returning to ``daemon.started``
   with netns X in the file; then ``ip netns del X``, timed from its return to
   ``daemon.stopping`` with netns X (reason ``netns removed`` is checked) in the file.
3. Carrier: ``--flips`` down+up cycles, flip k in the (k mod N)-th namespace: IFF_UP of c1
   cleared and set by SIOCSIFFLAGS on a socket made inside that namespace (bench/flip.py's
   code), and the latency from just before the ioctl to reading c0's ``link.carrier_lost`` /
   ``link.carrier_up`` with that netns from the file (tailed with inotify). The anchor is
   ``ip -o -ts monitor link`` (``ip -n NS``) running in the namespace flipped, one per
   namespace flipped, timed the same way to its line for c0 with the new carrier state: each
   flip is measured against a listener of its own namespace, as a per-namespace tool would
   watch it, so the ratio shows what watching N namespaces from one process costs (with N
   large each anchor wakes only for its own few flips, so its latency grows with N: compare
   linkmond's own p50 across N too). Reported: p50/p99/max for both and the ratios
   linkmond/anchor.

Events that never arrived (within ``--timeout`` each) are reported; so are namespaces the
daemon watched that this script did not make (``"all"`` takes every name in /run/netns: on a
shared machine someone else's namespaces are in no figure, but the daemon works for them too).
Before the follows the script waits until the daemon is idle (the first save of every fresh
cache, right after the start): the time that took and the CPU seconds by then are reported.

    sudo .venv/bin/python bench/netns.py --namespaces 1,10,100 --follows 20 --flips 200 [--json]

Needs root. Exits 1 if any event did not arrive. Every namespace and process it made is
removed/stopped at the end, also on an error or Ctrl-C (processes only by their PID).
"""

from __future__ import annotations

import contextlib
import json
import operator
import os
import re
import select
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterable
from functools import partial
from pathlib import Path
from types import FrameType
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (
    CLK_TCK,
    PYTHON,
    Daemon,
    NetNS,
    Tail,
    bench_parser,
    emit,
    fail,
    percentile,
    print_table,
    require_root,
    stop_process,
)
from flip import (
    LineReader,
    first_seen,
    inotify_modify,
    monitor_state,
    set_up,
    socket_in,
    wait_monitor_ready,
)

#: the lines of the events file this script looks at (everything else is skipped unparsed)
TOKENS = (b'"daemon.started"', b'"daemon.stopping"', b'"link.carrier_')
CARRIER = {"link.carrier_up": True, "link.carrier_lost": False}


def ns_named(name: str) -> NetNS:
    ns = NetNS()
    ns.name = name
    return ns


def run_batch(lines: Iterable[str], force: bool = False) -> float:
    """``ip [-force] -batch -`` of ``lines`` (in this script's namespace); wall seconds."""
    t0 = time.perf_counter()
    proc = subprocess.run(
        ["ip", *(["-force"] if force else []), "-batch", "-"],
        input="".join(f"{line}\n" for line in lines),
        capture_output=True,
        text=True,
        check=False,
    )
    elapsed = time.perf_counter() - t0
    if proc.returncode and not force:
        raise RuntimeError(f"ip -batch: {proc.stderr.strip()[-2000:]}")
    return elapsed


def delete_namespaces(names: Iterable[str]) -> None:
    """``ip netns del`` each (one ``ip -force -batch``; names already gone are no error)."""
    names = list(names)
    if names:
        run_batch((f"netns del {n}" for n in names), force=True)


def make_namespaces(names: list[str]) -> float:
    """The namespaces, each with lo and a veth pair c0/c1 up; the wall seconds it took."""
    t0 = time.perf_counter()
    run_batch(f"netns add {n}" for n in names)
    run_batch(f"link add c0 netns {n} type veth peer name c1 netns {n}" for n in names)
    for name in names:  # `ip link add ... up` on a veth in another namespace: ENOTCONN
        with contextlib.closing(socket_in(ns_named(name))) as sock:
            for ifname in ("lo", "c1", "c0"):
                set_up(sock, ifname, True)
    return time.perf_counter() - t0


def config_all(path: Path) -> None:
    """Set ``[monitor] netns = "all"`` in the copy of the shipped config at ``path``."""
    text = path.read_text()
    line = 'netns = "all"                   # bench/netns.py'
    text, n = re.subn(r"(?m)^netns\s*=.*$", line, text, count=1)
    if not n:
        text, n = re.subn(r"(?m)^\[monitor\]\s*$", f"[monitor]\n{line}", text, count=1)
    if not n:
        raise RuntimeError(f"no [monitor] table in {path}")
    path.write_text(text)


class Events:
    """The daemon's events file as this script reads it: the first ``daemon.started`` and
    ``daemon.stopping`` of each netns (when read, and the stopping reason), and carrier
    events as they come."""

    def __init__(self, path: Path, daemon: Daemon) -> None:
        self.path = path
        self.daemon = daemon
        self.tail = Tail(path)
        self.ifd = -1
        self.started: dict[str, int] = {}  # netns -> time.time_ns() it was read
        self.started_count: Counter[str] = Counter()
        self.stopping: dict[str, tuple[int, str]] = {}  # netns -> (time read, reason)

    def read(self, now: int) -> list[tuple[str, str, bool]]:
        """Take in the new lines (read at ``now``); the carrier events among them, as
        (netns, interface, carrier)."""
        carrier = []
        for line in self.tail.lines():
            if not any(token in line for token in TOKENS):
                continue
            try:
                event = json.loads(line)
            except ValueError:
                continue
            etype, netns = event.get("type"), event.get("netns")
            if etype == "daemon.started":
                self.started.setdefault(netns, now)
                self.started_count[netns] += 1
            elif etype == "daemon.stopping":
                reason = (event.get("data") or {}).get("reason", "")
                self.stopping.setdefault(netns, (now, reason))
            elif etype in CARRIER:
                carrier.append((netns, event.get("subject"), CARRIER[etype]))
        return carrier

    def follow(self) -> None:
        """From now on wake up on inotify (the file exists once the daemon has started)."""
        self.ifd = inotify_modify(self.path)

    def drain(self) -> None:
        with contextlib.suppress(BlockingIOError):
            while os.read(self.ifd, 4096):
                pass

    def wait(self, done: Callable[[], bool], timeout: float) -> bool:
        """Read the file as it grows until ``done()``; False after ``timeout`` s."""
        deadline = time.monotonic() + timeout
        now = time.time_ns()
        while True:
            self.drain()
            self.read(now)
            if done():
                return True
            self.daemon.check_alive()
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            select.select([self.ifd], [], [], min(left, 0.5))
            now = time.time_ns()

    def close(self) -> None:
        if self.ifd >= 0:
            os.close(self.ifd)
            self.ifd = -1
        self.tail.close()


def spawn(daemon: Daemon) -> None:
    """Start the daemon as ``Daemon.start`` does, without waiting for anything."""
    cmd = daemon.ns.argv(PYTHON, "-m", "linkmond", "run", "-c", str(daemon.config))
    with daemon.stderr_path.open("wb") as err:
        daemon.proc = subprocess.Popen(
            cmd, cwd=daemon.workdir, stdout=subprocess.DEVNULL, stderr=err
        )


def settle(daemon: Daemon, window: float = 0.5, limit: float = 60.0) -> tuple[float, float]:
    """Wait until the daemon is idle (at most one clock tick of CPU in ``window`` s: the
    saves of every fresh cache right after the start are done); the seconds that took (to
    the start of the quiet window) and its CPU seconds by then."""
    t0 = time.monotonic()
    prev, since = daemon.cpu_seconds(), t0
    while time.monotonic() - t0 < limit:
        time.sleep(window)
        cpu = daemon.cpu_seconds()
        if cpu - prev <= 1.5 / CLK_TCK:
            return since - t0, cpu
        prev, since = cpu, time.monotonic()
    raise RuntimeError(f"the daemon was still busy {limit:g} s after its start")


def stats(values: list[float]) -> dict[str, float]:
    return {
        "n": len(values),
        "p50_ms": round(percentile(values, 50), 3),
        "p99_ms": round(percentile(values, 99), 3),
        "max_ms": round(max(values, default=float("nan")), 3),
    }


def ms(t: int, t0: int) -> float:
    return (t - t0) / 1e6


class Run:
    """One N: the namespaces, the daemon, the anchors; :meth:`close` removes them all."""

    def __init__(self, n: int, work: Path) -> None:
        self.n = n
        self.work = work
        self.made: list[str] = []  # every namespace this run made (or tried to make)
        self.home: NetNS | None = None
        self.daemon: Daemon | None = None
        self.events: Events | None = None
        self.anchors: dict[str, tuple[subprocess.Popen[bytes], LineReader]] = {}
        self.sockets: dict[str, socket.socket] = {}
        self.missed: Counter[str] = Counter()
        self.result: dict[str, Any] = {"namespaces": n}

    def close(self) -> None:
        for sock in self.sockets.values():
            sock.close()
        for proc, _reader in self.anchors.values():
            stop_process(proc, timeout=5)
        if self.events is not None:
            self.events.close()
        if self.daemon is not None:
            self.result["daemon_exit"] = self.daemon.stop()
        delete_namespaces(self.made)

    # -- 1. start ------------------------------------------------------------------------

    def start(self, timeout: float) -> None:
        home = NetNS()
        self.made.append(home.name)
        extras = [NetNS().name for _ in range(self.n)]
        self.made.extend(extras)
        self.extras = extras
        home.__enter__()
        self.home = home
        setup_s = make_namespaces(extras)
        daemon = Daemon(home, self.work)
        config_all(daemon.config)
        self.daemon = daemon
        events = self.events = Events(daemon.events_path, daemon)
        wanted = {home.name, *extras}
        t0 = time.time_ns()
        spawn(daemon)
        deadline = time.monotonic() + timeout
        while not wanted <= events.started.keys():
            daemon.check_alive()
            if time.monotonic() > deadline:
                break
            time.sleep(0.005)
            events.read(time.time_ns())
        cpu, rss = daemon.cpu_seconds(), daemon.peak_rss_mib()
        cmdline = Path(f"/proc/{daemon.pid}/cmdline").read_bytes().split(b"\0")
        if b"linkmond" not in cmdline or b"run" not in cmdline:
            raise RuntimeError(f"PID {daemon.pid} is not the daemon: {cmdline!r}")
        got = wanted & events.started.keys()
        self.missed["daemon.started at start"] = len(wanted) - len(got)
        settle_s, settled_cpu = settle(daemon)
        self.result.update(
            {
                "setup_s": round(setup_s, 3),
                "start_s": round(ms(max(events.started[x] for x in got), t0) / 1e3, 3)
                if got
                else float("nan"),
                "started": len(got),
                "peak_rss_mib": round(rss, 1),
                "cpu_s": round(cpu, 2),
                "settle_s": round(settle_s, 2),
                "settled_cpu_s": round(settled_cpu, 2),
            }
        )
        events.follow()

    # -- 2. follow -----------------------------------------------------------------------

    def follow(self, count: int, timeout: float) -> None:
        events = self.events
        assert events is not None
        added: list[float] = []
        removed: list[float] = []
        wrong_reason = 0
        for _ in range(count):
            name = NetNS().name
            self.made.append(name)
            subprocess.run(["ip", "netns", "add", name], check=True)
            t_add = time.time_ns()
            subprocess.run(
                ["ip", "link", "add", "c0", "netns", name, "type", "veth",
                 "peer", "name", "c1", "netns", name],
                check=True,
            )  # fmt: skip
            if events.wait(partial(operator.contains, events.started, name), timeout):
                added.append(ms(events.started[name], t_add))
            else:
                self.missed["daemon.started after ip netns add"] += 1
            subprocess.run(["ip", "netns", "del", name], check=True)
            t_del = time.time_ns()
            if events.wait(partial(operator.contains, events.stopping, name), timeout):
                t, reason = events.stopping[name]
                removed.append(ms(t, t_del))
                wrong_reason += reason != "netns removed"
            else:
                self.missed["daemon.stopping after ip netns del"] += 1
            time.sleep(0.02)
        self.result["follow_add"] = stats(added)
        self.result["follow_del"] = stats(removed)
        self.result["follow_wrong_reason"] = wrong_reason

    # -- 3. carrier ----------------------------------------------------------------------

    def flip(self, flips: int, gap: float, timeout: float) -> None:
        events = self.events
        assert events is not None
        order = [self.extras[k % self.n] for k in range(flips)]
        for name in dict.fromkeys(order):
            proc = subprocess.Popen(
                ["ip", "-n", name, "-o", "-ts", "monitor", "link"],
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
            )
            assert proc.stdout is not None
            reader = LineReader(proc.stdout.fileno())
            self.anchors[name] = (proc, reader)
            self.sockets[name] = socket_in(ns_named(name))
        for name, (_proc, reader) in self.anchors.items():
            wait_monitor_ready(ns_named(name), reader, "c0")
        time.sleep(0.2)
        events.drain()
        events.read(time.time_ns())
        for _proc, reader in self.anchors.values():
            reader.lines()
        lat: dict[str, list[float]] = {"lm": [], "ip": []}
        for name in order:
            sock = self.sockets[name]
            reader = self.anchors[name][1]
            for up in (False, True):
                t0 = time.time_ns()
                set_up(sock, "c1", up)

                def lm_seen(now: int, up: bool = up, name: str = name) -> bool:
                    events.drain()
                    if any(ev == (name, "c0", up) for ev in events.read(now)):
                        return True
                    self.daemon.check_alive()  # type: ignore[union-attr]
                    return False

                def ip_seen(up: bool = up, reader: LineReader = reader) -> bool:
                    return any(monitor_state(line, "c0") is up for line in reader.lines())

                got_lm, got_ip = first_seen([events.ifd, reader.fd], timeout, lm_seen, ip_seen)
                for who, got in (("lm", got_lm), ("ip", got_ip)):
                    if got is None:
                        self.missed["carrier event (linkmond)" if who == "lm"
                                    else "carrier line (ip monitor)"] += 1  # fmt: skip
                    else:
                        lat[who].append(ms(got, t0))
                time.sleep(gap)
        lm, ip = stats(lat["lm"]), stats(lat["ip"])
        self.result.update(
            {
                "flips": flips,
                "flipped_netns": len(self.anchors),
                "carrier_lm": lm,
                "carrier_ip": ip,
                "ratio_p50": round(lm["p50_ms"] / ip["p50_ms"], 2) if ip["p50_ms"] else None,
                "ratio_p99": round(lm["p99_ms"] / ip["p99_ms"], 2) if ip["p99_ms"] else None,
            }
        )

    def finish(self) -> dict[str, Any]:
        assert self.events is not None
        dup = sum(1 for name in self.made if self.events.started_count[name] > 1)
        self.result["duplicate_started"] = dup
        # "all" watches every name in /run/netns: someone else's too (on a shared machine)
        self.result["other_netns"] = len(self.events.started.keys() - set(self.made))
        self.result["missed"] = {k: v for k, v in self.missed.items() if v}
        return self.result


def run_n(n: int, args: Any) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="lmbench-") as tmp:
        run = Run(n, Path(tmp))
        try:
            run.start(args.start_timeout)
            run.follow(args.follows, args.timeout)
            run.flip(args.flips, args.gap, args.timeout)
            if run.events is not None:  # late duplicates of daemon.started, if any
                run.events.read(time.time_ns())
        finally:
            run.close()
        return run.finish()


def _terminate(signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")  # unwinds through every cleanup


def main() -> int:
    parser = bench_parser(__doc__)
    parser.add_argument("--namespaces", default="1,10,100", help="comma-separated N values")
    parser.add_argument("--follows", type=int, default=20, help="ip netns add+del per N")
    parser.add_argument("--flips", type=int, default=200, help="down+up cycles per N")
    parser.add_argument("--gap", type=float, default=0.05, help="seconds between transitions")
    parser.add_argument("--timeout", type=float, default=10.0, help="per event, seconds")
    parser.add_argument(
        "--start-timeout", type=float, default=120.0, help="for every daemon.started, seconds"
    )
    args = parser.parse_args()
    require_root()
    ns_values = [int(n) for n in args.namespaces.split(",")]
    if min(ns_values) < 1 or args.flips < 1 or args.follows < 0:
        parser.error("N >= 1, --flips >= 1, --follows >= 0")
    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGHUP, _terminate)
    results = []
    try:
        for n in ns_values:
            results.append(run_n(n, args))
            time.sleep(1)  # the kernel tears the last run's namespaces down meanwhile
    except (RuntimeError, OSError, subprocess.CalledProcessError) as exc:
        return fail(exc)
    except KeyboardInterrupt:
        print("interrupted (everything made was removed)", file=sys.stderr)
        return 130
    base = min(results, key=lambda r: r["namespaces"])
    for r in results:
        dn = r["namespaces"] - base["namespaces"]
        per = (r["peak_rss_mib"] - base["peak_rss_mib"]) / dn * 1024 if dn else float("nan")
        r["kib_per_netns"] = round(per, 1)
        per = (r["start_s"] - base["start_s"]) / dn * 1000 if dn else float("nan")
        r["start_ms_per_netns"] = round(per, 2)

    def table() -> None:
        print(
            'namespaces: the daemon with netns = "all" in its own namespace + N more '
            "(each a veth pair)"
        )
        print_table(
            ["N", "setup s", "start s", "ms/netns", "started", "other", "peak RSS MiB",
             "KiB/netns", "CPU s", "idle after s", "CPU s then"],
            [[r["namespaces"], r["setup_s"], r["start_s"], r["start_ms_per_netns"],
              r["started"], r["other_netns"], r["peak_rss_mib"], r["kib_per_netns"],
              r["cpu_s"], r["settle_s"], r["settled_cpu_s"]] for r in results],
        )  # fmt: skip
        print()
        print(f"follow: {args.follows} x ip netns add (+ veth) / ip netns del, latency to the "
              "daemon.started / daemon.stopping in the file, ms")  # fmt: skip
        rows = []
        for r in results:
            a, d = r["follow_add"], r["follow_del"]
            rows.append([r["namespaces"], a["n"], a["p50_ms"], a["p99_ms"], a["max_ms"],
                         d["n"], d["p50_ms"], d["p99_ms"], d["max_ms"]])  # fmt: skip
        print_table(["N", "added n", "p50", "p99", "max", "deleted n", "p50", "p99", "max"], rows)
        print()
        print(f"carrier: {args.flips} down+up cycles of c1, flip k in namespace k mod N, "
              "latency to c0's event, ms (anchor: ip monitor link in that namespace)")  # fmt: skip
        rows = []
        for r in results:
            lm, ip = r["carrier_lm"], r["carrier_ip"]
            rows.append([r["namespaces"], r["flipped_netns"], lm["n"], lm["p50_ms"],
                         lm["p99_ms"], lm["max_ms"], ip["n"], ip["p50_ms"], ip["p99_ms"],
                         ip["max_ms"], r["ratio_p50"], r["ratio_p99"]])  # fmt: skip
        headers = ["N", "netns", "linkmond n", "p50", "p99", "max", "ip mon n", "p50", "p99",
                   "max", "ratio p50", "p99"]  # fmt: skip
        print_table(headers, rows)
        for r in results:
            notes = []
            if r["missed"]:
                notes.append(f"events that never arrived: {r['missed']}")
            if r["follow_wrong_reason"]:
                notes.append(f"{r['follow_wrong_reason']} daemon.stopping not 'netns removed'")
            if r["duplicate_started"]:
                notes.append(f"{r['duplicate_started']} namespaces with 2+ daemon.started")
            if r["other_netns"]:
                notes.append(f"{r['other_netns']} namespaces not made here were watched too")
            if r.get("daemon_exit"):
                notes.append(f"daemon exit code {r['daemon_exit']}")
            for note in notes:
                print(f"N={r['namespaces']}: {note}")

    emit(args, {"results": results}, table)
    bad = any(r["missed"] or r["follow_wrong_reason"] for r in results)
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
