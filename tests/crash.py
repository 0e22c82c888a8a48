"""Crash consistency harness: kill -9 the real daemon at random moments, restart it, count the losses.

Each run of the daemon gets its own synthetic device (``c<run>``) whose reading ``i`` has value
``i``, so every reading is individually identifiable. A run is started in one of four phases
and killed with SIGKILL after a random delay:

  ingesting   broker down, a fast source: readings pile up staged and sealed
  sealing     small batches at a high rate: a seal (new seq, signature, chain link) every few ms
  publishing  broker up right after a backlog built up: the uplink drains in windows
  pruning     broker up, slow source: acknowledgements are persisted and batches deleted each second

After every kill the buffer file is opened with plain sqlite3: ``PRAGMA integrity_check`` must
say ok, every reading it holds is "committed" (it must arrive), and each seq's JWS hash is
recorded (the same seq must never carry other content, on disk or on the wire). A final run
drains everything; then every batch received is verified with jwcrypto, deduplicated by seq,
and every committed reading must be there exactly once.

Used by ``tests/test_crash.py`` (a few kills, in CI) and ``bench/crash.py`` (200+ kills).
"""

from __future__ import annotations

import hashlib
import random
import time
from collections import Counter as Tally
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from citygw.demo.broker import LocalBroker

from .support import Collector, Daemon, payload_of, read_buffer, verify_all, write_config

PHASES = ("ingesting", "sealing", "publishing", "pruning")


@dataclass
class CrashReport:
    kills: int = 0
    integrity_failures: int = 0
    committed_readings: int = 0  # distinct readings found in the buffer file after some kill
    delivered_readings: int = 0  # distinct readings received (after de-duplication by seq)
    lost: int = 0  # committed but never received
    duplicated_readings: int = 0  # one reading received under two different seqs
    seq_conflicts: int = 0  # one seq seen with two different contents (disk or wire)
    batches: int = 0  # distinct seqs received
    redelivered_batches: int = 0  # the same batch received again (at least once: expected)
    gaps: int = 0
    kills_by_phase: dict[str, int] = field(default_factory=dict)
    kills_with_staged: int = 0  # the kill hit while readings were staged, not yet sealed
    kills_with_undelivered: int = 0  # ... while sealed batches waited for the uplink
    tracebacks: int = 0  # in the daemon's log
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not (
            self.integrity_failures
            or self.lost
            or self.duplicated_readings
            or self.seq_conflicts
            or self.gaps
            or self.tracebacks
        )

    def summary(self) -> dict[str, Any]:
        return {"ok": self.ok, **asdict(self)}


