"""Config of Modbus buses and devices, and of the register maps of device profiles.

Buses: ``modbus-rtu`` (a serial port, RS-485), ``modbus-tcp`` (host:port, MBAP framing) and
``modbus-rtu-over-tcp`` (RTU frames through a serial-to-Ethernet converter). A device names its
bus, its ``unit`` id, its ``interval``, and either a ``profile`` (a register map from
``config/profiles/`` or the user's profile directory) or inline ``registers``; with a profile,
``registers`` entries override the profile's register of the same reading name key by key, or
add registers, and ``skip`` leaves some out.

Reading names: a register's ``name`` is a quantity of the vocabulary; a device holding several of
one quantity tells them apart with ``channel``, and the reading is named ``quantity:channel``
(``voltage:l1``, ``voltage:l1-l2``, ``current:n``). Phases are ``l1``, ``l2``, ``l3``, the neutral
``n``, line-to-line pairs ``l1-l2``, ``l2-l3``, ``l3-l1``; totals have no channel.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from typing import Annotated, Any, Literal, Self

from pydantic import (
    AfterValidator,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    ValidationInfo,
    model_validator,
)
from pydantic_core import InitErrorDetails

from drivers.modbus.plan import max_count
from drivers.modbus.registers import WIDTH, DataType, Order
from drivers.modbus.registers import Field as RegisterField
from gateway.config.base import (
    BusId,
    ConfigPath,
    Float,
    Int,
    QuantityName,
    Section,
    load_context,
    problem,
    within,
)
from gateway.config.location import DEVICE_LOCATION, Location
from gateway.config.report import ReportSettings
from gateway.config.units import Duration, duration_within
from gateway.config.wiring import standard_baudrate
from gateway.vocabulary import unit_of

_CHANNEL_RE = re.compile(r"[a-z0-9][a-z0-9_.-]{0,15}")
PROFILE_NAME_RE = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
DEFAULT_MAX_GAP = 16
_PARITY_LETTERS = {"n": "none", "e": "even", "o": "odd"}
_CONVERSIONS = {  # (unit written, vocabulary unit) -> scale
    ("kWh", "Wh"): 1000,
    ("MWh", "Wh"): 1_000_000,
    ("kW", "W"): 1000,
    ("kVA", "VA"): 1000,
    ("kvar", "var"): 1000,
    ("kVAr", "var"): 1000,
    ("mA", "A"): 0.001,
    ("mV", "V"): 0.001,
    ("kV", "V"): 1000,
    ("hPa", "Pa"): 100,
    ("kPa", "Pa"): 1000,
    # units SenML does not have or does not recommend, to the registered unit of the quantity
    ("ppb", "ppm"): 0.001,
    ("deg", "rad"): math.pi / 180,
    ("%", "/"): 0.01,
    ("l", "m3"): 0.001,
    ("l/s", "m3/s"): 0.001,
}


# --- value types -------------------------------------------------------------------------------


def _channel(value: Any) -> Any:
    if not isinstance(value, str) or not _CHANNEL_RE.fullmatch(value):
        raise problem(
            "channel",
            f"{value!r} is not a channel; use 1 to 16 lowercase letters, digits, '.', '_' or '-' "
            "(phases: l1, l2, l3, n, l1-l2, l2-l3, l3-l1)",
        )
    return value


def _profile_name(value: Any) -> Any:
    if not isinstance(value, str) or not PROFILE_NAME_RE.fullmatch(value):
        raise problem(
            "profile_name",
            f"{value!r} is not a profile name; a profile name is its file name without .yaml: "
            "lowercase letters, digits, '.', '_' or '-'",
        )
    return value


def _parity(value: Any) -> Any:
    if isinstance(value, str) and value.lower() in _PARITY_LETTERS:
        return _PARITY_LETTERS[value.lower()]
    return value


def _data_type(value: Any) -> Any:
    return "bool" if value == "bit" else value


def _not_zero(value: float) -> float:
    if value == 0:
        raise problem(
            "scale_zero", "a scale of 0 would make every value 0; the scale multiplies the raw value"
        )
    return value


def _host(value: str) -> str:
    if not value or "/" in value or " " in value:
        raise problem(
            "host",
            f"{value!r} is not a host; write a name or an address (e.g. 192.168.1.50), no scheme or port",
        )
    return value


Channel = Annotated[str, BeforeValidator(_channel)]
ProfileName = Annotated[str, BeforeValidator(_profile_name)]
Parity = Annotated[Literal["none", "even", "odd"], BeforeValidator(_parity)]
RegisterType = Annotated[DataType, BeforeValidator(_data_type)]
Function = Literal[1, 2, 3, 4]
Timeout = Annotated[Duration, AfterValidator(duration_within(0.01, 60))]
FrameDelay = Annotated[Duration, AfterValidator(duration_within(0, 1))]


# --- buses -------------------------------------------------------------------------------------


class ModbusRtuBus(Section):
    """A serial port (RS-485) with Modbus RTU devices on it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: Literal["modbus-rtu"] = Field(description="the bus type: modbus-rtu")
    port: Annotated[str, Field(min_length=1)] = Field(
        description="the serial port, e.g. /dev/ttyUSB0 or /dev/serial/by-id/..."
    )
    baudrate: Annotated[Int, AfterValidator(within(300, 1_000_000)), AfterValidator(standard_baudrate)] = (
        Field(default=9600, description="bits per second, a standard rate from 300 to 1000000")
    )
    parity: Parity = Field(default="none", description="none, even or odd (N, E, O)")
    stopbits: Literal[1, 2] = Field(default=1, description="1 or 2")
    bytesize: Literal[7, 8] = Field(default=8, description="data bits, 7 or 8")
    timeout: Timeout = Field(default=1.0, description="how long to wait for an answer, 10ms to 1m")
    inter_frame_delay: FrameDelay | None = Field(
        default=None,
        description="silence between frames, 0s to 1s; default 3.5 characters (1.75ms above 19200 baud)",
    )

    @property
    def frame_delay(self) -> float:
        """The silence kept after every transaction, in seconds (Modbus over serial line §2.5.1.1)."""
        if self.inter_frame_delay is not None:
            return self.inter_frame_delay
        if self.baudrate > 19200:
            return 0.00175
        bits = 1 + self.bytesize + (self.parity != "none") + self.stopbits
        return 3.5 * bits / self.baudrate

    def describe(self) -> str:
        line = f"{self.bytesize}{self.parity[0].upper()}{self.stopbits}"
        return f"modbus-rtu {self.port} {self.baudrate} {line}"


