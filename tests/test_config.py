"""The config loader: each bad config with the exact problems it must produce, then good configs.

Config files are real files in ``tmp_path``. In expected problems, ``FILE`` stands for the config
file's path and ``DIR`` for its directory. Tests run as root, which can read a mode-000 file, so
"unreadable" files here are directories or missing files.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from citygw.config import (
    Config,
    GatewaySettings,
    LogLevel,
    MqttUplink,
    Synchronous,
    SyntheticDevice,
    load_config,
)
from citygw.config.units import parse_duration, parse_size
from citygw.errors import ConfigError
from citygw.vocabulary import QUANTITIES

EXAMPLE = Path(__file__).resolve().parent.parent / "config" / "example.yaml"
KEY_PEM = Ed25519PrivateKey.generate().private_bytes(
    serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
)
KEY_PUB_PEM = (
    serialization.load_pem_private_key(KEY_PEM, None)
    .public_key()
    .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
)
GATEWAY = """\
gateway:
  id: gw-1
  key_file: key.pem
"""
ID_RULE = "use 1 to 64 letters, digits, '.', '_' or '-', starting with a letter or digit"
NOT_MQTT = "the scheme must be mqtt:// or mqtts:// (TLS), e.g. mqtts://broker.example.city:8883"
NAMES = ", ".join(QUANTITIES)
WIRING = (
    "misspelt keys get a did-you-mean",
    "a misspelt value gets a did-you-mean",
    "two devices with one unit id on one RS-485 line",
    "two buses on one serial port",
    "two buses on one serial-to-Ethernet converter",
    "non-standard baud rates",
    "key_file names the public key",
)


@dataclass(frozen=True)
class Bad:
    name: str
    text: str
    problems: tuple[str, ...]
    environ: dict[str, str] = field(default_factory=dict)


BAD = [
    Bad(
        "wrong types",
        GATEWAY
        + """\
buffer:
  commit_rows: 1.5
  batch:
    max_readings: many
uplinks:
  cdp:
    type: mqtt
    url: mqtt://broker
    window: true
    username: 1234
log: {level: 5}
""",
        (
            "FILE:5: buffer.commit_rows: expected a whole number; got the number 1.5",
            "FILE:7: buffer.batch.max_readings: expected a whole number; got the text 'many'",
            "FILE:12: uplinks.cdp.window: expected a number; got the boolean true",
            "FILE:13: uplinks.cdp.username: expected text; got the number 1234",
            "FILE:14: log.level: must be 'debug', 'info', 'warning' or 'error'; got the number 5",
        ),
    ),
    Bad(
        "section not a mapping",
        "gateway: [gw-1, key.pem]\nbuses:\n  gen: synthetic\n",
        (
            "FILE:1: gateway: expected a mapping (indented key: value lines); got a list",
            "FILE:3: buses.gen: expected a mapping (indented key: value lines); got the text 'synthetic'",
        ),
    ),
    Bad(
        "unknown key at top level",
        GATEWAY + "logging:\n  level: debug\n",
        (
            "FILE:4: logging: unknown key 'logging' (did you mean 'log'?); "
            "allowed here: gateway, log, metrics, health, buffer, remote, uplinks, buses, devices",
        ),
    ),
    Bad(
        "unknown keys nested",
        GATEWAY
        + """\
buffer:
  batch:
    max_size: 1MiB
buses:
  gen: {type: synthetic}
devices:
  d1:
    bus: gen
    options:
      ratee: 5
devcies: {}
""",
        (
            "FILE:6: buffer.batch.max_size: unknown key 'max_size'; "
            "allowed here: max_readings, max_bytes, max_age",
            "FILE:12: devices.d1.options: unknown key 'options'; "
            "allowed here: bus, rate, count, quantities, values, report, location",
            "FILE:14: devcies: unknown key 'devcies' (did you mean 'devices'?); "
            "allowed here: gateway, log, metrics, health, buffer, remote, uplinks, buses, devices",
        ),
    ),
    Bad(
        "missing required keys",
        "gateway:\n  id: gw-1\nuplinks:\n  cdp:\n    type: mqtt\n",
        (
            "FILE:1: gateway.key_file: required key 'key_file' is missing; "
            "the path of the Ed25519 private key (PEM) written by `citygw keygen`",
            "FILE:4: uplinks.cdp.url: required key 'url' is missing; the broker: mqtt://host[:port] "
            "or mqtts://host[:port], e.g. mqtts://broker.example.city:8883",
        ),
    ),
    Bad(
        "missing gateway section",
        "log:\n  level: info\n",
        ("FILE: gateway: required key 'gateway' is missing; the gateway's identity: id and key_file",),
    ),
    Bad(
        "device names a missing bus",
        GATEWAY + "buses:\n  gen:\n    type: synthetic\ndevices:\n  d1:\n    bus: modbus0\n",
        ("FILE:9: devices.d1.bus: names bus 'modbus0', which is not defined; defined buses: gen",),
    ),
    Bad(
        "device with no bus defined",
        GATEWAY + "devices:\n  d1: {bus: gen}\n",
        (
            "FILE:5: devices.d1.bus: names bus 'gen', which is not defined; "
            "defined buses: none (define one under buses)",
        ),
    ),
    Bad(
        "duplicate device ids",
        GATEWAY + "buses:\n  gen: {type: synthetic}\ndevices:\n  d1:\n    bus: gen\n  d1:\n    bus: gen\n",
        (
            "FILE:9: devices.d1: duplicate key 'd1'; each id must be unique within devices "
            "(first defined on line 7): rename one of them",
        ),
    ),
    Bad(
        "duplicate uplink ids and a duplicate key",
        GATEWAY
        + """\
