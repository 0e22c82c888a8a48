"""Reconnect pacing for a fleet: exponential backoff with full jitter, driven by stamina.

A restarted broker must not be hit by thousands of gateways in the same second, so every
wait is drawn uniformly from ``[0, min(maximum, initial * 2**attempt)]`` ("full jitter"), and
after a lost session (:meth:`Backoff.session_lost`: the broker went away, so probably for the
whole fleet) every wait is at least ``min(maximum, SESSION_LOST_WINDOW)`` wide: a fleet of 50
whose broker restarts reconnects over about a minute, under 10 % of it in any one second
(bench/fleet.py), instead of most of it within the first seconds.
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Callable

import stamina
import stamina.instrumentation

# stamina logs every scheduled retry at WARNING; the uplinks and drivers log each distinct
# failure once themselves (a dead broker must not write a line per attempt for days)
stamina.instrumentation.set_on_retry_hooks([])

SESSION_LOST_WINDOW = 60.0  # seconds over which reconnects after a lost session are spread


class Backoff:
    """Counts consecutive failures and says how long to wait before the next attempt."""

    def __init__(self, initial: float, maximum: float, *, retry_on: Callable[[Exception], bool]) -> None:
        self.initial = initial
        self.maximum = maximum
        self.failures = 0
        self._floor = 0.0  # the narrowest window while reconnecting after a lost session
        self._retry_on = retry_on

    def delay(self) -> float:
        ceiling = min(self.maximum, max(self._floor, self.initial * 2.0 ** min(self.failures, 32)))
        return random.uniform(0.0, ceiling)

    def session_lost(self) -> None:
        """An established session ended: spread the reconnects over the fleet-wide window."""
        self._floor = SESSION_LOST_WINDOW

    def _hook(self, exc: Exception) -> bool | float:
        if not self._retry_on(exc):
            return False
        self.failures += 1
        delay = self.delay()
        hint = getattr(exc, "retry_after", None)  # the server said when (HTTP Retry-After): not before
        return max(delay, float(hint)) if hint else delay

    def reset(self) -> None:
        self.failures = 0
        self._floor = 0.0

    def retrying(self) -> AsyncIterator[stamina.Attempt]:
        """An endless ``async for attempt in ...: with attempt:`` loop paced by this backoff."""
        return stamina.retry_context(on=self._hook, attempts=None, timeout=None)
