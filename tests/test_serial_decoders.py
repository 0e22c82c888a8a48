"""Serial decoders and framers: datasheet frames in, the whole expected result out.

Frames cite their source: the PMS5003 data manual (appendix I, active-mode transport protocol),
the Nova "Laser Dust Sensor Control Protocol" V1.3 (data report 0xC0), the Winsen MH-Z19B manual
(command 0x86 and its worked example) and NMEA 0183 (RMC, GGA, VTG; the long-standing reference
sentences of the NMEA documentation). Then the stream cases: split reads, several frames per
read, noise, a bad checksum in the middle, a false start; and ``citygw decode``.
"""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest

from citygw.commands.decode import decode_main
from citygw.drivers.serial import (
    DecodeError,
    FieldRule,
    FixedFramer,
    LineDecoder,
    LineFormat,
    LineFramer,
    Measurement,
    NmeaFix,
    NmeaFramer,
    decode_mhz19,
    decode_nmea,
    decode_pms5003,
    decode_sds011,
)
from citygw.drivers.serial.decoders import MHZ19, MHZ19_READ, PMS5003, SDS011
from citygw.errors import Reason

M = Measurement

# PMS5003 appendix I: 42 4D, frame length 28, data 1-3 PM CF=1 (11, 17, 20), data 4-6 PM under
# atmospheric environment (9, 14, 19), data 7-12 particle counts per 0.1 L, data 13 version 0x97
# and error code 0, check code 0x02B2 = the sum of bytes 0 to 29.
PMS = bytes.fromhex(
    "42 4d 00 1c 00 0b 00 11 00 14 00 09 00 0e 00 13 07 6e 02 25 00 68 00 0c 00 04 00 02 97 00 02 b2"
)
PMS_READINGS = [M("pm1", 9, "ug/m3"), M("pm25", 14, "ug/m3"), M("pm10", 19, "ug/m3")]
# SDS011 protocol V1.3: AA C0, PM2.5 0x04D4 = 1236 -> 123.6, PM10 0x0A3A = 2618 -> 261.8, id A1 60,
# checksum 0x1D = low byte of D4+04+3A+0A+A1+60, AB.
SDS = bytes.fromhex("AA C0 D4 04 3A 0A A1 60 1D AB")
SDS_READINGS = [M("pm25", 123.6, "ug/m3"), M("pm10", 261.8, "ug/m3")]
# MH-Z19B manual, 0x86: "send FF 01 86 00 00 00 00 00 79, return FF 86 02 20 00 00 00 00 58",
# 2 * 256 + 32 = 544 ppm.
MHZ = bytes.fromhex("FF 86 02 20 00 00 00 00 58")
RMC = b"$GPRMC,123519,A,4807.038,N,01131.000,E,022.4,084.4,230394,003.1,W*6A"
GGA = b"$GPGGA,123519,4807.038,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,*47"
VTG = b"$GPVTG,054.7,T,034.4,M,005.5,N,010.2,K*48"
LAT, LON = M("latitude", 48.1173, "lat"), M("longitude", 11.5166667, "lon")


def nmea(body: str) -> bytes:
    """A sentence with its checksum computed (for cases no reference sentence covers)."""
    check = 0
    for char in body.encode():
        check ^= char
    return f"${body}*{check:02X}".encode()


def reason_of(decode: Callable[[bytes], object], frame: bytes) -> Reason:
    with pytest.raises(DecodeError) as info:
        decode(frame)
    return info.value.reason


# --- one frame -----------------------------------------------------------------------------------


def test_pms5003_datasheet_frame_gives_atmospheric_pm() -> None:
    assert decode_pms5003(PMS) == PMS_READINGS


def test_sds011_datasheet_frame() -> None:
    assert decode_sds011(SDS) == SDS_READINGS


def test_mhz19_manual_example_and_read_command() -> None:
    assert decode_mhz19(MHZ) == [M("co2", 544, "ppm")]
    assert MHZ19_READ.hex(" ") == "ff 01 86 00 00 00 00 00 79"  # the manual's command


