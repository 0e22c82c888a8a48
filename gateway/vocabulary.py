"""Quantity names (FIWARE Smart Data Models attribute names) and their SenML units.

Names are what the platform sees in SenML ``n`` and what NGSI-LD mapping keys on, so they are
a closed table: drivers and profiles use these names, and a config naming another is refused.
Units are SenML units: the primary registry (RFC 8428 §12.1, RFC 8798 §2) or the secondary
registry (RFC 8798 §3), never a unit the registries do not hold, and none of the units the
registry marks NOT RECOMMENDED (``%``, ``deg``, ``l``, ``1/min``, …) where a registered unit fits:
battery in ``%EL``, angles in ``rad``, fractions in ``/``, volumes in ``m3``. A pack that uses a
secondary unit says so with ``bver`` (RFC 9100 §4, :data:`SECONDARY_UNITS_VERSION`).
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
    (Domain.ENVIRONMENT, "tvoc", "ppm"),  # RFC 8798 has ppm, not ppb: a sensor's ppb / 1000
    (Domain.ENVIRONMENT, "illuminance", "lx"),
    (Domain.ENVIRONMENT, "noiseLevel", "dB"),
    (Domain.ENVIRONMENT, "windSpeed", "m/s"),
    (Domain.ENVIRONMENT, "windDirection", "rad"),  # from north, clockwise; deg is NOT RECOMMENDED
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
    (Domain.DEVICE, "batteryLevel", "%EL"),  # remaining battery energy level, RFC 8428 §12.1
    (Domain.DEVICE, "rssi", "dBm"),
    (Domain.DEVICE, "signalQuality", "/"),
    (Domain.DEVICE, "fixQuality", ""),
    (Domain.DEVICE, "satellites", "count"),
    # BLE sensors: the quantities of the BTHome v2 objects (bthome.io/format) and of RuuviTag RAWv2
    (Domain.ENVIRONMENT, "dewPoint", "Cel"),
    (Domain.ENVIRONMENT, "volatileOrganicCompoundsTotal", "ug/m3"),  # BTHome tvoc is a mass concentration
    (Domain.ENVIRONMENT, "soilMoisture", "/"),  # a fraction 0..1 (BTHome's % / 100)
    (Domain.ENVIRONMENT, "uvIndex", ""),
    (Domain.ENVIRONMENT, "direction", "rad"),
    (Domain.ENVIRONMENT, "conductivity", "S/m"),
    (Domain.ENVIRONMENT, "mass", "kg"),
    (Domain.ENVIRONMENT, "distance", "m"),
    (Domain.ENVIRONMENT, "duration", "s"),
    (Domain.ENVIRONMENT, "rotation", "rad"),
    (Domain.ENVIRONMENT, "rotationalSpeed", "1/s"),  # revolutions per second (1/min is NOT RECOMMENDED)
    (Domain.ENVIRONMENT, "acceleration", "m/s2"),
    (Domain.ENVIRONMENT, "accelerationX", "m/s2"),
    (Domain.ENVIRONMENT, "accelerationY", "m/s2"),
    (Domain.ENVIRONMENT, "accelerationZ", "m/s2"),
    # rad/s is not a SenML unit; SI writes it s-1 (the radian is 1), SenML 1/s: radians per second
    (Domain.ENVIRONMENT, "angularVelocity", "1/s"),
    (Domain.ENVIRONMENT, "volume", "m3"),  # l and l/s are NOT RECOMMENDED
    (Domain.ENVIRONMENT, "volumeStorage", "m3"),
    (Domain.ENVIRONMENT, "flowRate", "m3/s"),
    (Domain.ENVIRONMENT, "lightLevel", ""),
    (Domain.ENERGY, "gasVolume", "m3"),
    (Domain.ENERGY, "waterVolume", "m3"),
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


def _units(names: str) -> frozenset[str]:
    return frozenset(names.split())


# The SenML Units registry (RFC 8428 §12.1 and the primary units of RFC 8798 §2), as IANA holds it
# (iana.org/assignments/senml, "SenML Units"), without the units it marks NOT RECOMMENDED (with *):
# g, l, l/s, %, 1/min, beat/min, beats, Bspl, deg. A consumer must still understand those.
PRIMARY_UNITS = _units(
    "m kg s A K cd mol Hz rad sr N Pa J W C V F Ohm S Wb T H Cel lm lx Bq Gy Sv kat m2 m3 m/s m/s2 "
    "m3/s W/m2 cd/m2 bit bit/s lat lon pH dB dBW count / %RH %EL EL 1/s S/m "  # RFC 8428
    "B VA VAs var vars J/m kg/m3 NTU"  # RFC 8798 §2; NTU: by expert review (ISO 7027-1)
)
NOT_RECOMMENDED_UNITS = _units("g l l/s % 1/min beat/min beats Bspl deg")

# The Secondary Units registry (RFC 8798 §3): linear transformations of primary units. A pack may
# use them only when it says so: bver with the "Secondary Units" feature (RFC 9100 §4).
SECONDARY_UNITS = _units(
    "ms min h MHz kW kVA kvar Ah Wh kWh varh kvarh kVAh Wh/km KiB GB Mbit/s B/s MB/s mV mA dBm "
    "ug/m3 mm/h m/h ppm /100 /1000 hPa mm cm km km/h"
)

SECONDARY_UNITS_VERSION = 10 | 1 << 4
"""``bver`` of a pack that uses secondary units: version 10 (RFC 8428) plus feature code 4,
"Secondary Units" (RFC 9100 §2, §4) = 26."""


def is_senml_unit(unit: str) -> bool:
    """Whether ``unit`` may be sent in SenML ``u`` by citygw (``""``: no unit, no ``u``)."""
    return unit == "" or unit in PRIMARY_UNITS or unit in SECONDARY_UNITS
