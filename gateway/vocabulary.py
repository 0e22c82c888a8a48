"""Quantity names (FIWARE Smart Data Models attribute names) and their SenML units.

Names are what the platform sees in SenML ``n`` and what NGSI-LD mapping keys on, so they are
a closed table: drivers and profiles use these names, and a config naming another is refused.
Units are SenML units (RFC 8428 §12.1 and the RFC 8798 secondary registry).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Domain(enum.Enum):
    ENVIRONMENT = "environment"
    ENERGY = "energy"
    MOBILITY = "mobility"
    DEVICE = "device"


@dataclass(frozen=True, slots=True)
class Quantity:
    name: str
    unit: str  # the canonical SenML unit; "" where the quantity has none
    domain: Domain


_TABLE: tuple[tuple[Domain, str, str], ...] = (
    (Domain.ENVIRONMENT, "temperature", "Cel"),
    (Domain.ENVIRONMENT, "relativeHumidity", "%RH"),
    (Domain.ENVIRONMENT, "atmosphericPressure", "Pa"),
    (Domain.ENVIRONMENT, "pm1", "ug/m3"),
    (Domain.ENVIRONMENT, "pm25", "ug/m3"),
    (Domain.ENVIRONMENT, "pm10", "ug/m3"),
    (Domain.ENVIRONMENT, "co2", "ppm"),
    (Domain.ENVIRONMENT, "tvoc", "ppb"),
    (Domain.ENVIRONMENT, "illuminance", "lx"),
    (Domain.ENVIRONMENT, "noiseLevel", "dB"),
    (Domain.ENVIRONMENT, "windSpeed", "m/s"),
    (Domain.ENVIRONMENT, "windDirection", "deg"),
    (Domain.ENVIRONMENT, "precipitation", "mm"),
    (Domain.ENERGY, "voltage", "V"),
    (Domain.ENERGY, "current", "A"),
    (Domain.ENERGY, "activePower", "W"),
    (Domain.ENERGY, "reactivePower", "var"),
    (Domain.ENERGY, "apparentPower", "VA"),
    (Domain.ENERGY, "powerFactor", "/"),
    (Domain.ENERGY, "frequency", "Hz"),
    (Domain.ENERGY, "activeEnergyImport", "Wh"),
    (Domain.ENERGY, "activeEnergyExport", "Wh"),
    (Domain.MOBILITY, "intensity", "count"),
    (Domain.MOBILITY, "occupancy", "/"),
    (Domain.MOBILITY, "averageVehicleSpeed", "km/h"),
    (Domain.MOBILITY, "parkingStatus", ""),
    (Domain.MOBILITY, "presenceCount", "count"),
    (Domain.MOBILITY, "latitude", "lat"),
    (Domain.MOBILITY, "longitude", "lon"),
    (Domain.MOBILITY, "speed", "km/h"),
    (Domain.DEVICE, "batteryLevel", "%"),
    (Domain.DEVICE, "rssi", "dBm"),
    (Domain.DEVICE, "signalQuality", "/"),
)

QUANTITIES: dict[str, Quantity] = {name: Quantity(name, unit, domain) for domain, name, unit in _TABLE}


def unit_of(name: str) -> str:
    """The canonical SenML unit of a quantity name; KeyError for a name not in the vocabulary."""
    return QUANTITIES[name].unit
