"""The buffer file's figures: what is held, for whom, what retention dropped.

Read the same way by the daemon (:meth:`citygw.buffer.Buffer.report`, on the store thread, with
the buffer's own connection) and by ``citygw status`` (:func:`citygw.commands.status.read_buffer`, a
read-only connection beside a running daemon). It knows the file's layout from
:mod:`citygw.buffer.layout`.
"""

from __future__ import annotations

import json
import sqlite3
import time
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from citygw.buffer.layout import KIND_GAP


@dataclass(frozen=True, slots=True)
class UplinkLag:
    """What one uplink has not acknowledged yet, as the buffer file says (its cursor is saved
    with each commit, so it trails the live acknowledgements by up to a second)."""

    name: str
    cursor: int  # the last seq this uplink acknowledged
    batches: int  # batches and gap records after the cursor
    readings: int
    oldest_created: float | None  # UTC epoch seconds the oldest of them was sealed
    parked: int = 0  # batches the destination refused for good, kept for `citygw resend`


@dataclass(frozen=True, slots=True)
class BufferReport:
    path: str
    exists: bool
    gateway: str | None = None  # the gateway that wrote the file
    last_seq: int = 0
    staged: int = 0  # readings accepted and not sealed yet (as committed)
    batches: int = 0  # batches and gap records held
    undelivered_readings: int = 0  # in the batches held
    undelivered_bytes: int = 0  # wire size of the batches held (their compact JWS)
    oldest_created: float | None = None
    gap_records: int = 0  # gap records held (not yet delivered everywhere)
    dropped_batches: int = 0  # batches those gap records stand for
    dropped_readings: int = 0
    gap_reasons: dict[str, int] = field(default_factory=dict)  # reason -> readings dropped
    used_bytes: int = 0  # pages in use
    file_bytes: int = 0  # the file and its WAL on disk
    uplinks: tuple[UplinkLag, ...] = ()
    read_at: float = 0.0  # UTC epoch seconds
    chain: str | None = None  # the buffer's stream id on the wire
    moved_aside: dict[str, Any] | None = None  # the damaged file this buffer replaced: file, why, at
    wal_lost: dict[str, Any] | None = None  # readings a damaged WAL lost: readings, at


def report_from(db: sqlite3.Connection, path: Path, uplinks: Sequence[str] | None) -> BufferReport:
    """The figures of the buffer file ``path`` through ``db`` (the daemon's own connection, or a
    read-only one inside one snapshot); ``uplinks``: the configured ones (None: those with cursors).
    Raises :class:`sqlite3.Error` if it cannot be read."""
    tables = {name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    if "batches" not in tables:
        return BufferReport(str(path), exists=True, read_at=time.time())
    meta = dict(db.execute("SELECT key, value FROM meta").fetchall())
    (chunked,) = db.execute("SELECT coalesce(sum(n), 0) FROM chunks").fetchone()
    count, readings, oldest, size = db.execute(
        "SELECT count(*), coalesce(sum(readings), 0), min(created), coalesce(sum(size), 0) FROM batches"
    ).fetchone()
    gap_records = dropped_batches = dropped_readings = 0
    reasons: dict[str, int] = {}
    for (payload,) in db.execute("SELECT payload FROM batches WHERE kind = ?", (KIND_GAP,)):
        gap = json.loads(zlib.decompress(payload)).get("gap", {})
        gap_records += 1
        dropped_batches += int(gap.get("batches", 0))
        dropped_readings += int(gap.get("readings", 0))
        reason = str(gap.get("reason", "?"))
        reasons[reason] = reasons.get(reason, 0) + int(gap.get("readings", 0))
    pages = db.execute("PRAGMA page_count").fetchone()[0]
    free = db.execute("PRAGMA freelist_count").fetchone()[0]
    page_size = db.execute("PRAGMA page_size").fetchone()[0]
    cursors = dict(db.execute("SELECT uplink, seq FROM cursors").fetchall())
    parked: dict[str, int] = {}
    if "parked" in tables:
        parked = dict(db.execute("SELECT uplink, count(*) FROM parked GROUP BY uplink").fetchall())
    floor = int(meta.get("pruned_seq", 0))
    lags = []
    for name in cursors if uplinks is None else uplinks:
        cursor = max(int(cursors.get(name, floor)), floor)
        n, r, first = db.execute(
            "SELECT count(*), coalesce(sum(readings), 0), min(created) FROM batches WHERE seq > ?", (cursor,)
        ).fetchone()
        lags.append(UplinkLag(name, cursor, int(n), int(r), first, int(parked.get(name, 0))))
    files = (path, Path(f"{path}-wal"))
    return BufferReport(
        path=str(path),
        exists=True,
        gateway=meta.get("gateway"),
        last_seq=int(meta.get("next_seq", 1)) - 1,
        staged=max(0, int(chunked) - int(meta.get("stage_skip", 0))),
        batches=int(count),
        undelivered_readings=int(readings),
        undelivered_bytes=int(size),
        oldest_created=oldest,
        gap_records=gap_records,
        dropped_batches=dropped_batches,
        dropped_readings=dropped_readings,
        gap_reasons=reasons,
        used_bytes=int((pages - free) * page_size),
        file_bytes=sum(p.stat().st_size for p in files if p.exists()),
        uplinks=tuple(lags),
        read_at=time.time(),
        chain=meta.get("chain"),
        moved_aside=_json_meta(meta.get("moved_aside")),
        wal_lost=_json_meta(meta.get("wal_lost")),
    )


def _json_meta(value: object) -> dict[str, Any] | None:
    if value is None:
        return None
    try:
        parsed = json.loads(str(value))
    except ValueError:
        return {"note": str(value)}
    return parsed if isinstance(parsed, dict) else {"note": str(value)}
