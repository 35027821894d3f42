"""The webhook sink against a real aiohttp receiver: signatures, retries, dead letters, spool.

Most tests drive :class:`WebhookSink` in-process against a receiver on 127.0.0.1 that answers
from a script of status codes and verifies every signature with ``standardwebhooks``. The
end-to-end ones run the daemon in a throwaway namespace with the receiver as a subprocess in
the same namespace (``python -m tests.test_webhook serve``): a receiver outage across carrier
flaps plus ``kill -9`` and a restart loses nothing, and a slow receiver delays no other sink.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import signal
import sqlite3
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from email.utils import formatdate
from pathlib import Path
from typing import Any

import pytest
import structlog
import trustme
from aiohttp import web
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from linkmond.config import ConfigError, WebhookSinkConfig
from linkmond.events import Event, EventFactory, describe
from linkmond.sinks.webhook import WebhookSink, retry_after_seconds
from tests.helpers import ROOT, Daemon, NetNS, default_config, restart, running, until, wait_for

Record = dict[str, Any]


# -- the receiver ----------------------------------------------------------------------------


@dataclass
class Answer:
    """One scripted answer: status, extra headers, body (text, or ``raw`` bytes sent as they
    are), and how long to hold the request."""

    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: str = ""
    delay: float = 0.0
    raw: bytes | None = None


class Receiver:
    """An aiohttp server on 127.0.0.1 answering from ``script`` (then ``default``), recording
    every request with whether its Standard Webhooks signature verified."""

    def __init__(
        self,
        secret: str,
        script: Sequence[int | Answer] = (),
        *,
        port: int = 0,
        delay: float = 0.0,
        ssl_context: ssl.SSLContext | None = None,
        on_record: Callable[[Record], None] | None = None,
    ) -> None:
        self.verifier = Webhook(secret)
        self.script = [a if isinstance(a, Answer) else Answer(a) for a in script]
        self.default = Answer(200, delay=delay)
        self.port = port
        self.ssl_context = ssl_context
        self.on_record = on_record
        self.requests: list[Record] = []
        self.answered: list[Record] = []
        self._release = asyncio.Event()
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        scheme = "https" if self.ssl_context else "http"
        return f"{scheme}://127.0.0.1:{self.port}/hook"

    async def __aenter__(self) -> Receiver:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", self.port, ssl_context=self.ssl_context)
        await site.start()
        self.port = self._runner.addresses[0][1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._release.set()  # let held requests finish
        assert self._runner is not None
        await self._runner.cleanup()

    async def _handle(self, request: web.Request) -> web.Response:
        body = (await request.read()).decode()
        headers = dict(request.headers)
        record: Record = {
            "kind": "request",
            "t": time.time(),
            "path": request.path,
            "id": request.headers.get("webhook-id"),
            "timestamp": request.headers.get("webhook-timestamp"),
            "content_type": request.headers.get("Content-Type"),
            "headers": headers,
            "body": body,
        }
        try:
            self.verifier.verify(body, headers, json_parse=False)
            record["verified"] = True
        except WebhookVerificationError as exc:
            record["verified"] = False
            record["error"] = str(exc)
        answer = self.script.pop(0) if self.script else self.default
        record["status"] = answer.status
        self.requests.append(record)
        if self.on_record:
            self.on_record(record)
        if answer.delay:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._release.wait(), answer.delay)
        done = {"kind": "answered", "t": time.time(), "id": record["id"]}
        self.answered.append(done)
        if self.on_record:
            self.on_record(done)
        if answer.raw is not None:
            return web.Response(status=answer.status, headers=answer.headers, body=answer.raw)
        return web.Response(status=answer.status, headers=answer.headers, text=answer.body)

    def delivered(self) -> list[str]:
        """The ids answered 2xx, in the order the requests came."""
        return [r["id"] for r in self.requests if 200 <= r["status"] < 300]

    def ids(self) -> list[str]:
        return [r["id"] for r in self.requests]


# -- helpers ---------------------------------------------------------------------------------


def make_secret() -> str:
    return "whsec_" + base64.b64encode(os.urandom(24)).decode()


@pytest.fixture
def secret() -> str:
    return make_secret()


@pytest.fixture
def secret_file(tmp_path: Path, secret: str) -> Path:
    path = tmp_path / "webhook.secret"
    path.write_text(f"{secret}\n")  # the trailing newline an editor leaves is stripped
    path.chmod(0o600)
    return path


@pytest.fixture
def factory() -> EventFactory:
    return EventFactory("/linkmond/testhost", "lmtest")


def carrier_lost(factory: EventFactory, ifname: str = "lm0") -> Event:
    """A link.carrier_lost event as the monitor builds it."""
    return factory.make(
        "link.carrier_lost",
        ifname,
        {
            "ifindex": 7,
            "ifname": ifname,
            "admin_up": True,
            "carrier": False,
            "operstate": "lowerlayerdown",
            "flags": ["up", "broadcast", "multicast"],
            "mtu": 1500,
            "mac": "02:00:00:00:00:07",
            "kind": "veth",
            "master": None,
            "changes": {"carrier": [True, False], "operstate": ["up", "lowerlayerdown"]},
            "resync": False,
        },
    )


def webhook_config(url: str, secret_file: Path, **options: Any) -> WebhookSinkConfig:
    """A webhook sink config with quick retries (50 ms doubling up to 200 ms)."""
    options = {"retry_initial": "50ms", "max_retry_delay": "200ms", **options}
    return WebhookSinkConfig(type="webhook", url=url, secret_file=secret_file, **options)


def hook_sink(rx: Receiver, secret_file: Path, state: Path, **options: Any) -> WebhookSink:
    """A sink named ``hook`` posting to ``rx``."""
    return WebhookSink("hook", webhook_config(rx.url, secret_file, **options), state)


def dead_letters(state: Path, name: str = "hook") -> list[Record]:
    path = state / f"webhook-{name}.deadletter.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines()]


def spooled_ids(state: Path, name: str = "hook") -> list[str]:
    """The event ids in the spool database on disk (read through SQLite, not the sink)."""
    path = state / f"webhook-{name}.sqlite"
    if not path.exists():
        return []
    db = sqlite3.connect(path)
    try:
        return [row[0] for row in db.execute("SELECT id FROM spool ORDER BY seq")]
    except sqlite3.OperationalError:  # not created yet
        return []
    finally:
        db.close()


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- delivery: body, headers, signature --------------------------------------------------------


async def test_delivers_a_signed_cloudevent_with_extra_headers(
    tmp_path: Path, secret: str, secret_file: Path, factory: EventFactory, monkeypatch: Any
) -> None:
    monkeypatch.setenv("LM_TEST_TOKEN", "from-env")
    token_file = tmp_path / "token"
    token_file.write_text("from-file\n")
    token_file.chmod(0o600)  # a credential: every user may not read it
    event = carrier_lost(factory)
    async with Receiver(secret) as rx:
        config = webhook_config(
            rx.url,
            secret_file,
            headers={
                "X-Static": "static",
                "X-Env": {"env": "LM_TEST_TOKEN"},
                "X-File": {"file": str(token_file)},
            },
        )
        async with running(WebhookSink("hook", config, tmp_path / "state")) as sink:
            await sink.emit([event])
            await until(rx.delivered, what="the delivery")
            # removed after the 2xx
            await until(lambda: spooled_ids(tmp_path / "state") == [], what="an empty spool")
    (req,) = rx.requests
    assert req["verified"], req.get("error")
    assert req["content_type"] == "application/cloudevents+json; charset=utf-8"
    assert req["body"] == event.json_line
    body = json.loads(req["body"])
    assert body["specversion"] == "1.0"
    assert body["type"] == "link.carrier_lost"
    assert body["id"] == event.id == req["id"]
    assert body["data"]["changes"]["carrier"] == [True, False]
    assert req["timestamp"].isdigit()
    assert abs(int(req["timestamp"]) - req["t"]) < 60
    assert req["headers"]["webhook-signature"].startswith("v1,")
    assert req["headers"]["X-Static"] == "static"
    assert req["headers"]["X-Env"] == "from-env"
    assert req["headers"]["X-File"] == "from-file"
    assert dead_letters(tmp_path / "state") == []


async def test_secret_from_environment_signs(
    tmp_path: Path, secret: str, factory: EventFactory, monkeypatch: Any
) -> None:
    monkeypatch.setenv("LM_TEST_SECRET", f"  {secret}\n")
    async with Receiver(secret) as rx:
        config = WebhookSinkConfig(type="webhook", url=rx.url, secret_env="LM_TEST_SECRET")  # noqa: S106
        async with running(WebhookSink("hook", config, tmp_path)) as sink:
            await sink.emit([carrier_lost(factory)])
            await until(rx.delivered, what="the delivery")
    assert rx.requests[0]["verified"], rx.requests[0].get("error")


async def test_text_format_posts_the_human_line(
    tmp_path: Path, secret: str, secret_file: Path, factory: EventFactory
) -> None:
    event = carrier_lost(factory)
    async with Receiver(secret) as rx:
        config = webhook_config(rx.url, secret_file, format="text")
        async with running(WebhookSink("hook", config, tmp_path)) as sink:
            await sink.emit([event])
            await until(rx.delivered, what="the delivery")
    (req,) = rx.requests
    assert req["verified"], req.get("error")
    assert req["content_type"] == "application/json"
    assert json.loads(req["body"]) == {"text": describe(event)}
    assert json.loads(req["body"])["text"] == "link lm0: carrier lost (admin up)"
    assert req["id"] == event.id


async def test_events_are_delivered_in_order(
    tmp_path: Path, secret: str, secret_file: Path, factory: EventFactory
) -> None:
    events = [carrier_lost(factory, f"lm{i}") for i in range(20)]
    async with (
        Receiver(secret, [503, 200, 503]) as rx,
        running(hook_sink(rx, secret_file, tmp_path)) as s,
    ):
        await s.emit(events[:7])
        await s.emit(events[7:])
        await until(lambda: len(rx.delivered()) == 20, what="20 deliveries")
    assert rx.delivered() == [e.id for e in events]
    assert all(r["verified"] for r in rx.requests)


async def test_emit_only_spools_and_never_waits_for_the_receiver(
    tmp_path: Path, secret: str, secret_file: Path, factory: EventFactory
) -> None:
    first, second = carrier_lost(factory), carrier_lost(factory)
    async with (
        Receiver(secret, delay=5.0) as rx,
        running(hook_sink(rx, secret_file, tmp_path)) as s,
    ):
        await s.emit([first])
        await until(lambda: rx.requests, what="the first request")  # now held for 5 s
        await s.emit([second])
        assert rx.answered == []  # emit returned while the receiver still holds #1
        assert spooled_ids(tmp_path) == [first.id, second.id]


# -- retries ---------------------------------------------------------------------------------


async def test_webhook_id_is_stable_through_two_503s(
    tmp_path: Path, secret: str, secret_file: Path, factory: EventFactory
) -> None:
    event = carrier_lost(factory)
    async with (
        Receiver(secret) as rx,
        running(hook_sink(rx, secret_file, tmp_path)) as s,
    ):
        rx.default = Answer(503)
        await s.emit([event])
        await until(lambda: len(rx.requests) >= 2, what="two attempts")
        rx.default = Answer(200)
        assert spooled_ids(tmp_path) == [event.id]  # kept while undelivered
        await until(rx.delivered, what="the delivery")
        await until(lambda: spooled_ids(tmp_path) == [], what="an empty spool")
    statuses = [r["status"] for r in rx.requests]
    assert statuses[-1] == 200
    assert statuses[:-1] == [503] * (len(statuses) - 1)
    assert len(statuses) >= 3
    assert rx.ids() == [event.id] * len(statuses)
    assert all(r["verified"] for r in rx.requests)
    assert {r["body"] for r in rx.requests} == {event.json_line}
    assert dead_letters(tmp_path) == []


@pytest.mark.parametrize("status", [408, 429, 500, 502, 504])
async def test_transient_statuses_are_retried(
    tmp_path: Path, secret: str, secret_file: Path, factory: EventFactory, status: int
) -> None:
    event = carrier_lost(factory)
    async with (
        Receiver(secret, [status]) as rx,
        running(hook_sink(rx, secret_file, tmp_path)) as s,
    ):
        await s.emit([event])
        await until(rx.delivered, what="the delivery")
    assert [(r["id"], r["status"]) for r in rx.requests] == [(event.id, status), (event.id, 200)]
    assert dead_letters(tmp_path) == []


@pytest.mark.parametrize("form", ["seconds", "http-date"])
async def test_retry_after_is_honoured(
    tmp_path: Path, secret: str, secret_file: Path, factory: EventFactory, form: str
) -> None:
    # an HTTP date 2 s ahead is, with its 1 s granularity, at least 1 s from now
    retry_after = "1" if form == "seconds" else formatdate(time.time() + 2, usegmt=True)
    async with Receiver(secret, [Answer(503, {"Retry-After": retry_after})]) as rx:
        # backoff alone would wait ≤ 50 ms; Retry-After is honoured up to max_retry_delay
        config = webhook_config(rx.url, secret_file, max_retry_delay="5s")
        async with running(WebhookSink("hook", config, tmp_path)) as s:
            await s.emit([carrier_lost(factory)])
            await until(rx.delivered, what="the delivery")
    first, second = rx.requests
    assert second["t"] - first["t"] >= 0.95


def test_retry_after_parsing() -> None:
    now = 1_700_000_000.0
    assert retry_after_seconds("120", now) == 120.0
    assert retry_after_seconds("Tue, 14 Nov 2023 22:13:50 GMT", now) == pytest.approx(30.0)
    assert retry_after_seconds("Tue, 14 Nov 2023 22:00:00 GMT", now) == 0.0  # in the past
    assert retry_after_seconds("soon", now) is None
    assert retry_after_seconds(None, now) is None


async def test_timeout_is_retried(
    tmp_path: Path, secret: str, secret_file: Path, factory: EventFactory
) -> None:
    event = carrier_lost(factory)
    async with Receiver(secret, [Answer(200, delay=3.0)]) as rx:
        config = webhook_config(rx.url, secret_file, timeout="200ms")
        async with running(WebhookSink("hook", config, tmp_path)) as s:
            await s.emit([event])
            await until(lambda: len(rx.answered) >= 1 and len(rx.requests) >= 2, what="retry")
    assert rx.ids()[:2] == [event.id, event.id]
    assert dead_letters(tmp_path) == []


async def test_receiver_down_then_up_delivers(
    tmp_path: Path, secret: str, secret_file: Path, factory: EventFactory
) -> None:
    port = free_port()
    events = [carrier_lost(factory) for _ in range(3)]
    url = f"http://127.0.0.1:{port}/hook"
    with structlog.testing.capture_logs() as logs:
        async with running(WebhookSink("hook", webhook_config(url, secret_file), tmp_path)) as s:
            await s.emit(events)
            await until(
                lambda: any(e["event"].startswith("webhook delivery failed") for e in logs),
                what="a refused connection",
            )
            async with Receiver(secret, port=port) as rx:
                await until(lambda: len(rx.delivered()) == 3, what="the deliveries")
    assert rx.delivered() == [e.id for e in events]
    failure = next(e for e in logs if e["event"].startswith("webhook delivery failed"))
    assert failure["log_level"] == "warning"
    assert failure["error"]
    assert secret not in repr(logs)


# -- permanent failures, dead letters --------------------------------------------------------


@pytest.mark.parametrize("status", [400, 401, 404, 410, 422])
async def test_4xx_goes_to_dead_letter_and_the_next_event_is_delivered(
    tmp_path: Path, secret: str, secret_file: Path, factory: EventFactory, status: int
) -> None:
    bad, good = carrier_lost(factory), carrier_lost(factory)
    with structlog.testing.capture_logs() as logs:
        async with Receiver(secret, [Answer(status, body="no such hook, friend")]) as rx:
            config = webhook_config(rx.url, secret_file)
            async with running(WebhookSink("hook", config, tmp_path)) as s:
                await s.emit([bad, good])
                await until(rx.delivered, what="the second event")
                await until(lambda: spooled_ids(tmp_path) == [], what="an empty spool")
    assert [(r["id"], r["status"]) for r in rx.requests] == [(bad.id, status), (good.id, 200)]
    (letter,) = dead_letters(tmp_path)
    assert letter["event"] == json.loads(bad.json_line)
    assert letter["status"] == status
    assert "no such hook, friend" in letter["response"]
    assert letter["reason"].startswith(f"HTTP {status}")
    assert letter["attempts"] == 1
    assert secret not in repr(logs)
    assert secret not in (tmp_path / "webhook-hook.deadletter.jsonl").read_text()


@pytest.mark.parametrize("status", [301, 302, 307, 308])
async def test_redirect_is_not_followed(
    tmp_path: Path, secret: str, secret_file: Path, factory: EventFactory, status: int
) -> None:
    moved, after = carrier_lost(factory), carrier_lost(factory)
    async with (
        Receiver(secret, [Answer(status, {"Location": "/moved"})]) as rx,
        running(hook_sink(rx, secret_file, tmp_path)) as s,
    ):
        await s.emit([moved, after])
        await until(rx.delivered, what="the second event")
    assert [r["path"] for r in rx.requests] == ["/hook", "/hook"]  # never /moved
    assert rx.ids() == [moved.id, after.id]
    (letter,) = dead_letters(tmp_path)
    assert letter["status"] == status
    assert letter["event"]["id"] == moved.id
    assert "redirect" in letter["reason"]


async def test_spool_bound_dead_letters_the_oldest(
    tmp_path: Path, secret: str, secret_file: Path, factory: EventFactory
) -> None:
    events = [carrier_lost(factory) for _ in range(5)]
    with structlog.testing.capture_logs() as logs:
        async with Receiver(secret) as rx:
            rx.default = Answer(503)
            config = webhook_config(rx.url, secret_file, max_spool=3)
            async with running(WebhookSink("hook", config, tmp_path)) as s:
                await s.emit(events[:1])
                await until(lambda: rx.requests, what="the first attempt")
                await s.emit(events[1:])  # 5 > 3: the two oldest are pushed out
                assert [d["event"]["id"] for d in dead_letters(tmp_path)] == [
                    e.id for e in events[:2]
                ]
                assert spooled_ids(tmp_path) == [e.id for e in events[2:]]
                rx.default = Answer(200)
                await until(lambda: len(rx.delivered()) == 3, what="the three newest")
                await until(lambda: spooled_ids(tmp_path) == [], what="an empty spool")
    assert rx.delivered() == [e.id for e in events[2:]]
    letters = dead_letters(tmp_path)
    assert all(d["reason"].startswith("max_spool") for d in letters)
    full = [e for e in logs if "max_spool" in e["event"]]
    assert full
    assert full[0]["evicted"] == 2


async def test_undelivered_events_older_than_max_age_go_to_dead_letter(
    tmp_path: Path, secret: str, secret_file: Path, factory: EventFactory
) -> None:
    old, fresh = carrier_lost(factory), carrier_lost(factory)
    async with Receiver(secret) as rx:
        rx.default = Answer(503, body="down for maintenance")
        config = webhook_config(rx.url, secret_file, max_age="300ms")
        async with running(WebhookSink("hook", config, tmp_path)) as s:
            await s.emit([old])
            await until(lambda: dead_letters(tmp_path), what="the dead letter")
            rx.default = Answer(200)
            await s.emit([fresh])
            await until(rx.delivered, what="the fresh event")
    (letter,) = dead_letters(tmp_path)
    assert letter["event"]["id"] == old.id
    assert letter["reason"].startswith("max_age")
    assert letter["status"] == 503
    assert old.id in rx.ids()
    assert rx.delivered() == [fresh.id]


async def test_spooled_events_too_old_at_restart_go_to_dead_letter(
    tmp_path: Path, secret: str, secret_file: Path, factory: EventFactory
) -> None:
    url = f"http://127.0.0.1:{free_port()}/hook"
    event = carrier_lost(factory)
    first = WebhookSink("hook", webhook_config(url, secret_file, retry_initial="1h"), tmp_path)
    async with running(first):
        await first.emit([event])
    assert spooled_ids(tmp_path) == [event.id]
    async with Receiver(secret) as rx:
        config = webhook_config(rx.url, secret_file, max_age="1ms")
        async with running(WebhookSink("hook", config, tmp_path)):
            await until(lambda: dead_letters(tmp_path), what="the dead letter")
    assert rx.requests == []
    (letter,) = dead_letters(tmp_path)
    assert letter["event"]["id"] == event.id
    assert letter["reason"].startswith("max_age")


async def test_spooled_events_are_delivered_at_once_after_a_restart(
    tmp_path: Path, secret: str, secret_file: Path, factory: EventFactory
) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}/hook"
    events = [carrier_lost(factory) for _ in range(3)]
    # an hour of backoff: the restart must not wait for it
    config = webhook_config(url, secret_file, retry_initial="1h", max_retry_delay="1h")
    async with running(WebhookSink("hook", config, tmp_path)) as first:
        await first.emit(events)
    assert spooled_ids(tmp_path) == [e.id for e in events]
    async with (
        Receiver(secret, port=port) as rx,
        running(WebhookSink("hook", config, tmp_path)),
    ):
        await until(lambda: len(rx.delivered()) == 3, what="the spooled events")
        await until(lambda: spooled_ids(tmp_path) == [], what="an empty spool")
    assert rx.delivered() == [e.id for e in events]


async def test_a_reload_reconfigures_the_sink_in_place_keeping_its_spool_and_order(
    tmp_path: Path, secret: str, secret_file: Path, factory: EventFactory
) -> None:
    events = [carrier_lost(factory) for _ in range(6)]
    async with Receiver(secret) as rx:
        rx.default = Answer(503)
        slow = {"retry_initial": "1h", "max_retry_delay": "1h"}
        async with running(hook_sink(rx, secret_file, tmp_path, **slow)) as sink:
            await sink.emit(events[:3])
            await until(lambda: rx.requests, what="the first attempt")
            # a reload: new options (and the secret read again), same spool and delivery; the
            # retry an hour away is made at once, with the new settings
            rx.default = Answer(200, delay=0.05)  # held a little: two senders would overlap
            apply = sink.prepare(
                webhook_config(rx.url, secret_file, timeout="5s", retry_initial="50ms")
            )
            assert apply is not None
            await sink.emit(events[3:5])
            apply()
            assert sink.config.timeout == 5.0
            await until(lambda: len(rx.delivered()) >= 5, what="five deliveries")
            await sink.emit(events[5:])
            await until(lambda: len(rx.delivered()) >= 6, what="the sixth")
            await until(lambda: spooled_ids(tmp_path) == [], what="an empty spool")
    assert rx.delivered() == [e.id for e in events]  # each once, in order


async def test_a_reload_with_an_unreadable_secret_changes_nothing(
    tmp_path: Path, secret: str, secret_file: Path
) -> None:
    async with Receiver(secret) as rx, running(hook_sink(rx, secret_file, tmp_path)) as sink:
        with pytest.raises(ConfigError) as err:
            sink.prepare(webhook_config(rx.url, tmp_path / "gone"))
        assert err.value.problems[0][0] == "sinks.hook.secret_file"
        assert sink.config.secret_file == secret_file


# -- configuration errors ------------------------------------------------------------------


def test_missing_secret_file_is_a_config_error(tmp_path: Path) -> None:
    config = webhook_config("http://127.0.0.1:9/", tmp_path / "nope")
    with pytest.raises(ConfigError) as err:
        WebhookSink("oncall", config, tmp_path)
    assert err.value.path == str(tmp_path / "nope")
    assert err.value.problems[0][0] == "sinks.oncall.secret_file"


def test_unset_secret_env_is_a_config_error(tmp_path: Path, monkeypatch: Any) -> None:
    monkeypatch.delenv("LM_TEST_UNSET", raising=False)
    config = WebhookSinkConfig(
        type="webhook",
        url="http://127.0.0.1:9/",
        secret_env="LM_TEST_UNSET",  # noqa: S106
    )
    with pytest.raises(ConfigError) as err:
        WebhookSink("oncall", config, tmp_path)
    assert err.value.path == "<env>"
    assert err.value.problems[0][0] == "sinks.oncall.secret_env"
    assert "LM_TEST_UNSET" in str(err.value)


@pytest.mark.parametrize("content", ["", "whsec_", "\n"])
def test_empty_or_invalid_secret_is_a_config_error(tmp_path: Path, content: str) -> None:
    path = tmp_path / "secret"
    path.write_text(content)
    path.chmod(0o600)
    with pytest.raises(ConfigError) as err:
        WebhookSink("oncall", webhook_config("http://127.0.0.1:9/", path), tmp_path)
    assert err.value.problems[0][0] == "sinks.oncall.secret_file"


def test_missing_header_source_is_a_config_error(
    tmp_path: Path, secret_file: Path, monkeypatch: Any
) -> None:
    monkeypatch.delenv("LM_TEST_UNSET", raising=False)
    config = webhook_config(
        "http://127.0.0.1:9/", secret_file, headers={"Authorization": {"env": "LM_TEST_UNSET"}}
    )
    with pytest.raises(ConfigError) as err:
        WebhookSink("oncall", config, tmp_path)
    assert err.value.problems[0][0] == "sinks.oncall.headers.Authorization"


@pytest.mark.netns
def test_daemon_exits_78_when_the_secret_is_unreadable(ns: NetNS, tmp_path: Path) -> None:
    config = tmp_path / "linkmond.toml"
    config.write_text(
        default_config(tmp_path / "events.jsonl")
        + f'\n[daemon]\nstate_directory = "{tmp_path / "state"}"\n'
        + '\n[sinks.oncall]\ntype = "webhook"\nurl = "http://127.0.0.1:9/"\n'
        + f'secret_file = "{tmp_path / "missing.secret"}"\n'
    )
    done = ns.run(sys.executable, "-m", "linkmond", "run", "-c", str(config), check=False)
    assert done.returncode == 78, done.stderr
    assert "sinks.oncall.secret_file" in done.stderr
    assert "Traceback" not in done.stderr


# -- TLS ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def server_tls(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    return context


async def test_https_verified_against_ca_file(
    tmp_path: Path,
    secret: str,
    secret_file: Path,
    factory: EventFactory,
    ca: trustme.CA,
    server_tls: ssl.SSLContext,
) -> None:
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    async with Receiver(secret, ssl_context=server_tls) as rx:
        assert rx.url.startswith("https://")
        config = webhook_config(rx.url, secret_file, ca_file=ca_file)
        async with running(WebhookSink("hook", config, tmp_path)) as s:
            await s.emit([carrier_lost(factory)])
            await until(rx.delivered, what="the delivery over TLS")
    assert rx.requests[0]["verified"]


async def test_https_untrusted_ca_is_refused_with_a_clear_log_line(
    tmp_path: Path,
    secret: str,
    secret_file: Path,
    factory: EventFactory,
    server_tls: ssl.SSLContext,
) -> None:
    event = carrier_lost(factory)
    with structlog.testing.capture_logs() as logs:
        async with Receiver(secret, ssl_context=server_tls) as rx:
            config = webhook_config(rx.url, secret_file)  # the system store: not our CA
            async with running(WebhookSink("hook", config, tmp_path)) as s:
                await s.emit([event])
                refused = await until(
                    lambda: [e for e in logs if "certificate verification failed" in e["event"]],
                    what="the TLS refusal",
                )
    assert rx.requests == []  # nothing reached the handler
    assert refused[0]["log_level"] == "error"
    assert "ca_file" in refused[0]["event"]
    assert "CERTIFICATE_VERIFY_FAILED" in refused[0]["error"]
    assert refused[0]["endpoint"] == f"https://127.0.0.1:{rx.port}"
    assert spooled_ids(tmp_path) == [event.id]  # kept for a retry, not dead-lettered
    assert dead_letters(tmp_path) == []
    assert secret not in repr(logs)


async def test_tls_verify_false_delivers_and_warns_loudly(
    tmp_path: Path,
    secret: str,
    secret_file: Path,
    factory: EventFactory,
    server_tls: ssl.SSLContext,
) -> None:
    with structlog.testing.capture_logs() as logs:
        async with Receiver(secret, ssl_context=server_tls) as rx:
            config = webhook_config(rx.url, secret_file, tls_verify=False)
            async with running(WebhookSink("hook", config, tmp_path)) as s:
                await s.emit([carrier_lost(factory)])
                await until(rx.delivered, what="the delivery")
    warning = next(e for e in logs if "TLS VERIFICATION IS OFF" in e["event"])
    assert warning["log_level"] == "warning"


# -- end to end: the daemon in a namespace, the receiver as a subprocess beside it -------------

PORT = 18080  # inside a fresh namespace: nothing else listens there


class ReceiverProcess:
    """``python -m tests.test_webhook serve`` inside ``ns``, recording to a JSONL file."""

    def __init__(self, ns: NetNS, workdir: Path, secret: str, delay: float = 0.0) -> None:
        self.out = workdir / f"receiver-{time.monotonic_ns()}.jsonl"
        self.proc = subprocess.Popen(
            [
                *("ip", "netns", "exec", ns.name, sys.executable, "-m", "tests.test_webhook"),
                *("serve", "--port", str(PORT), "--secret", secret, "--out", str(self.out)),
                *("--delay", str(delay)),
            ],
            cwd=ROOT,
            stderr=(workdir / "receiver.stderr").open("ab"),
        )
        wait_for(lambda: self.records("ready"), 15, "the receiver")

    def records(self, kind: str = "request") -> list[Record]:
        if self.proc.poll() is not None:
            raise AssertionError(f"receiver exited with {self.proc.returncode}")
        if not self.out.exists():
            return []
        lines = self.out.read_text().splitlines()
        return [r for r in map(json.loads, filter(None, lines)) if r["kind"] == kind]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()  # our own child, by PID
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@contextlib.contextmanager
def receiver_process(
    ns: NetNS, workdir: Path, secret: str, delay: float = 0.0
) -> Iterator[ReceiverProcess]:
    rx = ReceiverProcess(ns, workdir, secret, delay)
    try:
        yield rx
    finally:
        rx.stop()


def e2e_config(tmp_path: Path, secret_file: Path, hook: str = "", extra: str = "") -> str:
    return (
        default_config(tmp_path / "events.jsonl")
        + f'\n[daemon]\nstate_directory = "{tmp_path / "state"}"\n'
        + f'\n[sinks.hook]\ntype = "webhook"\nurl = "http://127.0.0.1:{PORT}/hook"\n'
        + f'secret_file = "{secret_file}"\ninterfaces = ["lm0"]\n'
        + 'retry_initial = "50ms"\nmax_retry_delay = "300ms"\n'
        + hook
        + extra
    )


def lm0_link_events(events: list[Record]) -> list[Record]:
    return [e for e in events if e["type"].startswith("link.") and e["subject"] == "lm0"]


def flap(ns: NetNS, daemon: Daemon) -> None:
    """Pull lm0's cable (its peer down) and plug it back, waiting for both events."""
    for state, event in (("down", "link.carrier_lost"), ("up", "link.carrier_up")):
        mark = daemon.mark()
        ns.ip("link", "set", "lm0p", state)
        wait_for(
            lambda event=event, mark=mark: any(
                e["type"] == event and e["subject"] == "lm0" for e in daemon.since(mark)
            ),
            10,
            f"{event} lm0",
        )