uplinks:
  cdp:
    type: mqtt
    url: mqtt://a
    url: mqtt://b
  cdp:
    type: mqtt
    url: mqtt://c
""",
        (
            "FILE:8: uplinks.cdp.url: duplicate key 'url'; it is already set on line 7: keep one",
            "FILE:9: uplinks.cdp: duplicate key 'cdp'; each id must be unique within uplinks "
            "(first defined on line 5): rename one of them",
        ),
    ),
    Bad(
        "bad durations",
        GATEWAY + "buffer:\n  max_age: 10 parsecs\n  commit_interval: 20s\n  batch: {max_age: -1}\n",
        (
            "FILE:5: buffer.max_age: '10 parsecs' is not a duration; write e.g. 500ms, 30s, 5m, 2h or 30d",
            "FILE:6: buffer.commit_interval: must be between 10ms and 10s; got 20s",
            "FILE:7: buffer.batch.max_age: -1 is not a duration; write e.g. 500ms, 30s, 5m, 2h or 30d",
        ),
    ),
    Bad(
        "bad sizes",
        GATEWAY + "buffer:\n  max_disk: 2 gigs\n  batch:\n    max_bytes: 64KB\n    max_readings: 0\n",
        (
            "FILE:5: buffer.max_disk: '2 gigs' is not a size; write e.g. 512, 64KiB, 500MB or 2GiB "
            "(kB, MB, GB = 1000 bytes; KiB, MiB, GiB = 1024)",
            "FILE:7: buffer.batch.max_bytes: '64KB' is not a size; write e.g. 512, 64KiB, 500MB or 2GiB "
            "(kB, MB, GB = 1000 bytes; KiB, MiB, GiB = 1024)",
            "FILE:8: buffer.batch.max_readings: must be between 1 and 100000; got 0",
        ),
    ),
    Bad(
        "size below its minimum",
        GATEWAY + "buffer:\n  max_disk: 100\n",
        ("FILE:5: buffer.max_disk: must be at least 64KiB; got 100 bytes",),
    ),
    Bad(
        "bad url scheme and port",
        GATEWAY
        + """\
uplinks:
  cdp:
    type: mqtt
    url: https://broker.example.city
  local:
    type: mqtt
    url: mqtt://localhost:99999
""",
        (
            f"FILE:7: uplinks.cdp.url: 'https://broker.example.city' is not an MQTT broker url; {NOT_MQTT}",
            "FILE:10: uplinks.local.url: 'mqtt://localhost:99999' has an invalid port; "
            "a port is a number from 1 to 65535",
        ),
    ),
    Bad(
        "bad topics",
        GATEWAY
        + """\
uplinks:
  a:
    type: mqtt
    url: mqtt://broker
    topic: city/+/batches
  b:
    type: mqtt
    url: mqtt://broker
    topic: city/{uplink}/batches
""",
        (
            "FILE:8: uplinks.a.topic: 'city/+/batches' contains an MQTT wildcard (+ or #), "
            "which cannot be published to; write e.g. city/{gateway}/batches",
            "FILE:12: uplinks.b.topic: 'city/{uplink}/batches' has the placeholder {uplink}; "
            "the only placeholder allowed is {gateway}",
        ),
    ),
    Bad(
        "uplink rules across keys",
        GATEWAY
        + """\
uplinks:
  cdp:
    type: mqtt
    url: mqtt://broker
    ca_file: ca.pem
    cert_key_file: ca.pem
    backoff_initial: 10m
