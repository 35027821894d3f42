"""Changes made while the daemon was stopped: the saved state, reconciled at the next start.

The daemon saves its cache to the state directory (linkmond.snapshot) and, at the next start,
reports every difference from the kernel as its normal event flagged ``resync``, after
``daemon.started``. The first part runs the real daemon twice in a throwaway namespace with
changes in between; a state file that is corrupt, from another boot or namespace, or a
planted symlink, is set aside with a warning and the daemon starts fresh. The second part
holds the save/load round trip, the file checks and the scheduler's reconciliation round to
their word without a kernel.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import socket
import stat
import subprocess
import sys
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from pyroute2.netlink.rtnl.rtmsg import rtmsg

from linkmond import rtnl
from linkmond.config import ConfigError, parse_config
from linkmond.routes import SEPARATOR, Hop, Route
from linkmond.safefile import UnsafeFileError, open_read
from linkmond.scheduler import Dump
from linkmond.snapshot import (
    FORMAT,
    VERSION,
    Identity,
    StateFile,
    Unusable,
    identity,
    other_boot,
    restore,
)
from linkmond.state import TABLES, Scope, State
from tests.helpers import ROOT, Daemon, NetNS, default_config, wait_for
from tests.test_scheduler import Recorder
from tests.test_state import (
    BASE,
    LOWER,
    UP,
    _decode,
    addr,
    link,
    neigh,
    netconf,
    route,
    rule,
)

# -- the daemon, stopped and started again --------------------------------------------------


def config(workdir: Path, state: Path, extra: str = "") -> str:
    """One file sink of every event, debug JSON logs, the given state directory."""
    return default_config(
        workdir / "events.jsonl", f'\n[daemon]\nstate_directory = "{state}"\n{extra}'
    )


@contextlib.contextmanager
def running(ns: NetNS, workdir: Path, state: Path, extra: str = "") -> Iterator[Daemon]:
    """The daemon in ``ns`` with its own work directory (events, logs), started and waited
    for; stopped by SIGTERM at the end (a failing test too)."""
    workdir.mkdir(parents=True, exist_ok=True)
    daemon = Daemon(ns, workdir, config(workdir, state, extra))
    try:
        # the config's state_directory, not the one the helper gives each work directory
        yield daemon.start(env={"STATE_DIRECTORY": ""})
    finally:
        assert daemon.stop() == 0, daemon.stderr()[-2000:]


def logs(daemon: Daemon) -> list[dict[str, Any]]:
    """The daemon's own log lines (JSON on stderr)."""
    lines = []
    for line in daemon.stderr().splitlines():
        with contextlib.suppress(ValueError):
            lines.append(json.loads(line))
    return lines


def logged(daemon: Daemon, message: str) -> list[dict[str, Any]]:
    return [entry for entry in logs(daemon) if entry.get("event") == message]


def wait_logged(daemon: Daemon, message: str) -> dict[str, Any]:
    found = wait_for(lambda: logged(daemon, message), timeout=20, what=f"log {message!r}")
    return found[0]  # type: ignore[no-any-return]


def state_path(state: Path, ns: NetNS) -> Path:
    return state / f"state-{ns.name}.jsonl"


def after_start(daemon: Daemon) -> list[dict[str, Any]]:
    """This run's events after daemon.started, barrier links left out."""
    events = daemon.events()
    started = next(i for i, e in enumerate(events) if e["type"] == "daemon.started")
    return [e for e in events[started + 1 :] if not e["subject"].startswith("bar")]


def pairs(events: list[dict[str, Any]]) -> set[tuple[str, str]]:
    return {(e["type"], e["subject"]) for e in events}


@pytest.fixture
def peer_ns() -> Iterator[NetNS]:
    """A second namespace: the far ends of the test's cables, so that pulling one leaves
    nothing but its near end changed in the daemon's namespace."""
    if os.geteuid() != 0:
        pytest.skip("needs root to create network namespaces (CI runs as root)")
    other = NetNS()
    try:
        yield other
    finally:
        other.delete()


def cable(ns: NetNS, peer_ns: NetNS, name: str) -> None:
    """A veth ``name`` in ``ns`` whose peer ``<name>p`` is in ``peer_ns``, both ends up."""
    ns.ip("link", "add", name, "type", "veth", "peer", "name", f"{name}p", "netns", peer_ns.name)
    ns.ip("link", "set", name, "up")
    peer_ns.ip("link", "set", f"{name}p", "up")


def quiet_ipv6(ns: NetNS) -> None:
    """No link-local addresses (nor the multicast neighbours they bring) on new links."""
    ns.run("sysctl", "-qw", "net.ipv6.conf.all.addr_gen_mode=1")
    ns.run("sysctl", "-qw", "net.ipv6.conf.default.addr_gen_mode=1")


def carrier(ns: NetNS, name: str) -> bool:
    out = ns.ip("-o", "link", "show", name).stdout
    return "LOWER_UP" in out and "NO-CARRIER" not in out


