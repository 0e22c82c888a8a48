"""Recorded BLE adverts: a file of what a radio heard, to replay where there is no radio.

One advert per line, as JSON; blank lines and lines starting with ``#`` are skipped::

    {"t": 0.0, "address": "A4:C1:38:0B:5E:ED", "rssi": -67,
     "service_data": {"0000fcd2-0000-1000-8000-00805f9b34fb": "4400c20102ac0d03ab17"}}
    {"t": 0.41, "address": "CB:B8:33:4C:88:4F", "rssi": -74,
     "manufacturer_data": {"0x0499": "0512fc5394c37c0004fffc040cac364200cdcbb8334c884f"}}

``t`` is seconds since the recording started (never decreasing); ``service_data`` is keyed by the
128-bit UUID text and ``manufacturer_data`` by the company id (``"0x0499"`` or ``"1177"``), the bytes
as hex without the UUID or company id, the way bleak hands them over. Pure: :func:`parse` takes the
text, :func:`load` reads a file; both raise :class:`RecordingError` naming the line and the fix.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from citygw.drivers.ble.common import normalise_address
from citygw.errors import CitygwError

_EXAMPLE = (
    '{"t": 0.0, "address": "A4:C1:38:0B:5E:ED", "rssi": -67, '
    '"service_data": {"0000fcd2-0000-1000-8000-00805f9b34fb": "4400c2"}}'
)
_KEYS = {"t", "address", "rssi", "service_data", "manufacturer_data"}


class RecordingError(CitygwError):
    """A recording that cannot be replayed: the file, the line and what is wrong."""


@dataclass(frozen=True, slots=True)
class RecordedAdvert:
    at: float  # seconds since the recording started
    address: str  # AA:BB:CC:DD:EE:FF
    rssi: int  # dBm
    service_data: dict[str, bytes]
    manufacturer_data: dict[int, bytes]


def _hex(value: Any, what: str) -> bytes:
    if not isinstance(value, str):
        raise ValueError(f"{what} must be hex text; got {type(value).__name__}")
    try:
        return bytes.fromhex(value)
    except ValueError:
        raise ValueError(f"{what} is not hex: {value!r}") from None


def _advert(item: Any, previous: float) -> RecordedAdvert:
    if not isinstance(item, dict):
        raise ValueError("each line is one JSON object")
    unknown = sorted(set(item) - _KEYS)
    if unknown:
        raise ValueError(f"unknown key {unknown[0]!r}; the keys are {', '.join(sorted(_KEYS))}")
    at = item.get("t")
    if not isinstance(at, int | float) or isinstance(at, bool) or at < previous:
        raise ValueError(
            f"t must be a number of seconds, not below the line before ({previous:g}); got {at!r}"
        )
    address = item.get("address")
    if not isinstance(address, str):
        raise ValueError("address is missing; write it as AA:BB:CC:DD:EE:FF")
    rssi = item.get("rssi", -70)
    if not isinstance(rssi, int) or isinstance(rssi, bool) or not -127 <= rssi <= 20:
        raise ValueError(f"rssi must be a whole number of dBm, -127 to 20; got {rssi!r}")
    service = item.get("service_data", {})
    maker = item.get("manufacturer_data", {})
    if not isinstance(service, dict) or not isinstance(maker, dict):
        raise ValueError("service_data and manufacturer_data are objects: key -> hex bytes")
    if not service and not maker:
        raise ValueError("the advert has neither service_data nor manufacturer_data")
    companies: dict[int, bytes] = {}
    for key, value in maker.items():
        try:
            company = int(key, 0)
        except ValueError:
            raise ValueError(f"manufacturer_data key {key!r} is not a company id such as 0x0499") from None
        companies[company] = _hex(value, f"manufacturer_data[{key!r}]")
    return RecordedAdvert(
        at=float(at),
        address=normalise_address(address),
        rssi=rssi,
        service_data={str(k).lower(): _hex(v, f"service_data[{k!r}]") for k, v in service.items()},
        manufacturer_data=companies,
    )


def parse(text: str, *, source: str = "<recording>") -> list[RecordedAdvert]:
    """The adverts of a recording's ``text``; ``source`` names it in errors."""
    adverts: list[RecordedAdvert] = []
    previous = 0.0
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        try:
            advert = _advert(json.loads(line), previous)
        except ValueError as exc:  # json.JSONDecodeError is a ValueError
            raise RecordingError(
                f"{source} line {number}: {exc}; each line is one advert, e.g. {_EXAMPLE}"
            ) from None
        previous = advert.at
        adverts.append(advert)
    if not adverts:
        raise RecordingError(f"{source}: no advert in it; each line is one advert, e.g. {_EXAMPLE}")
    return adverts


def load(path: Path) -> list[RecordedAdvert]:
    """The adverts recorded in the file at ``path``."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise RecordingError(f"cannot read the recording {path}: {exc}") from None
    return parse(text, source=str(path))
