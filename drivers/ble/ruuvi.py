"""RuuviTag data format 5, RAWv2 (docs.ruuvi.com, "Data format 5 (RAWv2)").

Manufacturer specific data of company 0x0499 (Ruuvi Innovations), as bleak hands it over: without
the company id, 24 bytes, every field big-endian. Each field has a "not available" value (the
largest unsigned, the smallest signed value; all bits set for the MAC): such a field is left out,
never reported as a number. The measurement sequence number is returned for de-duplication
(:attr:`Decoded.key`: a tag sends each measurement several times) and the MAC as
:attr:`Decoded.mac`; the tx power is not reported (a setting, not a measurement). An advert with
every field not available is refused (:attr:`Reason.EMPTY`): a tag whose sensors failed.

Units follow :mod:`citygw.vocabulary`: acceleration in m/s2 (the tag sends mG; 1 G = 9.80665 m/s2,
the standard gravity of CGPM 1901), battery voltage in V, pressure in Pa.
"""

from __future__ import annotations

import struct

from citygw.drivers.ble.common import Decoded
from citygw.errors import DecodeError, Reason
from citygw.reading import Measurement

COMPANY_ID = 0x0499
SIZE = 24
_FIELDS = struct.Struct(">BhHHhhhHBH6s")
_MS2_PER_MG = 980665  # 1e-8 m/s2 per mG: 1 G = 9.80665 m/s2 exactly
_E8 = 100_000_000
_NA_MAC = b"\xff" * 6


def decode(data: bytes) -> Decoded:
    """Decode the manufacturer data of one RuuviTag advert (without the company id)."""
    if len(data) != SIZE:
        if data and data[0] != 5:
            raise DecodeError(Reason.FORMAT, f"Ruuvi data format {data[0]}; citygw reads format 5 (RAWv2)")
        reason = Reason.SHORT if len(data) < SIZE else Reason.LENGTH
        raise DecodeError(reason, f"{len(data)} bytes; a RAWv2 advert is {SIZE}")
    fmt, temp, hum, pres, ax, ay, az, power, moves, seq, mac = _FIELDS.unpack(data)
    if fmt != 5:
        raise DecodeError(Reason.FORMAT, f"Ruuvi data format {fmt}; citygw reads format 5 (RAWv2)")
    out: list[Measurement] = []
    new, M = tuple.__new__, Measurement  # half the cost of Measurement(...): this runs per advert
    if temp != -32768:
        out.append(new(M, ("temperature", temp / 200, "Cel")))  # 0.005 Cel
    if hum != 0xFFFF:
        out.append(new(M, ("relativeHumidity", hum / 400, "%RH")))  # 0.0025 %RH
    if pres != 0xFFFF:
        out.append(new(M, ("atmosphericPressure", pres + 50_000, "Pa")))
    if ax != -32768:
        out.append(new(M, ("accelerationX", ax * _MS2_PER_MG / _E8, "m/s2")))
    if ay != -32768:
        out.append(new(M, ("accelerationY", ay * _MS2_PER_MG / _E8, "m/s2")))
    if az != -32768:
        out.append(new(M, ("accelerationZ", az * _MS2_PER_MG / _E8, "m/s2")))
    battery = power >> 5
    if battery != 0x7FF:
        out.append(new(M, ("batteryVoltage", (battery + 1600) / 1000, "V")))
    if moves != 0xFF:
        out.append(new(M, ("movementCounter", moves, "count")))
    if not out:
        raise DecodeError(Reason.EMPTY, 'every field is marked not available (RAWv2 "invalid values")')
    return Decoded(
        out,
        None if seq == 0xFFFF else seq,
        None if mac == _NA_MAC else mac,
    )