@pytest.mark.netns
def test_receiver_outage_kill9_and_restart_lose_nothing(
    ns: NetNS, daemon_factory: Callable[..., Daemon], tmp_path: Path, secret: str, secret_file: Path
) -> None:
    ns.veth("lm0", "lm0p")
    config = e2e_config(tmp_path, secret_file, hook='events = ["link.*"]\n')
    first = daemon_factory(config)
    for _ in range(3):  # the receiver is down all along
        flap(ns, first)
    first.barrier()  # every lm0 event is in the file sink now
    expected = lm0_link_events(first.events())
    assert len(expected) >= 6
    wait_for(
        lambda: {e["id"] for e in expected} <= set(spooled_ids(tmp_path / "state")),
        10,
        "the events in the spool",
    )
    assert first.stop(signal.SIGKILL) == -signal.SIGKILL

    second = restart(daemon_factory, config)
    for _ in range(2):  # still down after the restart
        flap(ns, second)
    second.barrier()
    expected = lm0_link_events(second.events())
    assert len(expected) >= 10
    with receiver_process(ns, tmp_path, secret) as rx:
        wait_for(
            lambda: {e["id"] for e in expected} <= {r["id"] for r in rx.records()},
            20,
            "every event at the receiver",
        )
        requests = rx.records()
    assert all(r["verified"] for r in requests), [r.get("error") for r in requests]
    # de-duplicated by webhook-id: exactly the events of the file sink, in their order
    first_seen: dict[str, Record] = {}
    for r in requests:
        first_seen.setdefault(r["id"], r)
    assert list(first_seen) == [e["id"] for e in expected]
    for event in expected:
        assert json.loads(first_seen[event["id"]]["body"]) == event
    assert dead_letters(tmp_path / "state") == []
    wait_for(lambda: spooled_ids(tmp_path / "state") == [], 10, "an empty spool")


