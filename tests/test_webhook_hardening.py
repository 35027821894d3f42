"""The webhook sink's security review (issue 9): URLs never shown whole, every config problem
found at load time (exit 78 naming the key), bounded dead letters and log lines, robust
``Retry-After``, undecompressed answers, private secret and spool files, no symlink followed.

Like tests/test_webhook.py (whose receiver and fixtures these reuse), everything is real: an
aiohttp receiver on 127.0.0.1 (or a raw TCP one, for answers aiohttp would never send),
SQLite files, the ``linkmond`` command as a subprocess, logrotate itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import importlib.metadata
import json
import os
import re
import shutil
import stat
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import structlog

from linkmond.config import ConfigError, WebhookSinkConfig, parse_config
from linkmond.events import EventFactory
from linkmond.sinks.base import SinkError
from linkmond.sinks.webhook import WebhookSink, retry_after_seconds
from linkmond.spool import Spool
from tests.helpers import ROOT, NetNS, linkmond
from tests.test_webhook import (
    Answer,
    Receiver,
    carrier_lost,
    dead_letters,
    hook_sink,
    running,
    spooled_ids,
    until,
    webhook_config,
)

# the fixtures secret, secret_file and factory
pytest_plugins = ("tests.test_webhook",)

#: a URL whose every part but scheme://host:port is a credential
SECRET_URL = "http://alice:hunter2pw@127.0.0.1:{port}/services/T000/B000/PATHSECRET?token=QSECRET"  # noqa: S105
SECRETS = ("alice", "hunter2pw", "PATHSECRET", "QSECRET", "T000")


def leaked(text: str) -> list[str]:
    """The parts of SECRET_URL found in ``text``."""
    return [s for s in SECRETS if s in text]


def config_text(tmp_path: Path, secret_file: Path, hook: str) -> str:
    """A config with one webhook sink ``hook`` (``url`` and more in ``hook``)."""
    return (
        f'[daemon]\nstate_directory = "{tmp_path / "state"}"\n\n'
        f'[sinks.hook]\ntype = "webhook"\nsecret_file = "{secret_file}"\n{hook}'
    )


def problems(text: str) -> list[tuple[str, str]]:
    """The (key, problem) pairs parse_config reports for ``text``."""
    with pytest.raises(ConfigError) as err:
        parse_config(text, "c.toml")
    return err.value.problems


# -- 1. URL credentials are never shown ---------------------------------------------------------


def test_redact_url_keeps_scheme_host_and_port_only() -> None:
    from linkmond.redact import redact_text, redact_url

    assert redact_url(SECRET_URL.format(port=8080)) == "http://127.0.0.1:8080"
    assert redact_url("https://hooks.slack.com/services/T0/B0/X") == "https://hooks.slack.com:443"
    assert redact_url("HTTP://[::1]/x?token=y") == "http://[::1]:80"
    assert redact_url("http://h:99999/x") == "http://h:99999"
    assert redact_url("http://user:pass/x") == "http://user"  # a port that is no number: left out
    assert redact_url("alice:hunter2pw@h/x") == "<not a URL>"
    url = SECRET_URL.format(port=9)
    text = f"400, message='Invalid header', url={url!r}; path /services/T000/B000/PATHSECRET"
    assert redact_text(text, url) == (
        "400, message='Invalid header', url='http://127.0.0.1:9'; path ***"
    )
    assert redact_text("URL('https://x.example/a%20b?t=QSECRET')") == "URL('https://x.example:443')"


def test_check_config_shows_the_url_as_scheme_host_port(tmp_path: Path, secret_file: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text(config_text(tmp_path, secret_file, f'url = "{SECRET_URL.format(port=9)}"\n'))
    done = linkmond("check-config", "-c", str(config))
    assert done.returncode == 0, done.stderr
    assert leaked(done.stdout + done.stderr) == []
    assert json.loads(done.stdout)["sinks"]["hook"]["url"] == "http://127.0.0.1:9"


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        (
            "ftp://alice:hunter2pw@h/PATHSECRET?token=QSECRET",
            "the scheme 'ftp' is not http or https",
        ),
        ("alice:hunter2pw@h/PATHSECRET?token=QSECRET", "not an http:// or https:// URL"),
        ("hooks.example.net/PATHSECRET", "not an http:// or https:// URL"),
        ("http://alice:hunter2pw@/PATHSECRET", "the URL has no host (http://HOST[:PORT]/PATH)"),
        ("http://alice:hunter2pw/PATHSECRET", "the port is not a number"),
        ("http://h/PATHSECRET?token=QSECRET x", "the URL contains a space or a control character"),
        ("http://[::1/PATHSECRET", "not a valid URL: the IPv6 address in [ ] is not closed"),
    ],
)
def test_a_refused_url_is_not_echoed(tmp_path: Path, url: str, problem: str) -> None:
    text = f'[sinks.hook]\ntype = "webhook"\nsecret_env = "S"\nurl = "{url}"\n'
    with pytest.raises(ConfigError) as err:
        parse_config(text, "c.toml")
    [(key, why)] = err.value.problems
    assert key == "sinks.hook.url"
    assert why.startswith(problem)
    assert leaked(str(err.value)) == []


@contextlib.asynccontextmanager
async def malformed_receiver() -> AsyncIterator[tuple[int, list[bytes]]]:
    """A TCP server on 127.0.0.1 answering every request with a header aiohttp refuses
    (``ClientResponseError``, whose text carries the whole URL); yields (port, requests)."""
    requests: list[bytes] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            head = await reader.readuntil(b"\r\n\r\n")
            length = re.search(rb"(?i)content-length: *(\d+)", head)
            await reader.readexactly(int(length.group(1)) if length else 0)
            requests.append(head)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nBad Header: x\r\n\r\n")
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1], requests
    finally:
        server.close()
        await server.wait_closed()


async def test_a_malformed_answer_leaks_no_url_into_logs_or_dead_letters(
    tmp_path: Path, secret_file: Path, factory: EventFactory
) -> None:
    event = carrier_lost(factory)
    with structlog.testing.capture_logs() as logs:
        async with malformed_receiver() as (port, requests):
            config = webhook_config(SECRET_URL.format(port=port), secret_file, max_age="500ms")
            async with running(WebhookSink("hook", config, tmp_path)) as s:
                await s.emit([event])
                await until(lambda: dead_letters(tmp_path), what="the dead letter (max_age)")
    assert requests  # the POSTs were made, with the credentials where they belong
    assert b"Authorization: Basic " in requests[0]
    failed = [e for e in logs if e["event"].startswith("webhook delivery failed")]
    assert failed
    assert "ClientResponseError" in failed[0]["error"]
    assert f"http://127.0.0.1:{port}" in failed[0]["error"]
    assert failed[0]["endpoint"] == f"http://127.0.0.1:{port}"
    (letter,) = dead_letters(tmp_path)
    assert "ClientResponseError" in letter["response"]
    assert leaked(repr(logs)) == []
    assert leaked((tmp_path / "webhook-hook.deadletter.jsonl").read_text()) == []


async def test_an_answer_quoting_the_url_back_is_redacted(
    tmp_path: Path, secret: str, secret_file: Path, factory: EventFactory
) -> None:
    with structlog.testing.capture_logs() as logs:
        async with Receiver(secret) as rx:
            url = SECRET_URL.format(port=rx.port)
            rx.script = [Answer(404, body=f"Cannot POST {url}")]  # as a 404 page may
            async with running(
                WebhookSink("hook", webhook_config(url, secret_file), tmp_path)
            ) as s:
                await s.emit([carrier_lost(factory)])
                await until(lambda: dead_letters(tmp_path), what="the dead letter")
    (letter,) = dead_letters(tmp_path)
    assert letter["response"] == f"Cannot POST http://127.0.0.1:{rx.port}"
    assert leaked(repr(logs)) == []


# -- 2. a URL aiohttp cannot use is a config error ----------------------------------------------


@pytest.mark.parametrize(
    ("port", "problem"),
    [("99999", "port 99999 is out of range (1-65535)"), ("0", "port 0 is out of range (1-65535)")],
)
def test_a_port_out_of_range_is_a_config_error(port: str, problem: str) -> None:
    text = f'[sinks.hook]\ntype = "webhook"\nsecret_env = "S"\nurl = "http://127.0.0.1:{port}/x"\n'
    assert problems(text) == [("sinks.hook.url", problem)]


@pytest.mark.netns
def test_a_bad_port_makes_check_config_and_run_exit_78(
    ns: NetNS, tmp_path: Path, secret_file: Path
) -> None:
    config = tmp_path / "c.toml"
    config.write_text(config_text(tmp_path, secret_file, 'url = "http://127.0.0.1:99999/x"\n'))
    expected = f"{config}: sinks.hook.url: port 99999 is out of range (1-65535)"
    checked = linkmond("check-config", "-c", str(config))
    run = [sys.executable, "-m", "linkmond", "run", "-c", str(config)]
    ran = subprocess.run(
        ["ip", "netns", "exec", ns.name, *run],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
        check=False,
    )
    for done in (checked, ran):
        assert done.returncode == 78, done.stderr
        assert done.stderr == f"linkmond: configuration error: {expected}\n"


# -- 3. dead letters and log lines are bounded --------------------------------------------------


async def test_dead_letters_are_capped_by_size_and_rotated_to_dot_1(
    tmp_path: Path, secret: str, secret_file: Path, factory: EventFactory
) -> None:
    target = tmp_path / "elsewhere"
    target.write_text("precious\n")
    # a symlink at the .1 path is replaced by the rotation, never written through
    (tmp_path / "webhook-hook.deadletter.jsonl.1").symlink_to(target)
    events = [carrier_lost(factory) for _ in range(40)]
    async with Receiver(secret) as rx:
        rx.default = Answer(503)
        sink = hook_sink(rx, secret_file, tmp_path, max_spool=1, deadletter_max_bytes="4KiB")
        async with running(sink) as s:
            for event in events:  # each pushes the one before out of the spool
                await s.emit([event])
            assert s.spool.rotations >= 2
    current = tmp_path / "webhook-hook.deadletter.jsonl"
    rotated = tmp_path / "webhook-hook.deadletter.jsonl.1"
    assert not rotated.is_symlink()
    assert target.read_text() == "precious\n"
    for path in (current, rotated):
        assert 0 < path.stat().st_size <= 4096
        lines = path.read_text().splitlines()
        assert all(json.loads(line)["reason"].startswith("max_spool") for line in lines)
    # the newest dead letters are the last lines of the current file, in order
    newest = [json.loads(line)["event"]["id"] for line in current.read_text().splitlines()]
    assert newest == [e.id for e in events[-1 - len(newest) : -1]]


async def test_spool_full_is_logged_at_most_once_per_interval_with_a_count(
    tmp_path: Path, secret: str, secret_file: Path, factory: EventFactory
) -> None:
    with structlog.testing.capture_logs() as logs:
        async with Receiver(secret) as rx:
            rx.default = Answer(503)
            async with running(hook_sink(rx, secret_file, tmp_path, max_spool=1)) as s:
                for _ in range(50):
                    await s.emit([carrier_lost(factory)])
                evicted = s.spool.evicted
    full = [e for e in logs if e["event"].startswith("webhook spool full")]
    assert len(full) == 1  # the 49 others come within LOG_EVERY (10 s)
    assert full[0]["evicted"] == 1
    (held,) = [e for e in logs if "held back by the rate limit" in e["event"]]
    assert held["spool_full"] == evicted - 1
    assert held["evicted"] == evicted - 1


def test_throttle_logs_once_per_interval_and_counts_the_rest() -> None:
    from linkmond.sinks.webhook import Throttle

    throttle = Throttle(every=10.0)
    assert throttle.due(now=100.0) == 0
    assert [throttle.due(now=100.0 + t) for t in (1, 5, 9.9)] == [None, None, None]
    assert throttle.pending == 3
    assert throttle.due(now=110.0) == 3
    assert throttle.due(now=115.0) is None
    assert throttle.due(now=120.0) == 1


LOGROTATE = ROOT / "systemd" / "linkmond.logrotate"
needs_logrotate = pytest.mark.skipif(
    shutil.which("logrotate") is None,
    reason="logrotate missing: scripts/setup test installs it as root",
)


@needs_logrotate
def test_logrotate_rotates_the_dead_letters_and_leaves_the_daemons_dot_1(tmp_path: Path) -> None:
    state, logs = tmp_path / "state", tmp_path / "log"
    state.mkdir()
    logs.mkdir()
    text = LOGROTATE.read_text()
    assert "/var/lib/linkmond/*.deadletter.jsonl {" in text
    # the shipped snippet with its directories moved here and no signal sent to any daemon
    text = text.replace("/var/lib/linkmond/", f"{state}/").replace("/var/log/linkmond/", f"{logs}/")
    text = re.sub(r"(?ms)^\s*postrotate$.*?^\s*endscript$", "", text)
    config = tmp_path / "logrotate.conf"
    config.write_text(text)
    (state / "webhook-hook.deadletter.jsonl").write_text('{"reason": "HTTP 410"}\n')
    (state / "webhook-hook.deadletter.jsonl.1").write_text('{"reason": "older"}\n')
    (state / "webhook-hook.sqlite").write_text("not for logrotate")
    done = subprocess.run(
        ["logrotate", "-v", "-f", "-s", str(tmp_path / "status"), str(config)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "error" not in done.stderr.lower(), done.stderr
    names = sorted(p.name for p in state.iterdir())
    (archived,) = [
        n for n in names if re.fullmatch(r"webhook-hook\.deadletter\.jsonl-\d{8}\.gz", n)
    ]
    assert gzip.decompress((state / archived).read_bytes()) == b'{"reason": "HTTP 410"}\n'
    assert not (state / "webhook-hook.deadletter.jsonl").exists()  # the daemon makes the next
    assert (state / "webhook-hook.deadletter.jsonl.1").read_text() == '{"reason": "older"}\n'
    assert (state / "webhook-hook.sqlite").read_text() == "not for logrotate"


# -- 4. header problems are config errors; a 2xx is delivered whatever its headers say ----------


@pytest.mark.parametrize(
    ("hook", "problem"),
    [
        (
            'url = "https://alice:hunter2pw@h.example/x"\nheaders = { authorization = "Bearer t" }',
            "an Authorization header and credentials in url (user:password@) cannot be combined",
        ),
        (
            'url = "https://alice@h.example/x"\nheaders = { Authorization = { env = "T" } }',
            "an Authorization header and credentials in url (user:password@) cannot be combined",
        ),
        (
            'url = "https://h.example/x"\nheaders = { "X Token" = "t" }',
            "'X Token' is not a valid header name",
        ),
        (
            'url = "https://h.example/x"\nheaders = { "X-Token\\u0007" = "t" }',
            "'X-Token\\x07' is not a valid header name",
        ),
        (
            'url = "https://h.example/x"\nheaders = { X-Token = "t\\r\\nX-Evil: 1" }',
            "the value of X-Token contains a line break or another control character",
        ),
        (
            'url = "https://h.example/x"\nheaders = { X-Token = "t\\u0000" }',
            "the value of X-Token contains a line break or another control character",
        ),
    ],
)
def test_header_problems_are_config_errors(hook: str, problem: str) -> None:
    text = f'[sinks.hook]\ntype = "webhook"\nsecret_env = "S"\n{hook}\n'
    [(key, why)] = problems(text)
    assert key == "sinks.hook.headers"
    assert why.startswith(problem)
    assert leaked(why) == []


def test_credentials_with_authorization_make_check_config_exit_78(
    tmp_path: Path, secret_file: Path
) -> None:
    config = tmp_path / "c.toml"
    hook = f'url = "{SECRET_URL.format(port=9)}"\nheaders = {{ Authorization = "Bearer x" }}\n'
    config.write_text(config_text(tmp_path, secret_file, hook))
    done = linkmond("check-config", "-c", str(config))
    assert done.returncode == 78, done.stderr
    assert f"{config}: sinks.hook.headers: an Authorization header" in done.stderr
    assert leaked(done.stderr) == []


def test_a_header_value_with_a_control_character_from_env_is_a_config_error(
    tmp_path: Path, secret_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LM_TEST_TOKEN", "tok\x01en")
    config = webhook_config(
        "http://127.0.0.1:9/", secret_file, headers={"X-Token": {"env": "LM_TEST_TOKEN"}}
    )
    with pytest.raises(ConfigError) as err:
        WebhookSink("hook", config, tmp_path)
    assert err.value.problems == [
        (
            "sinks.hook.headers.X-Token",
            "a header value cannot contain a line break or another control character",
        )
    ]


@pytest.mark.parametrize("value", ["²", "1e3", "\uff19", "soon"])
async def test_a_2xx_is_delivered_once_whatever_its_retry_after(
    tmp_path: Path, secret: str, secret_file: Path, factory: EventFactory, value: str
) -> None:
    first, second = carrier_lost(factory), carrier_lost(factory)
    async with (
        Receiver(secret, [Answer(200, {"Retry-After": value})]) as rx,
        running(hook_sink(rx, secret_file, tmp_path)) as s,
    ):
        await s.emit([first, second])
        await until(lambda: len(rx.delivered()) >= 2, what="both events")
        await until(lambda: spooled_ids(tmp_path) == [], what="an empty spool")
    assert rx.ids() == [first.id, second.id]  # the first was not POSTed again


def test_retry_after_parsing_never_raises() -> None:
    now = 1_700_000_000.0
    for bad in (
        "²",
        "٣",
        "\uff11\uff10",
        "1e3",
        "-5",
        "1.5",
        "Tue, 14 Nov 99999 22:13:50 GMT",
        "Tue,",
    ):
        assert retry_after_seconds(bad, now) is None, bad
    assert retry_after_seconds(" 7 ", now) == 7.0
    assert retry_after_seconds("9" * 5000, now) == float("inf")  # the sink caps it


# -- 5. Retry-After is capped at max_retry_delay ------------------------------------------------


async def test_retry_after_is_capped_at_max_retry_delay(
    tmp_path: Path, secret: str, secret_file: Path, factory: EventFactory
) -> None:
    event = carrier_lost(factory)
    with structlog.testing.capture_logs() as logs:
        async with (
            Receiver(secret, [Answer(503, {"Retry-After": "99999999999"})]) as rx,
            running(hook_sink(rx, secret_file, tmp_path, max_retry_delay="300ms")) as s,
        ):
            await s.emit([event])
            await until(rx.delivered, timeout=5, what="the retry within max_retry_delay")
    assert rx.ids() == [event.id, event.id]
    (retry,) = [e for e in logs if e["event"].startswith("webhook delivery failed")]
    assert retry["retry_in"] == 0.3


# -- 6. aiohttp floor; answers read undecompressed ----------------------------------------------


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", text)[:3])


def test_the_aiohttp_floor_has_the_decompression_fix() -> None:
    pyproject = (ROOT / "pyproject.toml").read_text()
    floor = re.search(r'"aiohttp>=([\d.]+)', pyproject)
    assert floor, "no aiohttp floor in pyproject.toml"
    assert _version(floor.group(1)) >= (3, 13, 3)
    assert _version(importlib.metadata.version("aiohttp")) >= (3, 13, 3)


async def test_a_compressed_error_answer_is_not_decompressed(
    tmp_path: Path, secret: str, secret_file: Path, factory: EventFactory
) -> None:
    bomb = gzip.compress(b"\0" * (64 * 1024**2), compresslevel=9)  # 64 MiB of zeros, ~64 KiB
    answer = Answer(400, {"Content-Encoding": "gzip"}, raw=bomb)
    async with (
        Receiver(secret, [answer]) as rx,
        running(hook_sink(rx, secret_file, tmp_path)) as s,
    ):
        await s.emit([carrier_lost(factory)])
        await until(lambda: dead_letters(tmp_path), what="the dead letter")
    assert rx.requests[0]["headers"]["Accept-Encoding"] == "identity"
    (letter,) = dead_letters(tmp_path)
    assert letter["response"] == "<gzip-encoded answer, not decoded>"


async def test_the_snippet_of_an_error_answer_is_its_first_bytes(
    tmp_path: Path, secret: str, secret_file: Path, factory: EventFactory
) -> None:
    answer = Answer(422, body="x" * 100_000)
    async with (
        Receiver(secret, [answer]) as rx,
        running(hook_sink(rx, secret_file, tmp_path)) as s,
    ):
        await s.emit([carrier_lost(factory)])
        await until(lambda: dead_letters(tmp_path), what="the dead letter")
    (letter,) = dead_letters(tmp_path)
    assert letter["response"] == "x" * 512


# -- 7. secret files --------------------------------------------------------------------------


@pytest.mark.parametrize("mode", [0o644, 0o604, 0o444])
def test_a_secret_file_every_user_can_read_is_refused(
    tmp_path: Path, secret_file: Path, mode: int
) -> None:
    secret_file.chmod(mode)
    with pytest.raises(ConfigError) as err:
        WebhookSink("hook", webhook_config("http://127.0.0.1:9/", secret_file), tmp_path)
    assert err.value.path == str(secret_file)
    assert err.value.problems == [
        (
            "sinks.hook.secret_file",
            f"the secret file is readable by every user (mode {mode:04o}): chmod o-r "
            f"{secret_file}, or hand it over with LoadCredential= (docs/install.md)",
        )
    ]


def test_a_world_readable_secret_makes_check_config_exit_78(
    tmp_path: Path, secret_file: Path
) -> None:
    secret_file.chmod(0o644)
    config = tmp_path / "c.toml"
    config.write_text(config_text(tmp_path, secret_file, 'url = "http://127.0.0.1:9/"\n'))
    done = linkmond("check-config", "-c", str(config))
    assert done.returncode == 78, done.stderr
    assert "sinks.hook.secret_file: the secret file is readable by every user" in done.stderr
    assert secret_file.read_text().strip() not in done.stderr + done.stdout


def test_a_header_file_every_user_can_read_is_refused(tmp_path: Path, secret_file: Path) -> None:
    token = tmp_path / "token"
    token.write_text("Bearer t\n")
    token.chmod(0o644)
    config = webhook_config(
        "http://127.0.0.1:9/", secret_file, headers={"Authorization": {"file": str(token)}}
    )
    with pytest.raises(ConfigError) as err:
        WebhookSink("hook", config, tmp_path)
    [(key, why)] = err.value.problems
    assert key == "sinks.hook.headers.Authorization"
    assert why.startswith("the header value file is readable by every user (mode 0644)")


@pytest.mark.root
async def test_a_secret_file_another_group_can_read_is_accepted_with_a_warning(
    tmp_path: Path, secret_file: Path
) -> None:
    nogroup = 65534
    assert nogroup != os.getegid()
    assert nogroup not in os.getgroups()
    os.chown(secret_file, 0, nogroup)
    os.chmod(secret_file, 0o640)
    sink = WebhookSink("hook", webhook_config("http://127.0.0.1:9/", secret_file), tmp_path)
    with structlog.testing.capture_logs() as logs:
        async with running(sink):
            pass
    (warning,) = [e for e in logs if "is readable by group" in e["event"]]
    assert warning["log_level"] == "warning"
    assert warning["event"].startswith(f"{secret_file} (sinks.hook.secret_file) is readable by")
    # a group the daemon is in (its own) is how a service is meant to be given a file
    os.chown(secret_file, 0, os.getegid())
    sink = WebhookSink("hook", webhook_config("http://127.0.0.1:9/", secret_file), tmp_path)
    with structlog.testing.capture_logs() as logs:
        async with running(sink):
            pass
    assert [e for e in logs if "readable by group" in e["event"]] == []


# -- 8. the spool and the dead letters are private; symlinks are refused ------------------------


@contextlib.contextmanager
def umask(mask: int) -> Iterator[None]:
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_the_spool_its_wal_and_shm_are_0600_and_dead_letters_0640_under_umask_022(
    tmp_path: Path, factory: EventFactory
) -> None:
    db, letters = tmp_path / "webhook-hook.sqlite", tmp_path / "webhook-hook.deadletter.jsonl"
    spool = Spool(db, letters, max_spool=1)
    with umask(0o022):
        spool.open()
        try:
            events = [carrier_lost(factory) for _ in range(2)]
            assert spool.append([(e.id, e.json_line) for e in events]) == 1
            modes = {p.name: _mode(p) for p in tmp_path.iterdir()}
        finally:
            spool.close()
    assert modes == {
        "webhook-hook.sqlite": 0o600,
        "webhook-hook.sqlite-wal": 0o600,
        "webhook-hook.sqlite-shm": 0o600,
        "webhook-hook.deadletter.jsonl": 0o640,
    }


@pytest.mark.root
@pytest.mark.parametrize("dangling", [False, True], ids=["to a file", "dangling"])
async def test_a_symlink_at_the_spool_path_is_refused_not_followed(
    tmp_path: Path, secret_file: Path, dangling: bool
) -> None:
    target = tmp_path / "target"
    if not dangling:
        target.write_text("precious\n")
    state = tmp_path / "state"
    state.mkdir()
    link = state / "webhook-hook.sqlite"
    link.symlink_to(target)
    config = webhook_config("http://127.0.0.1:9/", secret_file)
    # when the sink is built (check-config, run, reload): a config error naming the file
    with pytest.raises(ConfigError) as err:
        WebhookSink("hook", config, state)
    assert str(err.value) == f"{link}: sinks.hook: is a symlink: not followed (remove it)"
    # planted after that: opening the spool refuses it
    link.unlink()
    sink = WebhookSink("hook", config, state)
    link.symlink_to(target)
    with pytest.raises(SinkError) as refused:
        await sink.start()
    await sink.aclose()
    assert str(refused.value) == f"cannot open the spool: {link}: is a symlink: not followed"
    assert target.exists() is not dangling
    if not dangling:
        assert target.read_text() == "precious\n"


@pytest.mark.root
@pytest.mark.parametrize("suffix", ["-wal", "-shm"])
def test_a_symlink_beside_the_spool_is_refused(tmp_path: Path, suffix: str) -> None:
    target = tmp_path / "target"
    target.write_text("precious\n")
    db = tmp_path / "webhook-hook.sqlite"
    (tmp_path / f"webhook-hook.sqlite{suffix}").symlink_to(target)
    spool = Spool(db, tmp_path / "webhook-hook.deadletter.jsonl", max_spool=10)
    with pytest.raises(OSError, match="is a symlink: not followed"):
        spool.open()
    spool.close()
    assert target.read_text() == "precious\n"


@pytest.mark.root
async def test_a_symlink_at_the_dead_letter_path_is_refused_not_followed(
    tmp_path: Path, secret: str, secret_file: Path, factory: EventFactory
) -> None:
    target = tmp_path / "target"
    target.write_text("precious\n")
    state = tmp_path / "state"
    state.mkdir()
    link = state / "webhook-hook.deadletter.jsonl"
    event = carrier_lost(factory)
    with structlog.testing.capture_logs() as logs:
        async with Receiver(secret) as rx:
            rx.default = Answer(410)
            sink = hook_sink(rx, secret_file, state)
            link.symlink_to(target)  # planted after the sink was built
            async with running(sink) as s:
                await s.emit([event])
                error = await until(
                    lambda: [e for e in logs if e["event"] == "webhook delivery error"],
                    what="the refusal",
                )
    assert error[0]["error"] == f"{link}: is a symlink: not followed"
    assert target.read_text() == "precious\n"
    assert link.is_symlink()
    assert spooled_ids(state) == [event.id]  # kept, not lost


# -- 9. plain http:// elsewhere warns; ca_file contradicts tls_verify = false -------------------


@pytest.mark.parametrize(
    ("url", "warned"),
    [
        ("http://192.0.2.10:8080/x", True),  # TEST-NET-1: never contacted (nothing is sent)
        ("http://hooks.example.net/x", True),
        ("http://127.0.0.1:9/x", False),
        ("http://127.1.2.3:9/x", False),
        ("http://[::1]:9/x", False),
        ("http://localhost:9/x", False),
        ("https://hooks.example.net/x", False),
    ],
)
async def test_plain_http_to_another_host_warns_once(
    tmp_path: Path, secret_file: Path, url: str, warned: bool
) -> None:
    name = f"plain{abs(hash((url, str(tmp_path))))}"  # warned once per process and sink
    with structlog.testing.capture_logs() as logs:
        for _ in range(2):  # a reload rebuilds and restarts the sink: no second warning
            async with running(WebhookSink(name, webhook_config(url, secret_file), tmp_path)):
                pass
    warnings = [e for e in logs if "plain http://" in e["event"]]
    assert len(warnings) == (1 if warned else 0)
    if warned:
        assert warnings[0]["log_level"] == "warning"
        assert warnings[0]["endpoint"] == url.rsplit("/", 1)[0].replace(
            "hooks.example.net", "hooks.example.net:80"
        )


def test_ca_file_with_tls_verify_false_is_a_config_error(tmp_path: Path) -> None:
    text = (
        '[sinks.hook]\ntype = "webhook"\nsecret_env = "S"\nurl = "https://h.example/x"\n'
        f'ca_file = "{tmp_path / "ca.pem"}"\ntls_verify = false\n'
    )
    assert problems(text) == [
        (
            "sinks.hook.tls_verify",
            "false contradicts ca_file (a CA to verify with, but no verification): "
            "remove one of them",
        )
    ]


def test_the_webhook_config_documents_every_new_key() -> None:
    docs = (ROOT / "docs" / "configuration.md").read_text()
    for key in ("deadletter_max_bytes",):
        assert f"| `{key}` |" in docs
    assert WebhookSinkConfig.model_fields["deadletter_max_bytes"].default == 4 * 1024**2
