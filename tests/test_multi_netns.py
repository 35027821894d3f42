"""Several network namespaces watched by one daemon (``[monitor] netns``, linkmond/watchers.py).

The daemon runs as a subprocess inside a throwaway namespace A (so its own namespace is
named A in /run/netns, and its events carry that name); the other namespaces the tests
watch (B, C, ...) are made by the tests and deleted afterwards. Every test waits for what
it expects with a deadline (an event in the file sink, a log line, a scrape), and ends a
phase with a barrier: a distinctive link added and removed in a namespace, whose events
show that everything that namespace announced before has been processed.

Without root only the validation of ``netns`` by ``check-config`` runs.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from linkmond.config import EX_CONFIG
from tests.helpers import IS_ROOT, NEEDS_ROOT, Daemon, NetNS, default_config, linkmond, wait_for
from tests.test_metrics import by_label, free_port, samples, scrape, value
from tests.test_reconcile import carrier, logged, logs, quiet_ipv6, running, wait_logged

#: the ``daemon.stopping`` reasons of a namespace let go of while the daemon runs on
REMOVED = "netns removed"
UNLISTED = "no longer in [monitor] netns"
NOT_THERE = "network namespace not there (yet): watched once it is added"

Event = dict[str, Any]


# -- helpers ---------------------------------------------------------------------------------------


def monitor(netns: list[str] | str) -> str:
    """A ``[monitor]`` table naming ``netns`` (a list of names, or ``"all"``)."""
    return f"\n[monitor]\nnetns = {json.dumps(netns)}\n"


def multi_config(workdir: Path, netns: list[str] | str, extra: str = "") -> str:
    """The helpers' file-sink config (debug JSON logs) watching ``netns``."""
    return default_config(workdir / "events.jsonl", monitor(netns) + extra)


def of(
    events: list[Event], netns: str, type_: str | None = None, subject: str | None = None
) -> list[Event]:
    """The events of namespace ``netns`` (of that type and subject, if given)."""
    return [
        e
        for e in events
        if e["netns"] == netns
        and (type_ is None or e["type"] == type_)
        and (subject is None or e["subject"] == subject)
    ]


def wait_in(
    daemon: Daemon,
    netns: str,
    type_: str,
    subject: str | None = None,
    *,
    after: int = 0,
    timeout: float = 10.0,
) -> Event:
    """The first event of ``type_`` (and ``subject``) in ``netns`` with a ``seq`` above
    ``after``, waited for."""
    return daemon.wait_event(
        lambda e: (
            e["netns"] == netns
            and e["type"] == type_
            and (subject is None or e["subject"] == subject)
            and e["seq"] > after
        ),
        timeout=timeout,
        what=f"{type_} {subject or ''} in {netns}",
    )


def barrier(daemon: Daemon, ns: NetNS) -> str:
    """:meth:`Daemon.barrier` in any watched namespace: an ifb link added and removed in
    ``ns``, both events waited for with ``ns``'s name; returns the link's name."""
    name = f"bar{uuid.uuid4().hex[:8]}"
    ns.ip("link", "add", name, "type", "ifb")
    wait_in(daemon, ns.name, "link.added", name)
    ns.ip("link", "del", name)
    wait_in(daemon, ns.name, "link.removed", name)
    return name


def changes(events: list[Event], netns: str) -> list[tuple[str, str]]:
    """(type, subject) of ``netns``'s events other than the daemon's own and the barriers'."""
    return sorted(
        (e["type"], e["subject"])
        for e in of(events, netns)
        if not e["type"].startswith("daemon.") and not e["subject"].startswith("bar")
    )


def saved(daemon: Daemon, netns: str, **counts: int) -> list[dict[str, Any]]:
    """The daemon's ``state saved`` log lines for ``netns`` (with these table counts)."""
    return [
        entry
        for entry in logged(daemon, "state saved")
        if entry.get("netns") == netns and all(entry.get(k) == n for k, n in counts.items())
    ]


def cable(ns: NetNS) -> None:
    """A veth pair ``lm0`` (ifindex 100) / ``lm0p`` (101) in ``ns``, both ends up: the same
    names and indexes in every namespace, to show that they are told apart by the netns."""
    ns.ip("link", "add", "lm0", "index", "100", "type", "veth", "peer", "name", "lm0p")
    ns.ip("link", "set", "lm0", "up")
    ns.ip("link", "set", "lm0p", "up")


