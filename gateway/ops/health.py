"""The box's own health, as readings of the reserved device ``gateway`` in the signed stream.

Every ``health.interval`` the daemon puts one set of readings through the same pipeline as a
sensor's (buffer, signed batches, every uplink), so a platform that cannot reach the box's
loopback metrics still sees, signed and in order: how long it has run, what it holds undelivered
and how old that is, the room left for the buffer, the SoC temperature (where the OS reports one),
whether the clock is synchronised, each uplink's lag, its devices by state, the config version in
effect and the software version. :data:`HEALTH_READINGS` is the table of names and SenML units
(docs/integrator.md, "Health readings"); the names are not quantities of the vocabulary, since no
config device may emit them.
"""

from __future__ import annotations

import asyncio
import shutil
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from citygw import __version__
from citygw.buffer.report import BufferReport
from citygw.config.health import HEALTH_DEVICE
from citygw.drivers.health import DeviceState
from citygw.errors import CitygwError
from citygw.logs import EventLog
from citygw.reading import Reading, Value
from citygw.uplinks.base import UplinkState

if TYPE_CHECKING:
    from citygw.daemon.running import RunningGateway

log = EventLog(__name__)

THERMAL_DIR = Path("/sys/class/thermal")
FIRST_REPORT = 10.0  # seconds after the start, at most, of the first report
MAX_LISTED_DEVICES = 20  # ids named in failingDevices; the rest are counted


@dataclass(frozen=True, slots=True)
class HealthName:
    name: str  # the SenML n; a name ending in ":" takes a channel (an uplink id, a device state)
    unit: str  # a registered SenML unit, "" for a boolean or text value
    meaning: str


HEALTH_READINGS: tuple[HealthName, ...] = (
    HealthName("uptime", "s", "since the daemon started"),
    HealthName("healthInterval", "s", "until the next health report (health.interval)"),
    HealthName("undeliveredReadings", "count", "accepted, not yet acknowledged by every uplink"),
    HealthName("undeliveredBytes", "B", "wire size of the batches not acknowledged by every uplink"),
    HealthName("oldestUndeliveredAge", "s", "age of the oldest of those batches (0: none)"),
    HealthName("bufferFreeBytes", "B", "room left: buffer.max_disk less the file, or the disk's free space"),
    HealthName("socTemperature", "Cel", "the SoC's, where the OS reports one (/sys/class/thermal)"),
    HealthName("clockSynced", "", "true when the system clock is synchronised (NTP)"),
    HealthName("uplinkLag:", "s", "per uplink: age of the oldest batch it has not acknowledged (0: none)"),
    HealthName("uplinkConnected:", "", "per uplink: true while it is connected"),
    HealthName("devices:", "count", "devices by state: ok, stale, failing, unknown"),
    HealthName("failingDevices", "", "ids of the devices failing or stale, comma-separated"),
    HealthName("configVersion", "", "the config version in effect"),
    HealthName("softwareVersion", "", "the citygw version running"),
)
HEALTH_UNITS: dict[str, str] = {h.name: h.unit for h in HEALTH_READINGS}


def unit_of_health(name: str) -> str:
    """The SenML unit of a health reading name (``uplinkLag:lte`` -> ``s``); KeyError if unknown."""
    base, colon, _ = name.partition(":")
    return HEALTH_UNITS[base + colon]


def soc_temperature(thermal: Path = THERMAL_DIR) -> float | None:
    """The SoC's temperature in °C from the kernel's thermal zones, None where there is none.

    A zone whose type names the CPU or SoC (``cpu-thermal`` on a Raspberry Pi, ``x86_pkg_temp``,
    ``soc_thermal``) wins; else the first zone that reads. ``temp`` is in millidegrees Celsius.
    """
    try:
        zones = sorted(thermal.glob("thermal_zone*"), key=lambda p: (len(p.name), p.name))
    except OSError:
        return None
    readings: list[tuple[bool, float]] = []
    for zone in zones:
        try:
            kind = (zone / "type").read_text().strip().lower()
            value = int((zone / "temp").read_text().strip()) / 1000
        except (OSError, ValueError):
            continue
        preferred = any(word in kind for word in ("cpu", "soc", "x86_pkg"))
        readings.append((preferred, value))
    if not readings:
        return None
    best = [value for first, value in readings if first] or [readings[0][1]]
    return round(best[0], 1)