class ModbusTcpBus(Section):
    """A Modbus TCP server: a PLC, a meter with Ethernet, or a Modbus TCP-to-RTU gateway."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: Literal["modbus-tcp"] = Field(description="the bus type: modbus-tcp")
    host: Annotated[str, AfterValidator(_host)] = Field(description="the server's name or address")
    port: Annotated[Int, AfterValidator(within(1, 65535))] = Field(default=502, description="TCP port (502)")
    timeout: Timeout = Field(default=1.0, description="how long to wait for an answer, 10ms to 1m")
    inter_frame_delay: FrameDelay = Field(
        default=0.0, description="pause between transactions, 0s to 1s (for gateways to slow RS-485 lines)"
    )

    @property
    def frame_delay(self) -> float:
        return self.inter_frame_delay

    def describe(self) -> str:
        return f"{self.type} {self.host}:{self.port}"


class ModbusRtuOverTcpBus(ModbusTcpBus):
    """RTU frames (with CRC) over a TCP connection: a serial-to-Ethernet converter in transparent mode."""

    type: Literal["modbus-rtu-over-tcp"] = Field(  # type: ignore[assignment]
        description="the bus type: modbus-rtu-over-tcp"
    )
    port: Annotated[Int, AfterValidator(within(1, 65535))] = Field(
        description="the converter's TCP port for the serial line (often 502, 4196, 8899 or 23)"
    )


ModbusBus = ModbusRtuBus | ModbusTcpBus | ModbusRtuOverTcpBus


# --- registers ---------------------------------------------------------------------------------


class RegisterSpec(Section):
    """One register entry as written in a profile or a device; unset keys take defaults (or, in a
    device's override of a profile register, the profile's values)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: QuantityName = Field(description="a quantity name from the vocabulary, e.g. voltage")
    channel: Channel | None = Field(
        default=None, description="tells apart several of one quantity: l1, l2, l3, n, l1-l2, ..."
    )
    address: Annotated[Int, AfterValidator(within(0, 65535))] | None = Field(
        default=None, description="the register address on the wire, 0 to 65535 (30001 in manuals is 0)"
    )
    function: Function | None = Field(
        default=None,
        description="1 coils, 2 discrete inputs, 3 holding registers (default), 4 input registers",
    )
    type: RegisterType | None = Field(
        default=None, description="u16 (default), i16, u32, i32, f32, u64, i64, f64, string, bool (bit)"
    )
    byte_order: Order | None = Field(default=None, description="big (default) or little: bytes in a register")
    word_order: Order | None = Field(
        default=None, description="big (default) or little: registers in a value"
    )
    scale: Annotated[Float, AfterValidator(_not_zero)] | None = Field(
        default=None, description="value = raw * scale + offset (1)"
    )
    offset: Float | None = Field(default=None, description="added after scaling (0)")
    unit: str | None = Field(
        default=None, description="the unit the value is in after scaling; must be the quantity's unit"
    )
    counter: bool | None = Field(default=None, description="true for a cumulative counter (energy, pulses)")
    length: Annotated[Int, AfterValidator(within(1, 125))] | None = Field(
        default=None, description="registers of a string, 1 to 125"
    )
    bit: Annotated[Int, AfterValidator(within(0, 15))] | None = Field(
        default=None, description="the bit of a register holding a bool, 0 (least significant) to 15"
    )

    @property
    def reading_name(self) -> str:
        return f"{self.name}:{self.channel}" if self.channel else self.name

    def given(self) -> dict[str, Any]:
        """The keys written, with their values."""
        return {key: getattr(self, key) for key in self.model_fields_set}


