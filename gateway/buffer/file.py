"""Opening and closing the buffer file: the :class:`Buffer` the store thread drives."""

from __future__ import annotations

import json
import sqlite3
import time
import zlib
from collections.abc import Sequence
from pathlib import Path

from citygw.buffer import wal
from citygw.buffer.damage import DamageHandling
from citygw.buffer.layout import (
    CHAIN_RE,
    RESERVE_BYTES,
    SCHEMA,
    SCHEMA_VERSION,
    Chunk,
    Damaged,
    is_damage,
    new_chain_id,
    opt_str,
    stored_record,
)
from citygw.buffer.report import BufferReport, report_from
from citygw.errors import BufferOwnerError, BufferStorageError
from citygw.logs import EventLog

log = EventLog(__name__)


class Buffer(DamageHandling):
    """One SQLite file in WAL mode holding staged readings, sealed batches and cursors.

    Threading: every method runs on the store thread (:class:`citygw.buffer.thread.Store`), one call at
    a time, except these, safe from any thread because each reads one int or one reference the
    store thread replaces whole: :attr:`last_seq` and :meth:`seal_due_at` (the pipeline's writer,
    on the event loop), :attr:`staged_count` and the plain counters and settings (``path``,
    ``max_disk``, ``corrupt_batches``, ``full_episodes``, ... read by a metrics scrape or the
    health report). The uplinks reach the buffer only through
    :class:`citygw.pipeline.intake.UplinkOutbox`."""

    def open(self) -> None:
        """Open (or create) the file. A damaged file is moved aside and a fresh buffer, on a new
        chain, takes its place (see :meth:`_move_aside`); one of another gateway is refused."""
        try:
            self._open_file()
        except Damaged as damage:
            self._abandon()
            self._move_aside(str(damage))
            self._open_file()

    def _open_file(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            damage = wal.scan(Path(f"{self.path}-wal")) if self.path.exists() else None
            before = self._read_damaged_wal(damage) if damage is not None else None
            db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        except (OSError, sqlite3.Error) as exc:
            raise BufferStorageError(f"cannot open buffer {self.path}: {exc}") from exc
        self._db = db
        try:
            self._load(db)
        except sqlite3.Error as exc:
            if is_damage(exc):
                raise Damaged(str(exc)) from exc
            self._abandon()
            raise BufferStorageError(f"cannot open buffer {self.path}: {exc}") from exc
        except BaseException:
            self._abandon()
            raise
        if damage is not None and before is not None:
            self._account_wal_loss(damage, *before)
        if self._staged:
            log.event("buffer_restaged", path=self.path).info(
                "buffer: %d readings staged from before the restart", len(self._staged)
            )
        if not self._make_reserve():
            log.event("buffer_no_reserve", path=self.path).warning(
                "buffer: no room for the %d-byte reserve beside %s; a full disk will cost more data",
                RESERVE_BYTES,
                self.path,
            )

    def _load(self, db: sqlite3.Connection) -> None:
        """Read what the file holds into memory; raises Damaged for content that cannot be read."""
        db.execute("PRAGMA journal_mode=WAL")
        db.execute(f"PRAGMA synchronous={self._sync}")
        db.execute("PRAGMA busy_timeout=5000")
        db.execute("PRAGMA journal_size_limit=4194304")
        # the buffer writes far more than it reads back: a small page cache spares a Pi's RAM
        db.execute("PRAGMA cache_size=-512")
        tables = {name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        meta: dict[str, object] = {}
        if "meta" in tables:
            meta = dict(db.execute("SELECT key, value FROM meta").fetchall())
        self._old_meta = meta
        version = meta.get("schema", SCHEMA_VERSION)
        if version not in (1, SCHEMA_VERSION):
            raise BufferStorageError(
                f"buffer {self.path} has schema {version}, this citygw reads {SCHEMA_VERSION}"
            )
        owner = meta.get("gateway")
        if owner is not None and owner != self.gateway:
            raise BufferOwnerError(
                f"buffer {self.path} was written by gateway {owner!r}, this config is gateway"
                f" {self.gateway!r}: it is not adopted. Set gateway.id back to {owner!r}, or move the"
                f" file away (its undelivered batches stay in it) to start a new buffer as {self.gateway!r}"
            )
        db.executescript(SCHEMA)
        if version == 1 and "batches" in tables:
            columns = {row[1] for row in db.execute("PRAGMA table_info(batches)")}
            if "held" not in columns:
                db.execute("ALTER TABLE batches ADD COLUMN held REAL")
        try:
            self._next_seq = int(str(meta.get("next_seq", 1)))
            self._last_hash = opt_str(meta.get("last_hash"))
            self._pruned_seq = int(str(meta.get("pruned_seq", 0)))
            self._pruned_hash = opt_str(meta.get("pruned_hash"))
            self._skip = int(str(meta.get("stage_skip", 0)))
            self._clock_base = float(str(meta.get("clock", 0.0)))
            self._clock_mono = time.monotonic()
            self._accepted_total = int(str(meta.get("accepted", 0)))
            reset = meta.get("reset")
            self._reset = json.loads(str(reset)) if reset is not None else None
        except (TypeError, ValueError) as exc:
            raise Damaged(f"its meta table is damaged ({exc})") from exc
        chain = meta.get("chain")
        fresh: dict[str, object] = dict(self._pending_meta)
        self._pending_meta = {}
        if "reset" in fresh:
            self._reset = json.loads(str(fresh["reset"]))
        if not isinstance(chain, str) or not CHAIN_RE.fullmatch(chain):
            chain = new_chain_id()
            fresh["chain"] = chain
            if self._next_seq > 1:  # made by a citygw before chains: the chain starts here, seqs go on
                log.event("buffer_chain_assigned", path=self.path).info(
                    "buffer: %s gets chain id %s; its seq numbering goes on at %d",
                    self.path,
                    chain,
                    self._next_seq,
                )
        self.chain = chain
        if meta.get("schema") != SCHEMA_VERSION or owner != self.gateway or fresh:  # no write when unchanged
            with self._tx():
                self._put_meta(schema=SCHEMA_VERSION, gateway=self.gateway, **fresh)
                # batches sealed before the buffer clock existed: aged by the wall clock, once
                db.execute(
                    "UPDATE batches SET held = ? - max(0.0, ? - created) WHERE held IS NULL",
                    (self._held_now(), time.time()),
                )
        self.moved_aside = opt_str(fresh.get("moved_aside", meta.get("moved_aside")))
        now = time.monotonic()
        for chunk_id, n, data in db.execute("SELECT id, n, data FROM chunks ORDER BY id"):
            try:
                raw = zlib.decompress(data)
                records = [stored_record(r) for r in json.loads(raw)]
            except (zlib.error, ValueError, TypeError) as exc:
                raise Damaged(f"staged chunk {chunk_id} cannot be read ({exc})") from exc
            self._chunks.append(Chunk(chunk_id, n, now))
            self._staged.extend(records)
            self._staged_bytes += len(raw)
        if self._skip:
            del self._staged[: self._skip]
        saved = dict(db.execute("SELECT uplink, seq FROM cursors").fetchall())
        floor = self._pruned_seq
        for name in self._uplinks:
            self._cursors[name] = max(int(saved.get(name, floor)), floor)
        self._saved_cursors = dict(self._cursors)

    def close(self) -> None:
        """Persist cursors and close; staged readings stay staged for the next start."""
        if self._db is None:
            return
        try:
            with self._tx():
                self._save_cursors()
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        finally:
            self._db.close()
            self._db = None

    def report(self, uplinks: Sequence[str] | None = None) -> BufferReport:
        """The file's figures (:func:`citygw.buffer.report.report_from`) through the buffer's own
        connection: no second connection, consistent because this thread is the only writer."""
        try:
            return report_from(self._require_db(), self.path, uplinks)
        except sqlite3.Error as exc:
            raise BufferStorageError(f"cannot read buffer {self.path}: {exc}") from exc
