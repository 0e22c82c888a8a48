"""Modbus register values: data types, byte and word orders, and their pure encode and decode.

Modbus carries 16-bit registers, each sent most significant byte first (Modbus Application
Protocol v1.1b3 §4.2). A value wider than one register spans consecutive registers, and devices
disagree on the order of those: ``word_order: big`` puts the most significant register first
(``ABCD``, Eastron, most meters), ``little`` the least significant first (``CDAB``, many PLCs);
``byte_order: little`` swaps the two bytes inside every register (``BADC``, ``DCBA``).

Strings are packed two characters per register, first character in the high byte (with
``byte_order: little``, in the low byte); ``word_order`` does not apply to them. Trailing NUL and
space characters are dropped.

Nothing here does I/O or reads a clock: registers in, values out, or :class:`DecodeError`.
"""

from __future__ import annotations

import enum
import math
import struct
from collections.abc import Sequence
from dataclasses import dataclass

from citygw.errors import DecodeError, Reason


class DataType(enum.StrEnum):
    U16 = "u16"
    I16 = "i16"
    U32 = "u32"
    I32 = "i32"
    F32 = "f32"
    U64 = "u64"
    I64 = "i64"
    F64 = "f64"
    STRING = "string"
    BOOL = "bool"  # a coil or discrete input (functions 1, 2), or one bit of a register (3, 4)


class Order(enum.StrEnum):
    BIG = "big"
    LITTLE = "little"