def test_nmea_rmc_gga_vtg() -> None:
    # RMC: 4807.038 N = 48 deg 7.038 min; 022.4 knots = 41.4848 km/h
    assert decode_nmea(RMC) == [LAT, LON, M("speed", 41.4848, "km/h")]
    assert decode_nmea(GGA) == [LAT, LON, M("fixQuality", 1, ""), M("satellites", 8, "count")]
    assert decode_nmea(VTG) == [M("speed", 10.2, "km/h")]
    assert decode_nmea(RMC + b"\r\n") == decode_nmea(RMC)


def test_nmea_one_report_per_fix() -> None:
    # a GPS sending RMC, GGA and VTG for each fix: one location, one speed per fix (the first given)
    fix = NmeaFix()
    second = [
        nmea("GPRMC,123520,A,4807.040,N,01131.000,E,022.4,084.4,230394,003.1,W"),
        nmea("GPGGA,123520,4807.040,N,01131.000,E,1,09,0.9,545.4,M,46.9,M,,"),
        nmea("GPVTG,054.7,T,034.4,M,005.5,N,010.2,K"),
    ]
    reports = [fix.decode(sentence) for sentence in [RMC, GGA, VTG, *second]]
    assert reports == [
        [LAT, LON, M("speed", 41.4848, "km/h")],
        [M("fixQuality", 1, ""), M("satellites", 8, "count")],
        [],
        [M("latitude", 48.1173333, "lat"), LON, M("speed", 41.4848, "km/h")],
        [M("fixQuality", 1, ""), M("satellites", 9, "count")],
        [],
    ]
    locations = sum(m.name == "latitude" for report in reports for m in report)
    assert locations == 2  # two fixes; decode_nmea alone gives four
    assert sum(m.name == "latitude" for s in [RMC, GGA, VTG, *second] for m in decode_nmea(s)) == 4


def test_nmea_without_a_time_reports_every_sentence() -> None:
    # VTG carries no time: a GPS sending only VTG is not held back
    fix = NmeaFix()
    assert [fix.decode(VTG) for _ in range(3)] == [[M("speed", 10.2, "km/h")]] * 3


def test_nmea_south_west_and_other_talkers() -> None:
    sentence = nmea("GNGGA,002153.000,3342.6618,S,11751.3858,W,2,10,1.2,27.0,M,-34.2,M,,0000")
    assert decode_nmea(sentence) == [
        M("latitude", -33.71103, "lat"),
        M("longitude", -117.8564300, "lon"),
        M("fixQuality", 2, ""),
        M("satellites", 10, "count"),
    ]


def test_nmea_without_fix_gives_no_location() -> None:
    assert decode_nmea(nmea("GPRMC,123519,V,,,,,,,230394,,,N")) == []
    assert decode_nmea(nmea("GPGGA,123519,,,,,0,00,99.9,,M,,M,,")) == [
        M("fixQuality", 0, ""),
        M("satellites", 0, "count"),
    ]
    assert decode_nmea(nmea("GPVTG,,T,,M,,N,,K,N")) == []


def test_nmea_sentences_not_read_are_valid_and_empty() -> None:
    assert decode_nmea(nmea("GPGSV,3,1,11,03,03,111,00,04,15,270,00,06,01,010,00,13,06,292,00")) == []
    assert decode_nmea(nmea("PUBX,00,081350.00,4717.113210,N")) == []


@pytest.mark.parametrize(
    ("frame", "reason"),
    [
        (PMS[:31], Reason.SHORT),
        (PMS + b"\x00", Reason.LONG),
        (b"\x42\x4e" + PMS[2:], Reason.HEADER),
        (PMS[:3] + b"\x14" + PMS[4:], Reason.LENGTH),  # a PMS3003-style length (20)
        (PMS[:10] + b"\x01" + PMS[11:], Reason.CHECKSUM),  # PM1.0 CF=1 low byte 0x09 -> 0x01
        (PMS[:31] + b"\xb3", Reason.CHECKSUM),
    ],
)
def test_pms5003_refusals(frame: bytes, reason: Reason) -> None:
    assert reason_of(decode_pms5003, frame) is reason


