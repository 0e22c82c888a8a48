"""Serial (UART) sensors: stream framers, pure decoders and the port transport.

- :mod:`citygw.drivers.serial.decoders`: one frame -> measurements (PMS5003/7003/A003, SDS011, MH-Z19,
  NMEA 0183), raising :class:`DecodeError`;
- :mod:`citygw.drivers.serial.lines`: the configurable line protocol (regex, CSV, JSON lines);
- :mod:`citygw.drivers.serial.framing`: byte stream -> frames, resynchronising after noise and bad frames;
- :mod:`citygw.drivers.serial.transport`: the port (pyserial-asyncio-fast), reopening with backoff, and the
  bus runner. Imported on its own, so the pure parts stay free of asyncio and pyserial.
"""

from __future__ import annotations

from citygw.drivers.serial.decoders import (
    MHZ19,
    MHZ19_READ,
    PMS5003,
    SDS011,
    Decoder,
    FixedFormat,
    NmeaFix,
    decode_mhz19,
    decode_nmea,
    decode_pms5003,
    decode_sds011,
)
from citygw.drivers.serial.framing import FixedFramer, Framer, LineFramer, NmeaFramer, Reject
from citygw.drivers.serial.lines import FieldRule, LineDecoder, LineFormat
from citygw.errors import DecodeError
from citygw.reading import Measurement

__all__ = [
    "MHZ19",
    "MHZ19_READ",
    "PMS5003",
    "SDS011",
    "DecodeError",
    "Decoder",
    "FieldRule",
    "FixedFormat",
    "FixedFramer",
    "Framer",
    "LineDecoder",
    "LineFormat",
    "LineFramer",
    "Measurement",
    "NmeaFix",
    "NmeaFramer",
    "Reject",
    "decode_mhz19",
    "decode_nmea",
    "decode_pms5003",
    "decode_sds011",
]
