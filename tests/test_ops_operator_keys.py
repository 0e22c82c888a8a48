"""``install.sh --operator-key``: a box (or an image) that takes remote configuration from the start.

The install runs for real into a throwaway root tree, as in tests/test_ops_install.py; the first
boot runs the image's own first-boot step with the image mounted at its real places
(tests/test_ops_image.py). The keys are made by ``citygw keygen``, as the operator makes them.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from ruamel.yaml import YAML

from citygw.config import load_config
from citygw.wire.signing import load_public_keys

from .support import citygw
from .test_ops_image import FIRSTBOOT, account_id, citygw_wrapper, image_root, install, on_box

REPO = Path(__file__).resolve().parent.parent
DROPIN = "etc/systemd/system/citygw.service.d/remote-config.conf"

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("useradd") is None or shutil.which("unshare") is None,
    reason="needs root, useradd (--prefix) and unshare",
)


def _keygen(directory: Path, name: str) -> Path:
    """An operator key pair as the docs make it; returns the private key's path (FILE.pub beside)."""
    directory.mkdir(exist_ok=True)
    key = directory / name
    done = citygw("keygen", "--out", str(key))
    assert done.returncode == 0, done.stderr
    return key


def _snapshot(root: Path) -> dict[str, tuple[int, int, int, bytes]]:
    """Every file and directory: mode, owner, group and content."""
    return {
        str(p.relative_to(root)): (
            p.lstat().st_mode,
            p.lstat().st_uid,
            p.lstat().st_gid,
            p.read_bytes() if p.is_file() and not p.is_symlink() else b"",
        )
        for p in sorted(root.rglob("*"))
        if not p.name.endswith("-")
    }


def _kids(paths: list[Path]) -> set[str]:
    return set(load_public_keys(paths))


def test_an_image_with_two_operator_keys_takes_remote_configuration_and_a_second_run_changes_nothing(
    tmp_path: Path,
) -> None:
    root = image_root(tmp_path, "image")
    wrapper = citygw_wrapper(tmp_path)
    operator = _keygen(tmp_path / "operator", "operator.key")
    spare = _keygen(tmp_path / "operator", "operator-spare.key")
    keys = ["--operator-key", f"{operator}.pub", "--operator-key", f"{spare}.pub"]

    done = install(root, wrapper, *keys)
    assert done.returncode == 0, done.stdout + done.stderr
    etc = root / "etc/citygw"
    gid = account_id(root, "citygw", table="group")
    for key in (operator, spare):
        installed = etc / f"{key.name}.pub"
        assert installed.read_bytes() == Path(f"{key}.pub").read_bytes()
        st = installed.stat()
        assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (0, gid, 0o640), installed
    assert not list(etc.glob("operator*.key")), "no private key goes into the image"

    # the service may write its config directory (systemd applies the mode at each start; the
    # directory has it already, for a box that has not restarted since)
    dropin = (root / DROPIN).read_text()
    assert re.search(r"^\[Service\]\nConfigurationDirectoryMode=0770$", dropin, re.M), dropin
    assert stat.S_IMODE(etc.stat().st_mode) == 0o770 and (etc.stat().st_uid, etc.stat().st_gid) == (0, gid)

    # the skeleton names the keys (relative to the config's directory, as key_file)
    skeleton = YAML(typ="safe").load(etc / "config.yaml")
    assert skeleton["gateway"]["operator_keys"] == ["operator.key.pub", "operator-spare.key.pub"]
    assert "operator keys: operator.key.pub, operator-spare.key.pub" in done.stdout

    before = _snapshot(root)
    again = install(root, wrapper, *keys)
    assert again.returncode == 0, again.stdout + again.stderr
    assert _snapshot(root) == before, "a second run changes nothing"
    assert f"operator key {etc}/operator.key.pub is current" in again.stdout
    assert f"drop-in {root / DROPIN} is current" in again.stdout
    assert f"kept config {etc}/config.yaml: its gateway.operator_keys names" in again.stdout

    # and a run without the option keeps what the first one made
    plain = install(root, wrapper)
    assert plain.returncode == 0, plain.stdout + plain.stderr
    assert _snapshot(root) == before

    # first boot: the config as the box reads it passes citygw check, and names the two keys
    boot = on_box(root, FIRSTBOOT, "--id", "bkk-pathumwan-0042", "--citygw", str(wrapper))
    assert boot.returncode == 0, boot.stdout + boot.stderr
    assert "ok: gateway bkk-pathumwan-0042" in boot.stdout
    config = load_config(etc / "config.yaml")
    assert list(config.gateway.operator_keys) == [etc / "operator.key.pub", etc / "operator-spare.key.pub"]
    assert _kids(list(config.gateway.operator_keys)) == _kids([Path(f"{operator}.pub"), Path(f"{spare}.pub")])

    # uninstall removes the drop-in with the unit; the keys stay with the config (--purge: gone)
    done = install(root, wrapper, "--uninstall")
    assert done.returncode == 0, done.stdout + done.stderr
    assert not (root / DROPIN).exists() and not (root / DROPIN).parent.exists()
    assert f"removed {root / DROPIN}" in done.stdout
    assert (etc / "operator.key.pub").exists()


