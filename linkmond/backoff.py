"""Exponential backoff: the one implementation every retry in linkmond uses.

The fan-out retries a failing sink's batch with plain doubling (one local sink, nobody to
stampede); remote delivery (:mod:`linkmond.durable`) draws each delay at random below the
doubling cap ("full jitter"), so that many hosts coming back after a receiver's outage do not
retry in step, and honours the receiver's own hint (``Retry-After``) up to the cap.
"""

from __future__ import annotations

import random


class Backoff:
    """Delays that double from ``initial`` up to ``cap`` seconds, until :meth:`reset`.

    With ``jitter`` each delay is uniform in [0, the current step] instead of the step.
    """

    def __init__(self, initial: float, cap: float, *, jitter: bool = False) -> None:
        self.initial = initial
        self.cap = cap
        self.jitter = jitter
        self._step = initial

    def next(self, hint: float | None = None) -> float:
        """The delay before the next attempt; ``hint`` (seconds the other side asked for)
        raises it, never beyond ``cap``."""
        step = min(self._step, self.cap)
        delay = random.uniform(0, step) if self.jitter else step
        self._step = min(self._step * 2, self.cap)
        if hint is not None:
            delay = max(delay, min(hint, self.cap))
        return delay

    def reset(self) -> None:
        """An attempt succeeded: start again from ``initial``."""
        self._step = self.initial