""",
        (
            "FILE:5: uplinks.cdp.backoff_max: must be at least backoff_initial (10m); got 5m",
            "FILE:8: uplinks.cdp.ca_file: ca_file is for TLS connections but the url is 'mqtt://broker'; "
            "use mqtts:// or remove ca_file",
            "FILE:9: uplinks.cdp.cert_key_file: cert_key_file is set but cert_file is not; "
            "a client certificate needs both cert_file and cert_key_file, or neither",
        ),
    ),
    Bad(
        "unknown uplink type and bad uplink id",
        GATEWAY + "uplinks:\n  Platform:\n    type: kafka\n    url: https://x\n",
        (
            "FILE:5: uplinks.Platform: 'Platform' is not a valid uplink id; "
            "use 1 to 32 lowercase letters, digits, '_' or '-', starting with a letter or digit",
            "FILE:6: uplinks.Platform.type: unknown uplink type 'kafka'; known types: mqtt, http, ngsi-ld",
        ),
    ),
    Bad(
        "missing environment variable",
        GATEWAY + "uplinks:\n  cdp:\n    type: mqtt\n    url: mqtt://${BROKER}\n    username: ${CDP_USER}\n",
        ("FILE:8: uplinks.cdp.username: environment variable CDP_USER is not set",),
        {"BROKER": "broker.example.city"},
    ),
    Bad(
        "malformed variable reference",
        GATEWAY + "uplinks:\n  cdp:\n    type: mqtt\n    url: mqtt://${BROKER\n",
        (
            "FILE:7: uplinks.cdp.url: '${BROKER' is not a variable reference; write ${NAME} with letters, "
            "digits and _, or $${ for a literal ${",
        ),
    ),
    Bad(
        "unreadable password files",
        GATEWAY
        + """\
uplinks:
  a:
    type: mqtt
    url: mqtt://broker
    password_file: secrets/none
  b:
    type: mqtt
    url: mqtt://broker
    password_file: keys
  c:
    type: mqtt
    url: mqtt://broker
    password: inline
    password_file: cdp-password
""",
        (
            "FILE:8: uplinks.a.password_file: cannot read DIR/secrets/none: No such file or directory",
            "FILE:12: uplinks.b.password_file: cannot read DIR/keys: Is a directory",
            "FILE:17: uplinks.c.password_file: password and password_file are mutually exclusive; keep one",
        ),
    ),
    Bad(
        "missing key file",
        "gateway:\n  id: gw-1\n  key_file: missing.pem\n",
        (
            "FILE:3: gateway.key_file: cannot read DIR/missing.pem: No such file or directory; "
            "create one with `citygw keygen`",
        ),
    ),
    Bad(
        "unreadable key file",
        "gateway:\n  id: gw-1\n  key_file: keys\n",
        ("FILE:3: gateway.key_file: cannot read DIR/keys: Is a directory",),
    ),
    Bad(
        "key file readable by others",
        "gateway:\n  id: gw-1\n  key_file: open.pem\n",
        (
            "FILE:3: gateway.key_file: DIR/open.pem is open to users other than its owner (mode 0644); "
            "a signing key must be private: run chmod 600 DIR/open.pem",
        ),
    ),
    Bad(
        "unknown quantity name",
        GATEWAY
        + "buses:\n  gen: {type: synthetic}\ndevices:\n  d1:\n    bus: gen\n"
        + "    quantities: [temperature, temprature]\n",
        (
            "FILE:9: devices.d1.quantities[1]: unknown quantity 'temprature' (did you mean 'temperature'?); "
            f"the quantity names are: {NAMES}",
        ),
    ),
    Bad(
        "bad device values",
        GATEWAY
        + """\
buses:
  gen: {type: synthetic}
devices:
  d1:
    bus: gen
    rate: 0
    count: 0
    quantities: temperature
""",
        (
            "FILE:9: devices.d1.rate: must be more than 0 and at most 1000000; got 0",
            "FILE:10: devices.d1.count: must be at least 1; got 0",
            "FILE:11: devices.d1.quantities: expected a list, e.g. [a, b]; got the text 'temperature'",
        ),
    ),
    Bad(
        "bad gateway and device ids",
        "gateway:\n  id: bkk pathumwan/42\n  key_file: key.pem\nbuses:\n  gen: {type: synthetic}\n"
        "devices:\n  'sensor #1': {bus: gen}\n  0042: {bus: gen}\n",
        (
            f"FILE:2: gateway.id: 'bkk pathumwan/42' is not a valid gateway id; {ID_RULE}",
            f"FILE:7: devices.sensor #1: 'sensor #1' is not a valid device id; {ID_RULE}",
            "FILE:8: devices.42: a device id must be text; got the number 42; "
            "put it in quotes so it stays text",
        ),
    ),
    Bad(
        "yaml syntax error",
        "gateway:\n  id: gw-1\n key_file: key.pem\n",
        (
            "FILE:3: (top level): not valid YAML: expected <block end>, but found '<block mapping start>' "
            "(while parsing a block mapping started on line 1); check the indentation, colons and quotes",
        ),
    ),
    Bad(
        "empty file",
        "# nothing yet\n",
        ("FILE: (top level): the file is empty; it needs at least a gateway section with id and key_file",),
    ),
    Bad(
        "top level not a mapping",
        "- gateway\n",
        (
            "FILE:1: (top level): the top level must be a mapping of sections "
            "(gateway, log, metrics, health, buffer, remote, uplinks, buses, devices); got a list",
        ),
    ),
    Bad(
        "several problems in one file, all reported",
        """\
