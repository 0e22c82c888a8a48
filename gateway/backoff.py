"""Reconnect pacing for a fleet: exponential backoff with full jitter, driven by stamina.

A restarted broker must not be hit by thousands of gateways in the same second, so every
wait is drawn uniformly from ``[0, min(maximum, initial * 2**attempt)]`` ("full jitter"), and
the first reconnect after a lost session is jittered too.
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Callable

import stamina
import stamina.instrumentation

# stamina logs every scheduled retry at WARNING; the uplinks and drivers log each distinct
# failure once themselves (a dead broker must not write a line per attempt for days)
stamina.instrumentation.set_on_retry_hooks([])


class Backoff:
    """Counts consecutive failures and says how long to wait before the next attempt."""

    def __init__(self, initial: float, maximum: float, *, retry_on: Callable[[Exception], bool]) -> None:
        self.initial = initial
        self.maximum = maximum
        self.failures = 0
        self._retry_on = retry_on

    def delay(self) -> float:
        ceiling = min(self.maximum, self.initial * 2.0 ** min(self.failures, 32))
        return random.uniform(0.0, ceiling)

    def _hook(self, exc: Exception) -> bool | float:
        if not self._retry_on(exc):
            return False
        self.failures += 1
        delay = self.delay()
        hint = getattr(exc, "retry_after", None)  # the server said when (HTTP Retry-After): not before
        return max(delay, float(hint)) if hint else delay

    def reset(self) -> None:
        self.failures = 0

    def retrying(self) -> AsyncIterator[stamina.Attempt]:
        """An endless ``async for attempt in ...: with attempt:`` loop paced by this backoff."""
        return stamina.retry_context(on=self._hook, attempts=None, timeout=None)
