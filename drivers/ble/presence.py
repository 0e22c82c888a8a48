"""Presence counting for footfall: distinct advertisers per wall-clock window, never who they were.

Every advert at or above the RSSI threshold adds a keyed hash of its address to the set of the current
window; when the window closes, the set's size is the count and the set is forgotten. The key (the
salt) is 16 random bytes drawn from the OS when a UTC day starts and dropped at the next day: it lives
only in this object's memory, so a hash cannot be recomputed from an address by anyone, not even by
the gateway the next day. Addresses themselves are never kept; hashes are kept for one window only.
Nothing here is written anywhere: the only output is the count. docs/footfall.md says how to read it.

Windows are aligned to the wall clock (``[k * window, (k + 1) * window)`` in UTC seconds) and the
window length must divide a day, so the daily salt change falls on a window boundary and no window
mixes two salts. The class is pure given its time arguments: the bus passes ``time.time()``.
"""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Callable

from citygw.reading import Flag, Reading

DAY = 86_400
NAME = "presenceCount"
UNIT = "count"
SALT_BYTES = 16


class PresenceCounter:
    """Counts distinct advertisers seen at ``rssi >= rssi_threshold`` per ``window`` seconds."""

    def __init__(
        self,
        device: str,
        *,
        window: float,
        rssi_threshold: int,
        random_bytes: Callable[[int], bytes] = os.urandom,
    ) -> None:
        if window <= 0 or DAY % window:
            raise ValueError(f"a presence window must divide a day evenly; got {window} s")
        self.device = device
        self.window = float(window)
        self.rssi_threshold = rssi_threshold
        self._random = random_bytes
        self._salt = b""
        self._day: int | None = None
        self._start: float | None = None  # start of the current window
        self._partial = True  # the first window is joined part way through
        self._down = False  # the scanner is not running
        self._seen: set[bytes] = set()

    def _window_of(self, now: float) -> float:
        return math.floor(now / self.window) * self.window

    def _rotate(self, now: float) -> None:
        day = int(now // DAY)
        if day != self._day:
            self._day = day
            self._salt = self._random(SALT_BYTES)

    def start(self, now: float) -> None:
        """Begin counting at ``now`` (UTC seconds); the window it falls in is flagged partial."""
        self._start = self._window_of(now)
        self._partial = now > self._start
        self._seen.clear()
        self._rotate(now)

    def interrupted(self) -> None:
        """The scanner stopped: the windows until :meth:`resumed` (and this one) are flagged partial."""
        self._partial = True
        self._down = True

    def resumed(self) -> None:
        """The scanner runs again; the current window stays partial, the next ones are whole."""
        self._down = False

    def add(self, address: str, rssi: int) -> None:
        """One advert of ``address`` heard at ``rssi`` dBm in the current window."""
        if rssi >= self.rssi_threshold:
            self._seen.add(hashlib.blake2b(address.encode(), key=self._salt, digest_size=8).digest())

    def next_close(self) -> float:
        """When the current window closes (UTC seconds)."""
        if self._start is None:
            raise RuntimeError("PresenceCounter.start() was not called")
        return self._start + self.window

    def close_due(self, now: float) -> list[Reading]:
        """The counts of the windows that closed by ``now``, each stamped with its window's start.

        The bus calls this before it adds an advert heard at ``now``, and at every window boundary,
        so each advert counts in the window it was heard in. A window with no advert counts 0.
        """
        out: list[Reading] = []
        while now >= self.next_close():
            start = self.next_close() - self.window
            flags = Flag.PARTIAL if self._partial else Flag.NONE
            out.append(Reading(self.device, NAME, len(self._seen), UNIT, start, int(flags)))
            self._seen.clear()
            self._start = start + self.window
            self._partial = self._down
            self._rotate(self._start)
        return out

    def hashes(self) -> frozenset[bytes]:
        """The hashes of the current window (for the tests that prove none leaves the gateway)."""
        return frozenset(self._seen)
