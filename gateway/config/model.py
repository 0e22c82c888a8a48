"""The config's shape: one frozen pydantic model per YAML section, and the checks on its values.

Models are plain values: building one does no I/O unless validation is given a :class:`LoadContext`
(as :func:`citygw.config.load_config` does), which resolves relative paths against the config
file's directory and checks that the files named exist with the right permissions.

Uplinks and buses are chosen by their ``type`` key (:data:`UPLINK_MODELS`, :data:`BUS_MODELS`);
a device's model is chosen by the type of the bus it names (:data:`DEVICE_MODELS`); what runs each
type is :data:`UPLINK_RUNNERS` and :data:`BUS_RUNNERS` (the daemon's only registry). A new bus
type is a bus model, a device model, a runner and one entry in each table, all here.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    ValidationInfo,
    model_validator,
)
from pydantic.json_schema import SkipJsonSchema
from pydantic_core import PydanticKnownError, PydanticOmit

from citygw.config.base import (
    DEFAULT_BUFFER_PATH,
    DEFAULT_STATUS_TOPIC,
    DEFAULT_TOPIC,
    URL_EXAMPLE,
    BusId,
    ConfigPath,
    DeviceId,
    Float,
    GatewayId,
    Int,
    LogLevel,
    MqttUrl,
    PrivateKeyFile,
    QuantityName,
    ReadableFile,
    Section,
    Synchronous,
    Topic,
    UplinkId,
    cert_key_pair,
    distinct,
    load_context,
    located,
    not_below,
    tls_only,
    within,
)
from citygw.config.ble import BleBus, BleDevice, one_sensor_per_address
from citygw.config.health import HealthSettings, no_reserved_device
from citygw.config.location import DEVICE_LOCATION, Location, located_for_ngsi
from citygw.config.metrics import MetricsSettings
from citygw.config.modbus import (
    ModbusDevice,
    ModbusRtuBus,
    ModbusRtuOverTcpBus,
    ModbusTcpBus,
    ModbusTcpDevice,
)
from citygw.config.remote import RemoteSettings
from citygw.config.report import ReadingInfo, ReportSettings, check_reports
from citygw.config.serial import SerialBus, SerialDevice, one_device_per_bus
from citygw.config.units import Duration, Size, describe, duration_within, size_within
from citygw.config.uplinks import HttpUplink, NgsiLdUplink
from citygw.config.wiring import one_bus_per_port, one_device_per_unit

# --- sections ----------------------------------------------------------------------------------


class GatewaySettings(Section):
    model_config = ConfigDict(extra="forbid", frozen=True)

    id: GatewayId = Field(
        description="the gateway's unique name, e.g. bkk-pathumwan-0042: "
        "1 to 64 letters, digits, '.', '_' or '-', starting with a letter or digit"
    )
    key_file: PrivateKeyFile = Field(
        description="the path of the Ed25519 private key (PEM) written by `citygw keygen`"
    )
    jws_alg: Literal["EdDSA", "Ed25519"] = Field(
        default="EdDSA",
        description="the JWS alg of every batch: EdDSA (RFC 8037, what every JOSE library verifies) or "
        "Ed25519 (RFC 9864's name for the same signature; see docs/integrator.md before switching)",
    )
    location: Location | None = Field(
        default=None,
        description="where the box stands: {latitude, longitude} in decimal degrees (WGS 84); "
        "required by an ngsi-ld uplink",
    )
    config_version: Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[!-~]+$")] | None = Field(
        default=None,
        description="the version of this config the box reports in its health and status; "
        "default: the signed document's version when the file is the one a remote config wrote, "
        "else file- and the first 12 hex digits of the SHA-256 of the config file",
    )
    operator_keys: tuple[ReadableFile, ...] = Field(
        default=(),
        description="public keys (PEM, from `citygw keygen`) whose signed config documents the box "
        "takes (see remote); none: the box takes no remote configuration",
    )


class LogSettings(Section):
    model_config = ConfigDict(extra="forbid", frozen=True)

    level: LogLevel = Field(default=LogLevel.INFO, description="debug, info, warning or error")


class BatchSettings(Section):
    """When the batcher seals a batch: whichever limit is reached first."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_readings: Annotated[Int, AfterValidator(within(1, 100_000))] = Field(
        default=1000, description="readings per batch, 1 to 100000"
    )
    max_bytes: Annotated[Size, AfterValidator(size_within(1024, 16 * 1024**2))] = Field(
        default=256 * 1024, description="encoded batch size, 1KiB to 16MiB"
    )
    max_age: Annotated[Duration, AfterValidator(duration_within(0, 86400))] = Field(
        default=10.0, description="longest time a reading waits for its batch to be sealed, 0s to 1d"
    )


