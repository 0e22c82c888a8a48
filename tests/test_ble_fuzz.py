"""Fuzzing the BLE decoders with hypothesis.

Each decoder gets random bytes, mutated spec examples and well-formed adverts with random contents:
nothing may escape but :class:`DecodeError` (with a :class:`Reason` and a detail), every value is a
finite number, a bool or text under a vocabulary name, and a well-formed advert decodes to exactly
its fields. The short form runs by default; ``-m long`` runs 100,000 examples per decoder.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Callable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from citygw.drivers.ble import bthome, pvvx, ruuvi
from citygw.drivers.ble.common import REASONS
from citygw.errors import DecodeError, Reason
from citygw.reading import Measurement

from .mutation import mutated

SHORT = settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
LONG = settings(max_examples=100_000, deadline=None, suppress_health_check=list(HealthCheck))

KEY = bthome.Key(bytes.fromhex("231d39c1d7cc1ab1aee224cd096db932"), "54:48:E6:8F:80:A5")
SEEDS: dict[str, bytes] = {
    "bthome": bytes.fromhex("40000902CA0903BF13530C48656C6C6F20576F726C64213A013C0103"),
    "bthome-encrypted": bytes.fromhex("41A47266C95F730011223378237214"),
    "ruuvi": bytes.fromhex("0512FC5394C37C0004FFFC040CAC364200CDCBB8334C884F"),
    "pvvx": bytes.fromhex("ED5E0B38C1A42909001486 0B572A05".replace(" ", "")),
    "atc": bytes.fromhex("A4C1380B5EEDFFCB30400B0007"),
}


def _bthome(data: bytes) -> list[Measurement]:
    return bthome.decode(data).measurements


def _bthome_key(data: bytes) -> list[Measurement]:
    return bthome.decode(data, KEY).measurements


def _ruuvi(data: bytes) -> list[Measurement]:
    return ruuvi.decode(data).measurements


def _pvvx(data: bytes) -> list[Measurement]:
    return pvvx.decode(data).measurements


DECODERS: dict[str, tuple[Callable[[bytes], list[Measurement]], bytes]] = {
    "bthome": (_bthome, SEEDS["bthome"]),
    "bthome-encrypted": (_bthome_key, SEEDS["bthome-encrypted"]),
    "ruuvi": (_ruuvi, SEEDS["ruuvi"]),
    "pvvx": (_pvvx, SEEDS["pvvx"]),
    "atc": (_pvvx, SEEDS["atc"]),
}


def anything(seed: bytes) -> st.SearchStrategy[bytes]:
    return st.one_of(st.binary(max_size=40), mutated(seed))


def check(decode: Callable[[bytes], list[Measurement]], data: bytes) -> None:
    try:
        measurements = decode(data)
    except DecodeError as exc:
        assert exc.reason in REASONS and exc.detail  # a BLE reason
        return
    for name, value, unit in measurements:
        assert name and isinstance(unit, str)
        assert isinstance(value, bool | int | float | str)
        if isinstance(value, float):
            assert math.isfinite(value)


@st.composite
def bthome_objects(draw: st.DrawFn) -> tuple[bytes, int]:
    """A well-formed plaintext advert of random known objects in ascending id order, and how many
    readings it must give (packet id, skipped objects and "none" events give none)."""
    ids = sorted(draw(st.lists(st.sampled_from(sorted(bthome.OBJECTS)), max_size=6)))
    out = bytearray(b"\x40")
    readings = 0
    for oid in ids:
        obj = bthome.OBJECTS[oid]
        out.append(oid)
        if obj.kind is bthome.Kind.TEXT:
            text = draw(st.text(max_size=8)).encode()
            out += bytes((len(text),)) + text
        elif obj.kind is bthome.Kind.RAW:
            raw = draw(st.binary(max_size=8))
            out += bytes((len(raw),)) + raw
        elif obj.kind is bthome.Kind.BUTTON:
            event = draw(st.sampled_from([0, *bthome.BUTTON_EVENTS]))
            out.append(event)
            readings += event != 0
            continue
        elif obj.kind is bthome.Kind.DIMMER:
            event = draw(st.integers(0, 2))
            out += bytes((event, draw(st.integers(0, 255))))
            readings += event != 0
            continue
        else:
            out += draw(st.binary(min_size=obj.size, max_size=obj.size))
        readings += obj.kind not in (bthome.Kind.PACKET_ID, bthome.Kind.SKIP)
    return bytes(out), readings


def _bthome_well_formed(case: tuple[bytes, int]) -> None:
    data, readings = case
    decoded = bthome.decode(data)
    assert len(decoded.measurements) == readings
    assert decoded.unknown is None


def _ruuvi_well_formed(fields: tuple[int, ...]) -> None:
    temp, hum, pres, ax, ay, az, battery, tx, moves, seq = fields
    data = struct.pack(
        ">BhHHhhhHBH6s", 5, temp, hum, pres, ax, ay, az, battery << 5 | tx, moves, seq, b"\x01" * 6
    )
    try:
        decoded = ruuvi.decode(data)
    except DecodeError as exc:
        assert exc.reason is Reason.EMPTY
        return
    names = [m.name for m in decoded.measurements]
    assert ("temperature" in names) == (temp != -32768)
    assert ("relativeHumidity" in names) == (hum != 0xFFFF)
    assert ("atmosphericPressure" in names) == (pres != 0xFFFF)
    assert ("batteryVoltage" in names) == (battery != 0x7FF)
    assert ("movementCounter" in names) == (moves != 0xFF)
    assert decoded.key == (None if seq == 0xFFFF else seq)


RUUVI_FIELDS = st.tuples(
    st.integers(-32768, 32767),
    st.integers(0, 0xFFFF),
    st.integers(0, 0xFFFF),
    st.integers(-32768, 32767),
    st.integers(-32768, 32767),
    st.integers(-32768, 32767),
    st.integers(0, 0x7FF),
    st.integers(0, 31),
    st.integers(0, 255),
    st.integers(0, 0xFFFF),
)


@pytest.mark.parametrize("name", list(DECODERS))
def test_decoders_only_raise_decode_errors(name: str) -> None:
    decode, seed = DECODERS[name]
    given(anything(seed))(SHORT(lambda data: check(decode, data)))()


def test_bthome_well_formed_adverts_decode_completely() -> None:
    given(bthome_objects())(SHORT(_bthome_well_formed))()


def test_ruuvi_well_formed_adverts_omit_exactly_the_not_available_fields() -> None:
    given(RUUVI_FIELDS)(SHORT(_ruuvi_well_formed))()


@pytest.mark.long
@pytest.mark.parametrize("name", list(DECODERS))
def test_decoders_only_raise_decode_errors_long(name: str) -> None:
    decode, seed = DECODERS[name]
    given(anything(seed))(LONG(lambda data: check(decode, data)))()


@pytest.mark.long
def test_bthome_well_formed_adverts_long() -> None:
    given(bthome_objects())(LONG(_bthome_well_formed))()


@pytest.mark.long
def test_ruuvi_well_formed_adverts_long() -> None:
    given(RUUVI_FIELDS)(LONG(_ruuvi_well_formed))()