@pytest.mark.netns
def test_changes_made_while_stopped_arrive_at_start_as_their_events_flagged_resync(
    ns: NetNS, peer_ns: NetNS, tmp_path: Path
) -> None:
    quiet_ipv6(ns)
    cable(ns, peer_ns, "lm0")
    cable(ns, peer_ns, "lm1")
    ns.ip("addr", "add", "192.0.2.1/24", "dev", "lm0")
    ns.ip("addr", "add", "198.51.100.1/24", "dev", "lm1")
    ns.ip("addr", "add", "198.51.100.2/24", "dev", "lm1")
    ns.ip("addr", "add", "2001:db8::1/64", "dev", "lm1", "nodad")
    ns.ip("route", "add", "2001:db8:7::/48", "via", "2001:db8::ff", "dev", "lm1")
    wait_for(lambda: carrier(ns, "lm0") and carrier(ns, "lm1"), what="carrier on lm0 and lm1")
    state = tmp_path / "state"
    with running(ns, tmp_path / "run1", state) as first:
        started = first.wait_event(lambda e: e["type"] == "daemon.started")
        assert started["data"]["links_with_carrier"] >= 3
    saved = state_path(state, ns)
    assert saved.is_file()

    # while it is stopped: a cable pulled, addresses and routes changed
    peer_ns.ip("link", "set", "lm0p", "down")
    ns.ip("addr", "del", "198.51.100.2/24", "dev", "lm1")
    ns.ip("addr", "add", "198.51.100.3/24", "dev", "lm1")
    ns.ip("route", "add", "192.0.2.128/25", "via", "198.51.100.254", "dev", "lm1")
    ns.ip("route", "del", "2001:db8:7::/48", "via", "2001:db8::ff", "dev", "lm1")
    wait_for(lambda: not carrier(ns, "lm0"), what="lm0 without carrier")

    expected = {
        ("link.carrier_lost", "lm0"),
        ("addr.removed", "lm1"),  # 198.51.100.2
        ("addr.added", "lm1"),  # 198.51.100.3
        ("route.removed", "198.51.100.2/32"),  # its local route
        ("route.added", "198.51.100.3/32"),
        ("route.added", "192.0.2.128/25"),
        ("route.removed", "2001:db8:7::/48"),
    }
    with running(ns, tmp_path / "run2", state) as second:
        wait_for(lambda: expected <= pairs(after_start(second)), what="every missed change")
        wait_logged(second, "reconciled the saved state with the kernel")
        second.barrier()
        events = second.events()
        reconciled = after_start(second)
        loaded = logged(second, "saved state loaded; reconciling it with the kernel")
    assert len(loaded) == 1
    assert loaded[0]["path"] == str(saved)
    # daemon.started first, as in every run; then the changes, each once, nothing else
    assert events[0]["type"] == "daemon.started"
    assert events[0]["seq"] == 1
    assert sorted((e["type"], e["subject"]) for e in reconciled) == sorted(expected)
    assert all(e["data"]["resync"] is True for e in reconciled)
    lost = next(e for e in reconciled if e["type"] == "link.carrier_lost")
    assert lost["data"]["changes"]["carrier"] == [True, False]
    assert lost["data"]["admin_up"] is True
    addresses = {(e["type"], e["data"]["address"]) for e in reconciled if e["type"][:5] == "addr."}
    assert addresses == {("addr.removed", "198.51.100.2"), ("addr.added", "198.51.100.3")}
    gone = next(e for e in reconciled if e["subject"] == "2001:db8:7::/48")
    assert gone["data"]["gateway"] == "2001:db8::ff"
    assert gone["data"]["ifname"] == "lm1"


class HiddenProcDaemon(Daemon):
    """The daemon with /proc as the unit's ``ProcSubset=pid`` leaves it: no /proc/sys, so no
    boot ID (a /proc mounted ``subset=pid`` in a mount namespace of its own)."""

    def command(self) -> list[str]:
        hide = 'mount -t proc -o subset=pid proc /proc && exec "$0" "$@"'
        run = [sys.executable, "-m", "linkmond", "run", "-c", str(self.config_path)]
        return ["ip", "netns", "exec", self.ns.name, "unshare", "--mount", "sh", "-c", hide, *run]


@pytest.mark.netns
def test_with_the_boot_id_hidden_as_under_the_unit_changes_are_still_reconciled(
    ns: NetNS, peer_ns: NetNS, tmp_path: Path
) -> None:
    quiet_ipv6(ns)
    cable(ns, peer_ns, "lm0")
    wait_for(lambda: carrier(ns, "lm0"), what="carrier on lm0")
    state = tmp_path / "state"
    runs = []
    for run in ("run1", "run2"):
        (tmp_path / run).mkdir()
        daemon = HiddenProcDaemon(ns, tmp_path / run, config(tmp_path / run, state))
        runs.append(daemon)
        try:
            daemon.start(env={"STATE_DIRECTORY": ""})
            if run == "run2":
                daemon.wait_event(lambda e: e["type"] == "link.carrier_lost", what="the loss")
                wait_logged(daemon, "reconciled the saved state with the kernel")
                daemon.barrier()
        finally:
            assert daemon.stop() == 0, daemon.stderr()[-2000:]
        if run == "run1":
            header = orjson.loads(state_path(state, ns).read_bytes().split(b"\n", 1)[0])
            assert header["boot_id"] == ""  # hidden indeed
            peer_ns.ip("link", "set", "lm0p", "down")
            wait_for(lambda: not carrier(ns, "lm0"), what="lm0 without carrier")
    reconciled = [e for e in after_start(runs[1]) if e["type"] != "daemon.stopping"]
    assert [(e["type"], e["subject"], e["data"]["resync"]) for e in reconciled] == [
        ("link.carrier_lost", "lm0", True)
    ]


