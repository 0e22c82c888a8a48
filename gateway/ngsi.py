"""Readings as FIWARE Smart Data Models entities for an NGSI-LD broker (pure: no I/O, no clock).

One entity per device and batch, of the model its quantities call for (an electricity meter
becomes an ``ACMeasurement``, a PM sensor an ``AirQualityObserved``, …); each attribute holds
the latest value of its quantity in the batch, with ``observedAt`` and a UN/CEFACT
``unitCode``. A quantity the model has no attribute for becomes its own
``DeviceMeasurement`` entity. Every entity carries ``source`` =
``urn:citygw:{gateway}:batch:{seq}:{jws-hash}`` and ``dataProvider``, so the platform can trace
it to the signed batch it came from.

A context broker keeps current state: it sees the latest value per attribute per batch. For
every sample, use the MQTT or HTTP uplink (or the broker's temporal API fed by them).
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

Value = float | int | bool | str

# SenML unit -> UN/CEFACT common code (Recommendation 20)
UNIT_CODES: dict[str, str] = {
    "Cel": "CEL",
    "%RH": "P1",
    "%": "P1",
    "Pa": "PAL",
    "hPa": "A97",
    "ug/m3": "GQ",
    "ppm": "59",
    "ppb": "61",
    "lx": "LUX",
    "dB": "2N",
    "m/s": "MTS",
    "deg": "DD",
    "mm": "MMT",
    "V": "VLT",
    "A": "AMP",
    "W": "WTT",
    "var": "D44",
    "VA": "D46",
    "Hz": "HTZ",
    "Wh": "WHR",
    "kWh": "KWH",
    "km/h": "KMH",
    "dBm": "2Q",
    "/": "C62",
    "count": "C62",
    "lat": "DD",
    "lon": "DD",
}


@dataclass(frozen=True, slots=True)
class Attribute:
    """Where a quantity goes in a model: attribute name, factor, the unit after it, phase object."""

    name: str
    factor: float = 1.0
    unit: str | None = None  # the unit after the factor; None = the reading's own
    phased: bool = False  # an object of phases ({"L1": v, ...}) rather than a number


@dataclass(frozen=True, slots=True)
class Model:
    type: str
    keys: frozenset[str]  # quantities that make a device this model
    attributes: Mapping[str, Attribute]
    observed: bool = True  # the model has dateObserved


_AIR = {
    "pm1": Attribute("pm1"),
    "pm25": Attribute("pm25"),
    "pm10": Attribute("pm10"),
    "co2": Attribute("co2"),
    "tvoc": Attribute("volatileOrganicCompoundsTotal"),
    "temperature": Attribute("temperature"),
    # Smart Data Models give relative humidity as a fraction 0..1
    "relativeHumidity": Attribute("relativeHumidity", 0.01, "/"),
    "windSpeed": Attribute("windSpeed"),
    "windDirection": Attribute("windDirection"),
    "precipitation": Attribute("precipitation"),
    "atmosphericPressure": Attribute("pressure", 0.01, "hPa"),
}
_WEATHER = {
    "temperature": Attribute("temperature"),
    "relativeHumidity": Attribute("relativeHumidity", 0.01, "/"),
    "atmosphericPressure": Attribute("atmosphericPressure", 0.01, "hPa"),
    "illuminance": Attribute("illuminance"),
    "windSpeed": Attribute("windSpeed"),
    "windDirection": Attribute("windDirection"),
    "precipitation": Attribute("precipitation"),
}
_AC = {
    "activePower": Attribute("totalActivePower"),
    "reactivePower": Attribute("totalReactivePower"),
    "apparentPower": Attribute("totalApparentPower"),
    "powerFactor": Attribute("totalPowerFactor"),
    "frequency": Attribute("frequency"),
    "activeEnergyImport": Attribute("totalActiveEnergyImport", 0.001, "kWh"),
    "activeEnergyExport": Attribute("totalActiveEnergyExport", 0.001, "kWh"),
    "voltage": Attribute("phaseVoltage", phased=True),
    "current": Attribute("current", phased=True),
}

MODELS: tuple[Model, ...] = (
    Model("ACMeasurement", frozenset(_AC), _AC),
    Model("AirQualityObserved", frozenset({"pm1", "pm25", "pm10", "co2", "tvoc"}), _AIR),
    Model(
        "TrafficFlowObserved",
        frozenset({"intensity", "averageVehicleSpeed"}),
        {
            "intensity": Attribute("intensity"),
            "occupancy": Attribute("occupancy"),
            "averageVehicleSpeed": Attribute("averageVehicleSpeed"),
        },
    ),
    Model(
        "CrowdFlowObserved",
        frozenset({"presenceCount"}),
        {"presenceCount": Attribute("peopleCount"), "occupancy": Attribute("occupancy")},
    ),
    Model(
        "ParkingSpot", frozenset({"parkingStatus"}), {"parkingStatus": Attribute("status")}, observed=False
    ),
    Model("WeatherObserved", frozenset(_WEATHER), _WEATHER),
)
MODEL_BY_TYPE = {m.type: m for m in MODELS}
GENERIC = "DeviceMeasurement"
_PHASES = {"l1": "L1", "l2": "L2", "l3": "L3", "n": "N"}


@dataclass(frozen=True, slots=True)
class Sample:
    device: str
    quantity: str  # without a phase suffix
    phase: str | None  # L1, L2, L3, N for per-phase names like "voltage:l1"
    value: Value
    unit: str
    time: float


def samples(payload: Mapping[str, Any]) -> list[Sample]:
    """The readings of a data batch's SenML pack (bn = "{gateway}/{device}/")."""
    out: list[Sample] = []
    base_time, device = 0.0, ""
    for record in payload["senml"]:
        if "bn" in record:
            device = str(record["bn"]).rstrip("/").rsplit("/", 1)[-1]
        base_time = float(record.get("bt", base_time))
        name = str(record["n"])
        # an aggregate ("voltage:l1/mean", gateway.report) is a quantity of its own, unphased
        quantity, _, suffix = name.partition(":") if "/" not in name else (name, "", "")
        value = record["v"] if "v" in record else record["vb"] if "vb" in record else record["vs"]
        phase = _PHASES.get(suffix.lower()) if suffix else None
        out.append(
            Sample(device, quantity, phase, value, str(record.get("u", "")), base_time + record.get("t", 0))
        )
    return out


