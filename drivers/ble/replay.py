"""A bleak scanner backend that replays recorded adverts instead of listening to a radio.

Chosen by a BLE bus's ``replay`` key (a bench, a demo, a site's air reproduced on a laptop); a bus
without it never imports this module. Everything above bleak is unchanged: the adverts enter
through bleak's own detection callbacks as real :class:`~bleak.backends.device.BLEDevice` and
:class:`~bleak.backends.scanner.AdvertisementData` values, exactly where the BlueZ backend hands
them over, then go through the same :class:`~citygw.drivers.ble.scanner.Scanner`, router and decoders.

The recording (:mod:`citygw.drivers.ble.recording`) is played at its own pace and starts again from the
top when it ends, for as long as the scanner runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from pathlib import Path
from typing import Any, Literal

from bleak import BleakScanner
from bleak.backends.scanner import AdvertisementData, AdvertisementDataCallback, BaseBleakScanner

from citygw.drivers.ble.recording import RecordedAdvert, load
from citygw.logs import EventLog

log = EventLog(__name__)

LOOP_PAUSE = 1.0  # seconds between the end of the recording and its next play


class ReplayScanner(BaseBleakScanner):
    """bleak's scanner backend interface over a list of recorded adverts."""

    def __init__(
        self,
        detection_callback: AdvertisementDataCallback | None,
        service_uuids: list[str] | None,
        scanning_mode: Literal["active", "passive"],
        *,
        adverts: list[RecordedAdvert],
        bluez: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(detection_callback, service_uuids)
        self.adverts = adverts
        self.scanning_mode = scanning_mode
        self.adapter = (bluez or {}).get("adapter", "replay")
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self.seen_devices = {}
        self._task = asyncio.create_task(self._play(), name=f"ble-replay-{self.adapter}")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _play(self) -> None:
        loop = asyncio.get_running_loop()
        plays = 0
        while True:
            started = loop.time()
            for advert in self.adverts:
                wait = started + advert.at - loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)
                self._hear(advert)
            plays += 1
            log.event("ble_replay_loop").debug("ble %s: replayed the recording %d times", self.adapter, plays)
            await asyncio.sleep(LOOP_PAUSE)

    def _hear(self, recorded: RecordedAdvert) -> None:
        adv = AdvertisementData(
            local_name=None,
            manufacturer_data=recorded.manufacturer_data,
            service_data=recorded.service_data,
            service_uuids=list(recorded.service_data),
            tx_power=None,
            rssi=recorded.rssi,
            platform_data=(),
        )
        if not self.is_allowed_uuid(adv.service_uuids):
            return
        device = self.create_or_update_device(recorded.address, recorded.address, None, None, adv)
        self.call_detection_callbacks(device, adv)


def factory(recording: Path) -> functools.partial[BleakScanner]:
    """A :data:`~citygw.drivers.ble.scanner.ScannerFactory` of bleak scanners replaying ``recording``."""
    adverts = load(recording)
    log.event("ble_replay", path=str(recording)).info(
        "ble: replaying %d recorded adverts from %s instead of a radio", len(adverts), recording
    )
    return functools.partial(BleakScanner, backend=ReplayScanner, adverts=adverts)
