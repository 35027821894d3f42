"""The TOML configuration, validated by pydantic (the reference is docs/configuration.md).

Every table forbids unknown keys and every value is strictly typed: a typo or a wrong type is
an error, never silently ignored or coerced (``json = "yes"`` is refused, not taken as true).
Durations and sizes accept their human strings (``"2s"``, ``"16MiB"``) and a bare number of
seconds or bytes. What only the filesystem can tell (a file sink path the daemon's user cannot
create) is checked by :func:`load_config` before anything starts. Sinks are named
tables with a ``type`` discriminator; the options every sink shares (``events``,
``interfaces``, ``hold_down``, ``buffer``) live in :class:`SinkBase`, so each sink's model
only adds its own. A bad file raises :class:`ConfigError` naming the file, the key path and
the problem; the CLI turns that into one line on stderr and exit status 78 (EX_CONFIG).
"""

from __future__ import annotations

import difflib
import fnmatch
import ipaddress
import os
import pwd
import re
import tomllib
from pathlib import Path
from typing import Annotated, Any, ClassVar, Final, Literal
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from linkmond import rtnl
from linkmond.events import EVENT_TYPES
from linkmond.redact import redact_url

DEFAULT_PATH: Final = Path("/etc/linkmond/linkmond.toml")
EX_CONFIG: Final = 78

_SIZE_UNITS: Final = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "kib": 1024,
    "m": 1000**2,
    "mb": 1000**2,
    "mib": 1024**2,
    "g": 1000**3,
    "gb": 1000**3,
    "gib": 1024**3,
}
_DURATION_UNITS: Final = {"ms": 0.001, "s": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0, "d": 86400.0}
_NUMBER_UNIT: Final = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$")


def parse_size(value: Any) -> int:
    """``"16MiB"`` → 16777216; a bare integer is bytes."""
    if isinstance(value, bool):
        raise ValueError("expected a size such as '16MiB'")
    if isinstance(value, int):
        return value
    if isinstance(value, str) and (m := _NUMBER_UNIT.match(value)):
        unit = _SIZE_UNITS.get(m.group(2).lower())
        if unit is not None:
            return int(float(m.group(1)) * unit)
    raise ValueError(f"{value!r} is not a size: use a number with B, KiB, MiB or GiB")


def parse_duration(value: Any) -> float:
    """``"2s"`` → 2.0, ``"500ms"`` → 0.5; a bare number is seconds."""
    if isinstance(value, bool):
        raise ValueError("expected a duration such as '2s'")
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str) and (m := _NUMBER_UNIT.match(value)):
        unit = _DURATION_UNITS.get(m.group(2).lower() or "s")
        if unit is not None:
            return float(m.group(1)) * unit
    raise ValueError(f"{value!r} is not a duration: use a number with ms, s, m or h")


def _as_path(value: Any) -> Path:
    if isinstance(value, Path):
        return value
    if isinstance(value, str) and value.strip():
        return Path(value)
    raise ValueError(f"expected a path (a non-empty string), got {value!r}")


def _event_globs(patterns: list[str]) -> list[str]:
    for pattern in patterns:
        glob = pattern.removeprefix("!")
        if fnmatch.filter(EVENT_TYPES, glob):
            continue
        problem = f"{pattern!r} matches no event type"
        close = difflib.get_close_matches(glob, EVENT_TYPES, n=1)
        group = [t for t in EVENT_TYPES if t.startswith(glob.partition(".")[0] + ".")]
        if close:
            problem += f"; did you mean {close[0]!r}?"
        elif group:
            problem += f"; the {glob.partition('.')[0]} types are " + ", ".join(group)
        else:
            groups = sorted({t.partition(".")[0] for t in EVENT_TYPES})
            problem += "; types begin with " + ", ".join(f"{g}." for g in groups)
        raise ValueError(problem)
    return patterns


