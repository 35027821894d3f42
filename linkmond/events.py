"""The one event representation every sink receives, its JSON form and its human line.

An event is a CloudEvents 1.0 structured-mode object (docs/events.md). The JSON form is defined
once, here, by the pydantic model and serialised at most once per event however many sinks
deliver it. Events are built on the netlink reader's hot path, so :class:`EventFactory`
fills them without re-validating its own output and formats ids and times by hand.
"""

from __future__ import annotations

import random
import re
import time
from collections.abc import Callable
from typing import Any, Final, Generic, Literal, TypeVar, overload

import orjson
from pydantic import BaseModel, ConfigDict, SkipValidation

_T = TypeVar("_T")


class _computed_once(Generic[_T]):
    """``functools.cached_property`` without its per-access lock (Python 3.11 takes one)."""

    def __init__(self, fn: Callable[[Any], _T]) -> None:
        self.fn = fn
        self.name = fn.__name__
        self.__doc__ = fn.__doc__

    @overload
    def __get__(self, obj: None, cls: Any = None) -> _computed_once[_T]: ...
    @overload
    def __get__(self, obj: object, cls: Any = None) -> _T: ...
    def __get__(self, obj: object | None, cls: Any = None) -> _T | _computed_once[_T]:
        if obj is None:
            return self
        value = obj.__dict__[self.name] = self.fn(obj)  # later reads find it there
        return value


#: every event type linkmond emits: a public contract, and what ``events`` globs are checked against
EVENT_TYPES: Final = (
    "link.added", "link.removed", "link.admin_up", "link.admin_down",
    "link.carrier_up", "link.carrier_lost", "link.changed",
    "addr.added", "addr.removed", "addr.changed",
    "route.added", "route.removed", "route.changed",
    "neigh.added", "neigh.removed", "neigh.changed",
    "rule.added", "rule.removed",
    "netconf.changed",
    "daemon.started", "daemon.overflow", "daemon.stopping",
)  # fmt: skip


class Event(BaseModel):
    """One semantic change, CloudEvents 1.0 compatible (docs/events.md)."""

    model_config = ConfigDict(frozen=True, extra="forbid", ignored_types=(_computed_once,))

    specversion: Literal["1.0"] = "1.0"
    #: UUIDv7: time-ordered, unique per event, stable across webhook retries
    id: str
    #: ``/linkmond/<hostname>``
    source: str
    #: e.g. ``link.carrier_lost``; the type names (:data:`EVENT_TYPES`) are a public contract
    type: str
    #: RFC 3339 in UTC with microseconds, e.g. ``2026-11-21T22:28:19.464692Z``
    time: str
    #: the interface name; for routes the destination, for neighbours the address
    subject: str
    #: consecutive per daemon run, starting at 1
    seq: int
    #: the network namespace watched (``default`` for the initial one)
    netns: str
    #: built by linkmond's own code, so not re-validated (it would copy it per event)
    data: SkipValidation[dict[str, Any]]

    @_computed_once
    def jsonl(self) -> bytes:
        """The event as one JSON-lines record: compact JSON in UTF-8 and a newline. Computed
        once and shared by every sink.

        The same text as pydantic's ``model_dump_json()`` (the tests hold them equal): the
        fields in model order, ``data`` as built. orjson writes it several times faster, and
        that was most of the cost of an event in a route storm.
        """
        fields = self.__dict__  # the fields in model order (and, once cached, this property)
        if len(fields) != len(_FIELD_NAMES):
            fields = {name: fields[name] for name in _FIELD_NAMES}
        # the copy made by "+" is deliberate: orjson's own buffer is over-allocated, and
        # keeping thousands of them queued fragments the heap (10x slower, measured)
        return orjson.dumps(fields) + b"\n"

    @property
    def json_line(self) -> str:
        """The event's JSON text (compact, one line, no newline)."""
        return self.jsonl[:-1].decode()

    @property
    def ifname(self) -> str | None:
        """The interface this event is about, for interface filters; None if not interface-bound."""
        data = self.data
        if self.type.startswith("netconf.") and data.get("ifindex", 0) < 0:
            return None
        name = data.get("ifname")
        return name if isinstance(name, str) else None


