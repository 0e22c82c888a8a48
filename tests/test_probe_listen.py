"""``citygw probe`` of a BLE sensor: its next advert decoded, through the scanner seam the demo's
replay uses (bleak's own scanner with a backend that plays recorded adverts; no radio here)."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

from .support import REPO

RECORDING = REPO / "config" / "demo-adverts.jsonl"


def config(tmp_path: Path, key: Path, sensors: dict[str, dict[str, Any]]) -> Path:
    data = {
        "gateway": {"id": "gw-probe", "key_file": str(key)},
        "buffer": {"path": str(tmp_path / "buffer.db")},
        "metrics": {"enabled": False},
        "buses": {"air": {"type": "ble", "replay": str(RECORDING)}},
        "devices": {name: {"bus": "air", **sensor} for name, sensor in sensors.items()},
    }
    path = tmp_path / "ble.yaml"
    path.write_text(json.dumps(data))
    return path


async def probe(path: Path, device: str, timeout: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "citygw",
        "probe",
        "-c",
        str(path),
        device,
        "--timeout",
        timeout,
        cwd=REPO,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_probe_of_a_ble_sensor_shows_its_next_advert_decoded(tmp_path: Path, key: Path) -> None:
    path = config(tmp_path, key, {"thermo-1": {"format": "bthome", "address": "A4:C1:38:0B:5E:ED"}})
    code, out, err = await probe(path, "thermo-1", "20")
    assert code == 0, err
    lines = [json.loads(line) for line in out.splitlines()]
    assert lines and {line["device"] for line in lines} == {"thermo-1"}
    assert {"temperature", "relativeHumidity"} <= {line["name"] for line in lines}
    assert "citygw probe: listening for thermo-1's next advert on bus air (" in err


async def test_probe_of_a_ble_sensor_not_heard_says_what_to_check(tmp_path: Path, key: Path) -> None:
    path = config(tmp_path, key, {"far": {"format": "ruuvi", "address": "C0:FF:EE:00:00:01"}})
    code, out, err = await probe(path, "far", "1")
    assert (code, out) == (1, "")
    assert "citygw probe: far gave no reading within 1 s on bus air (" in err
    assert "no advert at all" in err
    assert (
        "check that the sensor C0:FF:EE:00:00:01 is in range and advertising (citygw scan -c FILE air" in err
    )
    assert "check its format: ruuvi" in err