def iso(when: float) -> str:
    moment = datetime.datetime.fromtimestamp(when, tz=datetime.UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def model_for(quantities: set[str], override: str | None = None) -> Model | None:
    if override is not None:
        return MODEL_BY_TYPE.get(override)
    for model in MODELS:
        if quantities & model.keys:
            return model
    return None


def _property(value: Any, when: float, unit: str | None) -> dict[str, Any]:
    prop: dict[str, Any] = {"type": "Property", "value": value, "observedAt": iso(when)}
    if unit and unit in UNIT_CODES:
        prop["unitCode"] = UNIT_CODES[unit]
    return prop


def _scaled(value: Value, factor: float) -> Value:
    if factor == 1.0 or isinstance(value, bool) or not isinstance(value, int | float):
        return value
    return round(value * factor, 9)


@dataclass(frozen=True, slots=True)
class EntityNaming:
    """Per-device overrides from the config: entity type and id."""

    type: str | None = None
    id: str | None = None


def entities(
    payload: Mapping[str, Any],
    *,
    source: str,
    context: list[str],
    naming: Mapping[str, EntityNaming] | None = None,
) -> list[dict[str, Any]]:
    """The NGSI-LD entities (normalized, with ``@context``) for one data batch."""
    gateway = str(payload["gateway"])
    naming = naming or {}
    by_device: dict[str, list[Sample]] = {}
    for sample in sorted(samples(payload), key=lambda s: s.time):
        by_device.setdefault(sample.device, []).append(sample)
    out: list[dict[str, Any]] = []
    common = {
        "source": {"type": "Property", "value": source},
        "dataProvider": {"type": "Property", "value": f"citygw {gateway}"},
        "@context": context,
    }
    for device, device_samples in by_device.items():
        names = naming.get(device, EntityNaming())
        model = model_for({s.quantity for s in device_samples}, names.type)
        entity: dict[str, Any] | None = None
        if model is not None:
            entity = {"id": names.id or f"urn:ngsi-ld:{model.type}:{gateway}:{device}", "type": model.type}
        latest_time = 0.0
        phased: dict[str, dict[str, Any]] = {}
        generic: dict[str, Sample] = {}
        for sample in device_samples:  # in time order: the latest value of each attribute wins
            attribute = model.attributes.get(sample.quantity) if model is not None else None
            if attribute is None or entity is None:
                generic[f"{sample.quantity}:{sample.phase}" if sample.phase else sample.quantity] = sample
                continue
            latest_time = max(latest_time, sample.time)
            value = _scaled(sample.value, attribute.factor)
            unit = attribute.unit if attribute.unit is not None else sample.unit
            if attribute.phased:
                slot = phased.setdefault(attribute.name, {"value": {}, "time": sample.time, "unit": unit})
                slot["value"][sample.phase or "L1"] = value
                slot["time"] = max(slot["time"], sample.time)
            else:
                entity[attribute.name] = _property(value, sample.time, unit)
        if entity is not None:
            for name, slot in phased.items():
                entity[name] = _property(slot["value"], slot["time"], slot["unit"])
            if len(entity) > 2:
                if model is not None and model.observed:
                    entity["dateObserved"] = {
                        "type": "Property",
                        "value": {"@type": "DateTime", "@value": iso(latest_time)},
                    }
                out.append({**entity, **common})
        for key, sample in generic.items():
            out.append(_generic(gateway, device, key, sample, common))
    return out


def _generic(
    gateway: str, device: str, key: str, sample: Sample, common: Mapping[str, Any]
) -> dict[str, Any]:
    entity: dict[str, Any] = {
        "id": f"urn:ngsi-ld:{GENERIC}:{gateway}:{device}:{key.replace(':', '-')}",
        "type": GENERIC,
        "controlledProperty": {"type": "Property", "value": sample.quantity},
        "dateObserved": {"type": "Property", "value": {"@type": "DateTime", "@value": iso(sample.time)}},
    }
    if isinstance(sample.value, int | float) and not isinstance(sample.value, bool):
        entity["numValue"] = _property(sample.value, sample.time, sample.unit)
    else:
        entity["textValue"] = _property(
            str(sample.value).lower() if isinstance(sample.value, bool) else sample.value, sample.time, None
        )
    if sample.unit:
        entity["unit"] = {"type": "Property", "value": UNIT_CODES.get(sample.unit, sample.unit)}
    return {**entity, **common}