def _netns(value: Any) -> list[str] | str:
    """``[monitor] netns``: ``"all"``, or a list of names ``ip netns`` knows (``"default"``:
    the daemon's own namespace)."""
    if value == "all":
        return "all"
    if isinstance(value, str):
        raise ValueError(f'expected "all" or a list of names, got {value!r} (netns = ["{value}"]?)')
    if not isinstance(value, list) or not value:
        raise ValueError(f'expected "all" or a non-empty list of names, got {value!r}')
    for name in value:
        if not isinstance(name, str) or not name.strip():
            raise ValueError(f"expected a namespace name (a non-empty string), got {name!r}")
        if name == "all":
            raise ValueError('"all" stands alone: netns = "all"')
        if "/" in name or "\0" in name or name in (".", ".."):
            raise ValueError(f"{name!r} is not a name of /run/netns (as `ip netns list` shows)")
        if value.count(name) > 1:
            raise ValueError(f"{name!r} is listed twice")
    return value


Size = Annotated[int, BeforeValidator(parse_size), Field(ge=0)]
Duration = Annotated[float, BeforeValidator(parse_duration), Field(ge=0)]
#: a filesystem path, given as a string (relative paths are relative to the working directory)
FilePath = Annotated[Path, BeforeValidator(_as_path)]
#: globs on the event type, each of which (after an optional ``!``) must match a type
EventGlobs = Annotated[list[str], AfterValidator(_event_globs)]
GroupName = Literal["link", "addr", "route", "neigh", "rule", "netconf"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class MonitorConfig(_Strict):
    """``[monitor]``: what to watch."""

    groups: list[GroupName] = Field(default_factory=lambda: list(rtnl.GROUPS))  # type: ignore[arg-type]
    #: fnmatch globs on interface names; a leading ``!`` excludes
    interfaces: list[str] = Field(default_factory=lambda: ["*"])
    #: SO_RCVBUF(FORCE) of the netlink socket; large, so a route storm does not overflow it
    receive_buffer: Annotated[Size, Field(le=2**30)] = 16 * 1024**2
    #: report at start what changed while the daemon was stopped, by comparing the kernel
    #: with the state saved in the state directory (linkmond.snapshot); false: start fresh,
    #: and neither read nor save that state
    reconcile_on_start: bool = True
    #: the network namespaces to watch: names ``ip netns`` knows, ``"default"`` for the
    #: daemon's own; or ``"all"``: its own and every one in /run/netns, as they come and go
    netns: Annotated[list[str] | Literal["all"], BeforeValidator(_netns)] = Field(
        default_factory=lambda: ["default"]
    )


class LogConfig(_Strict):
    """``[log]``: the daemon's own logs (not the events)."""

    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["auto", "console", "json"] = "auto"


class DaemonConfig(_Strict):
    """``[daemon]``: process-wide settings."""

    #: where durable state lives; ``$STATE_DIRECTORY`` (set by systemd) wins
    state_directory: FilePath = Path("/var/lib/linkmond")
    #: how long shutdown waits for sink queues to drain
    drain_timeout: Duration = 5.0
    #: how often the cached state is saved while running, besides at shutdown (0: only then)
    save_interval: Duration = 300.0


#: a host name or an IPv4 address (an IPv6 address is written in brackets)
_HOST: Final = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_.\-]*[A-Za-z0-9_])?")
#: sun_path holds 108 bytes, the terminating NUL included
_UNIX_PATH_MAX: Final = 107


def split_listen(value: str) -> tuple[str, int] | str:
    """``[metrics] listen`` → ``(host, port)`` (an IPv6 host without its brackets), or the
    path of a unix socket; raises ValueError saying what is wrong."""
    if value.startswith("/"):
        if "\0" in value or value.endswith("/"):
            raise ValueError(f"{value!r} is not a file path for a unix socket")
        if len(os.fsencode(value)) > _UNIX_PATH_MAX:
            raise ValueError(f"a unix socket path is at most {_UNIX_PATH_MAX} bytes")
        return value
    host, sep, port = value.rpartition(":")
    if not sep:
        raise ValueError(
            f"{value!r} is neither HOST:PORT (such as 127.0.0.1:9741) nor the absolute path "
            "of a unix socket"
        )
    if not (port.isascii() and port.isdigit()):
        raise ValueError(f"the port {port!r} is not a number")
    if not 1 <= int(port) <= 65535:
        raise ValueError(f"port {int(port)} is out of range (1-65535)")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"{host!r} in [ ] is not an IPv6 address") from None
    elif ":" in host:
        raise ValueError(f"an IPv6 address goes in brackets: [{host}]:{port}")
    elif not host:
        raise ValueError(
            "no host: name one (127.0.0.1 for this machine only; 0.0.0.0 or [::] for all)"
        )
    elif not _HOST.fullmatch(host):
        raise ValueError(f"{host!r} is not a host name or an IP address")
    return host, int(port)


