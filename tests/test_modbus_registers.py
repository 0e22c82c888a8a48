"""Modbus values: every data type in every byte and word order round-trips (hypothesis), the
literal register words of the spec's examples decode as documented, and counters never go back
unflagged."""

from __future__ import annotations

import math
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from citygw.drivers.modbus.decoder import CounterEvent, Counters, decode_response
from citygw.drivers.modbus.plan import ReadPlan
from citygw.drivers.modbus.registers import (
    WIDTH,
    DataType,
    Field,
    Order,
    decode_field,
    from_registers,
    int_range,
    scaled,
    shortest_f32,
    to_registers,
)
from citygw.errors import DecodeError
from citygw.reading import Flag

ORDERS = st.sampled_from(list(Order))
INTEGERS = [t for t in DataType if t.value[0] in "ui"]
word = st.integers(0, 0xFFFF)


def field(kind: DataType = DataType.U16, **kw: object) -> Field:
    args: dict[str, object] = {
        "name": "voltage",
        "quantity": "voltage",
        "unit": "V",
        "function": 3,
        "address": 0,
        "type": kind,
        "length": WIDTH.get(kind, 1),
    }
    args.update(kw)
    return Field(**args)  # type: ignore[arg-type]


@st.composite
def integer_values(draw: st.DrawFn) -> tuple[DataType, int]:
    kind = draw(st.sampled_from(INTEGERS))
    low, high = int_range(kind)
    return kind, draw(st.integers(low, high))


@given(integer_values(), ORDERS, ORDERS)
def test_integers_round_trip_in_every_order(
    case: tuple[DataType, int], byte_order: Order, word_order: Order
) -> None:
    kind, value = case
    words = to_registers(kind, value, byte_order=byte_order, word_order=word_order)
    assert len(words) == WIDTH[kind] and all(0 <= w <= 0xFFFF for w in words)
    assert from_registers(kind, words, byte_order=byte_order, word_order=word_order) == value


@given(st.floats(width=32, allow_nan=False), ORDERS, ORDERS)
def test_f32_round_trips_to_the_same_bits(value: float, byte_order: Order, word_order: Order) -> None:
    words = to_registers(DataType.F32, value, byte_order=byte_order, word_order=word_order)
    decoded = from_registers(DataType.F32, words, byte_order=byte_order, word_order=word_order)
    assert isinstance(decoded, float)
    assert struct.pack(">f", decoded) == struct.pack(">f", value)  # the same float32
    assert to_registers(DataType.F32, decoded, byte_order=byte_order, word_order=word_order) == words


@given(st.floats(allow_nan=False), ORDERS, ORDERS)
def test_f64_round_trips_exactly(value: float, byte_order: Order, word_order: Order) -> None:
    words = to_registers(DataType.F64, value, byte_order=byte_order, word_order=word_order)
    assert from_registers(DataType.F64, words, byte_order=byte_order, word_order=word_order) == value


@given(st.sampled_from([t for t in DataType if t in WIDTH]), st.data(), ORDERS, ORDERS)
def test_any_registers_decode_and_encode_back(
    kind: DataType, data: st.DataObject, bo: Order, wo: Order
) -> None:
    words = data.draw(st.lists(word, min_size=WIDTH[kind], max_size=WIDTH[kind]))
    value = from_registers(kind, words, byte_order=bo, word_order=wo)
    assert isinstance(value, int | float)
    if isinstance(value, float) and math.isnan(value):
        return  # NaN payloads are not unique
    assert to_registers(kind, value, byte_order=bo, word_order=wo) == words


@given(st.text(st.characters(min_codepoint=33, max_codepoint=126), max_size=20), ORDERS)
def test_strings_round_trip(text: str, byte_order: Order) -> None:
    words = to_registers(DataType.STRING, text, byte_order=byte_order, length=10)
    assert len(words) == 10
    assert from_registers(DataType.STRING, words, byte_order=byte_order) == text


@given(st.booleans(), st.integers(0, 15))
def test_bool_bits_round_trip(value: bool, bit: int) -> None:
    words = to_registers(DataType.BOOL, value, bit=bit)
    assert from_registers(DataType.BOOL, words, bit=bit) is value


@given(
    integer_values(), st.sampled_from([0.1, 0.01, 0.001, 10.0, 1000.0]), st.sampled_from([0.0, -40.0, 2.5])
)
@settings(max_examples=300)
def test_scaling_is_exact_to_the_scales_decimals(
    case: tuple[DataType, int], scale: float, offset: float
) -> None:
    kind, raw = case
    spec = field(kind, scale=scale, offset=offset)
    value = scaled(spec, raw)
    assert math.isclose(value, raw * scale + offset, rel_tol=1e-12, abs_tol=1e-9)
    if abs(raw) < 10**12:  # no float noise left: at most the decimals of the scale and offset
        assert value == round(value, 3)


