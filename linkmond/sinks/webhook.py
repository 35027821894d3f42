"""Webhook sink: signed CloudEvents POSTs from a durable spool (docs/configuration.md).

``emit`` only appends the batch to the SQLite spool (one transaction, in a worker thread) and
wakes the delivery task; it never waits for HTTP, so a slow or absent receiver delays no other
sink. The delivery task POSTs the spooled events one at a time, oldest first, over one reused
aiohttp session, signed per Standard Webhooks (``webhook-id`` = the event id, stable across
retries). A row leaves the spool only after a 2xx, or into the dead-letter file: permanent
HTTP errors (3xx is not followed, 4xx other than 408/429), ``max_age`` and ``max_spool``.
Connection errors, timeouts, 408, 429 and 5xx retry the same event with full-jitter
exponential backoff, honouring ``Retry-After``. Pending rows survive a restart and are
attempted at once by the next run.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import random
import ssl
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Final
from urllib.parse import urlsplit

import aiohttp
import structlog
from standardwebhooks.webhooks import Webhook

from linkmond import __version__
from linkmond.config import ConfigError, HeaderFromEnv, HeaderFromFile, WebhookSinkConfig
from linkmond.events import Event, describe
from linkmond.sinks.base import Sink, SinkError
from linkmond.spool import DeadLetter, Spool, SpooledEvent

log = structlog.get_logger("linkmond.webhook")

CLOUDEVENTS_TYPE: Final = "application/cloudevents+json; charset=utf-8"
TEXT_TYPE: Final = "application/json"
#: how much of a receiver's answer is read (so the connection can be reused) and kept
READ_MAX: Final = 64 * 1024
SNIPPET_MAX: Final = 512
#: at shutdown, how long a healthy sink may keep delivering what is spooled
CLOSE_GRACE: Final = 1.0

#: the delivery task of each spool file. A sink rebuilt by a reload starts before the old one
#: is closed; its delivery waits for the old task to end, so events stay in order, sent once.
_deliverers: dict[Path, asyncio.Task[None]] = {}


@dataclass(frozen=True)
class Attempt:
    """The outcome of one POST: an HTTP status, or ``error`` when there was no answer."""

    status: int | None = None
    response: str = ""
    retry_after: float | None = None
    error: str = ""
    #: the pooled connection had been closed by the peer: worth one immediate retry
    stale: bool = False
    #: the receiver's certificate failed verification
    tls: bool = False

    @property
    def delivered(self) -> bool:
        """A 2xx answer."""
        return self.status is not None and 200 <= self.status < 300

    @property
    def retryable(self) -> bool:
        """No answer, or 408, 429, 5xx."""
        return self.status is None or self.status in (408, 429) or self.status >= 500


def retry_after_seconds(value: str | None, now: float | None = None) -> float | None:
    """``Retry-After`` as seconds from now: delta-seconds or an HTTP date; None if absent/bad."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def load_signer(name: str, config: WebhookSinkConfig) -> Webhook:
    """The Standard Webhooks signer for the secret in ``secret_file`` or ``secret_env``.

    Raises :class:`ConfigError` naming the file (or ``<env>``) and the key; the secret's
    value never enters a message.
    """
    if config.secret_file is not None:
        where, key = str(config.secret_file), f"sinks.{name}.secret_file"
        try:
            secret = config.secret_file.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError(where, [(key, f"cannot read the secret: {exc.strerror}")]) from None
        except UnicodeDecodeError:
            raise ConfigError(where, [(key, "the secret is not UTF-8 text")]) from None
        if not secret:
            raise ConfigError(where, [(key, "the secret file is empty")])
    else:
        assert config.secret_env is not None  # the model requires exactly one of the two
        where, key = "<env>", f"sinks.{name}.secret_env"
        secret = os.environ.get(config.secret_env, "").strip()
        if not secret:
            raise ConfigError(
                where, [(key, f"environment variable {config.secret_env} is not set or empty")]
            )
    try:
        return Webhook(secret)
    except Exception:
        raise ConfigError(
            where, [(key, "not a Standard Webhooks secret (whsec_ followed by base64)")]
        ) from None


def _header_value(name: str, header: str, value: str | HeaderFromEnv | HeaderFromFile) -> str:
    """An extra header's value: literal, or read from the environment or a file now."""
    key = f"sinks.{name}.headers.{header}"
    where: Path | str = "<config>"
    if isinstance(value, HeaderFromEnv):
        where = "<env>"
        got = os.environ.get(value.env)
        if got is None:
            raise ConfigError(where, [(key, f"environment variable {value.env} is not set")])
        value = got
    elif isinstance(value, HeaderFromFile):
        where = value.file
        try:
            value = value.file.read_text(encoding="utf-8").rstrip("\r\n")
        except OSError as exc:
            raise ConfigError(where, [(key, f"cannot read: {exc.strerror}")]) from None
        except UnicodeDecodeError:
            raise ConfigError(where, [(key, "not UTF-8 text")]) from None
    if "\n" in value or "\r" in value:
        raise ConfigError(where, [(key, "a header value cannot contain a line break")])
    return value


