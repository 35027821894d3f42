"""Showing a URL without the credentials it may carry.

A webhook URL can be a secret in every part but its origin: ``user:password@``, a
``?token=`` query, and the path of Slack-style hooks (``/services/T0/B0/XXXX``). So wherever
linkmond shows a URL (log lines, config errors, ``check-config``, dead letters) it shows
:func:`redact_url`: ``scheme://host:port`` and nothing else. :func:`redact_text` does the
same to every URL inside a text it did not write, such as an aiohttp exception's message.
"""

from __future__ import annotations

import re
from typing import Final
from urllib.parse import unquote, urlsplit

_SCHEME: Final = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*")
#: a URL inside free text: up to whitespace, a quote or an angle bracket
_URL_IN_TEXT: Final = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://[^\s'\"<>]*")
_HOST: Final = re.compile(r"\[[0-9A-Fa-f:.]+(?:%[\w.\-]+)?\]|[\w.\-%~]+")
_DEFAULT_PORTS: Final = {"http": 80, "https": 443}
#: secret parts shorter than this are not searched for in free text (they would match
#: ordinary words); the URLs themselves are always redacted
_MIN_SECRET: Final = 3
MASK: Final = "***"


def redact_url(url: str) -> str:
    """``url`` as ``scheme://host:port`` (the scheme's default port filled in), nothing else.

    Never raises: what cannot be parsed becomes ``<not a URL>`` or loses the part that
    cannot (a port that is not a number is left out rather than shown).
    """
    scheme, sep, rest = url.partition("://")
    if not sep or not _SCHEME.fullmatch(scheme):
        return "<not a URL>"
    scheme = scheme.lower()
    authority = re.split(r"[/?#]", rest, maxsplit=1)[0]
    hostport = authority.rpartition("@")[2]
    if hostport.startswith("["):
        host, bracket, after = hostport.partition("]")
        host += bracket
        port = after[1:] if after.startswith(":") else ""
    else:
        host, _, port = hostport.partition(":")
    if not _HOST.fullmatch(host):
        host = "<no host>" if not host else "<invalid host>"
    if not (port.isascii() and port.isdigit()):
        port = str(_DEFAULT_PORTS[scheme]) if scheme in _DEFAULT_PORTS and not port else ""
    return f"{scheme}://{host.lower()}" + (f":{int(port)}" if port else "")


def _secret_parts(url: str) -> list[str]:
    """The parts of ``url`` that may be credentials, raw and percent-decoded, longest first."""
    try:
        parts = urlsplit(url)
    except ValueError:  # an unbalanced [ in the host: mask everything after the scheme
        return [url.partition("://")[2] or url]
    userinfo = parts.netloc.rpartition("@")[0]
    after = url[url.find("//") + 2 + len(parts.netloc) :] if parts.netloc else url
    candidates = {userinfo, *userinfo.split(":"), after, parts.path, parts.query, parts.fragment}
    found = {c for part in candidates for c in (part, unquote(part))}
    return sorted((p for p in found if len(p) >= _MIN_SECRET and p != "/"), key=len, reverse=True)


def redact_text(text: str, url: str | None = None) -> str:
    """``text`` with every URL in it shown as :func:`redact_url` shows it, and, when ``url``
    is given, its user info, path, query and fragment masked wherever they still appear."""
    text = _URL_IN_TEXT.sub(lambda m: redact_url(m.group(0)), text)
    if url:
        for part in _secret_parts(url):
            text = text.replace(part, MASK)
    return text