gateway:
  id: gw 1
  key_file: missing.pem
log:
  level: loud
buffer:
  max_age: forever
uplinks:
  cdp:
    type: mqtt
    url: mqtts://broker.example.city
    username: ${CDP_USER}
    keeplive: 30s
buses:
  gen: {type: synthetic}
devices:
  d1:
    bus: gen
    rate: fast
  d2:
    bus: modbus0
  d1:
    bus: gen
""",
        (
            f"FILE:2: gateway.id: 'gw 1' is not a valid gateway id; {ID_RULE}",
            "FILE:3: gateway.key_file: cannot read DIR/missing.pem: No such file or directory; "
            "create one with `citygw keygen`",
            "FILE:5: log.level: must be 'debug', 'info', 'warning' or 'error'; got the text 'loud'",
            "FILE:7: buffer.max_age: 'forever' is not a duration; write e.g. 500ms, 30s, 5m, 2h or 30d",
            "FILE:12: uplinks.cdp.username: environment variable CDP_USER is not set",
            "FILE:13: uplinks.cdp.keeplive: unknown key 'keeplive' (did you mean 'keepalive'?); "
            "allowed here: type, url, topic, status_topic, format, ca_file, "
            "cert_file, cert_key_file, username, password, password_file, client_id, keepalive, window, "
            "connect_timeout, backoff_initial, backoff_max",
            "FILE:19: devices.d1.rate: expected a number; got the text 'fast'",
            "FILE:21: devices.d2.bus: names bus 'modbus0', which is not defined; defined buses: gen",
            "FILE:22: devices.d1: duplicate key 'd1'; each id must be unique within devices "
            "(first defined on line 17): rename one of them",
        ),
    ),
    Bad(
        "a key that is a mapping",
        GATEWAY + "? uplinks: {}\n",
        (
            "FILE: (top level): not valid for a config: a key that is a mapping or a list ('? ...'); "
            "write plain keys",
        ),
    ),
    Bad(
        "misspelt keys get a did-you-mean",
        GATEWAY
        + """\
buses:
  rs485:
    type: modbus_rtu
    port: /dev/ttyUSB0
  line:
    type: modbus-rtu
    port: /dev/ttyUSB1
devices:
  meter:
    bus: line
    unit: 1
    intervall: 10s
    registers: [{name: voltage, address: 0}]
""",
        (
            "FILE:6: buses.rs485.type: unknown bus type 'modbus_rtu' (did you mean 'modbus-rtu'?); "
            "known types: synthetic, modbus-rtu, modbus-tcp, modbus-rtu-over-tcp, ble, serial",
            "FILE:15: devices.meter.intervall: unknown key 'intervall' (did you mean 'interval'?); "
            "allowed here: bus, unit, interval, profile, registers, skip, max_gap, profiles_dir, "
            "backoff_max, report, location",
        ),
    ),
    Bad(
        "a misspelt value gets a did-you-mean",
        GATEWAY + "log: {level: warn}\nbuses:\n  uart: {type: serial, port: /dev/ttyS0, parity: evn}\n",
        (
            "FILE:4: log.level: must be 'debug', 'info', 'warning' or 'error'; got the text 'warn' "
            "(did you mean 'warning'?)",
            "FILE:6: buses.uart.parity: must be 'none', 'even' or 'odd'; got the text 'evn' "
            "(did you mean 'even'?)",
        ),
    ),
    Bad(
        "two devices with one unit id on one RS-485 line",
        GATEWAY
        + """\
buses:
  rs485:
    type: modbus-rtu
    port: /dev/ttyUSB0
devices:
  meter-a:
    bus: rs485
    unit: 1
    registers: [{name: voltage, address: 0}]
  meter-b:
    bus: rs485
    unit: 1
    registers: [{name: current, address: 6}]
""",
        (
            "FILE:15: devices.meter-b.unit: device 'meter-a' on bus 'rs485' already has unit 1; two "
            "devices with one unit id on a line both answer and garble each other: set this device's "
            "unit id (on its display or with its tool) to a free one and write it here",
        ),
    ),
    Bad(
        "two buses on one serial port",
        GATEWAY
        + """\
