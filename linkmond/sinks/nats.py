"""NATS sink: every event to a JetStream stream, exactly once and in order, from a spool.

``emit`` appends to the sink's SQLite spool (:class:`linkmond.durable.DurableQueue`) and
returns; the queue's task publishes the oldest spooled events, ``batch`` at a time, on one
connection (the server stores them in the order they were sent), each with header
``Nats-Msg-Id`` = the event id and the CloudEvents JSON as its body (the NATS binding of
CloudEvents, structured mode), and deletes a row only once JetStream acknowledged it. The
stream drops a message whose id it already holds within its duplicate window, so an event
sent again after a crash, a restart or a lost acknowledgement is stored once.

A stream absent from the server is created (file storage, subjects ``<prefix>.>``, a
duplicate window as long as the spool keeps an event, the configured limits); an existing
one is used as it is, and if it does not take our subjects, the publish fails with a clear
error and the events stay spooled. Nothing secret is read from the TOML: credentials come
from files (refused if every user may read them) or the environment, read when the sink is
built and again at a reload, and never logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import os
import re
import socket
import ssl
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit

import orjson
import structlog

from linkmond.config import ConfigError, NatsSinkConfig, SinkBase, is_loopback
from linkmond.credentials import read_private
from linkmond.durable import (
    Delivered,
    DurableQueue,
    DurableSink,
    Outcome,
    Policy,
    Reject,
    Retry,
    explain,
)
from linkmond.events import Event, now_rfc3339
from linkmond.fleet import FleetView
from linkmond.redact import redact_url
from linkmond.sinks.base import LinkObserver
from linkmond.spool import Spool, SpooledEvent

log = structlog.get_logger("linkmond.nats")

#: how long a healthy sink may go on publishing what is spooled when it is closed
CLOSE_GRACE: Final = 1.0
#: the JetStream API's error code for "expected stream does not match"
_WRONG_STREAM: Final = 10060
#: characters a subject token cannot hold, replaced by ``_``
_NOT_IN_TOKEN: Final = re.compile(r"[.*>\s]")


def subject_token(value: str) -> str:
    """``value`` as one subject token: ``.``, ``*``, ``>`` and whitespace become ``_``."""
    return _NOT_IN_TOKEN.sub("_", value) or "_"


def subject_prefix(template: str) -> str:
    """The literal tokens before the first field: ``linkmond`` for ``linkmond.{host}.{type}``."""
    literal = []
    for token in template.split("."):
        if token.startswith("{"):
            break
        literal.append(token)
    return ".".join(literal)


def subject_for(template: str, host: str, event: Event) -> str:
    """The subject ``event`` is published on. The type keeps its dot (``link.carrier_lost``
    is two tokens), so ``linkmond.web1.link.>`` selects one host's link events."""
    return make_subject(template, host, event.type, event.netns)


def make_subject(template: str, host: str, type_: str, netns: str) -> str:
    """``template`` with its fields filled in (see :func:`subject_for`)."""
    return (
        template.replace("{host}", subject_token(host))
        .replace("{netns}", subject_token(netns))
        .replace("{type}", type_)
    )


def host_name() -> str:
    """This host's name, as the subjects and the fleet view carry it (before escaping)."""
    return socket.gethostname()


