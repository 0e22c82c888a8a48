"""A synthetic source: a load generator for benchmarks, demos and tests.

It produces ``rate`` readings per second of the configured quantities, stamped
``start + i / rate`` so every reading is distinct, in chunks of at most ``chunk`` readings.
With ``values: sequence`` the value of reading ``i`` is ``i`` itself, so a test can tell
exactly which readings arrived.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from citygw.drivers.health import DeviceHealth
from citygw.logs import EventLog
from citygw.reading import Reading, Sink
from citygw.vocabulary import unit_of

if TYPE_CHECKING:
    from citygw.config import SyntheticDevice

log = EventLog(__name__)


_BASE = {"temperature": 24.0, "relativeHumidity": 60.0, "pm25": 12.0, "co2": 450.0, "voltage": 230.0}


class SyntheticSource:
    """One synthetic device."""

    def __init__(
        self,
        device: str,
        *,
        rate: float,
        count: int | None,
        quantities: Sequence[str],
        sequence: bool = False,
        chunk: int = 1000,
    ) -> None:
        self.device = device
        self.rate = rate
        self.count = count
        self.quantities = [(name, unit_of(name), _BASE.get(name, 10.0)) for name in quantities]
        self.sequence = sequence
        self.chunk = chunk
        self.produced = 0

    def _make(self, start: float, first: int, n: int) -> list[Reading]:
        out = []
        quantities, k, rate, device = self.quantities, len(self.quantities), self.rate, self.device
        for i in range(first, first + n):
            name, unit, base = quantities[i % k]
            value: float | int = i if self.sequence else round(base + base * 0.05 * math.sin(i / 97.0), 2)
            out.append(Reading(device, name, value, unit, start + i / rate))
        return out

    async def run(self, sink: Sink, health: DeviceHealth | None = None) -> None:
        """Produce until ``count`` readings were handed over (forever without a count)."""
        start_wall, start = time.time(), time.monotonic()
        tick = max(0.01, 1.0 / self.rate)
        end = self.count if self.count is not None else math.inf
        while self.produced < end:
            due = min(end, int((time.monotonic() - start) * self.rate) + 1)
            n = int(min(due - self.produced, self.chunk))
            if n > 0:
                await sink(self._make(start_wall, self.produced, n))
                self.produced += n
                if health is not None:
                    health.seen(n)
                await asyncio.sleep(0)  # let the writer and uplinks run between chunks
            if self.produced >= due:
                await asyncio.sleep(tick)
        log.event("device_done", device=self.device).info(
            "synthetic %s: produced its %d readings", self.device, self.produced
        )


async def run_bus(
    bus_name: str,
    bus: object,
    devices: Mapping[str, SyntheticDevice],
    sink: Sink,
    health: Mapping[str, DeviceHealth],
) -> None:
    """All devices of one synthetic bus; the bus ends when every device is done."""
    sources = [
        SyntheticSource(
            name, rate=d.rate, count=d.count, quantities=d.quantities, sequence=d.values == "sequence"
        )
        for name, d in devices.items()
    ]
    async with asyncio.TaskGroup() as group:
        for source in sources:
            group.create_task(source.run(sink, health[source.device]), name=f"synthetic-{source.device}")