@pytest.mark.netns
def test_slow_receiver_delays_neither_file_nor_console(
    ns: NetNS, daemon_factory: Callable[..., Daemon], tmp_path: Path, secret: str, secret_file: Path
) -> None:
    ns.veth("lm0", "lm0p")
    config = e2e_config(
        tmp_path,
        secret_file,
        hook='events = ["link.carrier_lost"]\n',
        extra='\n[sinks.console]\ntype = "console"\nevents = ["link.*"]\n',
    )
    daemon = daemon_factory(config)
    with receiver_process(ns, tmp_path, secret, delay=5.0) as rx:
        ns.ip("link", "set", "lm0p", "down")
        (held,) = wait_for(rx.records, 10, "the first POST")  # answered only after 5 s
        ns.ip("link", "set", "lm0p", "up")
        mark = daemon.mark()
        ns.ip("link", "set", "lm0p", "down")
        second = wait_for(
            lambda: next((e for e in daemon.since(mark) if e["type"] == "link.carrier_lost"), None),
            10,
            "the second carrier_lost in the file",
        )
        wait_for(
            lambda: daemon.stdout_path.read_text().count("link lm0: carrier lost (admin up)") == 2,
            10,
            "the second carrier_lost on the console",
        )
        # both other sinks have it while the webhook's first request is still held
        assert rx.records("answered") == []
        (answered,) = wait_for(lambda: rx.records("answered"), 15, "the slow answer")
        assert answered["id"] == held["id"]
    stamped = datetime.fromisoformat(second["time"].replace("Z", "+00:00")).timestamp()
    assert stamped < answered["t"]
    assert held["verified"]


# -- the receiver as a process (for the namespace tests) -------------------------------------


def _serve(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.test_webhook serve")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--secret", required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--delay", type=float, default=0.0)
    args = parser.parse_args(argv)

    async def main() -> None:
        out = args.out.open("a")

        def record(r: Record) -> None:
            out.write(json.dumps(r) + "\n")
            out.flush()

        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        async with Receiver(args.secret, port=args.port, delay=args.delay, on_record=record):
            record({"kind": "ready", "t": time.time()})
            await stop.wait()

    asyncio.run(main())


if __name__ == "__main__" and sys.argv[1:2] == ["serve"]:
    _serve(sys.argv[2:])
