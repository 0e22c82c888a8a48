"""A port that does not open is named as such in the daemon's log and in ``citygw status``, for a
Modbus RTU line and a serial sensor alike, and an unplugged serial sensor stays failing with that
reason instead of turning ``stale``: the daemon as a real subprocess, its metrics scraped by status."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from citygw.demo.broker import free_port

from .support import REPO, Daemon, write_config


def status(config: Path) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-m", "citygw", "status", "-c", str(config), "--json"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    data: dict[str, Any] = json.loads(done.stdout)
    return data


def test_a_missing_port_is_named_in_the_log_and_in_status(
    tmp_path: Path, key: Path, daemon_factory: Callable[[Path], Daemon]
) -> None:
    rtu_port, uart_port = str(tmp_path / "ttyUSB-rs485"), str(tmp_path / "ttyUSB-pm")
    metrics = free_port()
    config = write_config(
        tmp_path / "c.yaml",
        key=key,
        port=free_port(),  # no broker: the uplink is down, which does not matter here
        devices={
            "meter": {"bus": "rs485", "unit": 1, "profile": "xy-md02", "interval": "200ms"},
            "pm": {"bus": "uart", "protocol": "pms5003", "stale_after": "1s"},
        },
        buses={
            "rs485": {"type": "modbus-rtu", "port": rtu_port},
            "uart": {"type": "serial", "port": uart_port, "reopen_initial": "2s", "reopen_max": "4s"},
        },
        metrics={"listen": f"127.0.0.1:{metrics}"},
    )
    daemon = daemon_factory(config)
    daemon.start()
    pm_states: list[str | None] = []  # the serial sensor's state seen by status over 5 s past stale_after
    try:
        deadline = time.monotonic() + 30
        watched_until = None
        while watched_until is None or time.monotonic() < watched_until:
            assert time.monotonic() < deadline, "the devices were not reported failing"
            try:
                data = status(config)
            except subprocess.CalledProcessError:
                data = {}
            devices = {d["name"]: d for d in data.get("devices", [])}
            if not data.get("daemon", {}).get("running"):
                continue
            if watched_until is not None:
                pm_states.append(devices["pm"]["state"])
            elif devices["pm"]["errors"].get("no-port") and devices["meter"]["errors"].get("no-port", 0) >= 2:
                watched_until = time.monotonic() + 5.0  # reopen attempts 0 to 4 s apart, stale after 1 s
        table = subprocess.run(
            [sys.executable, "-m", "citygw", "status", "-c", str(config)],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout
    finally:
        assert daemon.terminate() == 0
    assert len(pm_states) >= 3 and set(pm_states) == {"failing"}  # never stale: it is unplugged
    assert devices["meter"]["state"] == "failing"
    fix = "no-port: plug the adapter in, or set the bus's port to one of /dev/serial/by-id"
    assert devices["pm"]["port_problem"].startswith(fix)
    assert devices["meter"]["port_problem"].startswith(fix)
    assert "meter: the port does not open (no-port: plug the adapter in" in table
    log = (tmp_path / "daemon.log").read_text()
    meter_lines = [line for line in log.splitlines() if "device meter: no-port:" in line]
    pm_lines = [line for line in log.splitlines() if "device pm: no-port:" in line]
    assert len(meter_lines) == 1 and len(pm_lines) == 1, log  # once per episode
    assert (
        f"cannot open bus rs485 (modbus-rtu {rtu_port} 9600 8N1): no such device: {rtu_port}"
        in meter_lines[0]
    )
    assert f"cannot open {uart_port}: no such device: {uart_port} (/dev/serial/by-id" in pm_lines[0]
    assert "did not answer" not in log
