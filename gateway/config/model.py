"""The config's shape: one frozen pydantic model per YAML section, and the checks on its values.

Models are plain values: building one does no I/O unless validation is given a :class:`LoadContext`
(as :func:`gateway.config.load_config` does), which resolves relative paths against the config
file's directory and checks that the files named exist with the right permissions.

Uplinks and buses are chosen by their ``type`` key (:data:`UPLINK_MODELS`, :data:`BUS_MODELS`);
a device's model is chosen by the type of the bus it names (:data:`DEVICE_MODELS`). A new bus type
is a bus model, a device model and one entry in each table.
"""

from __future__ import annotations

import difflib
import enum
import errno
import os
import re
import stat
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, NoReturn, Self
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ModelWrapValidatorHandler,
    PlainValidator,
    SecretStr,
    ValidationError,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
    model_validator,
)
from pydantic.json_schema import SkipJsonSchema
from pydantic_core import (
    ErrorDetails,
    InitErrorDetails,
    PydanticCustomError,
    PydanticKnownError,
    PydanticOmit,
)
from pydantic_core.core_schema import ErrorType

from gateway.config.units import Duration, Size, describe, duration_within, format_duration, size_within
from gateway.vocabulary import QUANTITIES

DEFAULT_BUFFER_PATH = Path("/var/lib/citygw/buffer.db")
DEFAULT_TOPIC = "city/{gateway}/batches"

_KNOWN_ERROR_TYPES = frozenset(typing.get_args(ErrorType))
_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_ID_RULE = "use 1 to 64 letters, digits, '.', '_' or '-', starting with a letter or digit"
_UPLINK_ID_RE = re.compile(r"[a-z0-9][a-z0-9_-]{0,31}")
_UPLINK_ID_RULE = "use 1 to 32 lowercase letters, digits, '_' or '-', starting with a letter or digit"
_URL_EXAMPLE = "e.g. mqtts://broker.example.city:8883"


@dataclass(frozen=True, slots=True)
class LoadContext:
    """Validation context for a config read from a file: pass as ``context=`` to ``model_validate``."""

    base_dir: Path  # relative paths in the file are relative to this directory
    check_files: bool = True  # check that the files named exist, are readable and private where needed


def problem(kind: str, message: str) -> PydanticCustomError:
    """A validation error of type ``citygw_<kind>`` (never one of pydantic's own error types, which
    :func:`_rebuilt` must tell apart) whose message is ``message`` verbatim, braces and all."""
    return PydanticCustomError(f"citygw_{kind}", "{message}", {"message": message})


def _located(title: str, loc: tuple[str | int, ...], kind: str, message: str, value: Any) -> NoReturn:
    """Raise an error placed at ``loc`` below the value being validated."""
    raise ValidationError.from_exception_data(
        title, [InitErrorDetails(type=problem(kind, message), loc=loc, input=value)]
    )


def _rebuilt(error: ErrorDetails) -> InitErrorDetails:
    if error["type"] in _KNOWN_ERROR_TYPES:
        details = InitErrorDetails(type=error["type"], loc=error["loc"], input=error["input"])
        if "ctx" in error:
            details["ctx"] = error["ctx"]
        return details
    custom = PydanticCustomError(error["type"], "{message}", {"message": error["msg"]})
    return InitErrorDetails(type=custom, loc=error["loc"], input=error["input"])


