"""DumpScheduler: which dump runs when, with a fake socket that records the requests.

The kernel side of these rules (a real NLM_F_DUMP_INTR, a real stall) is hard to provoke on
demand; the scheduler's decisions are pure, so they are tested here one by one.
"""

from __future__ import annotations

import errno
from collections.abc import Callable

import pytest

from linkmond.scheduler import (
    MAX_DUMP_ATTEMPTS,
    MAX_SETTLE_PASSES,
    SETTLE_DELAY,
    Dump,
    DumpScheduler,
)
from linkmond.state import Scope

TABLES = ("link", "addr", "route", "neigh")


class FakeSocket:
    """Records dump requests; ``fail`` makes the next requests raise."""

    def __init__(self, name: str = "sock0") -> None:
        self.name = name
        self.requests: list[tuple[str, int, int | None]] = []
        self.fail: list[OSError] = []

    def request_dump(self, table: str, family: int = 0, oif: int | None = None) -> int:
        if self.fail:
            raise self.fail.pop(0)
        self.requests.append((table, family, oif))
        return len(self.requests)


class Recorder:
    """A scheduler wired to a fake socket, with every callback recorded.

    ``removed`` says how many entries the next sweeps remove (default 0); timers asked for
    with ``later`` wait in :attr:`timers` until the test fires them.
    """

    def __init__(self, tables: tuple[str, ...] = TABLES, filtered: bool = True) -> None:
        self.sock = FakeSocket()
        self.sockets = [self.sock]
        self.log: list[tuple[str, object]] = []
        self.removed: list[int] = []
        self.timers: list[tuple[float, Callable[..., None], tuple[object, ...]]] = []
        self.scheduler = DumpScheduler(
            self.sock,
            tables,
            begin=lambda d: self.log.append(("begin", _scope(d))),
            finish=self._finish,
            idle=lambda round_: self.log.append(("idle", round_)),
            reset=self._reset,
            later=lambda delay, fn, *args: self.timers.append((delay, fn, args)),
            filtered=filtered,
        )

    def _finish(self, dump: Dump, sweep: bool) -> int:
        self.log.append(("sweep" if sweep else "abort", _scope(dump)))
        return (self.removed.pop(0) if self.removed else 0) if sweep else 0

    def overflow(self) -> None:
        """Notifications were lost, and the notification socket was then read empty."""
        self.scheduler.overflow()
        self.scheduler.notifications_drained()

    def fire_timers(self) -> None:
        timers, self.timers = self.timers, []
        for _delay, fn, args in timers:
            fn(*args)

    def _reset(self, reason: str) -> None:
        self.log.append(("reset", reason))
        self.sock = FakeSocket(f"sock{len(self.sockets)}")
        self.sockets.append(self.sock)
        self.scheduler.sock = self.sock

    def finish_all(self) -> None:
        """Answer every dump with NLMSG_DONE until the scheduler is idle."""
        while self.scheduler.current is not None:
            self.scheduler.part(interrupted=False)
            self.scheduler.done(0)

    def ready(self) -> Recorder:
        self.scheduler.initial()
        self.finish_all()
        self.log.clear()
        return self


def _scope(dump: Dump) -> tuple[str, int, int | None]:
    return (dump.scope.table, dump.scope.family, dump.scope.oif)


def test_initial_dumps_every_table_silently_then_is_ready() -> None:
    r = Recorder()
    r.scheduler.initial()
    assert r.scheduler.current is not None
    assert not r.scheduler.current.emit
    r.finish_all()
    assert r.sock.requests == [(t, 0, None) for t in TABLES]
    assert r.log[-1] == ("idle", False)
    assert r.scheduler.ready
    assert r.scheduler.counters.full == len(TABLES)


