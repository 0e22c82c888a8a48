"""`citygw probe` and `citygw scan` as real subprocesses against a loopback pymodbus server, and a
Modbus meter's readings through the whole daemon into signed batches on a real broker."""

from __future__ import annotations

import asyncio
import grp
import json
import os
import pwd
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from citygw.config import load_config
from citygw.config.profiles import find_profile
from citygw.daemon.gateway import Gateway
from citygw.demo.broker import LocalBroker
from citygw.drivers.modbus.server import ModbusSimulator, Unit

from .support import REPO, Collector, payload_of, verify_all, write_config

XY = {"temperature": 21.5, "relativeHumidity": 48.3}


def units() -> dict[int, Unit]:
    sdm630 = find_profile("eastron-sdm630").fields
    meter = {f.name: 0.0 for f in sdm630} | {
        "voltage:l1": 230.1,
        "frequency": 50.02,
        "activeEnergyImport": 1_500_000.0,
    }
    return {
        1: Unit().put(sdm630, meter),
        2: Unit().put(find_profile("xy-md02").fields, XY),
        7: Unit(holding={0: 1}),
    }


def write(tmp_path: Path, key: Path, port: int) -> Path:
    config = {
        "gateway": {"id": "gw-probe", "key_file": str(key)},
        "buffer": {"path": str(tmp_path / "buffer.db")},
        "buses": {
            "plc": {"type": "modbus-tcp", "host": "127.0.0.1", "port": port, "timeout": "200ms"},
            "gen": {"type": "synthetic"},
        },
        "devices": {
            "meter-1": {"bus": "plc", "unit": 1, "profile": "eastron-sdm630"},
            "climate-1": {"bus": "plc", "unit": 2, "profile": "xy-md02"},
            "dead": {"bus": "plc", "unit": 9, "profile": "xy-md02"},
            "load": {"bus": "gen"},
        },
    }
    path = tmp_path / "citygw.yaml"
    path.write_text(json.dumps(config))
    return path


async def citygw(*args: str, prefix: Sequence[str] = ()) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        *prefix,
        sys.executable,
        "-m",
        "citygw",
        *args,
        cwd=REPO,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_probe_prints_json_lines(tmp_path: Path, key: Path) -> None:
    async with ModbusSimulator(units()) as server:
        config = write(tmp_path, key, server.port)
        code, out, err = await citygw("probe", "-c", str(config), "meter-1")
        assert code == 0, err
        lines = [json.loads(line) for line in out.splitlines()]
        assert len(lines) == 29 and all(
            set(line) == {"device", "name", "value", "unit", "time"} for line in lines
        )
        by_name = {line["name"]: line for line in lines}
        assert by_name["voltage:l1"] | {"time": 0} == {
            "device": "meter-1",
            "name": "voltage:l1",
            "value": 230.1,
            "unit": "V",
            "time": 0,
        }
        assert (by_name["activeEnergyImport"]["value"], by_name["activeEnergyImport"]["unit"]) == (
            1_500_000.0,
            "Wh",
        )
        code, out, err = await citygw("probe", "-c", str(config), "climate-1")
        assert code == 0 and [json.loads(line)["value"] for line in out.splitlines()] == [21.5, 48.3]


async def test_probe_of_a_silent_device_says_where_and_what_was_tried(tmp_path: Path, key: Path) -> None:
    async with ModbusSimulator(units()) as server:
        config = write(tmp_path, key, server.port)
        code, out, err = await citygw("probe", "-c", str(config), "dead")
    assert (code, out) == (1, "")
    assert f"citygw probe: dead did not answer: unit 9 on bus plc (modbus-tcp 127.0.0.1:{server.port})" in err
    assert "tried: read input registers 1-2 (function 4, 2 registers): unit 9: no answer within 0.2 s" in err
    assert "check the unit id: is the device set to 9? (profile 'xy-md02' ships as unit 1 at 9600 baud" in err


