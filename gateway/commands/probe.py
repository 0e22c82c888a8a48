"""``citygw probe`` and ``citygw scan``: the technician's wiring tests for Modbus devices.

``probe DEVICE`` reads a configured device once, through the same read plan and link as the
daemon (and, as the daemon does, splits a request the device refuses for spanning unused addresses
and reads again, saying so on stderr), and prints its readings as JSON lines (``device``,
``name``, ``value``, ``unit``, ``time`` in UTC epoch seconds, and ``flags`` when any). When the
device does not answer it says which bus, which unit id and what was tried, and exits 1.

``probe DEVICE`` of a serial or BLE device listens, through the daemon's own bus runner (the same
port handling, framers and decoders; for BLE the same scanner seam, so a bus with ``replay``
hears its recording), until the device's next frame or advert gives readings, prints them and
exits 0; after ``--timeout`` seconds without one it says what was heard instead (frames refused
and why, a port that does not open) and what to check, and exits 1. A presence counter has no
frame to show (it reports counts per window): use ``citygw scan`` on its bus.

``scan BUS`` tries each unit id in a range with a one-register read and prints a JSON line per
unit that answers (an exception response is an answer: something is there).

Exit codes: 0 ok, 1 the device did not answer (or answered with errors) / no unit answered,
2 a device or bus that the config does not have, or that is not on a Modbus bus.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from typing import TYPE_CHECKING, Any

from citygw.config.modbus import ModbusRtuBus, ModbusRtuOverTcpBus, ModbusTcpBus
from citygw.drivers.health import DeviceHealth
from citygw.drivers.modbus.bus import PollResult, probe, scan
from citygw.drivers.modbus.client import NoAnswer, TransactionError
from citygw.drivers.serial.port import FIXES as PORT_FIXES
from citygw.reading import Reading, flag_names

if TYPE_CHECKING:
    from citygw.config import Config
    from citygw.config.modbus import ModbusBus, ModbusDeviceModel

LISTEN_SECONDS = 10.0  # default --timeout of a serial or BLE probe: a sensor sends every 1 to 10 s
EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
_MODBUS = (ModbusRtuBus, ModbusTcpBus, ModbusRtuOverTcpBus)
_TYPES = "modbus-rtu, modbus-tcp, modbus-rtu-over-tcp"


def _fail(command: str, message: str, code: int) -> int:
    sys.stderr.write(f"citygw {command}: {message}\n")
    return code


def _hints(bus: ModbusBus, device: ModbusDeviceModel) -> list[str]:
    factory = device.factory
    ships = ""
    if factory is not None and factory.unit is not None:
        line = f" at {factory.baudrate} baud, parity {factory.parity}" if factory.baudrate else ""
        ships = f" (profile {device.profile!r} ships as unit {factory.unit}{line})"
    hints = [f"the unit id: is the device set to {device.unit}?{ships}"]
    if isinstance(bus, ModbusRtuBus):
        hints.append(
            f"the line settings: {bus.baudrate} baud, parity {bus.parity}, {bus.stopbits} stop bit(s)"
        )
        hints.append(
            "the wiring: A to A, B to B (swap them if nothing answers), a common ground, termination"
        )
    else:
        hints.append(f"that {bus.host}:{bus.port} is reachable and the device's Modbus server is on")
        if isinstance(bus, ModbusRtuOverTcpBus):
            hints.append("that the converter is in transparent (raw TCP) mode, not Modbus TCP")
    return hints


def _emit(lines: list[str]) -> None:
    """Print ``lines`` on stdout; a reader that went away (``citygw probe ... | head``) raises
    BrokenPipeError, which ``citygw``'s main ends quietly with exit 141, as for every command."""
    for line in lines:
        sys.stdout.write(line + "\n")
    sys.stdout.flush()


def _reading_line(reading: Any) -> str:
    line: dict[str, Any] = {
        "device": reading.device,
        "name": reading.name,
        "value": reading.value,
        "unit": reading.unit,
        "time": round(reading.time, 3),
    }
    if reading.flags:
        line["flags"] = flag_names(reading.flags)
    return json.dumps(line)


