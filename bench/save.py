"""Saving the state with N routes cached: how long the reader is held, and what it costs.

For each N in ``--routes`` (a fresh namespace ``lmbench-<uuid>`` and daemon each): a veth
pair a0/a1 carries N host routes ``10.X.Y.Z/32 dev a0`` (added by ``ip -batch``; the script
waits until the daemon has written every one to its file), and a second pair f0/f1 is
flipped. The real daemon (``python -m linkmond run``) runs on a copy of the shipped
``config/linkmond.toml`` with ``[daemon] save_interval`` set to ``--interval`` and the state
directory in the temp dir, so it saves its state again and again (every save with all N
routes) while the script flips f1 with the SIOCSIFFLAGS ioctl (as ``bench/flip.py`` does) and
times f0's ``link.carrier_lost`` / ``link.carrier_up`` from the flip to the moment it is read
from the events file (inotify, no polling interval).

The daemon logs every save (``state saved``: bytes, seconds from start to rename, the longest
slice it held the event loop, slices); a flip counts as *during a save* when it falls inside
a save's window. Reported per N: total save time and file size (medians), the longest hold of
the loop over all saves, carrier-event latency p50/p99/max during saves and outside them;
then SIGTERM (the exact save at shutdown, and SIGTERM → exit), and a restart on the saved
file: its load time, the time to ``daemon.started``, until the reconciliation round is done,
how many events it reported (the flips ended where they began: expected 0), and the peak RSS.

    sudo .venv/bin/python bench/save.py --routes 100000,1000000 [--flips 200] [--json]

Needs root. Exits 1 if a flip's event never arrived or the restart reported anything.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import select
import socket
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (
    Daemon,
    NetNS,
    Tail,
    barrier,
    bench_parser,
    emit,
    fail,
    load_routes,
    median,
    percentile,
    print_table,
    require_root,
)
from flip import event_state, inotify_modify, set_up, socket_in


def daemon_logs(daemon: Daemon, message: str) -> list[dict[str, Any]]:
    """The daemon's JSON log lines (stderr) with this message, in order."""
    found = []
    with contextlib.suppress(FileNotFoundError):
        for line in daemon.stderr_path.read_text(errors="replace").splitlines():
            with contextlib.suppress(ValueError):
                entry = json.loads(line)
                if isinstance(entry, dict) and entry.get("event") == message:
                    found.append(entry)
    return found


def wait_log(daemon: Daemon, message: str, timeout: float, where: Any = None) -> dict[str, Any]:
    """The first log line with ``message`` (and ``where(entry)``), waited for."""
    deadline = time.monotonic() + timeout
    while True:
        for entry in daemon_logs(daemon, message):
            if where is None or where(entry):
                return entry
        daemon.check_alive()
        if time.monotonic() > deadline:
            raise RuntimeError(f"no {message!r} in the daemon's log within {timeout} s")
        time.sleep(0.05)


def epoch(entry: dict[str, Any]) -> float:
    """A log line's timestamp (ISO 8601, UTC) as seconds since the epoch."""
    return datetime.fromisoformat(entry["timestamp"].replace("Z", "+00:00")).timestamp()


def configure(daemon: Daemon, state: Path, interval: str) -> None:
    """The shipped config, with the state directory and save interval of this run."""
    text = re.sub(r"(?m)^save_interval = .*\n", "", daemon.config.read_text())
    assert 'state_directory = "var/lib"' in text, "the shipped config changed: adapt save.py"
    text = text.replace(
        'state_directory = "var/lib"',
        f'state_directory = "{state}"\nsave_interval = "{interval}"',
    )
    daemon.config.write_text(text)


