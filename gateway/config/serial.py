"""Config of serial (UART) buses and the device on each: ``type: serial``.

A UART is point to point, so a serial bus carries exactly one device. The device's ``protocol``
chooses the framer and decoder (:mod:`citygw.drivers.serial`); ``lines`` takes the keys of the
configurable line protocol (``format``, ``pattern``, ``columns``, ``delimiter``, ``fields``).
"""

from __future__ import annotations

import enum
import math
import re
from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from citygw.config.base import BusId, Float, Int, QuantityName, Section, located, not_below, problem, within
from citygw.config.location import DEVICE_LOCATION, Location
from citygw.config.report import ReadingInfo, ReportSettings
from citygw.config.units import Duration, duration_within, format_duration
from citygw.config.wiring import standard_baudrate
from citygw.drivers.serial.lines import LineFormat
from citygw.vocabulary import is_senml_unit, unit_of

PORT_EXAMPLE = "e.g. /dev/ttyAMA0, /dev/ttyUSB0 or /dev/serial/by-id/usb-..."
POLLED = frozenset({"mhz19"})  # request/response protocols: the gateway asks every interval
_LINE_KEYS = ("format", "pattern", "columns", "delimiter", "fields")


class Parity(enum.StrEnum):
    NONE = "none"
    EVEN = "even"
    ODD = "odd"


def _port(value: str) -> str:
    if not value.startswith("/") or "\0" in value:
        raise problem(
            "serial_port", f"{value!r} is not a device path; write its absolute path, {PORT_EXAMPLE}"
        )
    return value


def _stopbits(value: float) -> float:
    if value not in (1, 1.5, 2):
        raise problem("stopbits", f"must be 1, 1.5 or 2; got {value:g}")
    return value


class SerialBus(Section):
    """One UART: a port and its line settings. It carries exactly one device."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: Literal["serial"] = Field(description="the bus type: serial")
    port: Annotated[str, AfterValidator(_port)] = Field(description=f"the serial device, {PORT_EXAMPLE}")
    baudrate: Annotated[Int, AfterValidator(within(50, 4_000_000)), AfterValidator(standard_baudrate)] = (
        Field(
            default=9600,
            description="bits per second, a standard rate from 50 to 4000000; "
            "PMS5003, SDS011, MH-Z19 and most GPS: 9600",
        )
    )
    bytesize: Literal[5, 6, 7, 8] = Field(default=8, description="data bits: 5, 6, 7 or 8")
    parity: Parity = Field(default=Parity.NONE, description="none, even or odd")
    stopbits: Annotated[Float, AfterValidator(_stopbits)] = Field(
        default=1.0, description="stop bits: 1, 1.5 or 2"
    )
    reopen_initial: Annotated[Duration, AfterValidator(duration_within(0.1, 600))] = Field(
        default=1.0, description="the first wait before reopening a failed port, 100ms to 10m"
    )
    reopen_max: Annotated[
        Duration, AfterValidator(duration_within(None, 3600)), AfterValidator(not_below("reopen_initial"))
    ] = Field(
        default=60.0,
        validate_default=True,
        description="the longest wait between reopenings, reopen_initial to 1h",
    )


def _senml_unit(value: str) -> str:
    if not is_senml_unit(value):
        raise problem(
            "senml_unit",
            f"{value!r} is not a SenML unit (RFC 8428 §12.1, RFC 8798) that citygw sends; e.g. Cel, "
            "m/s, km/h, ppm, ug/m3, %RH, %EL, / (a fraction), rad; scale the value to one of them",
        )
    return value


def _finite(value: float) -> float:
    if not math.isfinite(value):
        raise problem("number_finite", f"must be a finite number; got {value}")
    return value


class LineField(Section):
    """How one field of a line becomes a reading: ``value * scale + offset``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: QuantityName = Field(description="the reading's quantity name, e.g. averageVehicleSpeed")
    unit: Annotated[str, Field(min_length=1, max_length=32), AfterValidator(_senml_unit)] | None = Field(
        default=None, description="the SenML unit; default the quantity's own unit"
    )
    scale: Annotated[Float, AfterValidator(_finite)] = Field(default=1.0, description="multiplies the value")
    offset: Annotated[Float, AfterValidator(_finite)] = Field(default=0.0, description="added after scale")

    @property
    def resolved_unit(self) -> str:
        """``unit``, else the quantity's canonical unit."""
        return self.unit if self.unit is not None else unit_of(self.name)


def _columns(value: tuple[str, ...]) -> tuple[str, ...]:
    if not value:
        raise problem("columns_empty", "list the CSV columns in order, e.g. [time, speed, count]")
    for index, name in enumerate(value):
        if not name:
            raise problem("columns_blank", f"column {index + 1} has no name; name every column")
        if name in value[:index]:
            raise problem(
                "columns_repeated", f"column {name!r} is listed more than once; name each column once"
            )
    return value


