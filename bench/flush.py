"""Silent route flush: how long until the user's file shows every route a downed link took away?

In a throwaway namespace (``lmbench-<uuid>``): a veth pair b0/b1 (both up, 192.0.2.1/24 on
b0), the real daemon (``python -m linkmond run``) on a copy of the shipped
``config/linkmond.toml`` (file sink in a temp dir), and N host routes ``10.X.Y.Z/32 dev b0``
added by ``ip -batch``; the script waits until every one is in the events file. Then
``ip link set b0 down``: the kernel deletes the IPv4 routes through b0 without a single
RTM_DELROUTE, so the daemon can only learn of it by re-dumping the table. An anchor
``ip -o monitor route`` in the same run shows what the kernel announced (expected: none).

Reported per run (median over ``--repeat``): seconds from the start of ``ip link set b0 down``
until the last of the N ``route.removed`` arrived in the file (poll resolution ~5 ms), how
many arrived / are missing / duplicated (counted after a sentinel route and ``--settle``
seconds more, since the daemon may re-read the table a few times), how many were flagged
``data.resync``, the daemon's CPU seconds from the down to the end of the settle time
(utime+stime, /proc/PID/stat) and its peak RSS (VmHWM).

    sudo .venv/bin/python bench/flush.py --routes 100000 [--repeat 3] [--json]

Needs root. Exits 1 if any route.removed is missing or duplicated.
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
    fail,
    iter_lines,
    load_routes,
    report_route_runs,
    require_root,
    route_args,
    route_set,
    stop_process,
    wait_monitor_ready,
)

METRICS = [
    ("routes", "routes through b0"),
    ("removed", "  route.removed in file"),
    ("resync", "  of them flagged resync"),
    ("missing", "  missing"),
    ("duplicates", "  duplicates"),
    ("down_s", "ip link set b0 down, s"),
    ("seconds", "down -> last route.removed in file, s"),
    ("daemon_cpu_s", "daemon CPU s (down -> settled)"),
    ("daemon_rss_mib", "daemon peak RSS MiB"),
    ("anchor_deleted", "anchor ip monitor: deletions printed"),
    ("daemon_exit", "daemon exit code"),
]


def run_once(n: int, quiet: float, settle: float) -> dict[str, Any]:
    wanted = route_set(n)
    with NetNS() as ns, tempfile.TemporaryDirectory(prefix="lmbench-") as tmp:
        work = Path(tmp)
        ns.veth("b0", "b1", "192.0.2.1/24")
        daemon = Daemon(ns, work)
        mon_out = work / "ip-monitor.out"
        monitor: subprocess.Popen[bytes] | None = None
        notes = []
        try:
            daemon.start()
            tail = Tail(daemon.events_path)
            load_routes(ns, daemon, tail, n, "b0", work)
            with mon_out.open("wb") as out:
                monitor = subprocess.Popen(
                    ns.argv("ip", "-o", "monitor", "route"), stdout=out, stderr=subprocess.DEVNULL
                )
            wait_monitor_ready(ns, mon_out)
            barrier(ns, daemon, tail, 1)
            acc = Account(daemon.events_path, tail.line_offset, "route.removed", wanted)
            cpu0 = daemon.cpu_seconds()
            t0 = time.time()
            ns.ip("link", "set", "b0", "down")
            down_s = time.time() - t0
            arrival = collect(ns, daemon, tail, acc, quiet, settle, notes)
            cpu = daemon.cpu_seconds() - cpu0
            rss = daemon.peak_rss_mib()
        finally:
            if monitor is not None:
                stop_process(monitor)
            rc = daemon.stop()
        acc.update()
        acc.close()
        seconds = arrival.time_of(acc.last_first_offset) - t0 if acc.unique else float("nan")
        deleted = sum(1 for line in iter_lines(mon_out) if line.startswith(b"Deleted 10."))
        return {
            "routes": n,
            "removed": acc.unique,
            "resync": acc.resynced,
            "missing": acc.missing,
            "duplicates": acc.duplicates,
            "down_s": round(down_s, 3),
            "seconds": round(seconds, 3),
            "daemon_cpu_s": round(cpu, 2),
            "daemon_rss_mib": round(rss, 1),
            "anchor_deleted": deleted,
            "daemon_exit": rc,
            "notes": notes,
        }


def main() -> int:
    args = route_args(__doc__ or "")
    require_root()
    try:
        runs = [run_once(args.routes, args.quiet, args.settle) for _ in range(args.repeat)]
    except RuntimeError as exc:
        return fail(exc)

    return report_route_runs(
        args,
        f"route flush: {args.routes} IPv4 /32 routes through b0, then ip link set b0 down",
        METRICS,
        runs,
    )


if __name__ == "__main__":
    raise SystemExit(main())
