"""The ``report:`` block in config files: nonsense refused at its key with the fix, sense accepted."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from citygw.config import load_config
from citygw.config.report import report_policies
from citygw.errors import ConfigError
from citygw.pipeline.edge import Aggregate, DevicePolicy, OnChange, Statistic

HEAD = """\
gateway: {id: gw-1, key_file: key.pem}
buses:
  meters: {type: modbus-tcp, host: 127.0.0.1}
  gen: {type: synthetic}
  port: {type: serial, port: /dev/ttyUSB0}
  street: {type: ble}
devices:
"""


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    key = tmp_path / "key.pem"
    key.write_bytes(
        Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    key.chmod(0o600)
    return tmp_path


def problems(workdir: Path, devices: str) -> list[str]:
    path = workdir / "citygw.yaml"
    path.write_text(HEAD + devices)
    with pytest.raises(ConfigError) as raised:
        load_config(path, environ={})
    return [str(problem).replace(str(path), "FILE") for problem in raised.value.problems]


def test_malformed_rules_are_refused_at_their_key(workdir: Path) -> None:
    assert problems(
        workdir,
        """\
  g1:
    bus: gen
    report: sometimes
  g2:
    bus: gen
    report: {aggregate: {window: 7m, statistics: [mean, mean]}}
  g3:
    bus: gen
    report: {aggregate: {statistics: [median]}, on_change: {deadband: -1, heartbeat: 0s}}
  g4:
    bus: gen
    report:
      on_change: {deadband: 1}
      aggregate: {window: 1m}
  g5:
    bus: gen
    report:
      readings:
        pm2_5: raw
        temperature: {sometimes: {}}
""",
    ) == [
        "FILE:10: devices.g1.report: unknown report 'sometimes'; write raw, or a mapping with on_change or "
        "aggregate",
        "FILE:13: devices.g2.report.aggregate.statistics: 'mean' is listed more than once",
        "FILE:13: devices.g2.report.aggregate.window: windows start on the clock, so a window must divide a "
        "day into whole windows, e.g. 10s, 1m, 5m, 15m or 1h; got 7m",
        "FILE:16: devices.g3.report.aggregate.statistics[0]: must be 'mean', 'min', 'max', 'last', 'count' "
        "or 'sum'; got the text 'median' (did you mean 'mean'?)",
        "FILE:16: devices.g3.report.aggregate.window: required key 'window' is missing; the window, 1s to "
        "1d, dividing a day (e.g. 1m, 15m, 1h); records carry its start",
        "FILE:16: devices.g3.report.on_change.deadband: must be at least 0; got -1",
        "FILE:16: devices.g3.report.on_change.heartbeat: must be between 1s and 1d; got 0s",
        "FILE:21: devices.g4.report.aggregate: choose on_change or aggregate, not both: a reading is sent on "
        "change or aggregated (give readings their own rule under readings:)",
        "FILE:26: devices.g5.report.readings.pm2_5: 'pm2_5' is not a reading name (did you mean 'pm25'?); a "
        "reading is a quantity of the vocabulary, with :channel where the device has several (voltage:l1)",
        "FILE:27: devices.g5.report.readings.temperature.sometimes: unknown key 'sometimes'; allowed here: "
        "on_change, aggregate",
    ]


def test_rules_that_do_not_fit_the_device_are_refused_with_the_fix(workdir: Path) -> None:
    assert problems(
        workdir,
        """\
  m1:
    bus: meters
    unit: 1
    interval: 10s
    registers:
      - {name: voltage, address: 0}
      - {name: activeEnergyImport, address: 2, type: u32, counter: true}
      - {name: text, address: 10, type: string, length: 4}
    report:
      aggregate: {window: 5s, statistics: [mean, max]}
      readings:
        frequency: raw
        voltage: {on_change: {deadband: 1, heartbeat: 2s}}
  m2:
    bus: meters
    unit: 2
    registers:
      - {name: text, address: 10, type: string, length: 4}
      - {name: running, address: 11, function: 1}
    report:
      on_change: {deadband_percent: 5}
      readings:
        text: {aggregate: {window: 1m, statistics: [last, sum]}}
  g1:
    bus: gen
    rate: 0.1
    quantities: [temperature]
    report: {aggregate: {window: 1s}}
