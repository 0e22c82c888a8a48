"""A clock step never ages the backlog (issue 15 item 2): the real daemon under libfaketime.

A box without RTC boots 40 days behind with its uplink down; when NTP steps the clock forward,
``retention (max_age)`` used to drop every batch held as if it were 40 days old. Ages are now
measured on the buffer's monotonic clock: the step drops nothing, and batches that really waited
``max_age`` still go.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from citygw.demo.broker import free_port

from .support import LIBFAKETIME, Daemon, write_config

MAX_AGE = 60.0  # buffer.max_age: the smallest the config allows


def _last_seq(path: Path) -> int:
    if not path.exists():
        return 0
    try:
        with sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True) as db:
            row = db.execute("SELECT value FROM meta WHERE key = 'next_seq'").fetchone()
    except sqlite3.OperationalError:  # the daemon is creating it
        return 0
    return 0 if row is None else int(row[0]) - 1


class Box:
    """The daemon behind a stepped clock (libfaketime reads its offset file on every call)."""

    def __init__(
        self, tmp_path: Path, key: Path, factory: Callable[[Path], Daemon], clock_state: Path
    ) -> None:
        if LIBFAKETIME is None:
            pytest.fail("libfaketime is missing: scripts/dev installs it (apt package faketime)")
        self.offset_file = tmp_path / "faketime"
        self.offset_file.write_text("-40d\n")  # booted 40 days behind
        self.clock_state = clock_state
        clock_state.write_text("unsynced\n")
        config = write_config(
            tmp_path / "c.yaml",
            key=key,
            port=free_port(),  # the uplink is down: nothing is delivered, everything is held
            devices={"d1": {"bus": "gen", "rate": 50, "values": "sequence"}},
            buffer={"max_age": f"{MAX_AGE:.0f}s", "batch": {"max_age": "300ms"}},
        )
        self.path = tmp_path / "state" / "buffer.db"
        self.daemon = factory(config)
        self.daemon.prefix = [
            "env",
            f"LD_PRELOAD={LIBFAKETIME}",
            f"FAKETIME_TIMESTAMP_FILE={self.offset_file}",
            "FAKETIME_NO_CACHE=1",
            "FAKETIME_DONT_FAKE_MONOTONIC=1",  # NTP steps the wall clock, never the monotonic one
        ]
        self.seen: dict[int, float] = {}  # seq -> monotonic time this test first saw it sealed

    def watch(self, until: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            last = _last_seq(self.path)
            now = time.monotonic()
            for seq in range(1, last + 1):
                self.seen.setdefault(seq, now)
            if until():
                return
            time.sleep(0.1)
        raise AssertionError(f"timed out after {timeout} s waiting for {what}:\n{self.log()[-3000:]}")

    def log(self) -> str:
        return self.daemon.log.read_text(errors="replace") if self.daemon.log.exists() else ""

    def step_forward(self) -> float:
        """NTP synchronises: the wall clock jumps 40 days ahead."""
        self.offset_file.write_text("+0d\n")
        self.clock_state.write_text("synced\n")
        return time.monotonic()

    def gap_records(self) -> int:
        with sqlite3.connect(f"{self.path.as_uri()}?mode=ro", uri=True) as db:
            return int(db.execute("SELECT count(*) FROM batches WHERE kind = 1").fetchone()[0])


def _step_and_check_nothing_dropped(box: Box) -> int:
    box.daemon.start()
    box.watch(lambda: _last_seq(box.path) >= 3, 30, "three batches sealed 40 days behind")
    box.step_forward()
    # the buffer says when it sees the step; its retention check runs at least once a second
    box.watch(
        lambda: "wall clock stepped" in box.log() or "retention (max_age)" in box.log(),
        30,
        "the buffer to see the clock step",
    )
    at_step = _last_seq(box.path)
    box.watch(lambda: _last_seq(box.path) >= at_step + 8, 30, "eight more batches after the step")
    assert "retention (max_age)" not in box.log()
    assert box.gap_records() == 0
    return at_step


def test_a_clock_step_forward_drops_no_recent_batch(
    tmp_path: Path, key: Path, daemon_factory: Callable[[Path], Daemon], synced_clock: Path
) -> None:
    box = Box(tmp_path, key, daemon_factory, synced_clock)
    _step_and_check_nothing_dropped(box)
    assert box.daemon.terminate() == 0
    assert box.log().count("wall clock stepped") == 1


@pytest.mark.long
def test_batches_that_really_waited_max_age_still_go_after_a_clock_step(
    tmp_path: Path, key: Path, daemon_factory: Callable[[Path], Daemon], synced_clock: Path
) -> None:
    box = Box(tmp_path, key, daemon_factory, synced_clock)
    _step_and_check_nothing_dropped(box)
    box.watch(lambda: "retention (max_age)" in box.log(), MAX_AGE + 30, "max_age to drop the oldest batches")
    dropped_at = time.monotonic()
    assert box.daemon.terminate() == 0
    line = next(line for line in box.log().splitlines() if "retention (max_age)" in line)
    first, last = (int(n) for n in line.split("dropped batches ")[1].split(" ")[0].split(".."))
    assert first == 1
    for seq in range(first, last + 1):  # each had waited max_age (this test saw it within 0.2 s of sealing)
        assert dropped_at - box.seen[seq] >= MAX_AGE - 1.0, (seq, dropped_at - box.seen[seq])