def probe_main(config: Config, device: str, *, timeout: float | None = None) -> int:
    """Read ``device`` once and print its readings; see the module docstring for exit codes."""
    if device not in config.devices:
        known = ", ".join(config.devices) or "none"
        return _fail("probe", f"no device {device!r} in {config.source}; devices: {known}", EXIT_USAGE)
    spec = config.devices[device]
    bus = config.buses[spec.bus]
    if bus.type in ("serial", "ble"):
        return listen_main(config, device, timeout=LISTEN_SECONDS if timeout is None else timeout)
    if not isinstance(bus, _MODBUS):
        return _fail(
            "probe",
            f"{device} is on bus {spec.bus} of type {bus.type}; probe reads devices on {_TYPES}, "
            "serial and ble buses",
            EXIT_USAGE,
        )
    modbus_device: ModbusDeviceModel = spec  # type: ignore[assignment]
    result: PollResult = asyncio.run(probe(spec.bus, bus, device, modbus_device, timeout=timeout))
    _emit([_reading_line(reading) for reading in result.readings])
    for request in result.split:
        sys.stderr.write(
            f"citygw probe: unit {modbus_device.unit} refused {request.describe()}, which spans unused "
            "addresses; read those registers again without gaps, as the daemon does from its second poll "
            f"(set max_gap: 0 for {device} to avoid the refused read)\n"
        )
    where = f"unit {modbus_device.unit} on bus {spec.bus} ({bus.describe()})"
    tried = "".join(f"\n  tried: {line}" for line in result.tried)
    down = [e for e in result.errors if isinstance(e, NoAnswer) and e.link_down]
    if not result.answered and down and isinstance(bus, ModbusRtuBus):  # not a silent meter: say why
        return _fail("probe", f"{device} was not asked: {down[0].detail}", EXIT_FAILURE)
    if not result.answered:
        checks = "".join(f"\n  check {hint}" for hint in _hints(bus, modbus_device))
        return _fail("probe", f"{device} did not answer: {where}{tried}{checks}", EXIT_FAILURE)
    if result.errors:
        problems = "".join(f"\n  {error}" for error in result.errors)
        return _fail(
            "probe", f"{device} ({where}) answered, but not everything:{problems}{tried}", EXIT_FAILURE
        )
    return EXIT_OK


class _Listened(DeviceHealth):
    """A device's health that also wakes the probe when the port does not open (no use waiting)."""

    def __init__(self, device: str) -> None:
        super().__init__(device)
        self.port_down = asyncio.Event()

    def error(self, reason: str, detail: str = "") -> None:
        super().error(reason, detail)
        if reason in PORT_FIXES:
            self.port_down.set()


