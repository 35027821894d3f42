"""The fleet view: every host's current links in the JetStream key-value bucket
``LINKMOND_LINKS``, so that "which NICs have no carrier right now" is one read.

Each daemon with a nats sink keeps its own links there, key ``<host>.<netns>.<ifname>``
(each part escaped to what a key may hold), value the link as JSON: ``host``, ``netns``,
``ifname``, ``ifindex``, ``admin_up``, ``carrier``, ``operstate``, ``mtu``, ``mac``,
``since`` (the time of its last change, or when the daemon first saw it) and ``event_id``
(the event that told it; null for a link unchanged since the daemon started). The whole set
is written at start, after every reconnection and every hour (keys of this host that name
no current link are deleted then), one key on every link event, and a key is deleted on
``link.removed``. The bucket forgets a key not written for a day, so a retired or renamed
host's links leave the view by themselves. Writes are coalesced: a key written again before
the last write went out is sent once, with its latest value.
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import re
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Final

import orjson
import structlog

from linkmond.backoff import Backoff
from linkmond.durable import explain
from linkmond.events import Event

if TYPE_CHECKING:
    from linkmond.sinks.nats import Connection

log = structlog.get_logger("linkmond.fleet")

BUCKET: Final = "LINKMOND_LINKS"
#: a key not written for this long leaves the bucket (a retired or renamed host's links)
BUCKET_TTL: Final = 86400.0
#: every daemon writes its whole set again this often, well within BUCKET_TTL
REFRESH: Final = 3600.0
#: at close, how long the writer may take to end once cancelled
CLOSE_WAIT: Final = 2.0
#: the link fields a value carries (beside host, netns, since and event_id)
FIELDS: Final = ("ifname", "ifindex", "admin_up", "carrier", "operstate", "mtu", "mac")
#: what a key token may not hold (NATS keys: letters, digits, ``-_=/``; ``.`` separates)
_NOT_IN_KEY: Final = re.compile(r"[^-_=A-Za-z0-9]")


def key_token(value: str) -> str:
    """``value`` as one token of a key: anything but letters, digits and ``-_=`` as ``_``."""
    return _NOT_IN_KEY.sub("_", value) or "_"


def link_key(host: str, netns: str, ifname: str) -> str:
    """``<host>.<netns>.<ifname>``, each escaped."""
    return f"{key_token(host)}.{key_token(netns)}.{key_token(ifname)}"


def link_value(
    host: str, netns: str, link: dict[str, Any], since: str, event_id: str | None
) -> dict[str, Any]:
    """The JSON object the bucket holds for one link."""
    value: dict[str, Any] = {"host": host, "netns": netns}
    value.update({field: link.get(field) for field in FIELDS})
    value["since"] = since
    value["event_id"] = event_id
    return value


class FleetView:
    """This host's links in the bucket, kept current from a snapshot and link events.

    :meth:`sync` gives the whole set (at start, when a namespace comes or goes);
    :meth:`link_event` one change. A task writes what changed, reconnecting and writing the
    whole set again after a failure, with backoff; it never holds anything else up.
    """

    def __init__(self, connection: Connection, host: str) -> None:
        self.connection = connection
        self.host = host
        #: key → the value it should hold (None: delete it)
        self._desired: dict[str, dict[str, Any]] = {}
        self._dirty: dict[str, dict[str, Any] | None] = {}
        self._full = True  # write everything and delete stale keys at the next chance
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._client: Any = None
        self._kv: Any = None
        self._failing = False
        #: (netns, ifindex) → (since, event_id) of the link's last event
        self._changed: dict[tuple[str, int], tuple[str, str]] = {}
        self._started_at = ""
        #: the daemon told the whole set (:meth:`sync`): until then nothing is written (a
        #: full write would take every key of this host for stale)
        self._synced = False
        self._closing: set[asyncio.Task[None]] = set()

    def start(self, now: str) -> None:
        """Begin writing (``now``: the time links never changed since are given)."""
        self._started_at = now
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="fleet-view")

    def reconfigure(self, connection: Connection) -> None:
        """A reload: connect anew with ``connection`` and write the whole set again."""
        self.connection = connection
        self._drop_client()
        self._full = True
        self._wake.set()

    def sync(self, links: Iterable[tuple[str, dict[str, Any]]]) -> None:
        """Every current link, as (netns, link); what is not among them is deleted."""
        desired = {}
        for netns, link in links:
            since, event_id = self._changed.get((netns, link["ifindex"]), (self._started_at, None))
            key = link_key(self.host, netns, link["ifname"])
            desired[key] = link_value(self.host, netns, link, since, event_id)
        for key in self._desired.keys() - desired.keys():
            self._dirty[key] = None
        for key, value in desired.items():
            if self._desired.get(key) != value:
                self._dirty[key] = value
        self._desired = desired
        self._synced = True
        self._wake.set()

    def link_event(self, event: Event) -> None:
        """A link event of any namespace: its key written, or deleted for ``link.removed``."""
        data = event.data
        key = link_key(self.host, event.netns, data["ifname"])
        ident = (event.netns, data["ifindex"])
        if event.type == "link.removed":
            self._changed.pop(ident, None)
            if self._desired.pop(key, None) is not None:
                self._dirty[key] = None
        else:
            self._changed[ident] = (event.time, event.id)
            renamed = data.get("changes", {}).get("ifname")
            if renamed and renamed[0]:
                old = link_key(self.host, event.netns, renamed[0])
                if self._desired.pop(old, None) is not None:
                    self._dirty[old] = None
            value = link_value(self.host, event.netns, data, event.time, event.id)
            self._desired[key] = value
            self._dirty[key] = value
        self._wake.set()

    async def aclose(self, grace: float = 1.0) -> None:
        """Write what is pending (within ``grace`` seconds), then disconnect."""
        if self._task is not None:
            if self._dirty and not self._failing:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(grace):
                        while self._dirty:  # noqa: ASYNC110 - the writer empties it
                            await asyncio.sleep(0.01)
            self._task.cancel()
            # bounded: nats-py may swallow the cancellation while it waits to reconnect
            await asyncio.wait([self._task], timeout=CLOSE_WAIT)
            self._task = None
        await self._close_client()

    # -- the writer -------------------------------------------------------------------------

    async def _run(self) -> None:
        config = self.connection.config
        backoff = Backoff(config.retry_initial, config.max_retry_delay, jitter=True)
        while not _cancelling():  # (a library may have swallowed the cancellation)
            if not self._synced or (not self._dirty and not self._full):
                self._wake.clear()
                try:
                    async with asyncio.timeout(REFRESH):
                        await self._wake.wait()
                except TimeoutError:
                    self._full = True  # keep this host's keys younger than the bucket's TTL
                continue
            try:
                await self._write()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._full = True
                await self._close_client()
                delay = backoff.next()
                if not self._failing:
                    log.warning(
                        "fleet view not written; will retry",
                        endpoint=self.connection.endpoint,
                        error=explain(exc),
                        retry_in=round(delay, 3),
                    )
                self._failing = True
                await asyncio.sleep(delay)
                continue
            if self._failing:
                log.info("fleet view written again", endpoint=self.connection.endpoint)
            self._failing = False
            backoff.reset()

    async def _bucket(self) -> Any:
        if self._kv is None:
            current: list[Any] = []

            async def reconnected() -> None:
                self._full = True  # the server may have lost the bucket, or be another one
                self._wake.set()

            async def closed() -> None:
                # the client gave up reconnecting (or was closed): if it is still ours,
                # connect anew (with backoff) and write everything
                if current and self._client is current[0]:
                    self._client = self._kv = None
                    self._full = True
                    self._wake.set()

            client = await self.connection.open(reconnected_cb=reconnected, closed_cb=closed)
            current.append(client)
            self._client = client
            self._kv = await open_bucket(client.jetstream(), create=True)
        return self._kv

    async def _write(self) -> None:
        kv = await self._bucket()
        if self._full:
            self._full = False  # a reconnection while this runs asks for another
            self._dirty.clear()
            mine = await bucket_entries(kv, key_token(self.host) + ".>", meta_only=True)
            stale = [e.key for e in mine if e.key not in self._desired]
            for key in stale:
                # another host whose name escapes alike (web.1, web_1) keeps its keys
                if await self._ours(kv, key):
                    await kv.delete(key)
            for key, value in list(self._desired.items()):
                await kv.put(key, orjson.dumps(value))
            return
        while self._dirty:
            key = next(iter(self._dirty))
            wanted = self._dirty[key]
            if wanted is None:
                await kv.delete(key)
            else:
                await kv.put(key, orjson.dumps(wanted))
            if self._dirty.get(key) is wanted:  # not changed again meanwhile
                del self._dirty[key]

    async def _ours(self, kv: Any, key: str) -> bool:
        import nats.js.errors  # noqa: PLC0415

        try:
            entry = await kv.get(key)
        except nats.js.errors.KeyNotFoundError:
            return False
        try:
            return bool(orjson.loads(entry.value or b"{}").get("host") == self.host)
        except (orjson.JSONDecodeError, AttributeError):
            return True  # not a link's value: nobody's, and under our name

    def _drop_client(self) -> None:
        client, self._client, self._kv = self._client, None, None
        if client is not None:
            task = asyncio.get_running_loop().create_task(_close(client))
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)

    async def _close_client(self) -> None:
        client, self._client, self._kv = self._client, None, None
        if client is not None:
            await _close(client)


def _cancelling() -> bool:
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


async def _close(client: Any) -> None:
    with contextlib.suppress(Exception):
        await client.close()


async def open_bucket(js: Any, *, create: bool) -> Any:
    """The ``LINKMOND_LINKS`` bucket (created, one value per key, on disk, if ``create``)."""
    import nats.js.errors  # noqa: PLC0415
    from nats.js.api import KeyValueConfig, StorageType  # noqa: PLC0415

    try:
        return await js.key_value(BUCKET)
    except nats.js.errors.BucketNotFoundError:
        if not create:
            raise
    return await js.create_key_value(
        KeyValueConfig(bucket=BUCKET, history=1, storage=StorageType.FILE, ttl=BUCKET_TTL)
    )


async def bucket_entries(kv: Any, keys: str = ">", *, meta_only: bool = False) -> list[Any]:
    """The current entries whose keys match ``keys`` (a subject pattern: ``web1.>``), read
    in one go by a watcher (one request, not one per key); deleted keys left out."""
    watcher = await kv.watch(keys, ignore_deletes=True, meta_only=meta_only)
    entries = []
    try:
        async for entry in watcher:
            if entry is None:  # the end of what is stored now
                break
            entries.append(entry)
    finally:
        await watcher.stop()
    return entries


async def read_links(kv: Any) -> list[dict[str, Any]]:
    """Every link of every host in the bucket, sorted by host, netns and name."""
    links = []
    for entry in await bucket_entries(kv):
        if entry.value:
            with contextlib.suppress(orjson.JSONDecodeError):
                links.append(orjson.loads(entry.value))
    links.sort(key=lambda v: (v.get("host", ""), v.get("netns", ""), v.get("ifname", "")))
    return links


def select(links: list[dict[str, Any]], host: str | None, down: bool) -> list[dict[str, Any]]:
    """``links`` of hosts matching the glob ``host``; with ``down`` only those admin up
    without carrier."""
    return [
        link
        for link in links
        if (host is None or fnmatch.fnmatchcase(link.get("host", ""), host))
        and (not down or (link.get("admin_up") and not link.get("carrier")))
    ]
