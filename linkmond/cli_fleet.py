"""``linkmond fleet status`` and ``linkmond fleet watch``: the whole fleet, from NATS.

``status`` reads the ``LINKMOND_LINKS`` key-value bucket every daemon with a nats sink keeps
its links in (:mod:`linkmond.fleet`); ``watch`` follows the stream of events live, like
``monitor`` for every host. Both connect with the same options the sink takes: servers,
credentials from a file or the environment, a CA file.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import Any, Final

from pydantic import ValidationError

from linkmond import __version__
from linkmond.backoff import Backoff
from linkmond.config import ConfigError, NatsSinkConfig
from linkmond.events import Event, describe
from linkmond.filters import GlobFilter
from linkmond.logs import configure as configure_logs

#: sysexits.h: a service is unavailable (no NATS server could be reached)
EX_UNAVAILABLE: Final = 69
DEFAULT_SERVER: Final = "nats://127.0.0.1:4222"


def add_parser(sub: Any) -> None:
    """The ``fleet`` command and its two subcommands."""
    fleet = sub.add_parser("fleet", help="every host's links and events, from NATS")
    commands = fleet.add_subparsers(dest="fleet_command", required=True, metavar="COMMAND")
    status = commands.add_parser("status", help="one row per link of every host")
    status.add_argument("--down", action="store_true", help="only links admin up without carrier")
    watch = commands.add_parser("watch", help="follow every host's events live")
    watch.add_argument("--type", action="append", metavar="GLOB", help="event types (repeatable)")
    watch.add_argument("--stream", default="LINKMOND", help="the stream (default LINKMOND)")
    watch.add_argument(
        "--subject-prefix", default="linkmond", help="the subjects' first token (default linkmond)"
    )
    for p in (status, watch):
        p.add_argument("--version", action="version", version=f"linkmond {__version__}")
        p.add_argument(
            "--server",
            action="append",
            metavar="URL",
            help=f"nats:// or tls:// URL (repeatable; default {DEFAULT_SERVER})",
        )
        p.add_argument("--json", action="store_true", help="JSON instead of a table / lines")
        p.add_argument("--host", metavar="GLOB", help="only hosts whose name matches")
        p.add_argument("--credentials", type=Path, metavar="FILE", help="a .creds file")
        p.add_argument("--nkey", type=Path, metavar="FILE", help="an nkey seed file")
        p.add_argument("--token-env", metavar="VAR", help="the token is in this variable")
        p.add_argument("--user", help="user name (with --password-env)")
        p.add_argument("--password-env", metavar="VAR", help="the password is in this variable")
        p.add_argument("--ca", type=Path, metavar="FILE", help="CA file for TLS")


def run(args: argparse.Namespace) -> int:
    """``linkmond fleet …``; returns the exit status."""
    configure_logs("warning", "auto")
    try:
        config = NatsSinkConfig(
            type="nats",
            servers=args.server or [DEFAULT_SERVER],
            credentials_file=args.credentials,
            nkey_file=args.nkey,
            token_env=args.token_env,
            user=args.user,
            password_env=args.password_env,
            ca_file=args.ca,
        )
    except ValidationError as exc:
        problem = exc.errors()[0]
        where = ".".join(str(p) for p in problem["loc"])
        print(
            f"linkmond fleet: {where + ': ' if where else ''}"
            f"{problem['msg'].removeprefix('Value error, ')}",
            file=sys.stderr,
        )
        return 64
    from linkmond.sinks.nats import Connection  # noqa: PLC0415 - loads nats-py

    try:
        connection = Connection("fleet", config)
    except ConfigError as exc:
        print(f"linkmond fleet: {exc}", file=sys.stderr)
        return 78
    if args.fleet_command == "status":
        return asyncio.run(_status(connection, args))
    return asyncio.run(_watch(connection, args))


async def _connect(connection: Any) -> Any:
    try:
        return await connection.open()
    except Exception as exc:
        print(f"linkmond fleet: cannot reach {connection.endpoint}: {exc}", file=sys.stderr)
        return None


async def _status(connection: Any, args: argparse.Namespace) -> int:
    import nats.js.errors  # noqa: PLC0415

    from linkmond.fleet import open_bucket, read_links, select  # noqa: PLC0415

    client = await _connect(connection)
    if client is None:
        return EX_UNAVAILABLE
    try:
        try:
            kv = await open_bucket(client.jetstream(), create=False)
        except nats.js.errors.BucketNotFoundError:
            links: list[dict[str, Any]] = []  # no daemon has written a link yet
        else:
            links = await read_links(kv)
    except Exception as exc:  # JetStream off, no permission, a timeout …
        print(
            f"linkmond fleet: cannot read the fleet view at {connection.endpoint}: "
            f"{type(exc).__name__}: {exc}",
            file=sys.stderr,
        )
        return EX_UNAVAILABLE
    finally:
        await client.close()
    links = select(links, args.host, args.down)
    if args.json:
        print(json.dumps(links, ensure_ascii=False, indent=1))
        return 0
    _table(links)
    return 0


def _yes_no(value: Any) -> str:
    return "-" if value is None else ("yes" if value else "no")


def _table(links: list[dict[str, Any]]) -> None:
    headers = ("HOST", "NETNS", "LINK", "ADMIN", "CARRIER", "OPERSTATE", "MTU", "SINCE")
    rows = [
        (
            link.get("host", ""),
            link.get("netns", ""),
            link.get("ifname", ""),
            "up" if link.get("admin_up") else "down",
            _yes_no(link.get("carrier")),
            str(link.get("operstate") or "-"),
            str(link.get("mtu") or "-"),
            str(link.get("since") or "-"),
        )
        for link in links
    ]
    widths = [max([len(h), *(len(r[i]) for r in rows)]) for i, h in enumerate(headers)]
    for row in (headers, *rows):
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())


async def _watch(connection: Any, args: argparse.Namespace) -> int:
    """Follow the stream until interrupted; a lost connection is made again (with backoff),
    from the events published since then on."""
    from nats.js.api import ConsumerConfig, DeliverPolicy  # noqa: PLC0415

    client = await _connect(connection)
    if client is None:
        return EX_UNAVAILABLE
    backoff = Backoff(0.5, 30.0, jitter=True)
    while True:
        try:
            sub = await client.jetstream().subscribe(
                f"{args.subject_prefix}.>",
                stream=args.stream,
                ordered_consumer=True,
                config=ConsumerConfig(deliver_policy=DeliverPolicy.NEW),
            )
            backoff.reset()
            async for msg in sub.messages:
                _show(msg.data, args)
        except Exception as exc:
            print(f"linkmond fleet watch: {type(exc).__name__}: {exc}", file=sys.stderr)
        finally:
            await client.close()
        print("linkmond fleet watch: connection lost; connecting again", file=sys.stderr)
        client = None
        while client is None:
            await asyncio.sleep(backoff.next())
            client = await _connect(connection)


def _show(data: bytes, args: argparse.Namespace) -> None:
    """Print one message of the stream if the filters take it. Read leniently: an event of
    a newer daemon (members this one does not know) is shown all the same."""
    try:
        fields = json.loads(data)
        type_, source = str(fields["type"]), str(fields["source"])
    except (ValueError, KeyError, TypeError):
        return  # not an event
    host = source.rpartition("/")[2]
    if args.host and not GlobFilter([args.host]).match(host):
        return
    if not GlobFilter(args.type or ["*"]).match(type_):
        return
    if args.json:
        print(data.decode("utf-8", "replace"), flush=True)
        return
    try:
        line = describe(Event.model_validate(fields))
    except ValidationError:
        line = f"{type_} {fields.get('subject', '')}"
    print(f"{host} [{fields.get('netns', '?')}] {line}", flush=True)
