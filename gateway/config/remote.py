"""Config of remote configuration: where signed config documents come from, and how long a new
config has to prove itself before the box keeps it (docs/operations.md, "Running a fleet")."""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator, ConfigDict, Field

from citygw.config.base import Section, Topic
from citygw.config.units import Duration, duration_within
from citygw.config.uplinks import HttpUrl

DEFAULT_CONFIG_TOPIC = "city/{gateway}/config"


class RemoteSettings(Section):
    """Signed config documents (``citygw config sign``), taken only when ``gateway.operator_keys``
    names at least one key."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    config_topic: Topic = Field(
        default=DEFAULT_CONFIG_TOPIC,
        description="the retained MQTT topic every mqtt uplink subscribes to; {gateway} is the gateway id",
    )
    config_url: HttpUrl | None = Field(
        default=None,
        description="an http(s) url polled for the document (conditional GET, ETag), for boxes "
        "without an mqtt uplink; e.g. https://platform.example.city/config/{gateway}",
    )
    poll_interval: Annotated[Duration, AfterValidator(duration_within(1, 86400))] = Field(
        default=300.0, description="how often config_url is polled, 1s to 1d (a fleet: minutes)"
    )
    grace: Annotated[Duration, AfterValidator(duration_within(1, 3600))] = Field(
        default=120.0,
        description="how long a new config has to prove healthy (every uplink connected, no bus "
        "failing) before it is kept; otherwise the previous config is restored, 1s to 1h",
    )

    def topic_for(self, gateway_id: str) -> str:
        return self.config_topic.replace("{gateway}", gateway_id)

    def url_for(self, gateway_id: str) -> str | None:
        return None if self.config_url is None else self.config_url.replace("{gateway}", gateway_id)
