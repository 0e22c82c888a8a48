"""Pure decoders for one frame of each serial protocol: bytes in, measurements out.

No I/O, no clock, no logging: a decoder gets one frame as the framer (:mod:`citygw.drivers.serial.framing`)
cut it, checks it completely (length, header, checksum) and returns ``(name, value, unit)``
:class:`Measurement` values, or raises one :class:`DecodeError` whose ``reason`` is a short fixed
word (a :class:`~citygw.errors.Reason`, one of :data:`REASONS`). The transport stamps device and
time to make :class:`~citygw.reading.Reading` values; ``citygw decode`` prints them.

The fixed-size binary formats are described as data (:class:`FixedFormat`: header, size, check),
shared by the decoders here and the stream framers, so both agree on what a valid frame is.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Callable
from dataclasses import dataclass

from citygw.errors import DecodeError, Reason
from citygw.reading import Measurement

REASONS = (
    Reason.SHORT,
    Reason.LONG,
    Reason.HEADER,
    Reason.LENGTH,
    Reason.CHECKSUM,
    Reason.TRAILER,
    Reason.SYNTAX,
    Reason.VALUE,
)
"""The reasons a serial decoder or framer refuses a frame with (the metrics start each at 0)."""


Decoder = Callable[[bytes], list[Measurement]]


@dataclass(frozen=True, slots=True)
class FixedFormat:
    """A binary frame of fixed size that starts with ``sync`` bytes.

    ``check`` returns ``None`` for a valid frame of ``size`` bytes starting with ``sync``, else the
    reason it is not (trailer, checksum).
    """

    name: str
    sync: bytes
    size: int
    check: Callable[[bytes], Reason | None]


def _checked(frame: bytes, fmt: FixedFormat) -> bytes:
    """``frame`` if it is one valid frame of ``fmt``; raises :class:`DecodeError` otherwise."""
    if len(frame) < fmt.size:
        raise DecodeError(Reason.SHORT, f"{len(frame)} bytes; a {fmt.name} frame is {fmt.size}")
    if len(frame) > fmt.size:
        raise DecodeError(Reason.LONG, f"{len(frame)} bytes; a {fmt.name} frame is {fmt.size}")
    if frame[:2] != fmt.sync[:2]:
        raise DecodeError(
            Reason.HEADER,
            f"starts with {frame[:2].hex(' ')}; a {fmt.name} frame starts with {fmt.sync[:2].hex(' ')}",
        )
    if not frame.startswith(fmt.sync):
        raise DecodeError(
            Reason.LENGTH,
            f"length field {frame[2 : len(fmt.sync)].hex(' ')}; "
            f"a {fmt.name} frame has {fmt.sync[2:].hex(' ')}",
        )
    reason = fmt.check(frame)
    if reason is not None:
        raise DecodeError(reason, f"{fmt.name} frame {frame.hex(' ')}")
    return frame


# --- Plantower PMS5003 / PMS7003 / PMSA003 -------------------------------------------------------
# Datasheet "PMS5003 series data manual" V2.3, appendix I (transport protocol, active mode); the
# PMS7003 and PMSA003 manuals give the same 32-byte frame: 0x42 0x4D, frame length 2x13+2 = 28,
# thirteen big-endian data words, then a 16-bit sum of every byte before it.

_PMS_WORDS = struct.Struct(">2xH13HH")


def _pms_check(frame: bytes) -> Reason | None:
    return None if sum(frame[:30]) == (frame[30] << 8 | frame[31]) else Reason.CHECKSUM


PMS5003 = FixedFormat("pms5003", b"\x42\x4d\x00\x1c", 32, _pms_check)


def decode_pms5003(frame: bytes) -> list[Measurement]:
    """PM1.0, PM2.5 and PM10 in ug/m3 from one 32-byte PMS5003/7003/A003 frame.

    The values are the datasheet's data 4 to 6, the concentrations "under atmospheric environment"
    (not data 1 to 3, the "CF=1, standard particle" values meant for factory calibration).
    """
    _checked(frame, PMS5003)
    words = _PMS_WORDS.unpack(frame)
    return [
        Measurement("pm1", words[4], "ug/m3"),
        Measurement("pm25", words[5], "ug/m3"),
        Measurement("pm10", words[6], "ug/m3"),
    ]


# --- Nova Fitness SDS011 -------------------------------------------------------------------------
# "Laser Dust Sensor Control Protocol" V1.3, data report (command 0xC0): 0xAA 0xC0, PM2.5 low,
# high, PM10 low, high, device id (2 bytes), checksum = low byte of the sum of the six data bytes,
# 0xAB. Concentrations are in tenths of ug/m3.


def _sds_check(frame: bytes) -> Reason | None:
    if frame[9] != 0xAB:
        return Reason.TRAILER
    return None if sum(frame[2:8]) & 0xFF == frame[8] else Reason.CHECKSUM


SDS011 = FixedFormat("sds011", b"\xaa\xc0", 10, _sds_check)


def decode_sds011(frame: bytes) -> list[Measurement]:
    """PM2.5 and PM10 in ug/m3 (0.1 ug/m3 resolution) from one 10-byte SDS011 data frame."""
    _checked(frame, SDS011)
    return [
        Measurement("pm25", (frame[3] << 8 | frame[2]) / 10, "ug/m3"),
        Measurement("pm10", (frame[5] << 8 | frame[4]) / 10, "ug/m3"),
    ]


# --- Winsen MH-Z19 / MH-Z19B ---------------------------------------------------------------------
# MH-Z19B user's manual V1.0, command 0x86 "read CO2 concentration": the host sends
# FF 01 86 00 00 00 00 00 79 and the sensor answers FF 86 HIGH LOW - - - - checksum, where
# checksum = 0xFF - (byte 1 + ... + byte 7) + 1 (low byte) and CO2 = HIGH * 256 + LOW ppm.

MHZ19_READ = bytes.fromhex("ff0186000000000079")
"""The read-CO2 request, written every polling interval."""


def _mhz19_check(frame: bytes) -> Reason | None:
    return None if -sum(frame[1:8]) & 0xFF == frame[8] else Reason.CHECKSUM


MHZ19 = FixedFormat("mhz19", b"\xff\x86", 9, _mhz19_check)


def decode_mhz19(frame: bytes) -> list[Measurement]:
    """CO2 in ppm from one 9-byte MH-Z19 answer to the read command (0x86)."""
    _checked(frame, MHZ19)
    return [Measurement("co2", frame[2] << 8 | frame[3], "ppm")]


# --- NMEA 0183 (GPS) -----------------------------------------------------------------------------
# NMEA 0183 v4.11 §5.3: "$" + address (talker GP/GN/GL/GA/BD... + sentence type) + ",field"... +
# "*" + two hex digits, the XOR of every character between "$" and "*". Read here: RMC (location,
# speed over ground), GGA (location, fix quality, satellites in use) and VTG (speed over ground).
# A valid sentence of another type, an RMC without a valid fix or a GGA with fix quality 0 carries
# no location: those give fewer or no measurements, not an error.

_KNOTS_TO_KMH = 1.852
_DECIMAL = re.compile(r"\d+(?:\.\d*)?")
_INTEGER = re.compile(r"\d{1,3}")
_LATITUDE = re.compile(r"(\d{2})(\d{2}(?:\.\d*)?)")
_LONGITUDE = re.compile(r"(\d{3})(\d{2}(?:\.\d*)?)")
_MAX_SENTENCE = 256  # the standard says 82 characters; proprietary sentences run longer


def nmea_checksum(body: bytes) -> int:
    """The NMEA checksum of the characters between ``$`` and ``*``."""
    value = 0
    for byte in body:
        value ^= byte
    return value


def _decimal(text: str, what: str) -> float:
    if not _DECIMAL.fullmatch(text):
        raise DecodeError(Reason.VALUE, f"{what} {text!r} is not a decimal number")
    return float(text)


def _angle(text: str, hemisphere: str, what: str) -> float:
    pattern, positive, negative, limit = (
        (_LATITUDE, "N", "S", 90) if what == "latitude" else (_LONGITUDE, "E", "W", 180)
    )
    match = pattern.fullmatch(text)
    if match is None:
        raise DecodeError(Reason.VALUE, f"{what} {text!r} is not in the form (d)ddmm.mmmm")
    degrees, minutes = int(match[1]), float(match[2])
    if minutes >= 60 or degrees + minutes / 60 > limit:
        raise DecodeError(Reason.VALUE, f"{what} {text!r} is out of range")
    if hemisphere not in (positive, negative):
        raise DecodeError(Reason.VALUE, f"{what} hemisphere {hemisphere!r} is not {positive} or {negative}")
    value = round(degrees + minutes / 60, 7)  # 1e-7 degree is about 1 cm
    return -value if hemisphere == negative else value


def _location(fields: list[str], at: int) -> list[Measurement]:
    return [
        Measurement("latitude", _angle(fields[at], fields[at + 1], "latitude"), "lat"),
        Measurement("longitude", _angle(fields[at + 2], fields[at + 3], "longitude"), "lon"),
    ]


def _fields(fields: list[str], count: int, kind: str) -> None:
    if len(fields) < count:
        raise DecodeError(
            Reason.SYNTAX, f"{kind} sentence with {len(fields) - 1} fields; it needs {count - 1}"
        )


def _rmc(fields: list[str]) -> list[Measurement]:
    # $--RMC,time,status,lat,N/S,lon,E/W,speed (knots),course,date,magvar,E/W[,mode[,nav status]]
    _fields(fields, 8, "RMC")
    if fields[2] != "A" or (len(fields) > 12 and fields[12] == "N"):
        return []  # V: no valid fix (mode N: data not valid)
    out = _location(fields, 3)
    if fields[7]:
        out.append(Measurement("speed", round(_decimal(fields[7], "speed") * _KNOTS_TO_KMH, 4), "km/h"))
    return out


def _gga(fields: list[str]) -> list[Measurement]:
    # $--GGA,time,lat,N/S,lon,E/W,quality,satellites,hdop,altitude,M,geoid separation,M,age,station
    _fields(fields, 8, "GGA")
    if not _INTEGER.fullmatch(fields[6]) or int(fields[6]) > 9:
        raise DecodeError(Reason.VALUE, f"fix quality {fields[6]!r} is not a digit")
    quality = int(fields[6])
    out = _location(fields, 2) if quality > 0 else []
    out.append(Measurement("fixQuality", quality, ""))
    if fields[7]:
        if not _INTEGER.fullmatch(fields[7]):
            raise DecodeError(Reason.VALUE, f"satellites in use {fields[7]!r} is not a count")
        out.append(Measurement("satellites", int(fields[7]), "count"))
    return out


def _vtg(fields: list[str]) -> list[Measurement]:
    # $--VTG,course,T,course,M,speed,N,speed,K[,mode]
    _fields(fields, 9, "VTG")
    if fields[8] != "K":
        raise DecodeError(Reason.SYNTAX, f"VTG speed unit {fields[8]!r}; expected K")
    if not fields[7] or (len(fields) > 9 and fields[9] == "N"):
        return []
    return [Measurement("speed", _decimal(fields[7], "speed"), "km/h")]


_SENTENCES: dict[str, Callable[[list[str]], list[Measurement]]] = {"RMC": _rmc, "GGA": _gga, "VTG": _vtg}


def split_sentence(frame: bytes) -> list[str]:
    """The fields of one checked NMEA sentence (address first); raises :class:`DecodeError`."""
    sentence = frame.rstrip(b"\r\n")
    if not sentence.startswith(b"$"):
        raise DecodeError(Reason.HEADER, "an NMEA sentence starts with '$'")
    if len(sentence) > _MAX_SENTENCE:
        raise DecodeError(Reason.LONG, f"{len(sentence)} characters; at most {_MAX_SENTENCE} are read")
    star = sentence.rfind(b"*")
    if star < 0 or len(sentence) - star != 3:
        raise DecodeError(Reason.CHECKSUM, "no checksum: the sentence must end in *hh")
    given = sentence[star + 1 :]
    try:
        text = sentence[1:star].decode("ascii")
        expected = int(given, 16)
    except ValueError:
        raise DecodeError(Reason.SYNTAX, "not ASCII text with a hexadecimal checksum") from None
    if nmea_checksum(sentence[1:star]) != expected or not given.isalnum():
        raise DecodeError(
            Reason.CHECKSUM,
            f"checksum {given.decode('ascii', 'replace')}, computed {nmea_checksum(sentence[1:star]):02X}",
        )
    if not text.isprintable():
        raise DecodeError(Reason.SYNTAX, "control characters in the sentence")
    return text.split(",")


def _read(fields: list[str]) -> list[Measurement]:
    address = fields[0]
    if len(address) != 5 or not address.isalnum():
        return []  # proprietary ($P...) or malformed address: not a sentence this decoder reads
    read = _SENTENCES.get(address[2:])
    return read(fields) if read is not None else []


def decode_nmea(frame: bytes) -> list[Measurement]:
    """Location (lat/lon, WGS 84 decimal degrees), speed (km/h), fix quality and satellites in use
    from one NMEA 0183 sentence (with or without its CR LF). Other sentence types give nothing."""
    return _read(split_sentence(frame))


class NmeaFix:
    """One report per fix from a GPS that sends several sentences per fix (RMC + GGA + VTG each
    second gave three locations, or two, and two speeds): :meth:`decode` is :func:`decode_nmea`
    keeping, of each quantity, only the first a fix gives.

    A fix is told by the UTC time RMC and GGA carry (field 1); VTG has no time and belongs to the
    fix of the sentences before it. Until a sentence with a time comes, nothing is held back (a
    GPS sending VTG alone reports every one). Pure: state in, state out, no clock."""

    def __init__(self) -> None:
        self.time: str | None = None  # the fix being reported, by its UTC time field
        self.reported: set[str] = set()  # quantities already reported for it

    def decode(self, frame: bytes) -> list[Measurement]:
        fields = split_sentence(frame)
        measurements = _read(fields)
        if fields[0][2:] in ("RMC", "GGA") and len(fields) > 1 and fields[1]:
            if fields[1] != self.time:
                self.time, self.reported = fields[1], set()
        elif self.time is None:
            return measurements
        out = [m for m in measurements if m.name not in self.reported]
        self.reported.update(m.name for m in out)
        return out
