"""The daemon's operations side: clock watch, watchdog, buffer report and metrics endpoint.

One object the :class:`~citygw.daemon.gateway.Gateway` builds and runs beside its pipeline, so that the
daemon itself stays about data: :meth:`Operations.run` is one supervised task (the loop's beat, the
clock check, the buffer report refresh, listening for metrics until the port is free),
:meth:`start` and :meth:`close` bracket the threads (the watchdog's pinger, the metrics HTTP server).
"""

from __future__ import annotations

import asyncio
import os
from typing import TYPE_CHECKING

from citygw.buffer.report import BufferReport
from citygw.errors import CitygwError
from citygw.logs import EventLog
from citygw.ops.metrics import GatewayCollector, MetricsServer, Timings
from citygw.ops.watchdog import Watchdog
from citygw.pipeline.clock import ClockWatch

if TYPE_CHECKING:
    from citygw.daemon.running import RunningGateway

log = EventLog(__name__)

TEST_REPORT_EVERY = "CITYGW_TEST_REPORT_EVERY"
"""Environment variable for tests only: seconds between buffer reports instead of 5."""
REPORT_EVERY = float(os.environ.get(TEST_REPORT_EVERY, 5.0))  # seconds between buffer figures refreshes
CLOCK_EVERY = 1.0  # seconds between looks at the clock's sync state


class Operations:
    def __init__(self, gateway: RunningGateway, *, clock: ClockWatch | None = None) -> None:
        self.gateway = gateway
        self.clock = clock or ClockWatch()
        gateway.pipeline.stamp = self.clock.stamp
        self.watchdog = Watchdog(
            gateway.notifier, gateway.store, timeout=_double(gateway.notifier.watchdog_interval())
        )
        self.report: BufferReport | None = None
        self.timings = Timings(gateway)  # the histograms, whichever collector reads them
        metrics = gateway.config.metrics
        self.metrics = (
            MetricsServer(GatewayCollector(gateway, self), metrics.host, metrics.port)
            if metrics.enabled
            else None
        )

    def start(self) -> None:
        """The watchdog's pinger (after READY); the metrics endpoint starts in :meth:`run`."""
        self.watchdog.start()

    def close(self) -> None:
        self.watchdog.stop()
        if self.metrics is not None:
            self.metrics.close()

    async def run(self) -> None:
        async with asyncio.TaskGroup() as group:
            group.create_task(self.watchdog.run(), name="watchdog-beat")
            group.create_task(self._clock_loop(), name="clock")
            group.create_task(self._report_loop(), name="buffer-report")
            if self.metrics is not None and not self.metrics.listening:
                group.create_task(self.metrics.serve(), name="metrics")

    async def _clock_loop(self) -> None:
        while True:
            fix = self.clock.check()
            if fix is not None:
                corrected = await self.gateway.pipeline.correct_times(fix)
                log.event("clock_corrected").info(
                    "clock: corrected %d staged readings (%d in all)",
                    corrected,
                    self.clock.corrected_readings,
                )
            await asyncio.sleep(CLOCK_EVERY)

    async def _report_loop(self) -> None:
        store = self.gateway.store
        failures = 0
        while True:
            uplinks = list(self.gateway.config.uplinks)  # a reload may change them
            try:
                self.report = await store.call(store.buffer.report, uplinks)
                failures = 0
            except CitygwError as exc:
                failures += 1
                if failures == 1:
                    log.event("report_failed").warning("buffer report: %s", exc)
            await asyncio.sleep(REPORT_EVERY)


def _double(interval: float | None) -> float | None:
    """:meth:`Notifier.watchdog_interval` is half of ``$WATCHDOG_USEC``: the whole, in seconds."""
    return None if interval is None else interval * 2
