"""Config of BLE buses and the devices heard on them: ``type: ble``.

A BLE bus is one adapter and one scanner shared by every device on it. A device on a BLE bus is one
of two kinds, told apart by its keys:

- a **sensor** (``format: bthome | ruuvi | xiaomi-pvvx`` and ``address``): only adverts from that
  address are decoded; nothing else heard is recorded (the allowlist is the config itself);
- a **presence counter** (``type: presence``): counts distinct advertisers per window for footfall,
  from salted hashes that never leave memory (docs/footfall.md).
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BeforeValidator,
    ConfigDict,
    Field,
    GetJsonSchemaHandler,
    ModelWrapValidatorHandler,
    SecretStr,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema

from citygw.config.base import (
    BusId,
    ConfigPath,
    Int,
    ReadableFile,
    Section,
    load_context,
    located,
    not_below,
    problem,
    within,
)
from citygw.config.location import DEVICE_LOCATION, Location
from citygw.config.report import ReadingInfo, ReportSettings
from citygw.config.units import Duration, describe, duration_within, format_duration
from citygw.drivers.ble import recording
from citygw.drivers.ble.common import normalise_address
from citygw.drivers.ble.presence import NAME as PRESENCE_READING

_ADAPTER_RE = re.compile(r"hci[0-9]{1,3}")
_BINDKEY_RE = re.compile(r"[0-9A-Fa-f]{32}")
_DEVICE_KINDS = (
    "a device on a ble bus is a sensor (format: bthome, ruuvi or xiaomi-pvvx, with its address) "
    "or a presence counter (type: presence)"
)


class Scanning(enum.StrEnum):
    """How the adapter listens: passive never transmits; active asks every advertiser for more."""

    AUTO = "auto"  # passive where BlueZ allows it, else active (said in the log)
    PASSIVE = "passive"
    ACTIVE = "active"


class BleFormat(enum.StrEnum):
    BTHOME = "bthome"  # BTHome v2, service data 0xFCD2
    RUUVI = "ruuvi"  # RuuviTag data format 5 (RAWv2), manufacturer data 0x0499
    XIAOMI_PVVX = "xiaomi-pvvx"  # pvvx / atc1441 custom firmware, service data 0x181A


def _adapter(value: str) -> str:
    if not _ADAPTER_RE.fullmatch(value):
        raise problem(
            "ble_adapter", f"{value!r} is not a Bluetooth adapter name; write e.g. hci0 (see `hciconfig`)"
        )
    return value


def _address(value: Any) -> str:
    if not isinstance(value, str):
        quote = "; put it in quotes" if isinstance(value, int | float) else ""
        raise problem(
            "ble_address",
            f"expected a Bluetooth address such as A4:C1:38:0B:5E:ED; got {describe(value)}{quote}",
        )
    try:
        return normalise_address(value)
    except ValueError as exc:
        raise problem("ble_address", str(exc)) from None


def _bindkey(value: SecretStr | None) -> SecretStr | None:
    if value is not None and not _BINDKEY_RE.fullmatch(value.get_secret_value().strip()):
        raise problem(
            "ble_bindkey", "a BTHome bindkey is 32 hex digits (16 bytes), as the device's app shows it"
        )
    return SecretStr(value.get_secret_value().strip()) if value is not None else None


def _window(value: float) -> float:
    if value != int(value) or 86_400 % int(value):
        raise problem(
            "presence_window",
            f"a window must divide a day into whole windows, e.g. 30s, 1m, 5m, 15m or 1h; "
            f"got {format_duration(value)}",
        )
    return value


BleAddress = Annotated[str, BeforeValidator(_address)]


class BleBus(Section):
    """One Bluetooth adapter; one scanner shared by every device on the bus."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: Literal["ble"] = Field(description="the bus type: ble")
    adapter: Annotated[str, AfterValidator(_adapter)] = Field(
        default="hci0", description="the Bluetooth adapter, e.g. hci0"
    )
    scanning: Scanning = Field(
        default=Scanning.AUTO,
        description="passive, active, or auto: passive where BlueZ allows it, else active",
    )
    restart_when_silent: Annotated[Duration, AfterValidator(duration_within(0, 86400))] = Field(
        default=300.0,
        description="restart the scanner after this long without any advert (BlueZ gone quiet), "
        "0s (never) to 1d",
    )
    backoff_initial: Annotated[Duration, AfterValidator(duration_within(0.1, 600))] = Field(
        default=2.0, description="the first wait before restarting a failed scanner, 100ms to 10m"
    )
    backoff_max: Annotated[
        Duration, AfterValidator(duration_within(None, 3600)), AfterValidator(not_below("backoff_initial"))
    ] = Field(
        default=120.0,
        validate_default=True,
        description="the longest wait between restarts, backoff_initial to 1h",
    )
    replay: ReadableFile | None = Field(
        default=None,
        description="a file of recorded adverts (JSON lines) to replay instead of listening to the "
        "adapter: for benches and demos; a pole leaves it out",
    )

    @field_validator("replay")
    @classmethod
    def _recording(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        context = load_context(info)
        if value is not None and context is not None and context.check_files:
            try:
                recording.load(value)
            except recording.RecordingError as exc:
                raise problem("ble_replay", str(exc)) from None
        return value


class BleDevice(Section):
    """A device on a BLE bus: validating this model chooses :class:`BleSensor` or :class:`PresenceCounter`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    bus: BusId = Field(description="the id of the ble bus this device is heard on")
    location: Location | None = Field(default=None, description=DEVICE_LOCATION)

    @model_validator(mode="wrap")
    @classmethod
    def _choose(cls, data: Any, handler: ModelWrapValidatorHandler[Any], info: ValidationInfo) -> Any:
        if cls is not BleDevice or not isinstance(data, dict):
            return handler(data)
        if "type" in data:
            if data["type"] != "presence":
                located(
                    "device",
                    ("type",),
                    "ble_device_type",
                    f"unknown device type {data['type']!r} on a ble bus; the only device type is presence "
                    "(a sensor takes format: instead of type:)",
                    data,
                )
            if "format" in data:
                located(
                    "device",
                    ("format",),
                    "ble_device_kind",
                    f"a presence counter has no format; {_DEVICE_KINDS}",
                    data,
                )
            return PresenceCounter.model_validate(data, context=info.context)
        if "format" not in data:
            located(
                "device",
                ("format",),
                "missing_key",
                f"required key 'format' is missing; {_DEVICE_KINDS}",
                data,
            )
        return BleSensor.model_validate(data, context=info.context)

    @classmethod
    def __get_pydantic_json_schema__(
        cls, core_schema: CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        if cls is not BleDevice:
            return super().__get_pydantic_json_schema__(core_schema, handler)
        return {
            "anyOf": [
                handler(BleSensor.__pydantic_core_schema__),
                handler(PresenceCounter.__pydantic_core_schema__),
            ]
        }


class BleSensor(BleDevice):
    """A BLE sensor matched by its address; its adverts are decoded as ``format``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    format: BleFormat = Field(description="bthome, ruuvi or xiaomi-pvvx")
    address: BleAddress = Field(description="the sensor's Bluetooth address, e.g. A4:C1:38:0B:5E:ED")
    bindkey: Annotated[SecretStr | None, AfterValidator(_bindkey)] = Field(
        default=None,
        description="bthome only: the 32-hex-digit key of an encrypted sensor; prefer bindkey_file",
    )
    bindkey_file: ConfigPath | None = Field(
        default=None, description="a file holding the bindkey (read at load into bindkey; keep it mode 0600)"
    )
    stale_after: Annotated[Duration, AfterValidator(duration_within(1, 86400))] = Field(
        default=600.0, description="silence after which the sensor is reported stale, 1s to 1d"
    )
    report: ReportSettings = Field(
        default=ReportSettings(),
        description="what is sent: raw (every sample, the default), on_change or aggregate; "
        "readings: overrides per reading name",
    )

    @field_validator("bindkey")
    @classmethod
    def _bthome_only(cls, value: SecretStr | None, info: ValidationInfo) -> SecretStr | None:
        fmt = info.data.get("format")
        if value is not None and fmt is not None and fmt is not BleFormat.BTHOME:
            raise problem(
                "ble_bindkey",
                f"bindkey is for encrypted bthome sensors; a {fmt.value} sensor has none: remove bindkey",
            )
        return value


class PresenceCounter(BleDevice):
    """Counts the distinct advertisers heard per window (footfall); see docs/footfall.md."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: Literal["presence"] = Field(description="presence: a footfall counter")
    window: Annotated[Duration, AfterValidator(duration_within(10, 3600)), AfterValidator(_window)] = Field(
        default=60.0, description="the counting window, 10s to 1h, dividing a day (e.g. 1m, 5m, 15m)"
    )
    rssi_threshold: Annotated[Int, AfterValidator(within(-127, 20))] = Field(
        default=-80, description="adverts weaker than this (dBm) are not counted, -127 to 20"
    )
    report: ReportSettings = Field(
        default=ReportSettings(),
        description="what is sent: raw (every sample, the default), on_change or aggregate; "
        "readings: overrides per reading name",
    )

    def report_readings(self) -> dict[str, ReadingInfo] | None:
        """The readings this device produces (:class:`citygw.config.report.ReportedDevice`)."""
        return {PRESENCE_READING: ReadingInfo("number")}

    def report_interval(self) -> float | None:
        """How often this device gives each reading, seconds."""
        return self.window


def one_sensor_per_address(devices: Mapping[str, object]) -> None:
    """Refuse a second sensor with the same address on one BLE bus (only one of them would ever
    hear an advert), at the second device's ``address`` key. For the whole config's after-validator."""
    first: dict[tuple[str, str], str] = {}
    for name, device in devices.items():
        if not isinstance(device, BleSensor):
            continue
        key = (device.bus, device.address)
        if key in first:
            located(
                "config",
                ("devices", name, "address"),
                "ble_duplicate_address",
                f"device {first[key]!r} on bus {device.bus!r} already has address {device.address}; "
                "an address is one sensor: remove one of the two, or correct the address",
                device.address,
            )
        first[key] = name
