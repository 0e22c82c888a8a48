"""From adverts to readings: the allowlist, the decoder of each sensor, de-duplication, presence.

Pure given its time arguments (no asyncio, no bleak, no logging): :class:`Router` gets each advert
with the wall-clock time it was heard and returns what became of it. An advert from an address no
sensor is configured with (nor carrying one in its BTHome payload) is not decoded and not kept; it
only feeds the presence counters, which keep nothing but salted hashes for one window.

Each sensor keeps the key of its last advert (BTHome packet id or encryption counter, Ruuvi
measurement sequence, pvvx counter): an advert with the same key is the same measurement sent again
and is dropped. Any change of key is new data (counters roll over and restart with the battery). A
plaintext BTHome advert without a packet id has no key: every such advert counts.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from citygw.config.ble import BleDevice, BleFormat, BleSensor
from citygw.config.ble import PresenceCounter as PresenceConfig
from citygw.drivers.ble import bthome, pvvx, ruuvi
from citygw.drivers.ble.common import Advert, Decoded
from citygw.drivers.ble.presence import PresenceCounter
from citygw.errors import DecodeError, Reason
from citygw.reading import Reading

Extract = Callable[[Advert], bytes | None]
DecodeFn = Callable[[bytes], Decoded]


def _service(uuid: str) -> Extract:
    def extract(advert: Advert) -> bytes | None:
        return advert.service_data.get(uuid)

    return extract


def _manufacturer(company: int) -> Extract:
    def extract(advert: Advert) -> bytes | None:
        return advert.manufacturer_data.get(company)

    return extract


EXTRACT: dict[BleFormat, Extract] = {
    BleFormat.BTHOME: _service(bthome.UUID),
    BleFormat.RUUVI: _manufacturer(ruuvi.COMPANY_ID),
    BleFormat.XIAOMI_PVVX: _service(pvvx.UUID),
}


def decoder_for(fmt: BleFormat, key: bthome.Key | None = None) -> DecodeFn:
    """The decoder of ``fmt`` (BTHome with the device's key, if it has one)."""
    if fmt is BleFormat.BTHOME:
        return functools.partial(bthome.decode, key=key)
    return ruuvi.decode if fmt is BleFormat.RUUVI else pvvx.decode


def classify(advert: Advert) -> BleFormat | None:
    """The format ``advert`` decodes as, if any (``citygw scan``); encrypted BTHome counts as BTHome."""
    for fmt, extract in EXTRACT.items():
        data = extract(advert)
        if data is None:
            continue
        try:
            decoder_for(fmt)(data)
        except DecodeError as exc:
            if exc.reason is not Reason.NO_KEY:
                continue
        return fmt
    return None


def _carried_address(advert: Advert) -> str:
    """The MAC a BTHome advert carries in its payload (firmware on a random or changing address,
    or a relay), else ``""``: such a sensor is found by the address configured for it."""
    data = advert.service_data.get(bthome.UUID)
    return (bthome.included_address(data) or "") if data is not None else ""


@dataclass(slots=True)
class Route:
    """One configured sensor: where its bytes are, how they decode, and the last key seen."""

    device: str
    extract: Extract
    decode: DecodeFn
    last_key: int | None = None


@dataclass(slots=True)
class Outcome:
    """What became of one advert from a configured sensor."""

    device: str
    readings: list[Reading] = field(default_factory=list)
    error: DecodeError | None = None
    duplicate: bool = False
    unknown: int | None = None  # a BTHome object id that stopped decoding


class Router:
    """Routes adverts to the sensors and presence counters of one BLE bus."""

    def __init__(
        self,
        devices: Mapping[str, BleDevice],
        *,
        with_rssi: bool = True,
        random_bytes: Callable[[int], bytes] = os.urandom,
    ) -> None:
        """``random_bytes`` draws the presence counters' salts (the OS's randomness)."""
        self.routes: dict[str, Route] = {}
        self.counters: list[PresenceCounter] = []
        self.with_rssi = with_rssi
        for name, device in devices.items():
            if isinstance(device, BleSensor):
                key = (
                    bthome.Key(bytes.fromhex(device.bindkey.get_secret_value()), device.address)
                    if device.bindkey is not None
                    else None
                )
                self.routes[device.address] = Route(
                    name, EXTRACT[device.format], decoder_for(device.format, key)
                )
            elif isinstance(device, PresenceConfig):
                self.counters.append(
                    PresenceCounter(
                        name,
                        window=device.window,
                        rssi_threshold=device.rssi_threshold,
                        random_bytes=random_bytes,
                    )
                )

    def start(self, now: float) -> None:
        for counter in self.counters:
            counter.start(now)

    def sensor(self, advert: Advert, now: float) -> Outcome | None:
        """Decode ``advert`` if it comes from a configured sensor; ``None`` otherwise (not recorded)."""
        route = self.routes.get(advert.address) or self.routes.get(_carried_address(advert))
        if route is None:
            return None
        data = route.extract(advert)
        if data is None:  # e.g. a scan response holding only the name
            return None
        try:
            decoded = route.decode(data)
        except DecodeError as exc:
            return Outcome(route.device, [], exc)
        key = decoded.key
        if key is not None:
            if key == route.last_key:
                return Outcome(route.device, [], None, True)
            route.last_key = key
        device = route.device
        readings = [Reading(device, name, value, unit, now) for name, value, unit in decoded.measurements]
        if self.with_rssi:
            readings.append(Reading(device, "rssi", advert.rssi, "dBm", now))
        return Outcome(device, readings, None, False, decoded.unknown)

    def presence(self, advert: Advert, now: float) -> list[Reading]:
        """Count ``advert`` in every presence counter; returns the counts of windows that closed."""
        out: list[Reading] = []
        for counter in self.counters:
            if now >= counter.next_close():
                out.extend(counter.close_due(now))
            counter.add(advert.address, advert.rssi)
        return out

    def close_due(self, now: float) -> list[Reading]:
        """The counts of every window that closed by ``now``."""
        out: list[Reading] = []
        for counter in self.counters:
            out.extend(counter.close_due(now))
        return out

    def next_close(self) -> float | None:
        return min((c.next_close() for c in self.counters), default=None)
