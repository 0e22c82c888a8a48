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
- **reconnects**: a link that is down is reopened on the next transaction, no sooner than its
  backoff allows (jittered, doubling up to 30 s), so fifty devices on a dead gateway cost one
  connection attempt, not fifty.

pymodbus's own retries and reconnects are off: the bus runner decides what to retry.
"""

from __future__ import annotations

import asyncio
import logging
import time

from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient
from pymodbus.exceptions import ConnectionException, ModbusException, ModbusIOException
from pymodbus.framer import FramerType

from gateway.backoff import Backoff
from gateway.config.modbus import ModbusBus, ModbusRtuBus, ModbusRtuOverTcpBus
from gateway.errors import CitygwError
from gateway.logs import EventLog

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
    says the unit behind it is silent) or ``framing``."""


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
        self._connect_backoff = Backoff(*CONNECT_BACKOFF, retry_on=lambda exc: True)
        self._next_connect = 0.0

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
            self._received = max(self._received, len(data))
        return data

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
            raise NoAnswer(
                "connection",
                f"{self.where} is not connected; next attempt in {self._next_connect - now:.1f} s",
            )
        if await self._client.connect():
            if self._connect_backoff.failures:
                log.event("bus_connected", bus=self.name).info("%s: connected again", self.where)
            self._connect_backoff.reset()
            return
        self._connect_backoff.failures += 1
        self._next_connect = time.monotonic() + self._connect_backoff.delay()
        verb = "open" if isinstance(self.bus, ModbusRtuBus) else "connect to"
        raise NoAnswer("connection", f"cannot {verb} {self.where}")

    async def read(self, unit: int, function: int, address: int, count: int) -> list[int] | list[bool]:
        """One read transaction (call inside :meth:`session`): registers, or bits for functions 1, 2."""
        await self._connect()
        wait = self._quiet_until - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)
        self._received = 0
        self.transactions += 1
        client = self._client
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
            self._quiet_until = time.monotonic() + self.delay
        _honour_swallowed_cancel()
        if response.isError():
            code = int(getattr(response, "exception_code", 0))
            if code in _GATEWAY_CODES:
                raise NoAnswer("gateway", f"unit {unit}: {EXCEPTION_NAMES[code]} (exception {code})")
            raise ExceptionAnswer(code, f"unit {unit}")
        if function in (1, 2):
            return list(response.bits[:count])
        return list(response.registers)

    def close(self) -> None:
        self._client.close()