class CrashHarness:
    """Runs, kills and restarts the daemon against one broker and one subscriber."""

    def __init__(
        self, workdir: Path, *, key: Path, broker: LocalBroker, collector: Collector, seed: int = 0
    ) -> None:
        self.workdir = workdir
        self.key = key
        self.broker = broker
        self.collector = collector
        self.rng = random.Random(seed)
        self.db_path = workdir / "state" / "buffer.db"
        self.log = workdir / "daemon.log"
        self.must_arrive: dict[str, set[int]] = {}
        self.hashes: dict[int, bytes] = {}
        self.report = CrashReport()
        self.runs = 0
        self.phases: Tally[str] = Tally()
        self.early = 0.15  # share of kills timed from the exec rather than from "running"

    def _daemon(self, *, rate: int, count: int, batch: int) -> Daemon:
        device = f"c{self.runs}"
        self.runs += 1
        config = write_config(
            self.workdir / "config.yaml",
            key=self.key,
            port=self.broker.port,
            devices={device: {"bus": "gen", "rate": rate, "count": count, "values": "sequence"}},
            buffer={"commit_interval": "100ms", "batch": {"max_readings": batch, "max_age": "1s"}},
        )
        daemon = Daemon(config, self.log)
        offset = self.log.stat().st_size if self.log.exists() else 0
        daemon.start()
        if self.rng.random() < self.early:
            return daemon  # the delay counts from the exec: the kill may hit start-up and recovery
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and daemon.alive():
            with self.log.open("rb") as log:
                log.seek(offset)
                if b"running: " in log.read():
                    break
            time.sleep(0.02)
        return daemon

    def _broker_up(self, up: bool) -> None:
        if up:
            self.broker.start()
        else:
            self.broker.stop()

    def _check_after_kill(self) -> None:
        if not self.db_path.exists():  # killed before the buffer was created
            return
        snap = read_buffer(self.db_path)
        if snap.integrity != "ok":
            self.report.integrity_failures += 1
        for device, values in snap.values.items():
            self.must_arrive.setdefault(device, set()).update(values)
        for seq, digest in snap.hashes.items():
            if self.hashes.setdefault(seq, digest) != digest:
                self.report.seq_conflicts += 1
        self.report.kills_with_staged += snap.staged > 0
        self.report.kills_with_undelivered += any(s < snap.next_seq - 1 for s in snap.cursors.values())

    def kill_once(self, phase: str | None = None) -> str:
        """One run of the daemon in ``phase`` (random if None), killed at a random moment."""
        rng = self.rng
        phase = phase or rng.choice(PHASES)
        if phase == "ingesting":
            self._broker_up(rng.random() < 0.2)
            daemon = self._daemon(rate=rng.choice([2_000, 10_000]), count=1_000_000, batch=500)
            delay = rng.uniform(0.1, 2.0)
        elif phase == "sealing":
            self._broker_up(rng.random() < 0.5)
            rate, batch = rng.choice([5_000, 20_000]), rng.choice([20, 100])
            daemon = self._daemon(rate=rate, count=1_000_000, batch=batch)
            delay = rng.uniform(0.1, 1.5)
        elif phase == "publishing":
            self._broker_up(True)
            daemon = self._daemon(rate=1_000, count=1_000_000, batch=200)
            delay = rng.uniform(0.05, 1.5)
        else:  # pruning: acks are persisted with the commit that follows them, about once a second
            self._broker_up(True)
            daemon = self._daemon(rate=200, count=1_000_000, batch=50)
            delay = rng.uniform(0.5, 2.5)
        time.sleep(delay)
        daemon.kill9()
        self.report.kills += 1
        self.phases[phase] += 1
        self._check_after_kill()
        return phase

    def drain(self, timeout: float) -> None:
        """A last run with the broker up, until every committed reading was received."""
        self._broker_up(True)
        daemon = self._daemon(rate=100, count=100, batch=50)
        final = f"c{self.runs - 1}"
        seen: dict[str, set[int]] = {}
        done = 0
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                tokens = self.collector.snapshot()
                for token in tokens[done:]:
                    device = ""
                    for record in payload_of(token).get("senml", []):
                        if "bn" in record:
                            device = record["bn"].split("/")[1]
                        seen.setdefault(device, set()).add(record["v"])
                done = len(tokens)
                if len(seen.get(final, ())) >= 100 and all(
                    values <= seen.get(device, set()) for device, values in self.must_arrive.items()
                ):
                    break
                time.sleep(0.5)
        finally:
            daemon.terminate()

    def verify(self) -> CrashReport:
        report = self.report
        verified = verify_all(self.collector.snapshot(), self.key.with_name(self.key.name + ".pub"))
        report.batches = len(verified.by_seq)
        report.redelivered_batches = verified.duplicates
        report.gaps = len(verified.gaps)
        for seq, token in verified.by_seq.items():
            digest = hashlib.sha256(token.encode()).digest()
            if self.hashes.get(seq, digest) != digest:
                report.seq_conflicts += 1
        delivered = 0
        for values in verified.values.values():
            distinct = set(values)
            delivered += len(distinct)
            report.duplicated_readings += len(values) - len(distinct)
        for device, values in self.must_arrive.items():
            report.lost += len(values - set(verified.values.get(device, [])))
        report.committed_readings = sum(len(v) for v in self.must_arrive.values())
        report.delivered_readings = delivered
        report.kills_by_phase = dict(sorted(self.phases.items()))
        log_text = self.log.read_text(errors="replace") if self.log.exists() else ""
        report.tracebacks = log_text.count("Traceback")
        return report

    def run(self, kills: int, *, drain_timeout: float = 300.0) -> CrashReport:
        started = time.monotonic()
        for _ in range(kills):
            self.kill_once()
        self.drain(drain_timeout)
        report = self.verify()
        report.seconds = round(time.monotonic() - started, 1)
        return report
