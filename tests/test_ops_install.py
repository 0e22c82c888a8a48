"""The box as a Linux service: the unit's sandbox, the install script, the schema, the log lines."""

from __future__ import annotations

import io
import json
import logging
import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
from ruamel.yaml import YAML

from citygw.ops.logging_setup import KeyValueFormatter, setup

from .support import citygw
from .test_ops_image import FIRSTBOOT, account_id, citygw_wrapper, image_root, install, on_box

REPO = Path(__file__).resolve().parent.parent
UNIT = REPO / "systemd" / "citygw.service"
FIRSTBOOT_UNIT = REPO / "systemd" / "citygw-firstboot.service"
SCHEMA = REPO / "config" / "citygw.schema.json"
MAX_EXPOSURE = 2.0


# --- the unit ----------------------------------------------------------------------------------


def _directives() -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            name, _, value = line.partition("=")
            found.setdefault(name, []).append(value)
    return found


@pytest.mark.skipif(
    shutil.which("systemd-analyze") is None, reason="systemd-analyze (Debian package systemd)"
)
def test_systemd_analyze_rates_the_unit_exposure_at_most_2() -> None:
    done = subprocess.run(
        ["systemd-analyze", "security", "--offline=true", "--no-pager", str(UNIT)],
        capture_output=True,
        text=True,
        check=False,
    )
    match = re.search(r"Overall exposure level for citygw\.service: (\d+\.\d)", done.stdout)
    assert match is not None, done.stdout + done.stderr
    assert float(match[1]) <= MAX_EXPOSURE, done.stdout


