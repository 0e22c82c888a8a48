"""Staging and sealing: readings accepted in one transaction, sealed into signed, chained
batches by count, bytes (the compact JWS's size, estimated before signing) or age.
"""

from __future__ import annotations

import json
import sqlite3
import time
import zlib
from collections import deque
from collections.abc import Callable

from citygw.buffer.layout import (
    KIND_DATA,
    SIG_B64_LEN,
    ZLEVEL,
    Chunk,
    CommitResult,
    Sealed,
    b64url,
    is_full,
    stored_row,
)
from citygw.buffer.outbox import Outbox
from citygw.logs import EventLog
from citygw.reading import Record
from citygw.wire.envelope import b64url_decode, split_compact
from citygw.wire.senml import encode_payload
from citygw.wire.signing import chain_hash

log = EventLog(__name__)


class Sealing(Outbox):
    """Accepts readings and seals them into batches."""

    def commit(self, records: list[Record], *, seal_all: bool = False) -> CommitResult:
        """Accept ``records`` (one transaction) and seal what is due.

        On a write error nothing changes in memory or on disk and the error is raised: the
        caller still holds the records and can try again. A full file system first gets
        emergency retention (see the module docstring) and one more try.
        """
        try:
            return self._commit(records, seal_all=seal_all)
        except sqlite3.Error as exc:
            if not is_full(exc):
                raise
            gaps = self._make_room()
            if not gaps:
                raise
        result = self._commit(records, seal_all=seal_all)
        result.gaps[:0] = gaps
        return result

    def _commit(self, records: list[Record], *, seal_all: bool) -> CommitResult:
        db = self._require_db()
        now = time.monotonic()
        staged = self._staged + records if records else self._staged
        old_count = len(self._staged)
        rows = list(map(stored_row, records))  # the chunk's on-disk column order, not Record's
        raw_new = json.dumps(rows, separators=(",", ":")).encode() if rows else b""
        staged_bytes = self._staged_bytes + len(raw_new)
        oldest = self._chunks[0].since if self._chunks else now
        plan = self._plan(staged, staged_bytes, now - oldest, seal_all=seal_all)
        sealed_count = sum(b.readings for b in plan)
        durable = bool(plan) and self._sync != "FULL"
        result = CommitResult(accepted=len(records), sealed=[b.seq for b in plan])
        if durable:  # a sealed batch may leave the box at once: its seq must survive a power cut
            db.execute("PRAGMA synchronous=FULL")
        pruned = self._pruned_seq, self._pruned_hash
        held = self._held_now()
        accepted_total = self._accepted_total + len(records)
        try:
            with self._tx():
                new_chunk: Chunk | None = None
                keep_new = rows[max(0, sealed_count - old_count) :]
                if keep_new:
                    data = raw_new if len(keep_new) == len(rows) else json.dumps(keep_new).encode()
                    cur = db.execute(
                        "INSERT INTO chunks (n, data) VALUES (?, ?)",
                        (len(keep_new), zlib.compress(data, ZLEVEL)),
                    )
                    assert cur.lastrowid is not None
                    new_chunk = Chunk(cur.lastrowid, len(keep_new), now)
                rows = [
                    (
                        b.seq,
                        KIND_DATA,
                        b.created,
                        b.readings,
                        len(b.jws),
                        split_compact(b.jws)[0],
                        zlib.compress(b.payload, ZLEVEL),
                        b64url_decode(split_compact(b.jws)[2]),
                        bytes.fromhex(b.digest),
                        held,
                    )
                    for b in plan
                ]
                if rows:
                    db.executemany("INSERT INTO batches VALUES (?,?,?,?,?,?,?,?,?,?)", rows)
                chunks, skip = self._consume_chunks(min(sealed_count, old_count))
                seq, prev = (plan[-1].seq + 1, plan[-1].digest) if plan else (self._next_seq, self._last_hash)
                self._put_meta(
                    next_seq=seq,
                    last_hash=prev,
                    stage_skip=skip,
                    clock=round(held, 3),
                    accepted=accepted_total,
                )
                self._save_cursors()
                self._prune()
        except BaseException:
            self._saved_cursors.clear()  # rolled back: write them all again next time
            self._pruned_seq, self._pruned_hash = pruned
            raise
        finally:
            if durable:
                db.execute(f"PRAGMA synchronous={self._sync}")
        # committed: now memory follows the disk
        self._chunks = chunks
        if new_chunk is not None:
            self._chunks.append(new_chunk)
        self._skip = skip
        self._staged = staged[sealed_count:]
        self._staged_bytes = staged_bytes * len(self._staged) // len(staged) if staged and self._staged else 0
        self._next_seq, self._last_hash = seq, prev
        self._accepted_total = accepted_total
        try:
            result.gaps = self._retention()
        except sqlite3.Error as exc:  # the readings are accepted; retention tries again next commit
            if not is_full(exc) or self.full_cap is None:
                log.event("retention_failed", path=self.path).error("retention failed: %s", exc)
        return result

    def _plan(self, staged: list[Record], staged_bytes: int, age: float, *, seal_all: bool) -> list[Sealed]:
        """Seal (build, sign, chain) the batches due now, in seq order; nothing is stored yet."""
        limits = self.limits
        plan: list[Sealed] = []
        start, total = 0, len(staged)
        seq, prev = self._next_seq, self._last_hash
        per_record = staged_bytes / total if total else 0.0
        created = time.time()
        while start < total:
            left = total - start
            due = (
                seal_all
                or left >= limits.max_readings
                or per_record * left >= limits.max_bytes * 0.6
                or age >= limits.max_age
            )
            if not due:
                break
            n = min(left, limits.max_readings)
            while True:
                payload = encode_payload(
                    self.gateway,
                    seq,
                    prev,
                    created,
                    staged[start : start + n],
                    chain=self.chain,
                    reset=self._reset if seq == 1 else None,
                )
                size = self._jws_size(len(payload))
                if size <= limits.max_bytes or n == 1:
                    break
                n = max(1, int(n * limits.max_bytes / size * 0.95))
            jws = self._signer.sign(payload)
            digest = chain_hash(jws)
            plan.append(Sealed(seq, n, payload, jws, digest, created))
            start += n
            seq, prev = seq + 1, digest
        return plan

    def _jws_size(self, payload_len: int) -> int:
        header_len = len(b64url(b'{"alg":"Ed25519","kid":"' + b"x" * 43 + b'"}'))  # the longer alg
        return header_len + 1 + (4 * payload_len + 2) // 3 + 1 + SIG_B64_LEN

    def _consume_chunks(self, count: int) -> tuple[deque[Chunk], int]:
        """Delete the chunks whose records are all sealed; returns the new chunk list and skip."""
        chunks = deque(self._chunks)
        skip = self._skip + count
        gone: list[tuple[int]] = []
        while chunks and skip >= chunks[0].n:
            skip -= chunks[0].n
            gone.append((chunks.popleft().id,))
        if gone:
            self._require_db().executemany("DELETE FROM chunks WHERE id = ?", gone)
        return chunks, skip

    def seal_due_at(self) -> float | None:
        """Monotonic time at which the oldest staged reading must be sealed; None if none is."""
        # safe on the event loop: the store thread replaces these lists whole or appends to them,
        # never empties one in place, so the references read here stay indexable
        staged, chunks = self._staged, self._chunks
        if not staged or not chunks:
            return None
        return chunks[0].since + self.limits.max_age

    def correct_staged(self, fix: Callable[[Record], Record]) -> int:
        """Pass every staged reading through ``fix`` (the clock synced: gateway.clock); returns how
        many changed. In memory only: until sealed, the chunks on disk keep the flagged originals."""
        changed = 0
        for index, record in enumerate(self._staged):
            fixed = fix(record)
            if fixed is not record:
                self._staged[index] = fixed
                changed += 1
        return changed
