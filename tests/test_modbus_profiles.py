"""Modbus config and device profiles: the shipped profiles against their datasheets, profiles by name
(shipped, user, overridden), and every config mistake reported with its file, line and key."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from citygw.config import load_config
from citygw.config.modbus import ModbusDevice, ModbusRtuBus, ModbusTcpDevice
from citygw.config.profiles import SHIPPED_DIR, available, find_profile
from citygw.drivers.modbus.registers import DataType, Order
from citygw.errors import ConfigError

REPO = Path(__file__).resolve().parent.parent


def config(tmp_path: Path, key: Path, body: str) -> Path:
    path = tmp_path / "citygw.yaml"
    path.write_text(f"gateway:\n  id: gw-1\n  key_file: {key}\n" + body)
    return path


def problems(path: Path) -> list[str]:
    with pytest.raises(ConfigError) as raised:
        load_config(path, environ={})
    return [str(p).replace(str(path), "FILE") for p in raised.value.problems]


RS485 = "buses:\n  rs485: {type: modbus-rtu, port: /dev/ttyUSB0}\n  plc: {type: modbus-tcp, host: 10.0.0.5}\n"


def test_shipped_profiles_load_and_cite_their_source() -> None:
    assert set(available()) >= {"eastron-sdm120", "eastron-sdm630", "xy-md02", "senseair-s8"}
    for name, path in available().items():
        profile = find_profile(name)
        assert path.parent == SHIPPED_DIR and profile.source and profile.description
        assert all(f.function in (1, 2, 3, 4) for f in profile.fields)


def test_sdm630_map_is_eastrons() -> None:
    fields = {f.name: f for f in find_profile("eastron-sdm630").fields}
    expected = {  # Eastron SDM630 Modbus protocol: input register 3xxxx -> address 3xxxx - 30001
        "voltage:l1": 0x0000,
        "voltage:l2": 0x0002,
        "voltage:l3": 0x0004,
        "current:l1": 0x0006,
        "activePower:l1": 0x000C,
        "apparentPower:l1": 0x0012,
        "reactivePower:l1": 0x0018,
        "powerFactor:l1": 0x001E,
        "activePower": 0x0034,
        "frequency": 0x0046,
        "activeEnergyImport": 0x0048,
        "activeEnergyExport": 0x004A,
        "voltage:l1-l2": 0x00C8,
        "current:n": 0x00E0,
    }
    for name, address in expected.items():
        spec = fields[name]
        assert (spec.address, spec.function, spec.type, spec.word_order) == (
            address,
            4,
            DataType.F32,
            Order.BIG,
        )
    energy = fields["activeEnergyImport"]
    assert (energy.scale, energy.counter, energy.unit) == (1000.0, True, "Wh")  # kWh on the meter
    assert (fields["voltage:l1"].unit, fields["powerFactor"].unit, fields["frequency"].unit) == (
        "V",
        "/",
        "Hz",
    )
    assert len(fields) == 29


def test_small_profiles() -> None:
    sdm120 = {f.name: f.address for f in find_profile("eastron-sdm120").fields}
    assert sdm120 == {
        "voltage": 0x00,
        "current": 0x06,
        "activePower": 0x0C,
        "apparentPower": 0x12,
        "reactivePower": 0x18,
        "powerFactor": 0x1E,
        "frequency": 0x46,
        "activeEnergyImport": 0x48,
        "activeEnergyExport": 0x4A,
    }
    temperature, humidity = find_profile("xy-md02").fields
    assert (temperature.address, temperature.function, temperature.type, temperature.scale) == (
        1,
        4,
        DataType.I16,
        0.1,
    )
    assert (humidity.address, humidity.type, humidity.unit) == (2, DataType.U16, "%RH")
    s8 = find_profile("senseair-s8")
    ((co2),) = s8.fields
    assert (co2.name, co2.address, co2.function, co2.unit, s8.factory.unit) == ("co2", 3, 4, "ppm", 254)


def test_three_lines_for_a_meter(tmp_path: Path, key: Path) -> None:
    path = config(
        tmp_path,
        key,
        RS485 + "devices:\n  meter-1:\n    bus: rs485\n    unit: 1\n    profile: eastron-sdm630\n",
    )
    device = load_config(path, environ={}).devices["meter-1"]
    assert isinstance(device, ModbusDevice) and len(device.fields) == 29
    assert (device.interval, device.gap) == (10.0, 24)


def test_device_overrides_skips_and_additions(tmp_path: Path, key: Path) -> None:
    body = (
        RS485
        + """\
devices:
  meter-1:
    bus: rs485
    unit: 7
    profile: eastron-sdm120
    max_gap: 0
    skip: [activeEnergyExport, reactivePower]
    registers:
      - {name: voltage, scale: 0.5}          # a variant that reports half volts
      - {name: batteryLevel, address: 300, type: u16, function: 3}
