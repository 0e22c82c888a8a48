"""The documented way to hold secrets works for every documented command, in the service and out.

docs/operations.md ("Secrets") and the README put a password in ``/etc/citygw/credentials/NAME``
and name it ``password_file: ${CREDENTIALS_DIRECTORY}/NAME``. systemd sets ``CREDENTIALS_DIRECTORY``
for the service alone and hands the file over as ``citygw_NAME`` (``LoadCredential=citygw:DIR``);
a technician's ``sudo citygw check`` / ``status`` / ``probe`` / ``resend`` and a deploy's
``validate: citygw check -c %s`` run without it. All of them are run here as real subprocesses.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sys
from pathlib import Path

import pytest

from citygw.buffer import Buffer
from citygw.config.profiles import find_profile
from citygw.drivers.modbus.server import ModbusSimulator, Unit
from citygw.wire.signing import Signer

from .support import REPO

SECRET = "pa55-cdp-0042"
UNIT_FILE = REPO / "systemd" / "citygw.service"
CREDENTIALS_STORE = "/etc/citygw/credentials"  # gateway.config.loader.CREDENTIALS_STORE


def _config(tmp_path: Path, key: Path, port: int, password_file: str) -> Path:
    text = f"""\
gateway:
  id: gw-cred
  key_file: {key}
buffer:
  path: {tmp_path / "state" / "buffer.db"}
uplinks:
  cdp:
    type: mqtt
    url: mqtt://127.0.0.1:1
    username: gw-cred
    password_file: {password_file}
buses:
  plc: {{type: modbus-tcp, host: 127.0.0.1, port: {port}, timeout: 500ms}}
devices:
  climate-1: {{bus: plc, unit: 2, profile: xy-md02}}
"""
    path = tmp_path / "etc" / "config.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


async def _citygw(env: dict[str, str], *args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "citygw",
        *args,
        cwd=REPO,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def _empty_buffer(path: Path, key: Path) -> None:
    buffer = Buffer(path, gateway="gw-cred", signer=Signer.from_file(key), uplinks=["cdp"])
    buffer.open()
    buffer.close()


def test_the_store_outside_the_service_is_the_one_the_unit_loads() -> None:
    load = [line for line in UNIT_FILE.read_text().splitlines() if line.startswith("LoadCredential=")]
    assert load == [f"LoadCredential=citygw:{CREDENTIALS_STORE}"]


@pytest.mark.parametrize(
    "written", ["${CREDENTIALS_DIRECTORY}/cdp-password", "${CREDENTIALS_DIRECTORY}/citygw_cdp-password"]
)
async def test_every_documented_command_reads_the_credential_outside_and_inside_the_service(
    tmp_path: Path, key: Path, written: str
) -> None:
    store = tmp_path / "credentials"  # what /etc/citygw/credentials is on a box
    store.mkdir(mode=0o700)
    (store / "cdp-password").write_text(SECRET + "\n")
    outside = {k: v for k, v in os.environ.items() if k != "CREDENTIALS_DIRECTORY"}
    outside["CITYGW_CREDENTIALS_STORE"] = str(store)
    sdm = find_profile("xy-md02").fields
    async with ModbusSimulator(
        {2: Unit().put(sdm, {"temperature": 21.5, "relativeHumidity": 48.3})}
    ) as server:
        config = _config(tmp_path, key, server.port, written)
        (tmp_path / "state").mkdir()
        _empty_buffer(tmp_path / "state" / "buffer.db", key)

        code, out, err = await _citygw(outside, "check", "-c", str(config))
        assert code == 0, err
        assert "ok: gateway gw-cred" in out and SECRET not in out + err
        code, out, err = await _citygw(outside, "status", "-c", str(config))
        assert code == 0, err
        code, out, err = await _citygw(outside, "probe", "-c", str(config), "climate-1")
        assert code == 0, err
        assert [json.loads(line)["value"] for line in out.splitlines()] == [21.5, 48.3]
        code, out, err = await _citygw(outside, "resend", "-c", str(config), "--uplink", "cdp")
        assert "0 parked batch(es) marked" in err, err  # it ran: nothing was parked (exit 1)

        # a deploy's validation step checks a temporary copy somewhere else (Ansible: validate: %s)
        staged = tmp_path / "ansible-tmp" / "source"
        staged.parent.mkdir()
        shutil.copy(config, staged)
        code, _, err = await _citygw(outside, "check", "-c", str(staged))
        assert code == 0, err

        # in the service: systemd's copy, named citygw_NAME, in a directory of its own
        loaded = tmp_path / "run-credentials"
        loaded.mkdir()
        (loaded / "citygw_cdp-password").write_text(SECRET + "\n")
        inside = dict(outside, CREDENTIALS_DIRECTORY=str(loaded))
        inside.pop("CITYGW_CREDENTIALS_STORE")
        code, _, err = await _citygw(inside, "check", "-c", str(config))
        assert code == 0, err


async def test_a_missing_credential_names_both_places_and_the_store(tmp_path: Path, key: Path) -> None:
    store = tmp_path / "credentials"
    store.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "CREDENTIALS_DIRECTORY"}
    env["CITYGW_CREDENTIALS_STORE"] = str(store)
    config = _config(tmp_path, key, 502, "${CREDENTIALS_DIRECTORY}/cdp-password")
    code, _, err = await _citygw(env, "check", "-c", str(config))
    assert code == 78
    assert f"cannot read {store}/cdp-password: No such file or directory" in err
    assert f"outside the service, ${{CREDENTIALS_DIRECTORY}} is {store}" in err
    assert "environment variable CREDENTIALS_DIRECTORY is not set" not in err

    loaded = tmp_path / "run-credentials"
    loaded.mkdir()
    env = dict(env, CREDENTIALS_DIRECTORY=str(loaded))
    code, _, err = await _citygw(env, "check", "-c", str(config))
    assert code == 78
    assert f"cannot read {loaded}/cdp-password or {loaded}/citygw_cdp-password" in err