@pytest.mark.netns
def test_a_restart_with_nothing_changed_reports_nothing(ns: NetNS, tmp_path: Path) -> None:
    quiet_ipv6(ns)
    ns.veth("lm0", "lm0p")
    ns.ip("addr", "add", "192.0.2.1/24", "dev", "lm0")
    state = tmp_path / "state"
    with running(ns, tmp_path / "run1", state):
        pass
    with running(ns, tmp_path / "run2", state) as second:
        wait_logged(second, "reconciled the saved state with the kernel")
        second.barrier()
        assert after_start(second) == []


def break_truncated(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def break_one_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    at = data.index(b'"lm0"') + 2
    data[at] = ord("x")  # still JSON, still the right types: only the checksum can tell
    path.write_bytes(bytes(data))


def break_version(path: Path) -> None:
    first, rest = path.read_bytes().split(b"\n", 1)
    header = orjson.loads(first)
    header["version"] = VERSION + 1
    path.write_bytes(orjson.dumps(header) + b"\n" + rest)


def break_boot(path: Path) -> None:
    first, rest = path.read_bytes().split(b"\n", 1)
    header = orjson.loads(first)
    header["boot_id"] = "00000000-0000-4000-8000-000000000000"
    path.write_bytes(orjson.dumps(header) + b"\n" + rest)


@pytest.mark.netns
@pytest.mark.parametrize(
    ("damage", "suffix", "reason"),
    [
        (break_truncated, ".corrupt", "truncated"),
        (break_one_byte, ".corrupt", "checksum"),
        (break_version, ".corrupt", f"format version {VERSION + 1}"),
        (break_boot, ".foreign", "another boot"),
    ],
)
def test_an_unusable_state_file_is_set_aside_with_a_warning_and_the_start_is_fresh(
    ns: NetNS, tmp_path: Path, damage: Any, suffix: str, reason: str
) -> None:
    ns.veth("lm0", "lm0p")
    state = tmp_path / "state"
    with running(ns, tmp_path / "run1", state):
        pass
    saved = state_path(state, ns)
    damage(saved)
    broken = saved.read_bytes()
    ns.ip("link", "set", "lm0p", "down")  # would be a carrier_lost, reconciled
    with running(ns, tmp_path / "run2", state) as second:
        warning = wait_logged(second, "saved state not usable: set aside; starting fresh")
        saved_now = wait_logged(second, "state saved")  # a fresh start saves at once
        second.barrier()
        assert after_start(second) == []
        started = second.events()[0]
    assert warning["level"] == "warning"
    assert warning["path"] == str(saved)
    assert reason in warning["reason"]
    assert warning["moved_to"] == str(saved) + suffix
    assert Path(str(saved) + suffix).read_bytes() == broken
    assert started["type"] == "daemon.started"
    assert saved_now["path"] == str(saved)
    assert not logged(second, "saved state loaded; reconciling it with the kernel")


@pytest.mark.netns
def test_a_state_file_of_another_namespace_is_set_aside(
    ns: NetNS, peer_ns: NetNS, tmp_path: Path
) -> None:
    """The file of ``ns``, put where the daemon in ``peer_ns`` looks: its interface indexes
    would mean other links there."""
    ns.veth("lm0", "lm0p")
    state = tmp_path / "state"
    with running(ns, tmp_path / "run1", state):
        pass
    planted = state_path(state, peer_ns)
    shutil.copyfile(state_path(state, ns), planted)
    planted.chmod(0o600)
    with running(peer_ns, tmp_path / "other", state) as other:
        warning = wait_logged(other, "saved state not usable: set aside; starting fresh")
        other.barrier()
        assert after_start(other) == []
    assert warning["path"] == str(planted)
    assert "another network namespace" in warning["reason"]
    assert Path(str(planted) + ".foreign").is_file()


@pytest.mark.netns
def test_reconcile_on_start_false_reports_nothing_and_keeps_no_state(
    ns: NetNS, tmp_path: Path
) -> None:
    ns.veth("lm0", "lm0p")
    state = tmp_path / "state"
    with running(ns, tmp_path / "run1", state):  # on: leaves a state behind
        pass
    saved = state_path(state, ns)
    assert saved.is_file()
    ns.ip("link", "set", "lm0p", "down")
    off = "\n[monitor]\nreconcile_on_start = false\n"
    with running(ns, tmp_path / "run2", state, off) as second:
        second.barrier()
        assert after_start(second) == []
        # the earlier run's state is removed: never to be reconciled later as if recent
        assert not saved.exists()
        assert logged(second, "reconcile_on_start is off: removed the saved state")
        ns.ip("link", "set", "lm0p", "up")
        second.wait_event(lambda e: e["type"] == "link.carrier_up", what="carrier_up (live)")
    assert not saved.exists()
    assert not logged(second, "state saved")
    assert list(state.iterdir()) == []


@pytest.mark.netns
def test_the_state_file_is_private_and_a_planted_symlink_is_never_followed(
    ns: NetNS, tmp_path: Path
) -> None:
    ns.veth("lm0", "lm0p")
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    saved = state_path(state, ns)
    target = tmp_path / "precious"
    target.write_text("not the daemon's\n")
    saved.symlink_to(target)  # before the start: not read through
    with running(ns, tmp_path / "run1", state) as first:
        warning = wait_logged(first, "saved state not usable: set aside; starting fresh")
        wait_logged(first, "state saved")
        # and planted again while it runs: the save at shutdown replaces the link itself
        saved.unlink()
        saved.symlink_to(target)
    assert "symlink" in warning["reason"]
    assert warning["moved_to"] == str(saved) + ".unsafe"
    assert target.read_text() == "not the daemon's\n"
    st = saved.lstat()
    assert stat.S_ISREG(st.st_mode)
    assert stat.S_IMODE(st.st_mode) == 0o600
    assert st.st_uid == os.geteuid()
    assert Path(str(saved) + ".unsafe").is_symlink()
    assert [p.name for p in state.iterdir() if p.name.endswith(".tmp")] == []
    with pytest.raises(UnsafeFileError):
        open_read(Path(str(saved) + ".unsafe"))


@pytest.mark.netns
def test_the_state_is_saved_every_save_interval_and_only_when_something_changed(
    ns: NetNS, tmp_path: Path
) -> None:
    ns.veth("lm0", "lm0p")
    state = tmp_path / "state"
    extra = 'save_interval = "200ms"\n'
    with running(ns, tmp_path / "run1", state, extra) as first:
        wait_logged(first, "state saved")
        ns.ip("link", "set", "lm0p", "down")
        first.wait_event(lambda e: e["type"] == "link.carrier_lost")
        wait_for(lambda: len(logged(first, "state saved")) >= 2, what="a second save")
        saved = state_path(state, ns).read_bytes()
        assert b'"ifname":"lm0","admin_up":true,"carrier":false' in saved
        # once the re-reads the admin-down asked for are over, nothing is read, nothing saved
        since = [time.monotonic(), len(logged(first, "state saved"))]

        def still() -> bool:  # no new save for a second: five intervals
            count = len(logged(first, "state saved"))
            if count != since[1]:
                since[:] = [time.monotonic(), count]
            return time.monotonic() - since[0] > 1.0

        wait_for(still, timeout=15, what="no more saves while nothing happens")


# -- the bench script ----------------------------------------------------------------------


@pytest.mark.netns
def test_bench_save_runs_at_a_smoke_size() -> None:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "save.py"), "--routes", "500", "--flips", "5"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "saving the state with 500 routes cached" in proc.stdout


