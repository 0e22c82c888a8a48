"""A full disk: the state directory on a small tmpfs this test mounts (needs root; skipped otherwise).

The daemon keeps running while the file system is full, drops the oldest undelivered batches
behind signed gap records (emergency retention), recovers when space returns, never corrupts
its file, and says so in the log once per episode, not once per reading or per batch.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from citygw.buffer import RESERVE_BYTES
from citygw.demo.broker import LocalBroker

from .support import Collector, Daemon, start_load, verify_all

FULL = "is full ("
ROOM = "has room again"


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    mount = tmp_path / "small-fs"
    mount.mkdir()
    size = 3 * RESERVE_BYTES
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "citygw-test", str(mount)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (root is needed): {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "--lazy", str(mount)], check=False)


def gap_count(db_path: Path) -> int:
    with sqlite3.connect(db_path) as db:
        return int(db.execute("SELECT count(*) FROM batches WHERE kind = 1").fetchone()[0])


def test_full_disk_drops_oldest_with_gaps_recovers_and_logs_once(
    tmp_path: Path,
    small_fs: Path,
    key: Path,
    broker: LocalBroker,
    collector: Collector,
    daemon_factory: Callable[[Path], Daemon],
) -> None:
    db_path = small_fs / "buffer.db"
    ballast = small_fs / "ballast"
    ballast.write_bytes(
        b"\0" * (RESERVE_BYTES + 5 * 1024**2 // 2)
    )  # what else fills a box's disk: logs, a core dump...
    log = tmp_path / "daemon.log"
    broker.stop()
    count = 400_000
    daemon = start_load(
        tmp_path,
        key,
        broker.port,
        daemon_factory,
        rate=40_000,
        count=count,
        buffer={"path": str(db_path), "batch": {"max_readings": 500}},
    )
    deadline = time.monotonic() + 40
    while time.monotonic() < deadline and not (log.exists() and FULL in log.read_text()):
        time.sleep(0.2)
    assert FULL in log.read_text(), "the file system never filled up"
    while time.monotonic() < deadline and gap_count(db_path) < 2:
        time.sleep(0.2)
    assert gap_count(db_path) >= 2, "no emergency retention"
    time.sleep(2)  # it keeps taking readings on the full file system
    assert daemon.alive()
    with sqlite3.connect(db_path) as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    ballast.unlink()  # space returns
    broker.start()
    collector.wait(
        lambda c: (
            count - 1
            in set(verify_all(c.snapshot(), key.with_name(key.name + ".pub")).values.get("load-1", []))
        ),
        60,
        "the last reading after the disk-full episode",
    )
    assert daemon.terminate() == 0
    text = log.read_text()
    assert text.count(FULL) == 1, "a full disk is logged once per episode"
    assert text.count(ROOM) == 1
    assert "retention (max_disk)" not in text, "no line per gap record while the disk is full"
    assert "Traceback" not in text
    assert len(text.splitlines()) < 40, text
    verified = verify_all(collector.snapshot(), key.with_name(key.name + ".pub"))  # chain across the gaps
    assert verified.gaps and all(g["gap"]["reason"] == "max_disk" for g in verified.gaps)
    lost = sum(g["gap"]["readings"] for g in verified.gaps)
    assert lost + len(set(verified.values["load-1"])) == count, "every reading arrived or is in a gap"
    with sqlite3.connect(db_path) as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert os.path.getsize(db_path.with_name("buffer.db-reserve")) == RESERVE_BYTES
