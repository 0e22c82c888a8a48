"""What a reload changes: the difference between the config in effect and a new one.

:func:`plan_reload` compares two validated configs and says which buses and uplinks start, stop or
restart, whether the report rules changed, and which keys cannot change without a restart
(:data:`RESTART_KEYS`: the buffer file, the gateway's identity and signing key, the metrics
listener). The daemon (:meth:`citygw.daemon.gateway.Gateway.apply`) carries a plan out; a plan with
``needs_restart`` is refused as a whole and the config in effect keeps running.

A bus restarts when its own settings, the set of its devices or any of its devices' settings
changed (a device's ``report`` rule and ``location`` excepted: they act after the driver); a bus
nothing touched keeps running, its connection and its devices' state untouched. An uplink restarts
when its settings changed (an ``ngsi-ld`` uplink also when a device or the gateway's location
changed: its entities come from them; an ``mqtt`` uplink also when the remote config topic
changed, or operator keys came or went); its delivery cursor is in the buffer, so the new one
goes on where the old one was acknowledged (at least once, as after a reconnect).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from citygw.errors import CitygwError, ConfigProblem

if TYPE_CHECKING:
    from citygw.config import Config

RESTART_KEYS: tuple[tuple[str, str], ...] = (
    ("gateway.id", "the gateway id names the buffer's chain and every batch"),
    ("gateway.key_file", "the signing key is loaded once, with the buffer"),
    ("gateway.jws_alg", "the signing key is loaded once, with the buffer"),
    ("buffer.path", "the buffer file is opened (and locked) once"),
    ("buffer.synchronous", "the buffer file is opened once"),
    ("metrics", "the metrics listener is bound once"),
)
"""Keys a reload cannot change, with why: ``systemctl restart citygw`` applies them."""

_DRIVER_ONLY = {"report", "location"}  # device keys that do not reach the driver


@dataclass(slots=True)
class ReloadPlan:
    """What applying a new config does."""

    needs_restart: list[str] = field(default_factory=list)  # "key: why" of each refused change
    buses_start: list[str] = field(default_factory=list)
    buses_stop: list[str] = field(default_factory=list)
    buses_restart: list[str] = field(default_factory=list)
    uplinks_start: list[str] = field(default_factory=list)
    uplinks_stop: list[str] = field(default_factory=list)
    uplinks_restart: list[str] = field(default_factory=list)
    reports_changed: bool = False
    settings_changed: list[str] = field(default_factory=list)  # keys applied in place

    @property
    def changes(self) -> bool:
        return bool(
            self.buses_start
            or self.buses_stop
            or self.buses_restart
            or self.uplinks_start
            or self.uplinks_stop
            or self.uplinks_restart
            or self.reports_changed
            or self.settings_changed
        )

    def summary(self) -> str:
        parts = []
        for noun, items in (
            ("buses started", self.buses_start),
            ("buses restarted", self.buses_restart),
            ("buses stopped", self.buses_stop),
            ("uplinks started", self.uplinks_start),
            ("uplinks restarted", self.uplinks_restart),
            ("uplinks stopped", self.uplinks_stop),
            ("settings", self.settings_changed),
        ):
            if items:
                parts.append(f"{noun}: {', '.join(items)}")
        if self.reports_changed:
            parts.append("report rules changed")
        return "; ".join(parts) or "nothing changed"


def _get(config: Config, dotted: str) -> Any:
    value: Any = config
    for part in dotted.split("."):
        value = getattr(value, part)
    return value


def _bus_devices(config: Config, bus: str) -> dict[str, Any]:
    return {
        name: device.model_dump(exclude=_DRIVER_ONLY)
        for name, device in config.devices.items()
        if device.bus == bus
    }


def plan_reload(old: Config, new: Config) -> ReloadPlan:
    """The plan that turns ``old`` (in effect) into ``new``; pure, no I/O."""
    plan = ReloadPlan()
    for key, why in RESTART_KEYS:
        if _get(old, key) != _get(new, key):
            plan.needs_restart.append(f"{key} changed; {why}: restart the service to change it")

    for name in new.buses.keys() - old.buses.keys():
        plan.buses_start.append(name)
    for name in old.buses.keys() - new.buses.keys():
        plan.buses_stop.append(name)
    for name in old.buses.keys() & new.buses.keys():
        if old.buses[name] != new.buses[name] or _bus_devices(old, name) != _bus_devices(new, name):
            plan.buses_restart.append(name)

    entities_changed = old.devices != new.devices or old.gateway.location != new.gateway.location
    # an mqtt uplink subscribes to the config topic when operator keys are set
    topic_changed = (old.remote.config_topic, bool(old.gateway.operator_keys)) != (
        new.remote.config_topic,
        bool(new.gateway.operator_keys),
    )
    for name in new.uplinks.keys() - old.uplinks.keys():
        plan.uplinks_start.append(name)
    for name in old.uplinks.keys() - new.uplinks.keys():
        plan.uplinks_stop.append(name)
    for name in old.uplinks.keys() & new.uplinks.keys():
        before, after = old.uplinks[name], new.uplinks[name]
        if (
            before != after
            or (after.type == "ngsi-ld" and entities_changed)
            or (after.type == "mqtt" and topic_changed)
        ):
            plan.uplinks_restart.append(name)

    plan.reports_changed = {n: getattr(d, "report", None) for n, d in old.devices.items()} != {
        n: getattr(d, "report", None) for n, d in new.devices.items()
    }
    for key in ("log", "buffer", "remote", "gateway.operator_keys"):
        if _get(old, key) != _get(new, key) and not any(k.startswith(key) for k in plan.needs_restart):
            plan.settings_changed.append(key)
    for items in (
        plan.buses_start,
        plan.buses_stop,
        plan.buses_restart,
        plan.uplinks_start,
        plan.uplinks_stop,
        plan.uplinks_restart,
    ):
        items.sort()
    return plan


class ReloadRefused(CitygwError):
    """A new config that cannot be applied in place; the config in effect keeps running."""

    def __init__(self, problems: list[ConfigProblem]) -> None:
        super().__init__("; ".join(str(p) for p in problems))
        self.problems = problems
