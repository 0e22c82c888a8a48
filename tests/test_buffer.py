"""The durable buffer on real SQLite files: seq, chain, staging, cursors, pruning, retention."""

from __future__ import annotations

import hashlib
import itertools
import json
import sqlite3
import time
import zlib
from pathlib import Path

import pytest

from citygw.buffer import KIND_GAP, BatchLimits, Buffer
from citygw.reading import Record
from citygw.wire.signing import Signer

from .support import payload_of, verify_all


def records(start: int, n: int, device: str = "dev-1", t0: float = 1_790_000_000.0) -> list[Record]:
    return [Record(device, "temperature", i, "Cel", t0 + i / 100, 0) for i in range(start, start + n)]


def make(path: Path, key: Path, **kw: object) -> Buffer:
    defaults: dict[str, object] = {
        "gateway": "gw-1",
        "signer": Signer.from_file(key),
        "uplinks": ["a"],
        "limits": BatchLimits(max_readings=100, max_bytes=256 * 1024, max_age=3600),
    }
    defaults.update(kw)
    buf = Buffer(path, **defaults)  # type: ignore[arg-type]
    buf.open()
    return buf


def all_tokens(buf: Buffer) -> list[str]:
    return [b.jws for b in buf.fetch(0, 10_000)]


def test_seals_by_count_and_keeps_the_rest_staged(tmp_path: Path, key: Path) -> None:
    buf = make(tmp_path / "b.db", key)
    result = buf.commit(records(0, 250))
    assert result.accepted == 250
    assert result.sealed == [1, 2]
    assert buf.staged_count == 50
    tokens = all_tokens(buf)
    assert [payload_of(t)["seq"] for t in tokens] == [1, 2]
    assert [len(payload_of(t)["senml"]) for t in tokens] == [100, 100]
    buf.close()


def test_staged_readings_and_seq_survive_a_crash(tmp_path: Path, key: Path) -> None:
    path = tmp_path / "b.db"
    buf = make(path, key)
    buf.commit(records(0, 230))  # seals 1, 2; 30 staged
    # no close(): the process "dies" here; a new one opens the same file
    again = make(path, key)
    assert again.staged_count == 30
    assert again.last_seq == 2
    again.commit(records(230, 70))
    assert again.last_seq == 3
    verified = verify_all(all_tokens(again), key.with_name(key.name + ".pub"))
    assert sorted(verified.by_seq) == [1, 2, 3]
    assert verified.values["dev-1"] == list(range(300))


def test_chain_links_every_batch_to_the_previous_jws(tmp_path: Path, key: Path) -> None:
    buf = make(tmp_path / "b.db", key)
    buf.commit(records(0, 300))
    tokens = all_tokens(buf)
    assert payload_of(tokens[0])["prev"] is None
    for before, after in itertools.pairwise(tokens):
        assert payload_of(after)["prev"] == hashlib.sha256(before.encode()).hexdigest()


def test_seal_all_and_age(tmp_path: Path, key: Path) -> None:
    buf = make(tmp_path / "b.db", key, limits=BatchLimits(max_readings=100, max_age=0.05))
    assert buf.commit(records(0, 10)).sealed == []
    assert buf.seal_due_at() is not None
    time.sleep(0.06)
    assert buf.commit([]).sealed == [1]
    assert buf.commit(records(10, 5), seal_all=True).sealed == [2]
    assert buf.staged_count == 0
    assert buf.seal_due_at() is None


def test_batches_respect_max_bytes(tmp_path: Path, key: Path) -> None:
    buf = make(tmp_path / "b.db", key, limits=BatchLimits(max_readings=10_000, max_bytes=4096, max_age=3600))
    buf.commit(records(0, 2000), seal_all=True)
    tokens = all_tokens(buf)
    assert len(tokens) > 10
    assert all(len(t) <= 4096 for t in tokens)
    verified = verify_all(tokens, key.with_name(key.name + ".pub"))
    assert verified.values["dev-1"] == list(range(2000))


def test_a_batch_never_goes_back_in_time(tmp_path: Path, key: Path) -> None:
    buf = make(tmp_path / "b.db", key)
    late = [Record("dev-2", "co2", 400 + i, "ppm", 1_790_000_100.0 - i, 0) for i in range(5)]
    buf.commit(records(0, 5) + late, seal_all=True)
    pack = payload_of(all_tokens(buf)[0])["senml"]
    base = pack[0]["bt"]
    times = [base + r.get("t", 0) for r in pack]
    assert times == sorted(times)


def test_prune_waits_for_every_uplink(tmp_path: Path, key: Path) -> None:
    buf = make(tmp_path / "b.db", key, uplinks=["a", "b"])
    buf.commit(records(0, 500))
    buf.ack("a", 5)
    buf.commit([])
    assert [b.seq for b in buf.fetch(0, 100)] == [1, 2, 3, 4, 5]
    buf.ack("b", 3)
    buf.commit([])
    assert [b.seq for b in buf.fetch(0, 100)] == [4, 5]
    buf.close()
    again = make(tmp_path / "b.db", key, uplinks=["a", "b"])
    assert again.cursor("a") == 5 and again.cursor("b") == 3