# -- without a kernel: the file ------------------------------------------------------------


def rt(dst: str | None, dst_len: int, *, v6: bool = False, table: int = 254, **attrs: Any) -> Any:
    """A decoded RTM_NEWROUTE with these RTA_* attributes (``oif=3`` is RTA_OIF)."""
    fields = {
        "family": socket.AF_INET6 if v6 else socket.AF_INET,
        "dst_len": dst_len,
        "table": table,
        "proto": attrs.pop("proto", 4),
        "type": attrs.pop("type", 1),
        "scope": attrs.pop("scope", 0),
    }
    nla = [("RTA_TABLE", table), *((f"RTA_{k.upper()}", v) for k, v in attrs.items())]
    if dst is not None:
        nla.append(("RTA_DST", dst))
    return _decode(rtmsg, rtnl.RTM_NEWROUTE, fields, nla)


def multipath(dst: str, dst_len: int) -> Any:
    hops = [
        {"oif": 3, "attrs": [("RTA_GATEWAY", "192.0.2.254")]},
        {"oif": 4, "hops": 2, "attrs": [("RTA_GATEWAY", "198.51.100.254")]},
    ]
    fields = {"family": socket.AF_INET, "dst_len": dst_len, "table": 100, "proto": 4, "type": 1}
    attrs = [("RTA_DST", dst), ("RTA_TABLE", 100), ("RTA_MULTIPATH", hops), ("RTA_PRIORITY", 20)]
    return _decode(rtmsg, rtnl.RTM_NEWROUTE, fields, attrs)


