"""An SD-card image made with ``install.sh --root``, booted for the first time as boxes would.

The image is a throwaway root tree. "Booting" a box runs the image's own first-boot step
(``/usr/local/lib/citygw/firstboot``, what citygw-firstboot.service starts) in a private mount
namespace where the image's ``/etc``, ``/opt``, ``/var``, ``/usr/local`` and ``/boot`` are mounted
at their real places: the step works at the paths the Pi has, with this machine's ``/usr/bin/python3``
standing in for the Pi's. Nothing is faked but the board's serial number (``/proc/cpuinfo``).
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import pytest

from citygw.wire.signing import load_public_keys

REPO = Path(__file__).resolve().parent.parent
FIRSTBOOT = "/usr/local/lib/citygw/firstboot"
CLONE_OWNER = 4242  # the clone belongs to a person, not to root
SERIAL = "10000000c0ffee42"
MOUNTED = ("etc", "opt", "var", "usr/local", "boot")

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0
    or shutil.which("useradd") is None
    or shutil.which("unshare") is None
    or not Path("/usr/bin/python3").exists(),
    reason="needs root, useradd, unshare (util-linux) and /usr/bin/python3",
)


def _env() -> dict[str, str]:
    """This machine's environment less pip's settings (a Pi has none of them)."""
    return {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}


def _clone(tmp_path: Path) -> Path:
    """A copy of the working tree's files, owned by a person, as `git clone` leaves it."""
    clone = tmp_path / "clone"
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=REPO,
        capture_output=True,
        check=True,
    ).stdout.decode()
    for name in filter(None, listed.split("\0")):
        source = REPO / name
        if source.is_file():
            (clone / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, clone / name)
    for path in [clone, *clone.rglob("*")]:
        os.lchown(path, CLONE_OWNER, CLONE_OWNER)
    return clone


def _tree(top: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(top)): (p.lstat().st_uid, p.lstat().st_gid) for p in top.rglob("*")}


def image_root(tmp_path: Path, name: str) -> Path:
    root = tmp_path / name
    etc = root / "etc"
    etc.mkdir(parents=True)
    (etc / "passwd").write_text("root:x:0:0:root:/root:/bin/bash\n")
    (etc / "group").write_text("root:x:0:\ndialout:x:20:\nbluetooth:x:112:\n")
    (etc / "shadow").write_text("root:*:19000:0:99999:7:::\n")
    (etc / "gshadow").write_text("root:*::\ndialout:*::\nbluetooth:!::\n")
    shutil.copytree("/etc/alternatives", etc / "alternatives", symlinks=True)  # awk, on any Debian
    for directory in ("boot/firmware", "opt", "var", "usr/local"):
        (root / directory).mkdir(parents=True, exist_ok=True)
    return root


def on_box(root: Path, *command: str, cpuinfo: Path | None = None) -> subprocess.CompletedProcess[str]:
    """``command`` with the image mounted where the box has it."""
    mounts = [f"mount --bind {root / d} /{d}" for d in MOUNTED]
    if cpuinfo is not None:
        mounts.append(f"mount --bind {cpuinfo} /proc/cpuinfo")
    script = " && ".join([*mounts, 'exec "$@"'])
    return subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "box", *command],
        capture_output=True,
        text=True,
        env=_env(),
        timeout=300,
        check=False,
    )


def _cpuinfo(tmp_path: Path, serial: str | None) -> Path:
    path = tmp_path / f"cpuinfo-{serial}"
    text = "processor\t: 0\nModel\t\t: Raspberry Pi 4 Model B Rev 1.5\n"
    path.write_text(text + (f"Serial\t\t: {serial}\n" if serial else ""))
    return path


def account_id(root: Path, name: str, *, table: str = "passwd") -> int:
    """The id of user ``name`` in ``root``'s /etc/passwd (or of group ``name``: ``table="group"``)."""
    for line in (root / "etc" / table).read_text().splitlines():
        if line.startswith(f"{name}:"):
            return int(line.split(":")[2])
    raise AssertionError(f"no {table} entry {name}")


def citygw_wrapper(tmp_path: Path) -> Path:
    """An executable ``citygw`` that runs this checkout's (install.sh's ``--citygw``)."""
    wrapper = tmp_path / "citygw"
    wrapper.write_text(f'#!/bin/sh\nPYTHONPATH={REPO} exec {sys.executable} -m citygw "$@"\n')
    wrapper.chmod(0o755)
    return wrapper