def _listen(value: str) -> str:
    split_listen(value)
    return value


class MetricsConfig(_Strict):
    """``[metrics]``: the Prometheus endpoint (linkmond.metrics); off unless ``listen`` is set."""

    #: ``HOST:PORT`` or the absolute path of a unix socket, served at ``/metrics``
    listen: Annotated[str, AfterValidator(_listen)] | None = None


#: what may follow ``scheme://``: a URL holds no whitespace or control characters
_URL_FORBIDDEN: Final = re.compile(r"[\x00-\x20\x7f]")


def _http_url(value: str) -> str:
    """An ``http://`` or ``https://`` URL with a host and a port aiohttp accepts.

    The messages never quote the URL: its user info, path or query may be a credential.
    """
    scheme, sep, _ = value.partition("://")
    if _URL_FORBIDDEN.search(value):
        raise ValueError("the URL contains a space or a control character (percent-encode it)")
    if not sep or not re.fullmatch(r"[A-Za-z][A-Za-z0-9+.\-]*", scheme):
        raise ValueError("not an http:// or https:// URL")
    if scheme.lower() not in ("http", "https"):
        raise ValueError(f"the scheme {scheme.lower()!r} is not http or https")
    try:
        parsed = urlsplit(value)
    except ValueError:
        raise ValueError("not a valid URL: the IPv6 address in [ ] is not closed") from None
    if not parsed.hostname:
        raise ValueError(f"the URL has no host ({scheme.lower()}://HOST[:PORT]/PATH)")
    port = parsed.netloc.rpartition("@")[2].rpartition("]")[2].partition(":")[2]
    if port and not (port.isascii() and port.isdigit()):
        raise ValueError("the port is not a number")
    if port and not 1 <= int(port) <= 65535:
        raise ValueError(f"port {int(port)} is out of range (1-65535)")
    return value


def url_has_credentials(url: str) -> bool:
    """Whether ``url`` carries ``user:password@`` (aiohttp then sends it as Basic auth)."""
    parsed = urlsplit(url)
    return bool(parsed.username or parsed.password)


def is_loopback(host: str | None) -> bool:
    """127.0.0.0/8, ::1 (also IPv4-mapped) and ``localhost``: traffic that stays on this host."""
    if not host:
        return False
    host = host.lower().rstrip(".")
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        address = ipaddress.ip_address(host.partition("%")[0])
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_loopback


#: a header name is an HTTP token (RFC 9110, 5.6.2)
_TOKEN: Final = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
#: what aiohttp refuses in a header value (every control character but the tab)
HEADER_VALUE_FORBIDDEN: Final = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


WhenFull = Literal["block", "drop_newest"]


class BufferConfig(_Strict):
    """A sink's ``buffer`` (named as in Vector): how many events wait for the sink, and
    what happens when that many are waiting.

    ``block`` is lossless: the reader stops reading the socket until the sink catches up (the
    kernel's receive buffer absorbs what comes, and an overflow there is recovered by a
    re-dump). ``drop_newest`` refuses new events for this sink only and counts them.
    """

    max_events: Annotated[int, Field(ge=1)] = 10_000
    #: required here; a sink's table fills in its type's default when the user leaves it out
    when_full: WhenFull


class SinkBase(_Strict):
    """Options every sink accepts, applied by the shared fan-out before the sink sees an event."""

    #: ``buffer.when_full`` when the config does not say: lossless unless a sink overrides it
    default_when_full: ClassVar[WhenFull] = "block"

    #: globs on the event type, e.g. ``["link.*", "!link.changed"]``
    events: EventGlobs = Field(default_factory=lambda: ["*"])
    #: globs on the interface name; events not bound to an interface always pass
    interfaces: list[str] = Field(default_factory=lambda: ["*"])
    #: flap damping: deliver carrier_lost/admin_down only if still lost after this (0: off)
    hold_down: Duration = 0.0
    #: events waiting for this sink, and what a full buffer does (block the reader or drop)
    buffer: BufferConfig = Field(default_factory=dict, validate_default=True)

    @field_validator("buffer", mode="before")
    @classmethod
    def _fill_when_full(cls, value: Any) -> Any:
        # the default depends on the sink type, also inside a `buffer` table that omits it
        if isinstance(value, dict) and "when_full" not in value:
            return {**value, "when_full": cls.default_when_full}
        return value


