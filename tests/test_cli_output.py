"""Every command that writes to stdout, into a pipe whose reader is gone (``citygw ... | head``),
and ``citygw scan --duration`` on a BLE bus."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from citygw.buffer import BatchLimits, Buffer
from citygw.commands.cli import EXIT_BROKEN_PIPE, main
from citygw.drivers.modbus.server import ModbusSimulator
from citygw.reading import Record
from citygw.wire.signing import Signer

from .support import REPO, write_config
from .test_ble_driver import BTHOME_UUID, THERMO, Air
from .test_modbus_cli import units
from .test_modbus_cli import write as write_modbus_config


def into_closed_pipe(*args: str) -> subprocess.CompletedProcess[str]:
    """Run ``citygw ARGS`` with stdout a pipe whose read end is closed before it starts: its
    first write to stdout fails with EPIPE, as when ``head`` has read enough and exited."""
    read, write = os.pipe()
    os.close(read)
    try:
        return subprocess.run(
            [sys.executable, "-m", "citygw", *args],
            stdout=write,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
            cwd=REPO,
            timeout=60,
            check=False,
        )
    finally:
        os.close(write)


def _assert_quiet(done: subprocess.CompletedProcess[str]) -> None:
    assert "Traceback" not in done.stderr and "BrokenPipeError" not in done.stderr, done.stderr
    assert done.returncode == EXIT_BROKEN_PIPE == 141, (done.returncode, done.stderr)


@pytest.fixture
def files(tmp_path: Path, key: Path) -> dict[str, str]:
    config = write_config(tmp_path / "c.yaml", key=key, port=1883, devices={"d1": {"bus": "gen"}})
    buf = Buffer(
        tmp_path / "state" / "buffer.db",
        gateway="gw-test",
        signer=Signer.from_file(key),
        uplinks=["local"],
        limits=BatchLimits(max_readings=10),
    )
    buf.open()
    buf.commit(
        [Record("d1", "co2", 400 + i, "ppm", 1_790_000_000.0 + i, 0) for i in range(35)], seal_all=True
    )
    batches = tmp_path / "batches.jws"
    batches.write_text("".join(b.jws + "\n" for b in buf.fetch(0, 100)))
    buf.close()
    return {"config": str(config), "pub": f"{key}.pub", "batches": str(batches), "dir": str(tmp_path)}


@pytest.mark.parametrize(
    "argv",
    [
        ["schema"],
        ["check", "-c", "{config}"],
        ["status", "-c", "{config}"],
        ["status", "-c", "{config}", "--json"],
        ["decode", "sds011", "AA C0 D4 04 3A 0A A1 60 1D AB"],
        ["verify", "--key", "{pub}", "{batches}"],
        ["keygen", "--out", "{dir}/new.key"],
    ],
    ids=lambda argv: " ".join(a for a in argv if "{" not in a)[:30],
)
def test_a_closed_pipe_ends_a_command_quietly(files: dict[str, str], argv: list[str]) -> None:
    _assert_quiet(into_closed_pipe(*(a.format(**files) for a in argv)))


def test_probe_and_scan_into_a_closed_pipe(tmp_path: Path, key: Path) -> None:
    import asyncio

    async def run() -> list[subprocess.CompletedProcess[str]]:
        async with ModbusSimulator(units()) as server:
            config = str(write_modbus_config(tmp_path, key, server.port))
            return [
                await asyncio.to_thread(into_closed_pipe, "probe", "-c", config, "meter-1"),
                await asyncio.to_thread(into_closed_pipe, "scan", "-c", config, "plc", "--last", "3"),
            ]

    for done in asyncio.run(run()):
        _assert_quiet(done)


def test_a_broken_pipe_that_is_not_stdout_still_fails_loudly(tmp_path: Path) -> None:
    """Only stdout's reader going away is hidden; stdout intact, the error is a real one."""
    script = (
        "import sys; from citygw.commands import cli\n"
        "def boom(args): raise BrokenPipeError(32, 'Broken pipe: a socket of our own')\n"
        "cli.cmd_schema = boom\n"
        "sys.exit(cli.main(['schema']))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO, timeout=60, check=False
    )
    assert done.returncode == 1 and "a socket of our own" in done.stderr


def _ble_config(tmp_path: Path, key: Path) -> Path:
    path = tmp_path / "ble.yaml"
    path.write_text(json.dumps({
        "gateway": {"id": "gw-1", "key_file": str(key)},
        "buses": {"street": {"type": "ble", "scanning": "active"}, "gen": {"type": "synthetic"}},
        "devices": {"thermo": {"bus": "street", "format": "bthome", "address": THERMO}},
    }))  # fmt: skip
    return path


def test_scan_on_a_ble_bus_listens_for_duration(
    tmp_path: Path, key: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    air = Air()  # the radio, faked at bleak's seam: the only part no test can run for real
    air.on_start = [{"address": THERMO, "rssi": -58, "service": {BTHOME_UUID: bytes.fromhex("4002CA09")}}]
    monkeypatch.setattr("bleak.BleakScanner", air.factory())
    config = str(_ble_config(tmp_path, key))
    started = time.monotonic()
    assert main(["scan", "-c", config, "street", "--duration", "0.3"]) == 0
    took = time.monotonic() - started
    out, err = capsys.readouterr()
    assert "for 0.3 s" in err and took < 5
    assert f"{THERMO}   -58 dBm  bthome        thermo" in out

    assert main(["scan", "-c", config, "street", "--duration", "0"]) == 2
    assert "--duration must be more than 0 seconds; got 0" in capsys.readouterr().err
    assert main(["scan", "-c", config, "gen", "--duration", "5"]) == 2
    assert "--duration is how long to listen on a BLE bus; bus gen is of type synthetic" in (
        capsys.readouterr().err
    )