"""
    )
    device = load_config(config(tmp_path, key, body), environ={}).devices["meter-1"]
    fields = {f.name: f for f in device.fields}
    assert "activeEnergyExport" not in fields and "reactivePower" not in fields
    assert (fields["voltage"].scale, fields["voltage"].function, fields["voltage"].type) == (
        0.5,
        4,
        DataType.F32,
    )
    assert (fields["batteryLevel"].address, fields["batteryLevel"].function) == (300, 3)
    assert device.gap == 0


def test_user_profiles_beside_the_config_and_in_profiles_dir(tmp_path: Path, key: Path) -> None:
    (tmp_path / "profiles").mkdir()
    (tmp_path / "profiles" / "eastron-sdm630.yaml").write_text(
        "description: a house variant\nsource: our lab\n"
        "registers:\n  - {name: voltage, address: 0, function: 4, type: f32}\n"
    )
    other = tmp_path / "more"
    other.mkdir()
    (other / "acme-pt100.yaml").write_text(
        "description: ACME PT100 transmitter\nsource: ACME manual 2.1\nregisters:\n"
        "  - {name: temperature, address: 16, type: i32, word_order: little, scale: 0.01}\n"
    )
    body = RS485 + (
        "devices:\n  m: {bus: rs485, unit: 1, profile: eastron-sdm630}\n"
        "  t: {bus: plc, unit: 0, profile: acme-pt100, profiles_dir: more}\n"
    )
    loaded = load_config(config(tmp_path, key, body), environ={})
    (voltage,) = loaded.devices["m"].fields  # the user's profile replaces the shipped one
    assert voltage.name == "voltage"
    (temperature,) = loaded.devices["t"].fields
    assert isinstance(loaded.devices["t"], ModbusTcpDevice)
    assert (temperature.type, temperature.word_order, temperature.scale) == (DataType.I32, Order.LITTLE, 0.01)


def test_unknown_profile_lists_the_shipped_ones(tmp_path: Path, key: Path) -> None:
    path = config(
        tmp_path, key, RS485 + "devices:\n  m:\n    bus: rs485\n    unit: 1\n    profile: eastron-sdm63\n"
    )
    shipped = ", ".join(available())
    assert problems(path) == [
        f"FILE:11: devices.m.profile: unknown profile 'eastron-sdm63' (did you mean 'eastron-sdm630'?); "
        f"shipped profiles: {shipped}"
    ]


def test_a_bad_profile_names_its_own_file_line_and_key(tmp_path: Path, key: Path) -> None:
    (tmp_path / "profiles").mkdir()
    bad = tmp_path / "profiles" / "broken.yaml"
    bad.write_text(
        "description: broken\nsource: nowhere\ndefaults: {function: 4}\nregisters:\n"
        "  - {name: voltage, address: 0, type: f33}\n"
        "  - {name: volts, address: 2}\n"
    )
    path = config(tmp_path, key, RS485 + "devices:\n  m:\n    bus: rs485\n    unit: 1\n    profile: broken\n")
    (message,) = problems(path)
    assert message.startswith("FILE:11: devices.m.profile: profile 'broken' is not valid: ")
    assert f"{bad}:5: registers[0].type: must be 'u16', 'i16', 'u32', 'i32', 'f32', 'u64'" in message
    assert f"{bad}:6: registers[1].name: unknown quantity 'volts' (did you mean 'voltage'?)" in message
    bad.write_text(
        "description: broken\nsource: nowhere\nregisters:\n  - {name: current, address: 4, type: string}\n"
    )
    (message,) = problems(path)
    assert (
        message
        == f"FILE:11: devices.m.profile: profile 'broken' is not valid: {bad}:4: registers[0].type: "
        + ("current: a string needs length: the number of registers it spans")
    )


def test_register_mistakes_each_at_its_line(tmp_path: Path, key: Path) -> None:
    body = (
        RS485
        + """\
devices:
  plc:
    bus: plc
    unit: 1
    registers:
      - {name: activeEnergyImport, address: 0, type: u32, unit: kWh, counter: true}
      - {name: co2, address: 3, function: 2, type: u16}
      - {name: temperature, address: 5, bit: 3}
  phases:
    bus: plc
    unit: 1
    registers:
      - {name: voltage, address: 7, channel: L1}
  empty:
    bus: rs485
    unit: 0
"""
    )
    assert problems(config(tmp_path, key, body)) == [
        "FILE:12: devices.plc.registers[0].unit: activeEnergyImport: unit 'kWh' is not the unit of "
        "activeEnergyImport: activeEnergyImport is always sent in 'Wh'; convert with scale: 1000 "
        "(times any scale of the raw value)",
        "FILE:13: devices.plc.registers[1].type: co2: function 2 reads bits, so the type is bool; got u16",
        "FILE:14: devices.plc.registers[2].bit: temperature: bit picks one bit of a register holding a bool "
        "(function 3 or 4, type bool)",
        "FILE:19: devices.phases.registers[0].channel: 'L1' is not a channel; use 1 to 16 lowercase letters, "
        "digits, '.', '_' or '-' (phases: l1, l2, l3, n, l1-l2, l2-l3, l3-l1)",
        "FILE:22: devices.empty.unit: must be between 1 and 255; got 0",
    ]


def test_repeated_names_and_nothing_to_read(tmp_path: Path, key: Path) -> None:
    body = (
        RS485
        + """\