def flip_all(
    ns: NetNS, daemon: Daemon, flips: int, gap: float, timeout: float
) -> tuple[list[tuple[float, float]], int]:
    """Flip f1 down and up ``flips`` times; (flip time, latency ms) of every event of f0
    that arrived, and how many never did."""
    tail = Tail(daemon.events_path)
    tail.skip_to_end()
    ifd = inotify_modify(daemon.events_path)
    sock: socket.socket | None = None
    samples: list[tuple[float, float]] = []
    missed = 0
    try:
        sock = socket_in(ns)
        for _ in range(flips):
            for up in (False, True):
                t0 = time.time()
                set_up(sock, "f1", up)
                got = None
                deadline = time.monotonic() + timeout
                while got is None and time.monotonic() < deadline:
                    select.select([ifd], [], [], max(0.0, deadline - time.monotonic()))
                    now = time.time()
                    with contextlib.suppress(BlockingIOError):
                        os.read(ifd, 4096)
                    if any(event_state(line, "f0") is up for line in tail.lines()):
                        got = now
                if got is None:
                    missed += 1
                else:
                    samples.append((t0, (got - t0) * 1000))
                time.sleep(gap)
    finally:
        os.close(ifd)
        if sock is not None:
            sock.close()
        tail.close()
    return samples, missed


def latency(values: list[float]) -> dict[str, Any]:
    return {
        "n": len(values),
        "p50_ms": round(percentile(values, 50), 2),
        "p99_ms": round(percentile(values, 99), 2),
        "max_ms": round(max(values, default=float("nan")), 2),
    }


def run_n(n: int, flips: int, gap: float, interval: str, timeout: float) -> dict[str, Any]:
    with NetNS() as ns, tempfile.TemporaryDirectory(prefix="lmbench-") as tmp:
        work = Path(tmp)
        state = work / "state"
        # no IPv6 link-local addresses: their DAD finishing while the daemon is stopped would
        # be reported at the restart (rightly), where this measures a state that did not change
        for conf in ("all", "default"):
            sysctl = f"net.ipv6.conf.{conf}.addr_gen_mode=1"
            subprocess.run(ns.argv("sysctl", "-qw", sysctl), check=True)
        ns.veth("a0", "a1", "192.0.2.1/24")
        ns.veth("f0", "f1")
        (work / "run1").mkdir()
        daemon = Daemon(ns, work / "run1")
        configure(daemon, state, interval)
        try:
            daemon.start()
            tail = Tail(daemon.events_path)
            load_routes(ns, daemon, tail, n, "a0", work)
            barrier(ns, daemon, tail, 1)
            full = wait_log(daemon, "state saved", 120 + n / 5000, lambda e: e.get("route", 0) >= n)
            samples, missed = flip_all(ns, daemon, flips, gap, timeout)
            saves = [
                e
                for e in daemon_logs(daemon, "state saved")
                if e.get("route", 0) >= n and epoch(e) >= epoch(full)
            ]
            rss_running = daemon.peak_rss_mib()
            barrier(ns, daemon, tail, 2)  # a change since the last save: the last one saves
            wall_stop, t_stop = time.time(), time.monotonic()
            daemon.stop()
            exit_s = time.monotonic() - t_stop
            final = [e for e in daemon_logs(daemon, "state saved") if epoch(e) >= wall_stop]
        finally:
            daemon.stop()
        size = (state / f"state-{ns.name}.jsonl").stat().st_size
        windows = [(epoch(e) - e["seconds"], epoch(e)) for e in saves]

        def during(t: float) -> bool:
            return any(start <= t <= end for start, end in windows)

        syncs = [(epoch(e) - e["sync_seconds"], epoch(e)) for e in saves]
        in_sync = [ms for t, ms in samples if any(a <= t <= b for a, b in syncs)]
        in_save = [ms for t, ms in samples if during(t)]
        outside = [ms for t, ms in samples if not during(t)]

        # the restart: load the saved state, reconcile it with the kernel
        (work / "run2").mkdir()
        again = Daemon(ns, work / "run2")
        configure(again, state, "0")
        try:
            t0 = time.time()
            again.start(timeout=300)
            t_started = time.time()
            loaded = wait_log(again, "saved state loaded; reconciling it with the kernel", 10)
            reconciled = wait_log(again, "reconciled the saved state with the kernel", 300)
            rss_restart = again.peak_rss_mib()
        finally:
            again.stop()
    return {
        "routes": n,
        "saves": len(saves),
        "save_s": round(median([e["seconds"] for e in saves]), 3),
        "file_mb": round(size / 1e6, 1),
        "bytes_per_route": round(size / max(n, 1), 1),
        "longest_slice_ms": round(max((e["longest_slice_ms"] for e in saves), default=0.0), 2),
        "longest_slice_cpu_ms": round(
            max((e["longest_slice_cpu_ms"] for e in saves), default=0.0), 2
        ),
        "slices_p50_longest_ms": round(median([e["longest_slice_ms"] for e in saves]), 2),
        "slices": median([e["slices"] for e in saves]),
        "flips_during_save": latency(in_save),
        "flips_during_sync": latency(in_sync),
        "sync_s": round(median([e["sync_seconds"] for e in saves]), 3),
        "flips_outside_save": latency(outside),
        "missed": missed,
        "rss_running_mib": round(rss_running, 1),
        "stop_save_s": final[-1]["seconds"] if final else float("nan"),
        "stop_exit_s": round(exit_s, 2),
        "load_s": loaded["seconds"],
        "to_started_s": round(t_started - t0, 2),
        "reconciled_s": round(epoch(reconciled) - t0, 2),
        "reconciled_events": reconciled["events"],
        "rss_restart_mib": round(rss_restart, 1),
    }


