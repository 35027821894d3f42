"""CPU cost of the hot path without the kernel: decode → diff → event → queue.

Builds N RTM_NEWROUTE messages (IPv6 /128s from 2001:db8::/32, the shape the kernel sends)
with struct, then feeds them to a NetnsWatcher one datagram at a time, as the socket reader does,
publishing through the real fan-out filters into a sink's bounded queue (the sink itself
does not run; its batches are taken off the queue as its worker would). Reports events/s on
one core, with the daemon's garbage-collector settings.

    .venv/bin/python bench/hot_path.py --messages 200000 [--profile]

No root needed. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import pstats
import socket
import struct
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from linkmond import rtnl
from linkmond.config import FileSinkConfig
from linkmond.events import EventFactory
from linkmond.fanout import BATCH_MAX, SinkWorker
from linkmond.publisher import Publisher
from linkmond.sinks.file import FileSink
from linkmond.watcher import NetnsWatcher, tune_gc


def nla(atype: int, payload: bytes) -> bytes:
    raw = struct.pack("=HH", 4 + len(payload), atype) + payload
    return raw + b"\0" * (-len(raw) % 4)


def route_message(i: int, ifindex: int = 2) -> bytes:
    dst = socket.inet_pton(socket.AF_INET6, f"2001:db8::{i // 65536:x}:{i % 65536:x}")
    body = struct.pack("=BBBBBBBBI", socket.AF_INET6, 128, 0, 0, 254, 3, 0, 1, 0)
    body += nla(rtnl.RTA_TABLE, struct.pack("=I", 254))
    body += nla(rtnl.RTA_DST, dst)
    body += nla(rtnl.RTA_PRIORITY, struct.pack("=I", 1024))
    body += nla(rtnl.RTA_OIF, struct.pack("=I", ifindex))
    body += nla(20, b"\0")  # RTA_PREF
    body += nla(12, b"\0" * 32)  # RTA_CACHEINFO
    hdr = struct.pack("=IHHII", 16 + len(body), rtnl.RTM_NEWROUTE, 0, 0, 1234)
    return hdr + body


async def run(n: int, profile: bool) -> dict[str, float]:
    options = FileSinkConfig.model_validate(
        {"type": "file", "path": "/dev/null", "buffer": {"max_events": n}}
    )
    worker = SinkWorker("bench", FileSink(options.path), options)
    monitor = NetnsWatcher(Publisher(EventFactory("/linkmond/bench", "bench"), worker.offer))
    datagrams = [route_message(i) for i in range(n)]
    tune_gc()  # as the daemon does once its initial dump is in
    buf = bytearray(1 << 16)
    view = memoryview(buf)
    prof = cProfile.Profile() if profile else None
    if prof:
        prof.enable()
    t0 = time.perf_counter()
    delivered = 0
    for dgram in datagrams:
        size = len(dgram)
        buf[:size] = dgram  # what recv_into does
        monitor.feed(view, size)
        if len(worker.queue) >= BATCH_MAX:  # the sink worker takes batches of this size
            delivered += len(await worker.queue.get_batch(BATCH_MAX))
    elapsed = time.perf_counter() - t0
    delivered += len(worker.queue)
    if prof:
        prof.disable()
        pstats.Stats(prof, stream=sys.stderr).sort_stats("tottime").print_stats(15)
    assert delivered == n, delivered
    return {
        "messages": n,
        "seconds": round(elapsed, 3),
        "events_per_s": round(n / elapsed),
        "us_per_event": round(elapsed / n * 1e6, 2),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--messages", type=int, default=200_000)
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    print(json.dumps(asyncio.run(run(args.messages, args.profile)), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