@pytest.mark.parametrize(
    ("frame", "reason"),
    [
        (SDS[:9], Reason.SHORT),
        (SDS[:1] + b"\xc5" + SDS[2:], Reason.HEADER),  # a reply to a command, not a data report
        (SDS[:9] + b"\xaa", Reason.TRAILER),
        (SDS[:2] + b"\xd5" + SDS[3:], Reason.CHECKSUM),
    ],
)
def test_sds011_refusals(frame: bytes, reason: Reason) -> None:
    assert reason_of(decode_sds011, frame) is reason


@pytest.mark.parametrize(
    ("frame", "reason"),
    [
        (MHZ[:8], Reason.SHORT),
        (MHZ19_READ, Reason.HEADER),  # our own command echoed back
        (MHZ[:8] + b"\x59", Reason.CHECKSUM),
    ],
)
def test_mhz19_refusals(frame: bytes, reason: Reason) -> None:
    assert reason_of(decode_mhz19, frame) is reason


@pytest.mark.parametrize(
    ("frame", "reason"),
    [
        (RMC[1:], Reason.HEADER),
        (RMC[:-3], Reason.CHECKSUM),  # no *hh
        (RMC[:-2] + b"6B", Reason.CHECKSUM),
        (RMC[:-2] + b"ZZ", Reason.SYNTAX),
        (nmea("GPRMC,123519,A,4807.038"), Reason.SYNTAX),  # too few fields
        (nmea("GPRMC,123519,A,4867.038,N,01131.000,E,022.4,084.4,230394,003.1,W"), Reason.VALUE),  # 67 min
        (nmea("GPRMC,123519,A,4807.038,X,01131.000,E,022.4,084.4,230394,003.1,W"), Reason.VALUE),
        (nmea("GPRMC,123519,A,4807.038,N,01131.000,E,fast,084.4,230394,003.1,W"), Reason.VALUE),
        (nmea("GPGGA,123519,4807.038,N,01131.000,E,x,08,0.9,545.4,M,46.9,M,,"), Reason.VALUE),
        (nmea("GPVTG,054.7,T,034.4,M,005.5,N,010.2,M"), Reason.SYNTAX),
        (b"$" + b"A" * 300 + b"*00", Reason.LONG),
    ],
)
def test_nmea_refusals(frame: bytes, reason: Reason) -> None:
    assert reason_of(decode_nmea, frame) is reason


def test_decode_error_names_its_reason() -> None:
    with pytest.raises(DecodeError) as info:
        decode_pms5003(PMS[:20])
    assert str(info.value) == "short: 20 bytes; a pms5003 frame is 32"
    assert info.value.detail == "20 bytes; a pms5003 frame is 32"


# --- streams -------------------------------------------------------------------------------------


def test_fixed_framer_frame_split_byte_by_byte() -> None:
    framer = FixedFramer(PMS5003)
    out = [framer.feed(PMS[i : i + 1]) for i in range(len(PMS))]
    assert out[:-1] == [([], [])] * 31
    assert out[-1] == ([PMS], [])
    assert framer.skipped == 0


def test_fixed_framer_several_frames_noise_and_a_bad_checksum() -> None:
    bad = PMS[:10] + b"\x01" + PMS[11:]
    stream = b"\x00\x1c\x4d" + PMS + b"noise BM\x42" + bad + PMS + PMS + b"\x42"
    framer = FixedFramer(PMS5003)
    frames, rejects = framer.feed(stream)
    assert frames == [PMS, PMS, PMS]
    assert [r.reason for r in rejects] == ["checksum"]
    assert framer.skipped == 3 + 9 + 32  # leading bytes, the noise, the refused frame
    assert framer.feed(PMS[1:]) == ([PMS], [])  # the trailing 0x42 was kept as a frame's start


def test_fixed_framer_finds_a_frame_behind_a_false_start() -> None:
    # a frame cut short (bytes lost on the wire) and the next frame starting inside its 32 bytes
    framer = FixedFramer(PMS5003)
    frames, rejects = framer.feed(PMS[:12] + PMS)
    assert frames == [PMS]
    assert [r.reason for r in rejects] == ["checksum"]


