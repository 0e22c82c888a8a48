"""The demo's simulated devices: each speaks its real protocol; the daemon reads it with its real driver.

- :class:`Sdm630`: an Eastron SDM630 three-phase meter behind a pymodbus server
  (:class:`citygw.drivers.modbus.server.ModbusSimulator`), with the register map of the shipped profile and
  values that move as a street cabinet's load does;
- :class:`Pms5003`: a Plantower PMS5003 particle sensor on a serial line, frames of the datasheet
  (appendix I: 32 bytes, ``42 4D``, checksum) once a second;
- :class:`Gps`: a GPS receiver on a bus driving a loop through Pathumwan, Bangkok: NMEA 0183 RMC,
  VTG, GGA and GSA sentences with their checksums, once a second;
- :class:`PtyPort`: the cable: a pty pair whose slave the config names through a symlink, as
  ``/dev/serial/by-id/...`` names a USB adapter on a pole.

The builders of frames and sentences are pure functions of time; :func:`emit` writes them at the
device's cadence. Nothing here is imported by the daemon.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import math
import os
import tty
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from citygw.config.profiles import find_profile
from citygw.drivers.modbus.server import ModbusSimulator, Unit
from citygw.drivers.serial.decoders import nmea_checksum

# --- the cable -----------------------------------------------------------------------------------


class PtyPort:
    """A pty pair: the device writes into the master; the gateway opens the slave through ``link``."""

    def __init__(self, link: Path) -> None:
        self.link = link
        self.master, self._slave = os.openpty()
        tty.setraw(self._slave)  # no echo, no line editing: a UART
        os.set_blocking(self.master, False)
        link.parent.mkdir(parents=True, exist_ok=True)
        link.unlink(missing_ok=True)
        link.symlink_to(os.ttyname(self._slave))
        self.written = 0  # bytes
        self.dropped = 0  # bytes nobody read in time (the line's buffer was full)

    def write(self, data: bytes) -> None:
        """Send ``data`` now; a sensor does not wait for a reader, so what does not fit is lost."""
        try:
            sent = os.write(self.master, data)
        except BlockingIOError:
            sent = 0
        self.written += sent
        self.dropped += len(data) - sent

    def close(self) -> None:
        for fd in (self.master, self._slave):
            with contextlib.suppress(OSError):
                os.close(fd)
        self.link.unlink(missing_ok=True)


async def emit(port: PtyPort, frames: Callable[[float], list[bytes]], every: float) -> None:
    """Write ``frames(now)`` into ``port`` every ``every`` seconds, until cancelled."""
    loop = asyncio.get_running_loop()
    due = loop.time()
    while True:
        for frame in frames(datetime.datetime.now(datetime.UTC).timestamp()):
            port.write(frame)
        due += every
        await asyncio.sleep(max(0.0, due - loop.time()))


def _wave(t: float, period: float, phase: float = 0.0) -> float:
    return math.sin(2 * math.pi * t / period + phase)


# --- Plantower PMS5003 ---------------------------------------------------------------------------


def pms5003_frame(words: list[int]) -> bytes:
    """A PMS5003 frame (datasheet appendix I): ``42 4D``, frame length 28, data 1 to 13 as
    big-endian 16-bit words, then the 16-bit sum of every byte before it."""
    if len(words) != 13:
        raise ValueError(f"a PMS5003 frame holds 13 data words; got {len(words)}")
    body = b"\x42\x4d\x00\x1c" + b"".join((w & 0xFFFF).to_bytes(2, "big") for w in words)
    return body + (sum(body) & 0xFFFF).to_bytes(2, "big")


@dataclass(frozen=True, slots=True)
class Pms5003:
    """Street air: PM2.5 drifting between ~8 and ~40 ug/m3 with the traffic, PM1 and PM10 with it."""

    base: float = 22.0  # ug/m3 PM2.5 around which the air moves

    def words(self, t: float) -> list[int]:
        pm25 = self.base * (1 + 0.45 * _wave(t, 180) + 0.15 * _wave(t, 23, 1.0) + 0.05 * _wave(t, 7, 2.0))
        pm1, pm10 = 0.68 * pm25, 1.42 * pm25
        atmospheric = [round(pm1), round(pm25), round(pm10)]
        # CF=1 (standard particle) values read a little higher than atmospheric ones in city air
        standard = [round(v * 1.08) for v in (pm1, pm25, pm10)]
        counts = [round(pm25 * k) for k in (118.0, 34.5, 6.1, 0.62, 0.19, 0.04)]  # per 0.1 L
        return [*standard, *atmospheric, *counts, 0x9700]  # data 13: version 0x97, no error

    def frames(self, t: float) -> list[bytes]:
        return [pms5003_frame(self.words(t))]


# --- NMEA 0183 GPS -------------------------------------------------------------------------------

# a bus loop through Pathumwan, Bangkok: Siam, Ratchadamri, Lumphini, Rama IV, Sam Yan, Phaya Thai
ROUTE: tuple[tuple[float, float], ...] = (
    (13.74575, 100.53410),  # Siam, Rama I Rd
    (13.74455, 100.54030),  # Ratchaprasong
    (13.73800, 100.54170),  # Ratchadamri Rd, Lumphini Park's north-west corner
    (13.73210, 100.54280),  # Sala Daeng, Rama IV Rd
    (13.73290, 100.52920),  # Sam Yan
    (13.74270, 100.53180),  # Chulalongkorn University, Phaya Thai Rd
)
_EARTH = 6_371_008.8  # m, mean radius
_KNOT = 1.852  # km/h


def _leg(a: tuple[float, float], b: tuple[float, float]) -> tuple[float, float]:
    """Length (m) and course (degrees true) from ``a`` to ``b``; flat earth, fine over a few km."""
    lat = math.radians((a[0] + b[0]) / 2)
    north = math.radians(b[0] - a[0]) * _EARTH
    east = math.radians(b[1] - a[1]) * _EARTH * math.cos(lat)
    return math.hypot(north, east), math.degrees(math.atan2(east, north)) % 360


@dataclass(frozen=True, slots=True)
class Fix:
    latitude: float  # degrees, WGS 84
    longitude: float
    speed: float  # km/h over ground
    course: float  # degrees true


class Route:
    """A closed loop driven at ``speed`` with a ``dwell`` at every stop, forever."""

    def __init__(
        self, points: tuple[tuple[float, float], ...] = ROUTE, *, speed: float = 28.0, dwell: float = 6.0
    ):
        self.points = points
        self.speed = speed / 3.6  # m/s
        self.dwell = dwell
        self.legs = [_leg(points[i], points[(i + 1) % len(points)]) for i in range(len(points))]
        self.period = sum(length / self.speed + dwell for length, _ in self.legs)

    def at(self, t: float) -> Fix:
        left = t % self.period
        for i, (length, course) in enumerate(self.legs):
            if left < self.dwell:  # at the stop that starts this leg
                lat, lon = self.points[i]
                return Fix(lat, lon, 0.0, course)
            left -= self.dwell
            driving = length / self.speed
            if left < driving:
                share = left / driving
                (lat0, lon0), (lat1, lon1) = self.points[i], self.points[(i + 1) % len(self.points)]
                jitter = 1.5 * _wave(t, 9.0)  # traffic
                return Fix(
                    lat0 + (lat1 - lat0) * share,
                    lon0 + (lon1 - lon0) * share,
                    self.speed * 3.6 + jitter,
                    course,
                )
            left -= driving
        lat, lon = self.points[0]
        return Fix(lat, lon, 0.0, self.legs[0][1])


def nmea(body: str) -> bytes:
    """``$body*CS`` CR LF; the checksum of NMEA 0183 §5.3: XOR of the characters between ``$`` and ``*``."""
    data = body.encode("ascii")
    return b"$" + data + f"*{nmea_checksum(data):02X}\r\n".encode("ascii")


def _angle(value: float, degree_digits: int, hemispheres: str) -> tuple[str, str]:
    magnitude = abs(value)
    degrees = int(magnitude)
    minutes = (magnitude - degrees) * 60
    return f"{degrees:0{degree_digits}d}{minutes:08.5f}", hemispheres[0] if value >= 0 else hemispheres[1]


def nmea_sentences(fix: Fix, when: datetime.datetime) -> list[bytes]:
    """What a u-blox receiver sends each second: RMC, VTG, GGA and GSA (talker GP)."""
    hms = when.strftime("%H%M%S.") + f"{when.microsecond // 10000:02d}"
    lat, ns = _angle(fix.latitude, 2, "NS")
    lon, ew = _angle(fix.longitude, 3, "EW")
    knots = f"{fix.speed / _KNOT:.3f}"
    course = f"{fix.course:.2f}" if fix.speed > 0 else ""
    return [
        nmea(f"GPRMC,{hms},A,{lat},{ns},{lon},{ew},{knots},{course},{when:%d%m%y},,,A"),
        nmea(f"GPVTG,{course},T,,M,{knots},N,{fix.speed:.3f},K,A"),
        nmea(f"GPGGA,{hms},{lat},{ns},{lon},{ew},1,09,0.92,4.2,M,-27.6,M,,"),
        nmea("GPGSA,A,3,02,05,12,13,15,18,20,25,29,,,,1.61,0.92,1.32"),
    ]


class Gps:
    """A GPS receiver on a bus driving :data:`ROUTE`."""

    def __init__(self, route: Route | None = None, *, offset: float = 8.0) -> None:
        """``offset``: seconds into the route at the first fix (past the first stop: the bus moves)."""
        self.route = route or Route()
        self.offset = offset
        self.started: float | None = None

    def frames(self, t: float) -> list[bytes]:
        if self.started is None:
            self.started = t
        when = datetime.datetime.fromtimestamp(t, datetime.UTC)
        return nmea_sentences(self.route.at(t - self.started + self.offset), when)


# --- Eastron SDM630 ------------------------------------------------------------------------------


class Sdm630:
    """An SDM630's input registers (the shipped profile's map) with a cabinet's moving load.

    Three phases around 230 V at 50 Hz, currents following a slow load cycle, power factors of
    street lighting drivers and a pump, power and apparent and reactive power consistent with
    them, and the import counter that keeps counting the energy used.
    """

    PROFILE = "eastron-sdm630"

    def __init__(self, unit_id: int = 1, *, energy_kwh: float = 18_234.5) -> None:
        self.unit_id = unit_id
        self.fields = find_profile(self.PROFILE).fields
        self.unit = Unit()
        self.energy = energy_kwh * 1000  # Wh
        self.exported = 3_120.0  # Wh (a small solar panel on the cabinet)
        self._last: float | None = None
        self.update(0.0)

    def values(self, t: float) -> dict[str, float]:
        out: dict[str, float] = {}
        p_total = s_total = q_total = 0.0
        currents = []
        for k, phase in enumerate(("l1", "l2", "l3")):
            volts = 230.0 + 2.4 * _wave(t, 75, k) + 0.4 * _wave(t, 6.3, 2 * k)
            amps = max(0.2, 14.0 + 5.5 * _wave(t, 140, 0.7 * k) + 1.2 * _wave(t, 11, k))
            pf = 0.93 + 0.03 * _wave(t, 95, k)
            apparent = volts * amps
            active = apparent * pf
            reactive = math.sqrt(max(0.0, apparent**2 - active**2))
            out |= {
                f"voltage:{phase}": volts,
                f"current:{phase}": amps,
                f"activePower:{phase}": active,
                f"apparentPower:{phase}": apparent,
                f"reactivePower:{phase}": reactive,
                f"powerFactor:{phase}": pf,
            }
            p_total, s_total, q_total = p_total + active, s_total + apparent, q_total + reactive
            currents.append(amps)
        for a, b in (("l1", "l2"), ("l2", "l3"), ("l3", "l1")):
            out[f"voltage:{a}-{b}"] = math.sqrt(3) * (out[f"voltage:{a}"] + out[f"voltage:{b}"]) / 2
        ia, ib, ic = currents  # the neutral carries the imbalance (120 degrees apart)
        out["current:n"] = math.sqrt(max(0.0, ia**2 + ib**2 + ic**2 - ia * ib - ib * ic - ic * ia))
        out |= {
            "activePower": p_total,
            "apparentPower": s_total,
            "reactivePower": q_total,
            "powerFactor": p_total / s_total,
            "frequency": 50.0 + 0.03 * _wave(t, 37) + 0.01 * _wave(t, 5.1),
        }
        if self._last is not None:
            self.energy += p_total * max(0.0, t - self._last) / 3600
        self._last = t
        out["activeEnergyImport"] = self.energy
        out["activeEnergyExport"] = self.exported
        return out

    def update(self, t: float) -> None:
        """Put the values of time ``t`` (seconds) into the registers the server answers from."""
        self.unit.put(self.fields, self.values(t))

    def server(self) -> ModbusSimulator:
        """A pymodbus server of this meter with RTU framing, on a free loopback port once started
        (as behind an RS-485-to-Ethernet converter)."""
        return ModbusSimulator({self.unit_id: self.unit}, framing="rtu", record=False)

    async def run(self, every: float = 0.5) -> None:
        """Move the values every ``every`` seconds, until cancelled."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        while True:
            await asyncio.sleep(every)
            self.update(loop.time() - started)
