"""BTHome v2 (https://bthome.io/format/): service data on UUID 0xFCD2, one table of objects.

The service data (without its UUID, as bleak hands it over) is one device information byte
(bit 0 encryption, bit 1 the advertiser's MAC follows, bit 2 trigger based, bits 5-7 the version,
which must be 2), then with bit 1 the MAC (6 bytes, least significant first), and then objects,
each an object id and its little-endian value. :data:`OBJECTS` is the spec's object list as data:
id -> quantity name, SenML unit, size, signedness and scale. Values are converted to the canonical
unit of the quantity in :mod:`citygw.vocabulary` (hPa -> Pa, kWh -> Wh, mm -> m, lb -> kg, l -> m3,
deg -> rad, m/s -> km/h for ``speed``), so a reading means the same whatever object id carried it.

Objects with no quantity (packet id, timestamp, device information) are read for their length and
not reported; the packet id is returned for de-duplication (:attr:`Decoded.key`). An object id not
in the table stops decoding: the spec sends objects in ascending id order, so what came before is
kept and :attr:`Decoded.unknown` says which id stopped it.

Encrypted adverts (https://bthome.io/encryption/) are AES-CCM with a 4-byte MIC: the payload is
ciphertext, a 4-byte counter and the MIC; the nonce is the advertiser's MAC (6 bytes), the UUID
as sent (``D2 FC``), the device information byte and the counter (:func:`nonce`).

Device information bit 1 is for firmware that cannot rely on the advertised address (a random or
changing one, or a relay): the MAC it carries (:attr:`Decoded.mac`) is the device's identity and,
in an encrypted advert, the MAC of the nonce in place of the advertised one, as the reference
decoder bthome-ble reads it (``BTHomeData.get_mac_readable``, ``get_nonce``). The MAC sits before
the ciphertext, in the clear, and is authenticated through the nonce: a changed MAC fails the MIC.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESCCM

from citygw.drivers.ble.common import Decoded, format_mac, uuid16
from citygw.errors import DecodeError, Reason
from citygw.reading import Measurement

UUID = uuid16(0xFCD2)
_UUID_BYTES = b"\xd2\xfc"  # 0xFCD2 as it is sent, little endian
_ENCRYPTED = 0x01
_MAC_INCLUDED = 0x02
_MAC = 6
_VERSION_SHIFT = 5
_MIC = 4
_COUNTER = 4
_LB = 45359237  # 1e-8 kg per pound (the international avoirdupois pound is exactly 0.45359237 kg)


class Kind(enum.Enum):
    NUMBER = "number"  # an integer scaled to the quantity's unit
    BINARY = "binary"  # 0 = off, 1 = on: reported as a boolean
    BUTTON = "button"  # a button event: reported as its name, "none" not at all
    DIMMER = "dimmer"  # a dimmer event: reported as signed steps (left negative)
    TEXT = "text"  # length-prefixed UTF-8
    RAW = "raw"  # length-prefixed bytes, reported as hex
    PACKET_ID = "packet-id"  # de-duplication only
    SKIP = "skip"  # read for its length, not reported (timestamp, device information)


@dataclass(frozen=True, slots=True)
class BTHomeObject:
    """One object of the spec: ``value = raw * mul / div`` in the quantity's unit.

    ``mul`` and ``div`` are integers, so the value is one correctly rounded division: the float
    nearest the exact decimal (``2506 / 100`` is 25.06, where ``2506 * 0.01`` is 25.060000000000002).
    Integers stay integers when both are 1. Angles are the exception: degrees become radians
    (SenML's ``deg`` is NOT RECOMMENDED, RFC 8798 §2), ``mul`` = pi.
    """

    name: str
    unit: str
    size: int  # bytes of the value; 0 for length-prefixed (text, raw)
    signed: bool = False
    div: int = 1
    mul: float = 1
    kind: Kind = Kind.NUMBER


def _n(
    name: str, unit: str, size: int, div: int = 1, *, signed: bool = False, mul: float = 1
) -> BTHomeObject:
    return BTHomeObject(name, unit, size, signed, div, mul)


def _b(name: str) -> BTHomeObject:
    return BTHomeObject(name, "", 1, kind=Kind.BINARY)


# bthome.io/format, "Sensor data", "Binary sensor data", "Events" and "Device information".
OBJECTS: dict[int, BTHomeObject] = {
    0x00: BTHomeObject("", "", 1, kind=Kind.PACKET_ID),
    0x01: _n("batteryLevel", "%EL", 1),
    0x02: _n("temperature", "Cel", 2, 100, signed=True),
    0x03: _n("relativeHumidity", "%RH", 2, 100),
    0x04: _n("atmosphericPressure", "Pa", 3),  # 0.01 hPa = 1 Pa
    0x05: _n("illuminance", "lx", 3, 100),
    0x06: _n("mass", "kg", 2, 100),
    0x07: _n("mass", "kg", 2, 100 * 10**8, mul=_LB),  # sent in lb
    0x08: _n("dewPoint", "Cel", 2, 100, signed=True),
    0x09: _n("count", "count", 1),
    0x0A: _n("activeEnergyImport", "Wh", 3),  # 0.001 kWh = 1 Wh
    0x0B: _n("activePower", "W", 3, 100),
    0x0C: _n("voltage", "V", 2, 1000),
    0x0D: _n("pm25", "ug/m3", 2),
    0x0E: _n("pm10", "ug/m3", 2),
    0x0F: _b("genericBoolean"),
    0x10: _b("powerState"),
    0x11: _b("opening"),
    0x12: _n("co2", "ppm", 2),
    0x13: _n("volatileOrganicCompoundsTotal", "ug/m3", 2),
    0x14: _n("soilMoisture", "/", 2, 10_000),  # sent in 0.01 %: a fraction
    0x15: _b("batteryLow"),
    0x16: _b("batteryCharging"),
    0x17: _b("carbonMonoxide"),
    0x18: _b("cold"),
    0x19: _b("connectivity"),
    0x1A: _b("door"),
    0x1B: _b("garageDoor"),
    0x1C: _b("gasDetected"),
    0x1D: _b("heat"),
    0x1E: _b("light"),
    0x1F: _b("lock"),
    0x20: _b("moistureDetected"),
    0x21: _b("motion"),
    0x22: _b("moving"),
    0x23: _b("occupied"),
    0x24: _b("plug"),
    0x25: _b("presence"),
    0x26: _b("problem"),
    0x27: _b("running"),
    0x28: _b("safety"),
    0x29: _b("smoke"),
    0x2A: _b("sound"),
    0x2B: _b("tamper"),
    0x2C: _b("vibration"),
    0x2D: _b("window"),
    0x2E: _n("relativeHumidity", "%RH", 1),
    0x2F: _n("soilMoisture", "/", 1, 100),  # sent in %: a fraction
    0x3A: BTHomeObject("buttonEvent", "", 1, kind=Kind.BUTTON),
    0x3C: BTHomeObject("dimmerSteps", "count", 2, kind=Kind.DIMMER),
    0x3D: _n("count", "count", 2),
    0x3E: _n("count", "count", 4),
    0x3F: _n("rotation", "rad", 2, 1800, signed=True, mul=math.pi),  # sent in 0.1 deg
    0x40: _n("distance", "m", 2, 1000),  # sent in mm
    0x41: _n("distance", "m", 2, 10),
    0x42: _n("duration", "s", 3, 1000),
    0x43: _n("current", "A", 2, 1000),
    0x44: _n("speed", "km/h", 2, 1000, mul=36),  # sent in 0.01 m/s; 1 m/s = 3.6 km/h
    0x45: _n("temperature", "Cel", 2, 10, signed=True),
    0x46: _n("uvIndex", "", 1, 10),
    0x47: _n("volume", "m3", 2, 10_000),  # sent in 0.1 l
    0x48: _n("volume", "m3", 2, 10**6),  # sent in mL
    0x49: _n("flowRate", "m3/s", 2, 3_600_000),  # sent in 0.001 m3/h
    0x4A: _n("voltage", "V", 2, 10),
    0x4B: _n("gasVolume", "m3", 3, 1000),
    0x4C: _n("gasVolume", "m3", 4, 1000),
    0x4D: _n("activeEnergyImport", "Wh", 4),  # 0.001 kWh = 1 Wh
    0x4E: _n("volume", "m3", 4, 10**6),  # sent in mL
    0x4F: _n("waterVolume", "m3", 4, 10**6),  # sent in mL
    0x50: BTHomeObject("", "", 4, kind=Kind.SKIP),  # timestamp: the device's clock, not a measurement
    0x51: _n("acceleration", "m/s2", 2, 1000),
    0x52: _n("angularVelocity", "1/s", 2, 180_000, mul=math.pi),  # 0.001 deg/s; rad/s
    0x53: BTHomeObject("text", "", 0, kind=Kind.TEXT),
    0x54: BTHomeObject("rawData", "", 0, kind=Kind.RAW),
    0x55: _n("volumeStorage", "m3", 4, 10**6),  # sent in mL
    0x56: _n("conductivity", "S/m", 2, 10000),  # sent in uS/cm
    0x57: _n("temperature", "Cel", 1, signed=True),
    0x58: _n("temperature", "Cel", 1, 100, signed=True, mul=35),  # factor 0.35
    0x59: _n("count", "count", 1, signed=True),
    0x5A: _n("count", "count", 2, signed=True),
    0x5B: _n("count", "count", 4, signed=True),
    0x5C: _n("activePower", "W", 4, 100, signed=True),
    0x5D: _n("current", "A", 2, 1000, signed=True),
    0x5E: _n("direction", "rad", 2, 18_000, mul=math.pi),  # sent in 0.01 deg
    0x5F: _n("precipitation", "mm", 2, 10),
    0x60: _n("channel", "", 1),
    0x61: _n("rotationalSpeed", "1/s", 2, 60),  # sent in rpm
    0x62: _n("speed", "km/h", 4, 10**7, signed=True, mul=36),  # sent in 0.000001 m/s
    0x63: _n("acceleration", "m/s2", 4, 1_000_000, signed=True),
    0x64: _n("lightLevel", "", 1),
    0xF0: BTHomeObject("", "", 2, kind=Kind.SKIP),  # device type id
    0xF1: BTHomeObject("", "", 4, kind=Kind.SKIP),  # firmware version, 4 bytes
    0xF2: BTHomeObject("", "", 3, kind=Kind.SKIP),  # firmware version, 3 bytes
}

BUTTON_EVENTS: dict[int, str] = {
    0x01: "press",
    0x02: "double_press",
    0x03: "triple_press",
    0x04: "long_press",
    0x05: "long_double_press",
    0x06: "long_triple_press",
    0x80: "hold_press",
}

# the table as tuples, in the order the hot loop reads them
_FAST: dict[int, tuple[str, str, int, bool, int, float, Kind]] = {
    oid: (o.name, o.unit, o.size, o.signed, o.div, o.mul, o.kind) for oid, o in OBJECTS.items()
}


class Key:
    """A device's bindkey and address, ready to decrypt its adverts (the cipher is built once)."""

    __slots__ = ("_aesccm", "mac")

    def __init__(self, bindkey: bytes, address: str) -> None:
        if len(bindkey) != 16:
            raise ValueError(f"a BTHome bindkey is 16 bytes (32 hex digits); got {len(bindkey)} bytes")
        self._aesccm = AESCCM(bindkey, tag_length=_MIC)
        self.mac = bytes.fromhex(address.replace(":", ""))
        if len(self.mac) != 6:
            raise ValueError(f"{address!r} is not a 6-byte Bluetooth address")

    def decrypt(self, info: int, sealed: bytes, mac: bytes | None = None) -> tuple[bytes, int]:
        """The plaintext objects of ``sealed`` (ciphertext + counter + MIC) and the counter; ``mac``
        (most significant byte first) is the MAC the advert carries, used in the nonce in place of
        the configured address."""
        if len(sealed) < _COUNTER + _MIC:
            raise DecodeError(
                Reason.SHORT, f"an encrypted advert holds at least counter and MIC; got {len(sealed)}"
            )
        ciphertext = sealed[: -_COUNTER - _MIC]
        counter = sealed[-_COUNTER - _MIC : -_MIC]
        try:
            plain = self._aesccm.decrypt(
                nonce(mac or self.mac, info, counter), ciphertext + sealed[-_MIC:], None
            )
        except InvalidTag:
            raise DecodeError(
                Reason.DECRYPT, "the MIC does not match: wrong bindkey or address, or a forged advert"
            ) from None
        return plain, int.from_bytes(counter, "little")


def nonce(mac: bytes, info: int, counter: bytes) -> bytes:
    """The AES-CCM nonce of bthome.io/encryption: MAC (6), UUID as sent (2), device info (1), counter (4)."""
    return mac + _UUID_BYTES + bytes((info,)) + counter


def included_address(data: bytes) -> str | None:
    """The advertiser's MAC an advert's service data carries (device information bit 1), if any."""
    if len(data) <= _MAC or not data[0] & _MAC_INCLUDED:
        return None
    return format_mac(data[_MAC:0:-1])


def decode(data: bytes, key: Key | None = None) -> Decoded:
    """Decode the service data of one BTHome v2 advert (without the UUID).

    ``key`` decrypts encrypted adverts; with a key, a plaintext advert is refused
    (:attr:`Reason.PLAINTEXT`), so nobody can feed the gateway unauthenticated values in a device's name.
    """
    if not data:
        raise DecodeError(
            Reason.SHORT, "empty service data; a BTHome advert starts with its device info byte"
        )
    info = data[0]
    version = info >> _VERSION_SHIFT
    if version != 2:
        raise DecodeError(
            Reason.FORMAT, f"BTHome version {version} in device info byte 0x{info:02x}; citygw reads v2"
        )
    body = data[1:]
    mac: bytes | None = None
    if info & _MAC_INCLUDED:
        if len(body) < _MAC:
            raise DecodeError(
                Reason.SHORT,
                f"device info 0x{info:02x} says the advertiser's MAC follows (6 bytes); got {len(body)}",
            )
        mac, body = body[_MAC - 1 :: -1], body[_MAC:]
    counter: int | None = None
    if info & _ENCRYPTED:
        if key is None:
            raise DecodeError(Reason.NO_KEY, "an encrypted advert; configure the device's bindkey to read it")
        payload, counter = key.decrypt(info, body, mac)
    elif key is not None:
        raise DecodeError(Reason.PLAINTEXT, "a plaintext advert from a device with a bindkey; refused")
    else:
        payload = body
    measurements, packet_id, unknown = _objects(payload)
    return Decoded(measurements, packet_id if packet_id is not None else counter, mac, unknown)


def _objects(payload: bytes) -> tuple[list[Measurement], int | None, int | None]:
    out: list[Measurement] = []
    packet_id: int | None = None
    pos, end = 0, len(payload)
    fast = _FAST
    new = tuple.__new__
    while pos < end:
        oid = payload[pos]
        entry = fast.get(oid)
        if entry is None:
            return out, packet_id, oid
        name, unit, size, signed, div, mul, kind = entry
        pos += 1
        if size == 0:  # length-prefixed
            if pos >= end:
                raise DecodeError(Reason.SHORT, f"object 0x{oid:02x} at byte {pos} has no length byte")
            size = payload[pos]
            pos += 1
        stop = pos + size
        if stop > end:
            raise DecodeError(
                Reason.SHORT, f"object 0x{oid:02x} needs {size} bytes at byte {pos}; the advert ends at {end}"
            )
        chunk = payload[pos:stop]
        pos = stop
        if kind is Kind.NUMBER:
            raw = int.from_bytes(chunk, "little", signed=signed)
            out.append(new(Measurement, (name, raw * mul / div if div != 1 else raw, unit)))
        elif kind is Kind.BINARY:
            out.append(Measurement(name, chunk[0] != 0, unit))
        elif kind is Kind.PACKET_ID:
            packet_id = chunk[0]
        elif kind is Kind.BUTTON:
            if chunk[0]:
                event = BUTTON_EVENTS.get(chunk[0])
                if event is None:
                    raise DecodeError(Reason.VALUE, f"button event 0x{chunk[0]:02x} is not in the spec")
                out.append(Measurement(name, event, unit))
        elif kind is Kind.DIMMER:
            if chunk[0] == 1:
                out.append(Measurement(name, -chunk[1], unit))
            elif chunk[0] == 2:
                out.append(Measurement(name, chunk[1], unit))
            elif chunk[0]:
                raise DecodeError(Reason.VALUE, f"dimmer event 0x{chunk[0]:02x} is not in the spec")
        elif kind is Kind.TEXT:
            try:
                out.append(Measurement(name, chunk.decode("utf-8"), unit))
            except UnicodeDecodeError:
                raise DecodeError(Reason.VALUE, f"text object at byte {pos - size} is not UTF-8") from None
        elif kind is Kind.RAW:
            out.append(Measurement(name, chunk.hex(), unit))
    return out, packet_id, None
