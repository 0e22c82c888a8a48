"""The BLE transport: one bleak scanner per adapter, kept running; the only importer of bleak.

:class:`Scanner` owns the scanner's life: it starts a :class:`bleak.BleakScanner` (passive where
BlueZ allows it, else active, as configured), restarts it with jittered backoff when the adapter or
BlueZ goes away (start fails, or no advert arrives for ``restart_when_silent``), and hands every advert
as an :class:`~citygw.drivers.ble.common.Advert` to a bounded queue. It never parses: a full queue drops the
advert and counts it (:attr:`Scanner.dropped`).

The test seam is :meth:`Scanner.on_advert`, the callback bleak calls with its own ``BLEDevice`` and
``AdvertisementData`` values; ``factory`` replaces :class:`bleak.BleakScanner` (e.g. with a bleak
scanner on a backend that replays recorded adverts).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterable
from typing import Any, Protocol

from bleak import BleakScanner
from bleak.args.bluez import OrPattern
from bleak.assigned_numbers import AdvertisementDataType
from bleak.backends.device import BLEDevice
from bleak.backends.scanner import AdvertisementData
from bleak.exc import BleakError

from citygw.backoff import Backoff
from citygw.config.ble import BleFormat, Scanning
from citygw.drivers.ble.common import Advert
from citygw.logs import EventLog

log = EventLog(__name__)

QUEUE_SIZE = 8192  # adverts waiting for the router: a few seconds of a crowded street

# BlueZ passive scanning (org.bluez.AdvertisementMonitor1) only reports adverts that match a pattern
PATTERNS: dict[BleFormat, OrPattern] = {
    BleFormat.BTHOME: OrPattern(0, AdvertisementDataType.SERVICE_DATA_UUID16, b"\xd2\xfc"),
    BleFormat.RUUVI: OrPattern(0, AdvertisementDataType.MANUFACTURER_SPECIFIC_DATA, b"\x99\x04"),
    BleFormat.XIAOMI_PVVX: OrPattern(0, AdvertisementDataType.SERVICE_DATA_UUID16, b"\x1a\x18"),
}
# presence counting wants every advertiser: phones and wearables send the Flags AD (bits 0-4)
FLAGS_PATTERNS = tuple(OrPattern(0, AdvertisementDataType.FLAGS, bytes((flags,))) for flags in range(0x20))


class BleakScannerLike(Protocol):
    async def start(self) -> None: ...
    async def stop(self) -> None: ...


ScannerFactory = Callable[..., BleakScannerLike]


def patterns_for(formats: Iterable[BleFormat], *, presence: bool) -> list[OrPattern]:
    """The passive-scan patterns that let through the adverts a bus needs."""
    chosen = [PATTERNS[fmt] for fmt in sorted(set(formats))]
    return chosen + list(FLAGS_PATTERNS) if presence else chosen


class ScannerStopped(BleakError):
    """No advert for longer than ``restart_when_silent``: BlueZ or the adapter went quiet."""


class Scanner:
    """Keeps one bleak scanner running on ``adapter`` and queues what it hears."""

    def __init__(
        self,
        *,
        adapter: str,
        scanning: Scanning,
        patterns: list[OrPattern],
        queue: asyncio.Queue[Advert],
        restart_when_silent: float = 300.0,
        backoff_initial: float = 2.0,
        backoff_max: float = 120.0,
        factory: ScannerFactory = BleakScanner,
        on_state: Callable[[bool], None] | None = None,
    ) -> None:
        self.adapter = adapter
        self.scanning = scanning
        self.patterns = patterns
        self.queue = queue
        self.restart_when_silent = restart_when_silent
        self.factory = factory
        self.on_state = on_state  # called with True when scanning starts, False when it stops
        self.backoff = Backoff(backoff_initial, backoff_max, retry_on=self._retryable)
        self.mode: str | None = None  # "passive" or "active" once started
        self.received = 0
        self.dropped = 0
        self.starts = 0
        self._last = time.monotonic()
        self._last_error = ""

    # -- the seam bleak calls ---------------------------------------------------------------------

    def on_advert(self, device: BLEDevice, adv: AdvertisementData) -> None:
        """bleak's detection callback: queue the advert, or count it dropped when the queue is full."""
        now = time.monotonic()
        self._last = now
        self.received += 1
        try:
            self.queue.put_nowait(
                Advert(device.address.upper(), adv.rssi, adv.service_data, adv.manufacturer_data, now)
            )
        except asyncio.QueueFull:
            self.dropped += 1

    # -- the scanner's life -----------------------------------------------------------------------

    @staticmethod
    def _retryable(exc: Exception) -> bool:
        return isinstance(exc, BleakError | OSError | EOFError | TimeoutError)

    async def run(self) -> None:
        """Scan until cancelled, restarting with backoff whenever the scanner fails."""
        async for attempt in self.backoff.retrying():
            with attempt:
                await self._scan_once()

    def _make(self, mode: str) -> BleakScannerLike:
        bluez: dict[str, Any] = {"adapter": self.adapter}
        if mode == "passive":
            bluez["or_patterns"] = self.patterns
        return self.factory(self.on_advert, scanning_mode=mode, bluez=bluez)

    async def _start(self) -> BleakScannerLike:
        if self.mode is None:
            self.mode = "active" if self.scanning is Scanning.ACTIVE else "passive"
        try:
            scanner = self._make(self.mode)
            await scanner.start()
        except BleakError as exc:
            if self.scanning is not Scanning.AUTO or self.mode != "passive":
                raise
            scanner = self._make("active")
            try:
                await scanner.start()
            except BleakError:
                raise exc from None  # the adapter itself is not there: try passive again next time
            log.event("scanner_passive_unavailable").warning(
                "ble %s: passive scanning is not available (%s); falling back to active scanning "
                "(passive needs BlueZ >= 5.56 with experimental features: bluetoothd --experimental)",
                self.adapter,
                exc,
            )
            self.mode = "active"
        return scanner

    async def _scan_once(self) -> None:
        try:
            scanner = await self._start()
        except Exception as exc:
            text = f"{type(exc).__name__}: {exc}"
            if text != self._last_error:
                log.event("scanner_retrying").warning(
                    "ble %s: cannot start scanning: %s; retrying with backoff", self.adapter, text
                )
            self._last_error = text
            raise
        self.starts += 1
        self._last = time.monotonic()
        log.event("scanner_started").info("ble %s: scanning (%s)", self.adapter, self.mode)
        self._last_error = ""
        self.backoff.reset()
        if self.on_state is not None:
            self.on_state(True)
        try:
            await self._watch()
        finally:
            if self.on_state is not None:
                self.on_state(False)
            with contextlib.suppress(Exception):
                await asyncio.shield(scanner.stop())

    async def _watch(self) -> None:
        """Return never; raise :class:`ScannerStopped` when nothing was heard for too long."""
        limit = self.restart_when_silent
        while True:
            if not limit:
                await asyncio.Event().wait()  # forever, until cancelled
            silent = time.monotonic() - self._last
            if silent >= limit:
                log.event("scanner_silent").warning(
                    "ble %s: no advert for %.0f s; restarting the scanner", self.adapter, silent
                )
                raise ScannerStopped(f"silent for {silent:.0f} s")
            await asyncio.sleep(limit - silent)


async def scan_nearby(
    *,
    adapter: str,
    scanning: Scanning,
    duration: float,
    patterns: list[OrPattern] | None = None,
    factory: ScannerFactory = BleakScanner,
) -> list[Advert]:
    """Listen for ``duration`` seconds and return the last advert of each address (``citygw scan``)."""
    queue: asyncio.Queue[Advert] = asyncio.Queue(QUEUE_SIZE)
    scanner = Scanner(
        adapter=adapter,
        scanning=scanning,
        patterns=patterns if patterns is not None else patterns_for(BleFormat, presence=False),
        queue=queue,
        restart_when_silent=0,
        factory=factory,
    )
    seen: dict[str, Advert] = {}
    started = await scanner._start()
    try:
        deadline = time.monotonic() + duration
        while (left := deadline - time.monotonic()) > 0:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(left):
                    advert = await queue.get()
                    seen[advert.address] = advert
    finally:
        await started.stop()
    while not queue.empty():
        advert = queue.get_nowait()
        seen[advert.address] = advert
    return list(seen.values())
