"""Readings as FIWARE Smart Data Models entities for an NGSI-LD broker (pure: no I/O, no clock).

One entity per device and batch, of the model its quantities call for (an electricity meter
becomes an ``ACMeasurement``, a PM sensor an ``AirQualityObserved``, …); each attribute holds
the latest value of its quantity in the batch, with ``observedAt`` and a UN/CEFACT
``unitCode``. A quantity the model has no attribute for becomes its own
``DeviceMeasurement`` entity. Every entity carries ``location`` (the device's, else the box's),
``source`` = ``urn:citygw:{gateway}:batch:{seq}:{jws-hash}`` and ``dataProvider``, so the
platform can place it and trace it to the signed batch it came from.

Reading names keep their meaning: ``quantity:channel`` names several readings of one quantity.
A phase channel goes where the model keeps phases (``voltage:l1`` -> ``phaseVoltage.L1``,
``voltage:l1-l2`` -> ``phaseToPhaseVoltage.L12``, ``activePower:l2`` -> ``activePower.L2``);
any other channel (``temperature:in``, ``temperature:out``) is an entity of its own,
``…:{device}:{channel}``, since a Smart Data Models attribute holds one value. A phase channel the
model has no place for goes to a ``DeviceMeasurement`` under its full name. Distinct names never
land on one attribute.

A context broker keeps current state: it sees the latest value per attribute per batch. For
every sample, use the MQTT or HTTP uplink (or the broker's temporal API fed by them).
"""

from __future__ import annotations

import datetime
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from citygw.config.health import HEALTH_DEVICE

Value = float | int | bool | str

# SenML unit -> UN/CEFACT common code (Recommendation 20)
UNIT_CODES: dict[str, str] = {
    "Cel": "CEL",
    "%RH": "P1",
    "%EL": "P1",
    "Pa": "PAL",
    "hPa": "A97",
    "ug/m3": "GQ",
    "ppm": "59",
    "lx": "LUX",
    "dB": "2N",
    "m/s": "MTS",
    "m/s2": "MSK",
    "rad": "C81",
    "deg": "DD",
    "mm": "MMT",
    "m": "MTR",
    "m3": "MTQ",
    "m3/s": "MQS",
    "kg": "KGM",
    "s": "SEC",
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
    "B": "AD",  # byte
}

_PHASE = re.compile(r"(?:l[1-3]|n)(?:-(?:l[1-3]|n))?")
"""A channel that names a phase (``l1``, ``n``) or a pair of them (``l1-l2``, ``l1-n``)."""


def _degrees(radians: float) -> float:
    return radians * 180 / math.pi


def _signed_degrees(radians: float) -> float:
    """-180..180, as AirQualityObserved's windDirection wants it."""
    degrees = _degrees(radians) % 360
    return degrees - 360 if degrees > 180 else degrees


@dataclass(frozen=True, slots=True)
class Attribute:
    """Where a quantity goes in a model, per channel: ``None`` (no channel) or a phase channel ->
    (attribute name, key inside its object value or None); the value converted, the unit after it."""

    slots: Mapping[str | None, tuple[str, str | None]]
    convert: Callable[[float], float] | None = None
    unit: str | None = None  # the unit after convert; None = the reading's own


def _plain(name: str, convert: Callable[[float], float] | None = None, unit: str | None = None) -> Attribute:
    return Attribute({None: (name, None)}, convert, unit)


def _scale(factor: float) -> Callable[[float], float]:
    return lambda value: round(value * factor, 9)


_L123 = {"l1": "L1", "l2": "L2", "l3": "L3"}


def _per_phase(
    total: str, phases: str, convert: Callable[[float], float] | None = None, unit: str | None = None
) -> Attribute:
    """A total attribute for the plain reading and an object of phases for ``:l1`` … ``:l3``."""
    return Attribute({None: (total, None), **{ch: (phases, key) for ch, key in _L123.items()}}, convert, unit)


@dataclass(frozen=True, slots=True)
class Model:
    type: str
    keys: frozenset[str]  # quantities that make a device this model
    attributes: Mapping[str, Attribute]
    observed: bool = True  # the model has dateObserved
    phased: bool = False  # ACMeasurement: phaseType is required