def test_sds011_and_mhz19_framers() -> None:
    framer = FixedFramer(SDS011)
    bad_tail = SDS[:9] + b"\x00"
    assert framer.feed(b"\xab\xaa" + SDS[:4]) == ([], [])
    frames, rejects = framer.feed(SDS[4:] + bad_tail + SDS)
    assert frames == [SDS, SDS]
    assert [r.reason for r in rejects] == ["trailer"]
    framer = FixedFramer(MHZ19)
    assert framer.feed(MHZ19_READ + MHZ + b"\xff") == ([MHZ], [])
    assert framer.feed(MHZ[1:]) == ([MHZ], [])


def test_nmea_framer_noise_split_and_bad_checksum() -> None:
    framer = NmeaFramer()
    stream = b"A,1.2,M*4F\r\n" + b"\x00\xff$GP" + RMC + b"\r\n" + GGA[:20]
    frames, rejects = framer.feed(stream)
    assert (frames, rejects) == ([RMC], [])  # the first line had no '$'; garbage before '$' is skipped
    frames, rejects = framer.feed(GGA[20:] + b"\r\n" + VTG[:-1] + b"9\r\n" + VTG + b"\r\n")
    assert frames == [GGA, VTG]
    assert [r.reason for r in rejects] == ["checksum"]


def test_line_framer_crlf_blank_and_overlong_lines() -> None:
    framer = LineFramer(max_length=16)
    assert framer.feed(b"speed=12\r\n\r\nspe") == ([b"speed=12"], [])
    assert framer.feed(b"ed=13\n") == ([b"speed=13"], [])
    frames, rejects = framer.feed(b"x" * 20)
    assert frames == [] and [r.reason for r in rejects] == ["long"]
    assert framer.feed(b"more of it\nspeed=14\n") == ([b"speed=14"], [])  # refused once, dropped to its end
    frames, rejects = framer.feed(b"y" * 17 + b"\nspeed=15\n")
    assert frames == [b"speed=15"] and [r.reason for r in rejects] == ["long"]


# --- the line protocol ---------------------------------------------------------------------------

SPEED = FieldRule("averageVehicleSpeed", "km/h")
COUNT = FieldRule("intensity", "count")


def test_regex_lines_with_scale_and_offset() -> None:
    decoder = LineDecoder(
        LineFormat.REGEX,
        {"v": SPEED, "n": COUNT, "t": FieldRule("temperature", "Cel", scale=0.1, offset=-40.0)},
        pattern=r"^V(?P<v>[\d.]+) N(?P<n>\d+)(?: T(?P<t>\d+))?$",
    )
    assert decoder.decode(b"V42.5 N7 T650") == [
        M("averageVehicleSpeed", 42.5, "km/h"),
        M("intensity", 7, "count"),
        M("temperature", 25.0, "Cel"),
    ]
    assert decoder.decode(b"V40 N3") == [M("averageVehicleSpeed", 40, "km/h"), M("intensity", 3, "count")]
    assert reason_of(decoder.decode, b"booting radar v1.2") is Reason.SYNTAX
    assert reason_of(decoder.decode, "V٤٢ N7".encode()) is Reason.VALUE  # digits, but not ASCII ones


def test_csv_lines_skip_the_header() -> None:
    decoder = LineDecoder(
        LineFormat.CSV, {"speed": SPEED, "count": COUNT}, columns=("time", "speed", "count"), delimiter=";"
    )
    assert decoder.decode(b"time;speed;count") == []
    assert decoder.decode(b"12:00:01; 51.2 ;4") == [
        M("averageVehicleSpeed", 51.2, "km/h"),
        M("intensity", 4, "count"),
    ]
    assert decoder.decode(b"12:00:02;;4") == [M("intensity", 4, "count")]
    assert reason_of(decoder.decode, b"12:00:03;50") is Reason.SYNTAX
    assert reason_of(decoder.decode, b"12:00:03;fast;4") is Reason.VALUE