class ConsoleSinkConfig(SinkBase):
    """``type = "console"``: one human line per event on stdout, or JSON lines."""

    #: a terminal is for watching: never hold the reader back for it
    default_when_full: ClassVar[WhenFull] = "drop_newest"

    type: Literal["console"]
    json_lines: bool = Field(default=False, alias="json")
    stream: Literal["stdout", "stderr"] = "stdout"


class FileSinkConfig(SinkBase):
    """``type = "file"``: JSON lines appended to a file, reopened on SIGHUP (logrotate)."""

    type: Literal["file"]
    path: FilePath
    fsync: Literal["never", "interval", "always"] = "never"
    fsync_interval: Annotated[Duration, Field(gt=0)] = 1.0


class JournalSinkConfig(SinkBase):
    """``type = "journal"``: the systemd journal's native protocol (docs/configuration.md)."""

    type: Literal["journal"]
    #: journald's native socket; tests point it at a private journald
    socket: FilePath = Path("/run/systemd/journal/socket")
    #: event-type glob → syslog priority (0-7), overriding the built-in 4/6 split
    priorities: dict[str, Annotated[int, Field(ge=0, le=7)]] = Field(default_factory=dict)

    @field_validator("priorities")
    @classmethod
    def _known_types(cls, value: dict[str, int]) -> dict[str, int]:
        _event_globs(list(value))
        return value


class HeaderFromEnv(_Strict):
    """A header value read from an environment variable at start-up."""

    env: str


class HeaderFromFile(_Strict):
    """A header value read from a file at start-up (trailing newline stripped); the file is
    held to the rules of ``secret_file`` (not readable by every user)."""

    file: FilePath


class WebhookSinkConfig(SinkBase):
    """``type = "webhook"``: signed POSTs with a durable spool (README, Webhooks)."""

    type: Literal["webhook"]
    url: Annotated[str, AfterValidator(_http_url)]
    #: the Standard Webhooks secret (``whsec_…``) comes from a file or the environment,
    #: never from the TOML itself
    secret_file: FilePath | None = None
    secret_env: str | None = None
    headers: dict[str, str | HeaderFromEnv | HeaderFromFile] = Field(default_factory=dict)
    format: Literal["cloudevents", "text"] = "cloudevents"
    timeout: Annotated[Duration, Field(gt=0)] = 10.0
    retry_initial: Annotated[Duration, Field(gt=0)] = 1.0
    max_retry_delay: Annotated[Duration, Field(gt=0)] = 300.0
    max_age: Annotated[Duration, Field(gt=0)] = 86400.0
    max_spool: int = Field(default=100_000, ge=1)
    #: the dead-letter file is rotated to ``<file>.1`` before it would grow past this
    deadletter_max_bytes: Annotated[Size, Field(ge=4096)] = 4 * 1024**2
    ca_file: FilePath | None = None
    tls_verify: bool = True

    @field_validator("headers")
    @classmethod
    def _valid_headers(
        cls, value: dict[str, str | HeaderFromEnv | HeaderFromFile], info: ValidationInfo
    ) -> dict[str, str | HeaderFromEnv | HeaderFromFile]:
        for name, header in value.items():
            if not _TOKEN.fullmatch(name):
                raise ValueError(
                    f"{name!r} is not a valid header name (letters, digits and "
                    "!#$%&'*+-.^_`|~ only, no spaces or control characters)"
                )
            if isinstance(header, str) and HEADER_VALUE_FORBIDDEN.search(header):
                raise ValueError(
                    f"the value of {name} contains a line break or another control character"
                )
        url = info.data.get("url")
        if url and url_has_credentials(url) and any(n.lower() == "authorization" for n in value):
            raise ValueError(
                "an Authorization header and credentials in url (user:password@) cannot be "
                "combined (the HTTP client refuses to send both): keep one of them"
            )
        return value

    @field_validator("tls_verify")
    @classmethod
    def _verify_or_ca_file(cls, value: bool, info: ValidationInfo) -> bool:
        if not value and info.data.get("ca_file") is not None:
            raise ValueError(
                "false contradicts ca_file (a CA to verify with, but no verification): "
                "remove one of them"
            )
        return value

    @model_validator(mode="after")
    def _one_secret(self) -> WebhookSinkConfig:
        if (self.secret_file is None) == (self.secret_env is None):
            raise ValueError("set exactly one of secret_file or secret_env")
        return self