class _Problems:
    """Errors found across a model, raised together, each at its own place."""

    def __init__(self, title: str) -> None:
        self.title = title
        self.found: list[InitErrorDetails] = []

    def add(self, loc: tuple[str | int, ...], kind: str, message: str, value: Any) -> None:
        self.found.append(InitErrorDetails(type=problem(kind, message), loc=loc, input=value))

    def raise_any(self) -> None:
        if self.found:
            raise ValidationError.from_exception_data(self.title, self.found)


def resolve(
    values: Mapping[str, Any], where: tuple[str | int, ...], problems: _Problems
) -> RegisterField | None:
    """A register entry's values (merged with its profile's) as a :class:`RegisterField`."""
    name = values["name"]
    reading = f"{name}:{values['channel']}" if values.get("channel") else name
    function = values.get("function") or 3
    bits = function in (1, 2)
    kind: DataType = values.get("type") or (DataType.BOOL if bits else DataType.U16)
    start = len(problems.found)

    def fault(key: str, message: str) -> None:
        problems.add((*where, key), "register", f"{reading}: {message}", values.get(key))

    if values.get("address") is None:
        fault("address", "required key 'address' is missing; the register address, 0 to 65535")
    if bits and kind is not DataType.BOOL:
        fault("type", f"function {function} reads bits, so the type is bool; got {kind}")
    if kind is DataType.STRING and values.get("length") is None:
        fault("type", "a string needs length: the number of registers it spans")
    if values.get("length") is not None and kind is not DataType.STRING:
        fault("length", f"length is for strings; a {kind} has a fixed size")
    if values.get("bit") is not None and (bits or kind is not DataType.BOOL):
        fault("bit", "bit picks one bit of a register holding a bool (function 3 or 4, type bool)")
    if kind in (DataType.STRING, DataType.BOOL):
        for key in ("scale", "offset", "counter"):
            if values.get(key) not in (None, False) and not (key == "scale" and values[key] == 1):
                fault(key, f"{key} applies to numbers; this register is a {kind}")
    unit = unit_of(name)
    written = values.get("unit")
    if written is not None and written != unit:
        factor = _CONVERSIONS.get((written, unit))
        hint = f"; convert with scale: {factor} (times any scale of the raw value)" if factor else ""
        quantity = f"{name} is always sent in {unit!r}" if unit else f"{name} has no unit"
        fault("unit", f"unit {written!r} is not the unit of {name}: {quantity}{hint}")
    length = values.get("length") or WIDTH.get(kind, 1)
    if length > max_count(function):
        fault("length", f"{length} registers do not fit in one request (at most {max_count(function)})")
    if len(problems.found) > start:
        return None
    return RegisterField(
        name=reading,
        quantity=name,
        unit=unit,
        function=function,
        address=values["address"],
        type=kind,
        length=length,
        byte_order=values.get("byte_order") or Order.BIG,
        word_order=values.get("word_order") or Order.BIG,
        scale=float(values["scale"]) if values.get("scale") is not None else 1.0,
        offset=float(values["offset"]) if values.get("offset") is not None else 0.0,
        counter=bool(values.get("counter")),
        bit=values.get("bit"),
    )


def _check_unique(fields: Iterable[tuple[RegisterField, tuple[str | int, ...]]], problems: _Problems) -> None:
    seen: dict[str, tuple[str | int, ...]] = {}
    for spec, where in fields:
        if spec.name in seen:
            problems.add(
                (*where, "name"),
                "register_repeated",
                f"two registers are named {spec.name!r}; give one a channel (e.g. channel: l2)",
                spec.name,
            )
        seen[spec.name] = where