def test_interrupted_dump_is_retried_then_kept_without_a_sweep() -> None:
    r = Recorder().ready()
    r.scheduler.reread("route", 2, 7)
    for _ in range(MAX_DUMP_ATTEMPTS):
        assert r.scheduler.current is not None
        r.scheduler.part(interrupted=True)
        r.scheduler.done(0)
    assert r.sock.requests[-MAX_DUMP_ATTEMPTS:] == [("route", 2, 7)] * MAX_DUMP_ATTEMPTS
    # every attempt was aborted: an interrupted dump may have skipped entries, so nothing is
    # removed on its word, not even after the last attempt
    assert [kind for kind, _ in r.log] == ["begin", "abort"] * MAX_DUMP_ATTEMPTS + ["idle"]
    assert r.scheduler.current is None


def test_interrupted_then_clean_dump_sweeps() -> None:
    r = Recorder().ready()
    r.scheduler.reread("neigh", 10, 3)
    r.scheduler.part(interrupted=True)
    r.scheduler.done(0)
    r.scheduler.part(interrupted=False)
    r.scheduler.done(0)
    assert [kind for kind, _ in r.log] == ["begin", "abort", "begin", "sweep", "idle"]


def test_stalled_dump_gets_a_fresh_socket_and_a_full_resync() -> None:
    r = Recorder().ready()
    r.scheduler.reread("route", 2, 7)
    r.scheduler.part(interrupted=False)
    r.scheduler.drained()
    r.scheduler.check_stall()  # first look: remembers the parts count
    assert len(r.sockets) == 1
    r.scheduler.check_stall()  # nothing since, and the socket was read empty: stalled
    assert len(r.sockets) == 2
    assert ("reset", "route dump stalled") in r.log
    assert ("abort", ("route", 2, 7)) in r.log
    # the new socket re-dumps every table (reported: missed changes become events)
    assert r.sockets[1].requests[0] == ("link", 0, None)
    assert r.scheduler.in_overflow_round
    assert r.scheduler.current.emit
    r.finish_all()
    assert r.sockets[1].requests == [(t, 0, None) for t in TABLES]
    assert r.log[-1] == ("idle", True)


def test_a_paused_reader_or_a_dump_still_sending_is_not_a_stall() -> None:
    r = Recorder().ready()
    r.scheduler.reread("route", 2, 7)
    r.scheduler.drained()
    r.scheduler.check_stall()
    r.scheduler.check_stall(reading=False)  # the reader is paused: the dump waits for us
    r.scheduler.part(interrupted=False)  # more parts came
    r.scheduler.check_stall()
    r.scheduler.part(interrupted=False)
    r.scheduler.check_stall()  # parts keep coming, the socket was not read empty since
    assert len(r.sockets) == 1


@pytest.mark.parametrize("code", [errno.ENOBUFS, errno.EBUSY])
def test_enobufs_or_ebusy_answering_the_request_resets_and_resyncs(code: int) -> None:
    r = Recorder().ready()
    r.scheduler.reread("route", 2, 7)
    r.scheduler.done(-code)
    assert len(r.sockets) == 2
    assert r.sockets[1].requests == [("link", 0, None)]
    r.finish_all()
    assert r.log[-1] == ("idle", True)


def test_enobufs_before_ready_refills_silently() -> None:
    r = Recorder()
    r.scheduler.initial()
    r.scheduler.done(-errno.ENOBUFS)  # the link dump's answer
    assert len(r.sockets) == 2
    assert r.scheduler.current is not None
    assert not r.scheduler.current.emit
    r.finish_all()
    assert r.log[-1] == ("idle", False)


