"""The BLE side of ``citygw decode`` and ``citygw scan``: one advert's bytes, or what is nearby.

The decode functions are given the bytes as bleak hands them over (service data without its UUID,
manufacturer data without its company id) and refuse an advert with nothing valid in it
(:attr:`Reason.EMPTY`). ``scan`` (which imports bleak when it runs) lists only the advertisers that
decode as a supported format: phones and other devices are counted, never listed, so a scan shows
no one's address.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING

from citygw.config.ble import BleBus, BleSensor
from citygw.drivers.ble import bthome, pvvx, ruuvi
from citygw.drivers.ble.common import Advert, normalise_address
from citygw.drivers.ble.router import classify
from citygw.errors import DecodeError, Reason
from citygw.reading import Measurement

if TYPE_CHECKING:
    from citygw.config import Config
    from citygw.drivers.ble.scanner import ScannerFactory


def _some(measurements: list[Measurement]) -> list[Measurement]:
    if not measurements:
        raise DecodeError(Reason.EMPTY, "a well-formed advert with no value in it")
    return measurements


def decode_bthome(
    data: bytes, *, bindkey: str | None = None, address: str | None = None
) -> list[Measurement]:
    """One BTHome v2 service data; encrypted ones need ``bindkey`` (32 hex digits) and ``address``.

    Raises :class:`ValueError` for a malformed bindkey or address, :class:`DecodeError` otherwise.
    """
    key = None
    if bindkey is not None:
        address = address or bthome.included_address(data)  # an advert may carry its MAC (info bit 1)
        if address is None:
            raise ValueError("--bindkey needs --address: the advertiser's MAC is part of the nonce")
        try:
            raw = bytes.fromhex(bindkey.strip())
        except ValueError:
            raise ValueError("the bindkey is 32 hex digits (16 bytes)") from None
        key = bthome.Key(raw, normalise_address(address))
    elif data[:1] and data[0] & 1:
        raise DecodeError(Reason.NO_KEY, "an encrypted advert; give --bindkey KEY --address MAC to read it")
    decoded = bthome.decode(data, key)
    if decoded.unknown is not None and not decoded.measurements:
        raise DecodeError(Reason.UNKNOWN_OBJECT, f"object id 0x{decoded.unknown:02x} is not in BTHome v2")
    return _some(decoded.measurements)


def decode_ruuvi(data: bytes) -> list[Measurement]:
    """One RuuviTag RAWv2 manufacturer data (without the company id 0x0499)."""
    return _some(ruuvi.decode(data).measurements)


def decode_pvvx(data: bytes) -> list[Measurement]:
    """One pvvx or atc1441 service data (without the UUID 0x181A)."""
    return _some(pvvx.decode(data).measurements)


def scan_report(adverts: Iterable[Advert], configured: Mapping[str, str]) -> list[str]:
    """Lines for ``citygw scan`` on a BLE bus: ``address  rssi  format  device`` per sensor heard.

    ``configured`` maps addresses to the device ids of the config. Advertisers of no supported
    format are only counted. A BTHome sensor that carries its MAC in the advert (on a random or
    changing address) is listed once, by that MAC: the address to configure.
    """
    lines: list[str] = []
    listed: set[str] = set()
    others = 0
    for advert in sorted(adverts, key=lambda a: -a.rssi):
        fmt = classify(advert)
        if fmt is None:
            others += 1
            continue
        address = heard_address(advert)
        if address in listed:
            continue
        listed.add(address)
        device = configured.get(address, "-")
        lines.append(f"{address}  {advert.rssi:4d} dBm  {fmt.value:<12}  {device}")
    header = f"{'address':<17}  {'rssi':>8}  {'format':<12}  device"
    return [header, *lines, f"{others} other advertisers (not listed: no supported format)"]


def heard_address(advert: Advert) -> str:
    """The sensor's address: the MAC its BTHome advert carries (device information bit 1), else
    the advertised one."""
    data = advert.service_data.get(bthome.UUID)
    return (bthome.included_address(data) if data is not None else None) or advert.address


SCAN_SECONDS = 10.0


def scan_main(
    config: Config, bus: str, *, duration: float = SCAN_SECONDS, factory: ScannerFactory | None = None
) -> int:
    """``citygw scan -c FILE BUS`` on a BLE bus: listen for ``duration`` seconds, list the sensors heard.

    Exit codes: 0 sensors were heard, 1 none was (or the adapter cannot scan).
    """
    from bleak import BleakScanner
    from bleak.exc import BleakError

    from citygw.drivers.ble.scanner import scan_nearby

    spec = config.buses[bus]
    assert isinstance(spec, BleBus)
    configured = {
        d.address: name for name, d in config.devices.items() if d.bus == bus and isinstance(d, BleSensor)
    }
    sys.stderr.write(
        f"citygw scan: listening on {spec.adapter} for {duration:g} s ({spec.scanning.value} scanning)\n"
    )
    try:
        adverts = asyncio.run(
            scan_nearby(
                adapter=spec.adapter,
                scanning=spec.scanning,
                duration=duration,
                factory=factory if factory is not None else BleakScanner,
            )
        )
    except (BleakError, OSError) as exc:
        sys.stderr.write(f"citygw scan: bus {bus}: cannot scan on {spec.adapter}: {exc}\n")
        return 1
    lines = scan_report(adverts, configured)
    sys.stdout.write("\n".join(lines) + "\n")
    heard = {heard_address(a) for a in adverts}
    for address, name in configured.items():
        if address not in heard:
            sys.stderr.write(f"citygw scan: {name} ({address}) was not heard\n")
    return 0 if len(lines) > 2 else 1
