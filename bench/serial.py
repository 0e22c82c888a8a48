"""Serial benchmark: frames decoded per second per protocol, the way the transport does it (no port).

A stream of distinct valid frames, with a little noise between some of them, is cut into the
1024-byte reads pyserial-asyncio-fast hands over and fed through the protocol's real stream framer
and decoder (:mod:`citygw.drivers.serial`). Prints one JSON line, per protocol:

  frames_per_s           frames framed and decoded per second (framer + decoder)
  with_readings_per_s    the same, also stamping each measurement into a Reading as the transport does

and ``target_met``: pms5003 at >= 200,000 frames/s, so one Pi core serves every UART it has (a
PMS5003 sends at most ~5 frames/s) with room to spare.

Usage: python bench/serial.py [--frames N]
"""

from __future__ import annotations

import argparse
import json
import random
import struct
import time
from collections.abc import Callable

from citygw.drivers.serial import (
    MHZ19,
    PMS5003,
    SDS011,
    Decoder,
    FieldRule,
    FixedFramer,
    Framer,
    LineDecoder,
    LineFormat,
    LineFramer,
    NmeaFramer,
    decode_mhz19,
    decode_nmea,
    decode_pms5003,
    decode_sds011,
)
from citygw.drivers.serial.decoders import nmea_checksum
from citygw.reading import Reading

READ = 1024  # bytes per read, pyserial-asyncio-fast's read size
TARGET = 200_000  # pms5003 frames per second


def pms(rng: random.Random) -> bytes:
    body = struct.pack(">2sH13H", b"BM", 28, *(rng.randrange(1000) for _ in range(13)))
    return body + struct.pack(">H", sum(body))


def sds(rng: random.Random) -> bytes:
    data = bytes(rng.randrange(256) for _ in range(6))
    return b"\xaa\xc0" + data + bytes([sum(data) & 0xFF, 0xAB])


def mhz(rng: random.Random) -> bytes:
    body = b"\x86" + bytes([rng.randrange(8), rng.randrange(256), 0x40, 0, 0, 0])
    return b"\xff" + body + bytes([-sum(body) & 0xFF])


def nmea(rng: random.Random) -> bytes:
    lat, lon = (
        f"{rng.randrange(90):02d}{rng.uniform(0, 59.99):07.4f}",
        f"{rng.randrange(180):03d}{rng.uniform(0, 59.99):07.4f}",
    )
    body = rng.choice(
        [
            f"GPRMC,123519,A,{lat},N,{lon},E,{rng.uniform(0, 60):.1f},084.4,230394,003.1,W",
            f"GPGGA,123519,{lat},N,{lon},E,1,{rng.randrange(4, 13):02d},0.9,545.4,M,46.9,M,,",
            f"GPVTG,054.7,T,034.4,M,005.5,N,{rng.uniform(0, 110):.1f},K,A",
        ]
    ).encode()
    return b"$" + body + f"*{nmea_checksum(body):02X}\r\n".encode()


def radar(rng: random.Random) -> bytes:
    return f"V={rng.uniform(0, 30):.1f} N={rng.randrange(10_000)}\r\n".encode()


def csv_line(rng: random.Random) -> bytes:
    return f"12:00:{rng.randrange(60):02d},{rng.uniform(0, 30):.1f},{rng.randrange(10_000)}\r\n".encode()


def json_line(rng: random.Random) -> bytes:
    return json.dumps({"t": round(rng.uniform(-10, 40), 1), "rh": rng.randrange(100)}).encode() + b"\n"


SPEED, COUNT = FieldRule("averageVehicleSpeed", "km/h", scale=3.6), FieldRule("intensity", "count")
PROTOCOLS: dict[str, tuple[Callable[[], Framer], Decoder, Callable[[random.Random], bytes]]] = {
    "pms5003": (lambda: FixedFramer(PMS5003), decode_pms5003, pms),
    "sds011": (lambda: FixedFramer(SDS011), decode_sds011, sds),
    "mhz19": (lambda: FixedFramer(MHZ19), decode_mhz19, mhz),
    "nmea": (NmeaFramer, decode_nmea, nmea),
    "lines-regex": (
        LineFramer,
        LineDecoder(
            LineFormat.REGEX, {"v": SPEED, "n": COUNT}, pattern=r"^V=(?P<v>[\d.]+) N=(?P<n>\d+)$"
        ).decode,
        radar,
    ),
    "lines-csv": (
        LineFramer,
        LineDecoder(LineFormat.CSV, {"v": SPEED, "n": COUNT}, columns=("time", "v", "n")).decode,
        csv_line,
    ),
    "lines-json": (
        LineFramer,
        LineDecoder(
            LineFormat.JSON,
            {"t": FieldRule("temperature", "Cel"), "rh": FieldRule("relativeHumidity", "%RH")},
        ).decode,
        json_line,
    ),
}


def stream(
    make: Callable[[random.Random], bytes], frames: int, rng: random.Random, *, noise: bool
) -> list[bytes]:
    """``frames`` frames (2,000 distinct ones, cycled), noise before one in 50, cut into reads.

    The line protocols get no noise: a noisy line is a refused line, not skipped bytes."""
    distinct = [make(rng) for _ in range(2000)]
    parts = []
    for i in range(frames):
        if noise and i % 50 == 0:
            parts.append(b"\x00\x13\x37")
        parts.append(distinct[i % len(distinct)])
    data = b"".join(parts)
    return [data[i : i + READ] for i in range(0, len(data), READ)]


def run(framer: Framer, decode: Decoder, reads: list[bytes], *, readings: bool) -> tuple[int, float]:
    frames = 0
    now = time.time()
    started = time.perf_counter()
    for chunk in reads:
        found, _ = framer.feed(chunk)
        for frame in found:
            measurements = decode(frame)
            if readings:
                [Reading("pm-1", m.name, m.value, m.unit, now) for m in measurements]
        frames += len(found)
    return frames, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--frames", type=int, default=200_000, help="frames per protocol (default 200000)")
    args = parser.parse_args()
    rng = random.Random(4)
    result: dict[str, object] = {}
    for name, (make_framer, decode, make) in PROTOCOLS.items():
        reads = stream(make, args.frames, rng, noise=not name.startswith("lines"))
        best: dict[str, float] = {}
        for key, readings in (("frames_per_s", False), ("with_readings_per_s", True)):
            rates = []
            for _ in range(3):  # the best of three: the machine's other work only slows a run down
                frames, seconds = run(make_framer(), decode, reads, readings=readings)
                assert frames == args.frames, f"{name}: {frames} of {args.frames} frames found"
                rates.append(frames / seconds)
            best[key] = round(max(rates))
        result[name] = best
    pms_rate = result["pms5003"]
    assert isinstance(pms_rate, dict)
    result["target_frames_per_s"] = TARGET
    result["target_met"] = pms_rate["frames_per_s"] >= TARGET
    print(json.dumps(result))


if __name__ == "__main__":
    main()
