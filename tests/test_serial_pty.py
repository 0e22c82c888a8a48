"""Serial devices end to end over real pty pairs: no mocks between the bytes and the readings.

A :class:`PtyDevice` plays the sensor: it writes datasheet frames into the master of a pty pair
whose slave the config names through a symlink (as ``/dev/serial/by-id/...`` names a USB adapter).
Unplugging closes the pair and removes the link; plugging in makes a new pair behind the same link.
The PMS5003 runs through the whole daemon (config file, :class:`Gateway`, pipeline, buffer, sealed
batches); the MH-Z19 (request/response), the GPS and the line protocol through the daemon's
serial bus runner.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import random
import sys
import time
import tty
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from citygw.buffer import Buffer
from citygw.config import load_config
from citygw.config.serial import SerialDevice
from citygw.daemon.gateway import BUS_RUNNERS, Gateway
from citygw.drivers import health as health_module
from citygw.drivers.health import DeviceHealth, DeviceState
from citygw.drivers.serial import transport
from citygw.drivers.serial.decoders import MHZ19_READ, PMS5003
from citygw.drivers.serial.transport import wire_for
from citygw.errors import ConfigError
from citygw.reading import Reading
from citygw.vocabulary import QUANTITIES
from citygw.wire.signing import Signer

from .support import payload_of
from .test_serial_decoders import GGA, MHZ, RMC, SDS, VTG, nmea

NEXT_GGA = nmea("GPGGA,123520,4807.040,N,01131.000,E,1,09,0.9,545.4,M,46.9,M,,")

REPO = Path(__file__).resolve().parent.parent


def pms_frame(*words: int) -> bytes:
    """A PMS5003 frame (datasheet appendix I) with data 1 to 13 = ``words``."""
    body = b"\x42\x4d\x00\x1c" + b"".join(w.to_bytes(2, "big") for w in words)
    return body + (sum(body) & 0xFFFF).to_bytes(2, "big")


# data 4-6 (atmospheric PM1.0, PM2.5, PM10) are what the gateway reports
F0 = pms_frame(3, 4, 4, 3, 4, 4, 600, 180, 20, 2, 0, 0, 0x9700)
F2 = pms_frame(12, 20, 25, 10, 18, 24, 2100, 640, 90, 11, 3, 1, 0x9700)
F3 = pms_frame(15, 26, 30, 13, 22, 29, 2500, 720, 110, 14, 4, 1, 0x9700)
F4 = pms_frame(35, 52, 60, 31, 48, 57, 6000, 1800, 260, 30, 9, 2, 0x9700)
F5 = pms_frame(7, 9, 10, 6, 8, 10, 1200, 350, 45, 5, 1, 0, 0x9700)
CORRUPT = F3[:13] + bytes([F3[13] ^ 0x10]) + F3[14:]  # a bit flipped on the wire (PM2.5 22 -> 6)
CADENCE = 0.2  # s: a PMS5003 in fast mode sends every 200 to 800 ms


class PtyDevice:
    """The sensor's end of the cable: a pty master; the gateway opens the slave through ``link``."""

    def __init__(self, link: Path) -> None:
        self.link = link
        self.master = self._slave = -1
        self.plug()

    def plug(self) -> None:
        self.master, self._slave = os.openpty()
        tty.setraw(self._slave)  # no echo, no line editing: a UART
        os.set_blocking(self.master, False)
        fresh = self.link.with_name(self.link.name + ".new")
        fresh.symlink_to(os.ttyname(self._slave))
        fresh.replace(self.link)

    def unplug(self) -> None:
        if self.master >= 0:
            os.close(self.master)
            os.close(self._slave)
            self.master = self._slave = -1
        self.link.unlink(missing_ok=True)

    def write(self, data: bytes) -> None:
        assert os.write(self.master, data) == len(data)