class BufferSettings(Section):
    model_config = ConfigDict(extra="forbid", frozen=True)

    path: ConfigPath | None = Field(
        default=None,
        description="the SQLite file; default $STATE_DIRECTORY/buffer.db, else /var/lib/citygw/buffer.db",
    )
    max_disk: Annotated[Size, AfterValidator(size_within(64 * 1024))] = Field(
        default=2 * 1024**3, description="disk space the buffer may use, at least 64KiB"
    )
    max_age: Annotated[Duration, AfterValidator(duration_within(60))] = Field(
        default=30 * 86400.0, description="age after which undelivered batches are dropped, at least 1m"
    )
    synchronous: Synchronous = Field(default=Synchronous.NORMAL, description="normal or full")
    commit_interval: Annotated[Duration, AfterValidator(duration_within(0.01, 10))] = Field(
        default=1.0, description="longest time a reading waits for its commit, 10ms to 10s"
    )
    commit_rows: Annotated[Int, AfterValidator(within(1, 100_000))] = Field(
        default=5000, description="readings per commit at most, 1 to 100000"
    )
    batch: BatchSettings = Field(default=BatchSettings(), description="when batches are sealed")


class MqttUplink(Section):
    """Batches published with QoS 1 to an MQTT broker."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: Literal["mqtt"] = Field(description="the uplink type: mqtt")
    url: MqttUrl = Field(description=f"the broker: mqtt://host[:port] or mqtts://host[:port], {URL_EXAMPLE}")
    topic: Topic = Field(default=DEFAULT_TOPIC, description="the topic template; {gateway} is the gateway id")
    status_topic: Topic = Field(
        default=DEFAULT_STATUS_TOPIC,
        description="the retained liveness topic (online; the last will: offline); {gateway}: the gateway id",
    )
    format: Literal["jws", "jws+gzip"] = Field(
        default="jws",
        description="how each batch travels: jws (the compact JWS) or jws+gzip (that same JWS "
        "gzip-compressed, about a tenth of the bytes; docs/integrator.md)",
    )
    ca_file: Annotated[ReadableFile | None, AfterValidator(tls_only("mqtts"))] = Field(
        default=None, description="CA certificates (PEM) to verify the broker with"
    )
    cert_file: Annotated[ReadableFile | None, AfterValidator(tls_only("mqtts"))] = Field(
        default=None, description="client certificate (PEM), with cert_key_file"
    )
    cert_key_file: Annotated[ReadableFile | None, AfterValidator(cert_key_pair)] = Field(
        default=None,
        validate_default=True,
        description="the client certificate's private key (PEM), with cert_file",
    )
    username: str | None = Field(default=None, description="the MQTT user name")
    password: SecretStr | None = Field(default=None, description="the MQTT password; prefer password_file")
    password_file: ConfigPath | None = Field(
        default=None, description="a file holding the password (read at load into password)"
    )
    client_id: Annotated[str, Field(min_length=1, max_length=256)] | None = Field(
        default=None, description='the MQTT client id; default "citygw-{gateway}-{uplink}"'
    )
    keepalive: Annotated[Duration, AfterValidator(duration_within(5, 3600))] = Field(
        default=30.0, description="MQTT keepalive, 5s to 1h"
    )
    window: Annotated[Int, AfterValidator(within(1, 1000))] = Field(
        default=20, description="batches in flight awaiting PUBACK, 1 to 1000"
    )
    connect_timeout: Annotated[Duration, AfterValidator(duration_within(1, 300))] = Field(
        default=10.0, description="how long a connection attempt may take, 1s to 5m"
    )
    backoff_initial: Annotated[Duration, AfterValidator(duration_within(0.1, 600))] = Field(
        default=1.0, description="the first reconnect delay, 100ms to 10m"
    )
    backoff_max: Annotated[
        Duration, AfterValidator(duration_within(None, 86400)), AfterValidator(not_below("backoff_initial"))
    ] = Field(
        default=300.0, validate_default=True, description="the longest reconnect delay, backoff_initial to 1d"
    )

    @model_validator(mode="after")
    def _status_apart(self) -> MqttUplink:
        if self.status_topic == self.topic:
            located(
                "uplink",
                ("status_topic",),
                "status_topic",
                f"status_topic is the batches topic {self.topic!r}; liveness messages need a topic "
                "of their own, e.g. city/{gateway}/status",
                self.status_topic,
            )
        return self

    @property
    def tls(self) -> bool:
        """Whether the connection uses TLS (an ``mqtts://`` url)."""
        return urlsplit(self.url).scheme == "mqtts"

    @property
    def host(self) -> str:
        return urlsplit(self.url).hostname or ""

    @property
    def port(self) -> int:
        """The url's port, else 8883 with TLS and 1883 without."""
        return urlsplit(self.url).port or (8883 if self.tls else 1883)

    def topic_for(self, gateway_id: str) -> str:
        """The topic with ``{gateway}`` filled in."""
        return self.topic.replace("{gateway}", gateway_id)

    def status_topic_for(self, gateway_id: str) -> str:
        """The status topic with ``{gateway}`` filled in."""
        return self.status_topic.replace("{gateway}", gateway_id)


class SyntheticBus(Section):
    """A bus of simulated devices: no hardware, for demos, tests and benchmarks."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: Literal["synthetic"] = Field(description="the bus type: synthetic")


class SyntheticDevice(Section):
    """A simulated device producing plausible readings at a fixed rate."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    bus: BusId = Field(description="the id of the bus this device is on")
    rate: Annotated[Float, AfterValidator(within(0, 1_000_000, above=True))] = Field(
        default=1.0, description="readings per second, more than 0 and at most 1000000"
    )
    count: Annotated[Int, AfterValidator(within(1, None))] | None = Field(
        default=None, description="readings to produce before stopping; none for no end"
    )
    quantities: Annotated[tuple[QuantityName, ...], AfterValidator(distinct)] = Field(
        default=("temperature", "relativeHumidity"), description="the quantity names to produce"
    )
    values: Literal["wave", "sequence"] = Field(
        default="wave",
        description="wave: plausible values; sequence: reading i has value i (tests and loss checks)",
    )
    report: ReportSettings = Field(
        default=ReportSettings(),
        description="what is sent: raw (every sample, the default), on_change or aggregate; "
        "readings: overrides per reading name",
    )
    location: Location | None = Field(default=None, description=DEVICE_LOCATION)

    def report_readings(self) -> dict[str, ReadingInfo] | None:
        """The readings this device produces (:class:`citygw.config.report.ReportedDevice`)."""
        return {name: ReadingInfo("number") for name in self.quantities}

    def report_interval(self) -> float | None:
        """How often this device gives each reading, seconds."""
        return len(self.quantities) / self.rate


# --- type tables: one entry per type -----------------------------------------------------------


Uplink = MqttUplink | HttpUplink | NgsiLdUplink
Bus = SyntheticBus | ModbusRtuBus | ModbusTcpBus | ModbusRtuOverTcpBus | BleBus | SerialBus
Device = SyntheticDevice | ModbusDevice | ModbusTcpDevice | BleDevice | SerialDevice

UPLINK_RUNNERS: Mapping[str, str] = {
    "mqtt": "citygw.uplinks.mqtt:MqttUplink",
    "http": "citygw.uplinks.http:HttpUplink",
    "ngsi-ld": "citygw.uplinks.http:NgsiLdUplink",
}
"""Uplink type -> the class that runs it, ``module:attribute`` (the daemon imports it on first use:
a box loads only the uplinks and drivers its config names)."""
BUS_RUNNERS: Mapping[str, str] = {
    "synthetic": "citygw.drivers.synthetic:run_bus",
    "modbus-rtu": "citygw.drivers.modbus.bus:run_bus",
    "modbus-tcp": "citygw.drivers.modbus.bus:run_bus",
    "modbus-rtu-over-tcp": "citygw.drivers.modbus.bus:run_bus",
    "ble": "citygw.drivers.ble.bus:run_bus",
    "serial": "citygw.drivers.serial.transport:run_bus",
}
"""Bus type -> the runner of its devices, ``module:attribute``."""
UPLINK_MODELS: Mapping[str, type[Uplink]] = {"mqtt": MqttUplink, "http": HttpUplink, "ngsi-ld": NgsiLdUplink}
BUS_MODELS: Mapping[str, type[Bus]] = {
    "synthetic": SyntheticBus,
    "modbus-rtu": ModbusRtuBus,
    "modbus-tcp": ModbusTcpBus,
    "modbus-rtu-over-tcp": ModbusRtuOverTcpBus,
    "ble": BleBus,
    "serial": SerialBus,
}
DEVICE_MODELS: Mapping[str, type[Device]] = {  # by bus type
    "synthetic": SyntheticDevice,
    "modbus-rtu": ModbusDevice,
    "modbus-tcp": ModbusTcpDevice,
    "modbus-rtu-over-tcp": ModbusDevice,
    "ble": BleDevice,
    "serial": SerialDevice,
}


def _by_type(table: Mapping[str, type[Section]], noun: str) -> Callable[[Any, ValidationInfo], Any]:
    known = ", ".join(table)

    def validate(value: Any, info: ValidationInfo) -> Any:
        if isinstance(value, tuple(table.values())):
            return value
        if not isinstance(value, dict):
            raise PydanticKnownError("dict_type")
        if "type" not in value:
            located(
                noun,
                ("type",),
                "missing_key",
                f"required key 'type' is missing; the {noun} type: {known}",
                value,
            )
        model = table.get(value["type"]) if isinstance(value["type"], str) else None
        if model is None:
            close = difflib.get_close_matches(str(value["type"]), table, n=1)
            guess = f" (did you mean {close[0]!r}?)" if close else ""
            located(
                noun,
                ("type",),
                "unknown_type",
                f"unknown {noun} type {value['type']!r}{guess}; known types: {known}",
                value,
            )
        return model.model_validate(value, context=info.context)

    return validate


@dataclass(frozen=True, slots=True)
class _DeviceInput:
    """A device's raw mapping with the raw types of the buses defined beside it."""

    data: dict[str, Any]
    bus_types: Mapping[str, object] | None  # None: the buses section itself is not a mapping


def _device(value: Any, info: ValidationInfo) -> Any:
    if isinstance(value, tuple(DEVICE_MODELS.values())):
        return value
    if not isinstance(value, _DeviceInput):
        raise PydanticKnownError("dict_type")
    data, bus_types = value.data, value.bus_types
    defined = ", ".join(str(key) for key in bus_types or ()) or "none (define one under buses)"
    if "bus" not in data:
        located(
            "device",
            ("bus",),
            "missing_key",
            f"required key 'bus' is missing; the id of the bus this device is on (defined buses: {defined})",
            data,
        )
    bus = data["bus"]
    if not isinstance(bus, str):
        located("device", ("bus",), "bus_type", f"expected a bus id; got {describe(bus)}", data)
    if bus_types is None:
        raise PydanticOmit  # the buses section's own problem is reported there
    if bus not in bus_types:
        located(
            "device",
            ("bus",),
            "unknown_bus",
            f"names bus {bus!r}, which is not defined; defined buses: {defined}",
            data,
        )
    bus_type = bus_types[bus]
    model = DEVICE_MODELS.get(bus_type) if isinstance(bus_type, str) else None
    if model is None:
        raise PydanticOmit  # the bus has no valid type: reported at the bus
    return model.model_validate(data, context=info.context)


_SECTIONS = ("log", "metrics", "health", "buffer", "remote", "uplinks", "buses", "devices")


class Config(Section):
    """A whole config file, validated as one."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    gateway: GatewaySettings = Field(description="the gateway's identity: id and key_file")
    log: LogSettings = Field(default=LogSettings(), description="logging")
    metrics: MetricsSettings = Field(
        default=MetricsSettings(), description="Prometheus metrics over HTTP, on loopback by default"
    )
    health: HealthSettings = Field(
        default=HealthSettings(), description="the box's own health readings (device id 'gateway')"
    )
    buffer: BufferSettings = Field(default=BufferSettings(), description="the durable buffer")
    remote: RemoteSettings = Field(
        default=RemoteSettings(),
        description="signed config documents from the platform (with gateway.operator_keys)",
    )
    uplinks: dict[UplinkId, Annotated[Uplink, BeforeValidator(_by_type(UPLINK_MODELS, "uplink"))]] = Field(
        default_factory=dict, description="where batches go, by uplink id"
    )
    buses: dict[BusId, Annotated[Bus, BeforeValidator(_by_type(BUS_MODELS, "bus"))]] = Field(
        default_factory=dict, description="the buses devices are on, by bus id"
    )
    devices: dict[DeviceId, Annotated[Device, BeforeValidator(_device)]] = Field(
        default_factory=dict, description="the devices, by device id"
    )
    source: SkipJsonSchema[Path] = Field(exclude=True, description="the file this config was read from")

    @model_validator(mode="before")
    @classmethod
    def _prepare(cls, data: Any) -> Any:
        """Read an empty section as an empty mapping; give each device the types of the buses."""
        if not isinstance(data, dict):
            return data
        data = {key: {} if value is None and key in _SECTIONS else value for key, value in data.items()}
        devices, buses = data.get("devices"), data.get("buses", {})
        if isinstance(devices, dict):
            bus_types = (
                {
                    key: bus.get("type") if isinstance(bus, dict) else getattr(bus, "type", None)
                    for key, bus in buses.items()
                }
                if isinstance(buses, dict)
                else None
            )
            data["devices"] = {
                key: _DeviceInput(device, bus_types) if isinstance(device, dict) else device
                for key, device in devices.items()
            }
        return data

    @model_validator(mode="after")
    def _devices_do_not_collide(self, info: ValidationInfo) -> Config:
        context = load_context(info)
        one_bus_per_port(self.buses, check_files=context is not None and context.check_files)
        one_device_per_unit(self.buses, self.devices)
        one_device_per_bus(self.buses, self.devices)
        one_sensor_per_address(self.devices)
        no_reserved_device(dict(self.devices))
        return self

    @model_validator(mode="after")
    def _ngsi_has_a_location(self) -> Config:
        located_for_ngsi(self.gateway.location, self.uplinks)
        return self

    @model_validator(mode="after")
    def _reports_fit_devices(self) -> Config:
        check_reports(self.devices)
        return self

    def buffer_path(self, environ: Mapping[str, str] | None = None) -> Path:
        """The buffer file: ``buffer.path`` if set (``load_config`` always sets it), else
        :func:`default_buffer_path` of ``environ`` (default :data:`os.environ`)."""
        if self.buffer.path is not None:
            return self.buffer.path
        return default_buffer_path(os.environ if environ is None else environ)


def default_buffer_path(environ: Mapping[str, str]) -> Path:
    """``$STATE_DIRECTORY/buffer.db`` (systemd's StateDirectory=, first entry), else the FHS default."""
    state = environ.get("STATE_DIRECTORY", "").split(":")[0]
    return Path(state) / "buffer.db" if state else DEFAULT_BUFFER_PATH
