"""The BLE bus runner: one scanner, one router, readings to the pipeline.

Two tasks under one :class:`asyncio.TaskGroup`: the :class:`~citygw.drivers.ble.scanner.Scanner` (bleak,
restarts, the bounded advert queue) and the consumer here, which takes adverts in batches, routes them
(:class:`~citygw.drivers.ble.router.Router`), keeps each device's health, closes presence windows on time and
hands the readings of a batch to the pipeline in one call. Cancelling the runner stops both and the
bleak scanner with them; nothing outlives it.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

from bleak import BleakScanner

from citygw.config.ble import BleSensor, PresenceCounter
from citygw.drivers.ble.common import Advert
from citygw.drivers.ble.router import Router
from citygw.drivers.ble.scanner import QUEUE_SIZE, Scanner, ScannerFactory, patterns_for
from citygw.drivers.health import DeviceHealth
from citygw.logs import EventLog
from citygw.reading import Reading, Sink

if TYPE_CHECKING:
    from citygw.config.ble import BleBus, BleDevice

log = EventLog(__name__)


BATCH = 2048  # adverts routed per hand-over to the pipeline, at most
HOUSEKEEPING = 5.0  # seconds between stale checks and drop reports when the air is quiet
DROP_REPORT = 60.0  # seconds between log lines about dropped adverts


class BleBusRunner:
    """The consumer side of one BLE bus; :meth:`run` owns the scanner task too."""

    def __init__(
        self,
        bus_name: str,
        bus: BleBus,
        devices: Mapping[str, BleDevice],
        sink: Sink,
        health: Mapping[str, DeviceHealth],
        *,
        factory: ScannerFactory = BleakScanner,
        random_bytes: Callable[[int], bytes] = os.urandom,
    ) -> None:
        self.bus_name = bus_name
        self.sink = sink
        self.health = health
        self.router = Router(devices, random_bytes=random_bytes)
        self.stale_after = {name: d.stale_after for name, d in devices.items() if isinstance(d, BleSensor)}
        presence = any(isinstance(d, PresenceCounter) for d in devices.values())
        formats = [d.format for d in devices.values() if isinstance(d, BleSensor)]
        self.queue: asyncio.Queue[Advert] = asyncio.Queue(QUEUE_SIZE)
        self.scanner = Scanner(
            adapter=bus.adapter,
            scanning=bus.scanning,
            patterns=patterns_for(formats, presence=presence),
            queue=self.queue,
            restart_when_silent=bus.restart_when_silent,
            backoff_initial=bus.backoff_initial,
            backoff_max=bus.backoff_max,
            factory=factory,
            on_state=self._scanning,
        )
        self._started = time.monotonic()
        self._dropped_reported = 0
        self._drop_report_at = 0.0

    def _scanning(self, running: bool) -> None:
        for counter in self.router.counters:
            if running:
                counter.resumed()
            else:
                counter.interrupted()

    async def run(self) -> None:
        """Scan and route until cancelled."""
        self._started = time.monotonic()
        self.router.start(time.time())
        self._scanning(False)  # windows are partial until the scanner runs
        async with asyncio.TaskGroup() as group:
            group.create_task(self.scanner.run(), name=f"ble-{self.bus_name}-scanner")
            await self._consume()

    async def _consume(self) -> None:
        queue = self.queue
        while True:
            wait = HOUSEKEEPING
            due = self.router.next_close()
            if due is not None:
                wait = min(wait, max(0.0, due - time.time()))
            batch: list[Advert] = []
            try:
                async with asyncio.timeout(wait):
                    batch.append(await queue.get())
            except TimeoutError:
                pass
            while batch and len(batch) < BATCH and not queue.empty():
                batch.append(queue.get_nowait())
            readings = self._route(batch)
            readings.extend(self._closed(self.router.close_due(time.time())))
            self._housekeeping()
            if readings:
                await self.sink(readings)

    def _route(self, batch: list[Advert]) -> list[Reading]:
        readings: list[Reading] = []
        if not batch:
            return readings
        offset = time.time() - time.monotonic()
        router, health, counting = self.router, self.health, bool(self.router.counters)
        for advert in batch:
            now = advert.seen + offset
            outcome = router.sensor(advert, now)
            if outcome is not None:
                device = health[outcome.device]
                if outcome.error is not None:
                    device.error(outcome.error.reason.value, outcome.error.detail)
                elif not outcome.duplicate:
                    device.seen(len(outcome.readings))
                    readings.extend(outcome.readings)
                    if outcome.unknown is not None:
                        device.error(
                            "unknown-object",
                            f"BTHome object id 0x{outcome.unknown:02x} is not in citygw's table; "
                            "the objects after it were not read",
                        )
            if counting:
                readings.extend(self._closed(router.presence(advert, now)))
        return readings

    def _closed(self, counts: list[Reading]) -> list[Reading]:
        for reading in counts:
            self.health[reading.device].seen(1)
        return counts

    def _housekeeping(self) -> None:
        now = time.monotonic()
        for name, limit in self.stale_after.items():
            device = self.health[name]
            last = device.last_seen if device.last_seen is not None else self._started
            if now - last > limit:
                device.stale()
        dropped = self.scanner.dropped
        if dropped > self._dropped_reported and now >= self._drop_report_at:
            log.event("adverts_dropped", bus=self.bus_name).warning(
                "ble %s: %d adverts dropped (queue of %d full: the gateway cannot keep up)",
                self.bus_name,
                dropped - self._dropped_reported,
                QUEUE_SIZE,
            )
            self._dropped_reported = dropped
            self._drop_report_at = now + DROP_REPORT


async def run_bus(
    bus_name: str,
    bus: BleBus,
    devices: Mapping[str, BleDevice],
    sink: Sink,
    health: Mapping[str, DeviceHealth],
    *,
    factory: ScannerFactory = BleakScanner,
) -> None:
    """All devices of one BLE bus, until cancelled (see :data:`citygw.daemon.gateway.BUS_RUNNERS`).

    A bus with ``replay`` hears the adverts of that recording instead of its adapter."""
    if bus.replay is not None:
        from citygw.drivers.ble import replay

        factory = replay.factory(bus.replay)
    await BleBusRunner(bus_name, bus, devices, sink, health, factory=factory).run()
