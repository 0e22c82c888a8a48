"""The wheel installs one import package, ``citygw`` (source folders gateway/ and drivers/), so
that it cannot collide with other software's ``gateway`` or ``drivers`` in a shared environment."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_the_wheel_holds_citygw_only_and_every_source_module(tmp_path: Path) -> None:
    # from a clean copy: setuptools reuses a checkout's build/lib, stale files included
    source = tmp_path / "source"
    junk = shutil.ignore_patterns(".*", "build", "dist", "*.egg-info", "__pycache__", "node_modules", "tests")
    shutil.copytree(ROOT, source, ignore=junk)
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "--wheel-dir", str(tmp_path), str(source)],
        check=True,
        timeout=240,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("citygw-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    tops = {name.split("/", 1)[0] for name in names}
    assert {top for top in tops if not top.startswith("citygw-")} == {"citygw"}, tops
    homes = {"gateway": "citygw/", "drivers": "citygw/drivers/"}
    expected = {
        homes[folder] + str(path.relative_to(ROOT / folder))
        for folder in homes
        for path in (ROOT / folder).rglob("*.py")
    }
    assert expected - set(names) == set(), "source modules missing from the wheel (pyproject's packages)"
    assert "citygw/py.typed" in names
