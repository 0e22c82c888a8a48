"""The serial port transport: owns a UART, feeds its bytes to the device's framer and decoder.

One serial bus is one port is one device. :func:`run_bus` opens the port (pyserial-asyncio-fast),
reads whatever arrives, hands it to the protocol's stream framer and each frame to the pure decoder,
stamps the measurements with the device and the time of arrival, and gives the readings to the sink.
For a request/response protocol (MH-Z19) it writes the read command every ``interval`` and waits
:data:`ANSWER_TIMEOUT` for the answer.

Nothing a device does is raised into the daemon: bad frames and missing answers are counted in its
:class:`~citygw.drivers.health.DeviceHealth`. A port that cannot be opened, fails on read (the device was
unplugged) or whose device file vanished or was replaced is closed and reopened after a backoff
with full jitter (``reopen_initial`` doubling up to ``reopen_max``), reset by the next good frame.
A device with no good frame for ``stale_after`` is reported stale, unless its port is down: then it
stays failing, with the port's reason (``no-port``, ``permission``, ``busy``, ``port``).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import serial_asyncio_fast

from citygw.backoff import Backoff
from citygw.drivers.health import DeviceHealth
from citygw.drivers.serial.decoders import (
    MHZ19,
    MHZ19_READ,
    PMS5003,
    SDS011,
    Decoder,
    FixedFormat,
    NmeaFix,
    decode_mhz19,
    decode_nmea,
    decode_pms5003,
    decode_sds011,
)
from citygw.drivers.serial.framing import FixedFramer, Framer, LineFramer, NmeaFramer
from citygw.drivers.serial.lines import FieldRule, LineDecoder, LineFormat
from citygw.drivers.serial.port import diagnose
from citygw.errors import CitygwError, DecodeError
from citygw.logs import EventLog
from citygw.reading import Reading, Sink

if TYPE_CHECKING:
    from asyncio import StreamReader, StreamWriter

    from citygw.config.serial import SerialBus, SerialDevice

log = EventLog(__name__)


READ_SIZE = 4096  # bytes per read at most; a UART at 9600 baud delivers ~960 bytes/s
ANSWER_TIMEOUT = 1.0  # seconds a polled sensor has to answer (an MH-Z19 answers within milliseconds)
PORT_CHECK = 5.0  # seconds without a byte after which the device file is checked
_PARITY = {"none": "N", "even": "E", "odd": "O"}


class PortError(CitygwError):
    """The port cannot be opened, failed, or its device file is gone; it is reopened with backoff.

    ``reason`` is ``port``, or for a port that does not open the cause :func:`diagnose` names
    (``no-port``, ``permission``, ``busy``)."""

    def __init__(self, message: str, *, reason: str = "port") -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Wire:
    """How a protocol is spoken: a fresh framer per opening, the frame decoder, a request to poll;
    ``decoder`` makes a decoder with its own state per device instead (one report per GPS fix)."""

    framer: Callable[[], Framer]
    decode: Decoder
    request: bytes | None = None
    decoder: Callable[[], Decoder] | None = None


def _fixed(fmt: FixedFormat, decode: Decoder, request: bytes | None = None) -> Wire:
    return Wire(functools.partial(FixedFramer, fmt), decode, request)


WIRES: Mapping[str, Wire] = {
    "pms5003": _fixed(PMS5003, decode_pms5003),
    "pms7003": _fixed(PMS5003, decode_pms5003),
    "pmsa003": _fixed(PMS5003, decode_pms5003),
    "sds011": _fixed(SDS011, decode_sds011),
    "mhz19": _fixed(MHZ19, decode_mhz19, MHZ19_READ),
    "nmea": Wire(NmeaFramer, decode_nmea, decoder=lambda: NmeaFix().decode),
}
"""The framed protocols by config name; ``lines`` is built from the device's config."""


def wire_for(device: SerialDevice) -> Wire:
    """The :class:`Wire` of a configured device."""
    if device.protocol != "lines":
        return WIRES[device.protocol]
    assert device.format is not None and device.fields is not None  # the config model checks both
    rules = {
        source: FieldRule(field.name, field.resolved_unit, field.scale, field.offset)
        for source, field in device.fields.items()
    }
    decoder = LineDecoder(
        LineFormat(device.format),
        rules,
        pattern=device.pattern,
        columns=device.columns or (),
        delimiter=device.delimiter,
    )
    return Wire(LineFramer, decoder.decode)