buses:
  meters:
    type: modbus-rtu
    port: /dev/ttyUSB0
  dust:
    type: serial
    port: /dev/ttyUSB0/
""",
        (
            "FILE:10: buses.dust.port: port /dev/ttyUSB0/ is already the port of bus 'meters' "
            "(/dev/ttyUSB0 is the same device); one port is one bus: put every device on that line "
            "under bus 'meters', or give this bus its own port",
        ),
    ),
    Bad(
        "two buses on one serial-to-Ethernet converter",
        GATEWAY
        + """\
buses:
  north: {type: modbus-rtu-over-tcp, host: 10.0.0.7, port: 4196}
  south: {type: modbus-rtu-over-tcp, host: 10.0.0.7, port: 4196}
  east: {type: modbus-rtu-over-tcp, host: 10.0.0.7, port: 4197}
""",
        (
            "FILE:6: buses.south.port: port 10.0.0.7:4196 is already the port of bus 'north'; one port "
            "is one bus: put every device on that line under bus 'north', or give this bus its own port",
        ),
    ),
    Bad(
        "non-standard baud rates",
        GATEWAY
        + """\
buses:
  meters:
    type: modbus-rtu
    port: /dev/ttyUSB0
    baudrate: 9601
  gps:
    type: serial
    port: /dev/ttyAMA0
    baudrate: 115000