class Connection:
    """How to reach the servers of one ``[sinks.NAME]`` (or ``linkmond fleet``): URLs,
    credentials (read now: a problem is a :class:`ConfigError`) and TLS; :meth:`open`
    connects."""

    def __init__(self, name: str, config: NatsSinkConfig) -> None:
        self.name = name
        self.config = config
        #: every server as scheme://host:port: what logs show
        self.endpoint = ", ".join(redact_url(url) for url in config.servers)
        self.warnings: list[str] = []
        self._auth: dict[str, Any] = {}
        key = f"sinks.{name}"
        if config.credentials_file is not None:
            data, warning = read_private(
                config.credentials_file, f"{key}.credentials_file", "credentials"
            )
            self._auth["user_credentials"] = _raw_credentials(data.decode("utf-8", "replace"))
            self._note(warning)
        elif config.nkey_file is not None:
            data, warning = read_private(config.nkey_file, f"{key}.nkey_file", "nkey seed")
            self._auth["nkeys_seed_str"] = data.decode("utf-8", "replace").strip()
            self._note(warning)
        elif config.token_env is not None:
            self._auth["token"] = _from_env(config.token_env, f"{key}.token_env")
        elif config.user is not None:
            assert config.password_env is not None  # the model requires both
            self._auth["user"] = config.user
            self._auth["password"] = _from_env(config.password_env, f"{key}.password_env")
        self._tls: ssl.SSLContext | None = None
        ca = None
        tls = any(url.lower().startswith("tls://") for url in config.servers)
        if config.ca_file is not None or tls:
            try:
                self._tls = ssl.create_default_context(
                    cafile=str(config.ca_file) if config.ca_file else None
                )
                ca = config.ca_file.read_bytes() if config.ca_file else None
            except (OSError, ssl.SSLError) as exc:
                raise ConfigError(
                    config.ca_file or "<tls>", [(f"{key}.ca_file", f"cannot load: {exc}")]
                ) from None
        #: what a reload compares: the options and what they named, as read now
        self.fingerprint = (config, repr(sorted(self._auth.items())), ca)
        if self._auth and not tls:
            remote = [u for u in config.servers if not is_loopback(urlsplit(u).hostname)]
            if remote:
                self.warnings.append(
                    "NATS credentials over plain nats:// to another host: they and the "
                    "events cross the network unencrypted; use tls://"
                )
        nkey_auth = config.credentials_file is not None or config.nkey_file is not None
        if nkey_auth and importlib.util.find_spec("nkeys") is None:  # what nats-py signs with
            raise ConfigError(
                "<install>",
                [(key, "the nkeys module is missing (pip install 'nats-py[nkeys]')")],
            )

    def _note(self, warning: str | None) -> None:
        if warning:
            self.warnings.append(warning)

    async def open(self, **options: Any) -> Any:
        """A connected ``nats.aio.client.Client``; ``options`` (callbacks) go to its
        ``connect``. Each server is tried twice at most (and the whole within ``timeout``
        per server), then :class:`ConnectError` says the last reason (refused,
        authorization violation, …). A connection lost later is tried again the same way,
        after which the client is closed: the caller opens a new one with its backoff."""
        from nats.aio.client import Client  # noqa: PLC0415 - loaded only for a nats sink

        failures: list[BaseException] = []

        async def record(exc: Exception) -> None:
            failures.append(exc)
            log.debug("NATS client error", error=explain(exc))

        settings: dict[str, Any] = {
            "servers": list(self.config.servers),
            "connect_timeout": max(1, round(self.config.timeout)),
            # a lost connection is tried again once per server at once; then the client
            # closes and the caller's backoff takes over (nats-py would otherwise retry a
            # failing first connection for ever, inside connect)
            "allow_reconnect": True,
            "max_reconnect_attempts": 1,
            "reconnect_time_wait": 0.5,
            "tls": self._tls,
            "name": f"linkmond {host_name()}",
            # nats-py would log every failed reconnection with a traceback: the callers log
            # what matters (a publish or a write that failed), once per streak
            "error_cb": record,
            **self._auth,
        }
        settings.update(options)
        client = Client()
        try:
            async with asyncio.timeout(self.config.timeout * len(self.config.servers) + 1):
                await client.connect(**settings)
        except BaseException as exc:
            with contextlib.suppress(Exception):
                await client.close()
            if isinstance(exc, Exception):
                why = failures[-1] if failures else exc
                raise ConnectError(self._redact(explain(why))) from exc
            raise
        return client

    def _redact(self, text: str) -> str:
        for url in self.config.servers:
            text = text.replace(url, redact_url(url))
        return text


class ConnectError(Exception):
    """No server of the list could be connected to; the message says why (the last reason)."""


def _raw_credentials(text: str) -> Any:
    from nats.aio.client import RawCredentials  # noqa: PLC0415

    return RawCredentials(text)


def _from_env(variable: str, key: str) -> str:
    value = os.environ.get(variable, "")
    if not value:
        raise ConfigError("<env>", [(key, f"environment variable {variable} is not set or empty")])
    return value