class SerialLink:
    """One device on one port, read until cancelled."""

    def __init__(
        self, name: str, *, bus: SerialBus, device: SerialDevice, sink: Sink, health: DeviceHealth
    ) -> None:
        self.name = name
        self.bus = bus
        self.device = device
        self.sink = sink
        self.health = health
        self.wire = wire_for(device)
        self._decode = self.wire.decoder() if self.wire.decoder is not None else self.wire.decode
        self._framer: Framer = self.wire.framer()
        self._port_down = False  # the port failed and is not open again yet
        self._backoff = Backoff(
            bus.reopen_initial, bus.reopen_max, retry_on=lambda exc: isinstance(exc, PortError)
        )

    async def run(self) -> None:
        """Read the device forever (until cancelled), reopening the port whenever it fails."""
        async with asyncio.TaskGroup() as group:
            group.create_task(self._watch_stale(), name=f"serial-{self.name}-stale")
            async for attempt in self._backoff.retrying():
                with attempt:
                    try:
                        await self._session()
                    except PortError as exc:
                        self._port_down = True
                        self.health.error(exc.reason, str(exc))
                        self.health.failing()
                        raise

    async def _watch_stale(self) -> None:
        """Report the device stale after ``stale_after`` without a good frame (one timer, no polling)."""
        started = time.monotonic()
        while True:
            now = time.monotonic()
            due = (self.health.last_seen or started) + self.device.stale_after
            if now >= due:
                if not self._port_down:  # a port that is down is failing, with its reason, not stale
                    self.health.stale()
                due = now + self.device.stale_after
            await asyncio.sleep(due - now)

    async def _session(self) -> None:
        """One opening of the port: read (and poll) until it fails, raising :class:`PortError`."""
        port = self.bus.port
        try:
            reader, writer = await serial_asyncio_fast.open_serial_connection(
                url=port,
                baudrate=self.bus.baudrate,
                bytesize=self.bus.bytesize,
                parity=_PARITY[self.bus.parity],
                stopbits=self.bus.stopbits,
                exclusive=True,
            )
        except (OSError, ValueError) as exc:  # pyserial's SerialException is an OSError
            problem = diagnose(port, exc) if isinstance(exc, OSError) else None
            if problem is None:
                raise PortError(f"cannot open {port}: {exc}") from exc
            raise PortError(f"cannot open {port}: {problem}", reason=problem.reason) from exc
        self._port_down = False
        self._framer = self.wire.framer()  # nothing from before an unplug is joined to what follows
        log.event("port_open", device=self.name, path=port).info(
            "device %s: %s open (%d baud, %s)", self.name, port, self.bus.baudrate, self.device.protocol
        )
        try:
            identity = self._identity()
            if self.wire.request is None:
                await self._stream(reader, identity)
            else:
                await self._poll(reader, writer, self.wire.request, identity)
        finally:
            writer.close()
            with contextlib.suppress(OSError):  # the port's own failure, already being handled
                await writer.wait_closed()

    def _identity(self) -> tuple[int, int]:
        """Which device file the port path names now (through any symlink); PortError if none."""
        try:
            info = os.stat(self.bus.port)
        except OSError as exc:
            raise PortError(f"{self.bus.port} is gone: {exc.strerror}") from exc
        return info.st_ino, info.st_rdev

    def _check_port(self, identity: tuple[int, int]) -> None:
        if self._identity() != identity:
            raise PortError(f"{self.bus.port} now names another device")

    async def _read(self, reader: StreamReader) -> bytes:
        try:
            chunk = await reader.read(READ_SIZE)
        except OSError as exc:
            raise PortError(f"{self.bus.port}: {exc}") from exc
        if not chunk:
            raise PortError(f"{self.bus.port}: closed")
        return chunk

    async def _stream(self, reader: StreamReader, identity: tuple[int, int]) -> None:
        """A device that sends by itself: read and decode as bytes arrive."""
        while True:
            try:
                async with asyncio.timeout(PORT_CHECK):
                    chunk = await self._read(reader)
            except TimeoutError:
                self._check_port(identity)
                continue
            await self._handle(chunk)

    async def _poll(
        self, reader: StreamReader, writer: StreamWriter, request: bytes, identity: tuple[int, int]
    ) -> None:
        """A request/response device: ask every ``interval``, wait for the answer."""
        loop = asyncio.get_running_loop()
        interval = self.device.interval
        wait = min(ANSWER_TIMEOUT, interval)
        due = loop.time()
        while True:
            writer.write(request)
            try:
                await writer.drain()
            except OSError as exc:
                raise PortError(f"{self.bus.port}: {exc}") from exc
            if not await self._answer(reader, wait):
                self.health.error("timeout", f"no answer within {wait:g} s")
                self._check_port(identity)
            due = max(due + interval, loop.time())
            await asyncio.sleep(due - loop.time())

    async def _answer(self, reader: StreamReader, wait: float) -> bool:
        """Whether a frame, good or refused, came within ``wait`` seconds."""
        try:
            async with asyncio.timeout(wait):
                while not await self._handle(await self._read(reader)):
                    pass
        except TimeoutError:
            return False
        return True

    async def _handle(self, chunk: bytes) -> int:
        """Frame, decode and hand over what ``chunk`` completes; the number of frames, good or refused."""
        frames, rejects = self._framer.feed(chunk)
        health = self.health
        for reject in rejects:
            health.error(reject.reason, reject.detail)
        if not frames:
            return len(rejects)
        now = time.time()
        name, decode = self.name, self._decode
        readings: list[Reading] = []
        good = 0
        for frame in frames:
            try:
                measurements = decode(frame)
            except DecodeError as exc:
                health.error(exc.reason.value, exc.detail)
                continue
            good += 1
            health.seen(len(measurements))
            readings.extend(Reading(name, m.name, m.value, m.unit, now) for m in measurements)
        if good:
            self._backoff.reset()
        if readings:
            await self.sink(readings)
        return len(frames) + len(rejects)


async def run_bus(
    bus_name: str,
    bus: SerialBus,
    devices: Mapping[str, SerialDevice],
    sink: Sink,
    health: Mapping[str, DeviceHealth],
) -> None:
    """The device of one serial bus, until cancelled. A UART is point to point: one device per bus."""
    if len(devices) != 1:
        log.event("serial_bus_shared", bus=bus_name).error(
            "bus %s: a serial bus carries exactly one device, but %s name it; not reading it",
            bus_name,
            ", ".join(devices) or "none",
        )
        return
    [(name, device)] = devices.items()
    await SerialLink(name, bus=bus, device=device, sink=sink, health=health[name]).run()