class WebhookSink(Sink):
    """POSTs events to ``config.url`` from a spool at ``<state_directory>/webhook-<name>.sqlite``.

    The secret, extra headers and CA file are read here, when the daemon builds its sinks: a
    problem raises :class:`linkmond.config.ConfigError` (exit status 78).
    """

    def __init__(self, name: str, config: WebhookSinkConfig, state_directory: Path) -> None:
        self.name = name
        self.config = config
        self.state_directory = state_directory
        self._signer = load_signer(name, config)
        self._headers = {
            "User-Agent": f"linkmond/{__version__}",
            **{h: _header_value(name, h, v) for h, v in config.headers.items()},
        }
        self._ssl: ssl.SSLContext | bool = False
        if urlsplit(config.url).scheme == "https" and config.tls_verify:
            try:
                self._ssl = ssl.create_default_context(
                    cafile=str(config.ca_file) if config.ca_file else None
                )
            except (OSError, ssl.SSLError) as exc:
                raise ConfigError(
                    config.ca_file or "<tls>", [(f"sinks.{name}.ca_file", f"cannot load: {exc}")]
                ) from None
        parts = urlsplit(config.url)
        #: scheme://host:port only: a URL path or query may itself be a credential
        host = f"[{parts.hostname}]" if ":" in (parts.hostname or "") else parts.hostname
        self.endpoint = f"{parts.scheme}://{host}" + (f":{parts.port}" if parts.port else "")
        self.spool = Spool(
            state_directory / f"webhook-{name}.sqlite",
            state_directory / f"webhook-{name}.deadletter.jsonl",
            config.max_spool,
        )
        self._opened = False
        self._session: aiohttp.ClientSession | None = None
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._empty = asyncio.Event()  # set while nothing is spooled
        self._failing = False

    # -- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        """Open the spool and start delivering; events left by a previous run go first."""
        if urlsplit(self.config.url).scheme == "https" and not self.config.tls_verify:
            log.warning(
                "TLS VERIFICATION IS OFF for this webhook (tls_verify = false): anyone on the "
                "path can impersonate the receiver and read the events",
                sink=self.name,
                endpoint=self.endpoint,
            )
        await self._open()

    async def _open(self) -> None:
        if not self._opened:
            try:
                pending = await asyncio.to_thread(self.spool.open)
            except Exception as exc:
                raise SinkError(f"cannot open the spool {self.spool.db_path}: {exc}") from exc
            self._opened = True
            if pending:
                log.info("resuming spooled events", sink=self.name, pending=pending)
        if self._task is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(ssl=self._ssl, limit=4),
                timeout=aiohttp.ClientTimeout(total=self.config.timeout or None),
                headers=self._headers,
            )
            self._wake.set()
            previous = _deliverers.get(self.spool.db_path)
            self._task = asyncio.create_task(
                self._deliver_forever(previous), name=f"webhook:{self.name}"
            )
            _deliverers[self.spool.db_path] = self._task

    async def emit(self, events: Sequence[Event]) -> None:
        """Spool the batch (one transaction) and wake the delivery task; no HTTP here."""
        await self._open()
        try:
            evicted = await asyncio.to_thread(
                self.spool.append, [(e.id, e.json_line) for e in events]
            )
        except Exception as exc:
            raise SinkError(f"cannot spool to {self.spool.db_path}: {exc}") from exc
        if evicted:
            log.error(
                "webhook spool full (max_spool): oldest events moved to the dead-letter file",
                sink=self.name,
                evicted=evicted,
                evicted_total=self.spool.evicted,
                dead_letter=str(self.spool.deadletter_path),
            )
        self._empty.clear()
        self._wake.set()

    async def aclose(self) -> None:
        """Stop delivering (after a short grace if healthy) and close; the spool keeps the rest."""
        if self._task is not None:
            if not self._failing:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(CLOSE_GRACE):
                        await self._empty.wait()
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            if _deliverers.get(self.spool.db_path) is self._task:
                del _deliverers[self.spool.db_path]
            self._task = None
        if self._session is not None:
            await self._session.close()
            self._session = None
        if self._opened:
            await asyncio.to_thread(self.spool.close)
            self._opened = False

    # -- delivery ---------------------------------------------------------------------------

    async def _deliver_forever(self, previous: asyncio.Task[None] | None) -> None:
        if previous is not None and previous.get_loop() is asyncio.get_running_loop():
            await asyncio.wait([previous])  # the same spool's sink before a reload
        while True:
            self._wake.clear()  # before looking, so an emit while we look is not missed
            try:
                row = await asyncio.to_thread(self.spool.head, self.config.max_age)
            except Exception as exc:
                log.error("cannot read the webhook spool", sink=self.name, error=str(exc))
                await asyncio.sleep(self.config.retry_initial or 1.0)
                continue
            if row is None:
                self._empty.set()
                await self._wake.wait()
                continue
            try:
                await self._deliver(row)
            except Exception as exc:  # a spool (disk) error: keep the task alive, retry later
                log.error("webhook delivery error", sink=self.name, error=repr(exc))
                await asyncio.sleep(self.config.retry_initial or 1.0)

    def _body(self, row: SpooledEvent) -> tuple[str, str]:
        if self.config.format == "text":
            event = Event.model_validate_json(row.event)
            return json.dumps({"text": describe(event)}, ensure_ascii=False), TEXT_TYPE
        return row.event, CLOUDEVENTS_TYPE

    async def _deliver(self, row: SpooledEvent) -> None:
        """Attempt ``row`` until it is delivered, dead-lettered or pushed out of the spool."""
        try:
            body, content_type = self._body(row)
        except Exception as exc:  # a row this version cannot read or describe: never deliverable
            await asyncio.to_thread(
                self.spool.dead_letter, row, DeadLetter(f"unreadable event: {exc}")
            )
            return
        cap = self.config.retry_initial
        attempts = 0
        while True:
            attempts += 1
            result = await self._post(row.id, body, content_type)
            if result.delivered:
                await asyncio.to_thread(self.spool.remove, row.seq)
                if self._failing:
                    log.info("webhook delivering again", sink=self.name, attempts=attempts)
                self._failing = False
                return
            if not result.retryable:
                reason = (
                    f"HTTP {result.status}: redirects are not followed"
                    if result.status is not None and 300 <= result.status < 400
                    else f"HTTP {result.status}: permanent error"
                )
                log.error(
                    "webhook refused the event; moved to the dead-letter file",
                    sink=self.name,
                    endpoint=self.endpoint,
                    event_id=row.id,
                    status=result.status,
                    response=result.response,
                    dead_letter=str(self.spool.deadletter_path),
                )
                await asyncio.to_thread(
                    self.spool.dead_letter,
                    row,
                    DeadLetter(reason, result.status, result.response, attempts),
                )
                return
            if result.stale and attempts == 1:
                continue  # a kept-alive connection the receiver had closed: the POST never left
            self._failing = True
            delay = random.uniform(0, cap)
            cap = min(cap * 2, self.config.max_retry_delay)
            if result.retry_after is not None:
                delay = max(delay, result.retry_after)
            log.log(
                logging.ERROR if result.tls else logging.WARNING,
                "webhook TLS certificate verification failed: the receiver's certificate is not "
                "trusted (set ca_file for a private CA); nothing was sent, will retry"
                if result.tls
                else "webhook delivery failed; will retry",
                sink=self.name,
                endpoint=self.endpoint,
                event_id=row.id,
                status=result.status,
                error=result.error or None,
                response=result.response or None,
                attempt=attempts,
                retry_in=round(delay, 3),
            )
            age_left = row.accepted + self.config.max_age - time.time()
            await asyncio.sleep(max(0.0, min(delay, age_left)))
            if age_left <= delay:
                await asyncio.to_thread(
                    self.spool.dead_letter,
                    row,
                    DeadLetter(
                        f"max_age: undelivered after {self.config.max_age:g}s",
                        result.status,
                        result.response or result.error,
                        attempts,
                    ),
                )
                log.error(
                    "webhook event too old (max_age); moved to the dead-letter file",
                    sink=self.name,
                    event_id=row.id,
                    attempts=attempts,
                )
                return
            if not await asyncio.to_thread(self.spool.contains, row.seq):
                return  # pushed out by max_spool while we waited (and dead-lettered)

    async def _post(self, event_id: str, body: str, content_type: str) -> Attempt:
        assert self._session is not None
        now = int(time.time())
        headers = {
            "Content-Type": content_type,
            "webhook-id": event_id,
            "webhook-timestamp": str(now),
            "webhook-signature": self._signer.sign(
                event_id, datetime.fromtimestamp(now, UTC), body
            ),
        }
        try:
            async with self._session.post(
                self.config.url, data=body.encode(), headers=headers, allow_redirects=False
            ) as resp:
                answer = await resp.content.read(READ_MAX)
                return Attempt(
                    status=resp.status,
                    response=answer[:SNIPPET_MAX].decode("utf-8", "replace"),
                    retry_after=retry_after_seconds(resp.headers.get("Retry-After")),
                )
        except aiohttp.ClientConnectorCertificateError as exc:
            return Attempt(error=str(exc.certificate_error), tls=True)
        except aiohttp.ServerDisconnectedError as exc:
            return Attempt(error=f"server disconnected: {exc}", stale=True)
        except TimeoutError:
            return Attempt(error=f"timed out after {self.config.timeout:g}s")
        except (aiohttp.ClientError, OSError) as exc:
            return Attempt(error=f"{type(exc).__name__}: {exc}")
