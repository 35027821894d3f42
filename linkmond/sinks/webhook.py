"""Webhook sink: signed CloudEvents POSTs from a durable spool (docs/configuration.md).

``emit`` only appends the batch to the SQLite spool (one transaction, in a worker thread) and
wakes the delivery task; it never waits for HTTP, so a slow or absent receiver delays no other
sink. The delivery task POSTs the spooled events one at a time, oldest first, over one reused
aiohttp session, signed per Standard Webhooks (``webhook-id`` = the event id, stable across
retries). A row leaves the spool only after a 2xx, or into the dead-letter file: permanent
HTTP errors (3xx is not followed, 4xx other than 408/429), ``max_age`` and ``max_spool``.
Connection errors, timeouts, 408, 429 and 5xx retry the same event with full-jitter
exponential backoff, honouring ``Retry-After`` up to ``max_retry_delay``. Pending rows survive
a restart and are attempted at once by the next run.

The URL is shown only as ``scheme://host:port`` (:mod:`linkmond.redact`), error texts of
aiohttp included; answers are read undecompressed, and only their first bytes; a recurring
log line is written at most once per :data:`LOG_EVERY` seconds with a count of the rest.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import ssl
import time
from collections.abc import Callable, Sequence
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
from linkmond.config import (
    HEADER_VALUE_FORBIDDEN,
    ConfigError,
    HeaderFromEnv,
    HeaderFromFile,
    SinkBase,
    WebhookSinkConfig,
    is_loopback,
)
from linkmond.credentials import read_private
from linkmond.durable import (
    Delivered,
    DurableQueue,
    DurableSink,
    Outcome,
    Policy,
    Reject,
    Retry,
    Throttle,  # noqa: F401 - where the tests (and older code) import it from
)
from linkmond.events import Event, describe
from linkmond.redact import redact_text, redact_url
from linkmond.spool import Spool, SpooledEvent

log = structlog.get_logger("linkmond.webhook")

CLOUDEVENTS_TYPE: Final = "application/cloudevents+json; charset=utf-8"
TEXT_TYPE: Final = "application/json"
#: how much of a 2xx answer is read (undecompressed), so that the connection can be reused
READ_MAX: Final = 64 * 1024
#: how much of any other answer is read and kept (logs, the dead-letter file)
SNIPPET_MAX: Final = 512
#: at shutdown, how long a healthy sink may keep delivering what is spooled
CLOSE_GRACE: Final = 1.0

#: (sink, endpoint) pairs already warned about plain http:// in this process
_warned_plain_http: set[tuple[str, str]] = set()


@dataclass(frozen=True)
class Attempt:
    """The outcome of one POST: an HTTP status, or ``error`` when there was no answer.

    ``retry_after`` is the header as received: it is parsed only when the event is retried,
    so nothing in a 2xx answer can keep a delivered event in the spool.
    """

    status: int | None = None
    response: str = ""
    retry_after: str | None = None
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
    """``Retry-After`` as seconds from now: ASCII delta-seconds or an HTTP date; None when
    absent or unreadable (never raises). The caller caps it (``max_retry_delay``)."""
    if not value:
        return None
    value = value.strip()
    if not value.isascii():
        return None
    if value.isdigit():
        return float(value)  # inf for an absurd number of digits, never an exception
    try:
        when = parsedate_to_datetime(value)
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        return max(0.0, when.timestamp() - (time.time() if now is None else now))
    except (ArithmeticError, LookupError, TypeError, ValueError):
        return None


def load_signer(name: str, config: WebhookSinkConfig, warnings: list[str] | None = None) -> Webhook:
    """The Standard Webhooks signer for the secret in ``secret_file`` or ``secret_env``.

    Raises :class:`ConfigError` naming the file (or ``<env>``) and the key; the secret's
    value never enters a message. A secret file every user may read is refused; one a group
    may read adds a line to ``warnings``.
    """
    if config.secret_file is not None:
        where, key = str(config.secret_file), f"sinks.{name}.secret_file"
        data, warning = read_private(config.secret_file, key, "secret")
        if warning and warnings is not None:
            warnings.append(warning)
        try:
            secret = data.decode("utf-8").strip()
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


def _header_value(
    name: str,
    header: str,
    value: str | HeaderFromEnv | HeaderFromFile,
    warnings: list[str] | None = None,
) -> str:
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
        data, warning = read_private(value.file, key, "header value")
        if warning and warnings is not None:
            warnings.append(warning)
        try:
            value = data.decode("utf-8").rstrip("\r\n")
        except UnicodeDecodeError:
            raise ConfigError(where, [(key, "not UTF-8 text")]) from None
    if HEADER_VALUE_FORBIDDEN.search(value):
        raise ConfigError(
            where,
            [(key, "a header value cannot contain a line break or another control character")],
        )
    return value


def _refuse_symlink(path: Path, key: str) -> None:
    """A planted symlink where the sink keeps a file: a config error now, not a retry loop."""
    if path.is_symlink():
        raise ConfigError(path, [(key, "is a symlink: not followed (remove it)")])


class WebhookSink(DurableSink):
    """POSTs events to ``config.url`` from a spool at ``<state_directory>/webhook-<name>.sqlite``.

    The secret, extra headers and CA file are read here, when the daemon builds its sinks, and
    again by :meth:`prepare` at a reload: a problem raises
    :class:`linkmond.config.ConfigError` (exit status 78; a reload is rejected). Warnings found
    meanwhile (a secret file its group may read) are logged by :meth:`start`. The spool and
    its delivery are a :class:`linkmond.durable.DurableQueue`; this class signs, POSTs and
    says what each answer means.
    """

    def __init__(self, name: str, config: WebhookSinkConfig, state_directory: Path) -> None:
        self.name = name
        self.state_directory = state_directory
        self._poster = _Poster(name, config)
        spool = Spool(
            state_directory / f"webhook-{name}.sqlite",
            state_directory / f"webhook-{name}.deadletter.jsonl",
            config.max_spool,
            config.deadletter_max_bytes,
        )
        _refuse_symlink(spool.db_path, f"sinks.{name}")
        _refuse_symlink(spool.deadletter_path, f"sinks.{name}")
        self.queue = DurableQueue(
            name, "webhook", spool, self._poster, _policy(config), grace=CLOSE_GRACE
        )

    @property
    def config(self) -> WebhookSinkConfig:
        """The options in force (a reload may have replaced them)."""
        return self._poster.config

    @property
    def endpoint(self) -> str:
        """``scheme://host:port`` of the URL: what logs show of it."""
        return self._poster.endpoint

    @property
    def spool(self) -> Spool:
        """The SQLite spool of undelivered events."""
        return self.queue.spool

    # -- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        """Open the spool and start delivering; events left by a previous run go first."""
        self._poster.warn()
        await self.queue.open()

    def prepare(self, options: SinkBase) -> Callable[[], None] | None:
        """Read the new secret, headers and CA file for ``options`` (a reload); returns what
        puts them in force, or None when neither they nor the options changed. Raises
        :class:`ConfigError` with nothing changed."""
        if not isinstance(options, WebhookSinkConfig):
            raise ConfigError("<reload>", [(f"sinks.{self.name}.type", "cannot change type")])
        poster = _Poster(self.name, options)
        if poster.fingerprint == self._poster.fingerprint:
            return None  # nothing new, in the config or the files it names: keep the session

        def apply() -> None:
            old, self._poster = self._poster, poster
            self.spool.max_spool = options.max_spool
            self.spool.deadletter_max_bytes = options.deadletter_max_bytes
            poster.warn()
            self.queue.reconfigure(poster, _policy(options))
            self.retire(old.aclose())

        return apply

    async def close_transport(self) -> None:
        """Close the HTTP session."""
        await self._poster.aclose()