def cabled(*namespaces: NetNS) -> None:
    """:func:`cable` in each namespace (no IPv6 link-local addresses: only link events), and
    wait until ``lm0`` has carrier everywhere."""
    for ns in namespaces:
        quiet_ipv6(ns)
        cable(ns)
    wait_for(lambda: all(carrier(ns, "lm0") for ns in namespaces), what="carrier on lm0")


def reload(daemon: Daemon, config: str) -> None:
    """Rewrite the daemon's config and send it SIGHUP (our own child, by PID)."""
    assert daemon.proc is not None
    daemon.config_path.write_text(config)
    daemon.proc.send_signal(signal.SIGHUP)


def assert_consecutive(events: list[Event]) -> None:
    """One ``seq`` sequence for the whole daemon: 1, 2, 3, ... whatever the namespace."""
    seqs = [e["seq"] for e in events]
    assert seqs == list(range(1, len(events) + 1)), seqs


@pytest.fixture
def ns_b() -> Iterator[NetNS]:
    """A second namespace (B), deleted afterwards."""
    if not IS_ROOT:
        pytest.skip(NEEDS_ROOT)
    other = NetNS()
    try:
        yield other
    finally:
        other.delete()


class LateNetNS(NetNS):
    """A namespace whose name is chosen now and which is added only by :meth:`add`
    (:meth:`delete` works whether or not it was)."""

    def __init__(self) -> None:
        self.name = f"lmtest-{uuid.uuid4().hex[:10]}"

    def add(self) -> None:
        subprocess.run(["ip", "netns", "add", self.name], check=True)
        self.ip("link", "set", "lo", "up")


@pytest.fixture
def late_ns() -> Iterator[LateNetNS]:
    """A namespace name not added yet (the test adds it); deleted afterwards if it was."""
    if not IS_ROOT:
        pytest.skip(NEEDS_ROOT)
    late = LateNetNS()
    try:
        yield late
    finally:
        late.delete()


# -- two namespaces at once ------------------------------------------------------------------------


@pytest.mark.netns
def test_two_namespaces_are_watched_at_once_and_kept_apart(
    ns: NetNS, ns_b: NetNS, daemon_factory: Callable[..., Daemon], tmp_path: Path
) -> None:
    a, b = ns.name, ns_b.name
    cabled(ns, ns_b)
    daemon = daemon_factory(multi_config(tmp_path, ["default", b]))
    wait_in(daemon, b, "daemon.started")

    # a cable pulled in B: reported as B's, and A (whose barrier shows it is up to date)
    # has seen nothing although its link has the same name and index
    ns_b.ip("link", "set", "lm0p", "down")
    lost_b = wait_in(daemon, b, "link.carrier_lost", "lm0")
    barrier(daemon, ns)
    assert changes(daemon.events(), a) == [], daemon.summary()

    ns.ip("link", "set", "lm0p", "down")
    lost_a = wait_in(daemon, a, "link.carrier_lost", "lm0")
    barrier(daemon, ns)
    barrier(daemon, ns_b)
    events = daemon.events()

    assert lost_a["data"]["ifindex"] == lost_b["data"]["ifindex"] == 100
    assert lost_a["data"]["ifname"] == lost_b["data"]["ifname"] == "lm0"
    assert lost_a["id"] != lost_b["id"]
    # the same change made in each namespace: the same events in each, each once
    assert changes(events, a) == changes(events, b), daemon.summary()
    assert Counter(changes(events, a))[("link.carrier_lost", "lm0")] == 1
    assert Counter(changes(events, b))[("link.carrier_lost", "lm0")] == 1
    assert {e["netns"] for e in events} == {a, b}

    started = [e for e in events if e["type"] == "daemon.started"]
    assert sorted(e["netns"] for e in started) == sorted([a, b])
    assert all(e["data"]["netns"] == e["netns"] for e in started)
    assert all(e["data"]["links_with_carrier"] >= 1 for e in started)
    assert_consecutive(events)


# -- netns = "all": namespaces added and deleted while running -------------------------------------


