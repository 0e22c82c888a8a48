"""The walking skeleton end to end: `citygw run` (a real subprocess) -> real mosquitto -> jwcrypto.

Every batch received is verified with jwcrypto (not our code), the seq must be contiguous and
the hash chain intact; readings carry their index as value, so "nothing lost" is checked
reading by reading.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from citygw.demo.broker import LocalBroker

from .support import Collector, Daemon, committed_values, read_buffer, start_load, verify_all, wait_until


def pub(key: Path) -> Path:
    return key.with_name(key.name + ".pub")


def test_100k_readings_arrive_verified_contiguous_and_chained(
    tmp_path: Path,
    key: Path,
    broker: LocalBroker,
    collector: Collector,
    daemon_factory: Callable[[Path], Daemon],
) -> None:
    daemon = start_load(tmp_path, key, broker.port, daemon_factory, rate=50_000, count=100_000)
    collector.wait(lambda c: c.readings() >= 100_000, 120, "100,000 readings")
    started = time.monotonic()
    assert daemon.terminate() == 0
    assert time.monotonic() - started < 5.0, "SIGTERM must flush and exit within a few seconds"
    verified = verify_all(collector.snapshot(), pub(key))
    assert sorted(verified.by_seq) == list(range(1, len(verified.by_seq) + 1))
    assert verified.values["load-1"] == list(range(100_000))
    assert not verified.gaps


def test_broker_outage_of_10s_loses_nothing(
    tmp_path: Path,
    key: Path,
    broker: LocalBroker,
    collector: Collector,
    daemon_factory: Callable[[Path], Daemon],
) -> None:
    daemon = start_load(tmp_path, key, broker.port, daemon_factory, rate=10_000, count=100_000)
    collector.wait(lambda c: c.readings() >= 10_000, 60, "the first readings")
    broker.stop()
    time.sleep(10)
    assert daemon.alive()
    broker.start()
    collector.wait(lambda c: c.readings() >= 100_000, 120, "all 100,000 readings after the outage")
    assert daemon.terminate() == 0
    verified = verify_all(collector.snapshot(), pub(key))
    assert sorted(set(verified.values["load-1"])) == list(range(100_000))
    assert sorted(verified.by_seq) == list(range(1, max(verified.by_seq) + 1))


def test_kill9_while_broker_down_and_while_draining_loses_no_committed_reading(
    tmp_path: Path,
    key: Path,
    broker: LocalBroker,
    collector: Collector,
    daemon_factory: Callable[[Path], Daemon],
) -> None:
    """Each run uses its own device id, so readings of different runs never look alike."""
    db_path = tmp_path / "state" / "buffer.db"
    must_arrive: dict[str, set[int]] = {}

    def run(device: str, rate: int, count: int, **extra: Any) -> Daemon:
        return start_load(
            tmp_path, key, broker.port, daemon_factory, rate=rate, count=count, device=device, **extra
        )

    def kill(daemon: Daemon) -> None:
        daemon.kill9()
        for device, values in committed_values(db_path).items():
            must_arrive.setdefault(device, set()).update(values)

    def buffered(device: str, at_least: int) -> Callable[[], bool]:
        return lambda: len(read_buffer(db_path).values.get(device, ())) >= at_least

    # 1: deliver some, then the broker goes away and the daemon is killed while it buffers
    daemon = run("run-1", 2_000, 40_000)
    collector.wait(lambda c: c.readings() >= 4_000, 60, "first deliveries")
    broker.stop()
    held = len(read_buffer(db_path).values.get("run-1", ()))
    wait_until(buffered("run-1", held + 4_000), 60, "readings buffered while the broker is down")
    kill(daemon)
    # 2: restart with the broker still down, buffer more, kill again
    daemon = run("run-2", 2_000, 10_000)
    daemon.wait_ready()
    wait_until(buffered("run-2", 4_000), 60, "run-2's readings buffered")
    kill(daemon)
    # 3: broker back; kill the daemon in the middle of its drain
    broker.start()
    received = len(collector.snapshot())
    daemon = run("run-3", 2_000, 4_000)
    daemon.wait_ready()
    collector.wait(lambda c: len(c.snapshot()) > received, 60, "the drain to begin")
    kill(daemon)
    # 4: a last run drains everything
    daemon = run("run-4", 1_000, 1_000, buffer={"batch": {"max_age": "500ms"}})  # its last batch at once
    total_needed = sum(len(v) for v in must_arrive.values())

    def drained(c: Collector) -> bool:
        got = verify_all(c.snapshot(), pub(key)).values
        return all(values <= set(got.get(device, [])) for device, values in must_arrive.items()) and (
            len(got.get("run-4", [])) >= 1_000
        )

    collector.wait(drained, 120, f"every committed reading ({total_needed}) to arrive")
    assert daemon.terminate() == 0
    verified = verify_all(collector.snapshot(), pub(key))  # same seq never carries other content
    assert sorted(verified.by_seq) == list(range(1, max(verified.by_seq) + 1))
    for device, values in verified.values.items():
        assert len(set(values)) == max(values) + 1, f"{device}: readings arrived with holes"


def test_retention_with_a_tiny_max_disk_sends_gap_records(
    tmp_path: Path,
    key: Path,
    broker: LocalBroker,
    collector: Collector,
    daemon_factory: Callable[[Path], Daemon],
) -> None:
    db_path = tmp_path / "state" / "buffer.db"
    broker.stop()
    daemon = start_load(
        tmp_path,
        key,
        broker.port,
        daemon_factory,
        rate=20_000,
        count=200_000,
        buffer={"max_disk": "64KiB", "batch": {"max_readings": 500}},
    )
    daemon.wait_ready()  # its buffer file holds its tables
    deadline, gaps = time.monotonic() + 60, 0
    while time.monotonic() < deadline:
        time.sleep(0.5)
        with sqlite3.connect(db_path) as db:
            gaps = db.execute("SELECT count(*) FROM batches WHERE kind = 1").fetchone()[0]
        if gaps >= 2:
            break
    assert gaps >= 2, "retention never dropped anything"
    assert daemon.alive()
    with sqlite3.connect(db_path) as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    log_text = (tmp_path / "daemon.log").read_text()
    assert "retention (max_disk): dropped batches 1.." in log_text
    broker.start()
    collector.wait(
        lambda c: (
            bool(verify_all(c.snapshot(), pub(key)).values.get("load-1"))
            and max(verify_all(c.snapshot(), pub(key)).values["load-1"]) == 199_999
        ),
        120,
        "the last reading after the gaps",
    )
    assert daemon.terminate() == 0
    verified = verify_all(collector.snapshot(), pub(key))  # the chain crosses every gap record
    assert verified.gaps
    assert verified.gaps[0]["gap"]["from"] == 1
    assert all(g["gap"]["reason"] == "max_disk" for g in verified.gaps)
    lost = sum(g["gap"]["readings"] for g in verified.gaps)
    assert lost + len(set(verified.values["load-1"])) == 200_000
