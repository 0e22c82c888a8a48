"""Per-device health, kept by the driver that owns the device and read by status and metrics.

A driver counts what happened (readings, frames, errors by reason) and says what state the
device is in; it never raises a device's trouble into the daemon.
"""

from __future__ import annotations

import enum
import time
from collections import Counter
from dataclasses import dataclass, field

from gateway.logs import EventLog

log = EventLog(__name__)


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

    def seen(self, readings: int) -> None:
        """A good frame or transaction gave ``readings`` readings."""
        if self.state is not DeviceState.OK and self.state is not DeviceState.UNKNOWN:
            log.event("device_ok", device=self.device).info("device %s: answering again", self.device)
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
        if text != self.last_error:  # a repeated error is logged once
            log.event("device_error", device=self.device, reason=reason).warning(
                "device %s: %s", self.device, text
            )
        self.last_error = text

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