_AIR = {
    "pm1": _plain("pm1"),
    "pm25": _plain("pm25"),
    "pm10": _plain("pm10"),
    "co2": _plain("co2"),
    "tvoc": _plain("volatileOrganicCompoundsTotal"),
    "temperature": _plain("temperature"),
    # Smart Data Models give relative humidity as a fraction 0..1
    "relativeHumidity": _plain("relativeHumidity", _scale(0.01), "/"),
    "windSpeed": _plain("windSpeed"),
    "windDirection": _plain("windDirection", _signed_degrees, "deg"),
    "precipitation": _plain("precipitation"),
    "atmosphericPressure": _plain("pressure", _scale(0.01), "hPa"),
}
_WEATHER = {
    "temperature": _plain("temperature"),
    "relativeHumidity": _plain("relativeHumidity", _scale(0.01), "/"),
    "atmosphericPressure": _plain("atmosphericPressure", _scale(0.01), "hPa"),
    "illuminance": _plain("illuminance"),
    "windSpeed": _plain("windSpeed"),
    "windDirection": _plain("windDirection", lambda r: _degrees(r) % 360, "deg"),
    "precipitation": _plain("precipitation"),
    "dewPoint": _plain("dewPoint"),
}
_KWH = _scale(0.001)
_AC = {
    "activePower": _per_phase("totalActivePower", "activePower"),
    "reactivePower": _per_phase("totalReactivePower", "reactivePower"),
    "apparentPower": _per_phase("totalApparentPower", "apparentPower"),
    "powerFactor": _per_phase("totalPowerFactor", "powerFactor"),
    "frequency": _plain("frequency"),
    "activeEnergyImport": _per_phase("totalActiveEnergyImport", "activeEnergyImport", _KWH, "kWh"),
    "activeEnergyExport": _per_phase("totalActiveEnergyExport", "activeEnergyExport", _KWH, "kWh"),
    # a single-phase meter's plain voltage and current are phase L1's (the model has no total)
    "voltage": Attribute(
        {
            None: ("phaseVoltage", "L1"),
            **{ch: ("phaseVoltage", key) for ch, key in _L123.items()},
            "l1-l2": ("phaseToPhaseVoltage", "L12"),
            "l2-l3": ("phaseToPhaseVoltage", "L23"),
            "l3-l1": ("phaseToPhaseVoltage", "L31"),
        }
    ),
    "current": Attribute(
        {
            None: ("current", "L1"),
            **{ch: ("current", key) for ch, key in _L123.items()},
            "n": ("current", "N"),
        }
    ),
}
_THREE_PHASE = frozenset({"l2", "l3", "l1-l2", "l2-l3", "l3-l1"})

MODELS: tuple[Model, ...] = (
    Model("ACMeasurement", frozenset(_AC), _AC, phased=True),
    Model("AirQualityObserved", frozenset({"pm1", "pm25", "pm10", "co2", "tvoc"}), _AIR),
    Model(
        "TrafficFlowObserved",
        frozenset({"intensity", "averageVehicleSpeed"}),
        {
            "intensity": _plain("intensity"),
            "occupancy": _plain("occupancy"),
            "averageVehicleSpeed": _plain("averageVehicleSpeed"),
        },
    ),
    Model(
        "CrowdFlowObserved",
        frozenset({"presenceCount"}),
        {"presenceCount": _plain("peopleCount"), "occupancy": _plain("occupancy")},
    ),
    Model("ParkingSpot", frozenset({"parkingStatus"}), {"parkingStatus": _plain("status")}, observed=False),
    Model("WeatherObserved", frozenset(_WEATHER), _WEATHER),
)
MODEL_BY_TYPE = {m.type: m for m in MODELS}
GENERIC = "DeviceMeasurement"


@dataclass(frozen=True, slots=True)
class Sample:
    device: str
    name: str  # the reading's name as sent: "voltage:l1-l2", "pm25/mean"
    quantity: str  # without the channel
    channel: str | None  # "l1", "l1-l2", "in"; None for a plain name or an aggregate
    value: Value
    unit: str
    time: float

    @property
    def phase(self) -> bool:
        """Whether the channel names a phase or a pair of phases."""
        return self.channel is not None and _PHASE.fullmatch(self.channel) is not None


def samples(payload: Mapping[str, Any]) -> list[Sample]:
    """The readings of a data batch's SenML pack (bn = "{gateway}/{device}/")."""
    out: list[Sample] = []
    base_time, device = 0.0, ""
    for record in payload["senml"]:
        if "bn" in record:
            device = str(record["bn"]).rstrip("/").rsplit("/", 1)[-1]
        base_time = float(record.get("bt", base_time))
        name = str(record["n"])
        # an aggregate ("voltage:l1/mean", gateway.report) is a quantity of its own, without channel
        quantity, _, channel = name.partition(":") if "/" not in name else (name, "", "")
        value = record["v"] if "v" in record else record["vb"] if "vb" in record else record["vs"]
        when = base_time + record.get("t", 0)
        out.append(Sample(device, name, quantity, channel or None, value, str(record.get("u", "")), when))
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


def _converted(value: Value, convert: Callable[[float], float] | None) -> Value:
    if convert is None or isinstance(value, bool) or not isinstance(value, int | float):
        return value
    return convert(value)