devices:
  a:
    bus: plc
    unit: 1
    registers:
      - {name: temperature, address: 5}
      - {name: temperature, address: 6}
  b: {bus: rs485, unit: 2}
"""
    )
    assert problems(config(tmp_path, key, body)) == [
        "FILE:13: devices.a.registers[1].name: two registers are named 'temperature'; give one a channel "
        "(e.g. channel: l2)",
        "FILE:14: devices.b.registers: give a profile (e.g. profile: eastron-sdm630) or the registers "
        "to read",
    ]


def test_bus_keys_and_line_settings(tmp_path: Path, key: Path) -> None:
    body = "buses:\n  rs: {type: modbus-rtu, port: /dev/ttyS0, parity: E, baud: 19200}\n"
    assert problems(config(tmp_path, key, body)) == [
        "FILE:5: buses.rs.baud: unknown key 'baud' (did you mean 'baudrate'?); "
        "allowed here: type, port, baudrate, parity, stopbits, "
        "bytesize, timeout, inter_frame_delay"
    ]
    bus = ModbusRtuBus.model_validate(
        {"type": "modbus-rtu", "port": "/dev/ttyS0", "parity": "E", "baudrate": 19200}
    )
    assert bus.parity == "even" and bus.describe() == "modbus-rtu /dev/ttyS0 19200 8E1"
    assert bus.frame_delay == pytest.approx(3.5 * 11 / 19200)  # 3.5 characters of 11 bits
    fast = bus.model_copy(update={"baudrate": 115200})
    assert fast.frame_delay == 0.00175


def test_the_modbus_example_config_loads(tmp_path: Path, key: Path) -> None:
    text = (
        (REPO / "config" / "examples" / "modbus.yaml")
        .read_text()
        .replace("/etc/citygw/signing.key", str(key))
    )
    path = tmp_path / "modbus.yaml"
    path.write_text(text)
    loaded = load_config(path, environ={})
    assert {name: len(d.fields) for name, d in loaded.devices.items()} == {
        "meter-1": 29,
        "climate-1": 2,
        "plc": 4,
    }
    assert [f.name for f in loaded.devices["plc"].fields][:2] == ["temperature:in", "temperature:out"]


def test_each_bus_type_keeps_its_model(tmp_path: Path, key: Path) -> None:
    body = (
        "buses:\n  rs485: {type: modbus-rtu, port: /dev/ttyUSB0}\n  plc: {type: modbus-tcp, host: 10.0.0.5}\n"
        "  conv: {type: modbus-rtu-over-tcp, host: 10.0.0.6, port: 4196}\n"
        "devices:\n  a: {bus: rs485, unit: 1, profile: xy-md02}\n  b: {bus: plc, unit: 0, profile: xy-md02}\n"
        "  c: {bus: conv, unit: 3, profile: xy-md02}\n"
    )
    loaded = load_config(config(tmp_path, key, body), environ={})
    assert [type(b).__name__ for b in loaded.buses.values()] == [
        "ModbusRtuBus",
        "ModbusTcpBus",
        "ModbusRtuOverTcpBus",
    ]
    assert [type(d).__name__ for d in loaded.devices.values()] == [
        "ModbusDevice",
        "ModbusTcpDevice",
        "ModbusDevice",
    ]


def test_a_wheel_ships_the_profiles_where_an_installed_citygw_finds_them(tmp_path: Path) -> None:
    """`pip install` of the source (what scripts/install.sh does on a Pi) is not editable: the
    profiles and the demo must travel inside the wheel, to <prefix>/share/citygw (gateway/shipped.py)."""
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(REPO)],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert built.returncode == 0, built.stderr
    (wheel,) = tmp_path.glob("citygw-*.whl")
    shipped = {p.name for p in SHIPPED_DIR.glob("*.yaml")}
    with zipfile.ZipFile(wheel) as archive:
        inside = {
            Path(n).name
            for n in archive.namelist()
            if "/data/share/citygw/profiles/" in n and n.endswith(".yaml")
        }
    assert shipped and inside == shipped
    with zipfile.ZipFile(wheel) as archive:  # and the demo, whose config names its recording beside it
        demo = {
            n.split("/data/share/citygw/", 1)[1] for n in archive.namelist() if "/data/share/citygw/demo" in n
        }
    assert demo == {"demo.yaml", "demo-adverts.jsonl"}
