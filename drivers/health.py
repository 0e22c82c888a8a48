"""Per-device health, kept by the driver that owns the device and read by status and metrics.

A driver counts what happened (readings, frames, errors by reason) and says what state the
device is in; it never raises a device's trouble into the daemon.
"""

from __future__ import annotations

import enum
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from citygw.logs import EventLog

log = EventLog(__name__)

EPISODE_QUIET = 60.0  # seconds without an error of a reason, and a good frame, end its episode


class DeviceState(enum.Enum):
    UNKNOWN = "unknown"  # nothing heard yet
    OK = "ok"  # answering, readings flowing
    STALE = "stale"  # silent for longer than its stale time
    FAILING = "failing"  # errors in a row; polled less often until it answers again


@dataclass(slots=True)
class DeviceHealth:
    device: str
    state: DeviceState = DeviceState.UNKNOWN
    readings: int = 0
    frames: int = 0  # good frames or transactions
    errors: Counter[str] = field(default_factory=Counter)  # reason -> count
    consecutive_errors: int = 0
    last_seen: float | None = None  # monotonic time of the last good frame
    last_error: str = ""
    # seconds one answered transaction took, for the metrics' histogram (None: nobody listens)
    observe_transaction: Callable[[float], None] | None = field(default=None, repr=False, compare=False)
    # per reason logged in its current episode: when it last came, and how many were not logged
    _episodes: dict[str, tuple[float, int]] = field(default_factory=dict)

    def seen(self, readings: int) -> None:
        """A good frame or transaction gave ``readings`` readings."""
        if self.state is not DeviceState.OK and self.state is not DeviceState.UNKNOWN:
            log.event("device_ok", device=self.device).info("device %s: answering again", self.device)
        if self._episodes:
            self._end_episodes()
        self.state = DeviceState.OK
        self.frames += 1
        self.readings += readings
        self.consecutive_errors = 0
        self.last_seen = time.monotonic()

    def error(self, reason: str, detail: str = "") -> None:
        """Count an error (``reason`` is a short fixed word: timeout, crc, checksum, exception...)."""
        self.errors[reason] += 1
        self.consecutive_errors += 1
        text = f"{reason}: {detail}" if detail else reason
        episode = self._episodes.get(reason)
        if episode is None:  # once per reason per episode; the rest are counted (errors, metrics)
            log.event("device_error", device=self.device, reason=reason).warning(
                "device %s: %s (more %s errors are counted, not logged, until the device has been "
                "free of them for %g s)",
                self.device,
                text,
                reason,
                EPISODE_QUIET,
            )
        self._episodes[reason] = (time.monotonic(), 0 if episode is None else episode[1] + 1)
        self.last_error = text

    def _end_episodes(self) -> None:
        """A good frame came: each reason without an error for :data:`EPISODE_QUIET` ends its episode."""
        quiet = time.monotonic() - EPISODE_QUIET
        for reason, (last, more) in list(self._episodes.items()):
            if last <= quiet:
                del self._episodes[reason]
                if more:
                    log.event("device_errors_counted", device=self.device, reason=reason).info(
                        "device %s: %d more %s errors after the one logged", self.device, more, reason
                    )

    def failing(self) -> None:
        if self.state is not DeviceState.FAILING:
            log.event("device_failing", device=self.device).warning(
                "device %s: not answering; backing off", self.device
            )
        self.state = DeviceState.FAILING

    def stale(self) -> None:
        if self.state is not DeviceState.STALE:
            log.event("device_stale", device=self.device).warning(
                "device %s: silent; reported stale", self.device
            )
        self.state = DeviceState.STALE
