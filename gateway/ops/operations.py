"""The daemon's operations side: clock watch, watchdog, buffer report and metrics endpoint.

One object the :class:`~citygw.daemon.gateway.Gateway` builds and runs beside its pipeline, so that the
daemon itself stays about data: :meth:`Operations.run` is one supervised task (the loop's beat, the
clock check, the buffer report refresh, listening for metrics until the port is free),
:meth:`start` and :meth:`close` bracket the threads (the watchdog's pinger, the metrics HTTP server).

It is the one part of the operations side that reads the running gateway (the config in effect,
the pipeline, the store, and the figures the metrics serve, taken on the loop:
:mod:`citygw.ops.figures`); the metrics collector gets only the figures, the histograms and the
watchdog.

The buffer report is read on the store's thread through the buffer's own connection
(:meth:`citygw.buffer.Buffer.report` under :meth:`citygw.buffer.thread.Store.call`): no second
SQLite connection.
"""

from __future__ import annotations

import asyncio
import os
from typing import TYPE_CHECKING

from citygw.buffer.report import BufferReport
from citygw.errors import CitygwError
from citygw.logs import EventLog
from citygw.ops.figures import Figures, FiguresFeed, take
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
        self.timings = Timings()  # the histograms, whichever collector reads them
        config = gateway.config
        for uplink in gateway.uplinks:
            self.timings.watch_uplink(uplink)
        for name, health in gateway.health.items():
            self.timings.watch_device(health, config.buses[config.devices[name].bus].type)
        self.feed = FiguresFeed(self._figures)  # what a scrape reads: taken on the loop
        metrics = config.metrics
        self.metrics = (
            MetricsServer(self.collector(), metrics.host, metrics.port) if metrics.enabled else None
        )

    def _figures(self) -> Figures:
        return take(self.gateway, clock=self.clock, report=self.report)

    def collector(self) -> GatewayCollector:
        """A collector of this gateway's metrics (the endpoint's; ``citygw demo``'s view makes one)."""
        return GatewayCollector(self.feed, self.timings, self.watchdog)

    def start(self) -> None:
        """The watchdog's pinger (after READY); the metrics endpoint starts in :meth:`run`."""
        self.watchdog.start()

    def close(self) -> None:
        self.watchdog.stop()
        if self.metrics is not None:
            self.metrics.close()

    async def run(self) -> None:
        self.feed.attach()  # scrapes ask this loop for the figures from now on
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
