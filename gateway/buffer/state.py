"""The buffer's state in memory and its connection: what every part of the buffer reads."""

from __future__ import annotations

import json
import os
import sqlite3
import time
from collections import deque
from collections.abc import Sequence
from pathlib import Path

from citygw.buffer.layout import BatchLimits, BatchSigner, BufferStats, Chunk, Transaction
from citygw.errors import BufferStorageError
from citygw.reading import Record


class BufferState:
    """The state of one buffer file: the connection, the staged readings, the chain's head,
    the cursors, the buffer clock; and the transaction and meta helpers every part uses."""

    def __init__(
        self,
        path: Path,
        *,
        gateway: str,
        signer: BatchSigner,
        uplinks: Sequence[str],
        limits: BatchLimits | None = None,
        synchronous: str = "normal",
        max_disk: int = 2 * 1024**3,
        max_age: float = 30 * 86400.0,
    ) -> None:
        self.path = path
        self.gateway = gateway
        self._signer = signer
        self._uplinks = list(uplinks)
        self.limits = limits or BatchLimits()
        self._sync = synchronous.upper()
        self.max_disk = max_disk
        self.max_age = max_age
        self._db: sqlite3.Connection | None = None
        self._staged: list[Record] = []
        self._staged_bytes = 0  # JSON size of the staged records, a proxy for their payload size
        self._chunks: deque[Chunk] = deque()
        self._skip = 0  # records of the first chunk already sealed
        self._next_seq = 1
        self._last_hash: str | None = None
        self._pruned_seq = 0
        self._pruned_hash: str | None = None
        self._cursors: dict[str, int] = {}
        self._sent: dict[str, int] = {}  # per uplink: the highest seq handed to it (maybe delivered)
        self._saved_cursors: dict[str, int] = {}
        self._last_age_check = 0.0
        self.reserve_path = path.with_name(path.name + "-reserve")
        self.full_cap: int | None = None  # set while the file system is full: the emergency cap
        self.full_episodes = 0
        self._full_dropped = [0, 0]  # gap records, readings dropped in the present episode
        self._last_space_check = 0.0
        self.chain = ""  # this buffer's stream id (set by open)
        self._reset: dict[str, object] | None = None  # on a new chain's first batch: the chain it replaces
        self._old_meta: dict[str, object] = {}
        self._pending_meta: dict[str, object] = {}  # written into a fresh file's meta
        self.moved_aside: str | None = None  # JSON: the damaged file this buffer replaced (meta)
        self.moved_aside_now: Path | None = None  # the file moved aside by this process's open
        self.corrupt_batches = 0  # stored batches found damaged and replaced by gap records
        # the buffer clock: seconds this buffer has been open over its life (a wall-clock step
        # cannot move it); batches are aged on it
        self._clock_base = 0.0
        self._clock_mono = time.monotonic()
        self._wall_offset = time.time() - self._clock_mono
        self._accepted_total = 0
        self.clock_steps = 0
        self.wal_lost_readings = 0  # accepted readings a damaged WAL lost (found by open)

    def _require_db(self) -> sqlite3.Connection:
        if self._db is None:
            raise BufferStorageError("buffer is not open")
        return self._db

    def _put_meta(self, **values: object) -> None:
        self._require_db().executemany(
            "INSERT INTO meta (key, value) VALUES (?, ?)"
            " ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            list(values.items()),
        )

    def _tx(self) -> Transaction:
        return Transaction(self._require_db())

    def _held_now(self) -> float:
        """The buffer clock: seconds this buffer has been open over its life (monotonic)."""
        return self._clock_base + time.monotonic() - self._clock_mono

    @property
    def last_seq(self) -> int:
        return self._next_seq - 1

    @property
    def staged_count(self) -> int:
        return len(self._staged)

    def cursor(self, uplink: str) -> int:
        return self._cursors.get(uplink, self._pruned_seq)

    @property
    def moved_aside_file(self) -> str | None:
        """The name of the damaged file this buffer replaced (kept beside it), if any."""
        if self.moved_aside is None:
            return None
        try:
            return str(json.loads(self.moved_aside)["file"])
        except (ValueError, KeyError, TypeError):
            return self.moved_aside

    def used_bytes(self) -> int:
        db = self._require_db()
        pages = db.execute("PRAGMA page_count").fetchone()[0]
        free = db.execute("PRAGMA freelist_count").fetchone()[0]
        size: int = db.execute("PRAGMA page_size").fetchone()[0]
        return int((pages - free) * size)

    def stats(self) -> BufferStats:
        db = self._require_db()
        count, readings, oldest = db.execute(
            "SELECT count(*), coalesce(sum(readings), 0), min(created) FROM batches"
        ).fetchone()
        file_bytes = sum(
            os.path.getsize(p) for p in (self.path, Path(f"{self.path}-wal")) if os.path.exists(p)
        )
        return BufferStats(
            staged=len(self._staged),
            batches=int(count),
            undelivered_readings=int(readings),
            last_seq=self.last_seq,
            used_bytes=self.used_bytes(),
            file_bytes=file_bytes,
            cursors=dict(self._cursors),
            oldest_created=oldest,
        )

    def integrity_check(self) -> str:
        return str(self._require_db().execute("PRAGMA integrity_check").fetchone()[0])