async def test_probe_splits_a_read_the_firmware_refuses_for_spanning_unused_registers(
    tmp_path: Path, key: Path
) -> None:
    # firmware that maps 0, 1 and 9 only and refuses a read of 0-9 (exception 2): the daemon splits
    # the request and reads the values at its second poll; the probe does the same, and says so
    unit = Unit(holding={0: 215, 1: 483, 9: 7}, fill_gaps=False)
    registers = [
        {"name": "temperature", "address": 0, "scale": 0.1},
        {"name": "relativeHumidity", "address": 1, "scale": 0.1},
        {"name": "intensity", "address": 9},
    ]
    async with ModbusSimulator({1: unit}) as server:
        config = json.loads(write(tmp_path, key, server.port).read_text())
        config["devices"] = {"board": {"bus": "plc", "unit": 1, "registers": registers}}
        path = tmp_path / "gaps.yaml"
        path.write_text(json.dumps(config))
        code, out, err = await citygw("probe", "-c", str(path), "board")
    assert code == 0, err
    assert [(line["name"], line["value"]) for line in map(json.loads, out.splitlines())] == [
        ("temperature", 21.5),
        ("relativeHumidity", 48.3),
        ("intensity", 7),
    ]
    assert err == (
        "citygw probe: unit 1 refused read holding registers 0-9 (function 3, 10 registers), which spans "
        "unused addresses; read those registers again without gaps, as the daemon does from its second "
        "poll (set max_gap: 0 for board to avoid the refused read)\n"
    )


def rtu_config(tmp_path: Path, key: Path, port: str) -> Path:
    config = {
        "gateway": {"id": "gw-probe", "key_file": str(key)},
        "buffer": {"path": str(tmp_path / "buffer.db")},
        "buses": {"rs485": {"type": "modbus-rtu", "port": port, "timeout": "200ms"}},
        "devices": {"meter": {"bus": "rs485", "unit": 1, "profile": "xy-md02"}},
    }
    path = tmp_path / "rtu.yaml"
    path.write_text(json.dumps(config))
    return path


async def test_a_missing_port_is_named_not_taken_for_a_silent_meter(tmp_path: Path, key: Path) -> None:
    port = str(tmp_path / "ttyUSB-unplugged")
    config = rtu_config(tmp_path, key, port)
    code, out, err = await citygw("probe", "-c", str(config), "meter")
    assert (code, out) == (1, "")
    assert f"citygw probe: meter was not asked: cannot open bus rs485 (modbus-rtu {port} 9600 8N1): " in err
    assert f"no such device: {port} (/dev/serial/by-id" in err
    assert "plug the adapter in, or set the bus's port to one of those" in err
    assert "unit id" not in err and "A to A" not in err and "did not answer" not in err
    code, out, err = await citygw("scan", "-c", str(config), "rs485", "--first", "1", "--last", "3")
    assert (code, out) == (1, "")
    assert err.startswith(
        f"citygw scan: cannot open bus rs485 (modbus-rtu {port} 9600 8N1): no such device: "
    )
    assert "no unit answered" not in err


async def test_a_port_the_user_may_not_open_names_the_group_to_join(tmp_path: Path, key: Path) -> None:
    """A real tty the probe's user may not open (its mode taken away; as root, the probe runs
    without the capability to override file modes)."""
    if os.geteuid() == 0 and shutil.which("setpriv") is None:
        pytest.skip("as root, needs setpriv (util-linux) to drop the capability to override file modes")
    master, slave = os.openpty()
    port = os.ttyname(slave)
    group = grp.getgrgid(os.stat(port).st_gid).gr_name
    try:
        os.chmod(port, 0)
        config = rtu_config(tmp_path, key, port)
        prefix = ["setpriv", "--bounding-set=-dac_override,-dac_read_search"] if os.geteuid() == 0 else []
        code, out, err = await citygw("probe", "-c", str(config), "meter", prefix=prefix)
    finally:
        os.close(master)
        os.close(slave)
    user = pwd.getpwuid(os.geteuid()).pw_name
    assert (code, out) == (1, ""), err
    assert f"permission denied on {port} for user {user} (owner " in err
    assert f"add {user} to group {group}: `sudo usermod -aG {group} {user}`" in err
    assert "unit id" not in err and "A to A" not in err


