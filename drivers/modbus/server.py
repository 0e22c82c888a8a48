"""A simulated Modbus line: a real pymodbus server with scriptable units, for tests, benches and demos.

Not used by the daemon. Each :class:`Unit` holds register images per table, may answer late
(``delay``, or ``delays`` per start address), never (``silent``: a dead unit) or with a corrupted
CRC (``garbled``). Unit ids the server does not hold do not answer, as on an RS-485 line. The
server counts transactions and the time it spent on them (request decoded to response sent), so
a benchmark can subtract the server's share from the wall time it measures.

Run as ``python -m citygw.drivers.modbus.server --units 1-50 --registers 10`` it serves on a loopback
TCP port (printed as JSON on stdout) until stdin closes; a line ``stats`` on stdin prints the
counters.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import math
import sys
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Literal

from pymodbus.framer import FramerType
from pymodbus.pdu import ModbusPDU
from pymodbus.server import ModbusSerialServer, ModbusTcpServer
from pymodbus.simulator import DataType as SimType
from pymodbus.simulator import SimData, SimDevice

from citygw.drivers.modbus.registers import DataType, Field, to_registers

logging.getLogger("pymodbus").setLevel(logging.CRITICAL)

_PLACEHOLDER = 60000  # pymodbus wants every table non-empty: an out-of-the-way address


@dataclass
class Unit:
    """One simulated device. Register tables map address -> value and may be changed while serving."""

    input: dict[int, int] = field(default_factory=dict)
    holding: dict[int, int] = field(default_factory=dict)
    coils: dict[int, bool] = field(default_factory=dict)
    discrete: dict[int, bool] = field(default_factory=dict)
    delay: float = 0.0  # seconds before answering
    delays: dict[int, float] = field(default_factory=dict)  # start address -> seconds before answering it
    silent: bool = False  # never answers
    garbled: bool = False  # answers with a corrupted CRC (RTU framing)
    fill_gaps: bool = True  # unused addresses between registers read as 0 (else exception 2)

    def put(self, fields: Iterable[Field], values: Mapping[str, float | int | str | bool]) -> Unit:
        """Store ``values`` (by reading name, after scaling) where ``fields`` say a device holds them."""
        for spec in fields:
            if spec.name not in values:
                continue
            value = values[spec.name]
            if spec.bits:
                (self.coils if spec.function == 1 else self.discrete)[spec.address] = bool(value)
                continue
            raw: float | int | str | bool = value
            if isinstance(value, int | float) and not isinstance(value, bool):
                raw = (value - spec.offset) / spec.scale
                if spec.type not in (DataType.F32, DataType.F64):
                    raw = round(raw)
            words = to_registers(
                spec.type,
                raw,
                byte_order=spec.byte_order,
                word_order=spec.word_order,
                length=spec.length,
                bit=spec.bit,
            )
            table = self.input if spec.function == 4 else self.holding
            for offset, word in enumerate(words):
                old = table.get(spec.address + offset, 0)
                table[spec.address + offset] = word | old if spec.bit is not None else word
        return self


def _register_blocks(table: Mapping[int, int], fill_gaps: bool) -> list[SimData]:
    if not table:
        return [SimData(_PLACEHOLDER, values=[0], datatype=SimType.REGISTERS)]
    addresses = sorted(table)
    if fill_gaps:
        first = addresses[0]
        values = [table.get(a, 0) for a in range(first, addresses[-1] + 1)]
        return [SimData(first, values=values, datatype=SimType.REGISTERS)]
    blocks: list[SimData] = []
    run = [addresses[0]]
    for address in addresses[1:]:
        if address != run[-1] + 1:
            blocks.append(SimData(run[0], values=[table[a] for a in run], datatype=SimType.REGISTERS))
            run = []
        run.append(address)
    blocks.append(SimData(run[0], values=[table[a] for a in run], datatype=SimType.REGISTERS))
    return blocks


def _bit_blocks(table: Mapping[int, bool]) -> list[SimData]:
    if not table:
        return [SimData(_PLACEHOLDER, values=[False], datatype=SimType.BITS)]
    first, last = min(table), max(table)
    return [
        SimData(first, values=[table.get(a, False) for a in range(first, last + 1)], datatype=SimType.BITS)
    ]


@dataclass(frozen=True, slots=True)
class Transaction:
    unit: int
    function: int
    received: float  # monotonic time the request was decoded
    sent: float  # monotonic time the response was handed to the transport


class ModbusSimulator:
    """A pymodbus server for ``units``: on loopback TCP (``framing`` tcp, or rtu for RTU over TCP)
    or on ``serial_port`` (one end of a pty pair) with RTU framing."""

    def __init__(
        self,
        units: Mapping[int, Unit],
        *,
        framing: Literal["tcp", "rtu"] = "tcp",
        serial_port: str | None = None,
        baudrate: int = 9600,
        record: bool = True,
    ) -> None:
        self.units = dict(units)
        self.framing = framing
        self.serial_port = serial_port
        self.baudrate = baudrate
        self.record = record
        self.port = 0
        self.transactions = 0
        self.busy = 0.0  # seconds between request decoded and response sent, summed
        self.log: list[Transaction] = []
        self._pending: dict[tuple[int, int], tuple[float, int]] = {}
        self._sending_to: int | None = None
        self._server: ModbusTcpServer | ModbusSerialServer | None = None

    def _device(self, unit_id: int, unit: Unit) -> SimDevice:
        async def action(
            function: int,
            start: int,
            address: int,
            count: int,
            registers: list[int],
            values: list[int] | list[bool] | None,
        ) -> None:
            table = unit.input if function == 4 else unit.holding if function == 3 else None
            if table is not None and values is None:
                for a in range(address, address + count):
                    if a in table:
                        registers[a - start] = table[a]
            if delay := unit.delays.get(address, unit.delay):
                await asyncio.sleep(delay)

        simdata = (
            _bit_blocks(unit.coils),
            _bit_blocks(unit.discrete),
            _register_blocks(unit.holding, unit.fill_gaps),
            _register_blocks(unit.input, unit.fill_gaps),
        )
        return SimDevice(id=unit_id, simdata=simdata, action=action)

    def _trace_pdu(self, sending: bool, pdu: ModbusPDU) -> ModbusPDU:
        now = time.monotonic()
        key = (pdu.dev_id, pdu.transaction_id)
        if not sending:
            self._pending[key] = (now, pdu.function_code)
            return pdu
        self._sending_to = pdu.dev_id
        received, function = self._pending.pop(key, (now, pdu.function_code))
        unit = self.units.get(pdu.dev_id)
        if unit is not None and not unit.silent:
            self.transactions += 1
            self.busy += now - received
            if self.record:
                self.log.append(Transaction(pdu.dev_id, function & 0x7F, received, now))
        return pdu

    def _trace_packet(self, sending: bool, data: bytes) -> bytes:
        if not sending or self._sending_to is None:
            return data
        unit = self.units.get(self._sending_to)
        self._sending_to = None
        if unit is None or unit.silent:
            return b""  # not on the line, or dead: no answer at all
        if unit.garbled:
            return data[:-1] + bytes([data[-1] ^ 0xFF])
        return data

    async def start(self) -> None:
        devices = [self._device(unit_id, unit) for unit_id, unit in sorted(self.units.items())]
        if self.serial_port is not None:
            self._server = ModbusSerialServer(
                devices,
                framer=FramerType.RTU,
                port=self.serial_port,
                baudrate=self.baudrate,
                trace_pdu=self._trace_pdu,
                trace_packet=self._trace_packet,
            )
        else:
            self._server = ModbusTcpServer(
                devices,
                framer=FramerType.RTU if self.framing == "rtu" else FramerType.SOCKET,
                address=("127.0.0.1", self.port),
                trace_pdu=self._trace_pdu,
                trace_packet=self._trace_packet,
            )
        await self._server.serve_forever(background=True)
        if self.serial_port is None:
            transport = self._server.transport
            sockets = getattr(transport, "sockets", None) or ()
            self.port = sockets[0].getsockname()[1] if sockets else self.port

    async def stop(self) -> None:
        if self._server is not None:
            await self._server.shutdown()  # type: ignore[no-untyped-call]
            self._server = None

    async def __aenter__(self) -> ModbusSimulator:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


# --- command line: a server in its own process, for benchmarks -----------------------------------


def _unit_ids(text: str) -> list[int]:
    ids: list[int] = []
    for part in text.split(","):
        first, _, last = part.partition("-")
        ids.extend(range(int(first), int(last or first) + 1))
    return ids


async def _serve(args: argparse.Namespace) -> None:
    units = {
        unit_id: Unit(input={a: (unit_id * 100 + a) & 0xFFFF for a in range(args.registers)})
        for unit_id in _unit_ids(args.units)
    }
    if args.sdm630:
        from citygw.config.profiles import find_profile

        fields = find_profile("eastron-sdm630").fields
        values = {f.name: 230.0 if f.quantity == "voltage" else 1.5 for f in fields}
        units = {unit_id: Unit().put(fields, values) for unit_id in _unit_ids(args.units)}
    server = ModbusSimulator(units, record=False)
    server.port = args.port
    await server.start()
    sys.stdout.write(json.dumps({"port": server.port}) + "\n")
    sys.stdout.flush()
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)

    async def drift() -> None:
        step = 0
        while True:  # every value moves a little every 100 ms, as a live device's do
            await asyncio.sleep(0.1)
            step += 1
            for unit_id, unit in units.items():
                for address in unit.input:
                    unit.input[address] = int(1000 + 500 * math.sin((step + unit_id + address) / 50)) & 0xFFFF

    drifting = asyncio.create_task(drift()) if args.drift else None
    while line := await reader.readline():
        if line.strip() == b"stats":
            stats = {"transactions": server.transactions, "busy_s": round(server.busy, 6)}
            sys.stdout.write(json.dumps(stats) + "\n")
            sys.stdout.flush()
    if drifting is not None:
        drifting.cancel()
    await server.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="a simulated Modbus TCP server on loopback")
    parser.add_argument("--units", default="1", help="unit ids, e.g. 1-50 or 1,3,5")
    parser.add_argument("--registers", type=int, default=10, help="input registers 0..N-1 per unit")
    parser.add_argument("--sdm630", action="store_true", help="units hold an Eastron SDM630's registers")
    parser.add_argument("--drift", action="store_true", help="values change every 100 ms")
    parser.add_argument("--port", type=int, default=0, help="TCP port (default: a free one)")
    asyncio.run(_serve(parser.parse_args(argv)))


if __name__ == "__main__":
    main()