def test_json_lines() -> None:
    decoder = LineDecoder(
        LineFormat.JSON, {"t": FieldRule("temperature", "Cel"), "rh": FieldRule("relativeHumidity", "%RH")}
    )
    assert decoder.decode(b'{"t": 21.5, "rh": "63", "other": 1}') == [
        M("temperature", 21.5, "Cel"),
        M("relativeHumidity", 63, "%RH"),
    ]
    assert decoder.decode(b'{"rh": 60}') == [M("relativeHumidity", 60, "%RH")]
    assert reason_of(decoder.decode, b'{"other": 1}') is Reason.VALUE
    assert reason_of(decoder.decode, b'{"t": true}') is Reason.VALUE
    assert reason_of(decoder.decode, b'{"t": NaN}') is Reason.VALUE
    assert reason_of(decoder.decode, b"[21.5]") is Reason.SYNTAX
    assert reason_of(decoder.decode, b"\xff\xfe") is Reason.SYNTAX


# --- citygw decode -------------------------------------------------------------------------------


def test_cli_decode_prints_json_lines(capsys: pytest.CaptureFixture[str]) -> None:
    assert decode_main("pms5003", PMS.hex(" "), bindkey=None, address=None) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert lines == [
        {"device": "pms5003", "name": "pm1", "value": 9, "unit": "ug/m3"},
        {"device": "pms5003", "name": "pm25", "value": 14, "unit": "ug/m3"},
        {"device": "pms5003", "name": "pm10", "value": 19, "unit": "ug/m3"},
    ]


@pytest.mark.parametrize(
    ("fmt", "data", "expected"),
    [
        ("sds011", "aa:c0:d4:04:3a:0a:a1:60:1d:ab", [("pm25", 123.6, "ug/m3"), ("pm10", 261.8, "ug/m3")]),
        ("mhz19", "0xFF 0x86 0x02 0x20 0x00 0x00 0x00 0x00 0x58", [("co2", 544, "ppm")]),
        (
            "nmea",
            RMC.decode(),
            [("latitude", 48.1173, "lat"), ("longitude", 11.5166667, "lon"), ("speed", 41.4848, "km/h")],
        ),
        ("NMEA", VTG.hex(), [("speed", 10.2, "km/h")]),
    ],
)
def test_cli_decode_formats(
    capsys: pytest.CaptureFixture[str], fmt: str, data: str, expected: list[tuple[str, object, str]]
) -> None:
    assert decode_main(fmt, data, bindkey=None, address=None) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(d["name"], d["value"], d["unit"]) for d in lines] == expected
    assert {d["device"] for d in lines} == {fmt.lower()}


@pytest.mark.parametrize(
    ("fmt", "data", "code", "message"),
    [
        ("pms5003", PMS[:31].hex(), 1, "citygw decode: pms5003: short: 31 bytes; a pms5003 frame is 32\n"),
        (
            "mhz19",
            MHZ[:8].hex() + "59",
            1,
            "citygw decode: mhz19: checksum: mhz19 frame ff 86 02 20 00 00 00 00 59\n",
        ),
        (
            "sds011",
            "ab" + SDS.hex()[2:],
            1,
            "citygw decode: sds011: header: starts with ab c0; a sds011 frame starts with aa c0\n",
        ),
        ("nmea", RMC[:-2].decode() + "00", 1, "citygw decode: nmea: checksum: checksum 00, computed 6A\n"),
        (
            "pms5003",
            "42 4d zz",
            2,
            "citygw decode: pms5003: '42 4d zz' is not hex bytes, e.g. 42 4d 00 1c ...\n",
        ),
    ],
)
def test_cli_decode_failures(
    capsys: pytest.CaptureFixture[str], fmt: str, data: str, code: int, message: str
) -> None:
    assert decode_main(fmt, data, bindkey=None, address=None) == code
    captured = capsys.readouterr()
    assert (captured.out, captured.err) == ("", message)


def test_cli_decode_unknown_format_lists_the_formats(capsys: pytest.CaptureFixture[str]) -> None:
    assert decode_main("pms9999", "42", bindkey=None, address=None) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith(
        "citygw decode: unknown format 'pms9999'; formats: pms5003, pms7003, pmsa003, sds011, mhz19, nmea"
    )


def test_cli_decode_valid_frame_without_readings(capsys: pytest.CaptureFixture[str]) -> None:
    assert (
        decode_main("nmea", nmea("GPRMC,123519,V,,,,,,,230394,,,N").decode(), bindkey=None, address=None) == 0
    )
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == "citygw decode: nmea: a valid frame that carries no reading\n"