def free_for_buffer(path: Path, max_disk: int, file_bytes: int) -> int:
    """Bytes the buffer may still grow by: what ``max_disk`` leaves, or the disk's free space if less."""
    room = max(0, max_disk - file_bytes)
    try:
        disk = shutil.disk_usage(path.parent).free
    except OSError:
        return room
    return max(0, min(room, disk))


class HealthReport:
    """The ``health`` task: one set of health readings every ``health.interval``."""

    def __init__(
        self, gateway: RunningGateway, *, clock_synced: Callable[[], bool], thermal: Path = THERMAL_DIR
    ) -> None:
        """``clock_synced``: whether the system clock is synchronised now (the clock watch's)."""
        self.gateway = gateway
        self.clock_synced = clock_synced
        self.thermal = thermal
        self.started = time.monotonic()
        self.reports = 0
        self._failures = 0  # reports in a row whose buffer figures could not be read

    async def run(self) -> None:
        """The first report :data:`FIRST_REPORT` seconds after the start (or ``health.interval``
        if shorter: the uplinks have connected by then), then every ``health.interval``; the
        config is read again each time, so a reload that changes the interval (or turns health
        off or on) takes effect."""
        await asyncio.sleep(min(FIRST_REPORT, self.gateway.config.health.interval))
        while True:
            settings = self.gateway.config.health
            if settings.enabled:
                await self.report_once()
            await asyncio.sleep(settings.interval)

    async def report_once(self) -> None:
        """One report. A buffer file that cannot be read (an I/O error, a stalled card) leaves
        its figures out of this report, logged once per streak; the rest is reported."""
        gw = self.gateway
        try:
            report: BufferReport | None = await gw.store.call(gw.store.buffer.report, list(gw.config.uplinks))
            self._failures = 0
        except CitygwError as exc:
            report = None
            self._failures += 1
            if self._failures == 1:
                log.event("health_buffer_unread").warning(
                    "health: the buffer's figures are left out of the report: %s", exc
                )
        await gw.pipeline.put(self.readings(report, time.time()))
        self.reports += 1

    def readings(self, report: BufferReport | None, now: float) -> list[Reading]:
        """The readings of one report at ``now`` (UTC epoch seconds); ``report``: the buffer
        file's figures (None: unreadable, left out)."""
        gw = self.gateway
        values: list[tuple[str, Value]] = [
            ("uptime", round(time.monotonic() - self.started, 3)),
            ("healthInterval", gw.config.health.interval),
        ]
        if report is not None:
            held = report.undelivered_readings + gw.buffer.staged_count + gw.pipeline.pending_count
            free = free_for_buffer(gw.buffer.path, gw.buffer.max_disk, report.file_bytes)
            values += [
                ("undeliveredReadings", held),
                ("undeliveredBytes", report.undelivered_bytes),
                ("oldestUndeliveredAge", _age(report.oldest_created, now)),
                ("bufferFreeBytes", free),
            ]
        temperature = soc_temperature(self.thermal)
        if temperature is not None:
            values.append(("socTemperature", temperature))
        values.append(("clockSynced", bool(self.clock_synced())))
        lags = {lag.name: lag for lag in report.uplinks} if report is not None else {}
        for uplink in gw.uplinks:
            lag = lags.get(uplink.name)
            if report is not None:
                values.append((f"uplinkLag:{uplink.name}", _age(lag.oldest_created if lag else None, now)))
            values.append((f"uplinkConnected:{uplink.name}", uplink.status.state is UplinkState.CONNECTED))
        states = Counter(h.state for h in gw.health.values())
        for state in DeviceState:
            values.append((f"devices:{state.value}", states.get(state, 0)))
        failing = sorted(
            name for name, h in gw.health.items() if h.state in (DeviceState.FAILING, DeviceState.STALE)
        )
        listed = ",".join(failing[:MAX_LISTED_DEVICES])
        if len(failing) > MAX_LISTED_DEVICES:
            listed += f",+{len(failing) - MAX_LISTED_DEVICES} more"
        values.append(("failingDevices", listed))
        values.append(("configVersion", gw.config_version))
        values.append(("softwareVersion", __version__))
        return [Reading(HEALTH_DEVICE, name, value, unit_of_health(name), now) for name, value in values]


def _age(created: float | None, now: float) -> float:
    return 0.0 if created is None else round(max(0.0, now - created), 3)


__all__ = [
    "HEALTH_DEVICE",
    "HEALTH_READINGS",
    "HealthReport",
    "soc_temperature",
]
