"""Route-storm benchmark of the hot path: recv → decode → diff → event → queue.

Creates a throwaway network namespace, runs linkmond's Monitor inside it (in this process,
counting what it publishes), and has ``ip -batch`` add N IPv6 /128
routes from 2001:db8::/32 through a veth link as fast as the kernel takes them. Reports how
many route events arrived, how fast, whether the socket overflowed, and whether the cache
matches the kernel afterwards (nothing lost, even across an overflow).

    sudo .venv/bin/python bench/route_storm.py --routes 100000
    sudo .venv/bin/python bench/route_storm.py --routes 100000 --receive-buffer 208KiB

Needs root (namespaces). Prints one JSON object; not part of the test suite.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def outer(args: argparse.Namespace) -> int:
    name = f"lmbench-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        cmd = [
            "ip", "netns", "exec", name, sys.executable, __file__, "--inner",
            "--routes", str(args.routes), "--receive-buffer", args.receive_buffer,
        ]  # fmt: skip
        return subprocess.run(cmd, check=False).returncode
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


async def inner(args: argparse.Namespace) -> int:
    from linkmond.config import parse_size
    from linkmond.events import Event, EventFactory
    from linkmond.monitor import Monitor, tune_gc

    # a veth pair with both ends up stands in for a NIC (the dummy module may be missing)
    subprocess.run(["ip", "link", "add", "bench0", "type", "veth", "peer", "bench1"], check=True)
    subprocess.run(["ip", "link", "set", "bench1", "up"], check=True)
    subprocess.run(["ip", "link", "set", "bench0", "up"], check=True)

    done = asyncio.Event()
    routes_seen = 0
    first = last = 0.0

    def publish(event: Event) -> None:
        nonlocal routes_seen, first, last
        if event.type == "route.added" and event.subject.startswith("2001:db8::"):
            routes_seen += 1
            if routes_seen == 1:
                first = time.perf_counter()
            last = time.perf_counter()
            if routes_seen >= args.routes:
                done.set()

    monitor = Monitor(
        EventFactory("/linkmond/bench", "bench"),
        publish,
        receive_buffer=parse_size(args.receive_buffer),
    )
    await monitor.start()
    tune_gc()
    with tempfile.NamedTemporaryFile("w", suffix=".batch", delete=False) as batch:
        for i in range(args.routes):
            batch.write(f"route add 2001:db8::{i // 65536:x}:{i % 65536:x}/128 dev bench0\n")
    cpu0 = time.process_time()
    t0 = time.perf_counter()
    proc = await asyncio.create_subprocess_exec("ip", "-6", "-batch", batch.name)
    await proc.wait()
    t_kernel = time.perf_counter() - t0
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(done.wait(), timeout=120)
    # let an overflow resync finish, then compare the cache with the kernel
    while monitor._current is not None:
        await asyncio.sleep(0.05)
    t_total = time.perf_counter() - t0
    cpu = time.process_time() - cpu0
    os.unlink(batch.name)
    cached = sum(
        1
        for r in monitor.state.tables["route"].values()
        if r["ifindex"] and r["dst"].startswith("2001:db8::")
    )
    result = {
        "routes": args.routes,
        "receive_buffer": monitor.sock.receive_buffer if monitor.sock else 0,
        "route_events": routes_seen,
        "events_total": monitor.stats.events,
        "overflows": monitor.stats.overflows,
        "resyncs": monitor.stats.resyncs,
        "cached_routes_matching": cached,
        "kernel_insert_s": round(t_kernel, 3),
        "first_to_last_event_s": round(last - first, 3),
        "events_per_s_while_kernel_busy": round(routes_seen / max(t_kernel, 1e-9)),
        "events_per_s_first_to_last": round(routes_seen / max(last - first, 1e-9)),
        "reader_cpu_s": round(cpu, 3),
        "reader_cpu_us_per_event": round(cpu / max(monitor.stats.events, 1) * 1e6, 2),
        "wall_s": round(t_total, 3),
        "max_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }
    monitor.stop()
    print(json.dumps(result, indent=2))
    return 0 if cached == args.routes else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--routes", type=int, default=100_000)
    parser.add_argument("--receive-buffer", default="16MiB")
    parser.add_argument("--inner", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.inner:
        return asyncio.run(inner(args))
    return outer(args)


if __name__ == "__main__":
    raise SystemExit(main())