async def test_probe_into_a_pipe_whose_reader_left_ends_quietly(tmp_path: Path, key: Path) -> None:
    # `citygw probe ... | head`: the reader is gone before the readings are printed
    async with ModbusSimulator(units()) as server:
        config = write(tmp_path, key, server.port)
        read_end, write_end = os.pipe()
        os.close(read_end)
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "citygw",
            "probe",
            "-c",
            str(config),
            "meter-1",
            cwd=REPO,
            stdout=write_end,
            stderr=asyncio.subprocess.PIPE,
        )
        os.close(write_end)
        _, err = await proc.communicate()
    assert proc.returncode == 141, err.decode()  # stdout's reader left: exit 141, as cat or grep
    assert err == b""  # no BrokenPipeError traceback


async def test_probe_usage_errors(tmp_path: Path, key: Path) -> None:
    config = write(tmp_path, key, 1)
    code, _, err = await citygw("probe", "-c", str(config), "nope")
    assert code == 2 and "no device 'nope'" in err and "devices: meter-1, climate-1, dead, load" in err
    code, _, err = await citygw("probe", "-c", str(config), "load")
    assert code == 2 and "load is on bus gen of type synthetic" in err
    code, _, err = await citygw("scan", "-c", str(config), "gen")
    assert code == 2 and "bus gen is of type synthetic" in err


async def test_scan_lists_the_units_that_answer(tmp_path: Path, key: Path) -> None:
    async with ModbusSimulator(units()) as server:
        config = write(tmp_path, key, server.port)
        code, out, err = await citygw("scan", "-c", str(config), "plc", "--first", "1", "--last", "10")
    assert code == 0, err
    found = [json.loads(line) for line in out.splitlines()]
    assert [(f["unit"], f["devices"]) for f in found] == [(1, ["meter-1"]), (2, ["climate-1"]), (7, [])]
    assert found[0]["answer"] == "exception 2 (illegal data address)"  # the meter maps no holding registers
    assert found[2]["answer"] == "registers"
    assert "3 unit(s) answered on bus plc" in err


async def test_meter_readings_flow_through_the_daemon_into_signed_batches(
    tmp_path: Path, key: Path, broker: LocalBroker, collector: Collector
) -> None:
    async with ModbusSimulator(units()) as server:
        devices: dict[str, dict[str, Any]] = {
            "meter-1": {"bus": "plc", "unit": 1, "profile": "eastron-sdm630", "interval": "100ms"},
            "climate-1": {"bus": "plc", "unit": 2, "profile": "xy-md02", "interval": "100ms"},
        }
        path = write_config(
            tmp_path / "config.yaml",
            key=key,
            port=broker.port,
            devices=devices,
            buses={"plc": {"type": "modbus-tcp", "host": "127.0.0.1", "port": server.port}},
            buffer={"batch": {"max_age": "100ms"}, "commit_interval": "50ms"},
        )
        gateway = Gateway(load_config(path))
        task = asyncio.create_task(gateway.run())
        for _ in range(100):
            await asyncio.sleep(0.05)
            if collector.readings() >= 2 * 31:
                break
        gateway.stop()
        await task
    assert gateway.health["meter-1"].frames >= 2 and gateway.health["climate-1"].frames >= 2
    tokens = collector.snapshot()
    verified = verify_all(tokens, key.with_name(key.name + ".pub"))
    assert 230.1 in verified.values["meter-1"] and 48.3 in verified.values["climate-1"]
    names = {record["n"] for token in tokens for record in payload_of(token)["senml"]}
    assert {"voltage:l1", "voltage:l1-l2", "current:n", "activeEnergyImport", "temperature"} <= names