@pytest.mark.skipif(
    shutil.which("systemd-analyze") is None, reason="systemd-analyze (Debian package systemd)"
)
def test_systemd_analyze_verify_finds_nothing_wrong_with_the_units(tmp_path: Path) -> None:
    unit = tmp_path / "citygw.service"
    unit.write_text(UNIT.read_text().replace("ExecStart=/usr/bin/citygw ", "ExecStart=/bin/true "))
    firstboot = tmp_path / "citygw-firstboot.service"
    firstboot.write_text(
        FIRSTBOOT_UNIT.read_text().replace("ExecStart=/usr/local/lib/citygw/firstboot", "ExecStart=/bin/true")
    )
    done = subprocess.run(
        ["systemd-analyze", "verify", str(unit), str(firstboot)], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0 and "citygw" not in done.stderr, done.stderr


def test_the_unit_is_a_watched_notify_service_with_its_own_user_and_directories() -> None:
    d = _directives()
    expected = {
        "Type": ["notify"],
        "Restart": ["on-failure"],
        "RestartPreventExitStatus": ["78"],
        "User": ["citygw"],
        "SupplementaryGroups": ["dialout"],
        "StateDirectory": ["citygw"],
        "ConfigurationDirectory": ["citygw"],
        "NoNewPrivileges": ["yes"],
        "ProtectSystem": ["strict"],
        "ProtectHome": ["yes"],
        "PrivateTmp": ["yes"],
        "CapabilityBoundingSet": [""],
    }
    for name, values in expected.items():
        assert d.get(name) == values, name
    assert int(d["WatchdogSec"][0]) >= 10
    assert d["LoadCredential"] == ["citygw:/etc/citygw/credentials"]
    assert d["RestrictAddressFamilies"] == ["AF_UNIX AF_INET AF_INET6"]
    assert d["SystemCallFilter"][0] == "@system-service"
    assert d["ExecStart"][0].startswith("/usr/bin/citygw run -c /etc/citygw/config.yaml")


# --- the install script, into a throwaway root --------------------------------------------------


def _snapshot(root: Path) -> dict[str, tuple[int, int, int, bytes]]:
    return {
        str(p.relative_to(root)): (p.lstat().st_mode, p.lstat().st_uid, p.lstat().st_gid, p.read_bytes())
        for p in sorted(root.rglob("*"))
        if p.is_file() and not p.is_symlink() and not p.name.endswith("-")
    }


@pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("useradd") is None or shutil.which("unshare") is None,
    reason="needs root, useradd (--prefix) and unshare",
)
def test_install_is_idempotent_and_uninstall_keeps_data_unless_purged(tmp_path: Path) -> None:
    root = image_root(tmp_path, "root")
    wrapper = citygw_wrapper(tmp_path)

    done = install(root, wrapper, "--id", "gw-pole-7")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "id=gw-pole-7" in (root / "etc/citygw/firstboot.pending").read_text()
    uid = account_id(root, "citygw")
    group = (root / "etc" / "group").read_text()
    assert re.search(r"^dialout:x:20:citygw$", group, re.M) and re.search(
        r"^bluetooth:x:112:citygw$", group, re.M
    )
    etc, state = root / "etc" / "citygw", root / "var" / "lib" / "citygw"
    key = etc / "signing.key"
    assert not key.exists(), "an image carries no key: each box makes its own at first boot"
    assert stat.S_IMODE(etc.stat().st_mode) == 0o750 and etc.stat().st_uid == 0
    assert stat.S_IMODE((etc / "credentials").stat().st_mode) == 0o700
    assert stat.S_IMODE(state.stat().st_mode) == 0o700 and state.stat().st_uid == uid
    config = (etc / "config.yaml").read_text()
    assert config.startswith("# yaml-language-server: $schema=/usr/local/share/citygw/citygw.schema.json")
    assert (root / "usr/local/share/citygw/citygw.schema.json").read_bytes() == SCHEMA.read_bytes()
    unit = (root / "etc/systemd/system/citygw.service").read_text()
    assert f"ExecStart={wrapper} run -c /etc/citygw/config.yaml" in unit
    firstboot_unit = (root / "etc/systemd/system/citygw-firstboot.service").read_text()
    assert f"ExecStart=/usr/local/lib/citygw/firstboot --citygw {wrapper}\n" in firstboot_unit
    assert "usbserial" in (root / "etc/modules-load.d/citygw.conf").read_text()
    if shutil.which("systemctl"):
        assert (root / "etc/systemd/system/multi-user.target.wants/citygw.service").is_symlink()

    before = _snapshot(root)
    again = install(root, wrapper, "--id", "gw-pole-7")
    assert again.returncode == 0, again.stdout + again.stderr
    assert _snapshot(root) == before, "a second run changes nothing"
    assert "kept config" in again.stdout

    boot = on_box(root, FIRSTBOOT, "--citygw", str(wrapper))
    assert boot.returncode == 0, boot.stdout + boot.stderr
    assert "ok: gateway gw-pole-7" in boot.stdout, "the skeleton config passes citygw check"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600 and key.stat().st_uid == uid
    refused = install(root, wrapper)
    assert refused.returncode == 1 and "every box flashed from it would share one identity" in refused.stderr

    (etc / "config.yaml").write_text(config + "# a technician's edit\n")
    (state / "buffer.db").write_bytes(b"data")

    done = install(root, wrapper, "--uninstall")
    assert done.returncode == 0, done.stdout + done.stderr
    assert not (root / "etc/systemd/system/citygw.service").exists()
    assert not (root / "etc/systemd/system/multi-user.target.wants/citygw.service").exists()
    assert not (root / "etc/systemd/system/citygw-firstboot.service").exists()
    assert key.exists() and (state / "buffer.db").read_bytes() == b"data"
    assert "# a technician's edit" in (etc / "config.yaml").read_text()
    assert account_id(root, "citygw") == uid
    assert f"kept {state}" in done.stdout

    done = install(root, wrapper, "--uninstall", "--purge")
    assert done.returncode == 0, done.stdout + done.stderr
    assert not etc.exists() and not state.exists()
    assert "citygw" not in (root / "etc" / "passwd").read_text()
    assert not re.search(r"^citygw:", (root / "etc" / "group").read_text(), re.M)


# --- the schema --------------------------------------------------------------------------------


def test_citygw_schema_prints_the_committed_schema_and_it_is_valid() -> None:
    done = citygw("schema")
    assert done.returncode == 0, done.stderr
    assert done.stdout == SCHEMA.read_text(), (
        "config/citygw.schema.json is stale: run citygw schema > config/citygw.schema.json"
    )
    schema = json.loads(done.stdout)
    jsonschema.Draft202012Validator.check_schema(schema)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"


