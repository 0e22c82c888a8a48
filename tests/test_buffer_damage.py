"""A damaged buffer never stops the box: real files with real damage, the daemon as a real subprocess.

Issue 15 items 3 (a damaged stored batch), 4 (a damaged file at start) and issue 16 item 2 (each
buffer's stream is its own chain: ``v``, ``chain``, and ``reset`` after a file was moved aside).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sqlite3
import struct
import subprocess
import sys
import time
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from citygw.buffer import KIND_GAP, BatchLimits, Buffer
from citygw.buffer.wal import scan as wal_scan
from citygw.demo.broker import LocalBroker, free_port
from citygw.reading import Record
from citygw.wire.signing import Signer

from .support import REPO, Collector, Daemon, payload_of, read_buffer, verify_all, write_config
from .test_ops_status import sample, scrape

CHAIN_CHARS = set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")


def records(start: int, n: int, device: str = "dev-1") -> list[Record]:
    return [
        Record(device, "temperature", i, "Cel", 1_790_000_000.0 + i / 100, 0) for i in range(start, start + n)
    ]


def make(path: Path, key: Path, gateway: str = "gw-test", **kw: Any) -> Buffer:
    buf = Buffer(
        path,
        gateway=gateway,
        signer=Signer.from_file(key),
        uplinks=["local"],
        limits=BatchLimits(max_readings=100, max_age=3600),
        **kw,
    )
    buf.open()
    return buf


def flip(path: Path, blob: bytes, n: int = 8) -> None:
    """Flip ``n`` bytes in the middle of where ``blob`` is stored in the file at ``path``."""
    data = bytearray(path.read_bytes())
    at = data.find(blob)
    assert at >= 0 and data.find(blob, at + 1) < 0, "the blob is not stored exactly once in one piece"
    middle = at + len(blob) // 2 - n // 2
    for i in range(middle, middle + n):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


def status_json(config: Path) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-m", "citygw", "status", "-c", str(config), "--json"],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
        check=True,
    )
    return json.loads(done.stdout)  # type: ignore[no-any-return]


def wait_log(log: Path, text: str, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        content = log.read_text(errors="replace") if log.exists() else ""
        if text in content:
            return content
        time.sleep(0.1)
    raise AssertionError(
        f"no {text!r} in the log within {timeout} s:\n{log.read_text(errors='replace')[-3000:]}"
    )


# -- the chain on the wire (issue 16 item 2) -------------------------------------------------------


def test_payloads_carry_the_contract_version_and_the_buffers_chain(tmp_path: Path, key: Path) -> None:
    buf = make(tmp_path / "a.db", key)
    buf.commit(records(0, 250))
    buf.commit([], seal_all=True)
    tokens = [b.jws for b in buf.fetch(0, 100)]
    chain = buf.chain
    assert len(chain) == 22 and set(chain) <= CHAIN_CHARS
    for token in tokens:
        body = payload_of(token)
        assert list(body) == ["v", "gateway", "chain", "seq", "prev", "created", "senml"]
        assert body["v"] == 2 and body["chain"] == chain
    assert payload_of(tokens[0])["seq"] == 1 and payload_of(tokens[0])["prev"] is None
    buf.close()
    again = make(tmp_path / "a.db", key)
    assert again.chain == chain  # the chain is the file's, across restarts
    other = make(tmp_path / "b.db", key)  # a new buffer: a new chain, seq 1, prev null
    other.commit(records(0, 100))
    first = payload_of(other.fetch(0, 1)[0].jws)
    assert first["chain"] != chain and first["seq"] == 1 and first["prev"] is None and "reset" not in first


def test_a_gap_record_carries_version_and_chain(tmp_path: Path, key: Path) -> None:
    buf = make(tmp_path / "a.db", key, max_disk=64 * 1024)
    for i in range(30):
        buf.commit(records(i * 200, 200))
    gaps = [b for b in buf.fetch(0, 10_000) if b.kind == KIND_GAP]
    assert gaps
    body = payload_of(gaps[0].jws)
    assert list(body) == ["v", "gateway", "chain", "gap", "prev", "last", "created"]
    assert body["v"] == 2 and body["chain"] == buf.chain


def test_a_buffer_made_by_older_code_gets_a_chain_and_keeps_its_seqs(tmp_path: Path, key: Path) -> None:
    path = tmp_path / "old.db"
    buf = make(path, key)
    buf.commit(records(0, 300))
    buf.close()
    with sqlite3.connect(path) as db:  # what citygw wrote before chains and the buffer clock
        db.execute("ALTER TABLE batches DROP COLUMN held")
        db.execute("DELETE FROM meta WHERE key IN ('chain', 'clock')")
        db.execute("UPDATE meta SET value = 1 WHERE key = 'schema'")
    again = make(path, key)
    assert again.chain and again.last_seq == 3
    again.commit(records(300, 100))
    tokens = [b.jws for b in again.fetch(0, 100)]
    assert [payload_of(t)["seq"] for t in tokens] == [1, 2, 3, 4]
    assert payload_of(tokens[-1])["chain"] == again.chain
    assert payload_of(tokens[-1])["prev"] == hashlib.sha256(tokens[-2].encode()).hexdigest()


# -- a damaged file at start (issue 15 item 4) -----------------------------------------------------


def _corrupt_chunk(path: Path, key: Path) -> str | None:
    buf = make(path, key)
    buf.commit(records(0, 250))  # seals 1 and 2; 50 staged
    chain = buf.chain
    buf.close()
    with sqlite3.connect(path) as db:
        (blob,) = db.execute("SELECT data FROM chunks").fetchone()
    flip(path, bytes(blob))
    return chain


def _truncated(path: Path, key: Path) -> str | None:
    buf = make(path, key)
    for i in range(20):
        buf.commit(records(i * 250, 250))
    buf.close()
    size = path.stat().st_size
    with path.open("r+b") as f:
        f.truncate(size // 2 // 4096 * 4096)
    return None  # the meta table cannot be read any more: no reset


def _not_sqlite(path: Path, key: Path) -> str | None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"this is a text file someone copied over the buffer\n" * 100)
    return None


@pytest.mark.parametrize("damage", [_corrupt_chunk, _truncated, _not_sqlite], ids=lambda f: f.__name__[1:])
def test_a_damaged_buffer_file_is_moved_aside_and_the_box_goes_on_collecting(
    tmp_path: Path,
    key: Path,
    broker: LocalBroker,
    collector: Collector,
    daemon_factory: Callable[[Path], Daemon],
    damage: Callable[[Path, Path], str | None],
) -> None:
    state = tmp_path / "state"
    state.mkdir()
    path = state / "buffer.db"
    old_chain = damage(path, key)
    damaged = path.read_bytes()
    metrics = free_port()
    config = write_config(
        tmp_path / "c.yaml",
        key=key,
        port=broker.port,
        devices={"d1": {"bus": "gen", "rate": 100, "count": 200, "values": "sequence"}},
        buffer={"batch": {"max_age": "300ms"}},
        metrics={"listen": f"127.0.0.1:{metrics}"},
    )
    daemon = daemon_factory(config)
    daemon.start()
    collector.wait(lambda c: c.readings() >= 200, 30, "the 200 readings of the fresh buffer")
    samples = scrape(metrics)
    status = status_json(config)
    assert daemon.terminate() == 0

    log = daemon.log.read_text()
    moved = [line for line in log.splitlines() if "moved aside to" in line]
    assert len(moved) == 1, log
    kept = sorted(state.glob("buffer.db.damaged-*"))
    assert [p.name for p in kept if not p.name.endswith(("-wal", "-shm"))] == [kept[0].name]
    assert kept[0].name in moved[0] and str(path) in moved[0]
    assert kept[0].read_bytes()[:100] == damaged[:100]  # kept as it was
    assert "Traceback" not in log

    tokens = collector.snapshot()
    verified = verify_all(tokens, key.with_name(key.name + ".pub"))
    assert verified.values["d1"] == list(range(200))
    first = payload_of(min(tokens, key=lambda t: payload_of(t)["seq"]))
    assert first["seq"] == 1 and first["prev"] is None and first["chain"] != old_chain
    if old_chain is None:
        assert "reset" not in first
    else:
        assert first["reset"] == {"chain": old_chain, "seq": 2, "reason": "corrupt"}
        assert list(first) == ["v", "gateway", "chain", "seq", "prev", "created", "reset", "senml"]
    assert all("reset" not in payload_of(t) for t in tokens if payload_of(t)["seq"] > 1)

    assert sample(samples, "citygw_buffer_moved_aside", file=kept[0].name) == 1
    assert status["buffer"]["moved_aside"]["file"] == kept[0].name
    assert status["buffer"]["chain"] == first["chain"]


def test_a_buffer_of_another_gateway_id_is_refused_with_exit_78(
    tmp_path: Path, key: Path, broker: LocalBroker, daemon_factory: Callable[[Path], Daemon]
) -> None:
    state = tmp_path / "state"
    path = state / "buffer.db"
    buf = make(path, key, gateway="gw-elsewhere")
    buf.commit(records(0, 150))
    buf.close()
    before = path.read_bytes()
    config = write_config(
        tmp_path / "c.yaml",
        key=key,
        port=broker.port,
        devices={"d1": {"bus": "gen", "rate": 10}},
    )
    daemon = daemon_factory(config)
    daemon.start()
    assert daemon.proc is not None
    assert daemon.proc.wait(30) == 78
    log = daemon.log.read_text()
    assert "'gw-elsewhere'" in log and "'gw-test'" in log and str(path) in log
    assert "Traceback" not in log
    assert path.read_bytes() == before  # not adopted, not touched
    assert not list(state.glob("*.damaged-*"))


# -- a damaged stored batch (issue 15 item 3) ------------------------------------------------------


def _buffer_with_damaged_batch_3(
    tmp_path: Path, key: Path, daemon_factory: Callable[[Path], Daemon], metrics: int
) -> dict[int, list[Any]]:
    """A box that collected 600 readings with its uplink down (6 batches held), then batch 3's
    stored payload damaged on disk where SQLite does not see it. The values of each batch, by seq."""
    down = write_config(
        tmp_path / "down.yaml",
        key=key,
        port=free_port(),
        devices={"d1": {"bus": "gen", "rate": 200, "count": 600, "values": "sequence"}},
        buffer={"batch": {"max_readings": 100, "max_age": "300ms"}},
        metrics={"listen": f"127.0.0.1:{metrics}"},
    )
    daemon = daemon_factory(down)
    daemon.start()
    path = tmp_path / "state" / "buffer.db"
    wait_log(daemon.log, "running", 30)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True) as db:
            if db.execute("SELECT coalesce(sum(readings), 0) FROM batches").fetchone()[0] >= 600:
                break
        time.sleep(0.2)
    assert daemon.terminate() == 0
    with sqlite3.connect(path) as db:
        stored = {
            seq: [r["v"] for r in json.loads(zlib.decompress(payload))["senml"]]
            for seq, payload in db.execute("SELECT seq, payload FROM batches ORDER BY seq")
        }
        (blob,) = db.execute("SELECT payload FROM batches WHERE seq = 3").fetchone()
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert sum(map(len, stored.values())) == 600 and len(stored) >= 4
    flip(path, bytes(blob))
    with sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True) as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"  # SQLite sees nothing wrong
    return stored


def test_a_damaged_batch_is_quarantined_behind_a_gap_record_and_the_rest_is_delivered(
    tmp_path: Path,
    key: Path,
    broker: LocalBroker,
    collector: Collector,
    daemon_factory: Callable[[Path], Daemon],
) -> None:
    metrics = free_port()
    stored = _buffer_with_damaged_batch_3(tmp_path, key, daemon_factory, metrics)

    # then the uplink is back
    up = write_config(
        tmp_path / "up.yaml",
        key=key,
        port=broker.port,
        devices={"d1": {"bus": "gen", "rate": 200, "count": 1, "values": "sequence"}},
        buffer={"batch": {"max_readings": 100, "max_age": "300ms"}},
        metrics={"listen": f"127.0.0.1:{metrics}"},
    )
    daemon = daemon_factory(up)
    daemon.start()
    head = max(stored) + 1  # the one reading of this run
    collector.wait(
        lambda c: (
            {payload_of(t).get("seq", payload_of(t).get("gap", {}).get("to")) for t in c.snapshot()}
            >= set(range(1, head + 1))
        ),
        30,
        f"seqs 1..{head} (the gap record for 3 among them)",
    )
    samples = scrape(metrics)
    assert daemon.terminate() == 0

    log = daemon.log.read_text()
    assert "task uplink-local crashed" not in log and "Traceback" not in log
    assert len([line for line in log.splitlines() if "batch 3 " in line and "damaged" in line]) == 1
    verified = verify_all(collector.snapshot(), key.with_name(key.name + ".pub"))
    assert sorted(verified.by_seq) == [s for s in range(1, head + 1) if s != 3]
    assert len(verified.gaps) == 1
    gap = verified.gaps[0]
    assert gap["gap"] == {"from": 3, "to": 3, "batches": 1, "readings": len(stored[3]), "reason": "corrupt"}
    assert gap["v"] == 2 and gap["chain"] == payload_of(verified.by_seq[1])["chain"]
    expected = [v for seq in sorted(stored) if seq != 3 for v in stored[seq]] + [0]
    assert verified.values["d1"] == expected
    assert sample(samples, "citygw_buffer_corrupt_batches_total") == 1


def test_a_damaged_batchs_gap_record_passes_an_ngsi_ld_uplink_and_the_rest_is_upserted(
    tmp_path: Path, key: Path, daemon_factory: Callable[[Path], Daemon]
) -> None:
    """An NGSI-LD uplink has nothing to upsert for a gap record: it goes past it (its cursor
    moves over it) and upserts every batch after it, each entity naming the batch it came from."""
    from aiohttp import web

    from .test_uplinks_http import ScriptedServer

    metrics = free_port()
    stored = _buffer_with_damaged_batch_3(tmp_path, key, daemon_factory, metrics)
    upserted: list[dict[str, Any]] = []

    async def context_broker(request: web.Request, body: bytes) -> web.StreamResponse:
        upserted.extend(json.loads(body))
        return web.Response(status=204)

    def sources() -> set[int]:  # urn:citygw:{gateway}:batch:{seq}:{jws hash}
        return {int(e["source"]["value"].split(":")[4]) for e in list(upserted)}

    server = ScriptedServer(context_broker)
    try:
        up = write_config(
            tmp_path / "up.yaml",
            key=key,
            port=free_port(),
            devices={"d1": {"bus": "gen", "rate": 200, "count": 1, "values": "sequence"}},
            buffer={"batch": {"max_readings": 100, "max_age": "300ms"}},
            metrics={"listen": f"127.0.0.1:{metrics}"},
        )
        data = json.loads(up.read_text())
        data["gateway"]["location"] = {"latitude": 13.7465, "longitude": 100.5348}
        data["uplinks"] = {
            "local": {"type": "ngsi-ld", "url": f"http://127.0.0.1:{server.port}", "backoff_initial": "200ms"}
        }
        up.write_text(json.dumps(data))
        daemon = daemon_factory(up)
        daemon.start()
        head = max(stored) + 1  # the one reading of this run
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and sources() != {s for s in range(1, head + 1) if s != 3}:
            time.sleep(0.1)
        assert sources() == {s for s in range(1, head + 1) if s != 3}, sorted(sources())
        assert daemon.terminate() == 0
    finally:
        server.close()
    log = daemon.log.read_text()
    assert "Traceback" not in log and "batch_corrupt" in log
    with sqlite3.connect(tmp_path / "state" / "buffer.db") as db:
        (cursor,) = db.execute("SELECT seq FROM cursors WHERE uplink = 'local'").fetchone()
    assert cursor == head  # past the gap record, to the last batch


# -- a damaged WAL (issue 15 item 8) ---------------------------------------------------------------


def _wal_frames(wal: Path) -> tuple[int, list[int]]:
    """The frame size and the commit frames of the WAL's present generation."""
    data = wal.read_bytes()
    _magic, _v, page_size, _c, salt1, salt2 = struct.unpack(">6I", data[:24])
    size = 24 + page_size
    commits = []
    for i in range((len(data) - 32) // size):
        _page, commit, s1, s2 = struct.unpack(">4I", data[32 + i * size : 32 + i * size + 16])
        if (s1, s2) != (salt1, salt2):
            break
        if commit:
            commits.append(i)
    return size, commits


def test_a_damaged_wal_is_found_at_start_and_its_lost_readings_are_accounted_for(
    tmp_path: Path,
    key: Path,
    broker: LocalBroker,
    collector: Collector,
    daemon_factory: Callable[[Path], Daemon],
) -> None:
    state = tmp_path / "state"
    path = state / "buffer.db"
    down = write_config(
        tmp_path / "down.yaml",
        key=key,
        port=free_port(),  # the uplink is down: everything stays in the buffer
        devices={"d1": {"bus": "gen", "rate": 300, "values": "sequence"}},
        buffer={"batch": {"max_readings": 100, "max_age": "300ms"}},
    )
    daemon = daemon_factory(down)
    daemon.start()
    wal = Path(f"{path}-wal")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if wal.exists() and len(_wal_frames(wal)[1]) >= 12:
            break
        time.sleep(0.1)
    daemon.kill9()  # the WAL is left as it is, not checkpointed
    truth_dir = tmp_path / "truth"
    truth_dir.mkdir()
    shutil.copyfile(path, truth_dir / "buffer.db")
    shutil.copyfile(wal, truth_dir / "buffer.db-wal")
    truth = read_buffer(truth_dir / "buffer.db").values["d1"]  # every reading accepted before the kill

    # damage one frame of a transaction two thirds of the way in: recovery drops it and all after it
    size, commits = _wal_frames(wal)
    assert len(commits) >= 12, commits
    frame = commits[2 * len(commits) // 3] + 1
    data = bytearray(wal.read_bytes())
    middle = 32 + frame * size + 24 + size // 2
    for i in range(middle, middle + 8):
        data[i] ^= 0xFF
    wal.write_bytes(bytes(data))
    assert wal_scan(wal) is not None

    up = write_config(
        tmp_path / "up.yaml",
        key=key,
        port=broker.port,
        devices={"d2": {"bus": "gen", "rate": 10, "count": 1, "values": "sequence"}},
        buffer={"batch": {"max_readings": 100, "max_age": "300ms"}},
    )
    daemon = daemon_factory(up)
    daemon.start()

    def settled(c: Collector) -> bool:
        seqs: set[int] = set()
        for token in c.snapshot():
            body = payload_of(token)
            seqs.update(range(body["gap"]["from"], body["gap"]["to"] + 1) if "gap" in body else [body["seq"]])
        has_gap = any("gap" in payload_of(t) for t in c.snapshot())
        has_d2 = any("d2" in json.dumps(payload_of(t).get("senml", [])) for t in c.snapshot())
        return has_gap and has_d2 and seqs == set(range(1, max(seqs) + 1))

    collector.wait(settled, 30, "the gap record, the staged readings and d2's reading")
    assert daemon.terminate() == 0

    verified = verify_all(collector.snapshot(), key.with_name(key.name + ".pub"))
    assert len(verified.gaps) == 1
    gap = verified.gaps[0]["gap"]
    assert gap["reason"] == "corrupt"
    delivered = verified.values.get("d1", [])
    assert len(delivered) == len(set(delivered)) and set(delivered) <= truth
    lost = len(truth) - len(delivered)
    assert lost > 0 and gap["readings"] == lost
    log = daemon.log.read_text()
    lines = [line for line in log.splitlines() if "WAL of" in line]
    assert len(lines) == 1 and f"holding {lost} accepted readings" in lines[0], log
    assert "Traceback" not in log
    assert list(state.glob("buffer.db-wal.damaged-*"))  # the evidence is kept
    status = status_json(up)
    assert status["buffer"]["wal_lost"]["readings"] == lost


def test_a_power_cut_on_a_healthy_wal_is_no_alarm(tmp_path: Path, key: Path) -> None:
    """A torn tail (the last transaction half written) is what a power cut leaves: no gap record."""
    path = tmp_path / "b.db"
    code = (
        "import os, sys\n"
        "from pathlib import Path\n"
        "from citygw.buffer import BatchLimits, Buffer\n"
        "from citygw.reading import Record\n"
        "from citygw.wire.signing import Signer\n"
        f"b = Buffer(Path({str(path)!r}), gateway='gw-test', signer=Signer.from_file(Path({str(key)!r})),"
        " uplinks=['local'], limits=BatchLimits(max_readings=100, max_age=3600))\n"
        "b.open()\n"
        "for i in range(30):\n"
        "    b.commit([Record('d', 't', j, 'Cel', 1.79e9 + j, 0) for j in range(i * 37, (i + 1) * 37)])\n"
        "os._exit(0)\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO, timeout=60)
    wal = Path(f"{path}-wal")
    size, commits = _wal_frames(wal)
    # the power cut: the last transaction's commit frame never reached the card, the one before is torn
    data = wal.read_bytes()[: 32 + commits[-1] * size]
    torn = bytearray(data)
    for i in range(len(torn) - size // 2, len(torn)):
        torn[i] = 0
    wal.write_bytes(bytes(torn))
    assert wal_scan(wal) is None
    buf = make(path, key)
    assert buf.wal_lost_readings == 0
    assert not [b for b in buf.fetch(0, 1000) if b.kind == KIND_GAP]
    assert not list(tmp_path.glob("b.db-wal.damaged-*"))
