"""Fixtures: throwaway network namespaces, the daemon as a subprocess, and the CI rule that
a skipped test fails the run (``--fail-on-skip``, passed by scripts/test when root)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import IS_ROOT, NEEDS_ROOT, Daemon, NetNS


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--fail-on-skip",
        action="store_true",
        help="fail the run if any test was skipped (CI runs as root: nothing may skip)",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if IS_ROOT:
        return
    skip = pytest.mark.skip(reason=NEEDS_ROOT)
    for item in items:
        if item.keywords.keys() & {"netns", "journald", "nspawn", "root"}:
            item.add_marker(skip)


_skipped: list[str] = []


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.skipped:
        _skipped.append(report.nodeid)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if session.config.getoption("--fail-on-skip") and _skipped:
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            reporter.write_line(
                f"--fail-on-skip: {len(_skipped)} test(s) skipped: {', '.join(_skipped[:10])}",
                red=True,
            )
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.fixture
def ns(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[NetNS]:
    """A fresh network namespace with lo up, deleted afterwards.

    Daemons started meanwhile get ``$STATE_DIRECTORY`` in the test's temporary directory
    (unless told otherwise): as root they would save their state in /var/lib/linkmond.
    """
    if not IS_ROOT:
        pytest.skip(NEEDS_ROOT)
    monkeypatch.setenv("STATE_DIRECTORY", str(tmp_path / "state"))
    namespace = NetNS()
    try:
        yield namespace
    finally:
        namespace.delete()


@pytest.fixture
def daemon_factory(ns: NetNS, tmp_path: Path) -> Iterator[type[Daemon]]:
    """Make daemons in ``ns`` (``daemon_factory(config=None)``); all are stopped afterwards."""
    started: list[Daemon] = []

    def make(config: str | None = None, start: bool = True) -> Daemon:
        d = Daemon(ns, tmp_path, config)
        started.append(d)
        return d.start() if start else d

    yield make  # type: ignore[misc]
    for d in started:
        d.stop()


@pytest.fixture
def daemon(daemon_factory) -> Daemon:  # type: ignore[no-untyped-def]
    """The daemon running in ``ns`` with a file sink of every event, already started."""
    return daemon_factory()  # type: ignore[no-any-return]
