"""NGSI-LD: readings as Smart Data Models entities, validated against the models' own JSON Schemas.

The schemas are shipped as test data (tests/data/smart-data-models, with their source and
licence); every ``$ref`` resolves to those files, nothing is fetched. The schemas describe an
entity's key-values form, so each normalized entity is first reduced to it (Property -> value,
GeoProperty -> GeoJSON, Relationship -> object). The context broker is the one stand-in (no
NGSI-LD broker runs here): a real aiohttp server on loopback that keeps what it is sent.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import threading
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from jsonschema import Draft202012Validator, FormatChecker
from referencing import Registry, Resource
from ruamel.yaml import YAML

from citygw.config import load_config
from citygw.config.profiles import available, find_profile
from citygw.drivers.modbus.server import ModbusSimulator, Unit
from citygw.errors import ConfigError
from citygw.reading import Record
from citygw.receiver.endpoint import Receiver
from citygw.wire import ngsi
from citygw.wire.senml import encode_payload
from citygw.wire.signing import Signer, public_key_path

from .support import Daemon, health_readings_of_a_box
from .test_uplinks_http import ScriptedServer

T0 = 1_790_000_000.0
CHAIN = "Q2l0eWd3VGVzdENoYWluMQ"  # a buffer\'s chain id (22 base64url characters)
REPO = Path(__file__).resolve().parent.parent
SCHEMAS = Path(__file__).resolve().parent / "data" / "smart-data-models"
BOX = (13.7465, 100.5348)  # latitude, longitude


@cache
def registry() -> Registry[Any]:
    resources = []
    for path in SCHEMAS.glob("*.json"):
        resource = Resource.from_contents(json.loads(path.read_text()))
        resources.append((resource.id() or "", resource))
        if path.name == "Environment-schema.json":  # AirQualityObserved refers to it by this address too
            url = "https://raw.githubusercontent.com/smart-data-models/dataModel.Environment/master/"
            resources.append((url + path.name, resource))
    return Registry().with_resources(resources)


def key_values(entity: dict[str, Any]) -> dict[str, Any]:
    """The simplified (key-values) form of a normalized NGSI-LD entity (ETSI GS CIM 009 §4.5.4)."""
    out: dict[str, Any] = {}
    for name, attribute in entity.items():
        if name == "@context":
            continue
        if name in ("id", "type"):
            out[name] = attribute
            continue
        assert attribute["type"] in ("Property", "GeoProperty", "Relationship"), (name, attribute)
        if attribute["type"] == "Relationship":
            out[name] = attribute["object"]
            continue
        value = attribute["value"]
        if isinstance(value, dict) and value.get("@type") == "DateTime":
            value = value["@value"]
        out[name] = value
        if "observedAt" in attribute:
            assert attribute["observedAt"].endswith("Z")
    return out


def validate(entity: dict[str, Any]) -> None:
    """Raise jsonschema's ValidationError where the entity does not fit its model's schema."""
    schema = json.loads((SCHEMAS / f"{entity['type']}.schema.json").read_text())
    validator = Draft202012Validator(schema, registry=registry(), format_checker=FormatChecker())
    errors = sorted(validator.iter_errors(key_values(entity)), key=lambda e: list(e.path))
    assert not errors, f"{entity['id']}: " + "; ".join(f"{list(e.path)}: {e.message}" for e in errors)
    assert entity["id"].startswith(f"urn:ngsi-ld:{entity['type']}:")
    assert entity["@context"][0].startswith("https://")


def ngsi_context() -> str:
    from citygw.config.uplinks import SMART_DATA_MODELS_CONTEXT

    return SMART_DATA_MODELS_CONTEXT


def pack(gateway: str, records: list[tuple[str, str, str, Any, float]]) -> dict[str, Any]:
    payload: dict[str, Any] = json.loads(
        encode_payload(
            gateway, 7, None, T0, [Record(d, n, v, u, t, 0) for d, n, u, v, t in records], chain=CHAIN
        )
    )
    return payload


def test_the_shipped_schemas_refuse_what_the_issue_found() -> None:
    """The validator is not vacuous: the old entities (no location, no phaseType) fail it."""
    old = {
        "id": "urn:ngsi-ld:ACMeasurement:gw:m",
        "type": "ACMeasurement",
        "phaseVoltage": {"type": "Property", "value": {"L1": 400.2}},
        "dateObserved": {
            "type": "Property",
            "value": {"@type": "DateTime", "@value": "2026-01-01T00:00:00Z"},
        },
        "@context": [ngsi_context()],
    }
    with pytest.raises(AssertionError, match="'location' is a required property"):
        validate(old)
    with pytest.raises(AssertionError, match="'phaseType' is a required property"):
        validate(old)


def test_every_model_validates_and_values_are_converted() -> None:
    payload = pack(
        "gw-1",
        [
            ("air-1", "pm25", "ug/m3", 12.5, T0),
            ("air-1", "pm25", "ug/m3", 14.0, T0 + 5),
            ("air-1", "relativeHumidity", "%RH", 55.0, T0),
            ("air-1", "temperature", "Cel", 21.5, T0),
            ("air-1", "windDirection", "rad", 4.71238898038469, T0),  # 270 deg
            ("meter-1", "voltage", "V", 230.1, T0),
            ("meter-1", "activePower", "W", 1500.0, T0),
            ("meter-1", "activeEnergyImport", "Wh", 123456.0, T0),
            ("meter-1", "frequency", "Hz", 50.0, T0),
            ("radar-1", "intensity", "count", 42, T0),
            ("radar-1", "averageVehicleSpeed", "km/h", 38.5, T0),
            ("shelter-1", "presenceCount", "count", 17, T0),
            ("bay-1", "parkingStatus", "", "occupied", T0),
            ("weather-1", "atmosphericPressure", "Pa", 101325.0, T0),
            ("weather-1", "windSpeed", "m/s", 3.2, T0),
            ("weather-1", "windDirection", "rad", 4.71238898038469, T0),
            ("box-1", "rssi", "dBm", -71, T0),
        ],
    )
    naming = {
        "bay-1": ngsi.EntityNaming(
            location=(13.7466, 100.5349),
            attributes={"category": ("onStreet",), "refParkingSite": "urn:ngsi-ld:ParkingSite:siam-1"},
        )
    }
    entities = ngsi.entities(
        payload, source="urn:citygw:gw-1:batch:7:abcd", context=[ngsi_context()], naming=naming, location=BOX
    )
    by_id = {e["id"]: e for e in entities}
    for entity in entities:
        validate(entity)
    assert {e["type"] for e in entities} == {
        "AirQualityObserved",
        "ACMeasurement",
        "TrafficFlowObserved",
        "CrowdFlowObserved",
        "ParkingSpot",
        "WeatherObserved",
        "DeviceMeasurement",
    }
    air = by_id["urn:ngsi-ld:AirQualityObserved:gw-1:air-1"]
    assert air["pm25"] == {
        "type": "Property",
        "value": 14.0,
        "observedAt": "2026-09-21T14:13:25.000Z",
        "unitCode": "GQ",
    }  # the latest of the two
    assert air["relativeHumidity"]["value"] == 0.55  # a fraction in Smart Data Models
    assert air["windDirection"]["value"] == pytest.approx(-90)  # AirQualityObserved: -180..180
    assert air["location"] == {
        "type": "GeoProperty",
        "value": {"type": "Point", "coordinates": [100.5348, 13.7465]},
    }
    assert air["dateObserved"]["value"] == {"@type": "DateTime", "@value": "2026-09-21T14:13:25.000Z"}
    assert air["source"]["value"] == "urn:citygw:gw-1:batch:7:abcd"
    meter = by_id["urn:ngsi-ld:ACMeasurement:gw-1:meter-1"]
    assert meter["totalActiveEnergyImport"]["value"] == 123.456
    assert meter["totalActiveEnergyImport"]["unitCode"] == "KWH"
    assert meter["phaseVoltage"]["value"] == {"L1": 230.1}  # a single-phase meter
    assert meter["phaseType"]["value"] == "singlePhase"
    assert by_id["urn:ngsi-ld:CrowdFlowObserved:gw-1:shelter-1"]["peopleCount"]["value"] == 17
    bay = by_id["urn:ngsi-ld:ParkingSpot:gw-1:bay-1"]
    assert bay["status"]["value"] == "occupied"
    assert bay["refParkingSite"] == {"type": "Relationship", "object": "urn:ngsi-ld:ParkingSite:siam-1"}
    assert bay["location"]["value"]["coordinates"] == [100.5349, 13.7466]  # the device's own place
    weather = by_id["urn:ngsi-ld:WeatherObserved:gw-1:weather-1"]
    assert weather["atmosphericPressure"]["value"] == 1013.25
    assert weather["windDirection"]["value"] == pytest.approx(270)  # WeatherObserved: 0..360
    generic = by_id["urn:ngsi-ld:DeviceMeasurement:gw-1:box-1:rssi"]
    assert generic["numValue"]["value"] == -71 and generic["controlledProperty"]["value"] == "rssi"


def test_phases_go_to_the_models_phase_attributes_and_channels_stay_apart() -> None:
    """Items 1 and 2 of the issue at the mapping: line-to-line voltages in phaseToPhaseVoltage,
    per-phase powers and energies in their objects, other channels in entities of their own."""
    records = [
        ("meter-1", "voltage:l1", "V", 230.1, T0),
        ("meter-1", "voltage:l2", "V", 231.2, T0),
        ("meter-1", "voltage:l3", "V", 230.5, T0),
        ("meter-1", "voltage:l1-l2", "V", 400.2, T0),
        ("meter-1", "voltage:l2-l3", "V", 399.8, T0),
        ("meter-1", "voltage:l3-l1", "V", 401.0, T0),
        ("meter-1", "current:l1", "A", 5.1, T0),
        ("meter-1", "current:n", "A", 0.3, T0),
        ("meter-1", "activePower:l2", "W", 1100.0, T0),
        ("meter-1", "activePower", "W", 3300.0, T0),
        ("meter-1", "activeEnergyImport:l3", "Wh", 2000.0, T0),
        ("meter-1", "voltage:n", "V", 0.7, T0),  # neutral to earth: ACMeasurement has no place for it
        ("plc", "temperature:in", "Cel", 21.5, T0),
        ("plc", "temperature:out", "Cel", -3.5, T0),
        ("plc", "activePower", "W", 1200.0, T0),
    ]
    entities = ngsi.entities(pack("gw-1", records), source="urn:x", context=[ngsi_context()], location=BOX)
    for entity in entities:
        validate(entity)
    by_id = {e["id"]: e for e in entities}
    meter = by_id["urn:ngsi-ld:ACMeasurement:gw-1:meter-1"]
    assert meter["phaseVoltage"]["value"] == {"L1": 230.1, "L2": 231.2, "L3": 230.5}
    assert meter["phaseToPhaseVoltage"]["value"] == {"L12": 400.2, "L23": 399.8, "L31": 401.0}
    assert meter["current"]["value"] == {"L1": 5.1, "N": 0.3}
    assert meter["activePower"]["value"] == {"L2": 1100.0}
    assert meter["totalActivePower"]["value"] == 3300.0
    assert meter["activeEnergyImport"] == {
        "type": "Property",
        "value": {"L3": 2.0},
        "observedAt": "2026-09-21T14:13:20.000Z",
        "unitCode": "KWH",
    }
    assert meter["phaseType"]["value"] == "threePhase"
    neutral = by_id["urn:ngsi-ld:DeviceMeasurement:gw-1:meter-1:voltage-n"]
    assert (neutral["controlledProperty"]["value"], neutral["numValue"]["value"]) == ("voltage:n", 0.7)
    assert by_id["urn:ngsi-ld:WeatherObserved:gw-1:plc:in"]["temperature"]["value"] == 21.5
    assert by_id["urn:ngsi-ld:WeatherObserved:gw-1:plc:out"]["temperature"]["value"] == -3.5
    assert by_id["urn:ngsi-ld:ACMeasurement:gw-1:plc"]["totalActivePower"]["value"] == 1200.0
    # every distinct reading name has its own place: no two land on one attribute or key
    assert len(entities) == 5


@pytest.mark.parametrize("profile", sorted(available()))
def test_every_shipped_profile_maps_to_valid_entities_with_each_reading_in_its_own_place(
    profile: str,
) -> None:
    fields = find_profile(profile).fields
    records = [("dev", f.name, f.unit, 0.5, T0) for f in fields]
    entities = ngsi.entities(pack("gw", records), source="urn:x", context=[ngsi_context()], location=BOX)
    for entity in entities:
        validate(entity)
    places = []  # (entity, attribute, key) of every value sent
    for entity in entities:
        for name, attribute in entity.items():
            if name in ("numValue", "textValue"):
                places.append((entity["id"], name, None))
            elif (
                isinstance(attribute, dict)
                and attribute.get("type") == "Property"
                and "observedAt" in attribute
            ):
                value = attribute["value"]
                keys = list(value) if isinstance(value, dict) else [None]
                places += [(entity["id"], name, key) for key in keys]
    assert len(places) == len(set(places)) == len(fields), (profile, places)


def test_config_overrides_type_and_id_and_unknown_quantities_go_generic() -> None:
    payload = pack(
        "gw-1",
        [
            ("s1", "temperature", "Cel", 20.0, T0),
            ("s1", "temperature:roof", "Cel", 24.0, T0),
            ("s1", "co2", "ppm", 415, T0),
            ("s1", "batteryLevel", "%EL", 88, T0),
        ],
    )
    naming = {"s1": ngsi.EntityNaming(type="WeatherObserved", id="urn:ngsi-ld:WeatherObserved:plaza")}
    entities = ngsi.entities(payload, source="urn:x", context=[ngsi_context()], naming=naming, location=BOX)
    for entity in entities:
        validate(entity)
    ids = sorted(e["id"] for e in entities)
    assert ids == [
        "urn:ngsi-ld:DeviceMeasurement:gw-1:s1:batteryLevel",
        "urn:ngsi-ld:DeviceMeasurement:gw-1:s1:co2",
        "urn:ngsi-ld:WeatherObserved:plaza",
        "urn:ngsi-ld:WeatherObserved:plaza:roof",
    ]


def test_the_box_health_maps_to_device_measurements_of_the_box_device(tmp_path: Path) -> None:
    """Health readings (device "gateway", gateway.health) are never taken for a sensor's model
    (a box's socTemperature is no WeatherObserved): one valid DeviceMeasurement per reading,
    each pointing at the box as a Smart Data Models Device."""
    readings = health_readings_of_a_box(tmp_path, now=T0)
    payload = pack("gw-1", [(r.device, r.name, r.unit, r.value, r.time) for r in readings])
    entities = ngsi.entities(payload, source="urn:x", context=[ngsi_context()], location=BOX)
    assert len(entities) == len(readings)
    for entity in entities:
        validate(entity)
        assert entity["type"] == "DeviceMeasurement"
        assert entity["refDevice"] == {"type": "Relationship", "object": "urn:ngsi-ld:Device:gw-1"}
    by_property = {e["controlledProperty"]["value"]: e for e in entities}
    assert by_property["socTemperature"]["numValue"]["value"] == 48.3
    assert by_property["socTemperature"]["unit"]["value"] == "CEL"
    assert by_property["undeliveredBytes"]["unit"]["value"] == "AD"
    lag = by_property["uplinkLag:local"]
    assert lag["id"] == "urn:ngsi-ld:DeviceMeasurement:gw-1:gateway:uplinkLag-local"
    assert by_property["clockSynced"]["textValue"]["value"] == "true"


def test_receive_stores_every_reading_under_the_name_it_was_sent(tmp_path: Path, key: Path) -> None:
    """`citygw receive` kept voltage:l1-l2 as plain voltage (and voltage:l1 as voltage:l1)."""
    signer = Signer.from_file(key)
    names = ["voltage", "voltage:l1", "voltage:l1-l2", "voltage:l2-l3", "temperature:in", "pm25/mean"]
    records: list[Record] = [Record("m", name, 230.0 + i, "V", T0 + i, 0) for i, name in enumerate(names)]
    receiver = Receiver(tmp_path / "received.db", [public_key_path(key)])
    try:
        verdict = receiver.accept(signer.sign(encode_payload("gw-1", 1, None, T0, records, chain=CHAIN)))
        assert verdict.outcome == "stored", verdict
    finally:
        receiver.close()
    with sqlite3.connect(tmp_path / "received.db") as db:
        stored = [row[0] for row in db.execute("SELECT name FROM readings ORDER BY time")]
    assert stored == names


# -- the config: tenant and location ---------------------------------------------------------------


def _config(tmp_path: Path, key: Path, uplink: dict[str, Any], gateway: dict[str, Any] | None = None) -> Path:
    path = tmp_path / "citygw.yaml"
    data = {
        "gateway": {"id": "gw-1", "key_file": str(key), **(gateway or {})},
        "uplinks": {"cb": {"type": "ngsi-ld", "url": "https://broker.example.city", **uplink}},
    }
    path.write_text(json.dumps(data, indent=2))
    return path


def _problems(path: Path) -> list[str]:
    with pytest.raises(ConfigError) as raised:
        load_config(path, environ={})
    return [str(p).replace(str(path), "FILE") for p in raised.value.problems]


@pytest.mark.parametrize("tenant", ["city-bkk", "bkk.city", "urn:ngsi-ld:tenant:bkk", "bangkok", "BKK_2"])
def test_valid_ngsi_ld_tenants_are_accepted(tmp_path: Path, key: Path, tenant: str) -> None:
    config = load_config(
        _config(tmp_path, key, {"tenant": tenant}, {"location": {"latitude": 13.7, "longitude": 100.5}}),
        environ={},
    )
    assert config.uplinks["cb"].tenant == tenant  # type: ignore[union-attr]


@pytest.mark.parametrize("tenant", ["city bkk", "", "กรุงเทพ", "a\tb", "x" * 256])
def test_tenants_a_header_cannot_carry_are_refused(tmp_path: Path, key: Path, tenant: str) -> None:
    problems = _problems(
        _config(tmp_path, key, {"tenant": tenant}, {"location": {"latitude": 13.7, "longitude": 100.5}})
    )
    assert len(problems) == 1 and "uplinks.cb.tenant" in problems[0], problems
    assert "e.g. city-bkk, bkk.city or urn:ngsi-ld:tenant:bkk" in problems[0]


def test_an_ngsi_ld_uplink_needs_the_box_location(tmp_path: Path, key: Path) -> None:
    problems = _problems(_config(tmp_path, key, {}))
    assert len(problems) == 1, problems
    assert "gateway.location" in problems[0] and "latitude" in problems[0], problems
    bad = _problems(_config(tmp_path, key, {}, {"location": {"latitude": 100, "longitude": 100.5}}))
    assert len(bad) == 1 and "gateway.location.latitude" in bad[0] and "between -90 and 90" in bad[0], bad


# -- end to end: shipped profiles, the example config, a real daemon, a broker on loopback ---------


SDM630 = {
    "voltage:l1": 230.1,
    "voltage:l2": 231.2,
    "voltage:l3": 230.5,
    "voltage:l1-l2": 400.2,
    "voltage:l2-l3": 399.8,
    "voltage:l3-l1": 401.0,
    "current:l1": 5.1,
    "current:l2": 4.9,
    "current:l3": 5.3,
    "current:n": 0.4,
    "activePower:l1": 1100.0,
    "activePower:l2": 1050.0,
    "activePower:l3": 1150.0,
    "activePower": 3300.0,
    "apparentPower:l1": 1170.0,
    "apparentPower:l2": 1130.0,
    "apparentPower:l3": 1220.0,
    "apparentPower": 3520.0,
    "reactivePower:l1": 400.0,
    "reactivePower:l2": 410.0,
    "reactivePower:l3": 390.0,
    "reactivePower": 1200.0,
    "powerFactor:l1": 0.94,
    "powerFactor:l2": 0.93,
    "powerFactor:l3": 0.94,
    "powerFactor": 0.94,
    "frequency": 50.0,
    "activeEnergyImport": 123456.0,
    "activeEnergyExport": 0.0,
}
PLC_PLACE = {"latitude": 13.7470, "longitude": 100.5352}


def _example_config(tmp_path: Path, key: Path, meter_port: int, plc_port: int, broker_port: int) -> Path:
    """config/examples/modbus.yaml as shipped, pointed at loopback: the RS-485 line becomes a
    Modbus TCP server (the same devices and unit ids), the uplink an NGSI-LD broker, raw reports."""
    data = YAML(typ="safe").load((REPO / "config" / "examples" / "modbus.yaml").read_text())
    data["gateway"] = {
        "id": "bkk-pathumwan-0042",
        "key_file": str(key),
        "location": {"latitude": BOX[0], "longitude": BOX[1]},
    }
    data["buffer"] = {
        "path": str(tmp_path / "buffer.db"),
        "commit_interval": "100ms",
        "batch": {"max_age": "200ms"},
    }
    data["uplinks"] = {
        "cb": {
            "type": "ngsi-ld",
            "url": f"http://127.0.0.1:{broker_port}",
            "tenant": "urn:ngsi-ld:tenant:bkk",
            "backoff_initial": "200ms",
        }
    }
    data["buses"]["rs485"] = {"type": "modbus-tcp", "host": "127.0.0.1", "port": meter_port, "timeout": "1s"}
    data["buses"]["plc"] = {"type": "modbus-tcp", "host": "127.0.0.1", "port": plc_port, "timeout": "1s"}
    for device in data["devices"].values():
        device.pop("report", None)  # every sample, not 15-minute statistics: the test sees phases
    data["devices"]["plc"]["location"] = PLC_PLACE  # in the cabinet across the street
    path = tmp_path / "citygw.yaml"
    path.write_text(json.dumps(data, indent=2))
    return path


async def test_the_example_config_reaches_a_broker_as_valid_entities(
    tmp_path: Path, key: Path, daemon_factory: Callable[[Path], Daemon]
) -> None:
    """Items 1-4 end to end: the shipped SDM630 and XY-MD02 profiles and the example's inline PLC
    registers, polled by the real daemon, upserted to a broker on loopback."""
    received: list[dict[str, Any]] = []
    headers: list[tuple[str, str]] = []
    arrived = threading.Event()
    wanted = {
        "urn:ngsi-ld:ACMeasurement:bkk-pathumwan-0042:meter-1",
        "urn:ngsi-ld:WeatherObserved:bkk-pathumwan-0042:climate-1",
        "urn:ngsi-ld:WeatherObserved:bkk-pathumwan-0042:plc:in",
        "urn:ngsi-ld:WeatherObserved:bkk-pathumwan-0042:plc:out",
        "urn:ngsi-ld:ACMeasurement:bkk-pathumwan-0042:plc",
    }

    async def broker(request: web.Request, body: bytes) -> web.StreamResponse:
        headers.append((request.path_qs, request.headers.get("NGSILD-Tenant", "")))
        received.extend(json.loads(body))
        if wanted <= {e["id"] for e in received}:
            arrived.set()
        return web.Response(status=204)

    meter_fields = find_profile("eastron-sdm630").fields
    climate_fields = find_profile("xy-md02").fields
    line = {
        1: Unit().put(meter_fields, SDM630),
        2: Unit().put(climate_fields, {"temperature": 21.5, "relativeHumidity": 48.3}),
    }
    plc = {1: Unit(holding={100: 215, 101: (-35) & 0xFFFF, 110: 0x5678, 111: 0x1234, 120: 0, 121: 0x4496})}
    server = ScriptedServer(broker)
    try:
        async with ModbusSimulator(line) as meters, ModbusSimulator(plc) as plc_server:
            config = _example_config(tmp_path, key, meters.port, plc_server.port, server.port)
            daemon = daemon_factory(config)
            daemon.start()
            assert await asyncio.to_thread(arrived.wait, 30), (
                f"entities missing: {wanted - {e['id'] for e in received}}"
            )
            assert await asyncio.to_thread(daemon.terminate) == 0
    finally:
        server.close()
    assert headers and all(
        h == ("/ngsi-ld/v1/entityOperations/upsert?options=update", "urn:ngsi-ld:tenant:bkk") for h in headers
    )
    for entity in received:
        validate(entity)
    latest = {e["id"]: e for e in received}
    meter = latest["urn:ngsi-ld:ACMeasurement:bkk-pathumwan-0042:meter-1"]
    assert meter["phaseVoltage"]["value"] == {
        "L1": pytest.approx(230.1),
        "L2": pytest.approx(231.2),
        "L3": pytest.approx(230.5),
    }
    assert meter["phaseToPhaseVoltage"]["value"] == {
        "L12": pytest.approx(400.2),
        "L23": pytest.approx(399.8),
        "L31": pytest.approx(401.0),
    }
    assert meter["current"]["value"] == {
        "L1": pytest.approx(5.1),
        "L2": pytest.approx(4.9),
        "L3": pytest.approx(5.3),
        "N": pytest.approx(0.4),
    }
    assert meter["activePower"]["value"] == {"L1": 1100.0, "L2": 1050.0, "L3": 1150.0}
    assert meter["totalActivePower"]["value"] == 3300.0
    assert meter["phaseType"]["value"] == "threePhase"
    assert meter["location"]["value"]["coordinates"] == [BOX[1], BOX[0]]
    inside = latest["urn:ngsi-ld:WeatherObserved:bkk-pathumwan-0042:plc:in"]
    outside = latest["urn:ngsi-ld:WeatherObserved:bkk-pathumwan-0042:plc:out"]
    assert (inside["temperature"]["value"], outside["temperature"]["value"]) == (21.5, -3.5)
    assert outside["location"]["value"]["coordinates"] == [PLC_PLACE["longitude"], PLC_PLACE["latitude"]]
    climate = latest["urn:ngsi-ld:WeatherObserved:bkk-pathumwan-0042:climate-1"]
    assert climate["relativeHumidity"]["value"] == pytest.approx(0.483)