@pytest.mark.netns
def test_all_follows_a_namespace_added_and_lets_go_of_it_when_deleted(
    ns: NetNS, daemon_factory: Callable[..., Daemon], tmp_path: Path
) -> None:
    a = ns.name
    state = tmp_path / "state"  # the helper's STATE_DIRECTORY
    daemon = daemon_factory(multi_config(tmp_path, "all", '\n[daemon]\nsave_interval = "200ms"\n'))
    c = NetNS()
    try:
        started_c = wait_in(daemon, c.name, "daemon.started")
        assert started_c["data"]["netns"] == c.name
        # a cable from A into C: once C is gone for good, the kernel destroys its end and,
        # with it, A's end
        ns.ip("link", "add", "lmx", "type", "veth", "peer", "name", "lmxc", "netns", c.name)
        wait_in(daemon, a, "link.added", "lmx")
        added_c = wait_in(daemon, c.name, "link.added", "lmxc")
        assert added_c["seq"] > started_c["seq"]
        saved_c = state / f"state-{c.name}.jsonl"
        # saved with both links (lo, lmxc): nothing changes in C afterwards, nothing more is
        # saved (a save under way when C goes: see the test of that below)
        wait_for(lambda: saved(daemon, c.name, link=2), what=f"{saved_c} saved with lmxc")
        assert saved_c.is_file()
    finally:
        c.delete()

    stopping = wait_in(daemon, c.name, "daemon.stopping")
    assert stopping["data"]["reason"] == REMOVED
    assert stopping["seq"] > added_c["seq"]
    # C was really let go of (no descriptor, no socket left): the kernel destroyed it
    wait_in(daemon, a, "link.removed", "lmx", timeout=30)
    wait_for(lambda: not saved_c.exists(), what=f"{saved_c} removed")

    # the daemon runs on, and reports A's changes (once each)
    name = barrier(daemon, ns)
    assert daemon.proc is not None
    assert daemon.proc.poll() is None
    events = daemon.events()
    assert len(of(events, a, "daemon.started")) == 1  # A is in /run/netns too: watched once
    assert len(of(events, a, "link.added", name)) == 1
    assert len(of(events, a, "link.removed", name)) == 1
    assert len(of(events, a, "link.added", "lmx")) == 1
    assert len(of(events, a, "link.removed", "lmx")) == 1
    assert len(of(events, c.name, "daemon.started")) == 1
    assert len(of(events, c.name, "daemon.stopping")) == 1
    assert not [e for e in of(events, c.name) if e["seq"] > stopping["seq"]]
    assert_consecutive(events)


# -- a listed namespace that is not there yet ------------------------------------------------------


@pytest.mark.netns
def test_a_listed_namespace_absent_at_start_is_watched_once_it_is_added(
    ns: NetNS, late_ns: LateNetNS, daemon_factory: Callable[..., Daemon], tmp_path: Path
) -> None:
    daemon = daemon_factory(multi_config(tmp_path, ["default", late_ns.name]))
    warning = wait_logged(daemon, NOT_THERE)
    assert warning["netns"] == late_ns.name
    assert warning["level"] == "warning"
    assert not of(daemon.events(), late_ns.name)

    late_ns.add()
    started = wait_in(daemon, late_ns.name, "daemon.started")
    assert started["data"]["netns"] == late_ns.name
    late_ns.veth("lm0", "lm0p", up=False)
    added = wait_in(daemon, late_ns.name, "link.added", "lm0")
    assert added["seq"] > started["seq"]
    barrier(daemon, late_ns)
    assert len(of(daemon.events(), ns.name, "daemon.started")) == 1

    # deleted right after a change: the change, already queued on the daemon's socket, is
    # read and reported before the namespace's daemon.stopping
    late_ns.ip("link", "add", "lmlast", "type", "ifb")
    late_ns.delete()
    stopping = wait_in(daemon, late_ns.name, "daemon.stopping")
    assert stopping["data"]["reason"] == REMOVED
    last = of(daemon.events(), late_ns.name, "link.added", "lmlast")
    assert len(last) == 1, daemon.summary()
    assert last[0]["seq"] < stopping["seq"]
    daemon.barrier()  # the daemon goes on in its own namespace


# -- a namespace that cannot be entered ------------------------------------------------------------


