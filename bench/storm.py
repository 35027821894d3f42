"""Route storm, as a user sees it: does every route the kernel adds end up in the events file?

In a throwaway namespace (``lmbench-<uuid>``): a veth pair b0/b1 (both up, 192.0.2.1/24 on
b0), the real daemon (``python -m linkmond run``) on a copy of the shipped
``config/linkmond.toml`` (file sink ``var/events.jsonl`` in a temp dir, console to
/dev/null), and, as the anchor, ``ip -o monitor route`` writing to a file. Once both see a
sentinel route, ``ip -batch`` adds N host routes ``10.X.Y.Z/32 dev b0`` (10.0.0.0/8 exists
only inside the namespace, which has no uplink). The script then polls the events file until
every route is there as ``route.added``, or nothing new arrived for ``--quiet`` seconds, then
passes a sentinel route through and waits ``--settle`` seconds more, so that late duplicates
(a re-dump after an overflow) are counted too.

Reported per run (median over ``--repeat`` runs): routes reported live / via resync
(``data.resync``), missing, duplicates (each route must appear exactly once), the kernel's
batch seconds, the lag from the batch's end to the last route's arrival in the file (poll
resolution ~5 ms), the daemon's CPU seconds (utime+stime from /proc/PID/stat, from the
batch's start to the end of the settle time), its peak RSS (VmHWM, sampled just before
stopping it), ``daemon.overflow`` events, and how many of the N routes the anchor
``ip monitor`` printed (it may lose some: its 1 MiB buffer overflows, ENOBUFS).

    sudo .venv/bin/python bench/storm.py --routes 100000
    sudo .venv/bin/python bench/storm.py --routes 1000000 [--repeat 3] [--json]

Needs root. Exits 1 if any route is missing or duplicated in the events file.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (
    Account,
    Daemon,
    NetNS,
    Tail,
    barrier,
    collect,
    count_lines,
    fail,
    monitor_routes,
    report_route_runs,
    require_root,
    route_args,
    route_set,
    stop_process,
    wait_monitor_ready,
    write_batch,
)

METRICS = [
    ("routes", "routes added (ip -batch)"),
    ("live", "  in file, live"),
    ("resync", "  in file, via resync"),
    ("missing", "  missing"),
    ("duplicates", "  duplicates"),
    ("kernel_s", "kernel batch s"),
    ("lag_s", "batch end -> last route in file, s"),
    ("total_s", "batch start -> last route in file, s"),
    ("events_per_s", "routes/s into the file (N / total)"),
    ("daemon_cpu_s", "daemon CPU s (batch start -> settled)"),
    ("daemon_rss_mib", "daemon peak RSS MiB"),
    ("overflows", "daemon.overflow events"),
    ("anchor_routes", "anchor ip monitor: routes printed"),
    ("anchor_enobufs", "anchor ip monitor: ENOBUFS errors"),
    ("daemon_exit", "daemon exit code"),
]


def run_once(batch: Path, wanted: set[str], quiet: float, settle: float) -> dict[str, Any]:
    n = len(wanted)
    with NetNS() as ns, tempfile.TemporaryDirectory(prefix="lmbench-") as tmp:
        work = Path(tmp)
        ns.veth("b0", "b1", "192.0.2.1/24")
        daemon = Daemon(ns, work)
        mon_out, mon_err = work / "ip-monitor.out", work / "ip-monitor.err"
        monitor: subprocess.Popen[bytes] | None = None
        notes = []
        try:
            daemon.start()
            with mon_out.open("wb") as out, mon_err.open("wb") as err:
                monitor = subprocess.Popen(
                    ns.argv("ip", "-o", "monitor", "route"), stdout=out, stderr=err
                )
            wait_monitor_ready(ns, mon_out)
            tail = Tail(daemon.events_path)
            barrier(ns, daemon, tail, 1)  # the daemon has processed everything so far
            start = tail.line_offset
            acc = Account(daemon.events_path, start, "route.added", wanted)
            cpu0 = daemon.cpu_seconds()
            kernel_s = ns.batch(batch)
            t_end = time.time()
            arrival = collect(ns, daemon, tail, acc, quiet, settle, notes)
            cpu = daemon.cpu_seconds() - cpu0
            rss = daemon.peak_rss_mib()
        finally:
            if monitor is not None:
                stop_process(monitor)
            rc = daemon.stop()
        acc.update()  # and what the daemon wrote while draining
        acc.close()
        lag = arrival.time_of(acc.last_first_offset) - t_end if acc.unique else float("nan")
        anchor = monitor_routes(mon_out) & wanted
        return {
            "routes": n,
            "live": acc.live,
            "resync": acc.resynced,
            "missing": acc.missing,
            "duplicates": acc.duplicates,
            "kernel_s": round(kernel_s, 3),
            "lag_s": round(lag, 3),
            "total_s": round(kernel_s + lag, 3),
            "events_per_s": round(acc.unique / (kernel_s + lag)) if acc.unique else 0,
            "daemon_cpu_s": round(cpu, 2),
            "daemon_rss_mib": round(rss, 1),
            "overflows": count_lines(daemon.events_path, b'"daemon.overflow"'),
            "anchor_routes": len(anchor),
            "anchor_enobufs": count_lines(mon_err, b"No buffer space"),
            "daemon_exit": rc,
            "notes": notes,
        }


def main() -> int:
    args = route_args(__doc__ or "")
    require_root()
    wanted = route_set(args.routes)
    runs = []
    with tempfile.TemporaryDirectory(prefix="lmbench-") as tmp:
        batch = Path(tmp) / "routes.batch"
        write_batch(batch, args.routes, "b0")
        try:
            for _ in range(args.repeat):
                runs.append(run_once(batch, wanted, args.quiet, args.settle))
        except RuntimeError as exc:
            return fail(exc)

    return report_route_runs(
        args,
        f"route storm: {args.routes} IPv4 /32 routes by ip -batch, default config",
        METRICS,
        runs,
    )


if __name__ == "__main__":
    raise SystemExit(main())