def filled() -> tuple[State, list[Any]]:
    """A cache with something of every table (and the decoded messages that made it)."""
    messages = [
        link(BASE | UP | LOWER, "UP"),
        link(BASE | UP, "LOWERLAYERDOWN", index=4, ifname="lm1", master=3, mtu=9000),
        addr("192.0.2.1", 24),
        addr("2001:db8::1", 64, index=4),
        route("198.51.100.0", 24, gateway="192.0.2.254"),
        rt("198.51.100.0", 24, oif=3, gateway="192.0.2.253", priority=100),
        rt("198.51.100.0", 24, oif=3, gateway="192.0.2.252", priority=100),  # appended
        route(None, 0, gateway="192.0.2.254"),
        rt("192.0.2.7", 32, oif=4, table=255, type=2, scope=254, prefsrc="192.0.2.7"),
        rt("2001:db8:5::", 48, v6=True, oif=4, gateway="2001:db8::ff", proto=3),
        rt(None, 0, v6=True, type=7, oif=1),  # unreachable
        multipath("198.51.100.128", 25),
        neigh("192.0.2.254", 0x02),
        neigh("192.0.2.9", 0x80, lladdr=None),
        rule(100, 100, FRA_SRC="192.0.2.0", FRA_FWMARK=0x10, FRA_SUPPRESS_PREFIXLEN=0),
        rule(32766, 254),
        netconf(-1, forwarding=1, rp_filter=2, mc_forwarding=0),
        netconf(3, family=socket.AF_INET6, forwarding=0),
    ]
    state = State()
    for table, key, obj in messages:
        state.apply(table, key, obj, emit=False)
    # what the last event told of lm1 differs from its operstate now (a silent dump moved it)
    state.apply(*link(BASE | UP, "DOWN", index=4, ifname="lm1", master=3, mtu=9000))
    state.apply(*link(BASE | UP, "LOWERLAYERDOWN", index=4, ifname="lm1", master=3, mtu=9000))
    return state, messages


def save(state: State, path: Path, tables: Any = TABLES, **kw: Any) -> Any:
    return asyncio.run(
        StateFile(path.parent, path.stem.removeprefix("state-")).save(state, tables, **kw)
    )


def snapshot_of(state: State) -> dict[str, Any]:
    """Everything a saved state must give back, comparable."""
    routes = {key: state.routes.get(key) for key in state.routes}
    return {
        **{t: dict(state.tables[t]) for t in TABLES if t != "route"},
        "route": routes,
        "names": dict(state.names),
        "told": state.operstates_told(),
    }


def test_every_table_survives_a_save_and_a_load(tmp_path: Path) -> None:
    state, messages = filled()
    assert all(state.counts().values()), state.counts()
    path = tmp_path / "state-x.jsonl"
    report = save(state, path)
    assert report.counts == state.counts()
    assert report.bytes == path.stat().st_size
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    loaded = State()
    assert StateFile(tmp_path, "x").load(loaded, TABLES) == frozenset(TABLES)
    assert snapshot_of(loaded) == snapshot_of(state)
    # in the decoder's field order (the events show it), and the same to the diff: the
    # messages that made the cache change nothing in the loaded one
    for table in ("link", "addr", "neigh", "rule"):
        for key, obj in state.tables[table].items():
            assert list(loaded.tables[table][key]) == list(obj)
    for table, key, obj in messages[2:]:
        assert loaded.apply(table, key, obj) is None, (table, key)
    assert loaded.routes.get(messages[11][1]).nexthops == (  # type: ignore[union-attr]
        Hop("192.0.2.254", 3, 1),
        Hop("198.51.100.254", 4, 3),
    )


def test_a_loaded_state_diffs_like_the_cache_it_was(tmp_path: Path) -> None:
    state, _ = filled()
    path = tmp_path / "state-x.jsonl"
    save(state, path)
    loaded = State()
    StateFile(tmp_path, "x").load(loaded, TABLES)
    for message in (
        link(BASE | UP, "DOWN", index=4, ifname="lm1", master=3, mtu=9000),
        link(BASE, "DOWN"),
        link(BASE | UP | LOWER, "UP", index=4, ifname="lm1", mtu=1500),
        addr("192.0.2.1", 24, flags=0),
        rt("198.51.100.0", 24, oif=3, gateway="192.0.2.253", priority=100, proto=3),
        multipath("198.51.100.128", 25),
        neigh("192.0.2.254", 0x04),
        netconf(-1, forwarding=0),
        rule(32766, 254),
    ):
        expected = state.apply(*message, resync=True)
        assert loaded.apply(*message, resync=True) == expected, message
    assert snapshot_of(loaded) == snapshot_of(state)


def test_only_the_tables_watched_now_and_then_are_restored(tmp_path: Path) -> None:
    state, _ = filled()
    path = tmp_path / "state-x.jsonl"
    save(state, path, tables=("link", "addr", "route"))
    loaded = State()
    restored = StateFile(tmp_path, "x").load(loaded, ("link", "route", "neigh"))
    assert restored == {"link", "route"}
    assert loaded.counts() == {**dict.fromkeys(TABLES, 0), "link": 2, "route": 8}


def damaged(tmp_path: Path, edit: Any) -> tuple[State, StateFile, Path]:
    state, _ = filled()
    path = tmp_path / "state-x.jsonl"
    save(state, path)
    lines = path.read_bytes().split(b"\n")
    path.write_bytes(edit(lines))
    return State(), StateFile(tmp_path, "x"), path