""",
        (
            "FILE:8: buses.meters.baudrate: 9601 is not a standard baud rate (did you mean 9600?); use "
            "the rate on the device's label or datasheet, e.g. 2400, 4800, 9600, 19200, 38400 or 115200",
            "FILE:12: buses.gps.baudrate: 115000 is not a standard baud rate (did you mean 115200?); use "
            "the rate on the device's label or datasheet, e.g. 2400, 4800, 9600, 19200, 38400 or 115200",
        ),
    ),
    Bad(
        "key_file names the public key",
        "gateway:\n  id: gw-1\n  key_file: key.pem.pub\n",
        (
            "FILE:3: gateway.key_file: DIR/key.pem.pub is the public key, which the platform verifies "
            "with; key_file names the private key that signs: DIR/key.pem",
        ),
    ),
]


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """A directory holding the files configs name: a private key, an open one, a CA, a password."""
    (tmp_path / "key.pem").write_bytes(KEY_PEM)
    (tmp_path / "key.pem").chmod(0o600)
    (tmp_path / "key.pem.pub").write_bytes(KEY_PUB_PEM)  # as `citygw keygen` writes it: 0644
    (tmp_path / "open.pem").write_bytes(KEY_PEM)
    (tmp_path / "open.pem").chmod(0o644)
    (tmp_path / "ca.pem").write_text("-----BEGIN CERTIFICATE-----\n")
    (tmp_path / "cdp-password").write_text("s3cret pass\n")
    (tmp_path / "keys").mkdir()
    return tmp_path


def write(directory: Path, text: str, name: str = "citygw.yaml") -> Path:
    path = directory / name
    path.write_text(text)
    return path


@pytest.mark.parametrize("case", BAD, ids=[case.name for case in BAD])
def test_bad_config_reports_every_problem_exactly(workdir: Path, case: Bad) -> None:
    path = write(workdir, case.text)
    with pytest.raises(ConfigError) as raised:
        load_config(path, environ=case.environ)
    expected = [p.replace("FILE", str(path)).replace("DIR", str(workdir)) for p in case.problems]
    assert [str(problem) for problem in raised.value.problems] == expected
    assert str(raised.value) == "\n".join(expected)
    assert all(problem.file == str(path) for problem in raised.value.problems)


def test_problem_fields_are_structured(workdir: Path) -> None:
    path = write(workdir, GATEWAY + "uplinks:\n  cdp:\n    type: mqtt\n    url: ftp://x\n")
    with pytest.raises(ConfigError) as raised:
        load_config(str(path), environ={})
    [problem] = raised.value.problems
    assert (problem.file, problem.line, problem.key) == (str(path), 7, "uplinks.cdp.url")
    assert problem.message.startswith("'ftp://x' is not an MQTT broker url")


def test_unreadable_config_file(tmp_path: Path) -> None:
    path = tmp_path / "absent.yaml"
    with pytest.raises(ConfigError) as raised:
        load_config(path, environ={})
    assert [str(p) for p in raised.value.problems] == [
        f"{path}: (top level): cannot read the config file: No such file or directory"
    ]


# --- good configs ------------------------------------------------------------------------------


def example(workdir: Path) -> Path:
    """The shipped example, with its /etc paths pointed at files in ``workdir``."""
    text = EXAMPLE.read_text()
    text = text.replace("/etc/citygw/signing.key", "key.pem").replace("/etc/citygw/ca.pem", "ca.pem")
    return write(workdir, text, "example.yaml")


def test_full_example_config(workdir: Path) -> None:
    creds = workdir / "creds"
    creds.mkdir()
    shutil.copy(workdir / "cdp-password", creds / "cdp-password")
    path = example(workdir)
    environ = {"CDP_USER": "pathumwan-0042", "CREDENTIALS_DIRECTORY": str(creds)}

    config = load_config(path, environ=environ)

    assert isinstance(config, Config)
    assert config.source == path
    assert config.gateway.id == "bkk-pathumwan-0042"
    assert config.gateway.key_file == workdir / "key.pem"
    assert config.log.level is LogLevel.INFO
    buffer = config.buffer
    assert buffer.path == Path("/var/lib/citygw/buffer.db") == config.buffer_path()
    assert (buffer.max_disk, buffer.max_age, buffer.synchronous) == (
        2 * 1024**3,
        30 * 86400,
        Synchronous.NORMAL,
    )
    assert (buffer.commit_interval, buffer.commit_rows) == (1.0, 5000)
    assert (buffer.batch.max_readings, buffer.batch.max_bytes, buffer.batch.max_age) == (
        1000,
        256 * 1024,
        10.0,
    )
    cdp = config.uplinks["cdp"]
    assert isinstance(cdp, MqttUplink)
    assert (cdp.host, cdp.port, cdp.tls) == ("cdp.example.city", 8883, True)
    assert cdp.topic_for(config.gateway.id) == "city/bkk-pathumwan-0042/batches"
    assert cdp.ca_file == workdir / "ca.pem"
    assert (cdp.cert_file, cdp.cert_key_file, cdp.client_id) == (None, None, None)
    assert cdp.username == "pathumwan-0042"
    assert cdp.password is not None and cdp.password.get_secret_value() == "s3cret pass"
    assert cdp.password_file == creds / "cdp-password"
    assert (cdp.keepalive, cdp.window, cdp.connect_timeout) == (30.0, 20, 10.0)
    assert (cdp.backoff_initial, cdp.backoff_max) == (1.0, 300.0)
    assert config.buses["gen"].type == "synthetic"
    device = config.devices["load-1"]
    assert isinstance(device, SyntheticDevice)
    assert (device.bus, device.rate, device.count) == ("gen", 1000.0, 100000)
    assert device.quantities == ("temperature", "relativeHumidity")


def test_minimal_config_takes_defaults_and_empty_devices_is_valid(workdir: Path) -> None:
    path = write(workdir, GATEWAY + "devices: {}\nuplinks:\n")

    config = load_config(path, environ={})

    assert (config.devices, config.uplinks, config.buses) == ({}, {}, {})
    assert config.log.level is LogLevel.INFO
    assert config.buffer.max_disk == 2 * 1024**3
    assert config.buffer_path() == Path("/var/lib/citygw/buffer.db")


def test_buffer_path_defaults_to_state_directory(workdir: Path) -> None:
    path = write(workdir, GATEWAY)
    config = load_config(path, environ={"STATE_DIRECTORY": "/var/lib/citygw-test"})
    assert config.buffer.path == config.buffer_path() == Path("/var/lib/citygw-test/buffer.db")


def test_environment_substitution(workdir: Path) -> None:
    text = GATEWAY.replace("gw-1", "gw-${SITE}") + (
        "uplinks:\n  cdp:\n    type: mqtt\n    url: mqtt://${HOST}:${PORT}\n"
        "    username: $${NOT_A_VARIABLE}\n    window: ${WINDOW}\n    keepalive: ${KEEPALIVE}\n"
    )
    environ = {"SITE": "0042", "HOST": "broker.local", "PORT": "1884", "WINDOW": "50", "KEEPALIVE": "1m"}

    config = load_config(write(workdir, text), environ=environ)

    cdp = config.uplinks["cdp"]
    assert config.gateway.id == "gw-0042"
    assert (cdp.host, cdp.port, cdp.tls) == ("broker.local", 1884, False)
    assert cdp.username == "${NOT_A_VARIABLE}"
    assert (cdp.window, cdp.keepalive) == (50, 60.0)


def test_password_file_is_read_without_its_trailing_newline(workdir: Path) -> None:
    text = (
        GATEWAY
        + "uplinks:\n  cdp:\n    type: mqtt\n    url: mqtt://broker\n    password_file: cdp-password\n"
    )

    cdp = load_config(write(workdir, text), environ={}).uplinks["cdp"]

    assert cdp.password is not None and cdp.password.get_secret_value() == "s3cret pass"
    assert cdp.password_file == workdir / "cdp-password"
    assert "s3cret" not in repr(cdp)
    assert (cdp.port, cdp.tls) == (1883, False)


def test_relative_paths_resolve_against_the_config_directory(
    workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    conf = workdir / "conf"
    (conf / "tls").mkdir(parents=True)
    (conf / "tls" / "ca.pem").write_text("x")
    (conf / "signing.key").write_bytes(KEY_PEM)
    (conf / "signing.key").chmod(0o400)
    text = (
        "gateway:\n  id: gw-1\n  key_file: signing.key\nbuffer:\n  path: state/buffer.db\n"
        "uplinks:\n  cdp:\n    type: mqtt\n    url: mqtts://broker\n    ca_file: tls/ca.pem\n"
        "    cert_file: tls/ca.pem\n    cert_key_file: ./tls/ca.pem\n    password_file: ../cdp-password\n"
    )
    path = write(conf, text)
    monkeypatch.chdir(workdir / "keys")  # the process's directory must not matter

    config = load_config(path, environ={})

    cdp = config.uplinks["cdp"]
    assert config.gateway.key_file == conf / "signing.key"
    assert config.buffer_path() == conf / "state" / "buffer.db"
    assert cdp.ca_file == cdp.cert_file == conf / "tls" / "ca.pem"
    assert cdp.cert_key_file == conf / "tls" / "ca.pem"
    assert cdp.password is not None and cdp.password.get_secret_value() == "s3cret pass"


def test_relative_config_path_is_reported_as_given(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write(workdir, "gateway:\n  id: gw-1\n  key_file: missing.pem\n")
    monkeypatch.chdir(workdir)
    with pytest.raises(ConfigError) as raised:
        load_config("citygw.yaml", environ={})
    assert [str(p) for p in raised.value.problems] == [
        f"citygw.yaml:3: gateway.key_file: cannot read {workdir}/missing.pem: No such file or directory; "
        "create one with `citygw keygen`"
    ]


def test_config_is_frozen(workdir: Path) -> None:
    config = load_config(example(workdir), environ={"CDP_USER": "u", "CREDENTIALS_DIRECTORY": str(workdir)})
    with pytest.raises(ValueError, match="frozen"):
        config.gateway.id = "other"


def test_models_built_in_code_do_no_io_and_publish_a_schema() -> None:
    gateway = GatewaySettings(id="gw-1", key_file=Path("relative/absent.key"))
    config = Config(gateway=gateway, source=Path("<code>"))

    assert config.gateway.key_file == Path("relative/absent.key")
    assert config.buffer_path({"STATE_DIRECTORY": "/run/s:/run/t"}) == Path("/run/s/buffer.db")
    schema = Config.model_json_schema()
    assert set(schema["properties"]) == {
        "gateway",
        "log",
        "metrics",
        "health",
        "buffer",
        "remote",
        "uplinks",
        "buses",
        "devices",
    }


# --- units -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("250ms", 0.25),
        ("30s", 30),
        ("5m", 300),
        ("2h", 7200),
        ("30d", 2592000),
        ("1h30m", 5400),
        ("1m30s", 90),
        ("1.5s", 1.5),
        ("45", 45),
        (10, 10),
        (0.5, 0.5),
        (" 2 h ", 7200),
        ("0s", 0),
    ],
)
def test_parse_duration(text: str | int | float, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["10 parsecs", "", "5 minutes", "30m1h", "-5s", "1e3s", "ms"])
def test_parse_duration_refuses(text: str) -> None:
    with pytest.raises(ValueError, match=r"is not a duration; write e\.g\. 500ms, 30s, 5m, 2h or 30d"):
        parse_duration(text)


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("512", 512),
        (512, 512),
        ("64KiB", 65536),
        ("2GiB", 2 * 1024**3),
        ("500MB", 500_000_000),
        ("10kB", 10_000),
        ("1.5KiB", 1536),
        ("16 MiB", 16 * 1024**2),
        ("100B", 100),
    ],
)
def test_parse_size(text: str | int, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["2 gigs", "64KB", "10kb", "1.5B", "-1", "GiB"])
def test_parse_size_refuses(text: str) -> None:
    with pytest.raises(ValueError, match="is not a"):
        parse_size(text)


def test_http_and_ngsi_ld_uplinks_validate_with_their_own_messages(tmp_path: Path) -> None:
    key = tmp_path / "k.key"
    key.write_text("x")
    key.chmod(0o600)
    token = tmp_path / "token"
    token.write_text("s3cret\n")
    path = tmp_path / "c.yaml"
    path.write_text(
        f"gateway:\n  id: gw-1\n  key_file: {key}\n  location: {{latitude: 13.7465, longitude: 100.5348}}\n"
        "uplinks:\n"
        "  web:\n    type: http\n    url: https://platform.example.city/ingest\n"
        f"    bearer_token_file: {token}\n    gzip: true\n"
        "  cb:\n    type: ngsi-ld\n    url: http://orion:1026\n    tenant: bangkok\n"
        "    entities:\n      meter-1:\n        type: ACMeasurement\n"
        "        id: urn:ngsi-ld:ACMeasurement:m1\n"
    )
    config = load_config(path)
    web = config.uplinks["web"]
    assert web.type == "http" and web.gzip and web.bearer_token is not None
    assert web.bearer_token.get_secret_value() == "s3cret"
    cb = config.uplinks["cb"]
    assert cb.type == "ngsi-ld" and cb.tenant == "bangkok"
    assert cb.entities["meter-1"].id == "urn:ngsi-ld:ACMeasurement:m1"
    path.write_text(
        f"gateway:\n  id: gw-1\n  key_file: {key}\n"
        "uplinks:\n  web:\n    type: http\n    url: ftp://x\n    ca_file: /nonexistent\n"
        "  cb:\n    type: ngsi-ld\n    url: http://orion:1026\n"
        "    entities:\n      m1:\n        id: meter 1\n"
    )
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    text = str(caught.value)
    assert f"{path}:7: uplinks.web.url: 'ftp://x' is not an http:// or https:// url" in text
    assert f"{path}:14: uplinks.cb.entities.m1.id: 'meter 1' is not a URN" in text


def test_two_devices_on_one_serial_bus_are_refused(tmp_path: Path) -> None:
    key = tmp_path / "k.key"
    key.write_text("x")
    key.chmod(0o600)
    path = tmp_path / "c.yaml"
    path.write_text(
        f"gateway:\n  id: gw-1\n  key_file: {key}\n"
        "buses:\n  uart2:\n    type: serial\n    port: /dev/ttyS1\n"
        "devices:\n  radar:\n    bus: uart2\n    protocol: pms5003\n"
        "  gps:\n    bus: uart2\n    protocol: nmea\n"
    )
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    expected = f"{path}:13: devices.gps.bus: serial bus 'uart2' already carries device 'radar'"
    assert expected in str(caught.value)


def test_two_buses_on_one_port_through_a_by_id_link_are_refused(workdir: Path) -> None:
    """/dev/serial/by-id/... is a symlink to /dev/ttyUSBn: the two names are one port."""
    port = workdir / "ttyUSB0"
    port.touch()
    link = workdir / "usb-FTDI_FT232R-if00-port0"
    link.symlink_to(port)
    path = write(
        workdir,
        GATEWAY + f"buses:\n  a:\n    type: modbus-rtu\n    port: {port}\n"
        f"  b:\n    type: modbus-rtu\n    port: {link}\n",
    )
    with pytest.raises(ConfigError) as raised:
        load_config(path, environ={})
    [problem] = raised.value.problems
    assert (problem.line, problem.key) == (10, "buses.b.port")
    assert problem.message.startswith(
        f"port {link} is already the port of bus 'a' ({port} is the same device)"
    )


def test_same_unit_on_different_lines_and_on_modbus_tcp_is_accepted(workdir: Path) -> None:
    """Unit ids are per RS-485 line; a Modbus TCP server may present several devices at one unit."""
    register = "    registers: [{name: voltage, address: 0}]\n"
    path = write(
        workdir,
        GATEWAY + "buses:\n  a: {type: modbus-rtu, port: /dev/ttyUSB0, baudrate: 19200}\n"
        "  b: {type: modbus-rtu, port: /dev/ttyUSB1}\n  plc: {type: modbus-tcp, host: 10.0.0.5}\n"
        "devices:\n"
        + "".join(
            f"  {name}:\n    bus: {bus}\n    unit: 1\n" + register
            for name, bus in (("m1", "a"), ("m2", "b"), ("p1", "plc"), ("p2", "plc"))
        ),
    )
    config = load_config(path, environ={})
    assert sorted(config.devices) == ["m1", "m2", "p1", "p2"]


@pytest.mark.parametrize("case", [c for c in BAD if c.name in WIRING], ids=lambda c: c.name)
def test_check_exits_78_on_wiring_mistakes(workdir: Path, case: Bad) -> None:
    """`citygw check` (what a technician runs, and Ansible's validate:) refuses them with exit 78."""
    path = write(workdir, case.text)
    done = subprocess.run(
        [sys.executable, "-m", "citygw", "check", "-c", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 78, done.stderr
    for expected in case.problems:
        assert expected.replace("FILE", str(path)).replace("DIR", str(workdir)) in done.stderr
