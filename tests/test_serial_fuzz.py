"""Fuzzing the serial decoders and framers with hypothesis.

Every decoder gets random bytes, mutated datasheet frames and well-formed frames with random
contents: nothing may escape but :class:`DecodeError` (with a :class:`Reason` and a detail), and a
frame with a valid checksum decodes to exactly its fields. Every framer gets random streams cut at
random places: it never raises, keeps less than one frame buffered, and only emits frames the
decoder accepts. The short form runs by default (2,000 examples per decoder, 300 per stream property);
``-m long`` runs 100,000 examples per decoder.
"""

from __future__ import annotations

import itertools
import struct
from collections.abc import Callable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from citygw.drivers.serial import (
    DecodeError,
    FieldRule,
    FixedFramer,
    LineDecoder,
    LineFormat,
    LineFramer,
    Measurement,
    NmeaFramer,
    decode_mhz19,
    decode_nmea,
    decode_pms5003,
    decode_sds011,
)
from citygw.drivers.serial.decoders import MHZ19, PMS5003, REASONS, SDS011, FixedFormat, nmea_checksum
from citygw.errors import Reason

from .mutation import mutated
from .test_serial_decoders import GGA, MHZ, PMS, RMC, SDS, VTG

SHORT = settings(max_examples=2000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
STREAMS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
LONG = settings(max_examples=100_000, deadline=None, database=None, suppress_health_check=list(HealthCheck))

Decode = Callable[[bytes], list[Measurement]]


# --- strategies ----------------------------------------------------------------------------------


def frames_of(seed: bytes, size: int) -> st.SearchStrategy[bytes]:
    return st.one_of(st.binary(max_size=size * 2), mutated(seed))


@st.composite
def pms_frames(draw: st.DrawFn) -> tuple[bytes, list[int]]:
    words = draw(st.lists(st.integers(0, 0xFFFF), min_size=13, max_size=13))
    body = struct.pack(">2sH13H", b"BM", 28, *words)
    return body + struct.pack(">H", sum(body) & 0xFFFF), words


@st.composite
def sds_frames(draw: st.DrawFn) -> tuple[bytes, bytes]:
    data = draw(st.binary(min_size=6, max_size=6))
    return b"\xaa\xc0" + data + bytes([sum(data) & 0xFF, 0xAB]), data


@st.composite
def mhz_frames(draw: st.DrawFn) -> tuple[bytes, bytes]:
    data = draw(st.binary(min_size=6, max_size=6))
    body = b"\x86" + data
    return b"\xff" + body + bytes([-sum(body) & 0xFF]), data


_FIELD = st.one_of(
    st.sampled_from(
        ["", "A", "V", "N", "S", "E", "W", "K", "T", "M", "0", "1", "08", "4807.038", "01131.000"]
    ),
    st.from_regex(r"[0-9]{1,6}(\.[0-9]{0,5})?", fullmatch=True),  # ASCII digits, as a GPS sends
    st.text(st.characters(min_codepoint=32, max_codepoint=126, exclude_characters="*,$"), max_size=12),
)


@st.composite
def nmea_sentences(draw: st.DrawFn) -> bytes:
    """Sentences with a valid checksum and fields of every sort, right and wrong."""
    talker = draw(st.sampled_from(["GP", "GN", "GL", "BD", "P", "GPX", ""]))
    kind = draw(st.sampled_from(["RMC", "GGA", "VTG", "GSV", "GSA"]))
    fields = draw(st.lists(_FIELD, max_size=16))
    body = ",".join([talker + kind, *fields]).encode()
    return b"$" + body + f"*{nmea_checksum(body):02X}".encode()


def check(decode: Decode, frame: bytes) -> list[Measurement]:
    """Decode, allowing only a DecodeError with a reason and a detail."""
    try:
        result = decode(frame)
    except DecodeError as exc:
        assert exc.reason in REASONS  # a serial reason
        assert exc.detail
        return []
    assert all(isinstance(m, Measurement) and isinstance(m.name, str) for m in result)
    return result


# --- decoders ------------------------------------------------------------------------------------

DECODERS: dict[str, tuple[Decode, st.SearchStrategy[bytes]]] = {
    "pms5003": (decode_pms5003, frames_of(PMS, 32)),
    "sds011": (decode_sds011, frames_of(SDS, 10)),
    "mhz19": (decode_mhz19, frames_of(MHZ, 9)),
    "nmea": (
        decode_nmea,
        st.one_of(
            frames_of(RMC, 80), mutated(GGA), mutated(VTG), nmea_sentences(), mutated(b"$GPRMC,1,A,4807.038")
        ),
    ),
    "lines-regex": (
        LineDecoder(
            LineFormat.REGEX,
            {"v": FieldRule("speed", "km/h", scale=3.6), "n": FieldRule("intensity", "count")},
            pattern=r"v=(?P<v>\S+)(?: n=(?P<n>\S*))?",
        ).decode,
        st.one_of(
            st.binary(max_size=60),
            mutated(b"v=12.5 n=3"),
            st.from_regex(r"v=\S{0,30} n=\S{0,30}").map(str.encode),
        ),
    ),
    "lines-csv": (
        LineDecoder(
            LineFormat.CSV,
            {"speed": FieldRule("speed", "km/h", offset=-1.0), "count": FieldRule("intensity", "count")},
            columns=("time", "speed", "count"),
        ).decode,
        st.one_of(st.binary(max_size=60), mutated(b'12:00,"51.5",4'), mutated(b"time,speed,count")),
    ),
    "lines-json": (
        LineDecoder(LineFormat.JSON, {"t": FieldRule("temperature", "Cel", scale=1e308)}).decode,
        st.one_of(
            st.binary(max_size=60),
            mutated(b'{"t": 21.5}'),
            st.builds(lambda v: f'{{"t": {v}}}'.encode(), st.from_regex(r"-?\d{1,400}(\.\d*)?(e-?\d{1,4})?")),
            st.just(b'{"t": ' + b"[" * 10_000 + b"]" * 10_000 + b"}"),
        ),
    ),
}


def _fuzz_decoder(name: str, settings_: settings) -> int:
    """Run the decoder's fuzz test; how many examples it ran."""
    decode, frames = DECODERS[name]
    runs = 0

    @settings_
    @given(frames)
    def run(frame: bytes) -> None:
        nonlocal runs
        runs += 1
        check(decode, frame)

    run()
    return runs


@pytest.mark.parametrize("name", DECODERS)
def test_decoder_fuzz(name: str) -> None:
    assert _fuzz_decoder(name, SHORT) >= 2000


@pytest.mark.long
@pytest.mark.timeout(3600)  # 100,000 examples take minutes, more than the suite's per-test limit
@pytest.mark.parametrize("name", DECODERS)
def test_decoder_fuzz_long(name: str) -> None:
    assert _fuzz_decoder(name, LONG) >= 100_000


# --- well-formed frames decode to exactly their fields --------------------------------------------


@STREAMS
@given(pms_frames())
def test_pms5003_any_valid_frame(case: tuple[bytes, list[int]]) -> None:
    frame, words = case
    assert decode_pms5003(frame) == [
        Measurement("pm1", words[3], "ug/m3"),
        Measurement("pm25", words[4], "ug/m3"),
        Measurement("pm10", words[5], "ug/m3"),
    ]


@STREAMS
@given(sds_frames())
def test_sds011_any_valid_frame(case: tuple[bytes, bytes]) -> None:
    frame, data = case
    assert decode_sds011(frame) == [
        Measurement("pm25", (data[1] * 256 + data[0]) / 10, "ug/m3"),
        Measurement("pm10", (data[3] * 256 + data[2]) / 10, "ug/m3"),
    ]


@STREAMS
@given(mhz_frames())
def test_mhz19_any_valid_frame(case: tuple[bytes, bytes]) -> None:
    frame, data = case
    assert decode_mhz19(frame) == [Measurement("co2", data[0] * 256 + data[1], "ppm")]


@STREAMS
@given(nmea_sentences())
def test_nmea_any_checksummed_sentence(sentence: bytes) -> None:
    try:
        result = decode_nmea(sentence)
    except DecodeError as exc:
        assert exc.reason in (Reason.SYNTAX, Reason.VALUE)  # the framing itself is right
        return
    for m in result:
        if m.name == "latitude":
            assert isinstance(m.value, float) and -90 <= m.value <= 90
        if m.name == "longitude":
            assert isinstance(m.value, float) and -180 <= m.value <= 180


# --- framers -------------------------------------------------------------------------------------

FIXED: dict[str, tuple[FixedFormat, Decode, st.SearchStrategy[bytes]]] = {
    "pms5003": (PMS5003, decode_pms5003, pms_frames().map(lambda case: case[0])),
    "sds011": (SDS011, decode_sds011, sds_frames().map(lambda case: case[0])),
    "mhz19": (MHZ19, decode_mhz19, mhz_frames().map(lambda case: case[0])),
}


def cut(data: bytes, places: list[int]) -> list[bytes]:
    """``data`` cut at ``places`` (positions taken modulo its length)."""
    points = sorted({p % (len(data) + 1) for p in places} | {0, len(data)})
    return [data[a:b] for a, b in itertools.pairwise(points)]


@STREAMS
@pytest.mark.parametrize("name", FIXED)
@given(data=st.data())
def test_fixed_framer_finds_every_frame_between_noise(name: str, data: st.DataObject) -> None:
    fmt, _, frames = FIXED[name]
    sent = data.draw(st.lists(frames, max_size=8))
    noise = st.binary(max_size=40).map(lambda b: b.replace(fmt.sync[:1], b""))  # noise with no start byte
    stream = b"".join(data.draw(noise) + frame for frame in sent) + data.draw(noise)
    framer = FixedFramer(fmt)
    got: list[bytes] = []
    for piece in cut(stream, data.draw(st.lists(st.integers(0, 1000), max_size=20))):
        frames_, rejects = framer.feed(piece)
        assert rejects == []
        got += frames_
    assert got == sent
    assert framer.skipped == len(stream) - sum(map(len, sent))


@STREAMS
@pytest.mark.parametrize("name", FIXED)
@given(data=st.data())
def test_fixed_framer_on_any_stream(name: str, data: st.DataObject) -> None:
    fmt, decode, frames = FIXED[name]
    parts = data.draw(
        st.lists(st.one_of(st.binary(max_size=40), frames, frames.flatmap(mutated)), max_size=10)
    )
    framer = FixedFramer(fmt)
    for piece in cut(b"".join(parts), data.draw(st.lists(st.integers(0, 1000), max_size=20))):
        out, rejects = framer.feed(piece)
        for frame in out:
            assert decode(frame)  # every frame emitted is valid
        assert all(r.reason in ("checksum", "trailer") for r in rejects)
        assert len(framer._rest) < fmt.size  # never more than one partial frame held


@STREAMS
@given(data=st.data())
def test_nmea_framer_on_any_stream(data: st.DataObject) -> None:
    lines = data.draw(
        st.lists(st.one_of(nmea_sentences(), mutated(RMC), st.binary(max_size=300)), max_size=8)
    )
    eol = data.draw(st.sampled_from([b"\n", b"\r\n"]))
    framer = NmeaFramer()
    for piece in cut(eol.join(lines) + eol, data.draw(st.lists(st.integers(0, 3000), max_size=20))):
        out, _ = framer.feed(piece)
        for sentence in out:
            try:
                decode_nmea(sentence)
            except DecodeError as exc:
                assert exc.reason in (Reason.SYNTAX, Reason.VALUE)
        assert len(framer._rest) <= framer.max_length


@STREAMS
@given(data=st.data())
def test_line_framer_returns_every_short_line(data: st.DataObject) -> None:
    text = st.binary(max_size=30).map(lambda b: b.replace(b"\n", b"").strip())
    lines = data.draw(st.lists(text.filter(bool), max_size=10))
    framer = LineFramer(max_length=64)
    got: list[bytes] = []
    for piece in cut(b"\r\n".join(lines) + b"\n", data.draw(st.lists(st.integers(0, 500), max_size=20))):
        out, rejects = framer.feed(piece)
        assert rejects == []
        got += out
    assert got == [line.rstrip(b"\r") for line in lines]
