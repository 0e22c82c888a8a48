"""Checks of how buses and devices are wired together, which no single bus or device can see alone.

A wiring mistake passes every per-key check and then fails at the pole as a silent or garbled
device: two Modbus devices answering to one unit id on one RS-485 line (both reply, the frames
collide), two buses opening one serial port (they steal each other's bytes), or a baud rate no UART
or device uses (9601 for 9600). Each is refused at the key to fix, with the fix.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from citygw.config.base import located, problem

STANDARD_BAUDRATES = (
    *(50, 75, 110, 134, 150, 200, 300, 600, 1200, 1800, 2400, 4800, 9600, 14400, 19200, 28800),
    *(31250, 38400, 56000, 57600, 76800, 115200, 128000, 230400, 250000, 256000, 460800, 500000),
    *(576000, 921600, 1000000, 1152000, 1500000, 2000000, 2500000, 3000000, 3500000, 4000000),
)
"""The rates serial devices and UARTs use: the POSIX/Linux termios rates plus the common others
(14400, 28800, 56000, 76800, 128000, 256000 from PC serial ports, 31250 MIDI, 250000 DMX512)."""

RTU_LINE_TYPES = frozenset({"modbus-rtu", "modbus-rtu-over-tcp"})
"""Bus types that are one RS-485 line, where every unit id must be unique. On ``modbus-tcp`` a
server may present several logical devices at one unit id, so it is not checked there."""

PORT_TYPES = frozenset({"modbus-rtu", "serial"})
"""Bus types that open a local serial port."""

CONVERTER_TYPES = frozenset({"modbus-rtu-over-tcp"})
"""Bus types that reach a serial line through a converter's TCP port (transparent mode): one line
per host and port, which two buses would drive at once, their frames colliding on the wire."""


def standard_baudrate(value: int) -> int:
    """An after-validator: ``value`` is one of :data:`STANDARD_BAUDRATES` (else the nearest is named)."""
    if value in STANDARD_BAUDRATES:
        return value
    nearest = min(STANDARD_BAUDRATES, key=lambda rate: abs(rate - value) / rate)
    raise problem(
        "baudrate",
        f"{value} is not a standard baud rate (did you mean {nearest}?); use the rate on the "
        "device's label or datasheet, e.g. 2400, 4800, 9600, 19200, 38400 or 115200",
    )


def _same_port(check_files: bool) -> Callable[[str], str]:
    """The key two port paths are compared by: with files checked, symlinks such as
    /dev/serial/by-id/... resolved to the device they name."""
    return os.path.realpath if check_files else os.path.normpath


def one_bus_per_port(buses: Mapping[str, object], *, check_files: bool) -> None:
    """Refuse a second bus on a serial line already used by another bus, at its ``port`` key: a
    local port (compared as the device it names), or a converter's host and TCP port."""
    key = _same_port(check_files)
    first: dict[str, tuple[str, str]] = {}
    for name, bus in buses.items():
        kind, port = getattr(bus, "type", None), getattr(bus, "port", None)
        if kind in PORT_TYPES and isinstance(port, str):
            same, written = key(port), port
        elif kind in CONVERTER_TYPES:
            same = written = f"{getattr(bus, 'host', '')}:{port}"
        else:
            continue
        if same in first:
            other, before = first[same]
            alias = "" if before == written else f" ({before} is the same device)"
            located(
                "config",
                ("buses", name, "port"),
                "port_shared",
                f"port {written} is already the port of bus {other!r}{alias}; one port is one bus: "
                f"put every device on that line under bus {other!r}, or give this bus its own port",
                port,
            )
        first[same] = (name, written)


def one_device_per_unit(buses: Mapping[str, object], devices: Mapping[str, object]) -> None:
    """Refuse a second Modbus device with the same unit id on one RS-485 line, at its ``unit`` key."""
    first: dict[tuple[str, int], str] = {}
    for name, device in _modbus_devices(buses, devices):
        unit_key = (device.bus, device.unit)
        if unit_key in first:
            located(
                "config",
                ("devices", name, "unit"),
                "unit_shared",
                f"device {first[unit_key]!r} on bus {device.bus!r} already has unit {device.unit}; "
                "two devices with one unit id on a line both answer and garble each other: set this "
                "device's unit id (on its display or with its tool) to a free one and write it here",
                device.unit,
            )
        first[unit_key] = name


def _modbus_devices(buses: Mapping[str, object], devices: Mapping[str, object]) -> Iterable[tuple[str, Any]]:
    for name, device in devices.items():
        bus = getattr(device, "bus", None)
        on_line = isinstance(bus, str) and getattr(buses.get(bus), "type", None) in RTU_LINE_TYPES
        if on_line and isinstance(getattr(device, "unit", None), int):
            yield name, device
