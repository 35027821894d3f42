"""Glob filters on event types and interface names: ``["eth*", "!eth9"]``.

A name passes when it matches at least one positive pattern (or there is none, so
``["!veth*"]`` means "everything but veth*") and matches no ``!`` pattern.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable


class GlobFilter:
    """A compiled include/exclude list of fnmatch globs, with a per-name result cache."""

    __slots__ = ("_cache", "_exclude", "_include", "matches_all", "patterns")

    def __init__(self, patterns: Iterable[str]) -> None:
        self.patterns = tuple(patterns)
        include = [p for p in self.patterns if not p.startswith("!")]
        exclude = [p[1:] for p in self.patterns if p.startswith("!")]
        self._include = _compile(include) if include else None
        self._exclude = _compile(exclude) if exclude else None
        self._cache: dict[str, bool] = {}
        #: True when nothing is filtered out (the common ``["*"]``): callers may skip match()
        self.matches_all = self._exclude is None and (self._include is None or "*" in include)

    def match(self, name: str) -> bool:
        """Whether ``name`` passes the filter."""
        hit = self._cache.get(name)
        if hit is None:
            hit = (self._include is None or bool(self._include.match(name))) and not (
                self._exclude is not None and self._exclude.match(name)
            )
            if len(self._cache) > 4096:
                self._cache.clear()
            self._cache[name] = hit
        return hit


def _compile(patterns: list[str]) -> re.Pattern[str]:
    return re.compile("|".join(f"(?:{fnmatch.translate(p)})" for p in patterns))
