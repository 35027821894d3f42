"""Carrier-flip latency, as a user sees it: from the flip to the event being in the file.

For each N in ``--routes`` (a fresh namespace ``lmbench-<uuid>`` and daemon each): a veth pair
a0/a1 carries N host routes ``10.X.Y.Z/32 dev a0`` (added by ``ip -batch``; the script waits
until the daemon has written every one to its file), and a second pair f0/f1 is flipped: the
script clears and sets IFF_UP on f1 with the SIOCSIFFLAGS ioctl (on an AF_INET socket created
inside the namespace: setns there, socket(), setns back), so f0, the near end, loses and
regains carrier. The real daemon (``python -m linkmond run``) runs on a copy of the shipped
``config/linkmond.toml``; its file sink lands in a temp dir.

Latency = from ``time.time_ns()`` just before the ioctl to the moment this script reads the
matching ``link.carrier_lost`` / ``link.carrier_up`` of f0 from the events file (tailed with
inotify, so no polling interval is added). The anchor, ``ip -o -ts monitor link`` running in
the namespace in the same run, is timed the same way to the moment its line for f0 with the
new carrier state is read from its stdout. Reported: p50/p99 over both directions (and each
direction apart), per N, for linkmond and the anchor, plus events that never arrived.

    sudo .venv/bin/python bench/flip.py --routes 0,100000 --flips 200 [--json]

Needs root. Exits 1 if any flip's event did not arrive (within ``--timeout``).
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import json
import os
import re
import select
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
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
    percentile,
    print_table,
    require_root,
    stop_process,
)

IFF_UP = 0x1
SIOCGIFFLAGS = 0x8913
SIOCSIFFLAGS = 0x8914
CLONE_NEWNET = 0x40000000
IN_MODIFY = 0x2
IN_NONBLOCK = os.O_NONBLOCK
IN_CLOEXEC = os.O_CLOEXEC

_libc = ctypes.CDLL(None, use_errno=True)


def _check(ret: int, what: str) -> int:
    if ret < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")
    return ret


def socket_in(ns: NetNS) -> socket.socket:
    """An AF_INET socket created inside ``ns``: its ioctls act on that namespace's links."""
    with open("/proc/self/ns/net") as home, open(f"/run/netns/{ns.name}") as there:
        _check(_libc.setns(there.fileno(), CLONE_NEWNET), "setns")
        try:
            return socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        finally:
            _check(_libc.setns(home.fileno(), CLONE_NEWNET), "setns back")


def set_up(sock: socket.socket, ifname: str, up: bool) -> None:
    """SIOCGIFFLAGS, then SIOCSIFFLAGS with IFF_UP set or cleared (what ``ip link set`` does
    over netlink, minus the process start)."""
    req = struct.pack("16sH14x", ifname.encode(), 0)
    flags = struct.unpack_from("16sH", fcntl.ioctl(sock, SIOCGIFFLAGS, req))[1]
    flags = flags | IFF_UP if up else flags & ~IFF_UP
    fcntl.ioctl(sock, SIOCSIFFLAGS, struct.pack("16sH14x", ifname.encode(), flags))


def inotify_modify(path: Path) -> int:
    """An inotify descriptor that becomes readable whenever ``path`` is written."""
    fd = _check(_libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC), "inotify_init1")
    _check(_libc.inotify_add_watch(fd, os.fsencode(path), IN_MODIFY), "inotify_add_watch")
    return fd


class LineReader:
    """Non-blocking complete lines from a pipe."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        os.set_blocking(fd, False)
        self._partial = b""

    def lines(self) -> list[bytes]:
        data = b""
        while True:
            try:
                chunk = os.read(self.fd, 1 << 16)
            except BlockingIOError:
                break
            if not chunk:
                break
            data += chunk
        *complete, self._partial = (self._partial + data).split(b"\n")
        return complete


MONITOR_LINK = re.compile(rb"^(?:\[[^\]]*\] )?\d+: ([^:@\s]+)[@:][^<]*<([^>]*)>")


def monitor_state(line: bytes, ifname: str) -> bool | None:
    """From an ``ip -o -ts monitor link`` line (``[ts] 3: f0@f1: <FLAGS> …``): True/False if
    it is ``ifname`` with/without carrier (LOWER_UP / NO-CARRIER), None for any other line."""
    m = MONITOR_LINK.match(line)
    if m is None or m.group(1) != ifname.encode():
        return None
    flags = m.group(2).split(b",")
    return b"LOWER_UP" in flags and b"NO-CARRIER" not in flags


def event_state(line: bytes, ifname: str) -> bool | None:
    """From an events-file line: True/False for ``link.carrier_up``/``_lost`` of ``ifname``."""
    if b"link.carrier_" not in line:
        return None
    try:
        event = json.loads(line)
    except ValueError:
        return None
    if event.get("subject") != ifname:
        return None
    return {"link.carrier_up": True, "link.carrier_lost": False}.get(event.get("type"))


def wait_monitor_ready(ns: NetNS, reader: LineReader, ifname: str) -> None:
    """Change f0's txqueuelen until ``ip monitor link`` prints a line for it."""
    for k in range(100):
        ns.ip("link", "set", ifname, "txqueuelen", str(1001 + k))
        until = time.monotonic() + 0.2
        while time.monotonic() < until:
            if any(f": {ifname}@".encode() in line for line in reader.lines()):
                return
            time.sleep(0.01)
    raise RuntimeError("ip monitor link printed nothing for 20 s")


