"""What the BLE decoders share: the advert as the scanner hands it over, decoded values, errors.

An :class:`Advert` is the part of one BLE advertisement the gateway uses, in the shape bleak gives it
(service data keyed by 128-bit UUID text without the UUID in the bytes; manufacturer data keyed by
company id without the id in the bytes). Decoders take the bytes of one entry and return
:class:`Measurement` values, or raise one :class:`DecodeError` with a :class:`Reason`.
"""

from __future__ import annotations

import enum
import re
from typing import NamedTuple

_MAC_RE = re.compile(r"[0-9A-F]{2}(?::[0-9A-F]{2}){5}")


def uuid16(short: int) -> str:
    """The 128-bit UUID text bleak uses for a 16-bit Bluetooth SIG UUID (Core spec Vol 3 Part B §2.5.1)."""
    return f"0000{short:04x}-0000-1000-8000-00805f9b34fb"


class Advert(NamedTuple):
    """One advertisement as the scanner saw it; ``seen`` is monotonic seconds.

    ``address`` is upper-case ``AA:BB:CC:DD:EE:FF``. A named tuple: thousands are made per second.
    """

    address: str
    rssi: int
    service_data: dict[str, bytes]
    manufacturer_data: dict[int, bytes]
    seen: float


class Reason(enum.StrEnum):
    """Why an advert was refused: the keys of :attr:`citygw.drivers.health.DeviceHealth.errors`."""

    SHORT = "short"  # fewer bytes than the format needs
    LENGTH = "length"  # a size the format does not have
    FORMAT = "format"  # not this format (format byte, version)
    VALUE = "value"  # a field holds something the spec does not allow (text that is not UTF-8)
    UNKNOWN_OBJECT = "unknown-object"  # a BTHome object id not in the table: the rest is unreadable
    NO_KEY = "no-key"  # an encrypted advert and no bindkey to read it
    DECRYPT = "decrypt"  # the MIC does not match: wrong bindkey, wrong address or a forged advert
    PLAINTEXT = "plaintext"  # a plaintext advert from a device that has a bindkey (downgrade refused)
    ENCRYPTED = "encrypted"  # an encrypted variant of a format that citygw does not read
    EMPTY = "empty"  # a well-formed advert with no value in it (every field marked not available)


def format_mac(mac: bytes) -> str:
    """Six bytes, most significant first, as ``AA:BB:CC:DD:EE:FF``."""
    return ":".join(f"{b:02X}" for b in mac)


def normalise_address(text: str) -> str:
    """``text`` as ``AA:BB:CC:DD:EE:FF``; accepts ``-`` or ``:`` separators or none, any case.

    Raises :class:`ValueError` for anything that is not 6 bytes.
    """
    raw = text.strip().upper().replace("-", ":")
    if ":" not in raw and len(raw) == 12:
        raw = ":".join(raw[i : i + 2] for i in range(0, 12, 2))
    if not _MAC_RE.fullmatch(raw):
        raise ValueError(f"{text!r} is not a Bluetooth address; write six hex bytes, e.g. A4:C1:38:0B:5E:ED")
    return raw
