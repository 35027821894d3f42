"""Offline decoding speed: ``linkmond replay`` against ``ip monitor file`` on the same recording.

Records a netlink stream in a throwaway namespace (``lmbench-<uuid>``): ``rtmon file REC``
(the binary format ``ip monitor file`` reads: netlink messages back to back, with rtmon's
initial link dump and timestamps) runs while ``ip -batch`` adds N host routes
``10.X.Y.Z/32 dev b0`` through a veth. Then, outside the namespace, times the two whole
commands a user would run on that file, alternating them, ``--repeat`` times each:

    python -m linkmond replay REC > /dev/null
    ip monitor file REC > /dev/null

and reports the median wall seconds (and CPU seconds, from the children's rusage) of each,
messages/s (the messages in REC, counted by walking the 16-byte nlmsg headers), and the
ratios linkmond/ip. linkmond's wall time includes starting Python, as the user's does. Once,
untimed, linkmond's output goes to a file to check that it holds N ``route.added`` events
for the N routes (exactly once each).

    sudo .venv/bin/python bench/replay.py --routes 100000 --repeat 5 [--json]

Needs root (for the recording). Exits 1 if linkmond's output lacks or repeats a route, or
either command fails.
"""

from __future__ import annotations

import resource
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (
    PYTHON,
    Account,
    NetNS,
    bench_parser,
    emit,
    fail,
    median,
    print_table,
    require_root,
    route_set,
    stop_process,
    write_batch,
)

NLMSG_TSTAMP = 15  # rtmon's timestamp records
RTM_NEWROUTE = 24


def count_messages(path: Path) -> dict[str, int]:
    """The netlink messages in a recording, by walking the headers (u32 length first, each
    message padded to 4 bytes): all of them, RTM_NEWROUTE, and rtmon's timestamps."""
    data = path.read_bytes()
    counts = {"messages": 0, "route_messages": 0, "timestamps": 0}
    offset = 0
    while offset + 16 <= len(data):
        length, mtype = struct.unpack_from("=IH", data, offset)
        if length < 16:
            raise ValueError(f"{path}: bad nlmsg length {length} at byte {offset}")
        counts["messages"] += 1
        counts["route_messages"] += mtype == RTM_NEWROUTE
        counts["timestamps"] += mtype == NLMSG_TSTAMP
        offset += (length + 3) & ~3
    return counts


def record(n: int, rec: Path, work: Path) -> None:
    """``rtmon file REC`` in a namespace while ``ip -batch`` adds the N routes."""
    batch = work / "routes.batch"
    write_batch(batch, n, "b0")
    with NetNS() as ns:
        ns.veth("b0", "b1", "192.0.2.1/24")
        rtmon = subprocess.Popen(
            ns.argv("rtmon", "file", str(rec)), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        try:
            deadline = time.monotonic() + 10
            while not rec.exists() or rec.stat().st_size == 0:  # its initial dump: listening
                if rtmon.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("rtmon did not start recording")
                time.sleep(0.01)
            ns.batch(batch)
            size, stable = -1, time.monotonic()
            while time.monotonic() - stable < 0.5:  # until rtmon has written everything
                if rec.stat().st_size != size:
                    size, stable = rec.stat().st_size, time.monotonic()
                time.sleep(0.05)
        finally:
            stop_process(rtmon)


def timed(cmd: list[str], cwd: Path) -> tuple[float, float]:
    """Run ``cmd`` with stdout to /dev/null: (wall seconds, CPU seconds)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run(
        cmd, check=False, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode:
        raise RuntimeError(f"{' '.join(cmd)}: exit {proc.returncode}: {proc.stderr[-2000:]!r}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu


def run(n: int, repeat: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="lmbench-") as tmp:
        work = Path(tmp)
        rec = work / "storm.rtmon"
        record(n, rec, work)
        counts = count_messages(rec)
        messages = counts["messages"]
        empty = work / "empty.rtmon"
        empty.touch()
        commands = {
            "linkmond": [PYTHON, "-m", "linkmond", "replay", str(rec)],
            "ip": ["ip", "monitor", "file", str(rec)],
            "linkmond_empty": [PYTHON, "-m", "linkmond", "replay", str(empty)],
        }
        # once, untimed (and warming the page cache): does linkmond's output hold every route?
        out = work / "replay.jsonl"
        with out.open("wb") as f:
            proc = subprocess.run(
                commands["linkmond"], cwd=work, stdout=f, stderr=subprocess.PIPE, check=False
            )
        if proc.returncode:
            raise RuntimeError(f"linkmond replay: exit {proc.returncode}: {proc.stderr[-2000:]!r}")
        acc = Account(out, 0, "route.added", route_set(n)).update()
        acc.close()
        timed(commands["ip"], work)
        times: dict[str, list[tuple[float, float]]] = {"linkmond": [], "ip": []}
        times["linkmond_empty"] = []
        for i in range(repeat):
            order = ["linkmond", "ip"] if i % 2 == 0 else ["ip", "linkmond"]
            order.append("linkmond_empty")
            for name in order:
                times[name].append(timed(commands[name], work))
    result: dict[str, Any] = {
        "routes": n,
        "repeat": repeat,
        **counts,
        "linkmond_route_added": acc.unique,
        "linkmond_missing": acc.missing,
        "linkmond_duplicates": acc.duplicates,
    }
    for name, samples in times.items():
        wall = median([w for w, _ in samples])
        result[name] = {
            "wall_s": round(wall, 3),
            "cpu_s": round(median([c for _, c in samples]), 3),
            "messages_per_s": None if name == "linkmond_empty" else round(messages / wall),
            "walls": [round(w, 3) for w, _ in samples],
        }
    result["wall_ratio_linkmond_ip"] = round(
        result["linkmond"]["wall_s"] / result["ip"]["wall_s"], 2
    )
    result["rate_ratio_linkmond_ip"] = round(
        result["linkmond"]["messages_per_s"] / result["ip"]["messages_per_s"], 3
    )
    return result


def main() -> int:
    parser = bench_parser(__doc__)
    parser.add_argument("--routes", type=int, default=100_000, help="N (default 100000)")
    parser.add_argument("--repeat", type=int, default=5, help="timed runs of each command")
    args = parser.parse_args()
    require_root()
    try:
        r = run(args.routes, args.repeat)
    except RuntimeError as exc:
        return fail(exc)

    def table() -> None:
        print(
            f"replay of an rtmon recording: {r['messages']} netlink messages "
            f"({r['route_messages']} RTM_NEWROUTE, {r['timestamps']} rtmon timestamps), "
            f"medians of {r['repeat']} runs each"
        )
        print_table(
            ["command", "wall s", "cpu s", "messages/s"],
            [
                [cmd, r[key]["wall_s"], r[key]["cpu_s"], r[key]["messages_per_s"] or "-"]
                for cmd, key in (
                    ("python -m linkmond replay REC", "linkmond"),
                    ("ip monitor file REC", "ip"),
                    ("python -m linkmond replay EMPTY (startup)", "linkmond_empty"),
                )
            ],
        )
        print(
            f"linkmond/ip: wall time x{r['wall_ratio_linkmond_ip']}, "
            f"messages/s x{r['rate_ratio_linkmond_ip']}"
        )
        print(
            f"linkmond output: {r['linkmond_route_added']} of {r['routes']} routes as "
            f"route.added, {r['linkmond_missing']} missing, {r['linkmond_duplicates']} duplicates"
        )

    emit(args, r, table)
    return 1 if r["linkmond_missing"] or r["linkmond_duplicates"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
