"""Supervision as real processes: one daemon per buffer (an OS lock), and a bug ends the daemon.

A second ``citygw run`` on a buffer is refused while the first keeps delivering to a real
mosquitto; after ``kill -9`` of the first, a new one starts. An error the design does not expect
(here: the buffer's table dropped under the daemon, so every commit fails the same way) stops the
daemon with exit 1 and one traceback, instead of retrying every second for ever.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from citygw.daemon.gateway import TaskFailed, supervise
from citygw.demo.broker import LocalBroker
from citygw.errors import DeliveryError

from .support import Collector, Daemon, citygw, payload_of, verify_all, write_config


def _config(tmp_path: Path, key: Path, broker: LocalBroker) -> Path:
    return write_config(
        tmp_path / "c.yaml",
        key=key,
        port=broker.port,
        devices={"d1": {"bus": "gen", "rate": 100, "values": "sequence"}},
        buffer={"batch": {"max_age": "300ms"}},
    )


def _max_seq(collector: Collector) -> int:
    return max((payload_of(t)["seq"] for t in collector.snapshot()), default=0)


def _wait_exit(proc: subprocess.Popen[bytes], timeout: float) -> int | None:
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        return None


def test_a_second_daemon_on_a_buffer_is_refused_and_a_kill_9_frees_it(
    tmp_path: Path,
    key: Path,
    broker: LocalBroker,
    collector: Collector,
    daemon_factory: Callable[[Path], Daemon],
) -> None:
    config = _config(tmp_path, key, broker)
    buffer = tmp_path / "state" / "buffer.db"
    first = daemon_factory(config)
    first.start()
    assert first.proc is not None
    collector.wait(lambda c: c.readings() > 0, 30, "the first daemon's readings")

    second = citygw("run", "-c", str(config), timeout=30)
    assert second.returncode == 1, second.stderr
    assert f"buffer {buffer} is in use by another citygw daemon (PID {first.proc.pid}" in second.stderr
    assert "event=started" not in second.stderr, "refused before anything started"

    # the first one is untouched: still up, still delivering, one chain without a fork
    seq = _max_seq(collector)
    collector.wait(lambda c: _max_seq(c) > seq + 3, 30, "more batches from the first daemon")
    assert first.alive()
    verify_all(collector.snapshot(), Path(f"{key}.pub"))  # raises on one seq with two contents

    # status finds it by the lock, metrics disabled
    status = citygw("status", "-c", str(config), "--json")
    assert status.returncode == 0, status.stderr
    daemon = json.loads(status.stdout)["daemon"]
    assert daemon["running"] is True and daemon["pid"] == first.proc.pid, daemon
    table = citygw("status", "-c", str(config))
    assert f"running (PID {first.proc.pid})" in table.stdout

    first.kill9()  # the kernel releases the lock with the process
    status = citygw("status", "-c", str(config), "--json")
    assert json.loads(status.stdout)["daemon"] == {"running": False, "pid": None, "metrics": None}
    seq = _max_seq(collector)
    third = daemon_factory(config)
    third.start()
    collector.wait(lambda c: _max_seq(c) > seq + 3, 30, "batches from the daemon started after kill -9")
    assert third.terminate() == 0
    verify_all(collector.snapshot(), Path(f"{key}.pub"))


def test_an_unexpected_error_stops_the_daemon_with_exit_1_and_one_traceback(
    tmp_path: Path,
    key: Path,
    broker: LocalBroker,
    collector: Collector,
    daemon_factory: Callable[[Path], Daemon],
) -> None:
    config = _config(tmp_path, key, broker)
    daemon = daemon_factory(config)
    daemon.start()
    assert daemon.proc is not None
    collector.wait(lambda c: c.readings() > 0, 30, "readings")
    # something the design does not expect: the staging table is gone, every commit fails alike
    with sqlite3.connect(tmp_path / "state" / "buffer.db", timeout=10) as db:
        db.execute("DROP TABLE chunks")
    dropped = time.monotonic()
    code = _wait_exit(daemon.proc, 20)
    assert code == 1, "the daemon must stop (and let systemd restart it), not retry for ever"
    assert time.monotonic() - dropped < 10
    log = (tmp_path / "daemon.log").read_text()
    assert log.count("Traceback (most recent call last)") == 1, log
    failed = [line for line in log.splitlines() if "event=task_failed" in line]
    assert len(failed) == 1 and "task writer failed" in failed[0] and "no such table: chunks" in failed[0]
    assert "level=error" in failed[0]
    assert "task writer failed: OperationalError: no such table: chunks; exit 1" in log
    assert "buffer commit failed" not in log, "not retried as if the disk were full"


async def test_supervise_restarts_after_expected_errors_and_stops_on_a_bug(
    caplog: pytest.LogCaptureFixture,
) -> None:
    runs: list[int] = []

    async def work() -> None:
        runs.append(1)
        if len(runs) <= 2:
            raise ConnectionResetError("peer went away")  # logged once: the same reason twice
        if len(runs) == 3:
            raise DeliveryError("broker refused")
        raise KeyError("bug")

    with pytest.raises(TaskFailed) as failed:
        await asyncio.wait_for(supervise("flaky", work, pause=0.01), 5)
    assert len(runs) == 4
    assert isinstance(failed.value.error, KeyError) and failed.value.task == "flaky"
    restarts = [r for r in caplog.records if getattr(r, "event", None) == "task_restarting"]
    assert [r.getMessage().split(";")[0] for r in restarts] == [
        "task flaky stopped (ConnectionResetError: peer went away)",
        "task flaky stopped (DeliveryError: broker refused)",
    ]
    bugs = [r for r in caplog.records if getattr(r, "event", None) == "task_failed"]
    assert len(bugs) == 1 and bugs[0].exc_info is not None


def test_a_buffer_that_cannot_be_locked_is_a_clear_error(tmp_path: Path, key: Path) -> None:
    (tmp_path / "not-a-dir").write_text("a file where the state directory should be\n")
    buffer = tmp_path / "not-a-dir" / "buffer.db"
    config = write_config(tmp_path / "c.yaml", key=key, port=1883, devices={}, buffer={"path": str(buffer)})
    done = citygw("run", "-c", str(config), timeout=30)
    assert done.returncode == 1
    assert f"cannot lock buffer {buffer}: " in done.stderr and "Traceback" not in done.stderr