""",
    ) == [
        "FILE:17: devices.m1.report.aggregate.statistics: text is text: mean, max need numbers; text has "
        "only last and count (give text its own rule under readings:, e.g. text: raw)",
        "FILE:17: devices.m1.report.aggregate.window: the window (5s) is shorter than the device's interval "
        "(10s): most windows would be empty; use a window of at least 10s, or read the device more often",
        "FILE:19: devices.m1.report.readings.frequency: 'frequency' is not a reading of this device; its "
        "readings: voltage, activeEnergyImport, text",
        "FILE:20: devices.m1.report.readings.voltage.on_change.heartbeat: the heartbeat (2s) is shorter than "
        "the device's interval (10s): every sample would be sent; use a heartbeat of at least 10s, or "
        "report raw",
        "FILE:28: devices.m2.report.on_change.deadband_percent: running is a true/false value: a dead-band "
        "needs numbers; remove it to send every change (give running its own rule under readings:, e.g. "
        "running: raw)",
        "FILE:30: devices.m2.report.readings.text.aggregate.statistics: text is text: sum needs numbers; "
        "text has only last and count",
        "FILE:35: devices.g1.report.aggregate.window: the window (1s) is shorter than the device's interval "
        "(10s): most windows would be empty; use a window of at least 10s, or read the device more often",
    ]


def test_every_driver_takes_a_report_and_the_policies_know_the_counters(workdir: Path) -> None:
    path = workdir / "citygw.yaml"
    path.write_text(
        HEAD
        + """\
  meter:
    bus: meters
    unit: 1
    registers:
      - {name: voltage, address: 0}
      - {name: activeEnergyImport, address: 2, type: u32, counter: true}
      - {name: text, address: 10, type: string, length: 4}
    report:
      aggregate: {window: 15m, statistics: [mean, max, sum]}
      readings:
        text: {on_change: {heartbeat: 1d}}
  dust:
    bus: port
    protocol: pms5003
    report: {on_change: {deadband: 2, deadband_percent: 10, heartbeat: 5m}}
  tag:
    bus: street
    format: ruuvi
    address: "C8:25:2D:8E:2F:11"
    report:
      readings:
        rssi: {aggregate: {window: 1m, statistics: [mean, min, max, count]}}
  footfall:
    bus: street
    type: presence
    report: {aggregate: {window: 1h, statistics: [sum]}}
  raw:
    bus: gen
    report: raw
""",
    )
    config = load_config(path, environ={})
    assert report_policies(config.devices) == {
        "meter": DevicePolicy(
            Aggregate(900.0, (Statistic.MEAN, Statistic.MAX, Statistic.SUM)),
            {"text": OnChange(86400.0)},
            frozenset({"activeEnergyImport"}),
        ),
        "dust": DevicePolicy(OnChange(300.0, 2.0, 0.1)),
        "tag": DevicePolicy(
            None, {"rssi": Aggregate(60.0, (Statistic.MEAN, Statistic.MIN, Statistic.MAX, Statistic.COUNT))}
        ),
        "footfall": DevicePolicy(Aggregate(3600.0, (Statistic.SUM,))),
    }
    done = subprocess.run(
        [sys.executable, "-m", "citygw", "check", "-c", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr


def test_check_exits_78_on_a_report_that_makes_no_sense(workdir: Path) -> None:
    path = workdir / "citygw.yaml"
    path.write_text(HEAD + "  g:\n    bus: gen\n    rate: 0.5\n    report: {on_change: {heartbeat: 1s}}\n")
    done = subprocess.run(
        [sys.executable, "-m", "citygw", "check", "-c", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 78
    assert (
        "devices.g.report.on_change.heartbeat: the heartbeat (1s) is shorter than the device's interval (4s)"
        in (done.stderr + done.stdout)
    )


def test_the_modbus_example_reports_as_its_comments_say(workdir: Path) -> None:
    repo = Path(__file__).resolve().parent.parent
    text = (repo / "config" / "examples" / "modbus.yaml").read_text()
    path = workdir / "modbus.yaml"
    path.write_text(text.replace("/etc/citygw/signing.key", str(workdir / "key.pem")))
    policies = report_policies(load_config(path, environ={}).devices)
    assert policies == {
        "meter-1": DevicePolicy(
            Aggregate(900.0, (Statistic.MEAN, Statistic.MIN, Statistic.MAX)),
            {"frequency": OnChange(900.0, 0.05)},
            frozenset({"activeEnergyImport", "activeEnergyExport"}),
        ),
        "climate-1": DevicePolicy(OnChange(600.0, 0.2)),
    }
