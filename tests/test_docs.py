"""The commands and code in the docs work as written."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from gateway.buffer import BatchLimits, Buffer
from gateway.signing import Signer

REPO = Path(__file__).resolve().parent.parent


def code_blocks(doc: Path, language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", doc.read_text(), flags=re.S)


def test_integrator_python_example_verifies_real_batches_and_a_gap(tmp_path: Path, key: Path) -> None:
    buf = Buffer(
        tmp_path / "b.db",
        gateway="gw-doc",
        signer=Signer.from_file(key),
        uplinks=["x"],
        limits=BatchLimits(max_readings=50),
        max_disk=64 * 1024,
    )
    buf.open()
    for start in range(0, 30_000, 1000):
        buf.commit(
            [("dev", "vs", "", f"{i:08x}" * 4, 1_790_000_000.0 + i, 0) for i in range(start, start + 1000)]
        )
    tokens = [b.jws for b in buf.fetch(0, 10_000)]
    buf.close()
    batches = tmp_path / "batches.jws"
    batches.write_text("\n".join(tokens) + "\n")
    (example,) = code_blocks(REPO / "docs" / "integrator.md", "python")
    script = tmp_path / "verify_example.py"
    script.write_text(example)
    done = subprocess.run(
        [sys.executable, str(script), f"{key}.pub", str(batches)], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("gap 1 .. ") and lines[0].endswith("max_disk")
    assert lines[-1].endswith("readings")
