"""What the BLE decoders share: the advert as the scanner hands it over, what a decoder makes of it.

An :class:`Advert` is the part of one BLE advertisement the gateway uses, in the shape bleak gives it
(service data keyed by 128-bit UUID text without the UUID in the bytes; manufacturer data keyed by
company id without the id in the bytes). Decoders take the bytes of one entry and return one
:class:`Decoded`, or raise one :class:`~citygw.errors.DecodeError` with a
:class:`~citygw.errors.Reason` (one of :data:`REASONS`).
"""

from __future__ import annotations

import re
from typing import NamedTuple

from citygw.errors import Reason
from citygw.reading import Measurement

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


REASONS = (
    Reason.SHORT,
    Reason.LENGTH,
    Reason.FORMAT,
    Reason.VALUE,
    Reason.UNKNOWN_OBJECT,
    Reason.NO_KEY,
    Reason.DECRYPT,
    Reason.PLAINTEXT,
    Reason.ENCRYPTED,
    Reason.EMPTY,
)
"""The reasons a BLE decoder refuses an advert with (the metrics start each at 0)."""


class Decoded(NamedTuple):
    """What a format decoder makes of one advert (every format returns this).

    ``key`` de-duplicates: an advert with the key of the last one is the same measurement sent
    again (BTHome packet id or encryption counter, Ruuvi measurement sequence, pvvx counter;
    ``None``: no key, every advert counts). ``mac`` is the MAC address the advert carries in its
    payload, most significant byte first (:attr:`address` spells it), ``None`` if it carries none.
    ``unknown`` is the BTHome object id that stopped decoding, if one did. A named tuple that keeps
    the MAC as bytes: thousands are made per second and few are ever spelled.
    """

    measurements: list[Measurement]
    key: int | None
    mac: bytes | None = None
    unknown: int | None = None

    @property
    def address(self) -> str | None:
        """The carried MAC as ``AA:BB:CC:DD:EE:FF``, or ``None``."""
        return format_mac(self.mac) if self.mac is not None else None


def format_mac(mac: bytes) -> str:
    """Six bytes, most significant first, as ``AA:BB:CC:DD:EE:FF``."""
    return mac.hex(":").upper()


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