async def _listen(
    bus_name: str, bus: Any, name: str, device: Any, health: _Listened, timeout: float
) -> list[Reading]:
    """Run the daemon's runner of ``bus`` for ``device`` alone until it gives readings or ``timeout``."""
    from citygw.daemon.gateway import BUS_RUNNERS

    readings: list[Reading] = []
    heard = asyncio.Event()

    async def sink(batch: list[Reading]) -> None:
        readings.extend(r for r in batch if r.device == name)
        if readings:
            heard.set()

    async def run() -> None:
        await BUS_RUNNERS[bus.type](bus_name, bus, {name: device}, sink, {name: health})

    runner = asyncio.create_task(run())
    waiters = [asyncio.create_task(heard.wait()), asyncio.create_task(health.port_down.wait())]
    try:
        await asyncio.wait({runner, *waiters}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (runner, *waiters):
            task.cancel()
        await asyncio.gather(runner, *waiters, return_exceptions=True)
    failure = runner.exception() if runner.done() and not runner.cancelled() else None
    if failure is not None:
        raise failure  # a bug in the runner: never swallowed
    return readings


def _listen_hints(bus: Any, device: Any) -> list[str]:
    if bus.type == "ble":
        return [
            f"that the sensor {device.address} is in range and advertising (citygw scan -c FILE {device.bus} "
            "lists the sensors heard)",
            f"its format: {device.format.value}",
        ]
    return [
        f"the line settings: {bus.baudrate} baud, parity {bus.parity}, {bus.stopbits:g} stop bit(s) "
        f"(the sensor's datasheet for protocol {device.protocol})",
        "the wiring: the sensor's TX to the adapter's RX, RX to TX, a common ground, the sensor's supply",
    ]


def listen_main(config: Config, device: str, *, timeout: float) -> int:
    """``probe`` of a serial or BLE device: its next frame or advert decoded, within ``timeout``."""
    spec: Any = config.devices[device]
    bus: Any = config.buses[spec.bus]
    if getattr(spec, "type", None) == "presence":
        return _fail(
            "probe",
            f"{device} is a presence counter: it reports counts per window, not frames; "
            f"citygw scan -c FILE {spec.bus} lists what is heard",
            EXIT_USAGE,
        )
    what = "advert" if bus.type == "ble" else "frame"
    where = f"bus {spec.bus} ({bus.adapter if bus.type == 'ble' else bus.port})"
    sys.stderr.write(f"citygw probe: listening for {device}'s next {what} on {where}, up to {timeout:g} s\n")
    health = _Listened(device)
    logging.getLogger("citygw.drivers.health").setLevel(logging.ERROR)  # this command sums it up below
    readings = asyncio.run(_listen(spec.bus, bus, device, spec, health, timeout))
    _emit([_reading_line(reading) for reading in readings])
    if readings:
        return EXIT_OK
    errors = ", ".join(f"{reason} {n}" for reason, n in sorted(health.errors.items()))
    if health.errors.keys() & PORT_FIXES.keys() or health.errors.get("port"):
        return _fail("probe", f"{device} was not heard: {health.last_error.partition(': ')[2]}", EXIT_FAILURE)
    heard = (
        f"{health.frames} {what}(s) without readings, {errors or 'nothing refused'}"
        if health.frames or errors
        else f"no {what} at all"
    )
    last = f"\n  last refused: {health.last_error}" if health.last_error else ""
    checks = "".join(f"\n  check {hint}" for hint in _listen_hints(bus, spec))
    return _fail(
        "probe",
        f"{device} gave no reading within {timeout:g} s on {where}: {heard}{last}{checks}",
        EXIT_FAILURE,
    )


async def _scan(bus_name: str, bus: ModbusBus, units: range, owners: dict[int, list[str]]) -> int:
    found = 0
    async for answer in scan(bus_name, bus, units):
        found += 1
        line = {
            "bus": bus_name,
            "unit": answer.unit,
            "answer": answer.answer,
            "devices": owners.get(answer.unit, []),
        }
        _emit([json.dumps(line)])
    return found


def scan_main(config: Config, bus: str, *, first: int, last: int) -> int:
    """List the unit ids from ``first`` to ``last`` that answer on ``bus``."""
    if bus not in config.buses:
        known = ", ".join(config.buses) or "none"
        return _fail("scan", f"no bus {bus!r} in {config.source}; buses: {known}", EXIT_USAGE)
    spec = config.buses[bus]
    if spec.type == "ble":  # a short scan listing the sensors nearby and the format each decodes as
        from citygw.drivers.ble.cli import scan_main as ble_scan_main

        return ble_scan_main(config, bus)
    if not isinstance(spec, _MODBUS):
        return _fail(
            "scan",
            f"bus {bus} is of type {spec.type}; scan tries unit ids on {_TYPES} buses and lists nearby "
            "sensors on ble buses",
            EXIT_USAGE,
        )
    if not 0 <= first <= last <= 255:
        return _fail(
            "scan",
            f"unit ids go from 0 to 255 and --first must not exceed --last; got {first}..{last}",
            EXIT_USAGE,
        )
    units = range(first, last + 1)
    if len(units) * spec.timeout > 10:
        sys.stderr.write(
            f"citygw scan: trying units {first}..{last} on bus {bus} ({spec.describe()}); "
            f"up to {len(units) * spec.timeout:.0f} s at {spec.timeout:g} s per silent unit\n"
        )
    owners: dict[int, list[str]] = {}
    for name, device in config.devices.items():
        if device.bus == bus:
            owners.setdefault(getattr(device, "unit", -1), []).append(name)
    try:
        found = asyncio.run(_scan(bus, spec, units, owners))
    except TransactionError as exc:  # the bus itself cannot be reached; the detail names it
        return _fail("scan", exc.detail, EXIT_FAILURE)
    if not found:
        return _fail(
            "scan",
            f"no unit answered on bus {bus} ({spec.describe()}) among units {first}..{last} "
            "(a read of holding register 0 each)",
            EXIT_FAILURE,
        )
    sys.stderr.write(f"citygw scan: {found} unit(s) answered on bus {bus}\n")
    return EXIT_OK