class SerialDevice(Section):
    """The device on a serial bus: which protocol it speaks and how silence is judged."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    bus: BusId = Field(description="the id of the serial bus this device is on")
    protocol: Literal["pms5003", "pms7003", "pmsa003", "sds011", "mhz19", "nmea", "lines"] = Field(
        description="pms5003 (also pms7003, pmsa003), sds011, mhz19, nmea or lines"
    )
    interval: Annotated[Duration, AfterValidator(duration_within(0.5, 3600))] = Field(
        default=5.0, description="mhz19 only: how often the sensor is asked, 500ms to 1h"
    )
    stale_after: Annotated[Duration, AfterValidator(duration_within(1, 86400))] = Field(
        default=60.0, description="silence after which the device is reported stale, 1s to 1d"
    )
    format: LineFormat | None = Field(default=None, description="lines only: regex, csv or json")
    pattern: str | None = Field(
        default=None, description="lines, format regex: a regular expression with named groups"
    )
    columns: Annotated[tuple[str, ...], AfterValidator(_columns)] | None = Field(
        default=None, description="lines, format csv: the column names in order"
    )
    delimiter: Annotated[str, Field(min_length=1, max_length=1)] = Field(
        default=",", description="lines, format csv: the one-character delimiter"
    )
    fields: dict[str, LineField] | None = Field(
        default=None, description="lines only: source field -> {name, unit, scale, offset}"
    )
    report: ReportSettings = Field(
        default=ReportSettings(),
        description="what is sent: raw (every sample, the default), on_change or aggregate; "
        "readings: overrides per reading name",
    )
    location: Location | None = Field(default=None, description=DEVICE_LOCATION)

    @field_validator("interval")
    @classmethod
    def _polled_only(cls, value: float, info: ValidationInfo) -> float:
        protocol = info.data.get("protocol")
        if protocol is not None and protocol not in POLLED:
            raise problem(
                "not_for_protocol",
                f"interval is how often a request/response sensor (mhz19) is asked; {protocol} "
                "sends by itself: remove interval",
            )
        return value

    @field_validator(*_LINE_KEYS)
    @classmethod
    def _lines_only(cls, value: Any, info: ValidationInfo) -> Any:
        protocol = info.data.get("protocol")
        if protocol is not None and protocol != "lines":
            raise problem(
                "not_for_protocol", f"{info.field_name} is a key of protocol lines, not {protocol}: remove it"
            )
        return value

    @field_validator("pattern")
    @classmethod
    def _regex(cls, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            compiled = re.compile(value)
        except re.error as exc:
            where = f" at position {exc.pos}" if exc.pos is not None else ""
            raise problem("pattern", f"not a valid regular expression: {exc.msg}{where}") from None
        if not compiled.groupindex:
            raise problem(
                "pattern",
                "the pattern has no named group; name each field to read, e.g. speed=(?P<speed>\\d+)",
            )
        return value

    @model_validator(mode="after")
    def _line_protocol(self) -> SerialDevice:
        if self.protocol in POLLED and self.stale_after <= self.interval:
            located(
                "device",
                ("stale_after",),
                "stale_order",
                f"must be longer than interval ({format_duration(self.interval)}), or the device is "
                f"stale between polls; got {format_duration(self.stale_after)}",
                self.stale_after,
            )
        if self.protocol != "lines":
            return self
        if self.format is None:
            located(
                "device", ("format",), "missing_key", "protocol lines needs format: regex, csv or json", None
            )
        needs = {LineFormat.REGEX: ("pattern", self.pattern), LineFormat.CSV: ("columns", self.columns)}
        for form, (key, given) in needs.items():
            if self.format is form and given is None:
                located("device", (key,), "missing_key", f"format {form.value} needs {key}", None)
            if self.format is not form and given is not None:
                located(
                    "device", (key,), "not_for_format", f"{key} is for format {form.value}: remove it", given
                )
        if not self.fields:
            located(
                "device",
                ("fields",),
                "missing_key",
                "protocol lines needs fields: source field -> {name: QUANTITY, unit, scale, offset}",
                self.fields,
            )
        if self.format is LineFormat.REGEX and self.pattern is not None:
            what, known = "named group of pattern", list(re.compile(self.pattern).groupindex)
        elif self.format is LineFormat.CSV and self.columns is not None:
            what, known = "column", list(self.columns)
        else:
            return self  # json: any key of the object
        for source in self.fields:
            if source not in known:
                located(
                    "device",
                    ("fields", source),
                    "unknown_field",
                    f"{source!r} is not a {what}; they are: {', '.join(known)}",
                    source,
                )
        return self

    def report_readings(self) -> dict[str, ReadingInfo] | None:
        """The readings this device produces (:class:`citygw.config.report.ReportedDevice`)."""
        if self.protocol == "lines" and self.fields:
            return {field.name: ReadingInfo("number") for field in self.fields.values()}
        return None

    def report_interval(self) -> float | None:
        """How often this device gives each reading, seconds."""
        return self.interval if self.protocol in POLLED else None


def one_device_per_bus(buses: Mapping[str, object], devices: Mapping[str, object]) -> None:
    """Refuse a second device on a serial bus (a UART is point to point), at the second device's
    ``bus`` key. For the whole config's after-validator: no single device's model can see the others."""
    first: dict[str, str] = {}
    for name, device in devices.items():
        bus = getattr(device, "bus", None)
        if not isinstance(buses.get(bus or ""), SerialBus) or not isinstance(bus, str):
            continue
        if bus in first:
            located(
                "config",
                ("devices", name, "bus"),
                "serial_shared",
                f"serial bus {bus!r} already carries device {first[bus]!r}; a UART connects one device: "
                "give this one its own serial bus (its own port)",
                bus,
            )
        first[bus] = name