@pytest.fixture
def devices(tmp_path: Path) -> Iterator[Callable[[str], PtyDevice]]:
    made: list[PtyDevice] = []

    def make(name: str) -> PtyDevice:
        made.append(PtyDevice(tmp_path / name))
        return made[-1]

    yield make
    for device in made:
        device.unplug()


async def eventually(predicate: Callable[[], bool], what: str, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out after {timeout} s waiting for {what}"
        await asyncio.sleep(0.01)


async def send_until(device: PtyDevice, frame: bytes, done: Callable[[], bool], what: str) -> None:
    """Send ``frame`` at the sensor's cadence until ``done``: the sensor does not wait for anyone."""
    deadline = time.monotonic() + 10.0
    while not done():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        device.write(frame)
        await asyncio.sleep(CADENCE)


def config_file(tmp_path: Path, key: Path, buses: dict[str, Any], devices: dict[str, Any]) -> Path:
    path = tmp_path / "citygw.yaml"
    config = {
        "gateway": {"id": "gw-serial", "key_file": str(key)},
        "metrics": {"enabled": False},  # no fixed port taken in tests
        "buffer": {"path": str(tmp_path / "buffer.db"), "commit_interval": "100ms"},
        "buses": buses,
        "devices": devices,
    }
    path.write_text(json.dumps(config))  # JSON is YAML
    return path


def sealed_readings(path: Path, key: Path) -> list[tuple[str, str, Any, str]]:
    """(device, name, value, unit) of every reading in the batches sealed in the buffer at ``path``."""
    buffer = Buffer(path, gateway="gw-serial", signer=Signer.from_file(key), uplinks=[])
    buffer.open()
    try:
        out = []
        for batch in buffer.fetch(0, 10_000):
            device = ""
            for record in payload_of(batch.jws)["senml"]:
                device = record["bn"].split("/")[1] if "bn" in record else device
                out.append((device, record["n"], record["v"], record["u"]))
        return out
    finally:
        buffer.close()


def pm(frame: bytes) -> list[tuple[str, str, int, str]]:
    atmospheric = [int.from_bytes(frame[i : i + 2], "big") for i in (10, 12, 14)]
    return [
        ("pm", name, value, "ug/m3") for name, value in zip(("pm1", "pm25", "pm10"), atmospheric, strict=True)
    ]


async def test_pms5003_through_the_daemon_with_noise_splits_corruption_and_an_unplug(
    tmp_path: Path, key: Path, devices: Callable[[str], PtyDevice]
) -> None:
    sensor = devices("ttyPMS")
    bus = {"type": "serial", "port": str(sensor.link), "reopen_initial": "100ms", "reopen_max": "400ms"}
    path = config_file(
        tmp_path, key, {"uart0": bus}, {"pm": {"bus": "uart0", "protocol": "pms5003", "stale_after": "1s"}}
    )
    gateway = Gateway(load_config(path))
    running = asyncio.create_task(gateway.run())
    try:
        await eventually(lambda: "pm" in gateway.health, "the bus to start")
        health = gateway.health["pm"]
        # the sensor streams F0 until the gateway has the port open and reads it
        await send_until(sensor, F0, lambda: health.frames >= 1, "the first frame")
        first = health.frames
        # the tail of a frame, then F2 in three pieces: a UART hands bytes over as they come
        sensor.write(F0[20:])
        for piece in (F2[:5], F2[5:21], F2[21:]):
            sensor.write(piece)
            await asyncio.sleep(0.005)
        await asyncio.sleep(CADENCE)
        sensor.write(b"BM\x42" + CORRUPT + F3 + b"\x00\x42")  # noise, a bad frame, a good one, noise
        await asyncio.sleep(CADENCE)
        sensor.write(b"\x13" + F4)
        await eventually(lambda: health.frames == first + 3, "F2, F3 and F4")
        assert dict(health.errors) == {"checksum": 1}

        sensor.unplug()  # the cable is pulled: the device file vanishes
        await eventually(
            lambda: health.errors["port"] >= 1 and health.errors["no-port"] >= 1,
            "a failed read, then a reopen that finds no such device",
        )
        assert health.state is DeviceState.FAILING
        sensor.plug()  # plugged back in: a new tty behind the same name
        await send_until(sensor, F5, lambda: health.frames > first + 3, "readings after the replug")
        assert health.state is DeviceState.OK
        assert health.errors["checksum"] == 1  # nothing else was refused

        await eventually(lambda: health.state is DeviceState.STALE, "the silent sensor to be stale", 3.0)
    finally:
        gateway.stop()
        await asyncio.wait_for(running, 10)

    readings = sealed_readings(tmp_path / "buffer.db", key)
    frames = [readings[i : i + 3] for i in range(0, len(readings), 3)]
    assert len(readings) % 3 == 0
    f0 = frames.index(pm(F2)) if pm(F2) in frames else -1
    assert f0 >= 1 and frames[:f0] == [pm(F0)] * f0  # F0 once or more while the port opened
    assert frames[f0 : f0 + 3] == [pm(F2), pm(F3), pm(F4)]  # exactly the datasheet values, in order
    rest = frames[f0 + 3 :]
    assert rest and rest == [pm(F5)] * len(rest)  # readings resumed after the replug
    assert health.frames == len(frames)


@contextlib.asynccontextmanager
async def bus_running(
    config: Path, bus: str, readings: list[Reading]
) -> AsyncIterator[dict[str, DeviceHealth]]:
    """The daemon's runner for ``bus`` of ``config``, its readings collected into ``readings``."""
    loaded = load_config(config)
    devices = {name: d for name, d in loaded.devices.items() if d.bus == bus}
    health = {name: DeviceHealth(name) for name in devices}

    async def sink(batch: list[Reading]) -> None:
        readings.extend(batch)

    task = asyncio.create_task(BUS_RUNNERS["serial"](bus, loaded.buses[bus], devices, sink, health))
    try:
        yield health
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        left = [
            t.get_name()
            for t in asyncio.all_tasks()
            if t.get_name() in {f"serial-{d}-stale" for d in devices}
        ]
        assert task.done() and left == []  # cancelled cleanly: no task of the bus left behind


async def test_mhz19_is_asked_and_its_answers_read(
    tmp_path: Path, key: Path, devices: Callable[[str], PtyDevice]
) -> None:
    sensor = devices("ttyCO2")
    bus = {"type": "serial", "port": str(sensor.link)}
    device = {"bus": "uart1", "protocol": "mhz19", "interval": "500ms", "stale_after": "5s"}
    config = config_file(tmp_path, key, {"uart1": bus}, {"co2": device})
    answers = iter(
        [
            [MHZ],  # 544 ppm, the manual's example
            [b"\x00\x42", MHZ[:4], MHZ[4:]],  # noise first, then the answer in two pieces
            [],  # no answer: a timeout
            [MHZ[:8] + b"\x00"],  # a bad checksum
            [bytes.fromhex("FF 86 01 90 00 00 00 00 E9")],  # 400 ppm
        ]
    )
    requests: list[bytes] = []
    received = bytearray()

    def on_request() -> None:
        received.extend(os.read(sensor.master, 64))
        while len(received) >= 9:
            requests.append(bytes(received[:9]))
            del received[:9]
            for piece in next(answers, [MHZ]):
                sensor.write(piece)

    readings: list[Reading] = []
    loop = asyncio.get_running_loop()
    loop.add_reader(sensor.master, on_request)
    try:
        async with bus_running(config, "uart1", readings) as health:
            await eventually(lambda: len(requests) >= 6, "six requests", 6.0)
            await asyncio.sleep(0.1)
    finally:
        loop.remove_reader(sensor.master)
    assert set(requests) == {MHZ19_READ}
    values = [(r.device, r.name, r.value, r.unit) for r in readings]
    assert values[:3] == [("co2", "co2", 544, "ppm"), ("co2", "co2", 544, "ppm"), ("co2", "co2", 400, "ppm")]
    assert dict(health["co2"].errors) == {"timeout": 1, "checksum": 1}
    times = [r.time for r in readings]
    assert 0.4 <= times[1] - times[0] <= 1.0  # asked every 500 ms
    assert times[2] - times[1] >= 1.4  # two polls without a good answer in between


async def test_gps_and_line_protocol_devices(
    tmp_path: Path, key: Path, devices: Callable[[str], PtyDevice]
) -> None:
    gps, radar = devices("ttyGPS"), devices("ttyRadar")
    buses = {
        "gps": {"type": "serial", "port": str(gps.link), "baudrate": 38400},
        "radar": {"type": "serial", "port": str(radar.link), "baudrate": 115200},
    }
    lines = {
        "format": "regex",
        "pattern": r"^V=(?P<v>\d+(?:\.\d+)?) N=(?P<n>\d+)$",
        "fields": {"v": {"name": "averageVehicleSpeed", "scale": 3.6}, "n": {"name": "intensity"}},
    }
    config = config_file(
        tmp_path,
        key,
        buses,
        {"bus7": {"bus": "gps", "protocol": "nmea"}, "radar": {"bus": "radar", "protocol": "lines", **lines}},
    )
    standing = b"$GPVTG,,T,,M,0.0,N,0.0,K,A*23\r\n"  # stopped at a bus stop: speed 0
    gsv = b"$GPGSV,3,1,11,03,03,111,00,04,15,270,00,06,01,010,00,13,06,292,00*74"
    gps_readings: list[Reading] = []
    radar_readings: list[Reading] = []
    async with (
        bus_running(config, "gps", gps_readings) as gps_health,
        bus_running(config, "radar", radar_readings) as radar_health,
    ):
        await send_until(gps, standing, lambda: gps_health["bus7"].frames > 0, "the GPS port to open")
        await send_until(radar, b"V=0 N=0\r\n", lambda: radar_health["radar"].frames > 0, "the radar")
        gps.write(b"$GPRMC,1235\r\n" + RMC[:30])  # a sentence cut short, then one split in two
        gps.write(RMC[30:] + b"\r\n" + GGA + b"\r\n" + gsv + b"\r\n" + VTG[:-1] + b"0\r\n" + VTG + b"\r\n")
        gps.write(NEXT_GGA + b"\r\n")  # the next fix
        radar.write(b"radar v2.1 ready\r\nV=12.5 N=1\r\nV=")
        radar.write(b"8 N=2\r\n")
        await eventually(lambda: gps_readings[-1:] != [] and gps_readings[-1].value == 9, "the GPS script")
        await eventually(lambda: radar_readings[-1].value == 2, "the radar script")

    def script(readings: list[Reading], warmup: set[tuple[str, Any]]) -> list[tuple[str, str, Any, str]]:
        values = [(r.device, r.name, r.value, r.unit) for r in readings]
        while values and (values[0][1], values[0][2]) in warmup:
            del values[0]
        return values

    assert script(gps_readings, {("speed", 0.0)}) == [
        ("bus7", "latitude", 48.1173, "lat"),  # RMC
        ("bus7", "longitude", 11.5166667, "lon"),
        ("bus7", "speed", 41.4848, "km/h"),
        ("bus7", "fixQuality", 1, ""),  # GGA of the same fix: no second location
        ("bus7", "satellites", 8, "count"),
        # VTG of the same fix: no second speed; GSV carries nothing read, the first VTG was corrupt
        ("bus7", "latitude", 48.1173333, "lat"),  # GGA of the next fix
        ("bus7", "longitude", 11.5166667, "lon"),
        ("bus7", "fixQuality", 1, ""),
        ("bus7", "satellites", 9, "count"),
    ]
    assert dict(gps_health["bus7"].errors) == {"checksum": 2}
    assert script(radar_readings, {("averageVehicleSpeed", 0), ("intensity", 0)}) == [
        ("radar", "averageVehicleSpeed", 45.0, "km/h"),
        ("radar", "intensity", 1, "count"),
        ("radar", "averageVehicleSpeed", 28.8, "km/h"),
        ("radar", "intensity", 2, "count"),
    ]
    assert dict(radar_health["radar"].errors) == {"syntax": 1}  # the banner line


async def test_line_noise_is_logged_once_per_episode_and_counted(
    tmp_path: Path,
    key: Path,
    devices: Callable[[str], PtyDevice],
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Line noise full of false PMS5003 starts: thousands of refused frames, each with other bytes,
    give one warning line per episode (the issue: 269,851 lines in 30 s), and every one is counted."""
    sensor = devices("ttyNoisy")
    config = config_file(
        tmp_path,
        key,
        {"u": {"type": "serial", "port": str(sensor.link)}},
        {"pm": {"bus": "u", "protocol": "pms5003"}},
    )
    rng = random.Random(15)

    async def noise(frames: int) -> None:  # false starts with random bodies: each refused for its checksum
        data = b"".join(PMS5003.sync + rng.randbytes(28) for _ in range(frames))
        while data:  # as fast as the gateway takes it
            try:
                data = data[os.write(sensor.master, data) :]
            except BlockingIOError:
                await asyncio.sleep(0.005)

    readings: list[Reading] = []
    caplog.set_level(logging.INFO, logger="citygw.drivers.health")
    async with bus_running(config, "u", readings) as health:
        pm = health["pm"]
        await send_until(sensor, F0, lambda: pm.frames > 0, "the port to open")
        await noise(8000)
        await eventually(lambda: pm.errors["checksum"] >= 8000, "the noise to be read")
        await send_until(sensor, F2, lambda: pm.frames > 1, "a good frame amid the noise")
        await noise(100)  # the same episode: a good frame alone does not end it
        await eventually(lambda: pm.errors["checksum"] >= 8100, "more noise")
        monkeypatch.setattr(health_module, "EPISODE_QUIET", 0.0, raising=False)  # the quiet spell has passed
        await send_until(sensor, F3, lambda: pm.frames > 2, "a good frame after a quiet spell")
        await noise(100)  # a new episode: logged again
        await eventually(lambda: pm.errors["checksum"] >= 8200, "the next burst")
    warnings = [r.getMessage() for r in caplog.records if "checksum" in r.getMessage()]
    assert len(warnings) == 3, warnings  # the first episode, its count when it ended, the second
    assert warnings[0].startswith("device pm: checksum: pms5003 frame 42 4d 00 1c")
    assert (
        warnings[1]
        == f"device pm: {pm.errors['checksum'] - 100 - 1} more checksum errors after the one logged"
    )
    assert warnings[2].startswith("device pm: checksum: pms5003 frame")
    assert pm.errors["checksum"] == 8200 and pm.frames == 3


async def citygw_probe(config: Path, device: str, *args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "citygw",
        "probe",
        "-c",
        str(config),
        device,
        *args,
        cwd=REPO,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


async def feed_until_exit(
    proc: asyncio.subprocess.Process, sensor: PtyDevice, data: bytes
) -> tuple[str, str]:
    """Be the sensor, sending ``data`` at its cadence, until the probe exits; its stdout and stderr."""
    done = asyncio.create_task(proc.communicate())
    while not done.done():
        with contextlib.suppress(BlockingIOError):
            sensor.write(data)
        await asyncio.wait({done}, timeout=CADENCE)
    out, err = done.result()
    return out.decode(), err.decode()


async def test_probe_of_a_serial_device_shows_its_next_frame_decoded(
    tmp_path: Path, key: Path, devices: Callable[[str], PtyDevice]
) -> None:
    sensor = devices("ttyPMS")
    config = config_file(
        tmp_path,
        key,
        {"u": {"type": "serial", "port": str(sensor.link)}},
        {"pm": {"bus": "u", "protocol": "pms5003"}},
    )
    proc = await citygw_probe(config, "pm", "--timeout", "20")
    out, err = await feed_until_exit(proc, sensor, b"\x00\x42" + F2)  # noise and a frame, again and again
    assert proc.returncode == 0, err
    lines = [json.loads(line) for line in out.splitlines()]
    assert [(line["device"], line["name"], line["value"], line["unit"]) for line in lines] == pm(F2)
    assert f"citygw probe: listening for pm's next frame on bus u ({sensor.link}), up to 20 s" in err


async def test_probe_of_a_serial_device_that_sends_only_bad_frames_says_what_it_heard(
    tmp_path: Path, key: Path, devices: Callable[[str], PtyDevice]
) -> None:
    sensor = devices("ttyPMS")
    config = config_file(
        tmp_path,
        key,
        {"u": {"type": "serial", "port": str(sensor.link)}},
        {"pm": {"bus": "u", "protocol": "pms5003"}},
    )
    proc = await citygw_probe(config, "pm", "--timeout", "1.5")
    out, err = await feed_until_exit(proc, sensor, CORRUPT)
    assert (proc.returncode, out) == (1, "")
    assert "citygw probe: pm gave no reading within 1.5 s on bus u" in err
    assert ": 0 frame(s) without readings, checksum " in err
    assert "last refused: checksum: pms5003 frame 42 4d 00 1c" in err
    assert "check the line settings: 9600 baud, parity none, 1 stop bit(s)" in err
    assert "check the wiring: the sensor's TX to the adapter's RX" in err


async def test_probe_of_a_serial_device_whose_port_is_missing_says_so_at_once(
    tmp_path: Path, key: Path
) -> None:
    port = tmp_path / "ttyUSB-gone"
    config = config_file(
        tmp_path,
        key,
        {"u": {"type": "serial", "port": str(port)}},
        {"pm": {"bus": "u", "protocol": "pms5003"}},
    )
    started = time.monotonic()
    proc = await citygw_probe(config, "pm", "--timeout", "60")
    out, err = await proc.communicate()
    assert (proc.returncode, out) == (1, b"")
    assert time.monotonic() - started < 30  # not the whole timeout
    assert f"citygw probe: pm was not heard: cannot open {port}: no such device: {port}" in err.decode()


async def test_a_port_name_that_moves_to_another_device_is_reopened(
    tmp_path: Path, key: Path, devices: Callable[[str], PtyDevice], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A by-id name re-pointed to a new tty while the old one stays open but silent (an adapter that
    re-enumerated): after a quiet spell the port is checked, found moved, and reopened."""
    monkeypatch.setattr(transport, "PORT_CHECK", 0.3)
    old = devices("ttySDS")
    config = config_file(
        tmp_path,
        key,
        {"u": {"type": "serial", "port": str(old.link), "reopen_initial": "100ms", "reopen_max": "200ms"}},
        {"dust": {"bus": "u", "protocol": "sds011"}},
    )
    readings: list[Reading] = []
    async with bus_running(config, "u", readings) as health:
        await send_until(old, SDS, lambda: health["dust"].frames > 0, "the first SDS011 frame")
        before = health["dust"].frames
        new = devices("ttySDS")  # the same name, now a new tty; the old one stays open, silent
        await send_until(new, SDS, lambda: health["dust"].frames > before, "a frame from the new tty")
    assert {(r.name, r.value, r.unit) for r in readings} == {
        ("pm25", 123.6, "ug/m3"),
        ("pm10", 261.8, "ug/m3"),
    }
    assert health["dust"].errors["port"] == 1
    assert "now names another device" in health["dust"].last_error


# --- the config the daemon reads -----------------------------------------------------------------


def test_the_serial_example_config_loads(tmp_path: Path, key: Path) -> None:
    text = (REPO / "config" / "examples" / "serial.yaml").read_text()
    path = tmp_path / "serial.yaml"
    path.write_text(text.replace("/etc/citygw/signing.key", str(key)))
    config = load_config(path)
    assert {name: bus.type for name, bus in config.buses.items()} == {
        "uart0": "serial",
        "gps": "serial",
        "radar": "serial",
    }
    radar = config.devices["radar-1"]
    assert isinstance(radar, SerialDevice) and radar.fields is not None
    assert (radar.fields["speed"].resolved_unit, radar.fields["speed"].scale) == ("km/h", 3.6)
    assert radar.fields["count"].resolved_unit == "count"
    wire = wire_for(radar)
    assert wire.decode(b"V=11.5 N=17") == [("averageVehicleSpeed", 41.4, "km/h"), ("intensity", 17, "count")]


GATEWAY = "gateway: {id: gw-1, key_file: KEY}\n"


@pytest.mark.parametrize(
    ("yaml", "problems"),
    [
        (
            "buses:\n  u: {type: serial, port: ttyUSB0, stopbits: 3}\n",
            [
                "FILE:3: buses.u.port: 'ttyUSB0' is not a device path; write its absolute path, "
                "e.g. /dev/ttyAMA0, /dev/ttyUSB0 or /dev/serial/by-id/usb-...",
                "FILE:3: buses.u.stopbits: must be 1, 1.5 or 2; got 3",
            ],
        ),
        (
            "buses:\n  u: {type: serial, port: /dev/ttyS0}\n"
            "devices:\n  pm:\n    bus: u\n    protocol: pms5003\n    interval: 5s\n",
            [
                "FILE:8: devices.pm.interval: interval is how often a request/response sensor (mhz19) "
                "is asked; pms5003 sends by itself: remove interval"
            ],
        ),
        (
            "buses:\n  u: {type: serial, port: /dev/ttyS0}\n"
            "devices:\n  co2: {bus: u, protocol: mhz19, interval: 1m, stale_after: 30s}\n",
            [
                "FILE:5: devices.co2.stale_after: must be longer than interval (1m), or the device is "
                "stale between polls; got 30s"
            ],
        ),
        (
            "buses:\n  u: {type: serial, port: /dev/ttyS0}\n"
            "devices:\n  r:\n    bus: u\n    protocol: lines\n    format: regex\n"
            "    pattern: 'V=(?P<v>\\d+'\n    fields: {v: {name: speed}}\n",
            [
                "FILE:9: devices.r.pattern: not a valid regular expression: "
                "missing ), unterminated subpattern at position 2"
            ],
        ),
        (
            "buses:\n  u: {type: serial, port: /dev/ttyS0}\n"
            "devices:\n  r:\n    bus: u\n    protocol: lines\n    format: regex\n"
            "    pattern: 'V=(?P<v>\\d+)'\n    fields:\n      speed: {name: speed}\n",
            ["FILE:11: devices.r.fields.speed: 'speed' is not a named group of pattern; they are: v"],
        ),
        (
            "buses:\n  u: {type: serial, port: /dev/ttyS0}\n"
            "devices:\n  r:\n    bus: u\n    protocol: lines\n    format: csv\n"
            "    fields: {v: {name: speed}}\n",
            ["FILE:5: devices.r.columns: format csv needs columns"],
        ),
        (
            "buses:\n  u: {type: serial, port: /dev/ttyS0}\n"
            "devices:\n  r:\n    bus: u\n    protocol: lines\n    format: json\n"
            "    fields: {v: {name: sped, scale: .inf}}\n",
            [
                "FILE:9: devices.r.fields.v.name: unknown quantity 'sped' (did you mean 'speed'?); "
                f"the quantity names are: {', '.join(QUANTITIES)}",
                "FILE:9: devices.r.fields.v.scale: must be a finite number; got inf",
            ],
        ),
    ],
)
def test_serial_config_problems_are_located(
    tmp_path: Path, key: Path, yaml: str, problems: list[str]
) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(GATEWAY.replace("KEY", str(key)) + yaml)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert [str(p).replace(str(path), "FILE") for p in info.value.problems] == problems