class _Publisher:
    """The nats transport: publish a batch to JetStream and wait for its acknowledgements."""

    def __init__(self, connection: Connection) -> None:
        self.connection = connection
        self.config = connection.config
        self.endpoint = connection.endpoint
        self.host = host_name()
        self._client: Any = None  # nats.aio.client.Client, connected
        self._js: Any = None
        self._stream_checked = False
        self._closing = False
        self._lock = asyncio.Lock()

    async def send(self, batch: Sequence[SpooledEvent]) -> Outcome:
        """Publish ``batch`` in order; delivered up to the first event not acknowledged."""
        try:
            js = await self._jetstream()
        except Exception as exc:
            return Retry(self._why(exc), message="cannot reach the NATS servers; will retry")
        import nats.errors  # noqa: PLC0415
        import nats.js.errors  # noqa: PLC0415

        config = self.config
        subjects = []
        for row in batch:
            subject = self._subject(row)
            if subject is None:
                break
            subjects.append(subject)
        futures = []
        try:
            for row, subject in zip(batch, subjects, strict=False):
                futures.append(
                    await js.publish_async(
                        subject,
                        row.event.encode(),
                        headers={"Nats-Msg-Id": row.id},
                        stream=config.stream,
                        wait_stall=config.timeout,
                    )
                )
        except Exception as exc:
            for future in futures:
                future.cancel()
            return Retry(self._why(exc), message="publish failed; will retry")
        for delivered, future in enumerate(futures):
            try:
                async with asyncio.timeout(config.timeout):
                    await future
            except nats.js.errors.NoStreamResponseError:
                self._stream_checked = False  # a server back without its store: create it again
                return Retry(
                    f"no stream takes subject {subjects[delivered]} (is stream "
                    f"{config.stream} there, and do its subjects cover it?)",
                    delivered=delivered,
                    message="publish not stored; will retry",
                )
            except nats.js.errors.APIError as exc:
                why = (
                    f"the subject belongs to another stream than {config.stream} (its "
                    "subjects do not cover ours, or overlap another's)"
                    if exc.err_code == _WRONG_STREAM
                    else explain(exc)
                )
                return Retry(why, delivered=delivered, message="publish refused; will retry")
            except (TimeoutError, nats.errors.Error, OSError) as exc:
                return Retry(
                    self._why(exc),
                    delivered=delivered,
                    message="publish not acknowledged; will retry",
                )
        if len(subjects) < len(batch):  # a row that cannot be read: it never will be
            return Reject(
                "unreadable event: no type and netns to make its subject of",
                delivered=len(subjects),
                message="unreadable event; moved to the dead-letter file",
            )
        return Delivered()

    def _subject(self, row: SpooledEvent) -> str | None:
        """The subject of a spooled event, read leniently (a row a newer version spooled
        still goes out); None if it has no type."""
        try:
            fields = orjson.loads(row.event)
            type_, netns = fields["type"], fields.get("netns") or "default"
        except (orjson.JSONDecodeError, KeyError, TypeError):
            return None
        if not isinstance(type_, str) or not type_ or not isinstance(netns, str):
            return None
        return make_subject(self.config.subject, self.host, type_, netns)

    def _why(self, exc: BaseException) -> str:
        if isinstance(exc, ConnectError):
            return str(exc)
        return self.connection._redact(explain(exc))

    async def _jetstream(self) -> Any:
        async with self._lock:
            client = self._client
            if client is None or client.is_closed:
                client = await self.connection.open(
                    disconnected_cb=self._disconnected, reconnected_cb=self._reconnected
                )
                if self._closing:  # closed (a reload replaced it) while connecting
                    with contextlib.suppress(Exception):
                        await client.close()
                    raise ConnectError("the sink was reconfigured meanwhile")
                self._client = client
                self._js = client.jetstream(timeout=self.config.timeout)
                self._stream_checked = False
                log.info("connected to NATS", sink=self.connection.name, endpoint=self.endpoint)
            if not self._stream_checked:
                await ensure_stream(self._js, self.config)
                self._stream_checked = True
            return self._js

    async def _reconnected(self) -> None:
        self._stream_checked = False  # maybe another server, or one that lost its store
        log.info("reconnected to NATS", sink=self.connection.name)

    async def _disconnected(self) -> None:
        if not self._closing:
            log.info("disconnected from NATS; reconnecting", sink=self.connection.name)

    async def aclose(self) -> None:
        """Close the connection (what is unacknowledged stays spooled)."""
        self._closing = True
        client, self._client = self._client, None
        if client is not None and not client.is_closed:
            with contextlib.suppress(Exception):
                await client.close()


