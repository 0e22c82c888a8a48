"""Register maps: one register entry as written, resolved into a driver's register field, and the
device profile (a register map in a YAML file; :mod:`citygw.config.profiles` finds and reads it).

A Modbus device's config (:mod:`citygw.config.modbus`) uses the same entries to override a
profile's registers or to give its own.
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
    model_validator,
)
from pydantic_core import InitErrorDetails

from citygw.config.base import Float, Int, QuantityName, Section, problem, within
from citygw.drivers.modbus.plan import max_count
from citygw.drivers.modbus.registers import WIDTH, DataType, Order
from citygw.drivers.modbus.registers import Field as RegisterField
from citygw.vocabulary import unit_of

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


Channel = Annotated[str, BeforeValidator(_channel)]
ProfileName = Annotated[str, BeforeValidator(_profile_name)]
Parity = Annotated[Literal["none", "even", "odd"], BeforeValidator(_parity)]
RegisterType = Annotated[DataType, BeforeValidator(_data_type)]
Function = Literal[1, 2, 3, 4]


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


class RegisterProblems:
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
    values: Mapping[str, Any], where: tuple[str | int, ...], problems: RegisterProblems
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


def check_unique(
    fields: Iterable[tuple[RegisterField, tuple[str | int, ...]]], problems: RegisterProblems
) -> None:
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
        problems = RegisterProblems("profile")
        resolved: list[tuple[RegisterField, tuple[str | int, ...]]] = []
        for index, spec in enumerate(self.registers):
            field = resolve(spec.given() | {"name": spec.name}, ("registers", index), problems)
            if field is not None:
                resolved.append((field, ("registers", index)))
        check_unique(resolved, problems)
        problems.raise_any()
        self._fields = tuple(field for field, _ in resolved)
        return self

    @property
    def fields(self) -> tuple[RegisterField, ...]:
        return self._fields


# --- devices -----------------------------------------------------------------------------------