def test_a_request_the_socket_refuses_resets_then_gives_up() -> None:
    r = Recorder().ready()
    r.sock.fail = [OSError(errno.ENOBUFS, "No buffer space available")]
    r.scheduler.reread("route", 2, 7)
    assert len(r.sockets) == 2  # a fresh socket took over with a full resync
    r.finish_all()
    assert r.log[-1] == ("idle", True)
    # sockets that refuse every request: bounded, no endless reset loop
    r2 = Recorder().ready()
    original_reset = r2._reset

    def reset_to_a_refusing_socket(reason: str) -> None:
        original_reset(reason)
        r2.sock.fail = [OSError(errno.EPERM, "refused")] * 10

    r2.scheduler.reset = reset_to_a_refusing_socket
    r2.sock.fail = [OSError(errno.EPERM, "refused")]
    r2.scheduler.reread("route", 2, 7)
    assert r2.scheduler.current is None
    assert len(r2.sockets) <= MAX_DUMP_ATTEMPTS + 2


def test_overflow_during_a_resync_means_one_more_round() -> None:
    r = Recorder().ready()
    r.overflow()
    assert r.scheduler.in_overflow_round
    r.scheduler.done(0)  # link
    r.overflow()  # lost notifications again, mid-round
    r.overflow()  # and again: still one more round, not two
    r.finish_all()
    idles = [entry for entry in r.log if entry[0] == "idle"]
    assert idles == [("idle", True), ("idle", True)]
    assert r.sock.requests.count(("link", 0, None)) == 3  # the initial fill and two rounds
    assert r.scheduler.counters.full == len(TABLES) * 3


def test_overflow_round_replaces_queued_targeted_dumps() -> None:
    r = Recorder().ready()
    r.scheduler.reread("route", 2, 7)  # running
    r.scheduler.reread("neigh", 2, 7)  # queued
    r.overflow()
    r.finish_all()
    assert ("neigh", 2, 7) not in r.sock.requests  # the full round covered it
    assert r.sock.requests[-len(TABLES) :] == [(t, 0, None) for t in TABLES]


def test_targeted_dump_requested_while_a_full_one_runs_is_queued() -> None:
    r = Recorder().ready()
    r.overflow()  # a full round: link dump running
    r.scheduler.done(0)  # link done; addr running
    r.scheduler.done(0)  # route running now
    assert r.scheduler.current is not None
    assert r.scheduler.current.table == "route"
    # a link went down while the full route dump runs: it may have passed that link's
    # routes already, so the per-device dump still happens afterwards
    r.scheduler.reread("route", 2, 7)
    r.finish_all()
    assert r.sock.requests[-1] == ("route", 2, 7)


def test_reread_is_not_queued_twice_and_a_queued_full_dump_covers_it() -> None:
    r = Recorder().ready()
    r.scheduler.reread("route", 2, 7)  # runs
    r.scheduler.reread("route", 2, 7)  # queued: the running one may be too early
    r.scheduler.reread("route", 2, 7)  # same as the queued one: dropped
    r.scheduler.reread("neigh", 0, None)  # whole table queued
    r.scheduler.reread("neigh", 10, 3)  # covered by it
    r.finish_all()
    assert r.sock.requests[len(TABLES) :] == [("route", 2, 7), ("route", 2, 7), ("neigh", 0, None)]
    assert r.scheduler.counters.targeted == 2


def test_reread_of_an_unwatched_table_is_ignored() -> None:
    r = Recorder(tables=("link", "addr")).ready()
    r.scheduler.reread("route", 2, 7)
    assert r.scheduler.current is None
    assert r.sock.requests == [("link", 0, None), ("addr", 0, None)]


def test_without_strict_checking_rereads_dump_the_whole_table() -> None:
    r = Recorder(filtered=False).ready()
    r.scheduler.reread("route", 2, 7)
    r.scheduler.reread("route", 10, 9)  # the first runs already: queued as a whole dump
    r.scheduler.reread("route", 10, 8)  # covered by that queued whole-table dump
    r.finish_all()
    assert r.sock.requests[len(TABLES) :] == [("route", 0, None)] * 2
    assert r.scheduler.counters.targeted == 0


def test_enodev_on_a_device_dump_sweeps_it() -> None:
    r = Recorder().ready()
    r.scheduler.reread("route", 2, 7)
    r.scheduler.done(-errno.ENODEV)
    assert r.log == [("begin", ("route", 2, 7)), ("sweep", ("route", 2, 7)), ("idle", False)]