def _rfc3339(t_ns: int, _cache: dict[int, str] = {}) -> str:  # noqa: B006 - a per-second cache
    secs, ns = divmod(t_ns, 1_000_000_000)
    prefix = _cache.get(secs)
    if prefix is None:
        _cache.clear()
        prefix = _cache[secs] = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(secs))
    return f"{prefix}.{ns // 1000:06d}Z"


_object_setattr = object.__setattr__
_FIELD_NAMES: Final = tuple(Event.model_fields)
_FIELDS_SET: Final = frozenset(_FIELD_NAMES)


def now_rfc3339() -> str:
    """The current time as events carry it (RFC 3339, UTC, microseconds)."""
    return _rfc3339(time.time_ns())


class EventFactory:
    """Stamps changes into events: UUIDv7 id, time, consecutive ``seq``, source and netns.

    Events are built without running pydantic's validator (what ``model_construct`` does,
    minus its per-call overhead): every field comes from this class, typed by construction,
    and this is the per-event cost of a route storm. The tests compare the result with a
    validated ``Event``.
    """

    def __init__(self, source: str, netns: str) -> None:
        self.source = source
        self.netns = netns
        self.seq = 0
        self._rand = random.Random()
        self._ms = -1
        self._counter = 0
        self._id_head = ""  # "tttttttt-tttt-" for the current millisecond
        self._id_tail = ""  # "-vrrr-rrrrrrrrrrrr": variant and 62 random bits, fresh each ms

    def uuid7(self, t_ns: int) -> str:
        """A UUIDv7 (RFC 9562): 48-bit ms time, a 12-bit counter in ``rand_a`` so ids sort in
        issue order, and 62 random bits in ``rand_b`` drawn afresh every millisecond."""
        ms = t_ns // 1_000_000
        if ms > self._ms:
            self._ms = ms
            self._counter = self._rand.getrandbits(10)  # leaves room to count up within the ms
            self._new_ms_parts()
        else:
            self._counter += 1
            if self._counter > 0xFFF:  # over ~3000 ids in one ms: borrow the next ms
                self._ms += 1
                self._counter = 0
                self._new_ms_parts()
        return f"{self._id_head}7{self._counter:03x}{self._id_tail}"

    def _new_ms_parts(self) -> None:
        t = f"{self._ms:012x}"
        self._id_head = f"{t[:8]}-{t[8:]}-"
        r = f"{(0b10 << 62) | self._rand.getrandbits(62):016x}"
        self._id_tail = f"-{r[:4]}-{r[4:]}"

    def make(
        self,
        type_: str,
        subject: str,
        data: dict[str, Any],
        t_ns: int | None = None,
        netns: str | None = None,
    ) -> Event:
        """Build the next event of this run; ``t_ns`` overrides the time (replay uses it),
        ``netns`` the namespace (one factory, so one ``seq``, serves every watched one)."""
        now = time.time_ns() if t_ns is None else t_ns
        self.seq += 1
        event = Event.__new__(Event)
        _object_setattr(
            event,
            "__dict__",
            {
                "specversion": "1.0",
                "id": self.uuid7(now),
                "source": self.source,
                "type": type_,
                "time": _rfc3339(now),
                "subject": subject,
                "seq": self.seq,
                "netns": netns or self.netns,
                "data": data,
            },
        )
        _object_setattr(event, "__pydantic_fields_set__", _FIELDS_SET)
        _object_setattr(event, "__pydantic_extra__", None)
        _object_setattr(event, "__pydantic_private__", None)
        return event


def with_data(event: Event, **extra: Any) -> Event:
    """A copy of ``event`` with ``extra`` keys added to its data (and its JSON recomputed)."""
    fields = {name: getattr(event, name) for name in Event.model_fields}
    fields["data"] = {**event.data, **extra}
    return Event(**fields)


def _value(value: Any) -> str:
    if value is None:
        return "unknown"
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, list):
        return ",".join(map(str, value)) or "-"
    return str(value)


#: control characters (C0, DEL, C1) and the backslash, as :func:`escape_controls` shows them
_ESCAPES: Final = {
    **{c: f"\\x{c:02x}" for c in (*range(0x20), *range(0x7F, 0xA0))},
    ord("\\"): "\\\\",
}
_NEEDS_ESCAPE: Final = re.compile(r"[\x00-\x1f\x7f-\x9f\\]")