class CaplessDaemon(Daemon):
    """The daemon without any capability: ``setpriv`` clears the inheritable, ambient and
    bounding sets, so the interpreter it executes has none (uid 0 but unprivileged: no
    CAP_SYS_ADMIN for setns, no CAP_NET_ADMIN, no CAP_DAC_OVERRIDE).

    Not ``nobody``: the interpreter lives under /root (mode 0700 here), which nobody
    cannot reach; as uid 0 the daemon can, and its work and state directories are its own.
    """

    def command(self) -> list[str]:
        command = super().command()
        at = command.index(sys.executable)
        drop = ["setpriv", "--inh-caps=-all", "--ambient-caps=-all", "--bounding-set=-all"]
        return [*command[:at], *drop, *command[at:]]


def effective_caps(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    line = next(ln for ln in status.splitlines() if ln.startswith("CapEff:"))
    return int(line.split()[1], 16)


@pytest.mark.netns
def test_a_namespace_that_cannot_be_entered_is_an_error_naming_it_and_the_rest_goes_on(
    ns: NetNS, ns_b: NetNS, tmp_path: Path
) -> None:
    daemon = CaplessDaemon(ns, tmp_path, multi_config(tmp_path, ["default", ns_b.name]))
    try:
        daemon.start()
        assert daemon.proc is not None
        assert effective_caps(daemon.proc.pid) == 0

        def errors() -> list[dict[str, Any]]:
            return [e for e in logs(daemon) if e.get("netns") == ns_b.name]

        found = wait_for(errors, what=f"an error naming {ns_b.name}")
        assert len(found) == 1, found
        error = found[0]
        assert error["level"] == "error"
        # /run/netns/B (an nsfs file, mode 0444) opens; setns without CAP_SYS_ADMIN fails
        assert error["event"].startswith("cannot enter network namespace"), error
        assert "CAP_SYS_ADMIN" in error["event"]
        assert error["error"] == "Operation not permitted", error
        assert "exception" not in error  # an expected failure, no traceback
        assert "Traceback" not in daemon.stderr()

        # the daemon runs on in its own namespace
        ns.veth("lm0", "lm0p", up=False)
        wait_in(daemon, ns.name, "link.added", "lm0")
        daemon.barrier()
        events = daemon.events()
        assert not of(events, ns_b.name)
        assert [e["netns"] for e in events if e["type"] == "daemon.started"] == [ns.name]
    finally:
        assert daemon.stop() == 0, daemon.stderr()[-2000:]


# -- metrics from two namespaces -------------------------------------------------------------------


@pytest.mark.netns
def test_the_metrics_carry_each_namespaces_links_and_counts(
    ns: NetNS, ns_b: NetNS, daemon_factory: Callable[..., Daemon], tmp_path: Path
) -> None:
    a, b = ns.name, ns_b.name
    cabled(ns, ns_b)
    port = free_port(ns)
    listen = f'\n[metrics]\nlisten = "127.0.0.1:{port}"\n'
    daemon = daemon_factory(multi_config(tmp_path, ["default", b], listen))
    wait_in(daemon, b, "daemon.started")
    ns_b.ip("link", "set", "lm0p", "down")
    wait_in(daemon, b, "link.carrier_lost", "lm0")

    def settled() -> tuple[str, dict[Any, float]] | None:
        text = scrape(ns, port)
        found = samples(text)
        lost = value(found, "linkmond_events_total", type="link.carrier_lost", netns=b)
        down = value(found, "linkmond_link_carrier", ifname="lm0", netns=b)
        return (text, found) if lost == 1 and down == 0 else None

    text, found = wait_for(settled, what="B's lost carrier in the metrics")
    assert value(found, "linkmond_link_carrier", ifname="lm0", netns=b) == 0
    assert value(found, "linkmond_link_carrier", ifname="lm0", netns=a) == 1
    assert value(found, "linkmond_link_admin_up", ifname="lm0", netns=b) == 1
    assert value(found, "linkmond_events_total", type="link.carrier_lost", netns=b) == 1
    assert value(found, "linkmond_events_total", type="link.carrier_lost", netns=a) is None
    assert value(found, "linkmond_events_total", type="daemon.started", netns=a) == 1
    assert value(found, "linkmond_events_total", type="daemon.started", netns=b) == 1
    overflows = by_label(found, "linkmond_netlink_overflows_total", "netns")
    assert overflows == {a: 0, b: 0}

    # for the record (pytest -s)
    wanted = (
        "linkmond_link_carrier{",
        "linkmond_events_total{",
        "linkmond_netlink_overflows_total{",
    )
    excerpt = [ln for ln in text.splitlines() if ln.startswith(wanted)]
    print("\n--- /metrics excerpt (daemon in A, netns = [default, B]) ---")
    print(f"A = {a}\nB = {b}")
    print("\n".join(excerpt))


# -- changes missed while stopped, per namespace ---------------------------------------------------


@pytest.mark.netns
def test_a_change_in_another_namespace_while_stopped_is_reconciled_at_start(
    ns: NetNS, ns_b: NetNS, tmp_path: Path
) -> None:
    a, b = ns.name, ns_b.name
    cabled(ns, ns_b)
    state = tmp_path / "state"
    watch = monitor(["default", b])
    with running(ns, tmp_path / "run1", state, watch) as first:
        wait_in(first, b, "daemon.started")
    assert (state / f"state-{a}.jsonl").is_file()
    assert (state / f"state-{b}.jsonl").is_file()

    ns_b.ip("link", "set", "lm0p", "down")
    wait_for(lambda: not carrier(ns_b, "lm0"), what="lm0 in B without carrier")

    with running(ns, tmp_path / "run2", state, watch) as second:
        started_b = wait_in(second, b, "daemon.started")
        lost = wait_in(second, b, "link.carrier_lost", "lm0")
        wait_for(
            lambda: len(logged(second, "reconciled the saved state with the kernel")) == 2,
            what="both namespaces reconciled",
        )
        barrier(second, ns)
        barrier(second, ns_b)
        events = second.events()
    assert lost["data"]["resync"] is True
    assert lost["seq"] > started_b["seq"]
    assert lost["data"]["changes"]["carrier"] == [True, False]
    # nothing changed in A; in B the cable pulled (its peer downed), nothing else
    assert [e for e in of(events, a) if e["data"].get("resync")] == []
    resynced = [e for e in of(events, b) if e["data"].get("resync")]
    assert ("link.carrier_lost", "lm0") in changes(resynced, b)
    # every one about the cable (lm0p's multicast route went with its admin down)
    assert {e["data"]["ifname"] for e in resynced} == {"lm0", "lm0p"}, changes(resynced, b)
    assert_consecutive(events)


# -- reload ----------------------------------------------------------------------------------------


@pytest.mark.netns
def test_a_reload_starts_and_stops_watching_a_namespace(
    ns: NetNS, ns_b: NetNS, daemon_factory: Callable[..., Daemon], tmp_path: Path
) -> None:
    a, b = ns.name, ns_b.name
    cabled(ns_b)
    daemon = daemon_factory(multi_config(tmp_path, ["default"]))

    reload(daemon, multi_config(tmp_path, ["default", b]))
    started = wait_in(daemon, b, "daemon.started")
    assert started["data"]["netns"] == b
    ns_b.ip("link", "set", "lm0p", "down")
    wait_in(daemon, b, "link.carrier_lost", "lm0", after=started["seq"])

    reload(daemon, multi_config(tmp_path, ["default"]))
    stopping = wait_in(daemon, b, "daemon.stopping")
    assert stopping["data"]["reason"] == UNLISTED

    # B's changes from now on are not reported; A's are
    ns_b.ip("link", "set", "lm0p", "up")
    wait_for(lambda: carrier(ns_b, "lm0"), what="lm0 in B with carrier again")
    ns_b.ip("link", "add", "lmlate", "type", "ifb")
    barrier(daemon, ns)
    events = daemon.events()
    assert [e for e in of(events, b) if e["seq"] > stopping["seq"]] == [], daemon.summary()
    assert len(of(events, a, "daemon.started")) == 1  # the own namespace was not restarted
    assert not of(events, a, "daemon.stopping")
    assert_consecutive(events)


# -- letting go of a namespace: its saved state -------------------------------------------------


@pytest.mark.netns
def test_a_namespace_dropped_and_listed_again_by_reloads_reports_no_change_twice(
    ns: NetNS, ns_b: NetNS, daemon_factory: Callable[..., Daemon], tmp_path: Path
) -> None:
    b = ns_b.name
    cabled(ns_b)
    only_at_start = "\n[daemon]\nsave_interval = 0\n"  # the fresh save at start, then at stop
    daemon = daemon_factory(multi_config(tmp_path, ["default", b], only_at_start))
    wait_in(daemon, b, "daemon.started")
    wait_for(lambda: saved(daemon, b), what="B's state saved at start")
    ns_b.ip("link", "set", "lm0p", "down")
    wait_in(daemon, b, "link.carrier_lost", "lm0")  # delivered live

    reload(daemon, multi_config(tmp_path, ["default"], only_at_start))
    stopping = wait_in(daemon, b, "daemon.stopping")
    # nothing changes in B while it is not watched
    reload(daemon, multi_config(tmp_path, ["default", b], only_at_start))
    again = wait_in(daemon, b, "daemon.started", after=stopping["seq"])
    barrier(daemon, ns_b)
    repeated = [e for e in of(daemon.events(), b) if e["seq"] > again["seq"]]
    assert changes(repeated, b) == [], "reported again, with resync: true"


def inotify_created(directory: Path) -> Any:
    """An inotify instance (pyroute2's, as the daemon uses) reporting files created in
    ``directory``; close it."""
    from pyroute2.inotify.inotify_fd import Inotify

    ino = Inotify(path=[])
    ino.bind()
    ino.register_path(str(directory), 0x100)  # IN_CREATE
    return ino


def wait_created(ino: Any, match: Callable[[str], bool], timeout: float = 10.0) -> str:
    """Block until a file whose name ``match``es is created (inotify: no polling delay)."""
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        if not select.select([ino.fd], [], [], left)[0]:
            break
        for msg in ino.parse(os.read(ino.fd, 65536)):
            if msg["name"] and match(msg["name"]):
                return str(msg["name"])
    raise AssertionError(f"no matching file created within {timeout}s")


@pytest.mark.netns
def test_a_save_under_way_when_the_namespace_goes_leaves_no_state_file(
    ns: NetNS, ns_b: NetNS, daemon_factory: Callable[..., Daemon], tmp_path: Path
) -> None:
    b = ns_b.name
    # enough routes in B for its save to take a few dozen slices
    ns_b.ip("link", "add", "d0", "type", "ifb")
    ns_b.ip("link", "set", "d0", "up")
    ns_b.ip("addr", "add", "2001:db8::1/64", "dev", "d0", "nodad")
    batch = "".join(
        f"route add 2001:db8:1:{i:x}::/64 via 2001:db8::2 dev d0\n" for i in range(40000)
    )
    subprocess.run(["ip", "-n", b, "-batch", "-"], input=batch, text=True, check=True)
    state = tmp_path / "state"  # the helper's STATE_DIRECTORY
    every = '\n[daemon]\nsave_interval = "200ms"\n'
    daemon = daemon_factory(multi_config(tmp_path, ["default", b], every))
    assert daemon.proc is not None
    wait_in(daemon, b, "daemon.started", timeout=30)
    wait_for(lambda: saved(daemon, b), timeout=30, what="B's first save")
    saved_b = state / f"state-{b}.jsonl"

    def temporary(name: str) -> bool:
        return name.startswith(f".{saved_b.name}.") and name.endswith(".tmp")

    ino = inotify_created(state)
    try:
        ns_b.ip("route", "add", "2001:db8:2::/48", "via", "2001:db8::3", "dev", "d0")
        wait_created(ino, temporary)  # B's next save has begun: hold the daemon right there
        daemon.proc.send_signal(signal.SIGSTOP)
        try:
            ns_b.delete()
        finally:
            daemon.proc.send_signal(signal.SIGCONT)
    finally:
        ino.close()
    stopping = wait_in(daemon, b, "daemon.stopping")
    assert stopping["data"]["reason"] == REMOVED
    wait_for(lambda: not any(temporary(p.name) for p in state.iterdir()), what="the save over")
    # the save under way puts its file in place, then finds the namespace gone and removes it
    wait_for(lambda: not saved_b.exists(), what=f"{saved_b} removed after the save under way")
    assert daemon.stop() == 0
    assert not saved_b.exists(), "a state file of a deleted namespace was left behind"


@pytest.mark.netns
def test_removing_the_state_of_a_deleted_namespace_is_logged_for_what_it_is(
    ns: NetNS, ns_b: NetNS, daemon_factory: Callable[..., Daemon], tmp_path: Path
) -> None:
    saved_b = tmp_path / "state" / f"state-{ns_b.name}.jsonl"
    daemon = daemon_factory(multi_config(tmp_path, ["default", ns_b.name]))
    wait_in(daemon, ns_b.name, "daemon.started")
    wait_for(saved_b.is_file, what="B's state saved at start")
    ns_b.delete()
    wait_in(daemon, ns_b.name, "daemon.stopping")
    wait_for(lambda: not saved_b.exists(), what="B's state removed")
    removal = "the network namespace was deleted: removed the saved state"
    wait_for(
        lambda: [e for e in logs(daemon) if e.get("event") == removal],
        what="the removal logged",
    )
    about = [e for e in logs(daemon) if e.get("path") == str(saved_b)]
    # reconcile_on_start is on (the default): no log line may say it is off
    assert not [e for e in about if "reconcile_on_start is off" in e["event"]], about
    assert [e["event"] for e in about if "removed the saved state" in e["event"]] == [removal]


# -- the configuration (no root needed) ------------------------------------------------------------


def check_config(tmp_path: Path, netns: str) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "linkmond.toml"
    path.write_text(
        f"[monitor]\nnetns = {netns}\n\n"
        f'[sinks.file]\ntype = "file"\npath = "{tmp_path / "events.jsonl"}"\n'
    )
    return linkmond("check-config", "-c", str(path))


@pytest.mark.parametrize(
    ("netns", "reason"),
    [
        ('"blue"', """expected "all" or a list of names, got 'blue' (netns = ["blue"]?)"""),
        ("[]", 'expected "all" or a non-empty list of names, got []'),
        ('["a", "all"]', '"all" stands alone: netns = "all"'),
        ('["a/b"]', "'a/b' is not a name of /run/netns"),
        ('["a", "a"]', "'a' is listed twice"),
    ],
)
def test_check_config_rejects_a_bad_netns_in_one_line(
    tmp_path: Path, netns: str, reason: str
) -> None:
    result = check_config(tmp_path, netns)
    assert result.returncode == EX_CONFIG == 78
    assert result.stdout == ""
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert ": monitor.netns: " in lines[0]
    assert reason in lines[0], lines[0]


@pytest.mark.parametrize(
    ("netns", "effective"), [('"all"', "all"), ('["default", "blue"]', ["default", "blue"])]
)
def test_check_config_accepts_all_and_a_list_of_names(
    tmp_path: Path, netns: str, effective: Any
) -> None:
    result = check_config(tmp_path, netns)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["monitor"]["netns"] == effective


@pytest.mark.netns
def test_a_namespace_deleted_while_its_cache_is_filled_holds_nothing_up(
    ns: NetNS, ns_b: NetNS, daemon_factory: Callable[..., Daemon], tmp_path: Path
) -> None:
    """B is deleted during its first dump (200k routes: it takes a while): its start ends
    there, unannounced; the daemon's own start completes and SIGTERM ends it as usual."""
    b = ns_b.name
    ns_b.ip("link", "add", "d0", "type", "ifb")
    ns_b.ip("link", "set", "d0", "up")
    batch = "".join(
        f"route add 10.{i >> 16}.{i >> 8 & 255}.{i & 255}/32 dev d0\n" for i in range(200000)
    )
    subprocess.run(["ip", "-n", b, "-batch", "-"], input=batch, text=True, check=True)
    daemon = daemon_factory(multi_config(tmp_path, ["default", b]), start=False)
    daemon.start(wait_started=False)
    saved_b = str(tmp_path / "state" / f"state-{b}.jsonl")
    wait_for(
        lambda: [e for e in logs(daemon) if e.get("path") == saved_b],
        timeout=30,
        what="B's start under way (its saved state looked for)",
    )
    ns_b.delete()
    started = wait_for(
        lambda: [e for e in logs(daemon) if e.get("event") == "started"],
        timeout=30,
        what="the daemon's start completed",
    )
    assert started[0]["netns"] == [ns.name], started
    assert daemon.stop() == 0, daemon.stderr()[-2000:]
    about_b = [(e["type"], e["netns"]) for e in daemon.events() if e["netns"] == b]
    # B either never started (deleted during its dump) or started and was let go of: never
    # a daemon.stopping without its daemon.started
    assert about_b in ([], [("daemon.started", b), ("daemon.stopping", b)]), about_b