def _nats_url(value: str) -> str:
    """A NATS server URL: ``nats://`` or ``tls://`` (``user:password@`` refused: credentials
    never in the TOML), a host and an optional port."""
    scheme, sep, _ = value.partition("://")
    if not sep or scheme.lower() not in ("nats", "tls"):
        raise ValueError("expected nats://HOST[:PORT] or tls://HOST[:PORT]")
    parsed = urlsplit(value)
    if parsed.username or parsed.password:
        raise ValueError(
            "credentials in the URL would sit in the config: use credentials_file, "
            "nkey_file, token_env or user + password_env"
        )
    if not parsed.hostname:
        raise ValueError("the URL has no host")
    try:
        port = parsed.port
    except ValueError:
        raise ValueError("the port is not a number in 1-65535") from None
    if port == 0:
        raise ValueError("the port is not a number in 1-65535")
    return value


#: a JetStream stream name: no whitespace, dots, wildcards or path separators
_STREAM_NAME: Final = re.compile(r"^[A-Za-z0-9_-]{1,255}$")
#: a literal token of a subject template
_SUBJECT_TOKEN: Final = re.compile(r"[A-Za-z0-9_-]+")
#: what a subject template may name
SUBJECT_FIELDS: Final = ("host", "type", "netns")


def _subject_template(value: str) -> str:
    tokens = value.split(".")
    if not tokens or not _SUBJECT_TOKEN.fullmatch(tokens[0]):
        raise ValueError(f"{value!r}: the first token must be a literal name (linkmond.…)")
    for token in tokens[1:]:
        if token.startswith("{") and token.endswith("}"):
            if token[1:-1] not in SUBJECT_FIELDS:
                raise ValueError(
                    f"{value!r}: unknown field {token}; "
                    + ", ".join("{" + f + "}" for f in SUBJECT_FIELDS)
                    + " are known"
                )
        elif not _SUBJECT_TOKEN.fullmatch(token):
            raise ValueError(
                f"{value!r}: {token!r} is not a subject token (letters, digits, _ and -; "
                "fields in braces); wildcards are not allowed"
            )
    if "{type}" not in tokens and "{host}" not in tokens:
        raise ValueError(
            f"{value!r}: name {{host}} or {{type}}, or every event lands on one subject"
        )
    return value


class NatsStreamLimits(_Strict):
    """``stream_limits``: the limits a stream the sink creates gets (an existing stream is
    used as it is). 0: unlimited."""

    max_age: Duration = 0.0
    max_bytes: Size = 0
    max_msgs_per_subject: Annotated[int, Field(ge=0)] = 0


class NatsSinkConfig(SinkBase):
    """``type = "nats"``: every event to a NATS JetStream stream, from a durable spool; and
    the host's links in the fleet key-value bucket (README, Fleet)."""

    type: Literal["nats"]
    servers: Annotated[list[Annotated[str, AfterValidator(_nats_url)]], Field(min_length=1)]
    stream: Annotated[str, Field(pattern=_STREAM_NAME.pattern)] = "LINKMOND"
    subject: Annotated[str, AfterValidator(_subject_template)] = "linkmond.{host}.{type}"
    #: at most one way to authenticate; every secret comes from a file or the environment
    credentials_file: FilePath | None = None
    nkey_file: FilePath | None = None
    token_env: str | None = None
    user: str | None = None
    password_env: str | None = None
    ca_file: FilePath | None = None
    stream_limits: NatsStreamLimits = Field(default_factory=NatsStreamLimits)
    #: connecting, and waiting for the server's acknowledgement of a publish
    timeout: Annotated[Duration, Field(gt=0)] = 5.0
    #: events published before their acknowledgements are awaited
    batch: Annotated[int, Field(ge=1, le=10_000)] = 256
    retry_initial: Annotated[Duration, Field(gt=0)] = 1.0
    max_retry_delay: Annotated[Duration, Field(gt=0)] = 300.0
    max_age: Annotated[Duration, Field(gt=0)] = 86400.0
    max_spool: int = Field(default=100_000, ge=1)
    deadletter_max_bytes: Annotated[Size, Field(ge=4096)] = 4 * 1024**2

    @model_validator(mode="after")
    def _one_way_in(self) -> NatsSinkConfig:
        ways = [
            key
            for key, value in (
                ("credentials_file", self.credentials_file),
                ("nkey_file", self.nkey_file),
                ("token_env", self.token_env),
                ("user", self.user),
            )
            if value is not None
        ]
        if len(ways) > 1:
            raise ValueError(f"set at most one of {', '.join(ways)}")
        if (self.user is None) != (self.password_env is None):
            raise ValueError("user and password_env go together")
        return self


