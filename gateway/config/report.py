"""The ``report:`` block of a device: raw, on change or aggregated, per device and per reading.

Every device model has ``report`` (:class:`ReportSettings`); ``readings`` overrides it per reading
name. What the rules mean is :mod:`citygw.pipeline.edge`'s docstring; this module checks them and turns
them into :class:`~citygw.pipeline.edge.DevicePolicy` values. The checks that need the device (its
interval, the names and kinds of its readings, which are counters) run over the whole config
(:func:`check_reports`): a model of one block cannot see its device.

.. code-block:: yaml

    report:
      aggregate: {window: 1m, statistics: [mean, max]}
      readings:
        batteryLevel: {on_change: {deadband: 1, heartbeat: 1h}}
        firmwareVersion: raw
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Literal, Protocol, Self, runtime_checkable

from pydantic import AfterValidator, BeforeValidator, ConfigDict, Field, ValidationError, model_validator
from pydantic_core import InitErrorDetails

from citygw.config.base import Float, Section, located, problem, within
from citygw.config.units import Duration, duration_within, format_duration
from citygw.pipeline.edge import NUMERIC_STATISTICS, Aggregate, DevicePolicy, OnChange, Policy, Statistic
from citygw.vocabulary import QUANTITIES

_RAW_HINT = "write raw, or a mapping with on_change or aggregate"


def _window(value: float) -> float:
    if value != int(value) or 86_400 % int(value):
        raise problem(
            "report_window",
            "windows start on the clock, so a window must divide a day into whole windows, e.g. 10s, "
            f"1m, 5m, 15m or 1h; got {format_duration(value)}",
        )
    return value


def _statistics(value: tuple[Statistic, ...]) -> tuple[Statistic, ...]:
    if not value:
        raise problem("statistics_empty", f"list at least one statistic: {', '.join(Statistic)}")
    for index, statistic in enumerate(value):
        if statistic in value[:index]:
            raise problem("statistics_repeated", f"{statistic.value!r} is listed more than once")
    return value


def _reading_name(value: Any) -> Any:
    if not isinstance(value, str):
        return value
    quantity = value.partition(":")[0]
    if quantity not in QUANTITIES:
        close = difflib.get_close_matches(quantity, QUANTITIES, n=1)
        guess = f" (did you mean {close[0]!r}?)" if close else ""
        raise problem(
            "report_reading",
            f"{value!r} is not a reading name{guess}; a reading is a quantity of the vocabulary, "
            "with :channel where the device has several (voltage:l1)",
        )
    return value


def _empty_is_default(data: Any) -> Any:
    """``report: raw`` is the empty rule; ``on_change:`` with nothing under it takes the defaults."""
    if data is None or data == "raw":
        return {}
    if isinstance(data, str):
        raise problem("report_rule", f"unknown report {data!r}; {_RAW_HINT}")
    if isinstance(data, dict):
        return {key: {} if key == "on_change" and value is None else value for key, value in data.items()}
    return data


class OnChangeSettings(Section):
    """Send a value when it moved by more than the dead-band since the last value sent."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    deadband: Annotated[Float, AfterValidator(within(0, None))] | None = Field(
        default=None, description="the move to exceed, in the reading's unit; none: any change is sent"
    )
    deadband_percent: Annotated[Float, AfterValidator(within(0, 1000, above=True))] | None = Field(
        default=None,
        description="the move to exceed, in percent of the last value sent; with deadband, exceed both",
    )
    heartbeat: Annotated[Duration, AfterValidator(duration_within(1, 86400))] = Field(
        default=900.0,
        description="send anyway when the last value sent is this old, 1s to 1d (15m), so silence "
        "means trouble",
    )

    @property
    def has_deadband(self) -> bool:
        return self.deadband is not None or self.deadband_percent is not None


class AggregateSettings(Section):
    """Statistics over windows aligned to the clock."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    window: Annotated[Duration, AfterValidator(duration_within(1, 86400)), AfterValidator(_window)] = Field(
        description="the window, 1s to 1d, dividing a day (e.g. 1m, 15m, 1h); records carry its start"
    )
    statistics: Annotated[tuple[Statistic, ...], AfterValidator(_statistics)] = Field(
        default=(Statistic.MEAN,), description="any of mean, min, max, last, count, sum (mean)"
    )


class ReadingReport(Section):
    """How one reading is sent: raw (no key, or ``raw``), on_change or aggregate."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    on_change: OnChangeSettings | None = Field(
        default=None, description="send on a move beyond a dead-band, and at every heartbeat"
    )
    aggregate: AggregateSettings | None = Field(
        default=None, description="send statistics over clock-aligned windows"
    )

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, data: Any) -> Any:
        return _empty_is_default(data)

    @model_validator(mode="after")
    def _one_rule(self) -> Self:
        if self.on_change is not None and self.aggregate is not None:
            located(
                "report",
                ("aggregate",),
                "report_rule",
                "choose on_change or aggregate, not both: a reading is sent on change or aggregated "
                "(give readings their own rule under readings:)",
                None,
            )
        return self

    @property
    def policy(self) -> Policy:
        if self.on_change is not None:
            change = self.on_change
            relative = change.deadband_percent / 100 if change.deadband_percent is not None else None
            return OnChange(change.heartbeat, change.deadband, relative)
        if self.aggregate is not None:
            return Aggregate(self.aggregate.window, self.aggregate.statistics)
        return None


