"""Helpers shared by the benchmarks that run the real daemon in a throwaway network namespace.

Only linkmond's public interfaces are used: ``python -m linkmond run -c FILE`` as a subprocess,
the JSON-lines file it writes, and ``python -m linkmond replay FILE``. Nothing here imports
linkmond itself, so a benchmark measures whatever daemon is in the tree.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
DEFAULT_CONFIG = ROOT / "config" / "linkmond.toml"
CLK_TCK = os.sysconf("SC_CLK_TCK")

# Addresses used inside the namespaces (which have no uplink; nothing is ever sent to them):
# the link addresses and sentinel routes come from the documentation ranges (RFC 5737), the
# bulk host routes from 10.0.0.0/8, the only range big enough for a million /32s.
SENTINEL_PREFIX = "203.0.113."
MAX_ROUTES = (1 << 24) - 2


def require_root() -> None:
    if os.geteuid() != 0:
        sys.exit("needs root (it creates a network namespace)")


def host_route(i: int) -> str:
    """The ``i``-th bulk route (0-based): 10.0.0.1/32, 10.0.0.2/32, …"""
    n = i + 1
    return f"10.{n >> 16 & 255}.{n >> 8 & 255}.{n & 255}/32"


def route_set(n: int) -> set[str]:
    """Every bulk route's destination, as linkmond names it in ``subject`` (``a.b.c.d/32``)."""
    if n > MAX_ROUTES:
        raise ValueError(f"at most {MAX_ROUTES} routes fit in 10.0.0.0/8")
    return {host_route(i) for i in range(n)}


def write_batch(path: Path, n: int, dev: str, verb: str = "route add") -> None:
    """An ``ip -batch`` file that adds the ``n`` bulk routes through ``dev``."""
    with path.open("w") as f:
        f.writelines(f"{verb} {host_route(i)} dev {dev}\n" for i in range(n))


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0 to 100) by nearest rank; NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * q // 100))  # ceil
    return ordered[int(min(rank, len(ordered))) - 1]


def print_table(headers: Sequence[str], rows: Iterable[Sequence[object]]) -> None:
    """A plain-text table: first column left-aligned, the others right-aligned."""
    cells = [[str(h) for h in headers], *([_fmt(c) for c in row] for row in rows)]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]

    def line(r: list[str]) -> str:
        first = r[0].ljust(widths[0])
        return "  ".join([first, *(c.rjust(w) for c, w in zip(r[1:], widths[1:], strict=True))])

    print(line(cells[0]))
    print("  ".join("-" * w for w in widths))
    for r in cells[1:]:
        print(line(r))


def _fmt(value: object) -> str:
    if isinstance(value, float):
        if math.isnan(value):
            return "-"
        if value.is_integer():
            return str(int(value))
        return str(round(value, 3))
    return str(value)


class NetNS:
    """A uniquely named network namespace ``lmbench-<uuid>`` with lo up; a context manager that
    always deletes it (and with it every interface in it)."""

    def __init__(self) -> None:
        self.name = f"lmbench-{uuid.uuid4().hex[:12]}"

    def __enter__(self) -> NetNS:
        subprocess.run(["ip", "netns", "add", self.name], check=True)
        try:
            self.ip("link", "set", "lo", "up")
        except BaseException:
            self.delete()
            raise
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.delete()

    def delete(self) -> None:
        subprocess.run(["ip", "netns", "del", self.name], check=False, capture_output=True)

    def ip(self, *args: str) -> None:
        """``ip -n NS ARGS``; raises with ip's message on failure."""
        proc = subprocess.run(
            ["ip", "-n", self.name, *args], check=False, capture_output=True, text=True
        )
        if proc.returncode:
            raise RuntimeError(f"ip -n {self.name} {' '.join(args)}: {proc.stderr.strip()}")

    def argv(self, *cmd: str) -> list[str]:
        """``cmd`` run inside the namespace (``ip netns exec`` execs it: same PID)."""
        return ["ip", "netns", "exec", self.name, *cmd]

    def veth(self, name: str, peer: str, addr: str | None = None) -> None:
        """A veth pair, both ends up (so ``name`` has carrier), ``addr`` on ``name``."""
        self.ip("link", "add", name, "type", "veth", "peer", "name", peer)
        self.ip("link", "set", peer, "up")
        self.ip("link", "set", name, "up")
        if addr:
            self.ip("addr", "add", addr, "dev", name)

    def batch(self, path: Path) -> float:
        """Run ``ip -batch PATH`` in the namespace; the wall seconds it took."""
        t0 = time.perf_counter()
        proc = subprocess.run(
            ["ip", "-n", self.name, "-batch", str(path)],
            check=False,
            capture_output=True,
            text=True,
        )
        elapsed = time.perf_counter() - t0
        if proc.returncode:
            raise RuntimeError(f"ip -batch {path}: {proc.stderr.strip()[-2000:]}")
        return elapsed


