"""The bus link: one serial port or TCP connection, one transaction at a time.

This is the only module that imports pymodbus's clients (its API renames between minor
versions). pymodbus frames requests and checks CRCs; the link adds what a shared bus needs:

- **the bus lock**: a device is read inside ``async with link.session():``, so the requests of
  one poll go out back to back and no other transaction interleaves;
- **the inter-frame delay**: after every transaction (answered or not) the line stays silent
  for the bus's ``frame_delay`` before the next request (Modbus over serial line v1.02 §2.5.1.1);
- **errors as values**: a timeout, a garbled answer (bytes arrived but no valid frame: a CRC
  error, a wrong baud rate or parity), a lost connection and an exception response each raise
  a :class:`TransactionError` with a short ``reason``; nothing else escapes;
- **one answer per request, never another's** (RTU on a serial line and RTU over TCP, which have
  no transaction id): a late answer to a request that timed out looks exactly like the answer to
  the next request of the same length to that unit. So a unit whose transaction ended without a
  valid answer is asked again no sooner than one ``timeout`` later (answers of other units are
  told apart by the unit id, so a busy bus loses no time); bytes that arrive while nothing was
  asked (a late answer, noise) are dropped and the line must then be silent for a whole
  ``timeout`` before the next request; and every answer must name the unit, the function and the
  byte count that were asked for (else ``mismatch``). The residual risk is an answer later than
  twice the timeout with the same byte count: set the timeout above the device's slowest
  turnaround (a ``late`` error says when it is not). Modbus TCP matches answers by transaction id
  and needs none of this;
- **reconnects**: a link that is down is reopened on the next transaction, no sooner than its
  backoff allows (jittered, doubling up to 30 s), so fifty devices on a dead gateway cost one
  connection attempt, not fifty.

pymodbus's own retries and reconnects are off: the bus runner decides what to retry.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter

from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient
from pymodbus.exceptions import ConnectionException, ModbusException, ModbusIOException
from pymodbus.framer import FramerType
from pymodbus.pdu import ModbusPDU

from citygw.backoff import Backoff
from citygw.config.modbus import ModbusBus, ModbusRtuBus, ModbusRtuOverTcpBus, ModbusTcpBus
from citygw.drivers.serial.port import diagnose
from citygw.errors import CitygwError
from citygw.logs import EventLog

log = EventLog(__name__)

# pymodbus logs every timeout at ERROR with a dump of the last frames; each device's health
# logs each distinct error once instead (a dead unit must not write a line per poll for days)
logging.getLogger("pymodbus").setLevel(logging.CRITICAL)

EXCEPTION_NAMES = {
    1: "illegal function",
    2: "illegal data address",
    3: "illegal data value",
    4: "server device failure",
    5: "acknowledge",
    6: "server device busy",
    8: "memory parity error",
    10: "gateway path unavailable",
    11: "gateway target device failed to respond",
}
_GATEWAY_CODES = (10, 11)  # a TCP-to-RTU gateway saying the unit behind it did not answer
LINK_DOWN = frozenset({"connection", "no-port", "permission", "busy", "port"})
CONNECT_BACKOFF = (0.5, 30.0)  # seconds: first and longest wait between connection attempts


class TransactionError(CitygwError):
    """A transaction that gave no values; ``reason`` is one short word for counting."""

    answered = False  # whether the device itself answered (an exception response)

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class NoAnswer(TransactionError):
    """Nothing usable came back: ``timeout``, ``crc`` (garbled), ``connection``, ``gateway`` (a TCP gateway
    says the unit behind it is silent), ``mismatch`` (a valid frame answering another request) or
    ``framing``; or the link itself is down: ``connection``, and for a serial port ``no-port``,
    ``permission``, ``busy`` or ``port`` (see :func:`citygw.drivers.serial.port.diagnose`)."""

    @property
    def link_down(self) -> bool:
        """Whether the bus could not be reached at all (nothing was asked of any unit)."""
        return self.reason in LINK_DOWN


class Mismatch(NoAnswer):
    """A valid frame that is not the answer to the request: another unit, function or byte count."""

    def __init__(self, detail: str) -> None:
        super().__init__("mismatch", detail)


class ExceptionAnswer(TransactionError):
    """The device answered with a Modbus exception (Modbus Application Protocol §7)."""

    answered = True

    def __init__(self, code: int, detail: str) -> None:
        super().__init__("exception", f"{detail}: exception {code} ({EXCEPTION_NAMES.get(code, 'unknown')})")
        self.code = code


def _honour_swallowed_cancel() -> None:
    """Raise the cancellation that ``asyncio.wait_for`` (inside pymodbus) drops on Python 3.11 when
    the answer and the cancel arrive in the same loop turn (CPython gh-86296, fixed in 3.12).

    The task still counts the cancel request, so a bus can always be stopped."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