def test_retention_drops_oldest_with_a_signed_gap_record(tmp_path: Path, key: Path) -> None:
    path = tmp_path / "b.db"
    t0 = 1_790_000_000.0
    buf = make(path, key, max_disk=64 * 1024, limits=BatchLimits(max_readings=200, max_age=3600))
    for start in range(0, 40_000, 2000):  # incompressible-ish values so the file really grows
        batch = [
            Record("dev-1", "vs", f"{hashlib.sha1(str(i).encode()).hexdigest()}", "", t0 + i, 0)
            for i in range(start, start + 2000)
        ]
        buf.commit(batch)
    assert buf.used_bytes() <= 64 * 1024 + 8192
    held = buf.fetch(0, 10_000)
    gaps = [b for b in held if b.kind == KIND_GAP]
    assert gaps, "retention should have dropped batches"
    first_gap = payload_of(gaps[0].jws)
    assert first_gap["gap"]["from"] == 1
    assert first_gap["gap"]["reason"] == "max_disk"
    assert first_gap["gap"]["readings"] == 200 * first_gap["gap"]["batches"]
    assert first_gap["prev"] is None
    verified = verify_all([b.jws for b in held], key.with_name(key.name + ".pub"))
    dropped = sum(g["gap"]["readings"] for g in verified.gaps)
    assert dropped + len(verified.values["dev-1"]) + buf.staged_count == 40_000
    assert buf.integrity_check() == "ok"
    buf.close()
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def test_refuses_a_buffer_of_another_schema(tmp_path: Path, key: Path) -> None:
    path = tmp_path / "b.db"
    make(path, key).close()
    with sqlite3.connect(path) as db:
        db.execute("UPDATE meta SET value = 99 WHERE key = 'schema'")
    from citygw.errors import BufferStorageError

    with pytest.raises(BufferStorageError, match="schema 99"):
        make(path, key)


def test_retention_never_drops_a_batch_an_uplink_may_hold(tmp_path: Path, key: Path) -> None:
    """Batches handed to an uplink and not yet acknowledged may be at the platform: a gap record
    must not claim them, so retention drops the oldest batches after them."""
    t0 = 1_790_000_000.0
    buf = make(tmp_path / "b.db", key, max_disk=64 * 1024, limits=BatchLimits(max_readings=200, max_age=3600))
    buf.commit([Record("dev-1", "parkingStatus", f"{i:040x}", "", t0 + i, 0) for i in range(600)])
    assert [b.seq for b in buf.fetch(0, 3, "a")] == [1, 2, 3]  # in flight, no PUBACK yet
    for start in range(600, 40_000, 2000):
        batch = [
            Record("dev-1", "parkingStatus", hashlib.sha1(str(i).encode()).hexdigest(), "", t0 + i, 0)
            for i in range(start, start + 2000)
        ]
        buf.commit(batch)
    held = buf.fetch(0, 10_000)
    assert [b.seq for b in held[:3]] == [1, 2, 3]
    first_gap = payload_of(next(b for b in held if b.kind == KIND_GAP).jws)
    assert first_gap["gap"]["from"] == 4
    assert first_gap["prev"] == hashlib.sha256(held[2].data).hexdigest()
    verify_all([b.jws for b in held], key.with_name(key.name + ".pub"))


def test_staged_rows_keep_the_column_order_files_of_earlier_versions_hold(tmp_path: Path, key: Path) -> None:
    """A staged chunk stores each record as [device, name, unit, value, time, flags] (the first
    stored format; Record's own order has value before unit): a chunk written by an earlier
    version reads back with each field in its place."""
    path = tmp_path / "b.db"
    buf = make(path, key)
    buf.commit([Record("dev-1", "temperature", 21.5, "Cel", 1_790_000_000.0, 0)])
    buf.close()
    with sqlite3.connect(path) as db:
        ((blob,),) = db.execute("SELECT data FROM chunks").fetchall()
        assert json.loads(zlib.decompress(blob)) == [
            ["dev-1", "temperature", "Cel", 21.5, 1_790_000_000.0, 0]
        ]
        earlier = b'[["dev-2", "co2", "ppm", 415, 1790000001.5, 1]]'  # as an earlier version wrote it
        db.execute("UPDATE chunks SET data = ?", (zlib.compress(earlier),))
    again = make(path, key)
    assert again.staged_count == 1
    again.commit([], seal_all=True)
    (token,) = all_tokens(again)
    assert payload_of(token)["senml"] == [
        {
            "bver": 26,  # ppm is a secondary unit (RFC 8798)
            "bn": "gw-1/dev-2/",
            "bt": 1_790_000_001.5,
            "n": "co2",
            "u": "ppm",
            "v": 415,
            "flags": "clock-unsynced",
        }
    ]