def first_seen(
    fds: list[int],
    timeout: float,
    lm_seen: Callable[[int], bool],
    ip_seen: Callable[[], bool],
) -> tuple[int | None, int | None]:
    """After a flip: wait on ``fds`` until linkmond's event (``lm_seen(now)``) and ``ip
    monitor``'s line (``ip_seen()``) have both been seen, or ``timeout`` s; when each was
    first seen (``time.time_ns()``), None for what never was."""
    got_lm: int | None = None
    got_ip: int | None = None
    deadline = time.monotonic() + timeout
    while got_lm is None or got_ip is None:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        select.select(fds, [], [], left)
        now = time.time_ns()
        if got_ip is None and ip_seen():
            got_ip = now
        if got_lm is None and lm_seen(now):
            got_lm = now
    return got_lm, got_ip


def run_n(n: int, flips: int, gap: float, timeout: float) -> dict[str, Any]:
    with NetNS() as ns, tempfile.TemporaryDirectory(prefix="lmbench-") as tmp:
        work = Path(tmp)
        ns.veth("a0", "a1", "192.0.2.1/24")
        ns.veth("f0", "f1")
        daemon = Daemon(ns, work)
        monitor: subprocess.Popen[bytes] | None = None
        ifd = -1
        sock: socket.socket | None = None
        lat: dict[str, list[float]] = {"lm_lost": [], "lm_up": [], "ip_lost": [], "ip_up": []}
        missed = {"linkmond": 0, "ip monitor": 0}
        try:
            daemon.start()
            tail = Tail(daemon.events_path)
            load_routes(ns, daemon, tail, n, "a0", work)
            barrier(ns, daemon, tail, 1)
            monitor = subprocess.Popen(
                ns.argv("ip", "-o", "-ts", "monitor", "link"),
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
            )
            assert monitor.stdout is not None
            anchor = LineReader(monitor.stdout.fileno())
            wait_monitor_ready(ns, anchor, "f0")
            sock = socket_in(ns)
            ifd = inotify_modify(daemon.events_path)
            time.sleep(0.2)
            tail.skip_to_end()
            anchor.lines()
            for _ in range(flips):
                for up in (False, True):
                    t0 = time.time_ns()
                    set_up(sock, "f1", up)

                    def lm_seen(_now: int, up: bool = up) -> bool:
                        with contextlib.suppress(BlockingIOError):
                            os.read(ifd, 4096)  # drain the inotify events
                        return any(event_state(line, "f0") is up for line in tail.lines())

                    def ip_seen(up: bool = up) -> bool:
                        return any(monitor_state(line, "f0") is up for line in anchor.lines())

                    got_lm, got_ip = first_seen([ifd, anchor.fd], timeout, lm_seen, ip_seen)
                    key = "up" if up else "lost"
                    for name, got in (("lm", got_lm), ("ip", got_ip)):
                        if got is None:
                            missed["linkmond" if name == "lm" else "ip monitor"] += 1
                        else:
                            lat[f"{name}_{key}"].append((got - t0) / 1e6)
                    time.sleep(gap)
        finally:
            if ifd >= 0:
                os.close(ifd)
            if sock is not None:
                sock.close()
            if monitor is not None:
                stop_process(monitor)
            daemon.stop()
    result: dict[str, Any] = {"routes": n, "flips": flips, "missed": missed}
    for who in ("lm", "ip"):
        both = lat[f"{who}_lost"] + lat[f"{who}_up"]
        for key, values in (("all", both), ("lost", lat[f"{who}_lost"]), ("up", lat[f"{who}_up"])):
            result[f"{who}_{key}"] = {
                "n": len(values),
                "p50_ms": round(percentile(values, 50), 3),
                "p99_ms": round(percentile(values, 99), 3),
                "max_ms": round(max(values, default=float("nan")), 3),
            }
    return result


def main() -> int:
    parser = bench_parser(__doc__)
    parser.add_argument("--routes", default="0,100000", help="comma-separated N values")
    parser.add_argument("--flips", type=int, default=200, help="down+up cycles per N")
    parser.add_argument("--gap", type=float, default=0.05, help="seconds between transitions")
    parser.add_argument("--timeout", type=float, default=10.0, help="per event, seconds")
    args = parser.parse_args()
    require_root()
    try:
        results = [
            run_n(int(n), args.flips, args.gap, args.timeout) for n in args.routes.split(",")
        ]
    except RuntimeError as exc:
        return fail(exc)

    def table() -> None:
        print(f"carrier flips: {args.flips} down+up cycles of f1, latency to f0's event, ms")
        rows = []
        for r in results:
            for key in ("all", "lost", "up"):
                lm, ip = r[f"lm_{key}"], r[f"ip_{key}"]
                rows.append(
                    [r["routes"], key, lm["n"], lm["p50_ms"], lm["p99_ms"], lm["max_ms"],
                     ip["n"], ip["p50_ms"], ip["p99_ms"], ip["max_ms"]]
                )  # fmt: skip
        print_table(
            ["routes", "flip", "linkmond n", "p50", "p99", "max", "ip mon n", "p50", "p99", "max"],
            rows,
        )
        for r in results:
            if any(r["missed"].values()):
                print(f"routes={r['routes']}: events that never arrived: {r['missed']}")

    emit(args, {"results": results}, table)
    return 1 if any(any(r["missed"].values()) for r in results) else 0


if __name__ == "__main__":
    raise SystemExit(main())