@pytest.mark.skipif(
    shutil.which("systemd-analyze") is None, reason="systemd-analyze (Debian package systemd)"
)
def test_systemd_reads_the_unit_with_its_drop_in_and_the_sandbox_keeps_its_rating(tmp_path: Path) -> None:
    root = image_root(tmp_path, "image")
    operator = _keygen(tmp_path / "operator", "operator.key")
    done = install(root, citygw_wrapper(tmp_path), "--operator-key", f"{operator}.pub")
    assert done.returncode == 0, done.stdout + done.stderr
    unit = root / "etc/systemd/system/citygw.service"

    shown = subprocess.run(
        ["systemd-analyze", "cat-config", f"--root={root}", "systemd/system/citygw.service"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert shown.returncode == 0, shown.stderr
    modes = re.findall(r"^ConfigurationDirectoryMode=(\S+)$", shown.stdout, re.M)
    assert modes == ["0750", "0770"], "the drop-in comes after the unit, so its mode wins"
    assert f"# {root / DROPIN}\n" in shown.stdout

    # verify parses the drop-in with the unit (an unknown key or a bad mode in it would be named)
    verified = subprocess.run(
        ["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, check=False
    )
    assert verified.returncode == 0 and "citygw" not in verified.stderr, verified.stderr

    rated = subprocess.run(
        ["systemd-analyze", "security", "--offline=true", "--no-pager", str(unit)],
        capture_output=True,
        text=True,
        check=False,
    )
    match = re.search(r"Overall exposure level for citygw\.service: (\d+\.\d)", rated.stdout)
    assert match is not None, rated.stdout + rated.stderr
    assert float(match[1]) <= 2.0, rated.stdout


def _ec_public_key(path: Path) -> Path:
    key = ec.generate_private_key(ec.SECP256R1()).public_key()
    path.write_bytes(
        key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    return path


@pytest.mark.parametrize("what", ["private key", "P-256 public key", "text", "missing", "signing.key.pub"])
def test_an_operator_key_that_is_not_an_ed25519_public_key_is_refused_before_anything_is_written(
    tmp_path: Path, what: str
) -> None:
    root = image_root(tmp_path, "image")
    operator = _keygen(tmp_path / "operator", "operator.key")
    given = {
        "private key": operator,
        "P-256 public key": _ec_public_key(tmp_path / "p256.pub"),
        "text": tmp_path / "notes.pub",
        "missing": tmp_path / "nowhere.pub",
        "signing.key.pub": tmp_path / "signing.key.pub",
    }[what]
    if what == "text":
        given.write_text("the operator key is on the laptop\n")
    if what == "signing.key.pub":
        shutil.copy(f"{operator}.pub", given)
    before = _snapshot(root)

    done = install(
        root, citygw_wrapper(tmp_path), "--operator-key", f"{operator}.pub", "--operator-key", str(given)
    )
    assert done.returncode == 2, done.stdout + done.stderr
    assert _snapshot(root) == before, "nothing is written"
    assert done.stdout == ""
    expected = {
        "private key": f"--operator-key {operator} is a private key: an operator's private key never "
        f"goes on a box; give its public half, {operator}.pub",
        "P-256 public key": f"--operator-key {given} is not an Ed25519 public key (it is another kind)",
        "text": f"--operator-key {given} is not an Ed25519 public key (no -----BEGIN PUBLIC KEY----- in it)",
        "missing": f"--operator-key {given}: no such file",
        "signing.key.pub": "signing.key.pub is the box's own public key in /etc/citygw",
    }[what]
    assert expected in done.stderr, done.stderr


def test_the_same_key_twice_is_refused(tmp_path: Path) -> None:
    root = image_root(tmp_path, "image")
    operator = _keygen(tmp_path / "operator", "operator.key")
    copy = tmp_path / "operator-spare.key.pub"
    shutil.copy(f"{operator}.pub", copy)
    before = _snapshot(root)
    done = install(
        root, citygw_wrapper(tmp_path), "--operator-key", f"{operator}.pub", "--operator-key", str(copy)
    )
    assert done.returncode == 2 and _snapshot(root) == before
    assert f"{copy} is the same key as {operator}.pub: a spare must be a key pair of its own" in done.stderr


def test_a_kept_config_is_not_rewritten_and_the_lines_to_add_are_printed(tmp_path: Path) -> None:
    root = image_root(tmp_path, "image")
    wrapper = citygw_wrapper(tmp_path)
    operator = _keygen(tmp_path / "operator", "operator.key")
    spare = _keygen(tmp_path / "operator", "operator-spare.key")
    done = install(root, wrapper)
    assert done.returncode == 0, done.stdout + done.stderr
    config = root / "etc/citygw/config.yaml"
    ours = config.read_text().replace("buffer:\n", "buffer:\n  synchronous: full\n")
    config.write_text(ours)

    done = install(root, wrapper, "--operator-key", f"{operator}.pub", "--operator-key", f"{spare}.pub")
    assert done.returncode == 0, done.stdout + done.stderr
    assert config.read_text() == ours, "a config that is there is never rewritten"
    assert (
        f"kept config {config}: it names no operator keys, so the box takes no remote configuration;\n"
        "  add these lines under gateway: (beside key_file:):\n"
        "  operator_keys:\n"
        "    - operator.key.pub\n"
        "    - operator-spare.key.pub\n"
    ) in done.stdout
    assert "the config does not name them all yet (above)" in done.stdout

    # a config that names one of the two: the other is named
    config.write_text(
        ours.replace(
            "gateway:\n",
            "gateway:\n  operator_keys: [/etc/citygw/operator.key.pub]  # the first one only\n",
        )
    )
    done = install(root, wrapper, "--operator-key", f"{operator}.pub", "--operator-key", f"{spare}.pub")
    assert done.returncode == 0, done.stdout + done.stderr
    assert (
        f"kept config {config}: its gateway.operator_keys does not name operator-spare.key.pub: "
        "add it to the list [...] (a name relative to /etc/citygw, or /etc/citygw/NAME)\n"
    ) in done.stdout


def test_sudo_install_on_a_box_with_an_operator_key_opens_the_config_directory_to_the_service(
    tmp_path: Path,
) -> None:
    """``sudo install.sh --operator-key`` on this machine, every write caught in an overlay."""
    operator = _keygen(tmp_path / "operator", "operator.key")
    wrapper = citygw_wrapper(tmp_path)
    shims = tmp_path / "shims"
    shims.mkdir()
    calls = tmp_path / "calls.log"
    for tool in ("systemctl", "modprobe"):
        (shims / tool).write_text(f'#!/bin/sh\necho "{tool} $*" >>{calls}\n')
        (shims / tool).chmod(0o755)
    changes = tmp_path / "changes"
    mounts = []
    for d in ("etc", "opt", "var", "usr/local", "boot"):
        upper, work = changes / d.replace("/", "-") / "upper", changes / d.replace("/", "-") / "work"
        upper.mkdir(parents=True)
        work.mkdir()
        mounts.append(f"mount -t overlay overlay -o lowerdir=/{d},upperdir={upper},workdir={work} /{d}")
    # a running systemd, as on a box: the script reloads it after writing the drop-in
    mounts.append(f"mount -t tmpfs tmpfs /run && mkdir -p /run/systemd/system && export PATH={shims}:$PATH")
    command = ["bash", str(REPO / "scripts/install.sh"), "--citygw", str(wrapper), "--id", "gw-pole-7"]
    command += ["--operator-key", f"{operator}.pub"]
    probe = (
        " ".join(command) + "; echo '--- after'; stat -c '%a %U:%G' /etc/citygw /etc/citygw/operator.key.pub"
    )
    done = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", " && ".join([*mounts, probe])],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    first, after = done.stdout.split("--- after\n", 1)
    assert after == "770 root:citygw\n640 root:citygw\n", after
    assert "ok: gateway gw-pole-7" in first, "firstboot's citygw check passes on the skeleton"
    assert "operator keys: operator.key.pub in /etc/citygw: signed config documents are taken" in first
    etc = changes / "etc/upper"
    dropin = (etc / "systemd/system/citygw.service.d/remote-config.conf").read_text()
    assert "[Service]\nConfigurationDirectoryMode=0770\n" in dropin
    skeleton = YAML(typ="safe").load(etc / "citygw/config.yaml")
    assert skeleton["gateway"]["operator_keys"] == ["operator.key.pub"]
    assert calls.read_text().count("systemctl daemon-reload") == 2, "after the unit, and after the drop-in"


def test_a_drop_in_of_the_operators_keeps_the_directory_mode_it_sets_and_outlives_uninstall(
    tmp_path: Path,
) -> None:
    root = image_root(tmp_path, "image")
    wrapper = citygw_wrapper(tmp_path)
    done = install(root, wrapper)
    assert done.returncode == 0, done.stdout + done.stderr
    dropins = root / "etc/systemd/system/citygw.service.d"
    dropins.mkdir()
    again = install(root, wrapper)  # an empty drop-in directory: nothing to read, 0750
    assert again.returncode == 0, again.stdout + again.stderr
    assert stat.S_IMODE((root / "etc/citygw").stat().st_mode) == 0o750
    # what `sudo systemctl edit citygw` leaves, as docs/operations.md says for boxes installed otherwise
    (dropins / "override.conf").write_text("[Service]\nConfigurationDirectoryMode=0770\n")
    again = install(root, wrapper)
    assert again.returncode == 0, again.stdout + again.stderr
    assert stat.S_IMODE((root / "etc/citygw").stat().st_mode) == 0o770, "a run does not close it again"

    done = install(root, wrapper, "--uninstall")
    assert done.returncode == 0, done.stdout + done.stderr
    assert (
        dropins / "override.conf"
    ).exists() and f"kept {dropins}: drop-ins of yours are in it" in done.stdout
