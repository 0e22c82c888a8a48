"""Modbus TCP (and RTU over TCP) against a real pymodbus server on loopback: meters read whole,
byte/word orders from literal register words, errors counted per device, a dead unit backed off
while the others keep their interval (measured), and a slow bus never delaying another."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import statistics
from collections import defaultdict
from collections.abc import AsyncIterator, Mapping
from typing import Any

import pytest

from citygw.config.modbus import ModbusRtuOverTcpBus, ModbusTcpBus, ModbusTcpDevice
from citygw.config.profiles import find_profile
from citygw.drivers.health import DeviceHealth, DeviceState
from citygw.drivers.modbus.bus import DevicePoller, probe, run_bus
from citygw.drivers.modbus.client import ModbusLink
from citygw.drivers.modbus.server import ModbusSimulator, Unit
from citygw.reading import Flag, Reading

SDM630 = {  # a live three-phase feeder: values as the meter's display shows them
    "voltage:l1": 230.1,
    "voltage:l2": 229.8,
    "voltage:l3": 231.4,
    "current:l1": 12.5,
    "current:l2": 9.75,
    "current:l3": 11.0,
    "activePower:l1": 2790.5,
    "activePower:l2": 2150.0,
    "activePower:l3": 2480.25,
    "apparentPower:l1": 2876.25,
    "apparentPower:l2": 2240.5,
    "apparentPower:l3": 2545.5,
    "reactivePower:l1": 697.5,
    "reactivePower:l2": -630.0,
    "reactivePower:l3": 560.0,
    "powerFactor:l1": 0.97,
    "powerFactor:l2": 0.96,
    "powerFactor:l3": 0.974,
    "activePower": 7420.75,
    "apparentPower": 7662.25,
    "reactivePower": 627.5,
    "powerFactor": 0.968,
    "frequency": 50.02,
    "activeEnergyImport": 12_345_600.0,  # Wh: 12345.6 kWh on the meter, f32
    "activeEnergyExport": 0.0,
    "voltage:l1-l2": 398.2,
    "voltage:l2-l3": 399.1,
    "voltage:l3-l1": 400.0,
    "current:n": 1.25,
}


def tcp_bus(port: int, **extra: Any) -> ModbusTcpBus:
    return ModbusTcpBus.model_validate({"type": "modbus-tcp", "host": "127.0.0.1", "port": port, **extra})


def device(**data: Any) -> ModbusTcpDevice:
    return ModbusTcpDevice.model_validate({"bus": "b", "unit": 1, **data})


class Sink:
    def __init__(self) -> None:
        self.readings: list[Reading] = []

    async def __call__(self, readings: list[Reading]) -> None:
        self.readings.extend(readings)

    def poll_times(self) -> dict[str, list[float]]:
        times: dict[str, set[float]] = defaultdict(set)
        for reading in self.readings:
            times[reading.device].add(reading.time)
        return {name: sorted(t) for name, t in times.items()}


@contextlib.asynccontextmanager
async def running(
    bus: ModbusTcpBus, devices: Mapping[str, ModbusTcpDevice], sink: Sink, name: str = "b"
) -> AsyncIterator[dict[str, DeviceHealth]]:
    health = {device: DeviceHealth(device) for device in devices}
    task = asyncio.create_task(run_bus(name, bus, devices, sink, health))
    try:
        yield health
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        assert [
            t for t in asyncio.all_tasks() if t.get_name().startswith(f"modbus-{name}-")
        ] == []  # no orphans


async def test_sdm630_over_tcp_gives_every_value_in_two_requests() -> None:
    fields = find_profile("eastron-sdm630").fields
    async with ModbusSimulator({1: Unit().put(fields, SDM630)}) as server:
        result = await probe("b", tcp_bus(server.port), "meter-1", device(profile="eastron-sdm630"))
    assert result.answered and result.errors == []
    values = {r.name: r.value for r in result.readings}
    assert values == SDM630
    units = {r.name: r.unit for r in result.readings}
    assert (
        units["voltage:l1"],
        units["reactivePower"],
        units["powerFactor"],
        units["activeEnergyImport"],
    ) == (
        "V",
        "var",
        "/",
        "Wh",
    )
    assert server.transactions == 2  # 0x0000-0x004B and 0x00C8-0x00E1


ORDERS = [  # the literal words a device sends for 0x12345678 (u32) and 230.0 (f32)
    ("big", "big", [0x1234, 0x5678], [0x4366, 0x0000]),
    ("big", "little", [0x5678, 0x1234], [0x0000, 0x4366]),
    ("little", "big", [0x3412, 0x7856], [0x6643, 0x0000]),
    ("little", "little", [0x7856, 0x3412], [0x0000, 0x6643]),
]


@pytest.mark.parametrize(("byte_order", "word_order", "u32", "f32"), ORDERS)
async def test_byte_and_word_orders_on_the_wire(
    byte_order: str, word_order: str, u32: list[int], f32: list[int]
) -> None:
    holding = {10: u32[0], 11: u32[1], 20: f32[0], 21: f32[1], 30: 0xFF38}
    orders = {"byte_order": byte_order, "word_order": word_order}
    registers = [
        {"name": "intensity", "address": 10, "type": "u32", **orders},
        {"name": "voltage", "address": 20, "type": "f32", **orders},
        {"name": "temperature", "address": 30, "type": "i16", "scale": 0.1},
    ]
    async with ModbusSimulator({5: Unit(holding=holding)}) as server:
        result = await probe("b", tcp_bus(server.port), "plc", device(unit=5, registers=registers))
    assert {r.name: r.value for r in result.readings} == {
        "intensity": 0x12345678,
        "voltage": 230.0,
        "temperature": -20.0,
    }
    assert server.transactions == 1  # 10..30 with gaps under the default max_gap


async def test_coils_and_discrete_inputs() -> None:
    registers = [
        {"name": "parkingStatus", "channel": "a", "address": 0, "function": 1},
        {"name": "parkingStatus", "channel": "b", "address": 3, "function": 1},
        {"name": "presenceCount", "address": 2, "function": 2, "type": "bit"},
    ]
    unit = Unit(coils={0: True, 1: False, 2: False, 3: False}, discrete={2: True})
    async with ModbusSimulator({1: unit}) as server:
        result = await probe("b", tcp_bus(server.port), "io", device(registers=registers))
    assert {r.name: r.value for r in result.readings} == {
        "parkingStatus:a": True,
        "parkingStatus:b": False,
        "presenceCount": True,
    }


async def test_exception_response_is_counted_and_a_refused_gap_is_split() -> None:
    # this device maps 0, 1 and 9 only: a read spanning 2..8 draws exception 2
    unit = Unit(holding={0: 215, 1: 483, 9: 7}, fill_gaps=False)
    registers = [
        {"name": "temperature", "address": 0, "scale": 0.1},
        {"name": "relativeHumidity", "address": 1, "scale": 0.1},
        {"name": "intensity", "address": 9},
        {"name": "co2", "address": 400},  # not mapped at all
    ]
    dev = device(registers=registers)
    async with ModbusSimulator({1: unit}) as server:
        link = ModbusLink("b", tcp_bus(server.port))
        poller = DevicePoller("d", dev, link)
        health = DeviceHealth("d")
        assert len(poller.plan.requests) == 2  # 0-9 and 400
        first = await poller.poll()
        poller._account(first, health)
        assert first.answered and first.readings == []
        assert [e.reason for e in first.errors] == ["exception", "exception"]
        assert len(poller.plan.requests) == 3  # 0-1, 9, 400
        second = await poller.poll()
        poller._account(second, health)
        link.close()
    assert {r.name: r.value for r in second.readings} == {
        "temperature": 21.5,
        "relativeHumidity": 48.3,
        "intensity": 7,
    }
    assert "illegal data address" in str(second.errors[0])
    assert health.errors["exception"] == 3 and health.state is DeviceState.OK


async def test_counter_reset_is_flagged_never_negative() -> None:
    registers = [{"name": "activeEnergyImport", "address": 0, "type": "u32", "counter": True}]
    unit = Unit(holding={0: 0, 1: 50_000})
    async with ModbusSimulator({1: unit}) as server:
        link = ModbusLink("b", tcp_bus(server.port))
        poller = DevicePoller("m", device(registers=registers), link)
        first = (await poller.poll()).readings
        unit.holding.update({0: 0, 1: 10})  # the meter was replaced
        second = (await poller.poll()).readings
        unit.holding.update({0: 0, 1: 20})
        third = (await poller.poll()).readings
        link.close()
    assert [(r.value, r.flags) for r in first + second + third] == [
        (50_000, 0),
        (10, Flag.COUNTER_ROLLOVER),
        (20, 0),
    ]


async def test_dead_unit_among_five_the_others_keep_their_interval() -> None:
    interval, timeout = 0.1, 0.08
    fields = find_profile("xy-md02").fields
    units = {
        u: Unit(silent=u == 3).put(fields, {"temperature": 20.0 + u, "relativeHumidity": 50.0})
        for u in range(1, 6)
    }
    devices = {
        f"climate-{u}": device(unit=u, profile="xy-md02", interval=f"{interval}s", backoff_max="600ms")
        for u in units
    }
    sink = Sink()
    async with ModbusSimulator(units) as server:
        bus = tcp_bus(server.port, timeout=f"{timeout}s")
        async with running(bus, devices, sink) as health:
            await asyncio.sleep(2.0)
            dead = health["climate-3"]
            assert dead.state is DeviceState.FAILING
            # polled every interval it would have cost ~20 timeouts; backed off it costs a few
            assert 2 <= dead.errors["timeout"] <= 9, dead.errors
            times = sink.poll_times()
            for u in (1, 2, 4, 5):
                gaps = [b - a for a, b in zip(times[f"climate-{u}"], times[f"climate-{u}"][1:], strict=False)]
                assert statistics.mean(gaps) == pytest.approx(interval, rel=0.15), (u, gaps)
                assert max(gaps) < interval + timeout + 0.06, (u, max(gaps))
                assert health[f"climate-{u}"].state is DeviceState.OK
            # it comes back by itself
            units[3].silent = False
            for _ in range(30):
                await asyncio.sleep(0.05)
                if dead.state is DeviceState.OK:
                    break
            assert dead.state is DeviceState.OK
    assert "climate-3" in sink.poll_times()


async def test_a_slow_device_on_one_bus_never_delays_another_bus() -> None:
    fields = find_profile("xy-md02").fields
    values = {"temperature": 21.5, "relativeHumidity": 48.3}
    slow = {1: Unit(delay=0.25).put(fields, values)}
    fast = {1: Unit().put(fields, values)}
    sink_slow, sink_fast = Sink(), Sink()
    dev = {"d": device(profile="xy-md02", interval="50ms")}
    async with (
        ModbusSimulator(slow) as slow_server,
        ModbusSimulator(fast) as fast_server,
        running(tcp_bus(slow_server.port), dev, sink_slow, "slow"),
        running(tcp_bus(fast_server.port), dev, sink_fast, "fast"),
    ):
        await asyncio.sleep(1.0)
    fast_times, slow_times = sink_fast.poll_times()["d"], sink_slow.poll_times()["d"]
    gaps = [b - a for a, b in itertools.pairwise(fast_times)]
    assert statistics.mean(gaps) == pytest.approx(0.05, rel=0.2) and max(gaps) < 0.09
    assert len(slow_times) <= 5  # 250 ms per answer: its own bus is as slow as its device


async def test_rtu_over_tcp() -> None:
    fields = find_profile("xy-md02").fields
    async with ModbusSimulator(
        {2: Unit().put(fields, {"temperature": -5.5, "relativeHumidity": 91.0})}, framing="rtu"
    ) as server:
        bus = ModbusRtuOverTcpBus.model_validate(
            {"type": "modbus-rtu-over-tcp", "host": "127.0.0.1", "port": server.port}
        )
        result = await probe("b", bus, "climate", device(unit=2, profile="xy-md02"))
    assert {r.name: (r.value, r.unit) for r in result.readings} == {
        "temperature": (-5.5, "Cel"),
        "relativeHumidity": (91.0, "%RH"),
    }


async def test_lost_connection_is_counted_and_the_link_reconnects() -> None:
    fields = find_profile("xy-md02").fields
    unit = Unit().put(fields, {"temperature": 20.0, "relativeHumidity": 40.0})
    server = ModbusSimulator({1: unit})
    await server.start()
    port = server.port
    sink = Sink()
    devices = {"d": device(profile="xy-md02", interval="50ms", backoff_max="1s")}
    async with running(tcp_bus(port, timeout="100ms"), devices, sink) as health:
        await asyncio.sleep(0.3)
        await server.stop()
        await asyncio.sleep(0.5)
        assert health["d"].errors["connection"] + health["d"].errors["timeout"] >= 1
        before = len(sink.readings)
        server = ModbusSimulator({1: unit})
        server.port = port
        await server.start()
        for _ in range(100):  # the reconnect backoff (at most 1 s) plus a loaded CI box
            await asyncio.sleep(0.05)
            if len(sink.readings) > before:
                break
        await server.stop()
    assert len(sink.readings) > before


async def test_a_busy_bus_stops_at_once_when_cancelled() -> None:
    # asyncio.wait_for inside pymodbus drops a cancel that meets an answer on Python 3.11 (gh-86296);
    # the bus must stop anyway, or the daemon would hang at shutdown
    units = {u: Unit(input={a: a for a in range(10)}) for u in range(1, 21)}
    registers = [{"name": "intensity", "channel": f"r{a}", "address": a, "function": 4} for a in range(10)]
    devices = {f"u{u}": device(unit=u, interval="20ms", registers=registers) for u in units}
    async with ModbusSimulator(units, record=False) as server:
        for cycle in range(30):
            health = {name: DeviceHealth(name) for name in devices}
            task = asyncio.create_task(run_bus("b", tcp_bus(server.port), devices, Sink(), health))
            await asyncio.sleep(0.03 + 0.0037 * cycle)
            task.cancel()
            done, _ = await asyncio.wait([task], timeout=2)
            assert done, f"the bus did not stop (cycle {cycle})"