SinkConfig = Annotated[
    ConsoleSinkConfig | FileSinkConfig | JournalSinkConfig | WebhookSinkConfig | NatsSinkConfig,
    Field(discriminator="type"),
]


class Config(_Strict):
    """The whole configuration file."""

    monitor: MonitorConfig = Field(default_factory=MonitorConfig)
    log: LogConfig = Field(default_factory=LogConfig)
    daemon: DaemonConfig = Field(default_factory=DaemonConfig)
    metrics: MetricsConfig = Field(default_factory=MetricsConfig)
    sinks: dict[str, SinkConfig] = Field(default_factory=dict)

    def state_directory(self) -> Path:
        """Where durable state lives: systemd's ``$STATE_DIRECTORY`` (its first entry) wins."""
        from_systemd = os.environ.get("STATE_DIRECTORY", "").split(":")[0]
        return Path(from_systemd) if from_systemd else self.daemon.state_directory

    def effective(self) -> dict[str, Any]:
        """The config with every default filled in, as ``check-config`` prints it.

        Inline header values may be credentials (``Authorization``): they are masked. A
        webhook ``url`` is shown as ``scheme://host:port``: its user info, path and query may
        be credentials too.
        """
        dumped = self.model_dump(mode="json", by_alias=True)
        for sink in dumped["sinks"].values():
            for name, value in sink.get("headers", {}).items():
                if isinstance(value, str):
                    sink["headers"][name] = "***"
            if sink.get("type") == "webhook":
                sink["url"] = redact_url(sink["url"])
        return dumped


class ConfigError(Exception):
    """A configuration that cannot be used; the message names file, key path and problem."""

    def __init__(self, path: Path | str, problems: list[tuple[str, str]]) -> None:
        self.path = str(path)
        self.problems = problems
        lines = [
            f"{self.path}: {key}: {msg}" if key else f"{self.path}: {msg}" for key, msg in problems
        ]
        super().__init__("\n".join(lines))


def default_config() -> Config:
    """The built-in configuration used when there is no config file: console events only."""
    return Config(sinks={"console": ConsoleSinkConfig(type="console")})


def load_config(path: Path | None) -> Config:
    """Read and validate ``path``; None means the default path, or the built-in default.

    An explicitly named file that does not exist is an error; the default path missing is not.
    """
    explicit = path is not None
    file = path if path is not None else DEFAULT_PATH
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        if explicit:
            raise ConfigError(file, [("", "no such file")]) from None
        return default_config()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(file, [("", f"cannot read: {exc}")]) from None
    config = parse_config(text, file)
    problems = usability_problems(config)
    if problems:
        raise ConfigError(file, problems)
    return config


def _user() -> str:
    uid = os.geteuid()
    try:
        return f"user {pwd.getpwuid(uid).pw_name}"
    except KeyError:
        return f"uid {uid}"


def _cannot_append(path: Path) -> str | None:
    """Why this process could not create ``path`` (and its missing parent directories, as the
    sinks do) or append to it; None when it can."""
    path = path.absolute()
    if path.is_symlink():
        return f"{path} is a symlink: the daemon does not follow one (name the file itself)"
    if path.is_dir():
        return f"{path} is a directory"
    if path.exists():
        if not os.access(path, os.W_OK, effective_ids=True):
            return f"{path} is not writable by {_user()}"
        return None
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        return f"cannot create {path}: {parent} is not a directory"
    if not os.access(parent, os.W_OK | os.X_OK, effective_ids=True):
        return f"cannot create {path}: {parent} is not writable by {_user()}"
    return None


