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

from typing import Annotated, Any, Literal, Self

from pydantic import (
    AfterValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationInfo,
    model_validator,
)

from citygw.config.base import (
    BusId,
    ConfigPath,
    Int,
    Section,
    load_context,
    problem,
    within,
)
from citygw.config.location import DEVICE_LOCATION, Location
from citygw.config.profiles import ProfileError, find_profile
from citygw.config.register_map import (
    DEFAULT_MAX_GAP,
    FactorySettings,
    Parity,
    Profile,
    ProfileName,
    RegisterProblems,
    RegisterSpec,
    check_unique,
    resolve,
)
from citygw.config.report import ReadingInfo, ReportSettings
from citygw.config.units import Duration, duration_within
from citygw.config.wiring import standard_baudrate
from citygw.drivers.modbus.registers import DataType
from citygw.drivers.modbus.registers import Field as RegisterField


def _host(value: str) -> str:
    if not value or "/" in value or " " in value:
        raise problem(
            "host",
            f"{value!r} is not a host; write a name or an address (e.g. 192.168.1.50), no scheme or port",
        )
    return value


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
        problems = RegisterProblems("device")
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
        check_unique(resolved, problems)
        if not resolved and not problems.found:
            problems.add(
                ("skip",), "no_registers", "every register is skipped; nothing would be read", self.skip
            )
        problems.raise_any()
        self._fields = tuple(field for field, _ in resolved)
        self._profile = profile
        return self

    def _load_profile(self, info: ValidationInfo, problems: RegisterProblems) -> Profile | None:
        if self.profile is None:
            return None
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

    def report_readings(self) -> dict[str, ReadingInfo] | None:
        """The readings this device produces (:class:`citygw.config.report.ReportedDevice`)."""
        kinds: dict[DataType, Literal["bool", "text"]] = {DataType.BOOL: "bool", DataType.STRING: "text"}
        return {f.name: ReadingInfo(kinds.get(f.type, "number"), f.counter) for f in self.fields}

    def report_interval(self) -> float | None:
        """How often this device gives each reading, seconds."""
        return self.interval


class ModbusTcpDevice(ModbusDevice):
    """A Modbus device reached over Modbus TCP (unit 0 and 255 address the server itself)."""

    unit: Annotated[Int, AfterValidator(within(0, 255))] = Field(
        description="the unit id, 0 to 255 (a TCP-to-RTU gateway passes it to the RS-485 line)"
    )


ModbusDeviceModel = ModbusDevice | ModbusTcpDevice