def reseal(lines: list[bytes]) -> bytes:
    """Lines whose end record's checksum and counts are made right again: only the
    structural checks stand between them and the cache."""
    body = b"\n".join(lines[:-2]) + b"\n"
    end = orjson.loads(lines[-2])
    end["crc32"] = zlib.crc32(body)
    return body + orjson.dumps(end) + b"\n"


def swap_route_field(lines: list[bytes]) -> bytes:
    out = list(lines)
    i = next(i for i, line in enumerate(out) if line.startswith(b'["route",'))
    record = orjson.loads(out[i])
    record[1][0][3] = "eth0"  # ifindex as a string
    out[i] = orjson.dumps(record)
    return reseal(out)


def extra_link_field(lines: list[bytes]) -> bytes:
    out = list(lines)
    i = next(i for i, line in enumerate(out) if line.startswith(b'["link",'))
    record = orjson.loads(out[i])
    record[1][0]["__class__"] = "os.system"
    out[i] = orjson.dumps(record)
    return reseal(out)


def prefix_out_of_range(lines: list[bytes]) -> bytes:
    out = list(lines)
    i = next(i for i, line in enumerate(out) if line.startswith(b'["route",'))
    record = orjson.loads(out[i])
    record[1][0][1] = -1
    out[i] = orjson.dumps(record)
    return reseal(out)


def link_flags_not_strings(lines: list[bytes]) -> bytes:
    out = list(lines)
    i = next(i for i, line in enumerate(out) if line.startswith(b'["link",'))
    record = orjson.loads(out[i])
    record[1][0]["flags"] = [1]
    out[i] = orjson.dumps(record)
    return reseal(out)


def unknown_record(lines: list[bytes]) -> bytes:
    return reseal([lines[0], b'["pickle",[]]', *lines[1:]])


def lost_record(lines: list[bytes]) -> bytes:
    out = [line for line in lines if not line.startswith(b'["neigh",')]
    return reseal(out)


@pytest.mark.parametrize(
    ("edit", "reason"),
    [
        (lambda lines: b"\n".join(lines[:-2]) + b"\n", "truncated"),
        (lambda lines: b"\n".join(lines)[:-7], "truncated"),
        (lambda lines: b"", "truncated"),
        (lambda lines: b"\x80\x04\x95 pickle\n{}\n{}\n", "not a linkmond state file"),
        (lambda lines: reseal([lines[0], b"[", *lines[1:]]), "not JSON"),
        (lambda lines: b"\n".join([lines[0], b"[]", *lines[1:]]), "checksum"),
        (swap_route_field, "damaged route"),
        (prefix_out_of_range, "damaged route"),
        (extra_link_field, "unknown field '__class__'"),
        (link_flags_not_strings, "flags"),
        (unknown_record, "unknown record 'pickle'"),
        (lost_record, "incomplete"),
    ],
)
def test_a_damaged_file_is_corrupt_and_leaves_the_cache_empty(
    tmp_path: Path, edit: Any, reason: str
) -> None:
    loaded, state_file, path = damaged(tmp_path, edit)
    broken = path.read_bytes()
    assert state_file.load(loaded, TABLES) == frozenset()
    assert loaded.counts() == dict.fromkeys(TABLES, 0)
    assert loaded.names == {}
    assert not path.exists()
    assert Path(str(path) + ".corrupt").read_bytes() == broken
    with pytest.raises(Unusable, match=reason):
        restore(broken, State(), frozenset(TABLES), identity())


def test_a_file_of_another_boot_or_namespace_instance_is_foreign(tmp_path: Path) -> None:
    state, _ = filled()
    path = tmp_path / "state-x.jsonl"
    save(state, path)
    data = path.read_bytes()
    here = identity()
    assert here.boot_id
    for other in (
        here._replace(boot_id="another"),
        here._replace(ino=here.ino + 1),
        here._replace(dev=here.dev + 1),
        here._replace(cookie=(here.cookie or 0) + 1),
    ):
        with pytest.raises(Unusable) as caught:
            restore(data, State(), frozenset(TABLES), other)
        assert caught.value.suffix == ".foreign"
    header = orjson.loads(data.split(b"\n", 1)[0])
    assert header["format"] == FORMAT
    assert header["netns"] == {"name": "x", "dev": here.dev, "ino": here.ino, "cookie": here.cookie}
    # a kernel without namespace cookies on either side: device and inode decide
    restore(data, State(), frozenset(TABLES), here._replace(cookie=None))


def test_without_boot_ids_the_clocks_tell_the_boot() -> None:
    """Under the unit, ProcSubset=pid hides /proc/sys: no boot ID on either side."""
    saved = Identity("", 4, 4026531840, 1, boottime=100.0, realtime=1_000_000.0)
    later = 3600.0
    same = saved._replace(boottime=100.0 + later, realtime=1_000_000.0 + later + 0.5)
    assert other_boot(saved, same) is None
    assert other_boot(saved, same._replace(boot_id="44551e0b")) is None  # known on one side
    rebooted = saved._replace(boottime=30.0, realtime=1_000_000.0 + later)
    assert "boot clock started again" in (other_boot(saved, rebooted) or "")
    # up longer than the old boot was when it saved: the clocks part by that much and more
    long_up = saved._replace(boottime=200.0, realtime=1_000_000.0 + 400.0)
    assert "another boot" in (other_boot(saved, long_up) or "")
    stepped = same._replace(realtime=same.realtime + 60.0)  # the wall clock set meanwhile
    assert "wall clock" in (other_boot(saved, stepped) or "")
    # with both boot IDs the IDs decide, whatever the clocks say
    a, b = saved._replace(boot_id="a"), rebooted._replace(boot_id="a")
    assert other_boot(a, b) is None
    assert other_boot(a, b._replace(boot_id="b")) is not None