class _Model(BaseModel):
    """Base of every config model: unknown and missing keys are explained in the model's own terms."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    @classmethod
    def yaml_keys(cls) -> list[str]:
        """The keys a YAML mapping for this model may hold, in declaration order."""
        return [name for name, field in cls.model_fields.items() if not field.exclude]

    @model_validator(mode="wrap")
    @classmethod
    def _explain_keys(cls, data: Any, handler: ModelWrapValidatorHandler[Self]) -> Self:
        try:
            return handler(data)
        except ValidationError as exc:
            errors = exc.errors()
            if not any(len(e["loc"]) == 1 and e["type"] in ("extra_forbidden", "missing") for e in errors):
                raise
            raise ValidationError.from_exception_data(
                cls.__name__, [cls._explained(e) for e in errors]
            ) from None

    @classmethod
    def _explained(cls, error: ErrorDetails) -> InitErrorDetails:
        if len(error["loc"]) != 1:
            return _rebuilt(error)
        key = str(error["loc"][0])
        if error["type"] == "extra_forbidden":
            message = f"unknown key {key!r}; allowed here: {', '.join(cls.yaml_keys())}"
            return InitErrorDetails(
                type=problem("unknown_key", message), loc=error["loc"], input=error["input"]
            )
        if error["type"] == "missing":
            field = cls.model_fields.get(key)
            about = f"; {field.description}" if field is not None and field.description else ""
            message = f"required key {key!r} is missing{about}"
            return InitErrorDetails(
                type=problem("missing_key", message), loc=error["loc"], input=error["input"]
            )
        return _rebuilt(error)


# --- value types -------------------------------------------------------------------------------


def _context(info: ValidationInfo) -> LoadContext | None:
    return info.context if isinstance(info.context, LoadContext) else None


def _reject_bool(value: Any) -> Any:
    if isinstance(value, bool):
        raise problem("number_type", f"expected a number; got {describe(value)}")
    return value


def _number(value: float | None) -> str:
    return str(int(value)) if value is not None and float(value).is_integer() else str(value)


def within(low: float | None, high: float | None, *, above: bool = False) -> Callable[[Any], Any]:
    """An after-validator bounding a number to ``low..high`` (``above``: strictly more than ``low``)."""

    def check(value: Any) -> Any:
        if (low is None or value > low or (value == low and not above)) and (high is None or value <= high):
            return value
        lowest = f"more than {_number(low)}" if above else f"at least {_number(low)}"
        if low is not None and high is not None:
            allowed = (
                f"{lowest} and at most {_number(high)}"
                if above
                else f"between {_number(low)} and {_number(high)}"
            )
        else:
            allowed = lowest if low is not None else f"at most {_number(high)}"
        raise problem("number_range", f"must be {allowed}; got {_number(value)}")

    return check


Int = Annotated[int, BeforeValidator(_reject_bool)]
Float = Annotated[float, BeforeValidator(_reject_bool)]


def _id_check(pattern: re.Pattern[str], noun: str, rule: str) -> Callable[[Any], str]:
    def check(value: Any) -> str:
        if not isinstance(value, str):
            quote = "; put it in quotes so it stays text" if isinstance(value, int | float) else ""
            raise problem("id_type", f"a {noun} id must be text; got {describe(value)}{quote}")
        if not pattern.fullmatch(value):
            raise problem("id_pattern", f"{value!r} is not a valid {noun} id; {rule}")
        return value

    return check


def _id_schema(pattern: re.Pattern[str]) -> WithJsonSchema:
    return WithJsonSchema({"type": "string", "pattern": f"^{pattern.pattern}$"})


GatewayId = Annotated[str, PlainValidator(_id_check(_ID_RE, "gateway", _ID_RULE)), _id_schema(_ID_RE)]
UplinkId = Annotated[
    str, PlainValidator(_id_check(_UPLINK_ID_RE, "uplink", _UPLINK_ID_RULE)), _id_schema(_UPLINK_ID_RE)
]
BusId = Annotated[str, PlainValidator(_id_check(_ID_RE, "bus", _ID_RULE)), _id_schema(_ID_RE)]
DeviceId = Annotated[str, PlainValidator(_id_check(_ID_RE, "device", _ID_RULE)), _id_schema(_ID_RE)]


def _path_text(value: Any) -> Any:
    if isinstance(value, str) and not value.strip():
        raise problem("path_empty", "a path cannot be empty; write the file's path")
    return value


def _resolved(value: Path, info: ValidationInfo) -> Path:
    context = _context(info)
    if context is not None and not value.is_absolute():
        return context.base_dir / value
    return value


def _readable(value: Path, info: ValidationInfo) -> Path:
    context = _context(info)
    if context is not None and context.check_files:
        try:
            with value.open("rb"):
                pass
        except OSError as exc:
            raise problem("file_unreadable", f"cannot read {value}: {exc.strerror}") from None
    return value


def _private_key(value: Path, info: ValidationInfo) -> Path:
    context = _context(info)
    if context is None or not context.check_files:
        return value
    try:
        with value.open("rb") as file:
            mode = os.fstat(file.fileno()).st_mode
    except OSError as exc:
        create = "; create one with `citygw keygen`" if exc.errno == errno.ENOENT else ""
        raise problem("file_unreadable", f"cannot read {value}: {exc.strerror}{create}") from None
    if mode & 0o077:
        raise problem(
            "key_file_mode",
            f"{value} is open to users other than its owner (mode {stat.S_IMODE(mode):04o}); "
            f"a signing key must be private: run chmod 600 {value}",
        )
    return value


ConfigPath = Annotated[Path, BeforeValidator(_path_text), AfterValidator(_resolved)]
"""A path; relative to the config file's directory when loaded from a file."""
ReadableFile = Annotated[ConfigPath, AfterValidator(_readable)]
"""A path to a file that must be readable when the config is loaded."""
PrivateKeyFile = Annotated[ConfigPath, AfterValidator(_private_key)]
"""A path to a readable file that no one but its owner may access (mode 0600 or 0400)."""