def install(
    root: Path, wrapper: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """scripts/install.sh into the image root ``root``, with ``wrapper`` as its citygw."""
    return subprocess.run(
        ["bash", str(REPO / "scripts" / "install.sh"), "--root", str(root), "--citygw", str(wrapper), *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        check=False,
    )


def _config_id(root: Path) -> str:
    match = re.search(r"^gateway:\n  id: (\S+)$", (root / "etc/citygw/config.yaml").read_text(), re.M)
    assert match is not None
    return match[1]


def _kid(pub: Path) -> str:
    (kid,) = load_public_keys([pub])
    return kid


def test_an_image_gives_each_box_its_own_id_and_key_at_first_boot(tmp_path: Path) -> None:
    clone = _clone(tmp_path)
    before = _tree(clone)
    image = image_root(tmp_path, "image")
    version = subprocess.run(
        ["/usr/bin/python3", "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    done = subprocess.run(
        [
            "bash",
            str(clone / "scripts/install.sh"),
            "--root",
            str(image),
            "--arch",
            os.uname().machine,
            "--python",
            version,
        ],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr

    # sudo install.sh from a clone leaves nothing in it (no root-owned build/, citygw.egg-info/)
    assert _tree(clone) == before

    # the image: wheels and the first-boot step, no software built for this machine, no identity
    wheels = image / "usr/local/lib/citygw/wheels"
    names = sorted(p.name for p in wheels.iterdir())
    assert any(n.startswith("pip-") for n in names) and any(n.startswith("cryptography-") for n in names)
    (citygw_wheel,) = wheels.glob("citygw-*.whl")
    with zipfile.ZipFile(citygw_wheel) as wheel:
        metadata = next(wheel.read(n).decode() for n in wheel.namelist() if n.endswith(".dist-info/METADATA"))
    assert "License-Expression: Apache-2.0" in metadata.splitlines()
    assert not (image / "opt/citygw").exists()
    assert not (image / "etc/citygw/signing.key").exists()
    assert _config_id(image) == "set-at-first-boot"
    assert (image / "etc/citygw/firstboot.pending").exists()
    assert os.readlink(image / "usr/local/bin/citygw") == "/opt/citygw/bin/citygw"
    if shutil.which("systemctl"):
        assert (image / "etc/systemd/system/citygw.service.requires/citygw-firstboot.service").is_symlink()
        assert (image / "etc/systemd/system/multi-user.target.wants/citygw-firstboot.service").is_symlink()
    for path in image.rglob("*"):
        if path.is_file() and not path.is_symlink() and path.suffix != ".whl":
            assert str(tmp_path).encode() not in path.read_bytes(), f"{path} names a path of the build host"
    flashed = [tmp_path / "box-b", tmp_path / "box-c"]
    for card in flashed:
        shutil.copytree(image, card, symlinks=True)

    # box A: an installer wrote its id on the boot partition after flashing
    (image / "boot/firmware/citygw").mkdir()
    (image / "boot/firmware/citygw/id").write_text("bkk-pathumwan-0042\r\n")  # Notepad's line end
    boot = on_box(image, FIRSTBOOT)
    assert boot.returncode == 0, boot.stdout + boot.stderr
    venv = image / "opt/citygw"
    cfg = (venv / "pyvenv.cfg").read_text()
    assert "home = /usr/bin\n" in cfg and str(tmp_path) not in cfg
    target = os.readlink(venv / "bin/python")
    while not target.startswith("/"):  # python -> python3 -> the Pi's interpreter
        target = os.readlink(venv / "bin" / target)
    assert target.startswith("/usr/bin/python3"), target
    for script in (venv / "bin").iterdir():
        head = script.read_bytes()[:100]
        if head.startswith(b"#!"):
            assert head.split(b"\n")[0] == b"#!/opt/citygw/bin/python", script
    site = next((venv / "lib").glob("python3.*/site-packages"))
    assert not [p.name for p in site.iterdir() if p.name.split("-")[0] in ("pip", "setuptools")]
    version_on_box = on_box(image, "/usr/local/bin/citygw", "--version")
    assert version_on_box.returncode == 0 and version_on_box.stdout.startswith("citygw "), version_on_box

    key = image / "etc/citygw/signing.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600 and key.stat().st_uid == account_id(image, "citygw")
    assert _config_id(image) == "bkk-pathumwan-0042"
    kid_a = _kid(Path(f"{key}.pub"))
    collected = image / f"boot/firmware/citygw/keys/bkk-pathumwan-0042/{kid_a}.pub"
    assert collected.read_bytes() == Path(f"{key}.pub").read_bytes()
    assert f"key id {kid_a}" in boot.stdout
    assert "ok: gateway bkk-pathumwan-0042" in boot.stdout
    assert not (image / "etc/citygw/firstboot.pending").exists() and not wheels.exists()

    # a receiver's keys DIR is the boot partition's keys folder, copied: DIR/<gateway id>/*.pub
    keys_dir = tmp_path / "receiver-keys"
    shutil.copytree(image / "boot/firmware/citygw/keys", keys_dir)
    assert [_kid(p) for p in (keys_dir / "bkk-pathumwan-0042").glob("*.pub")] == [kid_a]

    # box B: nothing written on the card; its id comes from the board's serial number, also when
    # the image holds a config of the fleet's with an id of its own
    config_b = flashed[0] / "etc/citygw/config.yaml"
    config_b.write_text(config_b.read_text().replace("  id: set-at-first-boot", "  id: fleet-template"))
    boot = on_box(flashed[0], FIRSTBOOT, cpuinfo=_cpuinfo(tmp_path, SERIAL))
    assert boot.returncode == 0, boot.stdout + boot.stderr
    assert _config_id(flashed[0]) == f"rpi-{SERIAL}"
    kid_b = _kid(flashed[0] / "etc/citygw/signing.key.pub")
    assert kid_b != kid_a
    assert (flashed[0] / f"boot/firmware/citygw/keys/rpi-{SERIAL}/{kid_b}.pub").exists()

    # box C: no id anywhere (and a hostname is never one): it says what to do and stays pending
    boot = on_box(flashed[1], FIRSTBOOT, cpuinfo=_cpuinfo(tmp_path, None))
    assert boot.returncode == 1
    assert "no gateway id: write one" in boot.stderr and "/boot/firmware/citygw/id" in boot.stderr
    assert (flashed[1] / "etc/citygw/firstboot.pending").exists()
    assert not (flashed[1] / "etc/citygw/signing.key").exists()

    # box A again, with another --id (install.sh passes its --id on): the id changes, the key stays
    again = on_box(image, FIRSTBOOT, "--id", "bkk-pathumwan-0043")
    assert again.returncode == 0, again.stdout + again.stderr
    assert "changed gateway id from bkk-pathumwan-0042 to bkk-pathumwan-0043" in again.stdout
    assert _config_id(image) == "bkk-pathumwan-0043"
    assert _kid(Path(f"{key}.pub")) == kid_a


def _uname_shim(machine: str) -> Path:
    """A directory with an ``uname`` that says ``machine`` to ``uname -m`` (readable by anyone)."""
    shim = Path(tempfile.mkdtemp(prefix="uname-"))
    shim.chmod(0o755)
    (shim / "uname").write_text(
        f'#!/bin/sh\n[ "$1" = -m ] && echo {machine} && exit 0\nexec /bin/uname "$@"\n'
    )
    (shim / "uname").chmod(0o755)
    return shim


@pytest.mark.parametrize("how", ["this machine", "an image for it"])
def test_install_on_32_bit_arm_says_what_the_box_needs_before_anything_is_done(
    tmp_path: Path, how: str
) -> None:
    shim = _uname_shim("armv7l")
    root = image_root(tmp_path, "image")
    before = _tree(root)
    env = dict(_env(), PATH=f"{shim}:{os.environ['PATH']}")
    if how == "this machine":
        # as nobody: were the check not first, the install would stop at "run as root" (and never
        # touch this machine)
        command = ["setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups"]
        command += ["bash", str(REPO / "scripts/install.sh")]
    else:
        command = ["bash", str(REPO / "scripts/install.sh"), "--root", str(root), "--arch", "armv7l"]
    try:
        done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=120, check=False)
    finally:
        shutil.rmtree(shim)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "this is a 32-bit ARM system (armv7l)" in done.stderr
    assert "cffi and dbus-fast, have no 32-bit ARM wheels on PyPI" in done.stderr
    assert '"Raspberry Pi OS (64-bit)"' in done.stderr and "docs/technician.md" in done.stderr
    assert _tree(root) == before


def test_first_boot_on_32_bit_arm_says_what_the_box_needs() -> None:
    shim = _uname_shim("armv7l")
    try:
        done = subprocess.run(
            ["bash", str(REPO / "scripts/firstboot.sh")],
            capture_output=True,
            text=True,
            env=dict(_env(), PATH=f"{shim}:{os.environ['PATH']}"),
            timeout=60,
            check=False,
        )
    finally:
        shutil.rmtree(shim)
    assert done.returncode == 1
    assert "32-bit system (armv7l): citygw needs 64-bit Raspberry Pi OS" in done.stderr


def _on_this_machine(
    changes: Path, *command: str, cpuinfo: Path, shims: Path
) -> subprocess.CompletedProcess[str]:
    """``command`` as root on this machine, with every write to /etc, /opt, /var, /usr/local and
    /boot going to an overlay's upper directory under ``changes`` (the machine itself is untouched),
    and ``systemctl`` and ``modprobe`` answered by ``shims`` (which log their arguments)."""
    mounts = []
    for d in MOUNTED:
        upper, work = changes / d.replace("/", "-") / "upper", changes / d.replace("/", "-") / "work"
        upper.mkdir(parents=True)
        work.mkdir()
        mounts.append(f"mount -t overlay overlay -o lowerdir=/{d},upperdir={upper},workdir={work} /{d}")
    mounts.append(f"mount --bind {cpuinfo} /proc/cpuinfo")
    script = " && ".join([*mounts, 'exec "$@"'])
    return subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "box", *command],
        capture_output=True,
        text=True,
        env=dict(os.environ, PATH=f"{shims}:{os.environ['PATH']}"),
        timeout=600,
        check=False,
    )


@pytest.mark.long  # two installs, each building every wheel: a minute or two
def test_sudo_install_from_a_clone_on_a_box_leaves_the_clone_alone_and_prints_the_ids(
    tmp_path: Path,
) -> None:
    clone = _clone(tmp_path)
    before = _tree(clone)
    shims = tmp_path / "shims"
    shims.mkdir()
    calls = tmp_path / "calls.log"
    for tool in ("systemctl", "modprobe"):
        (shims / tool).write_text(f'#!/bin/sh\necho "{tool} $*" >>{calls}\n')
        (shims / tool).chmod(0o755)
    changes = tmp_path / "changes"
    on_box_script = ["bash", str(clone / "scripts/install.sh")]
    cpuinfo = _cpuinfo(tmp_path, SERIAL)
    probe = (
        "set -e; {install}; echo '--- after'; ls /opt/citygw/lib/*/site-packages; "
        "head -n 1 /opt/citygw/bin/citygw; cat /opt/citygw/pyvenv.cfg; /usr/local/bin/citygw --version; "
        "stat -c '%a %U' /etc/citygw/signing.key; sed -n 's/^  id: //p' /etc/citygw/config.yaml; "
        "{again}; sed -n 's/^  id: //p' /etc/citygw/config.yaml"
    ).format(
        install=" ".join(on_box_script),
        again=" ".join([*on_box_script, "--id", "bkk-pathumwan-0042"]),
    )
    done = _on_this_machine(changes, "bash", "-c", probe, cpuinfo=cpuinfo, shims=shims)
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert _tree(clone) == before, "sudo install.sh wrote into the clone"

    first, after = out.split("--- after\n", 1)
    assert f"gateway id rpi-{SERIAL} (from the board's serial number)" in first
    kid = re.search(r"key id (\S+): the platform's keys DIR needs", first)
    assert kid is not None, first
    listed = after.split("#!", 1)[0].split()
    assert not [n for n in listed if n.split("-")[0] in ("pip", "setuptools")], listed
    assert "#!/opt/citygw/bin/python\n" in after
    assert "home = /usr/bin\n" in after and str(tmp_path) not in after.split("citygw ", 1)[0]
    assert re.search(r"^citygw \S+$", after, re.M), "the installed citygw runs"
    assert "\n600 citygw\n" in after
    assert f"\nrpi-{SERIAL}\n" in after
    assert "changed gateway id from rpi-" in after and after.rstrip().endswith("bkk-pathumwan-0042")
    assert after.count(f"key id {kid[1]}") == 1, "the second run kept the key"
    assert "enable citygw.service" in calls.read_text()


def test_first_boot_names_the_python_an_image_was_made_for_when_the_box_has_another(
    tmp_path: Path,
) -> None:
    root = image_root(tmp_path, "image")
    (root / "etc/citygw").mkdir()
    (root / "etc/citygw/config.yaml").write_text("gateway:\n  id: set-at-first-boot\n")
    (root / "etc/citygw/firstboot.pending").write_text("id=gw-1\n")
    lib = root / "usr/local/lib/citygw"
    (lib / "wheels").mkdir(parents=True)
    shutil.copy(REPO / "scripts/firstboot.sh", lib / "firstboot")
    for name in ("pip-26.0-py3-none-any.whl", "citygw-0.1.0-py3-none-any.whl"):
        (lib / "wheels" / name).touch()
    (lib / "wheels/frozenlist-1.8.0-cp399-cp399-manylinux_2_17_aarch64.whl").touch()
    done = on_box(root, FIRSTBOOT)
    assert done.returncode == 1
    assert (
        "the wheels in /usr/local/lib/citygw/wheels are for python 3.99, this box has Python 3."
        in done.stderr
    )
    assert "prepare the image again with install.sh --root DIR --python 3." in done.stderr
    assert not (root / "opt/citygw").exists()
