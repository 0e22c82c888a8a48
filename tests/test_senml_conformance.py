"""Every SenML record citygw can emit passes RFC 8428's CDDL and its registries.

:func:`senml_problems` is RFC 8428 §11's CDDL (the JSON labels of senml-json.cddl) written as a
checker, with the rules the CDDL leaves to the prose: one value field (§4.3), names (§4.5.1),
absolute times (§4.5.3), units from the registries (§12.1; RFC 8798 §2 and §3, secondary units only
with the "Secondary Units" feature of RFC 9100 §4 in ``bver``). No CDDL tool on PyPI checks
this: pycddl 0.6 passes maps whose extension fields are arrays or null (it skips ``*
key-value-pair``) and refuses floats as ``number``.

The records: every quantity of the vocabulary, every BTHome object, the RuuviTag and pvvx adverts,
every serial protocol, every field of every shipped Modbus profile, the presence counter; each
as a sample, with every flag, and through the reporter as every statistic of an aggregate and as
on-change values; sealed by the real buffer into signed batches; and the buffer's gap records.
"""

from __future__ import annotations

import base64
import itertools
import json
import math
import re
from pathlib import Path
from typing import Any

import pytest

from citygw.buffer import KIND_GAP, BatchLimits, Buffer
from citygw.config import load_config
from citygw.config.profiles import available, find_profile
from citygw.drivers.ble import bthome, pvvx, ruuvi
from citygw.drivers.ble.presence import NAME as PRESENCE
from citygw.drivers.serial import decoders as serial
from citygw.errors import ConfigError
from citygw.pipeline.edge import Aggregate, DevicePolicy, OnChange, Reporter, Statistic
from citygw.reading import Flag, Reading, Record
from citygw.vocabulary import QUANTITIES
from citygw.wire.senml import build_pack, record_of
from citygw.wire.signing import Signer

from .support import health_readings_of_a_box

T0 = 1_790_000_000.0

# -- RFC 8428 §11 (senml.cddl + senml-json.cddl) ------------------------------------------------
# record = { ? bn => tstr, ? bt => numeric, ? bu => tstr, ? bv => numeric, ? bs => numeric,
#            ? bver => uint, ? n => tstr, ? u => tstr, ? s => numeric, ? t => numeric,
#            ? ut => numeric, ? ( v => numeric // vs => tstr // vb => bool // vd => binary-value ),
#            * key-value-pair }
# key-value-pair = ( label => value ); label = non-b-label / b-label
# non-b-label = tstr .regexp "[A-Zac-z0-9][-_:.A-Za-z0-9]*" / uint
# b-label = tstr .regexp "b[-_:.A-Za-z0-9]+" / nint
# value = tstr / binary-value / numeric / bool; numeric = number / decfrac; binary-value = tstr
_TSTR = frozenset({"bn", "bu", "n", "u", "vs", "vd"})
_NUMERIC = frozenset({"bt", "bv", "bs", "s", "t", "ut", "v"})
_VALUES = ("v", "vs", "vb", "vd")
_NON_B_LABEL = re.compile(r"[A-Zac-z0-9][-_:.A-Za-z0-9]*")
_B_LABEL = re.compile(r"b[-_:.A-Za-z0-9]+")
_NAME = re.compile(r"[A-Za-z0-9][-:./_A-Za-z0-9]*")  # §4.5.1
_BASE64URL = re.compile(r"[A-Za-z0-9_-]*")


def _units(names: str) -> set[str]:
    return set(names.split())


# The IANA "SenML Units" registry (RFC 8428 §12.1, RFC 8798 §2), transcribed here from the registry
# rather than imported from citygw.vocabulary, so that the test checks the code against the RFCs.
PRIMARY = _units(
    "m kg g s A K cd mol Hz rad sr N Pa J W C V F Ohm S Wb T H Cel lm lx Bq Gy Sv kat m2 m3 l m/s m/s2 "
    "m3/s l/s W/m2 cd/m2 bit bit/s lat lon pH dB dBW Bspl count / % %RH %EL EL 1/s 1/min beat/min beats "
    "S/m B VA VAs var vars J/m kg/m3 deg NTU"
)
NOT_RECOMMENDED = _units("g l l/s % 1/min beat/min beats Bspl deg")  # marked * in the registry
SECONDARY = _units(  # RFC 8798 §3 "Secondary Units"
    "ms min h MHz kW kVA kvar Ah Wh kWh varh kvarh kVAh Wh/km KiB GB Mbit/s B/s MB/s mV mA dBm ug/m3 "
    "mm/h m/h ppm /100 /1000 hPa mm cm km km/h"
)
SECONDARY_UNITS_FEATURE = 4  # RFC 9100 §4: version = 10 (features 1, 3) + 2**4