def _mqtt_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("mqtt", "mqtts"):
        raise problem(
            "url_scheme",
            f"{value!r} is not an MQTT broker url; the scheme must be mqtt:// or mqtts:// (TLS), "
            f"{_URL_EXAMPLE}",
        )
    try:
        port = parts.port
    except ValueError:
        port = 0
    if not parts.hostname:
        raise problem("url_host", f"{value!r} names no broker host; write {_URL_EXAMPLE}")
    if port == 0:
        raise problem("url_port", f"{value!r} has an invalid port; a port is a number from 1 to 65535")
    if parts.username is not None or parts.password is not None:
        raise problem(
            "url_credentials",
            f"{value!r} holds credentials; put them in username and password_file, not in the url",
        )
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise problem(
            "url_path",
            f"{value!r} has a path, query or fragment; a broker url is mqtt[s]://host[:port] "
            "and the topic goes in topic",
        )
    return value


def _topic(value: str) -> str:
    hint = f"write e.g. {DEFAULT_TOPIC}"
    if not value:
        raise problem("topic", f"the topic cannot be empty; {hint}")
    if "+" in value or "#" in value:
        raise problem(
            "topic", f"{value!r} contains an MQTT wildcard (+ or #), which cannot be published to; {hint}"
        )
    if value.startswith("$"):
        raise problem("topic", f"{value!r} starts with '$', which brokers reserve for themselves; {hint}")
    for name in re.findall(r"\{([^{}]*)\}", value):
        if name != "gateway":
            raise problem(
                "topic",
                f"{value!r} has the placeholder {{{name}}}; the only placeholder allowed is {{gateway}}",
            )
    if "{" in value.replace("{gateway}", "") or "}" in value.replace("{gateway}", ""):
        raise problem(
            "topic", f"{value!r} has an unmatched brace; the only placeholder allowed is {{gateway}}"
        )
    return value


def _quantity(value: str) -> str:
    if value in QUANTITIES:
        return value
    close = difflib.get_close_matches(value, QUANTITIES, n=1)
    guess = f" (did you mean {close[0]!r}?)" if close else ""
    raise problem(
        "quantity", f"unknown quantity {value!r}{guess}; the quantity names are: {', '.join(QUANTITIES)}"
    )


def _distinct(value: tuple[str, ...]) -> tuple[str, ...]:
    if not value:
        raise problem("quantities_empty", "list at least one quantity, e.g. [temperature]")
    for index, name in enumerate(value):
        if name in value[:index]:
            raise problem(
                "quantities_repeated", f"{name!r} is listed more than once; list each quantity once"
            )
    return value


MqttUrl = Annotated[str, AfterValidator(_mqtt_url)]
Topic = Annotated[str, AfterValidator(_topic)]
QuantityName = Annotated[str, AfterValidator(_quantity)]


class LogLevel(enum.StrEnum):
    DEBUG = "debug"
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"


class Synchronous(enum.StrEnum):
    """SQLite ``PRAGMA synchronous`` in WAL mode: NORMAL may lose the last commit on power loss."""

    NORMAL = "normal"
    FULL = "full"


# --- sections ----------------------------------------------------------------------------------


class GatewaySettings(_Model):
    model_config = ConfigDict(extra="forbid", frozen=True)

    id: GatewayId = Field(
        description="the gateway's unique name, e.g. bkk-pathumwan-0042: "
        "1 to 64 letters, digits, '.', '_' or '-', starting with a letter or digit"
    )
    key_file: PrivateKeyFile = Field(
        description="the path of the Ed25519 private key (PEM) written by `citygw keygen`"
    )


class LogSettings(_Model):
    model_config = ConfigDict(extra="forbid", frozen=True)

    level: LogLevel = Field(default=LogLevel.INFO, description="debug, info, warning or error")


class BatchSettings(_Model):
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


class BufferSettings(_Model):
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


