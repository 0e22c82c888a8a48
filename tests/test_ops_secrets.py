"""Secrets: a key the daemon does not own is refused; a password shows up nowhere it should not."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest

from citygw.demo.broker import LocalBroker, free_port
from citygw.ops.operations import TEST_REPORT_EVERY

from .support import Daemon, citygw, write_config
from .test_ops_status import REPORT_EVERY, scrape_after_report

REPO = Path(__file__).resolve().parent.parent
SECRET = "pa55-Zq9x-NEVER-PRINTED-7f3e"  # what the gateway sends: wrong for this broker
OTHER_UID = 54_321


@pytest.mark.skipif(os.geteuid() != 0, reason="giving the key to another user needs root")
def test_the_daemon_refuses_a_key_it_does_not_own(tmp_path: Path, key: Path) -> None:
    os.chown(key, OTHER_UID, OTHER_UID)
    config = write_config(tmp_path / "c.yaml", key=key, port=1883, devices={})
    done = citygw("run", "-c", str(config))
    assert done.returncode == 78, done.stderr
    assert f"{key} belongs to {OTHER_UID} but citygw runs as root (uid 0)" in done.stderr
    assert f"run chown root: {key}" in done.stderr
    # a technician's `sudo citygw check` of the service user's key is fine
    done = citygw("check", "-c", str(config))
    assert done.returncode == 0, done.stderr


def test_the_daemon_refuses_a_key_others_can_read(tmp_path: Path, key: Path) -> None:
    key.chmod(0o640)
    config = write_config(tmp_path / "c.yaml", key=key, port=1883, devices={})
    done = citygw("run", "-c", str(config))
    assert done.returncode == 78
    assert "chmod 600" in done.stderr


@pytest.mark.skipif(shutil.which("mosquitto_passwd") is None, reason="mosquitto_passwd (package mosquitto)")
def test_a_password_appears_in_no_log_error_check_status_or_metric(
    tmp_path: Path, key: Path, daemon_factory: Callable[[Path], Daemon], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(TEST_REPORT_EVERY, REPORT_EVERY)
    workdir = tmp_path / "broker"
    workdir.mkdir()
    passwords = workdir / "passwd"
    subprocess.run(["mosquitto_passwd", "-b", "-c", str(passwords), "gw", "the-right-one"], check=True)
    passwords.chmod(0o600)
    broker = LocalBroker(workdir=workdir)
    broker.conf.write_text(
        broker.conf.read_text().replace("allow_anonymous true", "allow_anonymous false")
        + f"password_file {passwords}\n"
    )
    broker.start()
    metrics = free_port()
    try:
        secret_file = tmp_path / "credentials" / "citygw_local-password"
        secret_file.parent.mkdir()
        secret_file.write_text(SECRET + "\n")
        config = write_config(
            tmp_path / "c.yaml",
            key=key,
            port=broker.port,
            devices={"d1": {"bus": "gen", "rate": 50}},
            metrics={"listen": f"127.0.0.1:{metrics}"},
        )
        data = json.loads(config.read_text())
        data["uplinks"]["local"].update(username="gw", password_file=str(secret_file))
        data["log"] = {"level": "debug"}
        config.write_text(json.dumps(data))
        outputs: dict[str, str] = {}

        done = citygw("check", "-c", str(config))
        assert done.returncode == 0, done.stderr
        outputs["check"] = done.stdout + done.stderr

        daemon = daemon_factory(config)
        daemon.start()
        log = tmp_path / "daemon.log"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and "not authorized" not in log.read_text().lower():
            time.sleep(0.2)
        scrape_after_report(metrics, time.time())  # a buffer report for the metrics
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics}/metrics", timeout=5) as response:
            outputs["metrics"] = response.read().decode()
        for args in (("--json",), ()):
            done = citygw("status", "-c", str(config), *args)
            assert done.returncode == 0, done.stderr
            outputs[f"status {args}"] = done.stdout + done.stderr
        assert daemon.terminate() == 0
        outputs["run (debug log)"] = log.read_text()

        # a password typed in the config as a number is reported without its value
        data["uplinks"]["local"].pop("password_file")
        data["uplinks"]["local"]["password"] = 987654321
        config.write_text(json.dumps(data))
        done = citygw("check", "-c", str(config))
        assert done.returncode == 78
        assert "uplinks.local.password: expected text; the value is not shown" in done.stderr
        outputs["check (bad password)"] = done.stdout + done.stderr
    finally:
        broker.close()

    assert "not authorized" in outputs["run (debug log)"].lower(), "the login was refused (and said so)"
    assert "citygw_uplink_state" in outputs["metrics"]
    for what, text in outputs.items():
        assert SECRET not in text, f"the password appears in {what}"
        assert "987654321" not in text, f"the password appears in {what}"
