"""A late RTU answer is never taken for the answer to another request (issue: register 0 answering
in 0.3 s and register 100 in 1.2 s with a 1 s timeout swapped their values, signed as good data).

A real pymodbus slave on a pty pair (socat) and on RTU over TCP answers one register late; the bus
runner polls it many times, and no value may ever land on the wrong register.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import time
from collections.abc import AsyncIterator, Callable, Iterator

import pytest

from citygw.config.modbus import ModbusBus, ModbusDevice, ModbusRtuBus, ModbusRtuOverTcpBus
from citygw.drivers.health import DeviceHealth
from citygw.drivers.modbus.bus import run_bus
from citygw.drivers.modbus.server import ModbusSimulator, Unit
from citygw.reading import Reading

from .test_modbus_rtu import ptys

__all__ = ["ptys"]

pytestmark = pytest.mark.skipif(shutil.which("socat") is None, reason="needs socat")

TIMEOUT = 0.1  # seconds; the bus's timeout
A, B = 0x1111, 0x2222  # register 0 holds A, register 100 holds B (u16), or B in 100..101 (u32)


def late_unit(b_type: str, b_delay: float) -> Unit:
    unit = Unit(holding={0: A}, delays={0: 0.01, 100: b_delay})
    if b_type == "u16":
        unit.holding[100] = B
    else:
        unit.holding.update({100: 0, 101: B})
    return unit


def meter(b_type: str) -> ModbusDevice:
    return ModbusDevice.model_validate(
        {
            "bus": "line",
            "unit": 1,
            "interval": "20ms",
            "backoff_max": "100ms",
            "registers": [
                {"name": "voltage", "channel": "a", "address": 0, "type": "u16"},
                {"name": "voltage", "channel": "b", "address": 100, "type": b_type},
            ],
        }
    )


@contextlib.asynccontextmanager
async def slave(transport: str, unit: Unit, pty_pair: tuple[str, str]) -> AsyncIterator[ModbusBus]:
    if transport == "rtu":
        async with ModbusSimulator({1: unit}, serial_port=pty_pair[0]):
            yield ModbusRtuBus.model_validate(
                {"type": "modbus-rtu", "port": pty_pair[1], "timeout": f"{TIMEOUT * 1000:g}ms"}
            )
    else:
        async with ModbusSimulator({1: unit}, framing="rtu") as server:
            yield ModbusRtuOverTcpBus.model_validate(
                {
                    "type": "modbus-rtu-over-tcp",
                    "host": "127.0.0.1",
                    "port": server.port,
                    "timeout": f"{TIMEOUT * 1000:g}ms",
                }
            )


@pytest.fixture
def pty_pair(request: pytest.FixtureRequest) -> Iterator[tuple[str, str]]:
    if request.node.callspec.params["transport"] != "rtu":
        yield ("", "")
        return
    yield request.getfixturevalue("ptys")


def polls(readings: list[Reading]) -> int:
    """How many polls read register 0."""
    return sum(r.name == "voltage:a" for r in readings)


async def poll_until(
    bus: ModbusBus, device: ModbusDevice, enough: Callable[[list[Reading], DeviceHealth], bool]
) -> tuple[list[Reading], DeviceHealth]:
    """Run the daemon's bus runner until ``enough`` (or 30 s); its readings and the device's health."""
    readings: list[Reading] = []

    async def sink(batch: list[Reading]) -> None:
        readings.extend(batch)

    health = DeviceHealth("meter")
    task = asyncio.create_task(run_bus("line", bus, {"meter": device}, sink, {"meter": health}))
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not task.done() and not enough(readings, health):
        await asyncio.sleep(0.05)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    return readings, health


def values(readings: list[Reading], name: str) -> set[float | int | bool | str]:
    return {r.value for r in readings if r.name == name}


@pytest.mark.parametrize("transport", ["rtu", "rtu-over-tcp"])
@pytest.mark.parametrize("b_type", ["u16", "u32"])
async def test_a_late_answer_is_never_taken_for_the_next_request(
    transport: str, b_type: str, pty_pair: tuple[str, str]
) -> None:
    # register 100 answers half a timeout late, just when the next poll asks for register 0
    async with slave(transport, late_unit(b_type, TIMEOUT * 1.5), pty_pair) as bus:
        readings, health = await poll_until(
            bus, meter(b_type), lambda readings, health: polls(readings) >= 12 and health.errors["late"] >= 2
        )
    assert polls(readings) >= 12, health  # many polls
    assert values(readings, "voltage:a") == {A}  # never B, never anything else
    assert values(readings, "voltage:b") <= {B}
    assert health.errors["timeout"] >= 2 and health.errors["late"] >= 1, health


@pytest.mark.parametrize("transport", ["rtu", "rtu-over-tcp"])
async def test_an_answer_of_another_length_is_refused(transport: str, pty_pair: tuple[str, str]) -> None:
    # register 100..101 answers so late (after the timeout and a whole timeout of silence) that the
    # answer crosses the next request for register 0: its byte count gives it away
    async with slave(transport, late_unit("u32", TIMEOUT * 2.5), pty_pair) as bus:
        readings, health = await poll_until(
            bus, meter("u32"), lambda readings, health: polls(readings) >= 8 and health.errors["timeout"] >= 4
        )
    assert polls(readings) >= 8, health
    assert values(readings, "voltage:a") == {A}
    assert values(readings, "voltage:b") <= {B}
    assert health.errors["mismatch"] + health.errors["late"] >= 1, health
