"""Damage: a buffer file SQLite cannot read is moved aside and a fresh one, on a new chain,
takes its place; a damaged WAL's lost readings are counted and said.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import shutil
import sqlite3
import tempfile
import time
from collections import deque
from pathlib import Path

from citygw.buffer import wal
from citygw.buffer.layout import CHAIN_RE, Gap, opt_str
from citygw.buffer.sealing import Sealing
from citygw.errors import BufferStorageError
from citygw.logs import EventLog

log = EventLog(__name__)


class DamageHandling(Sealing):
    """Moves a damaged file aside and accounts for what a damaged WAL lost."""

    def _read_damaged_wal(self, damage: wal.WalDamage) -> tuple[Path, dict[str, object] | None]:
        """Keep a copy of the damaged WAL; read the meta table of what its lost transactions held."""
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        kept = self.path.with_name(f"{self.path.name}-wal.damaged-{stamp}")
        shutil.copyfile(f"{self.path}-wal", kept)
        with tempfile.TemporaryDirectory(prefix=".wal-check-", dir=self.path.parent) as scratch:
            copy = wal.repaired_copy(self.path, damage, Path(scratch) / self.path.name)
            try:
                db = sqlite3.connect(copy, isolation_level=None)
                try:
                    return kept, dict(db.execute("SELECT key, value FROM meta").fetchall())
                finally:
                    db.close()
            except sqlite3.Error as exc:  # the damaged frame was the meta table's last image
                log.event("wal_copy_unreadable", path=self.path).debug(
                    "the repaired copy of the WAL cannot be read: %s", exc
                )
                return kept, None

    def _account_wal_loss(self, damage: wal.WalDamage, kept: Path, held: dict[str, object] | None) -> None:
        """Recovery dropped committed transactions: a signed gap record stands for what they held."""
        first, prev = self._next_seq, self._last_hash
        lost: int | None = None
        to, last = first, prev
        if held is not None:
            try:
                lost = max(0, int(str(held.get("accepted", 0))) - self._accepted_total)
                held_next = int(str(held.get("next_seq", 1)))
                if held_next > first:  # batches were sealed in the lost transactions: never reuse their seqs
                    to, last = held_next - 1, opt_str(held.get("last_hash"))
                self._accepted_total += lost
            except (TypeError, ValueError):
                lost = None
        if lost == 0 and to == first and last == prev:
            log.event("wal_damaged_nothing_lost", path=self.path).warning(
                "buffer: the WAL of %s was damaged (frame %d of %d); the transactions recovery dropped"
                " held no readings; the damaged WAL is kept as %s",
                self.path,
                damage.bad,
                damage.frames,
                kept,
            )
            return
        if last is None or not re.fullmatch(r"[0-9a-f]{64}", last):
            last = hashlib.sha256(f"{self.chain}/{to}".encode()).hexdigest()  # a link for the next batch
        readings = lost or 0
        gap = Gap(first, to, to - first + 1, readings, "corrupt")
        row = self._signed_gap_row(gap, prev=prev, last=bytes.fromhex(last))
        record = {
            "readings": readings if lost is not None else None,
            "from": first,
            "to": to,
            "kept": kept.name,
        }
        with self._tx():
            self._require_db().execute("INSERT INTO batches VALUES (?,?,?,?,?,?,?,?,?,?)", row)
            self._put_meta(
                next_seq=to + 1,
                last_hash=last,
                accepted=self._accepted_total,
                wal_lost=json.dumps({**record, "at": round(time.time(), 3)}),
            )
        self._next_seq, self._last_hash = to + 1, last
        self.wal_lost_readings = readings
        log.event("wal_damaged", path=self.path).error(
            "buffer: the WAL of %s was damaged (frame %d of %d): SQLite's recovery dropped committed"
            " transactions holding %s accepted readings; a signed gap record (seq %d..%d, reason"
            " corrupt) accounts for them; the damaged WAL is kept as %s",
            self.path,
            damage.bad,
            damage.frames,
            "an unknown number of" if lost is None else lost,
            first,
            to,
            kept,
        )

    def _abandon(self) -> None:
        """Close the connection and forget what was read (the file is not used)."""
        if self._db is not None:
            with contextlib.suppress(sqlite3.Error):
                self._db.close()
            self._db = None
        self._staged, self._staged_bytes, self._chunks, self._skip = [], 0, deque(), 0
        self._cursors, self._saved_cursors = {}, {}

    def _move_aside(self, why: str) -> None:
        """Keep the damaged file (and its WAL) under a new name and note it for the fresh buffer."""
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        aside = self.path.with_name(f"{self.path.name}.damaged-{stamp}")
        for n in range(1, 100):  # never over an earlier one
            if not aside.exists():
                break
            aside = self.path.with_name(f"{self.path.name}.damaged-{stamp}-{n}")
        for suffix in ("", "-wal", "-shm"):
            source = Path(f"{self.path}{suffix}")
            if source.exists():
                try:
                    source.rename(f"{aside}{suffix}")
                except OSError as exc:
                    raise BufferStorageError(
                        f"buffer {self.path} is damaged ({why}) and cannot be moved aside: {exc}"
                    ) from exc
        meta = self._old_meta
        old_chain = meta.get("chain")
        reset = None
        try:
            if isinstance(old_chain, str) and CHAIN_RE.fullmatch(old_chain):
                reset = {
                    "chain": old_chain,
                    "seq": int(str(meta.get("next_seq", 1))) - 1,
                    "reason": "corrupt",
                }
        except ValueError:
            reset = None
        self._pending_meta = {
            "moved_aside": json.dumps({"file": aside.name, "why": why, "at": round(time.time(), 3)}),
            **({"reset": json.dumps(reset)} if reset is not None else {}),
        }
        self.moved_aside_now = aside
        log.event("buffer_moved_aside", path=self.path).error(
            "buffer: %s is damaged (%s); moved aside to %s (kept) and started a fresh buffer%s",
            self.path,
            why,
            aside,
            f" whose first batch says it replaces chain {reset['chain']} up to seq {reset['seq']}"
            if reset
            else "",
        )