def escape_controls(text: str) -> str:
    """``text`` safe for a terminal: every control character (C0 U+0000-U+001F, DEL U+007F,
    C1 U+0080-U+009F) as ``\\xNN``, and a backslash as ``\\\\`` so that the escape is
    unambiguous. The kernel takes ESC, BEL and DEL in an interface name, which would otherwise
    reach the operator's terminal raw (``lm\\x1b[31mx``). Other characters are kept."""
    if _NEEDS_ESCAPE.search(text) is None:
        return text
    return text.translate(_ESCAPES)


def describe(event: Event) -> str:
    """The human line of an event, as the console and the journal's MESSAGE show it, with
    control characters escaped (:func:`escape_controls`).

    ``link eth0: carrier lost (admin up)``
    """
    return escape_controls(_describe(event))


def _describe(event: Event) -> str:
    group, _, kind = event.type.partition(".")
    d = event.data
    subject = event.subject
    text: str
    if group == "link":
        text = _describe_link(kind, d)
    elif group == "addr":
        what = f"{d['address']}/{d['prefixlen']}"
        if kind == "changed":
            text = f"{what} changed {_changes(d)}"
        else:
            text = f"{kind} {what} ({d['family']}, scope {d['scope']})"
    elif group == "route":
        text = f"{kind}{_route_tail(d)}"
        if kind == "changed":
            text += f" ({_changes(d)})"
    elif group == "neigh":
        where = f" dev {d['ifname']}" if d.get("ifname") else ""
        if kind == "changed":
            text = f"{_changes(d)}{where}"
        else:
            lladdr = f" lladdr {d['lladdr']}" if d.get("lladdr") else ""
            text = f"{kind}{where}{lladdr} {d['state']}"
    elif group == "rule":
        text = f"{kind} {subject}"
        subject = d["family"]
    elif group == "netconf":
        subject = f"{d['family']} {subject}"
        text = _changes(d)
    elif group == "daemon":
        text = _describe_daemon(kind, d)
        return f"daemon: {text}"
    else:
        text = kind
    if d.get("resync"):
        text += " [resync]"
    return f"{group} {subject}: {text}"


def _changes(d: dict[str, Any]) -> str:
    parts = []
    for field, (old, new) in d.get("changes", {}).items():
        parts.append(f"{field} {_value(old)} → {_value(new)}")
    return ", ".join(parts) or "changed"


def _describe_link(kind: str, d: dict[str, Any]) -> str:
    admin = "admin up" if d["admin_up"] else "admin down"
    if kind == "carrier_lost":
        return f"carrier lost ({admin})"
    if kind == "carrier_up":
        return f"carrier up (operstate {d['operstate']})"
    if kind == "admin_up":
        return "admin up" + ("" if d["carrier"] else " (no carrier)")
    if kind == "admin_down":
        return "admin down"
    if kind == "added":
        extra = ", ".join(x for x in (d.get("kind"), f"mtu {d['mtu']}", admin) if x)
        return f"added ({extra})"
    if kind == "removed":
        return "removed"
    return f"changed {_changes(d)}"


def _route_tail(d: dict[str, Any]) -> str:
    parts = []
    if d.get("type") not in (None, "unicast"):
        parts.append(d["type"])
    if d.get("gateway"):
        parts.append(f"via {d['gateway']}")
    if d.get("ifname"):
        parts.append(f"dev {d['ifname']}")
    for hop in d.get("nexthops") or []:
        parts.append(f"nexthop via {hop.get('gateway')} dev {hop.get('ifname')}")
    parts.append(f"table {d['table']}")
    parts.append(f"proto {d['protocol']}")
    if d.get("metric"):
        parts.append(f"metric {d['metric']}")
    return " " + " ".join(parts)


def _describe_daemon(kind: str, d: dict[str, Any]) -> str:
    if kind == "started":
        counts = d.get("counts", {})
        summary = ", ".join(f"{n} {t}" for t, n in counts.items())
        return f"started, watching netns {d.get('netns', '?')} ({summary})"
    if kind == "overflow":
        return (
            f"receive buffer overflow: notifications were lost; the re-dump produced "
            f"{d.get('events', 0)} events"
        )
    if kind == "stopping":
        return f"stopping ({d.get('reason', 'signal')})"
    return kind