def _static(name: str, value: Any) -> dict[str, Any]:
    """A configured attribute: a Relationship for ``ref…`` names, else a Property."""
    if name.startswith("ref"):
        return {"type": "Relationship", "object": value}
    return {"type": "Property", "value": list(value) if isinstance(value, tuple) else value}


@dataclass(frozen=True, slots=True)
class EntityNaming:
    """Per-device settings from the config: entity type and id overrides, the device's location
    (latitude, longitude; None: the box's) and attributes sent as they are (``refParkingSite``)."""

    type: str | None = None
    id: str | None = None
    location: tuple[float, float] | None = None
    attributes: Mapping[str, Any] = field(default_factory=dict)


def _geo(location: tuple[float, float]) -> dict[str, Any]:
    latitude, longitude = location
    return {"type": "GeoProperty", "value": {"type": "Point", "coordinates": [longitude, latitude]}}


def entities(
    payload: Mapping[str, Any],
    *,
    source: str,
    context: list[str],
    naming: Mapping[str, EntityNaming] | None = None,
    location: tuple[float, float] | None = None,
) -> list[dict[str, Any]]:
    """The NGSI-LD entities (normalized, with ``@context``) for one data batch; ``location`` is
    the box's (latitude, longitude), for devices without their own."""
    gateway = str(payload["gateway"])
    naming = naming or {}
    groups: dict[tuple[str, str | None], list[Sample]] = {}
    for sample in sorted(samples(payload), key=lambda s: s.time):
        group = None if sample.channel is None or sample.phase else sample.channel
        groups.setdefault((sample.device, group), []).append(sample)
    out: list[dict[str, Any]] = []
    for (device, group), group_samples in groups.items():
        names = naming.get(device, EntityNaming())
        where = names.location or location
        common: dict[str, Any] = {}
        if where is not None:
            common["location"] = _geo(where)
        common["source"] = {"type": "Property", "value": source}
        common["dataProvider"] = {"type": "Property", "value": f"citygw {gateway}"}
        common["@context"] = context
        # the box's own health (gateway.health) is never a sensor's model: one DeviceMeasurement each
        model = (
            None if device == HEALTH_DEVICE else model_for({s.quantity for s in group_samples}, names.type)
        )
        generic: list[Sample] = []
        entity: dict[str, Any] = {}
        objects: dict[str, dict[str, Any]] = {}
        latest_time = 0.0
        for sample in group_samples:  # in time order: the latest value of each attribute wins
            attribute = model.attributes.get(sample.quantity) if model is not None else None
            slot = attribute.slots.get(sample.channel if sample.phase else None) if attribute else None
            if attribute is None or slot is None:
                generic.append(sample)
                continue
            latest_time = max(latest_time, sample.time)
            value = _converted(sample.value, attribute.convert)
            unit = attribute.unit if attribute.unit is not None else sample.unit
            name, key = slot
            if key is None:
                entity[name] = _property(value, sample.time, unit)
            else:
                held = objects.setdefault(name, {"value": {}, "time": sample.time, "unit": unit})
                held["value"][key] = value
                held["time"] = max(held["time"], sample.time)
        if model is not None and (entity or objects):
            base = names.id or f"urn:ngsi-ld:{model.type}:{gateway}:{device}"
            head: dict[str, Any] = {"id": base if group is None else f"{base}:{group}", "type": model.type}
            for name, held in objects.items():
                entity[name] = _property(held["value"], held["time"], held["unit"])
            if model.phased:
                three = any(s.channel in _THREE_PHASE for s in group_samples)
                entity["phaseType"] = {"type": "Property", "value": "threePhase" if three else "singlePhase"}
            if model.observed:
                entity["dateObserved"] = {
                    "type": "Property",
                    "value": {"@type": "DateTime", "@value": iso(latest_time)},
                }
            statics = {k: _static(k, v) for k, v in names.attributes.items()}
            out.append({**head, **entity, **statics, **common})
        latest: dict[str, Sample] = {s.name: s for s in generic}
        for sample in latest.values():
            out.append(_generic(gateway, device, sample, common))
    return out


def _generic(gateway: str, device: str, sample: Sample, common: Mapping[str, Any]) -> dict[str, Any]:
    entity: dict[str, Any] = {
        "id": f"urn:ngsi-ld:{GENERIC}:{gateway}:{device}:{sample.name.replace(':', '-')}",
        "type": GENERIC,
        "controlledProperty": {"type": "Property", "value": sample.name},
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
    if device == HEALTH_DEVICE:  # the box itself: a Smart Data Models Device the platform may keep
        entity["refDevice"] = {"type": "Relationship", "object": f"urn:ngsi-ld:Device:{gateway}"}
        entity["measurementType"] = {"type": "Property", "value": "gatewayHealth"}
    return {**entity, **common}