_FORMAT: dict[DataType, str] = {
    DataType.U16: "H",
    DataType.I16: "h",
    DataType.U32: "I",
    DataType.I32: "i",
    DataType.F32: "f",
    DataType.U64: "Q",
    DataType.I64: "q",
    DataType.F64: "d",
}
NUMERIC = frozenset(_FORMAT)
FLOATS = frozenset({DataType.F32, DataType.F64})
WIDTH: dict[DataType, int] = {kind: struct.calcsize(fmt) // 2 for kind, fmt in _FORMAT.items()}
"""Registers a numeric type occupies."""


def int_range(kind: DataType) -> tuple[int, int]:
    """The smallest and largest raw value of an integer type."""
    bits = 16 * WIDTH[kind]
    if kind.value.startswith("i"):
        return -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    return 0, (1 << bits) - 1


def _swap_bytes(data: bytes) -> bytes:
    swapped = bytearray(data)
    swapped[0::2], swapped[1::2] = data[1::2], data[0::2]
    return bytes(swapped)


def _bytes_of(words: Sequence[int] | Sequence[bool]) -> bytes:
    try:
        return struct.pack(f">{len(words)}H", *words)
    except struct.error:
        raise DecodeError(Reason.DECODE, f"registers must be 0 to 65535; got {list(words)}") from None


def _words_of(data: bytes) -> list[int]:
    return list(struct.unpack(f">{len(data) // 2}H", data))


def shortest_f32(value: float) -> float:
    """The shortest decimal that is the same float32 as ``value`` (230.0900115966797 -> 230.09).

    A float32 widened to a Python float shows digits the device never meant; this is the value
    as the device's own display would print it, and it converts back to the very same bits.
    """
    if not math.isfinite(value) or value == 0.0:
        return value
    bits = struct.pack(">f", value)
    for digits in range(6, 10):
        candidate = float(f"{value:.{digits}g}")
        if struct.pack(">f", candidate) == bits:
            return candidate
    return value


def from_registers(
    kind: DataType,
    words: Sequence[int] | Sequence[bool],
    *,
    byte_order: Order = Order.BIG,
    word_order: Order = Order.BIG,
    bit: int | None = None,
) -> int | float | str | bool:
    """The raw value held by ``words`` (exactly the registers of the value, first address first).

    ``bit`` selects one bit (0 = least significant) of a register holding a :attr:`DataType.BOOL`;
    without it the register is true when it is not zero.
    """
    if kind is DataType.BOOL:
        if len(words) != 1:
            raise DecodeError(Reason.DECODE, f"a bool in a register needs 1 register; got {len(words)}")
        word = words[0]
        return bool(word >> bit & 1) if bit is not None else word != 0
    data = _bytes_of(words)
    if byte_order is Order.LITTLE:
        data = _swap_bytes(data)
    if kind is DataType.STRING:
        try:
            return data.rstrip(b"\x00 ").decode("utf-8")
        except UnicodeDecodeError:
            raise DecodeError(
                Reason.DECODE, f"a string register holds bytes that are not text: {data.hex()}"
            ) from None
    width = WIDTH[kind]
    if len(words) != width:
        raise DecodeError(Reason.DECODE, f"{kind} needs {width} registers; got {len(words)}")
    if word_order is Order.LITTLE:
        data = b"".join(data[i : i + 2] for i in range(len(data) - 2, -1, -2))
    value: int | float = struct.unpack(f">{_FORMAT[kind]}", data)[0]
    if kind is DataType.F32:
        value = shortest_f32(value)
    return value


def to_registers(
    kind: DataType,
    value: int | float | str | bool,
    *,
    byte_order: Order = Order.BIG,
    word_order: Order = Order.BIG,
    length: int | None = None,
    bit: int | None = None,
) -> list[int]:
    """The registers a device would send for the raw ``value`` (the inverse of :func:`from_registers`).

    ``length`` is the number of registers of a string (padded with NULs); required for strings.
    """
    if kind is DataType.BOOL:
        return [(1 << bit if bit is not None else 1) if value else 0]
    if kind is DataType.STRING:
        if not isinstance(value, str) or length is None:
            raise ValueError("a string needs a str value and a length in registers")
        data = value.encode("utf-8")
        if len(data) > 2 * length:
            raise ValueError(f"{value!r} does not fit in {length} registers")
        data = data.ljust(2 * length, b"\x00")
    else:
        try:
            data = struct.pack(f">{_FORMAT[kind]}", value)
        except struct.error as exc:
            raise ValueError(f"{value!r} is not a {kind}: {exc}") from None
        if word_order is Order.LITTLE:
            data = b"".join(data[i : i + 2] for i in range(len(data) - 2, -1, -2))
    if byte_order is Order.LITTLE:
        data = _swap_bytes(data)
    return _words_of(data)


@dataclass(frozen=True, slots=True)
class Field:
    """One value a device holds: where it is, how it is encoded and what it means.

    ``name`` is the reading's name: the quantity, or ``quantity:channel`` (``voltage:l1``) when a
    device has several of the same quantity. ``length`` is in registers (in bits for functions 1
    and 2). The value is ``raw * scale + offset`` in ``unit``, the quantity's SenML unit.
    """

    name: str
    quantity: str
    unit: str
    function: int
    address: int
    type: DataType
    length: int = 1
    byte_order: Order = Order.BIG
    word_order: Order = Order.BIG
    scale: float = 1.0
    offset: float = 0.0
    counter: bool = False
    bit: int | None = None

    @property
    def end(self) -> int:
        """The first address after this field."""
        return self.address + self.length

    @property
    def bits(self) -> bool:
        """Whether this field is a coil or discrete input (read as bits, not registers)."""
        return self.function in (1, 2)


def _decimals(number: float) -> int:
    """Decimal places of a scale or offset as written (0.1 -> 1, 0.001 -> 3, 1000 -> 0)."""
    text = f"{number:.10f}".rstrip("0")
    return len(text.split(".")[1]) if "." in text else 0


def scaled(field: Field, raw: int | float) -> int | float:
    """``raw * scale + offset``: an int while both are whole numbers, and no float noise
    (``215 * 0.1`` is ``21.5``, not ``21.500000000000004``)."""
    scale, offset = field.scale, field.offset
    if scale == 1.0 and offset == 0.0:
        return raw
    if isinstance(raw, int) and scale.is_integer() and offset.is_integer():
        return raw * int(scale) + int(offset)
    value = raw * scale + offset
    if isinstance(raw, int):
        return round(value, max(_decimals(scale), _decimals(offset)))
    return float(f"{value:.15g}")


def decode_field(
    field: Field, data: Sequence[int] | Sequence[bool]
) -> tuple[int | float | str | bool, int | float | None]:
    """The value of ``field`` in ``data`` (its own registers or bits) and, for a counter, its raw value.

    Raises :class:`DecodeError` for registers that cannot hold the declared type, and for a
    float that is not a number (NaN or infinity: what many meters send for "not available").
    """
    if field.bits:
        if len(data) != 1:
            raise DecodeError(Reason.DECODE, f"{field.name}: expected 1 bit; got {len(data)}")
        return bool(data[0]), None
    kind = field.type
    raw: int | float | str | bool
    if kind is DataType.U16 and field.byte_order is Order.BIG and len(data) == 1:
        raw = data[0]  # the common case, without the byte shuffling
        if raw.__class__ is not int or not 0 <= raw <= 0xFFFF:
            raise DecodeError(Reason.DECODE, f"registers must be 0 to 65535; got {raw!r}")
    else:
        raw = from_registers(
            kind, data, byte_order=field.byte_order, word_order=field.word_order, bit=field.bit
        )
        if raw.__class__ is bool or raw.__class__ is str:
            return raw, None
        if raw.__class__ is float and not math.isfinite(raw):
            raise DecodeError(Reason.DECODE, f"{field.name}: the device sent {raw} (not a number)")
    assert isinstance(raw, int | float)
    return scaled(field, raw), raw if field.counter else None
