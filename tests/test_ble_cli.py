"""``citygw decode`` on BLE adverts and ``citygw scan`` on a BLE bus, as a technician runs them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from citygw.commands.cli import main
from citygw.config import load_config
from citygw.drivers.ble.cli import scan_main

from .test_ble_driver import BTHOME_UUID, PHONES, RUUVI, THERMO, Air

SPEC_KEY = "231d39c1d7cc1ab1aee224cd096db932"
SPEC_ADVERT = "41A47266C95F730011223378237214"
RUUVI_INVALID = "058000FFFFFFFF800080008000FFFFFFFFFFFFFFFFFFFFFF"  # RAWv2 test vector "invalid values"


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, list[dict[str, object]], str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, [json.loads(line) for line in out.splitlines()], err


def test_decode_encrypted_bthome_spec_example(capsys: pytest.CaptureFixture[str]) -> None:
    """bthome.io/encryption's example advert, key and MAC."""
    code, lines, _ = run(
        capsys, "decode", "bthome", "41 a4 72 66 c9 5f 73 00 11 22 33 78 23 72 14",
        "--bindkey", SPEC_KEY, "--address", "54:48:E6:8F:80:A5",
    )  # fmt: skip
    assert code == 0
    assert lines == [
        {"device": "bthome", "name": "temperature", "value": 25.06, "unit": "Cel"},
        {"device": "bthome", "name": "relativeHumidity", "value": 50.55, "unit": "%RH"},
    ]


def test_decode_ruuvi_valid_vector(capsys: pytest.CaptureFixture[str]) -> None:
    code, lines, _ = run(capsys, "decode", "ruuvi", "0512FC5394C37C0004FFFC040CAC364200CDCBB8334C884F")
    assert code == 0
    assert [(line["name"], line["value"]) for line in lines] == [
        ("temperature", 24.3),
        ("relativeHumidity", 53.49),
        ("atmosphericPressure", 100044),
        ("accelerationX", 0.0392266),
        ("accelerationY", -0.0392266),
        ("accelerationZ", 10.1596894),
        ("batteryVoltage", 2.977),
        ("movementCounter", 66),
    ]


@pytest.mark.parametrize(
    ("argv", "code", "reason"),
    [
        (["ruuvi", RUUVI_INVALID], 1, "empty: every field is marked not available"),
        (["bthome", SPEC_ADVERT], 1, "no-key: an encrypted advert"),
        (["bthome", SPEC_ADVERT, "--bindkey", SPEC_KEY, "--address", "54-48-E6-8F-80-A6"], 1, "decrypt"),
        (["bthome", "41A4", "--bindkey", "xyz", "--address", "54:48:E6:8F:80:A5"], 2, "32 hex digits"),
        (["bthome", "4000 09"], 1, "empty: a well-formed advert with no value in it"),
        (["xiaomi-pvvx", "A4C1380B5EED"], 1, "short: 6 bytes"),
        (["ruuvi", "not hex"], 2, "is not hex bytes"),
    ],
)  # fmt: skip
def test_decode_refusals_say_why(
    capsys: pytest.CaptureFixture[str], argv: list[str], code: int, reason: str
) -> None:
    got, lines, err = run(capsys, "decode", *argv)
    assert (got, lines) == (code, [])
    assert reason in err


def test_scan_lists_sensors_heard_and_only_counts_the_rest(
    tmp_path: Path, key: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "citygw.yaml"
    path.write_text(f"""\
gateway: {{id: gw-1, key_file: {key}}}
buses:
  street: {{type: ble, scanning: active}}
devices:
  thermo: {{bus: street, format: bthome, address: {THERMO}}}
  roof: {{bus: street, format: ruuvi, address: {RUUVI}}}
""")
    config = load_config(path, environ={})
    air = Air()
    air.on_start = [
        {"address": THERMO, "rssi": -58, "service": {BTHOME_UUID: bytes.fromhex("4002CA09")}},
        {
            "address": "A4:C1:38:99:99:99",
            "rssi": -71,
            "service": {BTHOME_UUID: bytes.fromhex("41A47266C95F73")},
        },
        *({"address": phone, "rssi": -60} for phone in PHONES),
        *(  # a sensor on changing random addresses carrying its MAC C8:2B:96:A1:04:7E (info bit 1)
            {"address": random, "rssi": rssi, "service": {BTHOME_UUID: bytes.fromhex("427E04A1962BC802CA09")}}
            for random, rssi in (("5D:01:7F:22:9A:13", -64), ("7A:3F:11:C0:55:02", -66))
        ),
    ]
    assert scan_main(config, "street", duration=0.2, factory=air.factory()) == 0
    out, err = capsys.readouterr()
    assert out.splitlines() == [
        "address                rssi  format        device",
        f"{THERMO}   -58 dBm  bthome        thermo",
        "C8:2B:96:A1:04:7E   -64 dBm  bthome        -",  # listed once, by the MAC it carries
        "A4:C1:38:99:99:99   -71 dBm  bthome        -",  # encrypted: still recognised as BTHome
        "5 other advertisers (not listed: no supported format)",
    ]
    assert f"roof ({RUUVI}) was not heard" in err
    for phone in PHONES:
        assert phone not in out + err
    assert air.running == []