class ModbusLink:
    """One bus's connection. Use :meth:`session` around the transactions of one device."""

    def __init__(self, name: str, bus: ModbusBus, *, timeout: float | None = None) -> None:
        self.name = name
        self.bus = bus
        self.timeout = bus.timeout if timeout is None else timeout
        self.delay = bus.frame_delay
        self.lock = asyncio.Lock()
        self.transactions = 0
        self._client = self._make_client(bus, self.timeout)
        self._quiet_until = 0.0
        self._received = 0  # bytes seen since the last request was sent
        self._guarded = not isinstance(bus, ModbusTcpBus) or isinstance(bus, ModbusRtuOverTcpBus)
        self._outstanding = False  # a request is waiting for its answer
        self._last_byte = 0.0  # monotonic time bytes last arrived
        self._ended = 0.0  # monotonic time the last transaction ended
        self._unanswered: dict[int, float] = {}  # unit -> when its transaction ended without answer
        self._last_unit = -1  # the unit whose transaction last ended without a valid answer
        self.late: Counter[int] = Counter()  # unit -> times bytes came after its transaction ended
        self._connect_backoff = Backoff(*CONNECT_BACKOFF, retry_on=lambda exc: True)
        self._next_connect = 0.0
        self._down: NoAnswer | None = None  # why the last connection attempt failed

    def _make_client(self, bus: ModbusBus, timeout: float) -> AsyncModbusSerialClient | AsyncModbusTcpClient:
        if isinstance(bus, ModbusRtuBus):
            return AsyncModbusSerialClient(
                bus.port,
                framer=FramerType.RTU,
                baudrate=bus.baudrate,
                bytesize=bus.bytesize,
                parity=bus.parity[0].upper(),
                stopbits=bus.stopbits,
                name=self.name,
                timeout=timeout,
                retries=0,
                reconnect_delay=0,
                trace_packet=self._trace,
            )
        return AsyncModbusTcpClient(
            bus.host,
            port=bus.port,
            framer=FramerType.RTU if isinstance(bus, ModbusRtuOverTcpBus) else FramerType.SOCKET,
            name=self.name,
            timeout=timeout,
            retries=0,
            reconnect_delay=0,
            trace_packet=self._trace,
        )

    def _trace(self, sending: bool, data: bytes) -> bytes:
        if not sending:
            self._last_byte = time.monotonic()
            if self._outstanding:
                self._received = max(self._received, len(data))
        return data

    async def _wait_for_silence(self, unit: int) -> None:
        """Before a request on a line without transaction ids, make sure no late answer can be taken
        for its answer: a unit whose last transaction ended without a valid answer is asked again
        no sooner than ``timeout`` later (answers of other units are told apart by the unit id), and
        after bytes arrived while nothing was asked the line must first be silent for ``timeout``.
        What arrives meanwhile is dropped (pymodbus clears its receive buffer when it sends) and
        counted in :attr:`late` for the unit that last failed."""
        if not self._guarded:
            return
        await asyncio.sleep(0)  # one turn of the loop: bytes already waiting in the port are read now
        failed = self._unanswered.pop(unit, None)
        until = 0.0 if failed is None else failed + self.timeout
        stray = False
        while True:
            if self._last_byte > self._ended:  # bytes came while nothing was asked: a late answer, noise
                stray = True
                until = max(until, self._last_byte + self.timeout)
                self._ended = self._last_byte
            wait = until - time.monotonic()
            if wait <= 0:
                break
            await asyncio.sleep(wait)
        if stray:
            self.late[self._last_unit] += 1

    @property
    def where(self) -> str:
        """The bus for messages: ``bus rs485 (modbus-rtu /dev/ttyUSB0 9600 8N1)``."""
        return f"bus {self.name} ({self.bus.describe()})"

    def session(self) -> asyncio.Lock:
        """Hold the bus for a series of transactions (one device's poll): ``async with link.session():``."""
        return self.lock

    async def _connect(self) -> None:
        if self._client.connected:
            return
        now = time.monotonic()
        if now < self._next_connect:
            down = self._down
            raise NoAnswer(
                down.reason if down is not None else "connection",
                f"{down.detail if down is not None else f'{self.where} is not connected'}; "
                f"next attempt in {self._next_connect - now:.1f} s",
            )
        if await self._client.connect():
            if self._connect_backoff.failures:
                log.event("bus_connected", bus=self.name).info("%s: connected again", self.where)
            self._connect_backoff.reset()
            self._down = None
            return
        self._connect_backoff.failures += 1
        self._next_connect = time.monotonic() + self._connect_backoff.delay()
        self._down = self._why_down()
        raise self._down

    def _why_down(self) -> NoAnswer:
        """The connection failure in words: for a serial port, the cause (no such device, permission)."""
        if not isinstance(self.bus, ModbusRtuBus):
            return NoAnswer("connection", f"cannot connect to {self.where}")
        problem = diagnose(self.bus.port)
        if problem is None:
            return NoAnswer("connection", f"cannot open {self.where}")
        return NoAnswer(problem.reason, f"cannot open {self.where}: {problem}")

    async def read(self, unit: int, function: int, address: int, count: int) -> list[int] | list[bool]:
        """One read transaction (call inside :meth:`session`): registers, or bits for functions 1, 2."""
        await self._connect()
        await self._wait_for_silence(unit)
        wait = self._quiet_until - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)
        self._received = 0
        self.transactions += 1
        client = self._client
        self._outstanding = True
        answered = False
        try:
            if function == 1:
                response = await client.read_coils(address, count=count, device_id=unit)
            elif function == 2:
                response = await client.read_discrete_inputs(address, count=count, device_id=unit)
            elif function == 3:
                response = await client.read_holding_registers(address, count=count, device_id=unit)
            elif function == 4:
                response = await client.read_input_registers(address, count=count, device_id=unit)
            else:
                raise ValueError(f"function {function} is not a read")
            answered = True
        except ModbusIOException:
            if self._received:
                raise NoAnswer(
                    "crc",
                    f"unit {unit}: {self._received} bytes came back but no valid frame "
                    "(CRC error, wrong baud rate or parity, or two devices with one unit id)",
                ) from None
            raise NoAnswer("timeout", f"unit {unit}: no answer within {self.timeout:g} s") from None
        except ConnectionException as exc:
            raise NoAnswer("connection", f"{self.where}: {exc}") from None
        except ModbusException as exc:
            raise NoAnswer("framing", f"unit {unit}: {exc}") from None
        finally:
            self._outstanding = False
            self._ended = time.monotonic()
            self._quiet_until = self._ended + self.delay
            if not answered:
                self._unanswered[unit] = self._last_unit_failed(unit)
        _honour_swallowed_cancel()
        try:
            self._check(response, unit, function, count)
        except Mismatch:
            self._unanswered[unit] = self._last_unit_failed(unit)
            raise
        if response.isError():
            code = int(getattr(response, "exception_code", 0))
            if code in _GATEWAY_CODES:
                raise NoAnswer("gateway", f"unit {unit}: {EXCEPTION_NAMES[code]} (exception {code})")
            raise ExceptionAnswer(code, f"unit {unit}")
        if function in (1, 2):
            return list(response.bits[:count])
        return list(response.registers)

    def _last_unit_failed(self, unit: int) -> float:
        """Remember ``unit`` as the one a late answer would come from; the time its transaction ended."""
        self._last_unit = unit
        return self._ended

    @staticmethod
    def _check(response: ModbusPDU, unit: int, function: int, count: int) -> None:
        """Raise :class:`Mismatch` unless ``response`` answers this request: the unit id, the function
        (or its exception, function + 0x80) and the byte count of the request."""
        if response.dev_id != unit:
            raise Mismatch(f"unit {unit}: the answer came from unit {response.dev_id}")
        if response.function_code & 0x7F != function:
            raise Mismatch(
                f"unit {unit}: asked function {function}, the answer is function {response.function_code}"
            )
        if response.isError():
            return
        if function in (1, 2):
            got, expected = len(response.bits) // 8, (count + 7) // 8
        else:
            got, expected = 2 * len(response.registers), 2 * count
        if got != expected:
            raise Mismatch(f"unit {unit}: asked {expected} bytes of data, the answer has {got}")

    def close(self) -> None:
        self._client.close()
