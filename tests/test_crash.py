"""Crash consistency, short form: a handful of kill -9s of the real daemon (bench/crash.py runs 200+).

See tests/crash.py for what each kill exercises and what is checked after it.
"""

from __future__ import annotations

from pathlib import Path

from citygw.demo.broker import LocalBroker

from .crash import PHASES, CrashHarness
from .support import Collector


def test_kill9_at_random_moments_loses_no_committed_reading(
    tmp_path: Path, key: Path, broker: LocalBroker, collector: Collector
) -> None:
    harness = CrashHarness(tmp_path, key=key, broker=broker, collector=collector, seed=9)
    for phase in PHASES:  # every phase at least once, then random ones
        harness.kill_once(phase)
    for _ in range(4):
        harness.kill_once()
    harness.drain(timeout=60)
    report = harness.verify()
    assert report.kills == 8
    assert report.integrity_failures == 0
    assert report.committed_readings > 0, "no kill found a committed reading: the harness tests nothing"
    assert report.kills_with_staged > 0 and report.kills_with_undelivered > 0
    assert report.lost == 0, f"{report.lost} committed readings never arrived"
    assert report.duplicated_readings == 0
    assert report.seq_conflicts == 0
    assert report.gaps == 0
    assert report.tracebacks == 0
    assert report.ok
