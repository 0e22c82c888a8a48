"""Modbus RTU through a pty pair (socat): the literal frames of the datasheets on the wire, a real
pymodbus RTU server on the other end, the bus lock and the inter-frame delay measured, and CRC
errors and a dead unit counted per device."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import re
import select
import shutil
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import pytest

from citygw.config.modbus import ModbusDevice, ModbusRtuBus
from citygw.config.profiles import find_profile
from citygw.drivers.health import DeviceHealth, DeviceState
from citygw.drivers.modbus.bus import probe, run_bus
from citygw.drivers.modbus.server import ModbusSimulator, Unit
from citygw.reading import Reading

pytestmark = pytest.mark.skipif(shutil.which("socat") is None, reason="needs socat")


@pytest.fixture
def ptys() -> Iterator[tuple[str, str]]:
    """Two ends of a virtual null-modem cable: (the device's end, the gateway's end)."""
    proc = subprocess.Popen(
        ["socat", "-d", "-d", "pty,raw,echo=0", "pty,raw,echo=0"], stderr=subprocess.PIPE, text=True
    )
    assert proc.stderr is not None
    found: list[str] = []
    while len(found) < 2:
        line = proc.stderr.readline()
        assert line, "socat exited"
        match = re.search(r"PTY is (\S+)", line)
        if match:
            found.append(match.group(1))
    yield found[0], found[1]
    proc.terminate()
    proc.wait(5)


def rtu_bus(port: str, **extra: Any) -> ModbusRtuBus:
    return ModbusRtuBus.model_validate({"type": "modbus-rtu", "port": port, "timeout": "300ms", **extra})


def device(**data: Any) -> ModbusDevice:
    return ModbusDevice.model_validate({"bus": "rs485", **data})


def answer_once(path: str, expected_length: int, reply: bytes) -> bytes:
    """Be the device: read one request frame from ``path``, send ``reply``; return the request."""
    fd = os.open(path, os.O_RDWR | os.O_NOCTTY)
    try:
        request = b""
        deadline = time.monotonic() + 5
        while len(request) < expected_length and time.monotonic() < deadline:
            if select.select([fd], [], [], 0.05)[0]:
                request += os.read(fd, 256)
        os.write(fd, reply)
        time.sleep(0.2)
        return request
    finally:
        os.close(fd)


async def test_senseair_s8_frames_of_its_modbus_spec(ptys: tuple[str, str]) -> None:
    # Senseair "Modbus on Senseair S8" (TDE2067), example "read CO2": request FE 04 00 03 00 01 D5 C5,
    # response FE 04 02 01 90 AC D8 = 400 ppm
    reply = bytes.fromhex("FE 04 02 01 90 AC D8")
    request, result = await asyncio.gather(
        asyncio.to_thread(answer_once, ptys[0], 8, reply),
        probe("rs485", rtu_bus(ptys[1]), "co2-1", device(unit=254, profile="senseair-s8")),
    )
    assert request == bytes.fromhex("FE 04 00 03 00 01 D5 C5")
    assert [(r.name, r.value, r.unit) for r in result.readings] == [("co2", 400, "ppm")]


async def test_xy_md02_frames_of_its_manual(ptys: tuple[str, str]) -> None:
    # XY-MD02 manual, "read temperature and humidity": 01 04 00 01 00 02 20 0B, answer
    # 01 04 04 01 31 02 22 2A CE: 0x0131 = 30.5 Cel, 0x0222 = 54.6 %RH
    reply = bytes.fromhex("01 04 04 01 31 02 22 2A CE")
    request, result = await asyncio.gather(
        asyncio.to_thread(answer_once, ptys[0], 8, reply),
        probe("rs485", rtu_bus(ptys[1]), "climate-1", device(unit=1, profile="xy-md02")),
    )
    assert request == bytes.fromhex("01 04 00 01 00 02 20 0B")
    assert [(r.name, r.value, r.unit) for r in result.readings] == [
        ("temperature", 30.5, "Cel"),
        ("relativeHumidity", 54.6, "%RH"),
    ]


async def test_one_transaction_at_a_time_with_the_inter_frame_delay(ptys: tuple[str, str]) -> None:
    delay = 0.02
    sdm630, xy, s8 = (find_profile(n).fields for n in ("eastron-sdm630", "xy-md02", "senseair-s8"))
    units = {
        1: Unit().put(sdm630, {f.name: 0.0 for f in sdm630} | {"voltage:l1": 230.0, "frequency": 50.0}),
        2: Unit().put(xy, {"temperature": 21.5, "relativeHumidity": 48.3}),
        3: Unit().put(s8, {"co2": 612}),
    }
    devices = {
        "meter": device(unit=1, profile="eastron-sdm630", interval="100ms"),
        "climate": device(unit=2, profile="xy-md02", interval="100ms"),
        "co2": device(unit=3, profile="senseair-s8", interval="100ms"),
    }
    readings: list[Reading] = []

    async def sink(batch: list[Reading]) -> None:
        readings.extend(batch)

    health = {name: DeviceHealth(name) for name in devices}
    async with ModbusSimulator(units, serial_port=ptys[0]) as server:
        task = asyncio.create_task(
            run_bus("rs485", rtu_bus(ptys[1], inter_frame_delay="20ms"), devices, sink, health)
        )
        await asyncio.sleep(1.0)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    log = sorted(server.log, key=lambda t: t.received)
    assert len(log) >= 25  # 4 transactions per 100 ms cycle (the meter needs 2)
    for before, after in itertools.pairwise(log):
        assert after.received > before.sent  # never two transactions on the line at once
        assert after.received - before.sent >= delay - 0.001  # the line stayed silent
    values = {r.name: r.value for r in readings}
    assert (values["voltage:l1"], values["frequency"], values["temperature"], values["co2"]) == (
        230.0,
        50.0,
        21.5,
        612,
    )
    assert all(h.state is DeviceState.OK and h.frames >= 7 for h in health.values()), health


async def test_crc_errors_and_a_dead_unit_are_counted_per_device(ptys: tuple[str, str]) -> None:
    xy = find_profile("xy-md02").fields
    values = {"temperature": 21.5, "relativeHumidity": 48.3}
    units = {1: Unit().put(xy, values), 2: Unit(garbled=True).put(xy, values)}  # unit 3 is not on the line
    devices = {f"climate-{u}": device(unit=u, profile="xy-md02", interval="100ms") for u in (1, 2, 3)}
    health = {name: DeviceHealth(name) for name in devices}
    readings: list[Reading] = []

    async def sink(batch: list[Reading]) -> None:
        readings.extend(batch)

    async with ModbusSimulator(units, serial_port=ptys[0]):
        bus = rtu_bus(ptys[1], timeout="100ms")
        task = asyncio.create_task(run_bus("rs485", bus, devices, sink, health))
        await asyncio.sleep(1.0)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    assert health["climate-2"].errors["crc"] >= 2 and health["climate-2"].state is DeviceState.FAILING
    assert health["climate-3"].errors["timeout"] >= 2 and health["climate-3"].state is DeviceState.FAILING
    assert health["climate-1"].state is DeviceState.OK and not health["climate-1"].errors
    assert {r.device for r in readings} == {"climate-1"} and len(readings) >= 14
