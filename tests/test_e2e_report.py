"""Edge processing end to end: a Modbus meter (a real pymodbus server) polled every second, its
voltage reported as window means and its energy counter as window increments, through the daemon's
buffer and signer to a real mosquitto, verified with jwcrypto and stored by the reference receiver.

The meter's values are functions of the window: the voltage is constant within a window, and the
counter rises by a window-dependent step every second, on the second. Polls happen half a second
off the second (the gateway starts at .5 and polls on a fixed-rate schedule), so every sample of
a window reads that window's values and the expected records are exact. CI runs 3-second windows;
the long form runs the 1-minute windows of the issue.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest

from citygw.config import load_config
from citygw.config.modbus import ModbusTcpDevice
from citygw.daemon.gateway import Gateway
from citygw.demo.broker import LocalBroker
from citygw.drivers.modbus.server import ModbusSimulator, Unit
from citygw.receiver.endpoint import Receiver

from .support import Collector, payload_of, verify_all, write_config

REGISTERS = [
    {"name": "voltage", "address": 0, "scale": 0.1},
    {"name": "activeEnergyImport", "address": 2, "type": "u32", "counter": True},
]


def voltage(window: int) -> float:
    return round(229.0 + (window % 7) * 0.3, 1)


def step(window: int) -> int:
    return 10 + window % 5  # Wh per second


async def drive(unit: Unit, fields: Any, length: int, stop: asyncio.Event) -> None:
    """On every second: the voltage of the window it is in, and the counter up by its step."""
    energy = 1_000_000
    while not stop.is_set():
        now = time.time()
        window = math.floor(now / length)
        energy += step(window)
        unit.put(fields, {"voltage": voltage(window), "activeEnergyImport": energy})
        await asyncio.sleep(math.floor(now) + 1 - time.time())


@pytest.mark.parametrize(
    "window",
    [3, pytest.param(60, marks=pytest.mark.long)],
    ids=["3s-windows", "1m-windows"],
)
async def test_window_means_and_increments_arrive_one_record_per_window_per_reading(
    tmp_path: Path, key: Path, broker: LocalBroker, collector: Collector, window: int
) -> None:
    device = {
        "bus": "plc",
        "unit": 1,
        "interval": "1s",
        "registers": REGISTERS,
        "report": {
            "aggregate": {"window": f"{window}s", "statistics": ["mean"]},
            "readings": {
                "activeEnergyImport": {"aggregate": {"window": f"{window}s", "statistics": ["sum"]}}
            },
        },
    }
    fields = ModbusTcpDevice.model_validate(device).fields
    unit = Unit()
    unit.put(fields, {"voltage": 230.0, "activeEnergyImport": 0})
    stop = asyncio.Event()
    async with ModbusSimulator({1: unit}) as server:
        driver = asyncio.create_task(drive(unit, fields, window, stop))
        path = write_config(
            tmp_path / "config.yaml",
            key=key,
            port=broker.port,
            devices={"meter-1": device},
            buses={"plc": {"type": "modbus-tcp", "host": "127.0.0.1", "port": server.port}},
            buffer={"batch": {"max_age": "200ms"}, "commit_interval": "100ms"},
        )
        # start at .5 past a second so that the polls (fixed rate, 1 s) stay clear of the updates
        await asyncio.sleep((0.5 - time.time() % 1.0) % 1.0)
        gateway = Gateway(load_config(path))
        started = time.time()
        task = asyncio.create_task(gateway.run())
        first_full = (math.floor(started / window) + 1) * window
        complete = 3 if window < 60 else 2  # whole windows to see after the first (partial) one
        end = first_full + complete * window
        await asyncio.sleep(end + 2.0 - time.time())  # the last window closes with the next sample
        gateway.stop()
        await task
        stop.set()
        with contextlib.suppress(asyncio.CancelledError):
            await driver
    last_seq = gateway.buffer.last_seq
    collector.wait(lambda c: max(payload_of(t)["seq"] for t in c.snapshot()) >= last_seq, 10, "every batch")
    tokens = collector.snapshot()
    verify_all(tokens, key.with_name(key.name + ".pub"))  # jwcrypto: signatures and chain

    records: list[dict[str, Any]] = []
    for token in tokens:
        base_time = 0.0
        for record in payload_of(token)["senml"]:
            base_time = record.get("bt", base_time)
            records.append({**record, "time": base_time + record.get("t", 0)})
    assert {r["n"] for r in records} == {"voltage/mean", "activeEnergyImport/sum"}
    assert all(r["window"] == window for r in records)
    # whole windows: exactly one record per window per reading, with that window's values
    full = [r for r in records if "partial" not in r.get("flags", [])]
    expected_starts = [first_full + i * window for i in range(complete)]
    for name in ("voltage/mean", "activeEnergyImport/sum"):
        assert sorted(r["time"] for r in full if r["n"] == name) == expected_starts, name
    for record in full:
        index = round(record["time"] / window)
        if record["n"] == "voltage/mean":
            assert record["v"] == pytest.approx(voltage(index)) and record["u"] == "V"
        else:
            assert record["v"] == window * step(index) and record["u"] == "Wh"
    # the first window began before the gateway did; the last was cut short at shutdown
    partial = sorted((r["time"], r["n"]) for r in records if "partial" in r.get("flags", []))
    first_start = math.floor(started / window) * window
    assert ("voltage/mean" in {n for t, n in partial if t == first_start}) and {t for t, _ in partial} == {
        first_start,
        end,
    }
    assert len(partial) == len(set(partial))

    receiver = Receiver(tmp_path / "received.db", [key.with_name(key.name + ".pub")])
    try:
        assert all(receiver.accept(token).status == 200 for token in tokens)
        with sqlite3.connect(tmp_path / "received.db") as db:
            stored = db.execute("SELECT DISTINCT name FROM readings ORDER BY name").fetchall()
    finally:
        receiver.close()
    assert stored == [("activeEnergyImport/sum",), ("voltage/mean",)]