def _cannot_make_dir(path: Path) -> str | None:
    """Why this process could not create files in directory ``path`` (making it first, with
    its missing parents, as the spool does); None when it can."""
    path = path.absolute()
    if path.exists():
        if not path.is_dir():
            return f"{path} is not a directory"
        if not os.access(path, os.W_OK | os.X_OK, effective_ids=True):
            return f"{path} is not writable by {_user()}"
        return None
    return _cannot_append(path)  # creating a directory takes what creating a file there takes


def usability_problems(config: Config) -> list[tuple[str, str]]:
    """What the filesystem says against ``config``, for the user this process runs as: a file
    sink path it cannot create or append to, a state directory (the webhook spool) it cannot
    create or write. ``check-config`` and ``run`` refuse these before anything starts, rather
    than a sink that retries forever behind a healthy-looking daemon."""
    problems: list[tuple[str, str]] = []
    for name, sink in config.sinks.items():
        if isinstance(sink, FileSinkConfig) and (why := _cannot_append(sink.path)):
            problems.append((f"sinks.{name}.path", why))
    durable = [
        s.type for s in config.sinks.values() if isinstance(s, WebhookSinkConfig | NatsSinkConfig)
    ]
    if durable:
        state = config.state_directory()
        if why := _cannot_make_dir(state):
            key = "daemon.state_directory"
            if os.environ.get("STATE_DIRECTORY"):
                key += " ($STATE_DIRECTORY)"
            problems.append((key, f"{why} (the {durable[0]} spool lives there)"))
    return problems


def parse_config(text: str, path: Path | str = "<config>") -> Config:
    """Validate TOML text; raises :class:`ConfigError` with every problem found."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(path, [("", f"invalid TOML: {exc}")]) from None
    try:
        config = Config.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(path, [_describe(err, raw) for err in exc.errors()]) from None
    if not config.sinks:
        raise ConfigError(path, [("sinks", "no sink configured: events would go nowhere")])
    return config


#: sink keys of earlier versions → what replaced them, so an old config says what to write
_RENAMED: Final = {"queue_size": "buffer.max_events"}


def _describe(err: Any, raw: dict[str, Any]) -> tuple[str, str]:
    loc = list(err["loc"])
    # a discriminated union puts the tag in the path: sinks.<name>.<type>.<key> → drop it
    if len(loc) >= 3 and loc[0] == "sinks":
        sink = raw.get("sinks", {}).get(loc[1], {})
        if isinstance(sink, dict) and loc[2] == sink.get("type"):
            del loc[2]
    key = ".".join(str(part) for part in loc)
    kind = err["type"]
    if kind == "missing":
        return key, "required key is missing"
    if kind == "union_tag_invalid":
        tags = err.get("ctx", {}).get("expected_tags", "")
        return f"{key}.type", f"unknown sink type {err['input'].get('type')!r} (expected {tags})"
    if kind == "union_tag_not_found":
        return f"{key}.type", "required key is missing (console, file, journal, webhook or nats)"
    if kind == "extra_forbidden" and len(loc) == 3 and loc[0] == "sinks" and loc[2] in _RENAMED:
        return key, f"replaced by {_RENAMED[loc[2]]}"
    if kind == "extra_forbidden" and loc[-1] == "secret":
        return key, "secrets never go in the config file: use secret_file or secret_env"
    if kind == "extra_forbidden":
        return key, "unknown key (not a setting of linkmond; a typo?)"
    message = str(err["msg"])
    message = message.removeprefix("Value error, ")
    if kind.endswith("_type") and "input" in err:
        message += f", not {_toml_kind(err['input'])}"
    return key, message


def _toml_kind(value: Any) -> str:
    """How TOML calls what the user wrote: ``the string 'yes'``, ``an array``."""
    if isinstance(value, bool):
        return f"the boolean {str(value).lower()}"
    if isinstance(value, str):
        return f"the string {value!r}"
    if isinstance(value, int | float):
        return f"the number {value}"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "a table"
    return type(value).__name__