# --- profiles ----------------------------------------------------------------------------------


class FactorySettings(Section):
    """How the device ships, for hints when it does not answer."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    unit: Annotated[Int, AfterValidator(within(0, 255))] | None = Field(default=None, description="unit id")
    baudrate: Annotated[Int, AfterValidator(within(300, 1_000_000))] | None = Field(
        default=None, description="bits per second"
    )
    parity: Parity | None = Field(default=None, description="none, even or odd")
    stopbits: Literal[1, 2] | None = Field(default=None, description="1 or 2")


class RegisterDefaults(Section):
    """Values every register of the profile has unless it says otherwise."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    function: Function | None = Field(default=None, description="1, 2, 3 or 4")
    type: RegisterType | None = Field(default=None, description="the data type")
    byte_order: Order | None = Field(default=None, description="big or little")
    word_order: Order | None = Field(default=None, description="big or little")


class Profile(Section):
    """A device profile: one YAML file under config/profiles/ (or the user's profile directory)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    description: Annotated[str, Field(min_length=1)] = Field(description="the device, in a line")
    source: Annotated[str, Field(min_length=1)] = Field(
        description="the datasheet or manual the register map comes from (title, version, section)"
    )
    factory: FactorySettings = Field(default=FactorySettings(), description="how the device ships")
    max_gap: Annotated[Int, AfterValidator(within(0, 124))] = Field(
        default=DEFAULT_MAX_GAP, description="unused registers a request may skip between two registers"
    )
    defaults: RegisterDefaults = Field(default=RegisterDefaults(), description="defaults for every register")
    registers: Annotated[tuple[RegisterSpec, ...], Field(min_length=1)] = Field(
        description="the register map: a list of name, address, ..."
    )
    _fields: tuple[RegisterField, ...] = PrivateAttr(default=())

    @model_validator(mode="before")
    @classmethod
    def _apply_defaults(cls, data: Any) -> Any:
        if not isinstance(data, dict) or not isinstance(data.get("defaults"), dict):
            return data
        defaults = {k: v for k, v in data["defaults"].items() if k in RegisterDefaults.model_fields}
        registers = data.get("registers")
        if isinstance(registers, list):
            data = {**data, "registers": [{**defaults, **r} if isinstance(r, dict) else r for r in registers]}
        return data

    @model_validator(mode="after")
    def _resolve(self) -> Self:
        problems = _Problems("profile")
        resolved: list[tuple[RegisterField, tuple[str | int, ...]]] = []
        for index, spec in enumerate(self.registers):
            field = resolve(spec.given() | {"name": spec.name}, ("registers", index), problems)
            if field is not None:
                resolved.append((field, ("registers", index)))
        _check_unique(resolved, problems)
        problems.raise_any()
        self._fields = tuple(field for field, _ in resolved)
        return self

    @property
    def fields(self) -> tuple[RegisterField, ...]:
        return self._fields


# --- devices -----------------------------------------------------------------------------------


class ModbusDevice(Section):
    """A Modbus device on an RTU line (or RTU over TCP)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    bus: BusId = Field(description="the id of the bus this device is on")
    unit: Annotated[Int, AfterValidator(within(1, 255))] = Field(
        description="the unit (slave) id, 1 to 247 (248-255 where the device uses them: Senseair S8 is 254)"
    )
    interval: Annotated[Duration, AfterValidator(duration_within(0.01, 86400))] = Field(
        default=10.0, description="how often to read the device, 10ms to 1d"
    )
    profile: ProfileName | None = Field(
        default=None, description="a device profile, e.g. eastron-sdm630; or give registers"
    )
    registers: tuple[RegisterSpec, ...] = Field(
        default=(), description="the registers to read; with a profile, overrides and additions"
    )
    skip: tuple[str, ...] = Field(default=(), description="reading names of the profile not to read")
    max_gap: Annotated[Int, AfterValidator(within(0, 124))] | None = Field(
        default=None,
        description=f"unused registers a request may skip, 0 to 124 (the profile's, else {DEFAULT_MAX_GAP})",
    )
    profiles_dir: ConfigPath | None = Field(
        default=None, description="a directory of user profiles (default: profiles/ beside the config file)"
    )
    backoff_max: Annotated[Duration, AfterValidator(duration_within(0.1, 86400))] = Field(
        default=60.0, description="longest wait between attempts to reach a silent device, 100ms to 1d"
    )
    report: ReportSettings = Field(
        default=ReportSettings(),
        description="what is sent: raw (every sample, the default), on_change or aggregate; "
        "readings: overrides per reading name",
    )
    location: Location | None = Field(default=None, description=DEVICE_LOCATION)
    _fields: tuple[RegisterField, ...] = PrivateAttr(default=())
    _profile: Profile | None = PrivateAttr(default=None)

    @model_validator(mode="after")
    def _resolve(self, info: ValidationInfo) -> Self:
        problems = _Problems("device")
        profile = self._load_profile(info, problems)
        if profile is None and self.profile is None and not self.registers:
            problems.add(
                ("registers",),
                "no_registers",
                "give a profile (e.g. profile: eastron-sdm630) or the registers to read",
                self.registers,
            )
        merged: dict[str, tuple[dict[str, Any], tuple[str | int, ...]]] = {}
        if profile is not None:
            for spec in profile.registers:
                merged[spec.reading_name] = (spec.given() | {"name": spec.name}, ("profile",))
        written: set[str] = set()
        for index, spec in enumerate(self.registers):
            where: tuple[str | int, ...] = ("registers", index)
            if spec.reading_name in written:
                problems.add(
                    (*where, "name"),
                    "register_repeated",
                    f"two registers are named {spec.reading_name!r}; give one a channel (e.g. channel: l2)",
                    spec.reading_name,
                )
                continue
            written.add(spec.reading_name)
            base = merged.get(spec.reading_name)
            if base is None and profile is not None and spec.address is None:
                problems.add(
                    (*where, "name"),
                    "register_unknown",
                    f"{spec.reading_name!r} is not a register of profile {self.profile!r} "
                    f"(it has: {', '.join(merged)}); to add a register, give its address",
                    spec.reading_name,
                )
                continue
            merged[spec.reading_name] = (
                (base[0] if base else {}) | spec.given() | {"name": spec.name},
                where,
            )
        for index, name in enumerate(self.skip):
            if name not in merged:
                problems.add(
                    ("skip", index),
                    "skip_unknown",
                    f"{name!r} is not a register of this device; its registers: {', '.join(merged)}",
                    name,
                )
            merged.pop(name, None)
        resolved: list[tuple[RegisterField, tuple[str | int, ...]]] = []
        for values, where in merged.values():
            field = resolve(values, where, problems)
            if field is not None:
                resolved.append((field, where))
        _check_unique(resolved, problems)
        if not resolved and not problems.found:
            problems.add(
                ("skip",), "no_registers", "every register is skipped; nothing would be read", self.skip
            )
        problems.raise_any()
        self._fields = tuple(field for field, _ in resolved)
        self._profile = profile
        return self

    def _load_profile(self, info: ValidationInfo, problems: _Problems) -> Profile | None:
        if self.profile is None:
            return None
        # imported here: drivers.modbus.profiles imports this module's Profile
        from drivers.modbus.profiles import ProfileError, find_profile

        context = load_context(info)
        user_dir = self.profiles_dir
        if user_dir is None and context is not None:
            default = context.base_dir / "profiles"
            user_dir = default if default.is_dir() else None
        elif user_dir is not None and context is not None and context.check_files and not user_dir.is_dir():
            problems.add(("profiles_dir",), "profiles_dir", f"{user_dir} is not a directory", str(user_dir))
            return None
        try:
            return find_profile(self.profile, user_dir=user_dir)
        except ProfileError as exc:
            problems.add(("profile",), "profile", str(exc), self.profile)
            return None

    @property
    def fields(self) -> tuple[RegisterField, ...]:
        """The registers to read, resolved (profile, overrides, skips, defaults)."""
        return self._fields

    @property
    def gap(self) -> int:
        """The max gap in effect: the device's, else its profile's, else the default."""
        if self.max_gap is not None:
            return self.max_gap
        return self._profile.max_gap if self._profile is not None else DEFAULT_MAX_GAP

    @property
    def factory(self) -> FactorySettings | None:
        return self._profile.factory if self._profile is not None else None


class ModbusTcpDevice(ModbusDevice):
    """A Modbus device reached over Modbus TCP (unit 0 and 255 address the server itself)."""

    unit: Annotated[Int, AfterValidator(within(0, 255))] = Field(
        description="the unit id, 0 to 255 (a TCP-to-RTU gateway passes it to the RS-485 line)"
    )


ModbusDeviceModel = ModbusDevice | ModbusTcpDevice