def _is_numeric(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def senml_problems(pack: object) -> list[str]:
    """What in ``pack`` (a parsed SenML JSON pack) breaks RFC 8428; empty when it conforms."""
    if not isinstance(pack, list) or not pack:
        return ["SenML-Pack = [1* record]: not a non-empty array"]
    problems: list[str] = []
    base_name, base_time, version = "", 0.0, 10
    for index, record in enumerate(pack):
        where = f"record {index}"
        if not isinstance(record, dict):
            problems.append(f"{where}: not a map")
            continue
        for label, value in record.items():
            if label in _TSTR:
                ok = isinstance(value, str) and (label != "vd" or _BASE64URL.fullmatch(value) is not None)
            elif label in _NUMERIC:
                ok = _is_numeric(value)
            elif label == "bver":
                ok = isinstance(value, int) and not isinstance(value, bool) and value >= 0
            elif label == "vb":
                ok = isinstance(value, bool)
            else:  # * key-value-pair
                if not (_NON_B_LABEL.fullmatch(label) or _B_LABEL.fullmatch(label)):
                    problems.append(f"{where}: label {label!r} is neither non-b-label nor b-label")
                ok = isinstance(value, str | bool) or _is_numeric(value)
                if label.endswith("_"):
                    problems.append(f"{where}: must-understand label {label!r} (§4.4)")
            if not ok:
                problems.append(f"{where}: {label} = {value!r} is not what §11 allows there")
        present = [label for label in _VALUES if label in record]
        if len(present) > 1 or (not present and "s" not in record):
            problems.append(f"{where}: needs exactly one value field (§4.3), has {present}")
        if "bver" in record:
            if index != 0 or not isinstance(record["bver"], int):
                problems.append(f"{where}: bver belongs on the first record")
            else:
                version = record["bver"]
        base_name = record.get("bn", base_name) if isinstance(record.get("bn", ""), str) else base_name
        if _is_numeric(record.get("bt")):
            base_time = float(record["bt"])
        name = base_name + (record["n"] if isinstance(record.get("n"), str) else "")
        if not _NAME.fullmatch(name):
            problems.append(f"{where}: resolved name {name!r} breaks §4.5.1")
        when = base_time + (record["t"] if _is_numeric(record.get("t")) else 0)
        if when < 2**28:
            problems.append(f"{where}: time {when} is not absolute (§4.5.3)")
        unit = record.get("u")
        if isinstance(unit, str):
            if unit in SECONDARY:
                if not version >> SECONDARY_UNITS_FEATURE & 1:
                    problems.append(f"{where}: secondary unit {unit!r} without bver feature 4 (RFC 9100 §4)")
            elif unit not in PRIMARY:
                problems.append(f"{where}: unit {unit!r} is not a unit of RFC 8428 §12.1 or RFC 8798")
            elif unit in NOT_RECOMMENDED:
                problems.append(f"{where}: unit {unit!r} is NOT RECOMMENDED for new implementations")
    return problems


def test_the_checker_refuses_what_the_issue_found() -> None:
    """The checker is not vacuous: the packs citygw sent before break it."""
    assert senml_problems([{"bn": "gw/d/", "bt": T0, "n": "x", "v": 1, "flags": ["clock-unsynced"]}]) == [
        "record 0: flags = ['clock-unsynced'] is not what §11 allows there"
    ]
    assert senml_problems([{"bn": "gw/b/", "bt": T0, "n": "batteryLevel", "u": "%", "v": 88}]) == [
        "record 0: unit '%' is NOT RECOMMENDED for new implementations"
    ]
    assert senml_problems([{"bn": "gw/a/", "bt": T0, "n": "tvoc", "u": "ppb", "v": 88}]) == [
        "record 0: unit 'ppb' is not a unit of RFC 8428 §12.1 or RFC 8798"
    ]
    assert senml_problems([{"bn": "gw/a/", "bt": T0, "n": "pm25", "u": "ug/m3", "v": 8}]) == [
        "record 0: secondary unit 'ug/m3' without bver feature 4 (RFC 9100 §4)"
    ]
    assert senml_problems([{"bn": "gw/a/", "bt": T0, "n": "x", "v": 1, "vs": "a", "w": None}]) == [
        "record 0: w = None is not what §11 allows there",
        "record 0: needs exactly one value field (§4.3), has ['v', 'vs']",
    ]


# -- every record citygw emits ----------------------------------------------------------------


def _sample_value(name: str) -> float | int | bool | str:
    if name in ("parkingStatus", "buttonEvent", "text", "rawData", "fixQuality"):
        return {"parkingStatus": "occupied", "buttonEvent": "press", "rawData": "00ff"}.get(name, "a")
    unit = QUANTITIES[name].unit
    return True if unit == "" and name not in ("uvIndex", "channel", "lightLevel") else 12.5


def _bthome_frames() -> list[bytes]:
    frames = []
    for oid, obj in sorted(bthome.OBJECTS.items()):
        if obj.kind in (bthome.Kind.PACKET_ID, bthome.Kind.SKIP):
            continue
        body = {
            bthome.Kind.NUMBER: bytes([0x5A] * obj.size),
            bthome.Kind.BINARY: b"\x01",
            bthome.Kind.BUTTON: b"\x01",
            bthome.Kind.DIMMER: b"\x01\x03",
            bthome.Kind.TEXT: b"\x03abc",
            bthome.Kind.RAW: b"\x02\x01\x02",
        }[obj.kind]
        frames.append(bytes([0x40, oid]) + body)  # device information: version 2, not encrypted
    return frames


def every_reading() -> list[Reading]:
    """One reading of each name and unit each driver emits, in the units the decoders give."""
    measured: list[tuple[str, str, Any, str]] = []  # device, name, value, unit
    for name, quantity in QUANTITIES.items():  # synthetic devices, line protocols, profiles' names
        measured.append(("synthetic", name, _sample_value(name), quantity.unit))
    for frame in _bthome_frames():
        measured += [("bthome", m.name, m.value, m.unit) for m in bthome.decode(frame).measurements]
    ruuvi_advert = bytes.fromhex("0512FC5394C37C0004FFFC040CAC364200CDCBB8334C884F")  # RAWv2 spec vector
    measured += [("ruuvi", m.name, m.value, m.unit) for m in ruuvi.decode(ruuvi_advert).measurements]
    pvvx_advert = bytes.fromhex("ED5E0B38C1A429090014860B572A05")
    measured += [("pvvx", m.name, m.value, m.unit) for m in pvvx.decode(pvvx_advert).measurements]
    pms = "424d001c000b00110014000900 0e0013076e02250068000c000400029700 02b2".replace(" ", "")
    frames = [
        (serial.decode_pms5003, bytes.fromhex(pms)),
        (serial.decode_sds011, bytes.fromhex("AAC0D4043A0AA1601DAB")),
        (serial.decode_mhz19, bytes.fromhex("FF8602200000000058")),
        (serial.decode_nmea, b"$GPRMC,123519,A,4807.038,N,01131.000,E,022.4,084.4,230394,003.1,W*6A"),
        (serial.decode_nmea, b"$GPGGA,123519,4807.038,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,*47"),
        (serial.decode_nmea, b"$GPVTG,054.7,T,034.4,M,005.5,N,010.2,K*48"),
    ]
    for decode, frame in frames:
        measured += [("serial", m.name, m.value, m.unit) for m in decode(frame)]
    for profile in available():
        for spec in find_profile(profile).fields:
            measured.append((profile, spec.name, 1.0, spec.unit))
    measured.append(("footfall", PRESENCE, 17, "count"))
    return [Reading(d, n, v, u, T0 + i) for i, (d, n, v, u) in enumerate(measured)]


def _aggregated(readings: list[Reading]) -> list[Record]:
    """The records of the reporter: every statistic over a window (full and partial), on change."""
    stats = tuple(Statistic)
    devices = {r.device for r in readings}
    policies = {
        d: DevicePolicy(Aggregate(60.0, stats), counters=frozenset({"activeEnergyImport"})) for d in devices
    }
    policies["synthetic"] = DevicePolicy(OnChange(600.0, absolute=0.5))
    reporter = Reporter(policies, started=T0 - 3600)
    out: list[Record] = []
    for step in range(3):
        batch = [record_of(Reading(r.device, r.name, r.value, r.unit, r.time + 60 * step)) for r in readings]
        out += reporter.process([r for r in batch if r is not None])
    out += reporter.flush(T0 + 150)  # the window still open: partial
    return out


@pytest.fixture(scope="module")
def emitted(tmp_path_factory: pytest.TempPathFactory) -> list[Record]:
    box = health_readings_of_a_box(tmp_path_factory.mktemp("box"), now=T0)  # device "gateway"
    readings = every_reading() + box
    samples = [r for r in map(record_of, readings) if r is not None]
    flagged = [
        sample._replace(flags=int(flags))
        for sample, flags in zip(
            samples,
            itertools.cycle(
                [Flag.CLOCK_UNSYNCED, Flag.COUNTER_ROLLOVER, Flag.CLOCK_UNSYNCED | Flag.COUNTER_ROLLOVER]
            ),
            strict=False,
        )
    ]
    return samples + flagged + _aggregated(readings)


def test_every_record_citygw_can_emit_conforms(emitted: list[Record]) -> None:
    pack = json.loads(json.dumps(build_pack("bkk-pathumwan-0042", emitted)))
    assert len(pack) == len(emitted) > 1000
    assert senml_problems(pack) == []
    assert pack[0]["bver"] == 26  # RFC 9100 §4: version 10 with the Secondary Units feature
    flags = {r["flags"] for r in pack if "flags" in r}
    assert flags >= {"clock-unsynced", "counter-rollover", "clock-unsynced,counter-rollover", "partial"}
    assert any("window" in r for r in pack)
    units = {r["u"] for r in pack if "u" in r}
    assert {"%EL", "rad", "/", "m3", "ppm", "1/s"} <= units and not units & NOT_RECOMMENDED


def test_every_health_reading_conforms_and_names_its_registered_unit(emitted: list[Record]) -> None:
    """The box's own health (device "gateway", gateway.health): every name of the wire contract's
    table, in primary units only (s, count, B, Cel) or none for booleans and text."""
    from citygw.ops.health import HEALTH_READINGS

    health = [r for r in emitted if r.device == "gateway" and "/" not in r.name]  # not the aggregates
    pack = json.loads(json.dumps(build_pack("bkk-pathumwan-0042", health)))
    assert senml_problems(pack) == []
    names = {r["n"].partition(":")[0] + (":" if ":" in r["n"] else "") for r in pack}
    assert names == {h.name for h in HEALTH_READINGS}
    assert {r["u"] for r in pack if "u" in r} == {"s", "count", "B", "Cel"} <= PRIMARY
    assert "bver" not in pack[0]


def test_a_pack_without_secondary_units_keeps_the_default_version() -> None:
    pack = build_pack(
        "gw", [Record("d", "temperature", 21.5, "Cel", T0, 0), Record("d", "voltage:l1", 230.1, "V", T0, 0)]
    )
    assert "bver" not in pack[0] and senml_problems(pack) == []


def _payload(jws: str) -> dict[str, Any]:
    middle = jws.split(".")[1]
    decoded: dict[str, Any] = json.loads(base64.urlsafe_b64decode(middle + "=" * (-len(middle) % 4)))
    return decoded


def test_signed_batches_and_gap_records_of_the_real_buffer_conform(
    tmp_path: Path, key: Path, emitted: list[Record]
) -> None:
    """Sealed by the buffer (batches split by count and size), then retention drops the oldest
    into gap records: every batch's pack conforms; a gap record carries no SenML at all."""
    buffer = Buffer(
        tmp_path / "buffer.db",
        gateway="bkk-pathumwan-0042",
        signer=Signer.from_file(key),
        uplinks=["a"],
        limits=BatchLimits(max_readings=250, max_bytes=16 * 1024, max_age=3600),
        max_disk=64 * 1024,
    )
    buffer.open()
    try:
        for start in range(0, len(emitted), 500):
            buffer.commit(emitted[start : start + 500])
        for round_ in range(1, 12):  # more than the disk cap allows: retention writes gap records
            buffer.commit([r._replace(time=r.time + 3600 * round_) for r in emitted], seal_all=True)
        held = buffer.fetch(0, 100_000)
    finally:
        buffer.close()
    batches = [_payload(b.jws) for b in held if b.kind != KIND_GAP]
    gaps = [_payload(b.jws) for b in held if b.kind == KIND_GAP]
    assert batches and gaps
    for payload in batches:
        assert senml_problems(payload["senml"]) == [], payload["seq"]
    for gap in gaps:
        assert "senml" not in gap and set(gap) == {"v", "gateway", "chain", "gap", "prev", "last", "created"}


@pytest.mark.parametrize("unit", ["ppb", "deg", "%", "deg/s", "mph"])
def test_a_line_field_in_a_unit_citygw_does_not_send_is_refused(tmp_path: Path, key: Path, unit: str) -> None:
    """The one place a unit comes from the config (a line protocol's field): registry or refusal."""
    path = tmp_path / "c.yaml"
    path.write_text(
        f"gateway:\n  id: gw-1\n  key_file: {key}\n"
        "buses:\n  radar: {type: serial, port: /dev/ttyS1}\n"
        "devices:\n  radar-1:\n    bus: radar\n    protocol: lines\n    format: csv\n"
        "    columns: [speed]\n    fields:\n      speed:\n        name: averageVehicleSpeed\n"
        f"        unit: '{unit}'\n"
    )
    with pytest.raises(ConfigError) as raised:
        load_config(path, environ={})
    (problem,) = raised.value.problems
    assert f"{path}:15: devices.radar-1.fields.speed.unit: {unit!r} is not a SenML unit" in str(problem)
    path.write_text(path.read_text().replace(f"unit: '{unit}'", "unit: km/h"))
    assert load_config(path, environ={}).devices["radar-1"] is not None
