"""The Modbus bus runner: one task per device, every transaction under the bus's lock.

Each device is polled on its own fixed-rate schedule (``interval``), all starting together, so
devices of one interval are read back to back, in one burst per interval (one wake-up of the
process for the lot: spreading 50 devices over their second cost three times the CPU, each
wake-up paying for cold caches). A poll runs the device's read plan inside one bus session and
hands the readings to the pipeline after releasing the bus.

A device that does not answer (timeout, garbled frames, connection down) is retried with
backoff: the wait after each silent poll is drawn from a doubling, jittered range (stamina, as
the uplinks do) between its interval and ``backoff_max``, so a dead unit costs the bus one
timeout per backoff period instead of one per interval; after two silent polls in a row it is
reported failing. It comes back by itself at the first answer. An exception response is an
answer: counted, never backed off. A request refused with exception 2 (illegal data address)
that spans unused addresses is split for good into requests that skip none.

Buses are independent tasks with their own links, so a slow device delays only its own bus.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field

import stamina

from citygw.backoff import Backoff
from citygw.config.modbus import ModbusBus, ModbusDeviceModel
from citygw.drivers.health import DeviceHealth
from citygw.drivers.modbus.client import ExceptionAnswer, ModbusLink, NoAnswer, TransactionError
from citygw.drivers.modbus.decoder import Counters, decode_response
from citygw.drivers.modbus.plan import ReadPlan, Request
from citygw.errors import CitygwError, DecodeError
from citygw.logs import EventLog
from citygw.reading import Reading, Sink

log = EventLog(__name__)


FAILING_AFTER = 2  # silent polls in a row before a device is reported failing


class DeviceSilent(CitygwError):
    """A poll in which the device answered nothing."""


@dataclass(slots=True)
class PollResult:
    """What one poll of a device gave: readings, errors, and what was tried (for ``probe``)."""

    readings: list[Reading] = field(default_factory=list)
    errors: list[TransactionError | DecodeError] = field(default_factory=list)
    outcomes: list[tuple[Request, str]] = field(default_factory=list)  # each request sent: "ok" or the error
    answered: bool = False
    split: list[Request] = field(default_factory=list)  # refused as spanning unused addresses, read again

    @property
    def tried(self) -> list[str]:
        """``read input registers 0-75 (function 4, 76 registers): ok``, one per request sent."""
        return [f"{request.describe()}: {outcome}" for request, outcome in self.outcomes]


class DevicePoller:
    """One device on a bus: its read plan, counter state, schedule and backoff."""

    def __init__(self, name: str, device: ModbusDeviceModel, link: ModbusLink) -> None:
        self.name = name
        self.device = device
        self.link = link
        self.unit = device.unit
        self.interval = device.interval
        self.plan = ReadPlan.build(device.fields, max_gap=device.gap)
        self.counters = Counters()
        self.backoff = Backoff(device.interval, max(device.backoff_max, device.interval), retry_on=_silent)
        self._health: DeviceHealth | None = None
        self._overrun_logged = False
        self._late = 0  # the link's count of late answers from this unit, already reported
        self.skipped = 0  # ticks skipped because a poll (or a backoff) outlasted the interval
        self.splits: list[Request] = []  # requests split for good (refused for spanning unused addresses)
        self.log_splits = True

    async def poll(self) -> PollResult:
        """Read every request of the plan once, holding the bus; stop at the first one unanswered."""
        result = PollResult()
        async with self.link.session():
            for request in self.plan.requests:
                started = time.monotonic()
                try:
                    data = await self.link.read(self.unit, request.function, request.address, request.count)
                except ExceptionAnswer as exc:
                    self._timed(started)
                    result.answered = True
                    result.errors.append(exc)
                    result.outcomes.append((request, exc.detail))
                    if exc.code == 2 and not request.gapless:
                        self._split(request)
                    continue
                except NoAnswer as exc:
                    result.errors.append(exc)
                    result.outcomes.append((request, exc.detail))
                    break  # a silent device would cost a timeout per request
                finally:
                    self._report_late(result)
                self._timed(started)
                result.answered = True
                result.outcomes.append((request, "ok"))
                decoded = decode_response(
                    request, data, device=self.name, time=time.time(), counters=self.counters
                )
                result.readings.extend(decoded.readings)
                result.errors.extend(decoded.errors)
                for name, event in decoded.events:
                    log.event("counter_rollover", device=self.name).info(
                        "device %s: counter %s went down (%s); reading flagged counter-rollover",
                        self.name,
                        name,
                        event.value,
                    )
        return result

    def _timed(self, started: float) -> None:
        """An answered transaction's time, for the metrics (the inter-frame silence included)."""
        if self._health is not None and self._health.observe_transaction is not None:
            self._health.observe_transaction(time.monotonic() - started)

    def _report_late(self, result: PollResult) -> None:
        late = self.link.late[self.unit]
        if late > self._late:
            self._late = late
            result.errors.append(
                NoAnswer(
                    "late",
                    f"unit {self.unit}: an answer came after the {self.link.timeout:g} s timeout and was "
                    "discarded; if the device is this slow, raise the bus timeout",
                )
            )

    def _split(self, request: Request) -> None:
        self.plan = self.plan.split(request)
        self.splits.append(request)
        if not self.log_splits:
            return
        log.event("modbus_gap_refused", device=self.name).warning(
            "device %s: unit %d refused %s, which spans unused addresses; reading those registers "
            "without gaps from now on (set max_gap: 0 for this device to skip the failed read)",
            self.name,
            self.unit,
            request.describe(),
        )

    def _account(self, result: PollResult, health: DeviceHealth) -> None:
        for error in result.errors:
            if isinstance(error, TransactionError):
                health.error(error.reason, error.detail)
            else:
                health.error(error.reason, error.detail)
        if result.answered:
            health.seen(len(result.readings))

    def _on_silent(self, exc: Exception) -> bool | float:
        """stamina's retry hook: back off after a silent poll, give up on nothing else."""
        if not isinstance(exc, DeviceSilent):
            return False
        self.backoff.failures += 1
        if self.backoff.failures >= FAILING_AFTER and self._health is not None:
            self._health.failing()
        return max(self.interval, self.backoff.delay())

    async def _poll_and_emit(self, sink: Sink, health: DeviceHealth) -> bool:
        """One poll, counted and handed over; whether the device answered."""
        result = await self.poll()
        self._account(result, health)
        if result.readings:
            await sink(result.readings)
        return result.answered

    async def _poll_until_answered(self, sink: Sink, health: DeviceHealth) -> bool:
        """Poll, and while the device is silent back off and poll again; whether it answered at once."""
        if await self._poll_and_emit(sink, health):
            return True  # the common case: no retry machinery at all
        failed = True  # the poll above: raised first inside the retry loop, so it starts the backoff
        async for attempt in stamina.retry_context(on=self._on_silent, attempts=None, timeout=None):
            with attempt:
                if failed or not await self._poll_and_emit(sink, health):
                    failed = False
                    raise DeviceSilent(f"device {self.name} (unit {self.unit}) did not answer")
        self.backoff.reset()
        return False

    async def run(self, sink: Sink, health: DeviceHealth) -> None:
        """Poll on schedule until cancelled."""
        self._health = health
        next_at = time.monotonic()
        while True:
            delay = next_at - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            at_once = await self._poll_until_answered(sink, health)
            next_at += self.interval
            behind = time.monotonic() - next_at
            if behind >= self.interval:  # a whole interval lost (a long poll, a backoff): skip, never burst
                missed = int(behind // self.interval)
                next_at += missed * self.interval
                self.skipped += missed
                if at_once and not self._overrun_logged:
                    self._overrun_logged = True
                    log.event("poll_overrun", device=self.name).warning(
                        "device %s: a poll took longer than its interval (%g s); the bus is too busy "
                        "for this interval",
                        self.name,
                        self.interval,
                    )


def _silent(exc: Exception) -> bool:
    return isinstance(exc, DeviceSilent)


async def run_bus(
    bus_name: str,
    bus: ModbusBus,
    devices: Mapping[str, ModbusDeviceModel],
    sink: Sink,
    health: Mapping[str, DeviceHealth],
) -> None:
    """Poll every device of one Modbus bus until cancelled."""
    link = ModbusLink(bus_name, bus)
    pollers = [DevicePoller(name, device, link) for name, device in devices.items()]
    for poller in pollers:
        log.event("device_polling", device=poller.name, bus=link.name).info(
            "device %s: unit %d on %s, %d fields in %d requests every %g s",
            poller.name,
            poller.unit,
            link.where,
            len(poller.device.fields),
            len(poller.plan.requests),
            poller.interval,
        )
    try:
        async with asyncio.TaskGroup() as group:
            for poller in pollers:
                group.create_task(
                    poller.run(sink, health[poller.name]), name=f"modbus-{bus_name}-{poller.name}"
                )
    finally:
        link.close()


async def probe(
    bus_name: str, bus: ModbusBus, name: str, device: ModbusDeviceModel, *, timeout: float | None = None
) -> PollResult:
    """Read one device once (``citygw probe``), as the daemon would: a request refused for spanning
    unused addresses is split and the device read again at once; ``split`` says which."""
    link = ModbusLink(bus_name, bus, timeout=timeout)
    try:
        poller = DevicePoller(name, device, link)
        poller.log_splits = False  # the probe says it in its own words
        result = await poller.poll()
        if poller.splits:
            result = await poller.poll()
            result.split = list(poller.splits)
        return result
    finally:
        link.close()


@dataclass(frozen=True, slots=True)
class ScanAnswer:
    unit: int
    answer: str  # "registers" or the exception the unit answered with


async def scan(
    bus_name: str, bus: ModbusBus, units: Sequence[int], *, timeout: float | None = None
) -> AsyncIterator[ScanAnswer]:
    """The units that answer a read of holding register 0 (an exception is an answer too)."""
    link = ModbusLink(bus_name, bus, timeout=timeout)
    try:
        for unit in units:
            async with link.session():
                try:
                    await link.read(unit, 3, 0, 1)
                except ExceptionAnswer as exc:
                    yield ScanAnswer(unit, exc.detail.split(": ", 1)[-1])
                except NoAnswer as exc:
                    if exc.link_down:
                        raise
                else:
                    yield ScanAnswer(unit, "registers")
    finally:
        link.close()
