"""Retention: the caps (``buffer.max_disk``, ``buffer.max_age``), the disk-full emergency and
the signed gap records that take the place of dropped batches.

A full file system (SQLITE_FULL) is retention's emergency case: the buffer keeps a small reserve
file beside the database; when a write fails for lack of space it deletes the reserve (so SQLite
can checkpoint and delete), caps itself below its present size, drops the oldest undelivered
batches behind a gap record and retries. The cap is lifted, and the reserve made again, once the
file system has room; each episode is logged once, not per commit.
"""

from __future__ import annotations

import os
import sqlite3
import time
import zlib

from citygw.buffer.layout import (
    CLOCK_STEP,
    FULL_KEEP,
    FULL_WAL_PAGES,
    KIND_DATA,
    KIND_GAP,
    RESERVE_BYTES,
    SPACE_CHECK,
    ZLEVEL,
    Gap,
    is_full,
)
from citygw.buffer.state import BufferState
from citygw.logs import EventLog
from citygw.wire.envelope import b64url_decode, split_compact
from citygw.wire.senml import encode_gap

log = EventLog(__name__)


class Retention(BufferState):
    """Drops the oldest undelivered batches behind signed gap records."""

    def _retention(self) -> list[Gap]:
        gaps: list[Gap] = []
        if self.full_cap is not None:
            self._check_space()
        cap = self.max_disk if self.full_cap is None else min(self.max_disk, self.full_cap)
        used = self.used_bytes()
        if used > cap:
            # drop down to 90% so that retention does not run again on every commit
            gap = self._drop_oldest(used - int(cap * 0.9), "max_disk")
            if gap:
                gaps.append(gap)
        self._watch_wall_clock()
        now = time.monotonic()
        if now - self._last_age_check >= min(60.0, max(1.0, self.max_age / 60)):
            self._last_age_check = now
            gap = self._drop_older_than(self._held_now() - self.max_age)
            if gap:
                gaps.append(gap)
        return gaps

    def _watch_wall_clock(self) -> None:
        """Say so once when the wall clock steps (NTP after a boot without RTC): ages do not move."""
        offset = time.time() - time.monotonic()
        step = offset - self._wall_offset
        if abs(step) <= CLOCK_STEP:
            return
        self._wall_offset = offset
        self.clock_steps += 1
        log.event("buffer_clock_step", path=self.path).warning(
            "buffer: the wall clock stepped by %+.0f s; batch ages for max_age are measured on the"
            " buffer's monotonic clock, so the step drops nothing",
            step,
        )

    def _make_reserve(self) -> bool:
        """Set :data:`RESERVE_BYTES` aside beside the database (allocated, not just sparse)."""
        if self.reserve_path.exists() and self.reserve_path.stat().st_size >= RESERVE_BYTES:
            return True
        try:
            fd = os.open(self.reserve_path, os.O_WRONLY | os.O_CREAT, 0o600)
            try:
                os.posix_fallocate(fd, 0, RESERVE_BYTES)
            finally:
                os.close(fd)
        except OSError:
            self.reserve_path.unlink(missing_ok=True)
            return False
        return True

    def _checkpoint(self) -> None:
        """Move the WAL into the database and truncate it (gives its space back); may fail if full."""
        try:
            self._require_db().execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        except sqlite3.Error as exc:
            log.event("buffer_checkpoint_failed", path=self.path).debug(
                "checkpoint on a full disk failed: %s", exc
            )

    def _make_room(self) -> list[Gap]:
        """A write failed with SQLITE_FULL: release the reserve, cap the buffer below its present
        size and drop the oldest undelivered batches (gap records). Returns the gaps made."""
        used = self.used_bytes()
        cap = int(used * FULL_KEEP)
        first = self.full_cap is None
        self.full_cap = cap if first else min(cap, self.full_cap or cap)
        self._last_space_check = time.monotonic()
        if first:
            self.full_episodes += 1
            self._full_dropped = [0, 0]
            self._require_db().execute(f"PRAGMA wal_autocheckpoint={FULL_WAL_PAGES}")
            log.event("disk_full", path=self.path).error(
                "buffer: the file system holding %s is full (%d bytes buffered); dropping the oldest"
                " undelivered batches (with gap records) to stay under %d bytes until space returns;"
                " this is logged again when it ends",
                self.path,
                used,
                self.full_cap,
            )
        self.reserve_path.unlink(missing_ok=True)
        self._checkpoint()
        try:
            gap = self._drop_oldest(used - int(self.full_cap * 0.9), "max_disk")
        except sqlite3.Error as exc:
            if not is_full(exc):
                raise
            return []
        self._checkpoint()  # the deletion's pages are now free inside the file: commits reuse them
        return [gap] if gap else []

    def _check_space(self) -> None:
        """While capped: once the file system has room again, make the reserve and lift the cap."""
        now = time.monotonic()
        if now - self._last_space_check < SPACE_CHECK:
            return
        self._last_space_check = now
        stat = os.statvfs(self.path.parent)
        free = stat.f_bavail * stat.f_frsize
        if free < 2 * RESERVE_BYTES or not self._make_reserve():  # the reserve and a full WAL
            return
        self._require_db().execute("PRAGMA wal_autocheckpoint=1000")
        gaps, readings = self._full_dropped
        log.event("disk_room_again", path=self.path).warning(
            "buffer: the file system holding %s has room again (%d bytes free); emergency cap lifted"
            " after dropping %d readings behind %d gap records",
            self.path,
            free - RESERVE_BYTES,
            readings,
            gaps,
        )
        self.full_cap = None

    def _in_flight(self, seq: int) -> bool:
        """Whether some uplink may hold ``seq`` without having acknowledged it yet."""
        return any(self._cursors.get(u, 0) < seq <= sent for u, sent in self._sent.items())

    def _drop_oldest(self, excess: int, reason: str) -> Gap | None:
        rows = self._require_db().execute(
            "SELECT seq, readings, length(payload) + length(header) + 100 FROM batches"
            " WHERE kind = ? AND seq NOT IN (SELECT seq FROM parked) ORDER BY seq",
            (KIND_DATA,),
        )
        picked: list[tuple[int, int]] = []
        freed = 0
        for seq, readings, size in rows:
            if self._in_flight(seq):
                if picked:
                    break
                continue
            if picked and seq != picked[-1][0] + 1:
                break  # a gap record sits between: keep each dropped range contiguous
            picked.append((seq, readings))
            freed += size
            if freed >= excess:
                break
        if len(picked) >= self._held_data_batches():
            picked = picked[:-1]  # keep the newest batch: the chain's head must stay here
        return self._replace_with_gap(picked, reason) if picked else None

    def _held_data_batches(self) -> int:
        row = (
            self._require_db().execute("SELECT count(*) FROM batches WHERE kind = ?", (KIND_DATA,)).fetchone()
        )
        return int(row[0])

    def _drop_older_than(self, cutoff: float) -> Gap | None:
        rows = (
            self._require_db()
            .execute(
                "SELECT seq, readings FROM batches WHERE kind = ? AND held < ?"
                " AND seq NOT IN (SELECT seq FROM parked) ORDER BY seq",
                (KIND_DATA, cutoff),
            )
            .fetchall()
        )
        picked: list[tuple[int, int]] = []
        for seq, readings in rows:
            if self._in_flight(seq):
                if picked:
                    break
                continue
            if picked and seq != picked[-1][0] + 1:
                break
            picked.append((seq, readings))
        return self._replace_with_gap(picked, "max_age") if picked else None

    def _hash_before(self, seq: int) -> str | None:
        row = self._require_db().execute("SELECT hash FROM batches WHERE seq = ?", (seq - 1,)).fetchone()
        if row is not None:
            return bytes(row[0]).hex()
        if seq - 1 == self._pruned_seq:
            return self._pruned_hash
        return None

    def _signed_gap_row(self, gap: Gap, *, prev: str | None, last: bytes) -> tuple[object, ...]:
        """Sign the gap record for ``gap`` and return its row of the batches table, stored at the
        gap's last seq; ``last`` is the hash that seq's batch had (the chain goes on from it)."""
        payload = encode_gap(
            self.gateway,
            chain=self.chain,
            first=gap.first,
            to=gap.last,
            batches=gap.batches,
            readings=gap.readings,
            reason=gap.reason,
            prev=prev,
            last=last.hex(),
            created=time.time(),
        )
        jws = self._signer.sign(payload)
        header, _, signature = split_compact(jws)
        return (
            gap.last,
            KIND_GAP,
            time.time(),
            0,
            len(jws),
            header,
            zlib.compress(payload, ZLEVEL),
            b64url_decode(signature),
            last,
            self._held_now(),
        )

    def _replace_with_gap(self, picked: list[tuple[int, int]], reason: str, *, quiet: bool = False) -> Gap:
        """Delete the batches ``picked`` and store a signed gap record at the last one's seq."""
        db = self._require_db()
        first, last = picked[0][0], picked[-1][0]
        readings = sum(n for _, n in picked)
        gap = Gap(first, last, len(picked), readings, reason)
        last_hash = bytes(db.execute("SELECT hash FROM batches WHERE seq = ?", (last,)).fetchone()[0])
        row = self._signed_gap_row(gap, prev=self._hash_before(first), last=last_hash)
        with self._tx():
            db.execute("DELETE FROM batches WHERE seq BETWEEN ? AND ?", (first, last))
            db.execute("INSERT INTO batches VALUES (?,?,?,?,?,?,?,?,?,?)", row)
        if quiet:
            return gap
        if self.full_cap is not None:  # a full disk: one line when it starts, one when it ends
            self._full_dropped[0] += 1
            self._full_dropped[1] += readings
            return gap
        log.event("retention_dropped", reason=reason, seq=first).warning(
            "retention (%s): dropped batches %d..%d (%d readings) before delivery; a gap record says so",
            reason,
            first,
            last,
            readings,
        )
        return gap
