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
    (Domain.DEVICE, "fixQuality", ""),
    (Domain.DEVICE, "satellites", "count"),
    # BLE sensors: the quantities of the BTHome v2 objects (bthome.io/format) and of RuuviTag RAWv2
    (Domain.ENVIRONMENT, "dewPoint", "Cel"),
    (Domain.ENVIRONMENT, "volatileOrganicCompoundsTotal", "ug/m3"),  # BTHome tvoc is a mass concentration
    (Domain.ENVIRONMENT, "soilMoisture", "%"),
    (Domain.ENVIRONMENT, "uvIndex", ""),
    (Domain.ENVIRONMENT, "direction", "deg"),
    (Domain.ENVIRONMENT, "conductivity", "S/m"),
    (Domain.ENVIRONMENT, "mass", "kg"),
    (Domain.ENVIRONMENT, "distance", "m"),
    (Domain.ENVIRONMENT, "duration", "s"),
    (Domain.ENVIRONMENT, "rotation", "deg"),
    (Domain.ENVIRONMENT, "rotationalSpeed", "1/min"),
    (Domain.ENVIRONMENT, "acceleration", "m/s2"),
    (Domain.ENVIRONMENT, "accelerationX", "m/s2"),
    (Domain.ENVIRONMENT, "accelerationY", "m/s2"),
    (Domain.ENVIRONMENT, "accelerationZ", "m/s2"),
    (Domain.ENVIRONMENT, "angularVelocity", "deg/s"),
    (Domain.ENVIRONMENT, "volume", "l"),
    (Domain.ENVIRONMENT, "volumeStorage", "l"),
    (Domain.ENVIRONMENT, "flowRate", "l/s"),
    (Domain.ENVIRONMENT, "lightLevel", ""),
    (Domain.ENERGY, "gasVolume", "m3"),
    (Domain.ENERGY, "waterVolume", "l"),
    (Domain.MOBILITY, "count", "count"),
    (Domain.MOBILITY, "movementCounter", "count"),
    (Domain.DEVICE, "batteryVoltage", "V"),
    (Domain.DEVICE, "channel", ""),
    (Domain.DEVICE, "buttonEvent", ""),  # press, double_press, long_press, ...
    (Domain.DEVICE, "dimmerSteps", "count"),  # rotate left: negative
    (Domain.DEVICE, "text", ""),
    (Domain.DEVICE, "rawData", ""),  # hex
    # BLE binary sensors (BTHome 0x0F-0x2D): true = on, open, detected, low, ... as bthome.io/format says
    (Domain.DEVICE, "genericBoolean", ""),
    (Domain.DEVICE, "powerState", ""),
    (Domain.DEVICE, "batteryLow", ""),
    (Domain.DEVICE, "batteryCharging", ""),
    (Domain.DEVICE, "connectivity", ""),
    (Domain.DEVICE, "plug", ""),
    (Domain.DEVICE, "problem", ""),
    (Domain.DEVICE, "running", ""),
    (Domain.DEVICE, "tamper", ""),
    (Domain.ENVIRONMENT, "carbonMonoxide", ""),
    (Domain.ENVIRONMENT, "cold", ""),
    (Domain.ENVIRONMENT, "gasDetected", ""),
    (Domain.ENVIRONMENT, "heat", ""),
    (Domain.ENVIRONMENT, "light", ""),
    (Domain.ENVIRONMENT, "moistureDetected", ""),
    (Domain.ENVIRONMENT, "safety", ""),
    (Domain.ENVIRONMENT, "smoke", ""),
    (Domain.ENVIRONMENT, "sound", ""),
    (Domain.ENVIRONMENT, "vibration", ""),
    (Domain.MOBILITY, "opening", ""),
    (Domain.MOBILITY, "door", ""),
    (Domain.MOBILITY, "garageDoor", ""),
    (Domain.MOBILITY, "window", ""),
    (Domain.MOBILITY, "lock", ""),
    (Domain.MOBILITY, "motion", ""),
    (Domain.MOBILITY, "moving", ""),
    (Domain.MOBILITY, "occupied", ""),
    (Domain.MOBILITY, "presence", ""),
)

QUANTITIES: dict[str, Quantity] = {name: Quantity(name, unit, domain) for domain, name, unit in _TABLE}


def unit_of(name: str) -> str:
    """The canonical SenML unit of a quantity name; KeyError for a name not in the vocabulary."""
    return QUANTITIES[name].unit