def test_no_file_is_a_fresh_start_and_the_file_is_never_created_by_reading(
    tmp_path: Path,
) -> None:
    state = State()
    assert StateFile(tmp_path / "nowhere", "x").load(state, TABLES) == frozenset()
    assert not (tmp_path / "nowhere").exists()


def test_a_save_into_a_symlink_at_the_path_replaces_the_link_not_its_target(
    tmp_path: Path,
) -> None:
    target = tmp_path / "target"
    target.write_text("keep\n")
    path = tmp_path / "state-x.jsonl"
    path.symlink_to(target)
    save(filled()[0], path)
    assert target.read_text() == "keep\n"
    assert stat.S_ISREG(path.lstat().st_mode)


def test_a_failed_save_leaves_the_old_file_and_no_temporary_file(tmp_path: Path) -> None:
    path = tmp_path / "state-x.jsonl"
    save(filled()[0], path)
    before = path.read_bytes()
    broken = State()
    broken.tables["link"][1] = {"ifindex": 1, "unserialisable": {1, 2}}  # a set: not JSON
    with pytest.raises(TypeError):
        save(broken, path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state-x.jsonl"]


def big(n: int) -> State:
    state = State()
    state.apply(*link(BASE | UP | LOWER, "UP"), emit=False)
    for i in range(n):
        dst = f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}/32"
        key = (2, 254, dst, None, 0, 0, (None, 3))
        state.routes.put(key, Route("inet", dst, None, None, 3, "main", "boot", "link",
                                    "unicast", 0, None, 0, None), False)  # fmt: skip
    return state


def test_a_save_holds_the_loop_in_short_slices_while_the_table_changes(tmp_path: Path) -> None:
    """The loop runs between slices (a table changing meanwhile is fine), the longest slice
    stays short, and the file loads."""
    state = big(60_000)
    ticks = 0

    async def main() -> Any:
        nonlocal ticks
        state_file = StateFile(tmp_path, "x")
        saving = asyncio.create_task(state_file.save(state, TABLES, slice_seconds=0.001))
        i = 0
        while not saving.done():  # the reader's stand-in: changes between the slices
            ticks += 1
            dst = f"172.16.{i >> 8 & 255}.{i & 255}/32"
            key = (2, 254, dst, None, 0, 0, (None, 3))
            route = Route("inet", dst, None, None, 3, "main", "boot", "link", "unicast",
                          0, None, 0, None)  # fmt: skip
            state.routes.put(key, route, False)
            gone = f"10.0.{i >> 8 & 255}.{i & 255}/32"
            state.routes.pop((2, 254, gone, None, 0, 0, (None, 3)))
            i += 1
            await asyncio.sleep(0)
        return saving.result()

    report = asyncio.run(main())
    assert report.slices > 10
    assert ticks >= report.slices
    assert report.longest_slice_ms < 50  # ~1-2 ms; generous for a loaded CI machine
    loaded = State()
    assert StateFile(tmp_path, "x").load(loaded, TABLES) == frozenset(TABLES)
    assert report.counts["route"] == len(loaded.routes)
    assert 50_000 < len(loaded.routes) <= 60_000 + ticks


def test_destinations_are_copied_in_steps_and_start_over_when_the_table_changes() -> None:
    state = big(1000)
    routes = state.routes

    def joined(copy: list[str]) -> list[str]:
        return [dst for piece in copy for dst in piece.split(SEPARATOR)]

    steps = routes.destinations_in_steps(step=300, piece=100)
    assert next(steps) is None
    # a destination added between steps: the copy starts over, and holds it
    routes.put((2, 254, "172.16.0.1/32", None, 0, 0, (None, 3)),
               Route("inet", "172.16.0.1/32", None, None, 3, "main", "boot", "link",
                     "unicast", 0, None, 0, None), False)  # fmt: skip
    rest = list(steps)
    assert all(step is None for step in rest[:-1])
    assert len(rest) == 4  # 1001 destinations, 300 a step
    assert joined(rest[-1]) == routes.destinations()
    # a table that never holds still: the keys taken in one go, joined in steps from there
    steps = routes.destinations_in_steps(step=300, piece=100, tries=2)
    popped = set()
    for step in steps:
        if step is not None:
            break
        popped.add(routes.destinations()[0])
        routes.pop((2, 254, routes.destinations()[0], None, 0, 0, (None, 3)))
    copy = joined(step)
    assert len(copy) == len(set(copy))
    # what was there all along is in it; what went meanwhile may be
    assert set(routes.destinations()) <= set(copy) <= set(routes.destinations()) | popped
    # an empty table: nothing
    assert list(State().routes.destinations_in_steps()) == [[]]