def test_other_errors_abort_without_a_sweep() -> None:
    r = Recorder().ready()
    r.scheduler.reread("route", 2, 7)
    r.scheduler.done(-errno.EINVAL)
    assert r.log[1] == ("abort", ("route", 2, 7))


def test_scope_coverage() -> None:
    whole = Dump(Scope("route"))
    v4 = Dump(Scope("route", 2))
    dev = Dump(Scope("route", 2, 7))
    assert whole.covers(Scope("route", 2, 7))
    assert whole.covers(Scope("route", 10))
    assert v4.covers(Scope("route", 2, 7))
    assert not v4.covers(Scope("route", 10, 7))
    assert dev.covers(Scope("route", 2, 7))
    assert not dev.covers(Scope("route", 2, 8))
    assert not dev.covers(Scope("neigh", 2, 7))
    assert not whole.targeted
    assert v4.targeted
    assert dev.targeted


def test_a_settling_reread_reads_again_after_a_moment_until_nothing_more_is_gone() -> None:
    """The kernel announces an admin-down before it flushes the link's routes, and the dump
    does not wait for the flush: the first pass may see routes that vanish a moment later."""
    r = Recorder().ready()
    r.removed = [0, 40, 3, 0]
    r.scheduler.reread("route", 2, 7, settle=True)
    r.finish_all()  # pass 1 removed nothing: it may have run before the flush
    for _ in range(3):
        assert [delay for delay, _, _ in r.timers] == [SETTLE_DELAY]
        r.fire_timers()
        r.finish_all()
    assert r.timers == []  # pass 4 found nothing more gone: settled
    assert r.sock.requests[len(TABLES) :] == [("route", 2, 7)] * 4


def test_settling_is_bounded() -> None:
    r = Recorder().ready()
    r.removed = [5] * (MAX_SETTLE_PASSES + 5)
    r.scheduler.reread("neigh", 10, 3, settle=True)
    r.finish_all()
    while r.timers:
        r.fire_timers()
        r.finish_all()
    assert len(r.sock.requests) - len(TABLES) == MAX_SETTLE_PASSES


def test_a_plain_reread_is_read_once() -> None:
    r = Recorder().ready()
    r.removed = [10]
    r.scheduler.reread("route", 2, 7)
    r.finish_all()
    assert r.timers == []


def test_a_fresh_trigger_restarts_settling_on_a_queued_dump() -> None:
    r = Recorder().ready()
    r.scheduler.reread("route", 10, 3)  # running
    r.scheduler.reread("route", 2, 7)  # queued, plain
    r.scheduler.reread("route", 2, 7, settle=True)  # covered, but now settling
    r.finish_all()
    assert len(r.timers) == 1


def test_an_overflow_round_waits_until_the_queued_notifications_are_read() -> None:
    """What was queued before the loss is older than the loss: it must not count as newer
    than the round's dumps, so the round begins only after it has been read."""
    r = Recorder().ready()
    r.scheduler.overflow()
    assert r.scheduler.current is None
    r.scheduler.reread("route", 2, 7)  # nothing starts while the round waits
    assert r.scheduler.current is None
    r.scheduler.notifications_drained()
    assert r.scheduler.current is not None
    r.finish_all()
    assert r.sock.requests[len(TABLES) :] == [(t, 0, None) for t in TABLES]
    assert r.log[-1] == ("idle", True)


def test_an_overflow_does_not_hold_up_a_running_dump() -> None:
    r = Recorder().ready()
    r.scheduler.reread("route", 2, 7)
    r.scheduler.overflow()
    r.scheduler.part(interrupted=False)
    r.scheduler.done(0)
    assert r.scheduler.current is None  # the round waits for the drain
    r.scheduler.notifications_drained()
    r.finish_all()
    assert r.log[-1] == ("idle", True)
