"""The ``health`` section: how often the box reports its own health (gateway.health)."""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator, ConfigDict, Field

from citygw.config.base import Section, located
from citygw.config.units import Duration, duration_within

HEALTH_DEVICE = "gateway"
"""The reserved device id of the box's own health readings; no config device may use it."""


class HealthSettings(Section):
    """The box's own health as readings of the reserved device ``gateway`` in the signed stream."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = Field(default=True, description="emit health readings (device id 'gateway')")
    interval: Annotated[Duration, AfterValidator(duration_within(1, 86400))] = Field(
        default=60.0, description="time between two health reports, 1s to 1d"
    )


def no_reserved_device(devices: dict[str, object]) -> None:
    """Refuse a config device named like the box's own health device."""
    if HEALTH_DEVICE in devices:
        located(
            "devices",
            ("devices", HEALTH_DEVICE),
            "reserved_device",
            f"the device id {HEALTH_DEVICE!r} is reserved for the box's own health readings "
            f"(docs/integrator.md, 'Health readings'); rename the device, e.g. {HEALTH_DEVICE}-sensor",
            devices[HEALTH_DEVICE],
        )