@pytest.mark.parametrize("name", ["example.yaml", "demo.yaml"])
def test_example_configs_name_the_schema_and_validate_against_it(name: str) -> None:
    path = REPO / "config" / name
    assert path.read_text().splitlines()[0] == "# yaml-language-server: $schema=citygw.schema.json"
    validator = jsonschema.Draft202012Validator(json.loads(SCHEMA.read_text()))
    errors = [f"{list(e.path)}: {e.message}" for e in validator.iter_errors(YAML(typ="safe").load(path))]
    assert errors == []


def test_the_schema_catches_what_an_editor_should_underline() -> None:
    validator = jsonschema.Draft202012Validator(json.loads(SCHEMA.read_text()))
    bad = {
        "gateway": {"id": "gw 1", "key_file": "k"},
        "buffer": {"max_disk": "2 parsecs", "synchronous": "sometimes"},
        "metrics": {"enabled": "yes please"},
        "logging": {},
    }
    paths = sorted(".".join(map(str, e.path)) for e in validator.iter_errors(bad))
    assert paths == ["", "buffer.max_disk", "buffer.synchronous", "gateway.id", "metrics.enabled"]


# --- the log lines -----------------------------------------------------------------------------


def _line(formatter: logging.Formatter, record: logging.LogRecord) -> str:
    return formatter.format(record)


def test_a_log_event_is_one_line_of_stable_keys() -> None:
    record = logging.LogRecord(
        "gateway.x", logging.WARNING, __file__, 1, "device %s: %s", ("air-1", 'bad "crc"'), None
    )
    record.event = "device_error"
    record.device = "air-1"
    line = _line(KeyValueFormatter(journald=True), record)
    assert line == (
        '<4>level=warning logger=gateway.x event=device_error device=air-1 msg="device air-1: bad \\"crc\\""'
    )
    plain = _line(KeyValueFormatter(journald=False), record)
    assert re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z level=warning ", plain)


def test_a_traceback_stays_on_the_line_of_its_event() -> None:
    try:
        raise RuntimeError("boom\nsecond line")
    except RuntimeError:
        record = logging.LogRecord(
            "gateway.daemon", logging.ERROR, __file__, 1, "task crashed", (), sys.exc_info()
        )
    line = _line(KeyValueFormatter(journald=True), record)
    assert "\n" not in line
    assert line.startswith('<3>level=error logger=gateway.daemon msg="task crashed" exc="Traceback')
    assert "RuntimeError: boom\\nsecond line" in line


def test_setup_sends_one_line_per_event_to_the_stream(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JOURNAL_STREAM", "8:1234")
    stream = io.StringIO()
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        setup("info", stream=stream)
        logging.getLogger("gateway.test").debug("hidden")
        logging.getLogger("gateway.test").info("shown", extra={"uplink": "cdp"})
    finally:
        root.handlers[:], _ = saved
        root.setLevel(saved[1])
    assert stream.getvalue() == "<6>level=info logger=gateway.test uplink=cdp msg=shown\n"


@pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("useradd") is None, reason="needs root and useradd (--prefix)"
)
def test_an_image_made_where_systemctl_cannot_run_still_enables_its_units(tmp_path: Path) -> None:
    shims = tmp_path / "shims"
    shims.mkdir()
    (shims / "systemctl").write_text("#!/bin/sh\nexit 1\n")
    (shims / "systemctl").chmod(0o755)
    root = image_root(tmp_path, "root")
    wrapper = citygw_wrapper(tmp_path)
    done = install(root, wrapper, env=dict(os.environ, PATH=f"{shims}:{os.environ['PATH']}"))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "enabled citygw-firstboot.service (links made by hand)" in done.stdout
    system = root / "etc/systemd/system"
    for link in (
        "multi-user.target.wants/citygw.service",
        "multi-user.target.wants/citygw-firstboot.service",
        "citygw.service.requires/citygw-firstboot.service",
    ):
        name = link.rsplit("/", 1)[1]
        assert os.readlink(system / link) == f"/etc/systemd/system/{name}", link