def _file_bytes(path: Path | None) -> bytes | None:
    """A file's contents, to tell whether it changed (None: no file, or unreadable)."""
    if path is None:
        return None
    try:
        return path.read_bytes()
    except OSError:
        return None


def _policy(config: WebhookSinkConfig) -> Policy:
    return Policy(config.retry_initial, config.max_retry_delay, config.max_age, batch=1)


class _Poster:
    """The webhook transport: one signed POST per event over a reused aiohttp session, and
    what the answer means for the event (:mod:`linkmond.durable`'s outcomes)."""

    def __init__(self, name: str, config: WebhookSinkConfig) -> None:
        self.name = name
        self.config = config
        #: scheme://host:port only, wherever the URL is shown: its user info, path or query
        #: may be a credential
        self.endpoint = redact_url(config.url)
        self._warnings: list[str] = []
        self._signer = load_signer(name, config, self._warnings)
        self._headers = {
            "User-Agent": f"linkmond/{__version__}",
            # answers are read undecompressed (no decompression bomb): ask for none
            "Accept-Encoding": "identity",
            **{h: _header_value(name, h, v, self._warnings) for h, v in config.headers.items()},
        }
        self._ssl: ssl.SSLContext | bool = False
        parts = urlsplit(config.url)
        if parts.scheme == "https" and config.tls_verify:
            try:
                self._ssl = ssl.create_default_context(
                    cafile=str(config.ca_file) if config.ca_file else None
                )
            except (OSError, ssl.SSLError) as exc:
                raise ConfigError(
                    config.ca_file or "<tls>", [(f"sinks.{name}.ca_file", f"cannot load: {exc}")]
                ) from None
        self._plain_remote = parts.scheme == "http" and not is_loopback(parts.hostname)
        self._session: aiohttp.ClientSession | None = None
        #: what a reload compares: the options and what they named, as read now
        self.fingerprint = (
            config,
            self._signer._whsecret,
            tuple(sorted(self._headers.items())),
            _file_bytes(config.ca_file),
        )

    def warn(self) -> None:
        """Log what reading the config found worth a warning (once per endpoint for http)."""
        for warning in self._warnings:
            log.warning(warning, sink=self.name)
        if urlsplit(self.config.url).scheme == "https" and not self.config.tls_verify:
            log.warning(
                "TLS VERIFICATION IS OFF for this webhook (tls_verify = false): anyone on the "
                "path can impersonate the receiver and read the events",
                sink=self.name,
                endpoint=self.endpoint,
            )
        if self._plain_remote and (self.name, self.endpoint) not in _warned_plain_http:
            _warned_plain_http.add((self.name, self.endpoint))
            log.warning(
                "webhook over plain http:// to another host: the events and any credentials "
                "in its headers or URL cross the network unencrypted; use https://",
                sink=self.name,
                endpoint=self.endpoint,
            )

    async def aclose(self) -> None:
        """Close the HTTP session."""
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _redact(self, text: str) -> str:
        """``text`` (an exception's, say) without this sink's URL in it but its endpoint."""
        return redact_text(text, self.config.url)

    def _body(self, row: SpooledEvent) -> tuple[str, str]:
        if self.config.format == "text":
            event = Event.model_validate_json(row.event)
            return json.dumps({"text": describe(event)}, ensure_ascii=False), TEXT_TYPE
        return row.event, CLOUDEVENTS_TYPE

    async def send(self, batch: Sequence[SpooledEvent]) -> Outcome:
        """POST the first event of ``batch`` (the queue sends one at a time)."""
        row = batch[0]
        try:
            body, content_type = self._body(row)
        except Exception as exc:  # a row this version cannot read or describe: never deliverable
            return Reject(f"unreadable event: {exc}", message="unreadable event")
        result = await self._post(row.id, body, content_type)
        if result.delivered:
            return Delivered()
        if not result.retryable:
            redirect = result.status is not None and 300 <= result.status < 400
            return Reject(
                f"HTTP {result.status}: "
                + ("redirects are not followed" if redirect else "permanent error"),
                result.status,
                result.response,
                message="refused the event; moved to the dead-letter file",
            )
        if result.tls:
            return Retry(
                result.error,
                message="TLS certificate verification failed: the receiver's certificate is "
                "not trusted (set ca_file for a private CA); nothing was sent, will retry",
                level=logging.ERROR,
            )
        return Retry(
            result.error,
            result.status,
            result.response,
            after=retry_after_seconds(result.retry_after),
            immediate=result.stale,
        )

    async def _post(self, event_id: str, body: str, content_type: str) -> Attempt:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(ssl=self._ssl, limit=4),
                timeout=aiohttp.ClientTimeout(total=self.config.timeout or None),
                headers=self._headers,
                # a compressed answer stays compressed: nothing can inflate in memory
                auto_decompress=False,
            )
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
                if 200 <= resp.status < 300:
                    # delivered, whatever follows; the rest is read only to reuse the connection
                    with contextlib.suppress(aiohttp.ClientError, OSError, TimeoutError):
                        await _read(resp, READ_MAX)
                    return Attempt(status=resp.status)
                return Attempt(
                    status=resp.status,
                    # a receiver may quote the request's path or query back (a 404 page)
                    response=self._redact(await _snippet(resp)),
                    retry_after=resp.headers.get("Retry-After"),
                )
        except aiohttp.ClientConnectorCertificateError as exc:
            return Attempt(error=self._redact(str(exc.certificate_error)), tls=True)
        except aiohttp.ServerDisconnectedError as exc:
            return Attempt(error=self._redact(f"server disconnected: {exc}"), stale=True)
        except TimeoutError:
            return Attempt(error=f"timed out after {self.config.timeout:g}s")
        except (aiohttp.ClientError, OSError) as exc:
            # aiohttp puts the whole URL into some messages (ClientResponseError: url=…)
            return Attempt(error=self._redact(f"{type(exc).__name__}: {exc}"))


async def _read(resp: aiohttp.ClientResponse, limit: int) -> bytes:
    """Up to ``limit`` bytes of the answer's body as sent (never decompressed)."""
    data = b""
    while len(data) < limit:
        chunk = await resp.content.read(limit - len(data))
        if not chunk:
            break
        data += chunk
    return data


async def _snippet(resp: aiohttp.ClientResponse) -> str:
    """The start of an answer for the logs and the dead-letter file: the first
    :data:`SNIPPET_MAX` bytes as text; a compressed answer is not decoded, only named."""
    encoding = resp.headers.get("Content-Encoding", "").strip().lower()
    if encoding not in ("", "identity"):
        return f"<{encoding}-encoded answer, not decoded>"
    try:
        data = await _read(resp, SNIPPET_MAX)
    except (aiohttp.ClientError, OSError, TimeoutError):
        return "<the answer broke off>"
    return data.decode("utf-8", "replace")