# -- without a kernel: the reconciliation round ------------------------------------------------


def scopes(recorder: Recorder) -> list[tuple[str, object]]:
    return [entry for entry in recorder.log if entry[0] in ("begin", "idle")]


def run_round(recorder: Recorder) -> None:
    """Answer every dump the scheduler asks for, each complete."""
    sched = recorder.scheduler
    while sched.current is not None:
        sched.done(0)


def test_reconcile_is_ready_at_once_and_reports_every_restored_table() -> None:
    rec = Recorder()
    sched = rec.scheduler
    sched.reconcile({"link", "addr", "route"})
    assert sched.ready
    assert sched.round_kind == "reconcile"
    emits = {}
    while sched.current is not None:
        emits[sched.current.table] = sched.current.emit
        sched.done(0)
    assert emits == {"link": True, "addr": True, "route": True, "neigh": False}
    assert rec.log[-1] == ("idle", True)
    assert sched.quiet == set()
    # a later overflow round reports every table, the one filled silently too
    rec.overflow()
    assert sched.round_kind == "overflow"
    emits = {}
    while sched.current is not None:
        emits[sched.current.table] = sched.current.emit
        sched.done(0)
    assert emits == dict.fromkeys(("link", "addr", "route", "neigh"), True)


def test_an_overflow_during_reconciliation_is_one_more_round_of_its_own() -> None:
    rec = Recorder()
    sched = rec.scheduler
    ended: list[str] = []  # the kind of each round as it ends
    idle = sched.idle
    sched.idle = lambda round_: (ended.append(sched.round_kind), idle(round_))  # type: ignore[func-returns-value]
    sched.reconcile({"link", "addr", "route", "neigh"})
    sched.done(0)  # link
    rec.overflow()  # the reconciliation goes on; another round follows it
    tables = []
    while sched.current is not None:
        tables.append(sched.current.table)
        sched.done(0)
    assert tables == ["addr", "route", "neigh", "link", "addr", "route", "neigh"]
    assert ended == ["reconcile", "overflow"]
    assert [entry for entry in rec.log if entry[0] == "idle"] == [("idle", True), ("idle", True)]


def test_a_reset_during_reconciliation_carries_on_reconciling() -> None:
    rec = Recorder()
    sched = rec.scheduler
    sched.reconcile({"link", "addr", "route", "neigh"})
    sched.done(0)  # link
    sched.check_stall()
    sched.current.drained = True  # type: ignore[union-attr]
    sched.check_stall()  # stalled: a fresh socket and the round again
    assert ("reset", "addr dump stalled") in rec.log
    assert sched.round_kind == "reconcile"
    assert sched.current is not None
    assert sched.current.table == "link"


def test_a_reread_during_reconciliation_waits_behind_the_full_dump_it_is_part_of() -> None:
    rec = Recorder()
    sched = rec.scheduler
    sched.reconcile({"link", "addr", "route", "neigh"})
    sched.reread("route", socket.AF_INET, 3, settle=True)
    assert [d.scope for d in sched.queue].count(Scope("route")) == 1
    assert Dump(Scope("route")).covers(Scope("route", socket.AF_INET, 3))
    assert len(sched.queue) == 3  # covered by the queued full route dump


# -- configuration -----------------------------------------------------------------------------


def test_the_new_keys_are_strictly_typed_with_their_defaults() -> None:
    base = '[sinks.c]\ntype = "console"\n'
    default = parse_config(base)
    assert default.monitor.reconcile_on_start is True
    assert default.daemon.save_interval == 300.0
    custom = parse_config(
        base + '[monitor]\nreconcile_on_start = false\n[daemon]\nsave_interval = "1m"\n'
    )
    assert custom.monitor.reconcile_on_start is False
    assert custom.daemon.save_interval == 60.0
    assert parse_config(base + "[daemon]\nsave_interval = 0\n").daemon.save_interval == 0
    with pytest.raises(ConfigError, match=r"monitor\.reconcile_on_start"):
        parse_config(base + '[monitor]\nreconcile_on_start = "yes"\n')
    with pytest.raises(ConfigError, match=r"daemon\.save_interval"):
        parse_config(base + '[daemon]\nsave_interval = "-1s"\n')


def test_the_boot_id_systemd_passes_is_the_one_proc_shows(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # the unit's Environment=LINKMOND_BOOT_ID=%b: 32 hex digits, /proc's UUID without dashes
    from_proc = identity().boot_id
    with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as f:
        dashed = f.read().strip()
    assert from_proc == dashed.replace("-", "")
    monkeypatch.setenv("LINKMOND_BOOT_ID", dashed.replace("-", "").upper())
    assert identity().boot_id == from_proc
    # a state saved with the dashed form (before the unit passed it) is of this boot too
    saved = identity()._replace(boot_id=dashed)
    assert other_boot(saved, identity()) is None
    monkeypatch.setenv("LINKMOND_BOOT_ID", "0" * 32)
    assert other_boot(saved, identity()) is not None