def stop_process(
    proc: subprocess.Popen[Any], sig: int = signal.SIGTERM, timeout: float = 30
) -> None:
    """Stop a child we started, by its PID: ``sig``, then SIGKILL after ``timeout`` s."""
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class Daemon:
    """``python -m linkmond run`` in a namespace, on a copy of the shipped default config.

    The working directory is ``workdir``, so the config's relative ``var/events.jsonl`` (the
    file sink) and ``var/lib`` land there. The console sink's stdout goes to /dev/null, the
    daemon's own logs (stderr) to ``workdir/daemon.stderr``.
    """

    def __init__(self, ns: NetNS, workdir: Path, config: Path = DEFAULT_CONFIG) -> None:
        self.ns = ns
        self.workdir = workdir
        self.config = workdir / "linkmond.toml"
        shutil.copyfile(config, self.config)
        self.events_path = workdir / "var" / "events.jsonl"
        self.stderr_path = workdir / "daemon.stderr"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 60) -> Daemon:
        """Start it and wait until ``daemon.started`` is in the file."""
        cmd = self.ns.argv(PYTHON, "-m", "linkmond", "run", "-c", str(self.config))
        with self.stderr_path.open("wb") as err:
            self.proc = subprocess.Popen(
                cmd, cwd=self.workdir, stdout=subprocess.DEVNULL, stderr=err
            )
        tail = Tail(self.events_path)
        deadline = time.monotonic() + timeout
        while not any(b'"daemon.started"' in line for line in tail.lines()):
            self.check_alive()
            if time.monotonic() > deadline:
                raise RuntimeError(f"no daemon.started within {timeout}s: {self.stderr()}")
            time.sleep(0.02)
        # `ip netns exec` execs the command, so our child's PID is the Python process itself
        cmdline = Path(f"/proc/{self.proc.pid}/cmdline").read_bytes().split(b"\0")
        if b"linkmond" not in cmdline or b"run" not in cmdline:
            raise RuntimeError(f"PID {self.proc.pid} is not the daemon: {cmdline!r}")
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def check_alive(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(f"daemon exited with {self.proc.returncode}: {self.stderr()}")

    def stderr(self) -> str:
        try:
            return self.stderr_path.read_text(errors="replace")[-3000:]
        except FileNotFoundError:
            return ""

    def cpu_seconds(self) -> float:
        """utime + stime of the daemon (all its threads) from /proc/PID/stat."""
        stat = Path(f"/proc/{self.pid}/stat").read_text()
        fields = stat.rsplit(")", 1)[1].split()  # fields 3… (the name may hold spaces)
        return (int(fields[11]) + int(fields[12])) / CLK_TCK

    def peak_rss_mib(self) -> float:
        """VmHWM (peak resident set) from /proc/PID/status."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def stop(self) -> int | None:
        """SIGTERM (the daemon drains its sinks), SIGKILL if it has not exited in 30 s."""
        if self.proc is None:
            return None
        stop_process(self.proc)
        return self.proc.returncode


class Tail:
    """Reads a growing file incrementally: complete lines only, from ``offset`` on."""

    def __init__(self, path: Path, offset: int = 0) -> None:
        self.path = path
        self.offset = offset
        self.partial = b""  # the start of a line not yet complete
        self._fd: int | None = None

    def read(self) -> bytes:
        """The bytes appended since the last call (possibly ending mid-line)."""
        if self._fd is None:
            try:
                self._fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError:
                return b""
        chunks = []
        while chunk := os.pread(self._fd, 1 << 20, self.offset):
            chunks.append(chunk)
            self.offset += len(chunk)
        return b"".join(chunks)

    def lines(self) -> list[bytes]:
        """The complete lines appended since the last call."""
        data = self.partial + self.read()
        *complete, self.partial = data.split(b"\n")
        return complete

    @property
    def line_offset(self) -> int:
        """Where the next complete line will start."""
        return self.offset - len(self.partial)

    def skip_to_end(self) -> None:
        self.read()
        self.partial = b""

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def wait_for_lines(tail: Tail, match: bytes, timeout: float, what: str, daemon: Daemon) -> None:
    """Wait until a line containing ``match`` appears (the lines before it are consumed)."""
    deadline = time.monotonic() + timeout
    while True:
        if any(match in line for line in tail.lines()):
            return
        daemon.check_alive()
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} not in the events file within {timeout}s")
        time.sleep(0.01)


def barrier(ns: NetNS, daemon: Daemon, tail: Tail, host: int, timeout: float = 60) -> None:
    """Add sentinel route 203.0.113.HOST/32 and wait for its ``route.added``: every kernel
    message sent before it has then been processed (events are written in order)."""
    dst = f"{SENTINEL_PREFIX}{host}/32"
    ns.ip("route", "add", dst, "dev", "lo")
    wait_for_lines(tail, f'"{dst}"'.encode(), timeout, f"sentinel route {dst}", daemon)


def load_routes(ns: NetNS, daemon: Daemon, tail: Tail, n: int, dev: str, work: Path) -> None:
    """Add the N bulk routes through ``dev`` by ``ip -batch`` and wait until every one is in
    the events file as ``route.added`` (``tail`` is then past them)."""
    if not n:
        return
    batch = work / "routes.batch"
    write_batch(batch, n, dev)
    acc = Account(daemon.events_path, tail.line_offset, "route.added", route_set(n))
    ns.batch(batch)
    last, seen = time.monotonic(), 0
    while acc.update().missing:
        if acc.unique != seen:
            last, seen = time.monotonic(), acc.unique
        if time.monotonic() - last > 30:
            raise RuntimeError(f"only {acc.unique} of {n} routes reached the events file")
        daemon.check_alive()
        time.sleep(0.1)
    acc.close()
    tail.skip_to_end()


def wait_monitor_ready(ns: NetNS, out: Path, timeout: float = 10) -> None:
    """Wait until an ``ip monitor route`` writing to ``out`` is listening: add sentinel routes
    203.0.113.10… until it prints one (it has no other sign of having subscribed)."""
    deadline = time.monotonic() + timeout
    for host in range(10, 250):
        dst = f"{SENTINEL_PREFIX}{host}"
        ns.ip("route", "add", f"{dst}/32", "dev", "lo")
        until = time.monotonic() + 0.2
        while time.monotonic() < until:
            if f"{dst} ".encode() in out.read_bytes():
                return
            time.sleep(0.01)
        if time.monotonic() > deadline:
            break
    raise RuntimeError(f"ip monitor printed no sentinel route within {timeout} s")


@dataclass
class Arrival:
    """When the events of one type arrived in the file, observed by polling its size."""

    polls: list[tuple[float, int]] = field(default_factory=list)  # (time, file offset reached)
    complete: bool = False  # the wanted count of lines arrived (else: the file went quiet)

    def time_of(self, offset: int) -> float:
        """The time of the first poll that had read past byte ``offset``."""
        for t, end in self.polls:
            if end > offset:
                return t
        return float("nan")


def await_lines(
    tail: Tail,
    token: bytes,
    wanted: int,
    daemon: Daemon,
    quiet: float = 30.0,
    interval: float = 0.005,
    verify: Callable[[], bool] | None = None,
) -> Arrival:
    """Poll the file until ``wanted`` lines containing ``token`` have appeared (and
    ``verify()``, if given, agrees), or nothing new arrived for ``quiet`` seconds.

    Counting a token in the raw bytes keeps this loop cheap: on 2 cores it competes with the
    daemon and the kernel for CPU. Records (time, offset) at every poll that saw growth.
    """
    arrival = Arrival()
    seen = 0
    last_growth = time.monotonic()
    while True:
        data = tail.read()
        now = time.time()
        if data:
            arrival.polls.append((now, tail.offset))
            seen += data.count(token)
            last_growth = time.monotonic()
            if seen >= wanted and (verify is None or verify()):
                arrival.complete = True
                return arrival
        elif time.monotonic() - last_growth > quiet:
            return arrival
        daemon.check_alive()
        time.sleep(interval)


class Account:
    """Which of the wanted subjects appeared as events of one type, how often, how flagged.

    :meth:`update` parses the events file incrementally from where it stopped last time, so
    calling it while the file grows costs only the new lines.
    """

    def __init__(self, path: Path, start: int, etype: str, wanted: set[str]) -> None:
        self.wanted = wanted
        self.etype = etype
        self.counts: dict[str, int] = {}
        self.first_offset: dict[str, int] = {}  # byte offset of each subject's first event
        self.resync: dict[str, bool] = {}  # data.resync of each subject's first event
        self._tail = Tail(path, start)
        self._token = f'"{etype}"'.encode()

    def update(self) -> Account:
        offset = self._tail.line_offset
        for line in self._tail.lines():
            if self._token in line:
                self._count(line, offset)
            offset += len(line) + 1
        return self

    def _count(self, line: bytes, offset: int) -> None:
        try:
            event = json.loads(line)
        except ValueError:
            return
        if not isinstance(event, dict) or event.get("type") != self.etype:
            return
        subject = event.get("subject")
        if subject not in self.wanted:
            return
        if subject not in self.counts:
            self.counts[subject] = 0
            self.first_offset[subject] = offset
            self.resync[subject] = bool((event.get("data") or {}).get("resync"))
        self.counts[subject] += 1

    @property
    def unique(self) -> int:
        return len(self.counts)

    @property
    def missing(self) -> int:
        return len(self.wanted) - self.unique

    @property
    def duplicates(self) -> int:
        return sum(self.counts.values()) - self.unique

    @property
    def resynced(self) -> int:
        return sum(self.resync.values())

    @property
    def live(self) -> int:
        return self.unique - self.resynced

    @property
    def last_first_offset(self) -> int:
        """Where the last wanted subject first appeared (completing the set); -1 if none."""
        return max(self.first_offset.values(), default=-1)

    def close(self) -> None:
        self._tail.close()


def iter_lines(path: Path, start: int = 0) -> Iterator[bytes]:
    """The file's lines from byte ``start`` (without their newlines)."""
    try:
        f = path.open("rb")
    except FileNotFoundError:
        return
    with f:
        f.seek(start)
        for line in f:
            yield line.rstrip(b"\n")


HOST_ROUTE_LINE = re.compile(rb"^(?:\[[^\]]*\]\s*)?(10\.\d+\.\d+\.\d+)\s")


def monitor_routes(path: Path) -> set[str]:
    """The bulk routes an ``ip -o monitor route`` output file announced as added."""
    found = set()
    for line in iter_lines(path):
        m = HOST_ROUTE_LINE.match(line)
        if m:
            found.add(m.group(1).decode() + "/32")
    return found


def count_lines(path: Path, token: bytes, start: int = 0) -> int:
    """How many lines from byte ``start`` on contain ``token``."""
    return sum(1 for line in iter_lines(path, start) if token in line)


def print_runs(metrics: Sequence[tuple[str, str]], runs: Sequence[dict[str, Any]]) -> None:
    """One row per metric (key, label), one column per run, and the median if runs > 1."""
    many = len(runs) > 1
    headers = ["metric", *(f"run {i + 1}" for i in range(len(runs)))] if many else ["metric", ""]
    if many:
        headers.append("median")
    rows = []
    for key, label in metrics:
        values = [r.get(key) for r in runs]
        row: list[object] = [label, *("-" if v is None else v for v in values)]
        if many:
            nums = [v for v in values if isinstance(v, int | float) and not isinstance(v, bool)]
            row.append(median(nums) if len(nums) == len(values) else "-")
        rows.append(row)
    print_table(headers, rows)


def medians(runs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The median of every numeric field over the runs."""
    out: dict[str, Any] = {}
    for key in runs[0] if runs else ():
        values = [r.get(key) for r in runs]
        if all(isinstance(v, int | float) and not isinstance(v, bool) for v in values):
            out[key] = median(values)  # type: ignore[arg-type]
    return out


def report_route_runs(
    args: Any, title: str, metrics: Sequence[tuple[str, str]], runs: Sequence[dict[str, Any]]
) -> int:
    """Print (or ``--json``) the runs of a route benchmark with their notes; the exit status
    is 1 if any run missed or doubled a route."""

    def table() -> None:
        print(title)
        print_runs(metrics, runs)
        for i, r in enumerate(runs):
            for note in r["notes"]:
                print(f"run {i + 1}: {note}")

    emit(args, {"routes": args.routes, "runs": runs, "median": medians(runs)}, table)
    return 1 if any(r["missing"] or r["duplicates"] for r in runs) else 0


def emit(args: Any, result: dict[str, Any], table: Callable[[], None]) -> None:
    """``--json``: the result as one JSON object; else ``table()`` prints the plain table."""
    if getattr(args, "json", False):
        print(json.dumps(_no_nan(result), indent=2))
    else:
        table()


def _no_nan(value: Any) -> Any:
    """NaN (no sample) as null: strict JSON has no NaN."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _no_nan(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_no_nan(v) for v in value]
    return value


def fail(exc: Exception) -> int:
    """Report a run that could not be measured (the daemon died, never wrote an event, …)."""
    print(f"{Path(sys.argv[0]).name}: error: {exc}", file=sys.stderr)
    return 2


def bench_parser(doc: str | None) -> argparse.ArgumentParser:
    """A benchmark's options: its docstring's first paragraph as help, and ``--json``."""
    parser = argparse.ArgumentParser(
        description=(doc or "").split("\n\n", maxsplit=1)[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--json", action="store_true", help="one JSON object instead of a table")
    return parser


def route_args(doc: str) -> argparse.Namespace:
    """The options storm.py and flush.py share: N routes, repeats, patience, --json."""
    parser = bench_parser(doc)
    parser.add_argument("--routes", type=int, default=100_000, help="N (default 100000)")
    parser.add_argument("--repeat", type=int, default=1, help="runs, each in a new namespace")
    parser.add_argument("--quiet", type=float, default=30.0, help="give up after S s of nothing")
    parser.add_argument(
        "--settle", type=float, default=3.0, help="wait S s more for late duplicates (default 3)"
    )
    return parser.parse_args()


def collect(
    ns: NetNS,
    daemon: Daemon,
    tail: Tail,
    acc: Account,
    quiet: float,
    settle: float,
    notes: list[str],
) -> Arrival:
    """Wait until every route ``acc`` wants is in the file (or nothing new came for ``quiet``
    s), then past a barrier and ``settle`` s more, so late duplicates count too."""
    token = f'"{acc.etype}"'.encode()
    arrival = await_lines(
        tail, token, len(acc.wanted), daemon, quiet, verify=lambda: acc.update().missing == 0
    )
    if not arrival.complete:
        notes.append(f"gave up: nothing new in the file for {quiet:g} s")
    try:  # whatever the kernel said before this is in the file: late duplicates too
        barrier(ns, daemon, tail, 2)
    except RuntimeError as exc:
        notes.append(str(exc))
    time.sleep(settle)  # late re-reads (resync passes) may still report, or repeat
    return arrival