# --- the orders on one known value -----------------------------------------------------------

ORDER_CASES = [  # 0x12345678 as u32 and the float 230.0 (0x43660000), in the four common orders
    (Order.BIG, Order.BIG, [0x1234, 0x5678], [0x4366, 0x0000]),  # ABCD: Eastron, most meters
    (Order.BIG, Order.LITTLE, [0x5678, 0x1234], [0x0000, 0x4366]),  # CDAB: many PLCs
    (Order.LITTLE, Order.BIG, [0x3412, 0x7856], [0x6643, 0x0000]),  # BADC
    (Order.LITTLE, Order.LITTLE, [0x7856, 0x3412], [0x0000, 0x6643]),  # DCBA
]


@pytest.mark.parametrize(("byte_order", "word_order", "u32", "f32"), ORDER_CASES)
def test_the_four_orders_of_a_32_bit_value(
    byte_order: Order, word_order: Order, u32: list[int], f32: list[int]
) -> None:
    assert from_registers(DataType.U32, u32, byte_order=byte_order, word_order=word_order) == 0x12345678
    assert from_registers(DataType.F32, f32, byte_order=byte_order, word_order=word_order) == 230.0


def test_f32_shows_the_value_the_device_meant() -> None:
    # 230.2 V as a float32 is 0x43663333, which widens to 230.1999969482422
    assert from_registers(DataType.F32, [0x4366, 0x3333]) == 230.2
    assert shortest_f32(0.1) == 0.1
    assert to_registers(DataType.F32, 230.2) == [0x4366, 0x3333]


def test_signed_and_wide_types_of_literal_words() -> None:
    assert from_registers(DataType.I16, [0xFF38]) == -200  # XY-MD02 at -20.0 Cel sends 0xFF38
    assert from_registers(DataType.I32, [0xFFFF, 0xFFFE]) == -2
    assert from_registers(DataType.U64, [0x0001, 0x0000, 0x0000, 0x0000]) == 1 << 48
    assert from_registers(DataType.F64, [0x4059, 0x0000, 0x0000, 0x0000]) == 100.0
    assert from_registers(DataType.STRING, [0x5344, 0x4D36, 0x3330, 0x0000]) == "SDM630"


def test_decode_errors() -> None:
    with pytest.raises(DecodeError, match="needs 2 registers"):
        from_registers(DataType.F32, [0x4366])
    with pytest.raises(DecodeError, match="not a number"):
        decode_field(field(DataType.F32, length=2), [0x7FC0, 0x0000])
    with pytest.raises(DecodeError, match="not text"):
        from_registers(DataType.STRING, [0xFFFE])


def test_xy_md02_tenths() -> None:
    temperature = field(DataType.I16, name="temperature", quantity="temperature", unit="Cel", scale=0.1)
    assert decode_field(temperature, [215]) == (21.5, None)
    assert decode_field(temperature, [0xFF38]) == (-20.0, None)
    energy = field(DataType.U32, length=2, scale=1000.0, counter=True)
    assert decode_field(energy, [0, 7]) == (7000, 7)


# --- counters ---------------------------------------------------------------------------------


def meter(kind: DataType) -> Field:
    return field(kind, name="activeEnergyImport", quantity="activeEnergyImport", unit="Wh", counter=True)


def test_counter_rollover_reset_and_steady() -> None:
    counters = Counters()
    u16 = meter(DataType.U16)
    assert counters.observe(u16, 65000) is CounterEvent.NONE
    assert counters.observe(u16, 65500) is CounterEvent.NONE
    assert counters.observe(u16, 20) is CounterEvent.ROLLOVER  # wrapped past 65535
    assert counters.observe(u16, 30000) is CounterEvent.NONE
    assert counters.observe(u16, 5) is CounterEvent.RESET  # from the middle of the range: a reset
    f32 = meter(DataType.F32)
    assert counters.observe(f32, 1234.5) is CounterEvent.NONE
    assert counters.observe(f32, 0.0) is CounterEvent.RESET  # floats do not wrap
    assert (counters.rollovers, counters.resets) == (1, 2)


@given(st.lists(st.integers(0, 0xFFFF), min_size=1, max_size=50))
def test_counter_readings_are_the_meter_values_and_every_decrease_is_flagged(values: list[int]) -> None:
    spec = meter(DataType.U16)
    (request,) = ReadPlan.build([spec], max_gap=0).requests
    counters = Counters()
    previous = None
    for value in values:
        decoded = decode_response(request, [value], device="m", time=1.0, counters=counters)
        (reading,) = decoded.readings
        assert reading.value == value >= 0  # the cumulative reading, never a delta
        went_down = previous is not None and value < previous
        assert bool(reading.flags & Flag.COUNTER_ROLLOVER) == went_down
        previous = value
