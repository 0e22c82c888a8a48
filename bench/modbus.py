"""Modbus benchmark: requests per poll for the SDM630 profile, and the gateway's time per transaction.

A pymodbus TCP server holding an Eastron SDM630's registers runs in its own process on loopback;
this process polls it with the driver itself (read plan, bus link, decoder) as fast as it answers.
The server's time is its process's CPU time (it is single-threaded and idle between requests;
its own count of request-decoded-to-response-sent is printed too, but misses its framing and
socket work), so

  gateway_ms_per_tx = (wall time - server CPU time) / transactions

is the gateway's share: client, decoding, the event loop, and the loopback TCP round trip.
``gateway_cpu_ms_per_tx`` is this process's own CPU time per transaction. Targets: no more
requests per poll than the minimum, and under 1 ms per transaction, so that on a 9600-baud line,
where a poll of this meter takes ``wire_ms_per_poll_9600`` on the wire, the bus runs at wire speed.
Prints one JSON line.

Usage: python bench/modbus.py [--polls N]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from citygw.config.modbus import ModbusTcpBus, ModbusTcpDevice
from citygw.config.profiles import find_profile
from citygw.drivers.modbus.bus import DevicePoller
from citygw.drivers.modbus.client import ModbusLink
from citygw.drivers.modbus.plan import ReadPlan, minimum_requests

REPO = Path(__file__).resolve().parent.parent


def wire_ms(plan: ReadPlan, baud: int = 9600, bits: int = 10) -> float:
    """Time on an RTU line for one poll: request 8 bytes, response 5 + 2N, t3.5 after each frame."""
    char = bits / baud
    return 1000 * sum((8 + 5 + 2 * r.count) * char + 2 * 3.5 * char for r in plan.requests)


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def ask(server: subprocess.Popen[str], line: str) -> dict[str, float]:
    assert server.stdin is not None and server.stdout is not None
    server.stdin.write(line + "\n")
    server.stdin.flush()
    return json.loads(server.stdout.readline())  # type: ignore[no-any-return]


async def measure(port: int, polls: int, server: subprocess.Popen[str]) -> dict[str, float]:
    bus = ModbusTcpBus.model_validate({"type": "modbus-tcp", "host": "127.0.0.1", "port": port})
    device = ModbusTcpDevice.model_validate({"bus": "plc", "unit": 1, "profile": "eastron-sdm630"})
    link = ModbusLink("plc", bus)
    poller = DevicePoller("meter-1", device, link)
    readings = 0
    for _ in range(50):  # warm up: connect, first allocations
        await poller.poll()
    before = ask(server, "stats")
    server_cpu = cpu_seconds(server.pid)
    transactions_before = link.transactions
    cpu, wall = time.process_time(), time.perf_counter()
    for _ in range(polls):
        result = await poller.poll()
        readings += len(result.readings)
        assert not result.errors, result.errors
    wall = time.perf_counter() - wall
    cpu = time.process_time() - cpu
    server_cpu = cpu_seconds(server.pid) - server_cpu
    after = ask(server, "stats")
    link.close()
    transactions = link.transactions - transactions_before
    busy = after["busy_s"] - before["busy_s"]
    assert after["transactions"] - before["transactions"] == transactions
    return {
        "transactions": transactions,
        "readings_per_poll": readings / polls,
        "wall_ms_per_tx": 1000 * wall / transactions,
        "server_ms_per_tx": 1000 * server_cpu / transactions,
        "server_busy_ms_per_tx": 1000 * busy / transactions,
        "gateway_ms_per_tx": 1000 * (wall - server_cpu) / transactions,
        "gateway_cpu_ms_per_tx": 1000 * cpu / transactions,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--polls", type=int, default=2000)
    args = parser.parse_args()
    profile = find_profile("eastron-sdm630")
    plan = ReadPlan.build(profile.fields, max_gap=profile.max_gap)
    server = subprocess.Popen(
        [sys.executable, "-m", "citygw.drivers.modbus.server", "--sdm630", "--units", "1"],
        cwd=REPO,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None
        port = int(json.loads(server.stdout.readline())["port"])
        timing = asyncio.run(measure(port, args.polls, server))
    finally:
        assert server.stdin is not None
        server.stdin.close()
        server.wait(10)
    summary = {
        "bench": "modbus",
        "profile": "eastron-sdm630",
        "fields": len(profile.fields),
        "requests_per_poll": len(plan.requests),
        "minimum_requests": minimum_requests(profile.fields),
        "one_request_per_field": len(profile.fields),
        "registers_per_poll": plan.registers,
        "transactions": int(timing["transactions"]),
        "wall_ms_per_tx": round(timing["wall_ms_per_tx"], 3),
        "server_ms_per_tx": round(timing["server_ms_per_tx"], 3),
        "server_busy_ms_per_tx": round(timing["server_busy_ms_per_tx"], 3),
        "gateway_ms_per_tx": round(timing["gateway_ms_per_tx"], 3),
        "gateway_cpu_ms_per_tx": round(timing["gateway_cpu_ms_per_tx"], 3),
        "wire_ms_per_poll_9600_8n1": round(wire_ms(plan), 1),
        "targets_met": len(plan.requests) <= minimum_requests(profile.fields)
        and timing["gateway_ms_per_tx"] < 1.0,
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
