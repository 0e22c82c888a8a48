"""Where a box and its devices stand: ``location: {latitude: 13.7465, longitude: 100.5348}``.

``gateway.location`` is the box's place; a device's own ``location`` overrides it for that
device (a sensor on the next pole, a meter in the cabinet across the street). The NGSI-LD uplink
needs it: Smart Data Models' AirQualityObserved, WeatherObserved, ACMeasurement and ParkingSpot
require ``location`` (a GeoJSON Point, WGS 84), so a config with an ``ngsi-ld`` uplink and no
``gateway.location`` is refused (:func:`located_for_ngsi`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Annotated

from pydantic import AfterValidator, ConfigDict, Field

from citygw.config.base import Float, Section, located, within

_WHERE = "e.g. latitude: 13.7465, longitude: 100.5348 (decimal degrees, WGS 84, as a map app shows them)"
DEVICE_LOCATION = (
    "where this device stands when not at the box: {latitude, longitude}; default gateway.location"
)


class Location(Section):
    """A point on the earth, in decimal degrees (WGS 84)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    latitude: Annotated[Float, AfterValidator(within(-90, 90))] = Field(
        description=f"degrees north (negative: south), -90 to 90; {_WHERE}"
    )
    longitude: Annotated[Float, AfterValidator(within(-180, 180))] = Field(
        description=f"degrees east (negative: west), -180 to 180; {_WHERE}"
    )


def located_for_ngsi(gateway_location: Location | None, uplinks: Mapping[str, object]) -> None:
    """Refuse an ``ngsi-ld`` uplink without the box's location, at ``gateway.location``."""
    if gateway_location is not None:
        return
    for name, uplink in uplinks.items():
        if getattr(uplink, "type", None) == "ngsi-ld":
            located(
                "config",
                ("gateway", "location"),
                "location_missing",
                f"uplink {name!r} sends Smart Data Models entities, which need the box's location: "
                "add to gateway: location: {latitude: 13.7465, longitude: 100.5348} with the box's own "
                "decimal degrees (WGS 84, as a map app shows them); a device's own location: overrides it",
                None,
            )


@dataclass(frozen=True, slots=True)
class Places:
    """Where readings were taken, for the NGSI-LD uplink: the box's (latitude, longitude) and the
    devices that stand elsewhere."""

    box: tuple[float, float] | None = None
    devices: Mapping[str, tuple[float, float]] = field(default_factory=dict)


def places(gateway_location: Location | None, devices: Mapping[str, object]) -> Places:
    """The :class:`Places` of a config's ``gateway.location`` and its devices' ``location``."""

    def point(location: Location) -> tuple[float, float]:
        return (location.latitude, location.longitude)

    own = {
        name: point(where)
        for name, device in devices.items()
        if isinstance(where := getattr(device, "location", None), Location)
    }
    return Places(point(gateway_location) if gateway_location is not None else None, own)