class MqttUplink(_Model):
    """Batches published with QoS 1 to an MQTT broker."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: Literal["mqtt"] = Field(description="the uplink type: mqtt")
    url: MqttUrl = Field(description=f"the broker: mqtt://host[:port] or mqtts://host[:port], {_URL_EXAMPLE}")
    topic: Topic = Field(default=DEFAULT_TOPIC, description="the topic template; {gateway} is the gateway id")
    ca_file: ReadableFile | None = Field(
        default=None, description="CA certificates (PEM) to verify the broker with"
    )
    cert_file: ReadableFile | None = Field(
        default=None, description="client certificate (PEM), with cert_key_file"
    )
    cert_key_file: ReadableFile | None = Field(
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
    backoff_max: Annotated[Duration, AfterValidator(duration_within(None, 86400))] = Field(
        default=300.0, validate_default=True, description="the longest reconnect delay, backoff_initial to 1d"
    )

    @field_validator("ca_file", "cert_file")
    @classmethod
    def _needs_tls(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        url = info.data.get("url")
        if value is not None and url is not None and urlsplit(url).scheme != "mqtts":
            raise problem(
                "tls_setting",
                f"{info.field_name} is for TLS connections but the url is {url!r}; "
                f"use mqtts:// or remove {info.field_name}",
            )
        return value

    @field_validator("cert_key_file")
    @classmethod
    def _cert_pair(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        if "cert_file" in info.data and (info.data["cert_file"] is None) != (value is None):
            given, other = (
                ("cert_key_file", "cert_file") if value is not None else ("cert_file", "cert_key_file")
            )
            raise problem(
                "cert_pair",
                f"{given} is set but {other} is not; a client certificate needs both cert_file "
                "and cert_key_file, or neither",
            )
        return value

    @field_validator("backoff_max")
    @classmethod
    def _backoff_order(cls, value: float, info: ValidationInfo) -> float:
        initial = info.data.get("backoff_initial")
        if initial is not None and value < initial:
            raise problem(
                "backoff_order",
                f"must be at least backoff_initial ({format_duration(initial)}); "
                f"got {format_duration(value)}",
            )
        return value

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


class SyntheticBus(_Model):
    """A bus of simulated devices: no hardware, for demos, tests and benchmarks."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: Literal["synthetic"] = Field(description="the bus type: synthetic")


class SyntheticDevice(_Model):
    """A simulated device producing plausible readings at a fixed rate."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    bus: BusId = Field(description="the id of the bus this device is on")
    rate: Annotated[Float, AfterValidator(within(0, 1_000_000, above=True))] = Field(
        default=1.0, description="readings per second, more than 0 and at most 1000000"
    )
    count: Annotated[Int, AfterValidator(within(1, None))] | None = Field(
        default=None, description="readings to produce before stopping; none for no end"
    )
    quantities: Annotated[tuple[QuantityName, ...], AfterValidator(_distinct)] = Field(
        default=("temperature", "relativeHumidity"), description="the quantity names to produce"
    )
    values: Literal["wave", "sequence"] = Field(
        default="wave",
        description="wave: plausible values; sequence: reading i has value i (tests and loss checks)",
    )


# --- type tables: one entry per type -----------------------------------------------------------

Uplink = MqttUplink
Bus = SyntheticBus
Device = SyntheticDevice

UPLINK_MODELS: Mapping[str, type[Uplink]] = {"mqtt": MqttUplink}
BUS_MODELS: Mapping[str, type[Bus]] = {"synthetic": SyntheticBus}
DEVICE_MODELS: Mapping[str, type[Device]] = {"synthetic": SyntheticDevice}  # by bus type


def _by_type(table: Mapping[str, type[_Model]], noun: str) -> Callable[[Any, ValidationInfo], Any]:
    known = ", ".join(table)

    def validate(value: Any, info: ValidationInfo) -> Any:
        if isinstance(value, tuple(table.values())):
            return value
        if not isinstance(value, dict):
            raise PydanticKnownError("dict_type")
        if "type" not in value:
            _located(
                noun,
                ("type",),
                "missing_key",
                f"required key 'type' is missing; the {noun} type: {known}",
                value,
            )
        model = table.get(value["type"]) if isinstance(value["type"], str) else None
        if model is None:
            _located(
                noun,
                ("type",),
                "unknown_type",
                f"unknown {noun} type {value['type']!r}; known types: {known}",
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
        _located(
            "device",
            ("bus",),
            "missing_key",
            f"required key 'bus' is missing; the id of the bus this device is on (defined buses: {defined})",
            data,
        )
    bus = data["bus"]
    if not isinstance(bus, str):
        _located("device", ("bus",), "bus_type", f"expected a bus id; got {describe(bus)}", data)
    if bus_types is None:
        raise PydanticOmit  # the buses section's own problem is reported there
    if bus not in bus_types:
        _located(
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


_SECTIONS = ("log", "buffer", "uplinks", "buses", "devices")


class Config(_Model):
    """A whole config file, validated as one."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    gateway: GatewaySettings = Field(description="the gateway's identity: id and key_file")
    log: LogSettings = Field(default=LogSettings(), description="logging")
    buffer: BufferSettings = Field(default=BufferSettings(), description="the durable buffer")
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
