"""A BLE bus that replays recorded adverts (``replay:``) instead of listening to an adapter.

The recording enters at the same seam as the radio: a real :class:`bleak.BleakScanner` on the replay
backend calls bleak's detection callbacks with real ``BLEDevice`` / ``AdvertisementData`` values,
and the daemon's bus runner, router and decoders do the rest.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import pytest

from citygw.config import load_config
from citygw.config.ble import BleBus, BleDevice
from citygw.drivers.ble import recording
from citygw.drivers.ble.bus import run_bus
from citygw.drivers.health import DeviceHealth
from citygw.errors import ConfigError
from citygw.reading import Reading

from .support import REPO

THERMO = "A4:C1:38:0B:5E:ED"
RUUVI = "CB:B8:33:4C:88:4F"
BTHOME_UUID = "0000fcd2-0000-1000-8000-00805f9b34fb"
# bthome.io/format example objects: packet id 9, temperature 25.06 Cel, humidity 50.55 %RH
BTHOME_ADVERT = "400009" + "02CA09" + "03BF13"
# docs.ruuvi.com RAWv2 "valid data" test vector: 24.3 Cel, 53.49 %RH, 100044 Pa, sequence 205
RUUVI_ADVERT = "0512FC5394C37C0004FFFC040CAC364200CDCBB8334C884F"
RUUVI_NEXT = RUUVI_ADVERT.replace("00CDCB", "00CECB")  # the next measurement: sequence 206


def line(**kw: Any) -> str:
    return json.dumps(kw)


def test_a_recording_is_parsed_with_its_comments_skipped() -> None:
    text = "\n".join(
        [
            "# a comment",
            line(t=0, address=THERMO.lower(), rssi=-60, service_data={BTHOME_UUID.upper(): BTHOME_ADVERT}),
            "",
            line(t=0.5, address=RUUVI.replace(":", "-"), manufacturer_data={"0x0499": RUUVI_ADVERT}),
        ]
    )
    adverts = recording.parse(text)
    assert adverts == [
        recording.RecordedAdvert(0.0, THERMO, -60, {BTHOME_UUID: bytes.fromhex(BTHOME_ADVERT)}, {}),
        recording.RecordedAdvert(0.5, RUUVI, -70, {}, {0x0499: bytes.fromhex(RUUVI_ADVERT)}),
    ]


@pytest.mark.parametrize(
    ("bad", "says"),
    [
        ("{not json", "line 2: Expecting property name"),
        (line(t=0, address=THERMO), "line 2: the advert has neither service_data nor manufacturer_data"),
        (
            line(t=-1, address=THERMO, service_data={BTHOME_UUID: "40"}),
            "line 2: t must be a number of seconds, not below the line before (0)",
        ),
        (line(t=1, address="A4:C1", service_data={BTHOME_UUID: "40"}), "line 2:"),
        (line(t=1, address=THERMO, service_data={BTHOME_UUID: "4x"}), "line 2: service_data"),
        (
            line(t=1, address=THERMO, manufacturer_data={"ruuvi": "05"}),
            "line 2: manufacturer_data key 'ruuvi'",
        ),
        (line(t=1, address=THERMO, rssi=5000, service_data={BTHOME_UUID: "40"}), "line 2: rssi must be"),
        (line(t=1, adress=THERMO, service_data={BTHOME_UUID: "40"}), "line 2: unknown key 'adress'"),
    ],
)
def test_a_bad_line_is_named_with_the_fix(bad: str, says: str) -> None:
    first = line(t=0, address=THERMO, service_data={BTHOME_UUID: BTHOME_ADVERT})
    with pytest.raises(recording.RecordingError) as caught:
        recording.parse(first + "\n" + bad + "\n", source="air.jsonl")
    assert str(caught.value).startswith("air.jsonl " + says.split(":")[0])
    assert says in str(caught.value)
    assert "each line is one advert, e.g." in str(caught.value)


def test_the_config_refuses_a_bad_recording(tmp_path: Path, key: Path) -> None:
    (tmp_path / "air.jsonl").write_text("# nothing but a comment\n")
    config = tmp_path / "citygw.yaml"
    config.write_text(
        f"gateway: {{id: gw, key_file: {key}}}\n"
        "buses:\n"
        "  ble: {type: ble, replay: air.jsonl}\n"
        "devices:\n"
        f"  t: {{bus: ble, format: bthome, address: '{THERMO}'}}\n"
    )
    with pytest.raises(ConfigError) as caught:
        load_config(config)
    (problem,) = caught.value.problems
    text = str(problem)
    assert "citygw.yaml:3" in text and "replay" in text and "air.jsonl: no advert in it" in text


async def test_the_bus_runner_hears_the_recording_through_bleak(tmp_path: Path) -> None:
    air = tmp_path / "air.jsonl"
    air.write_text(
        "\n".join(
            [
                line(t=0.0, address=THERMO, rssi=-61, service_data={BTHOME_UUID: BTHOME_ADVERT}),
                line(t=0.05, address=THERMO, rssi=-61, service_data={BTHOME_UUID: BTHOME_ADVERT}),  # repeat
                line(t=0.1, address=RUUVI, rssi=-72, manufacturer_data={"0x0499": RUUVI_ADVERT}),
                line(t=0.2, address="F0:99:B6:12:34:56", manufacturer_data={"0x0499": RUUVI_ADVERT}),
                line(t=0.3, address=RUUVI, rssi=-72, manufacturer_data={"0x0499": RUUVI_NEXT}),
            ]
        )
    )
    bus = BleBus.model_validate({"type": "ble", "replay": str(air)})
    devices = {
        "thermo": BleDevice.model_validate({"bus": "air", "format": "bthome", "address": THERMO}),
        "tag": BleDevice.model_validate({"bus": "air", "format": "ruuvi", "address": RUUVI}),
    }
    health = {name: DeviceHealth(name) for name in devices}
    got: list[Reading] = []

    async def sink(readings: list[Reading]) -> None:
        got.extend(readings)

    task = asyncio.create_task(run_bus("air", bus, devices, sink, health))
    deadline = time.monotonic() + 10
    while health["tag"].frames < 3:  # 205, 206, then 205 again: the recording plays from the top
        assert time.monotonic() < deadline, "the replay did not loop"
        await asyncio.sleep(0.05)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    first = {(r.device, r.name): r.value for r in got}
    assert first[("thermo", "temperature")] == 25.06 and first[("thermo", "relativeHumidity")] == 50.55
    assert first[("tag", "temperature")] == 24.3 and first[("tag", "atmosphericPressure")] == 100044
    assert first[("thermo", "rssi")] == -61
    assert {r.device for r in got} == {"thermo", "tag"}  # the stranger is not on the allowlist
    # each play sends packet id 9 twice: the repeat is dropped, and so is the next play's (the same id
    # as the last one heard): the thermometer gave one advert's worth
    assert health["thermo"].frames == 1


def test_the_demo_recording_holds_the_demo_sensors() -> None:
    adverts = recording.load(REPO / "config" / "demo-adverts.jsonl")
    assert {THERMO, RUUVI} <= {a.address for a in adverts}
    assert "replay: demo-adverts.jsonl" in (REPO / "config" / "demo.yaml").read_text()