async def ensure_stream(js: Any, config: NatsSinkConfig) -> None:
    """Create ``config.stream`` if the server has none of that name (file storage, subjects
    ``<prefix>.>``, a duplicate window as long as the spool keeps an event, the configured
    limits); an existing stream is used as it is."""
    import nats.js.errors  # noqa: PLC0415
    from nats.js.api import StorageType, StreamConfig  # noqa: PLC0415

    try:
        info = await js.stream_info(config.stream)
    except nats.js.errors.NotFoundError:
        pass
    else:
        window = info.config.duplicate_window or 0
        if window < config.max_age:
            log.warning(
                "the stream's duplicate window is shorter than the spool keeps an event: an "
                "event sent again after that long (a long outage, a crash) is stored twice",
                stream=config.stream,
                duplicate_window=window,
                max_age=config.max_age,
            )
        return
    limits = config.stream_limits
    window = config.max_age
    if limits.max_age:
        window = min(window, limits.max_age)
    await js.add_stream(
        StreamConfig(
            name=config.stream,
            subjects=[f"{subject_prefix(config.subject)}.>"],
            storage=StorageType.FILE,
            duplicate_window=window,
            max_age=limits.max_age or None,
            max_bytes=limits.max_bytes or -1,
            max_msgs_per_subject=limits.max_msgs_per_subject or -1,
        )
    )
    log.info(
        "created the JetStream stream",
        stream=config.stream,
        subjects=f"{subject_prefix(config.subject)}.>",
        duplicate_window=window,
    )


def _policy(config: NatsSinkConfig) -> Policy:
    return Policy(config.retry_initial, config.max_retry_delay, config.max_age, config.batch)


class NatsSink(DurableSink):
    """Publishes events to JetStream from a spool at ``<state_directory>/nats-<name>.sqlite``."""

    def __init__(self, name: str, config: NatsSinkConfig, state_directory: Path) -> None:
        self.name = name
        self._publisher = _Publisher(Connection(name, config))
        spool = Spool(
            state_directory / f"nats-{name}.sqlite",
            state_directory / f"nats-{name}.deadletter.jsonl",
            config.max_spool,
            config.deadletter_max_bytes,
        )
        self.queue = DurableQueue(
            name, "nats", spool, self._publisher, _policy(config), grace=CLOSE_GRACE
        )
        #: this host's links in the fleet's key-value bucket
        self.fleet = FleetView(self._publisher.connection, host_name())

    @property
    def config(self) -> NatsSinkConfig:
        """The options in force (a reload may have replaced them)."""
        return self._publisher.config

    async def start(self) -> None:
        """Open the spool and start publishing; events left by a previous run go first."""
        for warning in self._publisher.connection.warnings:
            log.warning(warning, sink=self.name)
        await self.queue.open()
        self.fleet.start(now_rfc3339())

    def link_observer(self) -> LinkObserver:
        """The fleet view: it sees every link event and the daemon's link tables."""
        return self.fleet

    def prepare(self, options: SinkBase) -> Callable[[], None] | None:
        """Read the credentials and CA for ``options`` again (a reload); returns what puts
        them in force, on a new connection, or None when neither they nor the options
        changed. Raises :class:`ConfigError`, nothing changed."""
        if not isinstance(options, NatsSinkConfig):
            raise ConfigError("<reload>", [(f"sinks.{self.name}.type", "cannot change type")])
        publisher = _Publisher(Connection(self.name, options))
        if publisher.connection.fingerprint == self._publisher.connection.fingerprint:
            return None  # nothing new, in the config or the files it names: keep connected

        def apply() -> None:
            old, self._publisher = self._publisher, publisher
            self.queue.spool.max_spool = options.max_spool
            self.queue.spool.deadletter_max_bytes = options.deadletter_max_bytes
            for warning in publisher.connection.warnings:
                log.warning(warning, sink=self.name)
            self.queue.reconfigure(publisher, _policy(options))
            self.fleet.reconfigure(publisher.connection)
            self.retire(old.aclose())

        return apply

    async def close_transport(self) -> None:
        """Write what the fleet view holds (briefly), then close both connections."""
        await self.fleet.aclose()
        await self._publisher.aclose()