class ReportSettings(ReadingReport):
    """A device's ``report:``: its rule, and ``readings`` overriding it per reading name."""

    readings: dict[Annotated[str, BeforeValidator(_reading_name)], ReadingReport] = Field(
        default_factory=dict, description="reading name -> its own rule (raw, on_change or aggregate)"
    )

    @model_validator(mode="before")
    @classmethod
    def _readings_raw(cls, data: Any) -> Any:
        data = _empty_is_default(data)
        if isinstance(data, dict) and isinstance(data.get("readings"), dict):
            data = {**data, "readings": {k: _empty_is_default(v) for k, v in data["readings"].items()}}
        return data


# --- what the rules meet: the device -----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ReadingInfo:
    kind: Literal["number", "bool", "text"]
    counter: bool = False


@runtime_checkable
class ReportedDevice(Protocol):
    """A device model whose config says what it produces and how often (each device type's own
    model answers; a model that cannot tell does not implement this)."""

    def report_readings(self) -> dict[str, ReadingInfo] | None:
        """The readings the device produces (None: only known when they arrive)."""
        ...

    def report_interval(self) -> float | None:
        """How often the device gives each reading, seconds (None: not known)."""
        ...


def device_readings(device: object) -> dict[str, ReadingInfo] | None:
    """The readings a device produces, where its config says (None: only known when they arrive)."""
    return device.report_readings() if isinstance(device, ReportedDevice) else None


def device_interval(device: object) -> float | None:
    """How often the device gives each reading, where its config says (seconds)."""
    return device.report_interval() if isinstance(device, ReportedDevice) else None


def _report_of(device: object) -> ReportSettings:
    report = getattr(device, "report", None)
    return report if isinstance(report, ReportSettings) else ReportSettings()


def check_reports(devices: Mapping[str, object]) -> None:
    """Refuse rules that make no sense for their device, each problem at its own key."""
    found: list[InitErrorDetails] = []

    def add(loc: tuple[str | int, ...], kind: str, message: str, value: Any) -> None:
        found.append(InitErrorDetails(type=problem(kind, message), loc=("devices", *loc), input=value))

    for name, device in devices.items():
        report = _report_of(device)
        interval = device_interval(device)
        readings = device_readings(device)
        rules: list[tuple[tuple[str | int, ...], ReadingReport]] = [((name, "report"), report)]
        rules += [((name, "report", "readings", key), rule) for key, rule in report.readings.items()]
        if readings is not None:
            for key in report.readings:
                if key not in readings:
                    add(
                        (name, "report", "readings", key),
                        "report_reading",
                        f"{key!r} is not a reading of this device; its readings: {', '.join(readings)}",
                        key,
                    )
        if interval is not None:
            every = format_duration(interval)
            for where, rule in rules:
                if rule.aggregate is not None and rule.aggregate.window < interval:
                    add(
                        (*where, "aggregate", "window"),
                        "report_window",
                        f"the window ({format_duration(rule.aggregate.window)}) is shorter than the "
                        f"device's interval ({every}): most windows would be empty; use a window of at "
                        f"least {every}, or read the device more often",
                        rule.aggregate.window,
                    )
                if rule.on_change is not None and rule.on_change.heartbeat < interval:
                    add(
                        (*where, "on_change", "heartbeat"),
                        "report_heartbeat",
                        f"the heartbeat ({format_duration(rule.on_change.heartbeat)}) is shorter than "
                        f"the device's interval ({every}): every sample would be sent; use a heartbeat "
                        f"of at least {every}, or report raw",
                        rule.on_change.heartbeat,
                    )
        if readings is None:
            continue
        for reading, info in readings.items():
            if info.kind == "number":
                continue
            own = reading in report.readings
            rule = report.readings[reading] if own else report
            where = (name, "report", "readings", reading) if own else (name, "report")
            advice = "" if own else f" (give {reading} its own rule under readings:, e.g. {reading}: raw)"
            if rule.on_change is not None and rule.on_change.has_deadband:
                key = "deadband" if rule.on_change.deadband is not None else "deadband_percent"
                add(
                    (*where, "on_change", key),
                    "report_deadband",
                    f"{reading} is {_kind(info)}: a dead-band needs numbers; remove it to send every "
                    f"change{advice}",
                    getattr(rule.on_change, key),
                )
            if rule.aggregate is not None and info.kind == "text":
                numeric = [s.value for s in rule.aggregate.statistics if s in NUMERIC_STATISTICS]
                if numeric:
                    add(
                        (*where, "aggregate", "statistics"),
                        "report_statistics",
                        f"{reading} is {_kind(info)}: {', '.join(numeric)} "
                        f"{'needs' if len(numeric) == 1 else 'need'} numbers; text has only last and "
                        f"count{advice}",
                        [s.value for s in rule.aggregate.statistics],
                    )
    if found:
        raise ValidationError.from_exception_data("config", found)


def _kind(info: ReadingInfo) -> str:
    return "text" if info.kind == "text" else "a true/false value"


def report_policies(devices: Mapping[str, object]) -> dict[str, DevicePolicy]:
    """The processing policy of every device whose readings are not all sent raw."""
    out: dict[str, DevicePolicy] = {}
    for name, device in devices.items():
        report = _report_of(device)
        overrides = {key: rule.policy for key, rule in report.readings.items()}
        if report.policy is None and all(policy is None for policy in overrides.values()):
            continue
        readings = device_readings(device) or {}
        counters = frozenset(key for key, info in readings.items() if info.counter)
        out[name] = DevicePolicy(report.policy, overrides, counters)
    return out


__all__ = [
    "AggregateSettings",
    "OnChangeSettings",
    "ReadingInfo",
    "ReadingReport",
    "ReportSettings",
    "check_reports",
    "device_interval",
    "device_readings",
    "report_policies",
]
