"""The soak, short form: bench/soak.py for 15 s (the long run is a compressed day: 72 minutes).

Checks the bench's contract (one JSON line) and what does not depend on time: open files,
threads and asyncio tasks stay constant after warm-up and every accepted reading arrives. RSS
growth is a figure for the long run (bench/README.md), not asserted here.
"""

from __future__ import annotations

import json
import subprocess
import sys

from .support import REPO


def test_short_soak_is_flat_and_loses_nothing() -> None:
    done = subprocess.run(
        [sys.executable, "bench/soak.py", "--duration", "15", "--interval", "1", "--warmup", "5"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    assert len(lines) == 1, done.stdout
    summary = json.loads(lines[0])
    assert summary["samples"] >= 10
    for key in ("fds", "tasks", "threads"):
        low, high = summary[key]
        assert high - low <= 2, f"{key} not flat: {summary}"
    assert summary["accepted"] >= 12_000
    assert summary["received"] == summary["accepted"], summary
