"""NGSI-LD: readings as Smart Data Models entities, checked against the data models' own catalogue.

pysmartdatamodels ships the attribute catalogue of every official model (name, JSON type, NGSI
type); it fetches the full JSON Schemas from the web at run time, which this machine cannot reach,
so the entities are validated against the catalogue: every attribute exists in the model, has the
model's JSON type and is a Property. The broker is the one allowed fake (no NGSI-LD broker runs
here): a scripted HTTP server that checks each upsert request's shape and keeps the entities.
"""

from __future__ import annotations

import gzip
import importlib.util
import json
import time
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any

from aiohttp import web

from gateway import ngsi

from .support import Daemon, write_config
from .test_uplinks_http import ScriptedServer

T0 = 1_790_000_000.0


@cache
def catalogue() -> dict[str, dict[str, dict[str, Any]]]:
    spec = importlib.util.find_spec("pysmartdatamodels")
    assert spec is not None and spec.submodule_search_locations
    path = Path(next(iter(spec.submodule_search_locations))) / "model-assets" / "smartdatamodels.json.gz"
    models: dict[str, dict[str, dict[str, Any]]] = {}
    with gzip.open(path) as file:
        rows = json.load(file)
    for row in rows:
        models.setdefault(row["dataModel"], {}).setdefault(row["property"], row)
    return models


_JSON_TYPES = {"number": (int, float), "string": (str,), "object": (dict,), "boolean": (bool,)}


def validate(entity: dict[str, Any]) -> None:
    """Raise AssertionError naming what does not fit the official model."""
    model = catalogue().get(entity["type"])
    assert model is not None, f"{entity['type']} is not a Smart Data Model"
    assert entity["id"].startswith(f"urn:ngsi-ld:{entity['type']}:")
    assert entity["@context"][0].startswith("https://")
    for name, attribute in entity.items():
        if name in ("id", "type", "@context"):
            continue
        row = model.get(name)
        assert row is not None, f"{entity['type']} has no attribute {name}"
        assert attribute["type"] == row.get("typeNGSI", "Property") == "Property", (name, attribute)
        value = attribute["value"]
        if isinstance(value, dict) and value.get("@type") == "DateTime":
            assert row["type"] == "string", (name, row["type"])
            continue
        expected = _JSON_TYPES[row["type"]]
        assert isinstance(value, expected) and not (isinstance(value, bool) and row["type"] == "number"), (
            entity["type"],
            name,
            value,
            row["type"],
        )
        if "observedAt" in attribute:
            assert attribute["observedAt"].endswith("Z")


def pack(gateway: str, records: list[tuple[str, str, str, Any, float]]) -> dict[str, Any]:
    from gateway.senml import build_pack

    return {
        "gateway": gateway,
        "seq": 7,
        "prev": None,
        "created": T0,
        "senml": build_pack(gateway, [(d, n, u, v, t, 0) for d, n, u, v, t in records]),
    }


def test_every_model_validates_and_values_are_converted() -> None:
    payload = pack(
        "gw-1",
        [
            ("air-1", "pm25", "ug/m3", 12.5, T0),
            ("air-1", "pm25", "ug/m3", 14.0, T0 + 5),
            ("air-1", "relativeHumidity", "%RH", 55.0, T0),
            ("air-1", "temperature", "Cel", 21.5, T0),
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
            ("box-1", "rssi", "dBm", -71, T0),
        ],
    )
    entities = ngsi.entities(payload, source="urn:citygw:gw-1:batch:7:abcd", context=[ngsi_context()])
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
    assert air["dateObserved"]["value"] == {"@type": "DateTime", "@value": "2026-09-21T14:13:25.000Z"}
    assert air["source"]["value"] == "urn:citygw:gw-1:batch:7:abcd"
    meter = by_id["urn:ngsi-ld:ACMeasurement:gw-1:meter-1"]
    assert meter["totalActiveEnergyImport"]["value"] == 123.456
    assert meter["totalActiveEnergyImport"]["unitCode"] == "KWH"
    assert meter["phaseVoltage"]["value"] == {"L1": 230.1}
    assert by_id["urn:ngsi-ld:CrowdFlowObserved:gw-1:shelter-1"]["peopleCount"]["value"] == 17
    assert by_id["urn:ngsi-ld:ParkingSpot:gw-1:bay-1"]["status"]["value"] == "occupied"
    assert by_id["urn:ngsi-ld:WeatherObserved:gw-1:weather-1"]["atmosphericPressure"]["value"] == 1013.25
    generic = by_id["urn:ngsi-ld:DeviceMeasurement:gw-1:box-1:rssi"]
    assert generic["numValue"]["value"] == -71 and generic["controlledProperty"]["value"] == "rssi"


