"""BLE buses and devices in the config: the shipped example, defaults, and every problem exactly."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from citygw.config import load_config
from citygw.config.ble import BleBus, BleFormat, BleSensor, PresenceCounter, Scanning
from citygw.errors import ConfigError

REPO = Path(__file__).resolve().parent.parent
KINDS = (
    "a device on a ble bus is a sensor (format: bthome, ruuvi or xiaomi-pvvx, with its address) "
    "or a presence counter (type: presence)"
)
HEAD = """\
gateway:
  id: gw-1
  key_file: key.pem
buses:
  street:
    type: ble
devices:
"""


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    pem = Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    (tmp_path / "key.pem").write_bytes(pem)
    (tmp_path / "key.pem").chmod(0o600)
    return tmp_path


def load(workdir: Path, text: str, environ: dict[str, str] | None = None) -> object:
    path = workdir / "citygw.yaml"
    path.write_text(text)
    return load_config(path, environ=environ or {})


def problems(workdir: Path, text: str) -> list[str]:
    with pytest.raises(ConfigError) as raised:
        load(workdir, text)
    return [str(p).replace(str(workdir / "citygw.yaml"), "FILE") for p in raised.value.problems]


def test_the_shipped_example(workdir: Path) -> None:
    text = (
        (REPO / "config" / "examples" / "ble.yaml").read_text().replace("/etc/citygw/signing.key", "key.pem")
    )
    config = load(workdir, text, {"SHELTER_AIR_BINDKEY": "231D39C1D7CC1AB1AEE224CD096DB932"})
    bus = config.buses["street"]  # type: ignore[attr-defined]
    assert bus == BleBus(
        type="ble",
        adapter="hci0",
        scanning=Scanning.AUTO,
        restart_when_silent=300,
        backoff_initial=2,
        backoff_max=120,
    )
    air = config.devices["shelter-air"]  # type: ignore[attr-defined]
    assert isinstance(air, BleSensor) and air.format is BleFormat.BTHOME and air.stale_after == 600
    assert air.bindkey is not None and air.bindkey.get_secret_value() == "231D39C1D7CC1AB1AEE224CD096DB932"
    assert "231D" not in repr(air)  # a secret is not printed
    footfall = config.devices["footfall"]  # type: ignore[attr-defined]
    assert isinstance(footfall, PresenceCounter)
    assert (footfall.window, footfall.rssi_threshold) == (60, -80)


def test_defaults_and_address_spellings(workdir: Path) -> None:
    config = load(
        workdir,
        HEAD
        + """\
  t1: {bus: street, format: ruuvi, address: "cb-b8-33-4c-88-4f"}
  count: {bus: street, type: presence}
""",
    )
    sensor = config.devices["t1"]  # type: ignore[attr-defined]
    assert isinstance(sensor, BleSensor) and sensor.address == "CB:B8:33:4C:88:4F" and sensor.bindkey is None
    assert config.buses["street"].scanning is Scanning.AUTO  # type: ignore[attr-defined]


def test_a_bindkey_read_from_its_file(workdir: Path) -> None:
    """The bindkey is a secret: ``bindkey_file`` keeps it out of the config (and out of git)."""
    (workdir / "air.bindkey").write_text("231d39c1d7cc1ab1aee224cd096db932\n")
    body = (
        HEAD + "  air: {bus: street, format: bthome, address: A4:C1:38:0B:5E:ED, bindkey_file: air.bindkey}\n"
    )
    air = load(workdir, body).devices["air"]  # type: ignore[attr-defined]
    assert isinstance(air, BleSensor) and air.bindkey is not None
    assert air.bindkey.get_secret_value() == "231d39c1d7cc1ab1aee224cd096db932"
    both = body.replace("bindkey_file: air.bindkey", "bindkey_file: air.bindkey, bindkey: 00")
    assert any(
        "bindkey and bindkey_file are mutually exclusive; keep one" in p for p in problems(workdir, both)
    )
    missing = body.replace("air.bindkey", "nowhere.bindkey")
    assert any("devices.air.bindkey_file" in p for p in problems(workdir, missing))


def test_two_sensors_with_one_address_on_a_bus_are_refused(workdir: Path) -> None:
    body = HEAD + (
        "  a: {bus: street, format: ruuvi, address: CB:B8:33:4C:88:4F}\n"
        "  b: {bus: street, format: ruuvi, address: cb-b8-33-4c-88-4f}\n"
    )
    assert problems(workdir, body) == [
        "FILE:9: devices.b.address: device 'a' on bus 'street' already has address CB:B8:33:4C:88:4F; "
        "an address is one sensor: remove one of the two, or correct the address"
    ]


BAD = [
    (
        "bus keys",
        """\
