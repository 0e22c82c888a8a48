"""Xiaomi thermometers (LYWSD03MMC and kin) on the pvvx or atc1441 custom firmware: UUID 0x181A.

Two plaintext layouts share the service data of 16-bit UUID 0x181A (Environmental Sensing) and are
told apart by size (github.com/pvvx/ATC_MiThermometer, "Advertising formats"):

- pvvx "custom" format, 15 bytes, little-endian: MAC (6, least significant byte first), temperature
  (int16, 0.01 Cel), humidity (uint16, 0.01 %RH), battery (uint16, mV), battery (uint8, %),
  measurement counter (uint8), flags (uint8);
- atc1441 format, 13 bytes, big-endian: MAC (6, most significant byte first), temperature (int16,
  0.1 Cel), humidity (uint8, %RH), battery (uint8, %), battery (uint16, mV), frame counter (uint8).

The counter is returned for de-duplication (:attr:`Decoded.key`) and the MAC the thermometer
reports as :attr:`Decoded.mac`; the pvvx flags (reed switch, trigger output) are not
reported. The firmware's encrypted variants (8 and 11 bytes) are
refused with :attr:`Reason.ENCRYPTED`: use the firmware's BTHome mode with a bindkey instead.
"""

from __future__ import annotations

import struct

from citygw.drivers.ble.common import Decoded, uuid16
from citygw.errors import DecodeError, Reason
from citygw.reading import Measurement

UUID = uuid16(0x181A)
PVVX_SIZE = 15
ATC_SIZE = 13
_PVVX = struct.Struct("<6shHHBBB")
_ATC = struct.Struct(">6shBBHB")
_ENCRYPTED_SIZES = (8, 11)


def decode(data: bytes) -> Decoded:
    """Decode the service data of one 0x181A advert (without the UUID); it always carries a MAC."""
    size = len(data)
    if size == PVVX_SIZE:
        mac, temp, hum, mv, level, counter, _flags = _PVVX.unpack(data)
        mac = mac[::-1]
        temperature, humidity = temp / 100, hum / 100
    elif size == ATC_SIZE:
        mac, temp, hum, level, mv, counter = _ATC.unpack(data)
        temperature, humidity = temp / 10, hum
    elif size in _ENCRYPTED_SIZES:
        raise DecodeError(
            Reason.ENCRYPTED,
            f"{size} bytes: an encrypted pvvx advert; set the firmware to BTHome with a bindkey",
        )
    else:
        raise DecodeError(
            Reason.SHORT if size < ATC_SIZE else Reason.LENGTH,
            f"{size} bytes; the pvvx format is {PVVX_SIZE} and the atc1441 format {ATC_SIZE}",
        )
    if level > 100:
        raise DecodeError(Reason.VALUE, f"battery level {level} % is more than 100")
    return Decoded(
        [
            Measurement("temperature", temperature, "Cel"),
            Measurement("relativeHumidity", humidity, "%RH"),
            Measurement("batteryLevel", level, "%EL"),
            Measurement("batteryVoltage", mv / 1000, "V"),
        ],
        counter,
        mac,
    )