def main() -> int:
    parser = bench_parser(__doc__)
    parser.add_argument("--routes", default="100000", help="comma-separated N values")
    parser.add_argument("--flips", type=int, default=200, help="down+up cycles per N")
    parser.add_argument("--gap", type=float, default=0.02, help="seconds between transitions")
    parser.add_argument("--interval", default="100ms", help="[daemon] save_interval (100ms)")
    parser.add_argument("--timeout", type=float, default=10.0, help="per event, seconds")
    args = parser.parse_args()
    require_root()
    try:
        results = [
            run_n(int(n), args.flips, args.gap, args.interval, args.timeout)
            for n in args.routes.split(",")
        ]
    except RuntimeError as exc:
        return fail(exc)

    def table() -> None:
        for r in results:
            print(
                f"saving the state with {r['routes']} routes cached "
                f"(save_interval {args.interval}, {args.flips} carrier flips meanwhile)"
            )
            during, outside = r["flips_during_save"], r["flips_outside_save"]
            sync = r["flips_during_sync"]
            rows = [
                ["saves with every route", r["saves"]],
                ["save: seconds, start to rename (median)", r["save_s"]],
                ["  of them fsync and rename, in a thread (median)", r["sync_s"]],
                ["save: file MB (bytes per route)", f"{r['file_mb']} ({r['bytes_per_route']})"],
                ["save: longest hold of the event loop, ms (CPU ms)",
                 f"{r['longest_slice_ms']} ({r['longest_slice_cpu_ms']})"],
                ["save: its longest slice, median over saves, ms", r["slices_p50_longest_ms"]],
                ["save: slices (median)", r["slices"]],
                ["carrier event during a save: n, p50/p99/max ms",
                 f"{during['n']}, {during['p50_ms']}/{during['p99_ms']}/{during['max_ms']}"],
                ["  of them during its fsync: n, p50/p99/max ms",
                 f"{sync['n']}, {sync['p50_ms']}/{sync['p99_ms']}/{sync['max_ms']}"],
                ["carrier event outside saves: n, p50/p99/max ms",
                 f"{outside['n']}, {outside['p50_ms']}/{outside['p99_ms']}/{outside['max_ms']}"],
                ["events that never arrived", r["missed"]],
                ["peak RSS while saving, MiB", r["rss_running_mib"]],
                ["save at shutdown, s (SIGTERM to exit, s)",
                 f"{r['stop_save_s']} ({r['stop_exit_s']})"],
                ["restart: state loaded in, s", r["load_s"]],
                ["restart: daemon.started after, s", r["to_started_s"]],
                ["restart: reconciled after, s (events)",
                 f"{r['reconciled_s']} ({r['reconciled_events']})"],
                ["restart: peak RSS, MiB", r["rss_restart_mib"]],
            ]  # fmt: skip
            print_table(["metric", "value"], rows)
            print()

    emit(args, {"results": results}, table)
    bad = any(r["missed"] or r["reconciled_events"] for r in results)
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