gateway: {id: gw-1, key_file: key.pem}
buses:
  street:
    type: ble
    adapter: bluetooth0
    scanning: loud
    backoff_initial: 10s
    backoff_max: 1s
""",
        [
            "FILE:5: buses.street.adapter: 'bluetooth0' is not a Bluetooth adapter name; write e.g. hci0 "
            "(see `hciconfig`)",
            "FILE:6: buses.street.scanning: must be 'auto', 'passive' or 'active'; got the text 'loud'",
            "FILE:8: buses.street.backoff_max: must be at least backoff_initial (10s); got 1s",
        ],
    ),
    (
        "neither format nor type",
        HEAD + "  t1:\n    bus: street\n    address: CB:B8:33:4C:88:4F\n",
        [f"FILE:8: devices.t1.format: required key 'format' is missing; {KINDS}"],
    ),
    (
        "another type",
        HEAD + "  t1:\n    bus: street\n    type: sensor\n",
        [
            "FILE:10: devices.t1.type: unknown device type 'sensor' on a ble bus; the only device type is "
            "presence (a sensor takes format: instead of type:)"
        ],
    ),
    (
        "presence with a format",
        HEAD + "  t1:\n    bus: street\n    type: presence\n    format: ruuvi\n",
        [f"FILE:11: devices.t1.format: a presence counter has no format; {KINDS}"],
    ),
    (
        "sensor values",
        HEAD
        + """\
  t1:
    bus: street
    format: bthome2
    address: CB:B8:33:4C:88
  t2:
    bus: street
    format: ruuvi
    address: CB:B8:33:4C:88:4F
    bindkey: 231d39c1d7cc1ab1aee224cd096db932
  t3:
    bus: street
    format: bthome
    address: 0xCBB8                # YAML reads this as a number
    bindkey: 231d39
""",
        [
            "FILE:10: devices.t1.format: must be 'bthome', 'ruuvi' or 'xiaomi-pvvx'; got the text 'bthome2' "
            "(did you mean 'bthome'?)",
            "FILE:11: devices.t1.address: 'CB:B8:33:4C:88' is not a Bluetooth address; write six hex bytes, "
            "e.g. A4:C1:38:0B:5E:ED",
            "FILE:16: devices.t2.bindkey: bindkey is for encrypted bthome sensors; a ruuvi sensor has none: "
            "remove bindkey",
            "FILE:20: devices.t3.address: expected a Bluetooth address such as A4:C1:38:0B:5E:ED; "
            "got the number 52152; put it in quotes",
            "FILE:21: devices.t3.bindkey: a BTHome bindkey is 32 hex digits (16 bytes), as the device's app "
            "shows it",
        ],
    ),
    (
        "presence values",
        HEAD + "  c1: {bus: street, type: presence, window: 7m, rssi_threshold: -200}\n"
        "  c2: {bus: street, type: presence, window: 5s, stale_after: 1m}\n",
        [
            "FILE:8: devices.c1.rssi_threshold: must be between -127 and 20; got -200",
            "FILE:8: devices.c1.window: a window must divide a day into whole windows, e.g. 30s, 1m, 5m, 15m "
            "or 1h; got 7m",
            "FILE:9: devices.c2.stale_after: unknown key 'stale_after'; allowed here: bus, location, type, "
            "window, rssi_threshold, report",
            "FILE:9: devices.c2.window: must be between 10s and 1h; got 5s",
        ],
    ),
]


@pytest.mark.parametrize(("name", "text", "expected"), BAD, ids=[case[0] for case in BAD])
def test_bad_ble_configs(workdir: Path, name: str, text: str, expected: list[str]) -> None:
    assert problems(workdir, text) == expected