def test_config_overrides_type_and_id_and_unknown_quantities_go_generic() -> None:
    payload = pack(
        "gw-1",
        [
            ("s1", "temperature", "Cel", 20.0, T0),
            ("s1", "co2", "ppm", 415, T0),
            ("s1", "batteryLevel", "%", 88, T0),
        ],
    )
    naming = {"s1": ngsi.EntityNaming(type="WeatherObserved", id="urn:ngsi-ld:WeatherObserved:plaza")}
    entities = ngsi.entities(payload, source="urn:x", context=[ngsi_context()], naming=naming)
    for entity in entities:
        validate(entity)
    ids = sorted(e["id"] for e in entities)
    assert ids == [
        "urn:ngsi-ld:DeviceMeasurement:gw-1:s1:batteryLevel",
        "urn:ngsi-ld:DeviceMeasurement:gw-1:s1:co2",
        "urn:ngsi-ld:WeatherObserved:plaza",
    ]


def ngsi_context() -> str:
    from gateway.config.uplinks import SMART_DATA_MODELS_CONTEXT

    return SMART_DATA_MODELS_CONTEXT


def test_daemon_upserts_valid_entities_to_a_broker_with_tenant(
    tmp_path: Path, key: Path, daemon_factory: Callable[[Path], Daemon]
) -> None:
    received: list[dict[str, Any]] = []
    requests: list[tuple[str, str, str]] = []

    async def broker(request: web.Request, body: bytes) -> web.StreamResponse:
        requests.append(
            (
                request.path_qs,
                request.headers.get("Content-Type", ""),
                request.headers.get("NGSILD-Tenant", ""),
            )
        )
        entities = json.loads(body)
        assert isinstance(entities, list)
        received.extend(entities)
        return web.Response(status=204)

    server = ScriptedServer(broker)
    try:
        config = write_config(
            tmp_path / "c.yaml",
            key=key,
            port=1,
            devices={
                "air-1": {
                    "bus": "gen",
                    "rate": 50,
                    "count": 200,
                    "quantities": ["pm25", "pm10", "temperature"],
                },
                "meter-1": {
                    "bus": "gen",
                    "rate": 50,
                    "count": 200,
                    "quantities": ["voltage", "current", "activePower", "activeEnergyImport"],
                },
            },
            buffer={"batch": {"max_readings": 100, "max_age": "200ms"}},
        )
        data = json.loads(config.read_text())
        data["uplinks"] = {
            "cb": {
                "type": "ngsi-ld",
                "url": f"http://127.0.0.1:{server.port}",
                "tenant": "bangkok",
                "entities": {"meter-1": {"id": "urn:ngsi-ld:ACMeasurement:cabinet-7"}},
            }
        }
        config.write_text(json.dumps(data))
        daemon = daemon_factory(config)
        daemon.start()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not (
            {e["id"] for e in received}
            >= {"urn:ngsi-ld:AirQualityObserved:gw-test:air-1", "urn:ngsi-ld:ACMeasurement:cabinet-7"}
        ):
            time.sleep(0.2)
        assert daemon.terminate() == 0
    finally:
        server.close()
    assert requests, "no upsert arrived"
    assert all(
        r == ("/ngsi-ld/v1/entityOperations/upsert?options=update", "application/ld+json", "bangkok")
        for r in requests
    )
    for entity in received:
        validate(entity)
    meter = [e for e in received if e["id"] == "urn:ngsi-ld:ACMeasurement:cabinet-7"][-1]
    assert meter["source"]["value"].startswith("urn:citygw:gw-test:batch:")
