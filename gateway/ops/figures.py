"""The figures the metrics serve: one immutable snapshot, taken on the event loop, read by the scrape.

The daemon's counters (device health, the pipeline's counters, the uplinks' status, the buffer's
figures, the clock watch) belong to the event loop, which changes them between any two lines of
another thread. A scrape runs in prometheus-client's HTTP thread, so it never reads them:
:func:`take` copies them, on the loop, into a :class:`Figures` of plain values, and
:class:`FiguresFeed` hands it over by one reference swap.

How fresh: a scrape asks the loop for new figures (``call_soon_threadsafe``) and waits up to
:data:`FRESH_WAIT` for them. A loop that does not answer in time (a blocking call, a runaway
computation) does not hang the scrape: the last figures are served, and
``citygw_snapshot_timestamp_seconds`` says when the loop took them (``citygw_alive`` and
``citygw_event_loop_lag_seconds``, the watchdog's, are read at scrape time: they exist to tell a
stuck loop). Only the last figures are kept, never a history; while one request waits on the
loop, further scrapes wait for that one instead of queueing more.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from typing import TYPE_CHECKING

from citygw.drivers.health import DeviceState
from citygw.uplinks.base import UplinkState

if TYPE_CHECKING:
    from citygw.buffer.report import BufferReport
    from citygw.daemon.running import RunningGateway
    from citygw.pipeline.clock import ClockWatch

FRESH_WAIT = 0.5  # seconds a scrape waits for the loop's figures before serving the last ones


@dataclass(frozen=True, slots=True)
class DeviceFigures:
    device: str
    readings: int
    frames: int
    errors: tuple[tuple[str, int], ...]  # every reason the driver counts (from 0), then any other
    state: DeviceState
    last_seen: float | None  # time.monotonic() of the last good frame


@dataclass(frozen=True, slots=True)
class PipelineFigures:
    accepted: int
    invalid: int
    commits: int
    failed_commits: int
    batches: int
    gaps: int
    dropped: int


@dataclass(frozen=True, slots=True)
class BufferFigures:
    staged_count: int
    last_seq: int
    max_disk: int
    corrupt_batches: int
    clock_steps: int
    moved_aside_file: str | None
    wal_lost_readings: int


@dataclass(frozen=True, slots=True)
class UplinkFigures:
    name: str
    state: UplinkState
    acked_seq: int
    connects: int
    delivered_batches: int
    delivered_readings: int
    parked: int
    failures: tuple[tuple[str, int], ...]


@dataclass(frozen=True, slots=True)
class ClockFigures:
    synced: bool
    unsynced_readings: int
    corrected_readings: int


@dataclass(frozen=True, slots=True)
class Figures:
    """The running gateway at one moment of its event loop."""

    taken: float  # time.monotonic() on the loop
    gateway: str
    devices: tuple[DeviceFigures, ...]
    pipeline: PipelineFigures
    buffer: BufferFigures
    report: BufferReport | None  # the buffer file's last figures (None: not read yet); immutable
    uplinks: tuple[UplinkFigures, ...]
    clock: ClockFigures


_MODBUS_REASONS = (
    "timeout",
    "crc",
    "connection",
    "framing",
    "gateway",
    "exception",
    "decode",
    "late",
    "mismatch",
)
_PORT_REASONS = ("no-port", "permission", "busy", "port")  # drivers.serial.port: a port that does not open


@cache
def error_reasons(bus_type: str) -> tuple[str, ...]:
    """The reasons a bus type's driver counts device errors under (drivers.modbus.client,
    drivers.serial.decoders, drivers.ble.common): ``citygw_device_errors_total`` starts each at 0,
    so that ``rate()`` and ``increase()`` see the first error. A reason not listed still appears
    when it happens."""
    if bus_type.startswith("modbus"):
        return (*_MODBUS_REASONS, *(_PORT_REASONS if bus_type == "modbus-rtu" else ()))
    if bus_type == "serial":
        from citygw.drivers.serial.decoders import REASONS as SERIAL_REASONS

        return (*_PORT_REASONS, "timeout", *(r.value for r in SERIAL_REASONS))
    if bus_type == "ble":
        from citygw.drivers.ble.common import REASONS as BLE_REASONS

        return tuple(r.value for r in BLE_REASONS)
    return ()


def take(gateway: RunningGateway, *, clock: ClockWatch, report: BufferReport | None) -> Figures:
    """The figures of ``gateway`` now: call it on the event loop, which owns what it reads.
    Devices are those of the config in effect (a reload adds and removes them): each with every
    error reason its driver counts."""
    config = gateway.config
    devices = []
    for h in gateway.health.values():
        device = config.devices.get(h.device)
        bus = config.buses.get(device.bus) if device is not None else None
        known = error_reasons(bus.type) if bus is not None else ()
        errors = dict.fromkeys(known, 0) | dict(h.errors)
        devices.append(
            DeviceFigures(h.device, h.readings, h.frames, tuple(errors.items()), h.state, h.last_seen)
        )
    c = gateway.pipeline.counters
    buffer = gateway.buffer
    return Figures(
        taken=time.monotonic(),
        gateway=config.gateway.id,
        devices=tuple(devices),
        pipeline=PipelineFigures(
            c.accepted, c.invalid, c.commits, c.failed_commits, c.batches, c.gaps, c.dropped
        ),
        buffer=BufferFigures(
            buffer.staged_count,
            buffer.last_seq,
            buffer.max_disk,
            buffer.corrupt_batches,
            buffer.clock_steps,
            buffer.moved_aside_file,
            buffer.wal_lost_readings,
        ),
        report=report,
        uplinks=tuple(
            UplinkFigures(
                s.name,
                s.state,
                s.acked_seq,
                s.connects,
                s.delivered_batches,
                s.delivered_readings,
                getattr(s, "parked", 0),
                tuple(s.failures.items()),
            )
            for s in (uplink.status for uplink in gateway.uplinks)
        ),
        clock=ClockFigures(bool(clock.synced), clock.unsynced_readings, clock.corrected_readings),
    )


class FiguresFeed:
    """Figures from the loop to a scrape in another thread: :meth:`attach` on the loop, then
    :meth:`current` from any thread."""

    def __init__(self, take: Callable[[], Figures], *, wait: float = FRESH_WAIT) -> None:
        """``take``: the figures now (called on the loop); ``wait``: seconds a scrape waits for it."""
        self._take = take
        self.wait = wait
        self._loop: asyncio.AbstractEventLoop | None = None
        self._latest: Figures | None = None  # replaced whole, never changed: one reference swap
        self._asked: concurrent.futures.Future[Figures] | None = None  # a request the loop has not run
        self._lock = threading.Lock()

    @property
    def latest(self) -> Figures | None:
        """The last figures taken (None: none yet)."""
        return self._latest

    def attach(self) -> None:
        """On the running loop: from now on the figures are taken there; takes the first ones."""
        self._loop = asyncio.get_running_loop()
        self._refresh()

    def _refresh(self) -> Figures:
        figures = self._take()
        self._latest = figures
        return figures

    def _answer(self, asked: concurrent.futures.Future[Figures]) -> None:  # on the loop
        if not asked.set_running_or_notify_cancel():
            return
        try:
            asked.set_result(self._refresh())
        except Exception as exc:  # a bug in take(): the scrape that asked says so (HTTP 500)
            asked.set_exception(exc)

    def current(self) -> Figures:
        """Fresh figures from the loop, or, when it does not answer within :attr:`wait` seconds
        (blocked, stopped, closed), the last ones. Without a loop (a gateway that is not running)
        or on the loop itself (``citygw demo``'s view), they are taken right here."""
        loop = self._loop
        if loop is None or _running_loop() is loop:
            return self._refresh()
        with self._lock:
            asked = self._asked
            if asked is None or asked.done():
                asked = self._asked = concurrent.futures.Future()
                try:
                    loop.call_soon_threadsafe(self._answer, asked)
                except RuntimeError:  # the loop is closed: it answers no more
                    asked.cancel()
        try:
            return asked.result(timeout=self.wait)
        except (TimeoutError, concurrent.futures.CancelledError):
            latest = self._latest
            assert latest is not None, "attach() took the first figures"
            return latest


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None
