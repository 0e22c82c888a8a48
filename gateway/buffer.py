"""The durable buffer: the only code that touches SQLite.

Readings arrive in groups (one group per commit, at most ``commit_interval`` apart) and are
*accepted* once the transaction that stores them commits. Staged readings are sealed into
signed batches by count, bytes or age; each batch gets the next gateway-wide ``seq`` and the
hash of the previous batch's JWS, in the same transaction that removes its readings from the
staging area, so a reading is stored in exactly one place at any time and written to the
card about once. Every uplink keeps a cursor; a batch is pruned when all cursors passed it.
Retention caps (logical bytes, age) drop the oldest undelivered batches and put a signed
gap record in their place.

A full file system (SQLITE_FULL) is retention's emergency case: the buffer keeps a small
reserve file beside the database; when a write fails for lack of space it deletes the reserve
(so SQLite can checkpoint and delete), caps itself below its present size, drops the oldest
undelivered batches behind a gap record and retries. The cap is lifted, and the reserve made
again, once the file system has room; each episode is logged once, not per commit.

All methods are synchronous and must be called from one thread (see :mod:`gateway.store`).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import sqlite3
import time
import zlib
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from gateway.errors import BufferError
from gateway.logs import EventLog
from gateway.senml import Record, encode_payload

log = EventLog(__name__)

SCHEMA_VERSION = 1
KIND_DATA = 0
KIND_GAP = 1
_SIG_B64_LEN = 86  # an Ed25519 signature is 64 bytes, 86 base64url characters
_ZLEVEL = 1  # cheap on a Pi; JSON of readings still shrinks 3-6x
RESERVE_BYTES = 4 * 1024**2  # room set aside for the moment the file system is full (~ a full WAL)
_FULL_KEEP = 0.8  # after SQLITE_FULL, keep the buffer under this share of the size it had
_SPACE_CHECK = 5.0  # seconds between looks at the free space while capped
_FULL_WAL_PAGES = 64  # while capped, checkpoint the WAL every 64 pages (not 1000): it stays small

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS chunks (
    id INTEGER PRIMARY KEY,
    n INTEGER NOT NULL,           -- readings in this chunk
    data BLOB NOT NULL            -- zlib(JSON list of records)
);
CREATE TABLE IF NOT EXISTS batches (
    seq INTEGER PRIMARY KEY,
    kind INTEGER NOT NULL,        -- 0 data, 1 gap record
    created REAL NOT NULL,        -- UTC epoch seconds
    readings INTEGER NOT NULL,
    size INTEGER NOT NULL,        -- length of the compact JWS on the wire
    header TEXT NOT NULL,         -- base64url protected header
    payload BLOB NOT NULL,        -- zlib(payload JSON)
    sig BLOB NOT NULL,            -- raw signature
    hash BLOB NOT NULL            -- SHA-256 of the JWS: the chain link to the next batch
);
CREATE TABLE IF NOT EXISTS cursors (uplink TEXT PRIMARY KEY, seq INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS parked (        -- batches an uplink's destination refused for good
    uplink TEXT NOT NULL,
    seq INTEGER NOT NULL,
    reason TEXT NOT NULL,
    status INTEGER,                        -- e.g. the HTTP status
    parked REAL NOT NULL,                  -- UTC epoch seconds
    resend INTEGER NOT NULL DEFAULT 0,     -- set by `citygw resend`
    PRIMARY KEY (uplink, seq)
) WITHOUT ROWID;
"""


class BatchSigner(Protocol):
    """What the buffer needs of a signer (see :class:`gateway.signing.Signer`)."""

    def sign(self, payload: bytes) -> str: ...


@dataclass(frozen=True, slots=True)
class BatchLimits:
    """When staged readings are sealed: whichever limit is reached first."""

    max_readings: int = 1000
    max_bytes: int = 256 * 1024  # of the compact JWS
    max_age: float = 10.0  # seconds a reading may wait in staging


@dataclass(frozen=True, slots=True)
class Outgoing:
    """A sealed batch (or gap record) as an uplink sends it."""

    seq: int
    data: bytes  # the compact JWS, ASCII
    readings: int
    kind: int
    created: float

    @property
    def jws(self) -> str:
        return self.data.decode("ascii")


@dataclass(frozen=True, slots=True)
class Gap:
    """Batches dropped by retention before every uplink had them."""

    first: int
    last: int
    batches: int
    readings: int
    reason: str


@dataclass(slots=True)
class CommitResult:
    accepted: int = 0
    sealed: list[int] = field(default_factory=list)
    gaps: list[Gap] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class BufferStats:
    staged: int  # readings accepted, not yet sealed
    batches: int  # batches (and gap records) held
    undelivered_readings: int
    last_seq: int
    used_bytes: int
    file_bytes: int
    cursors: dict[str, int]
    oldest_created: float | None


def _is_full(exc: BaseException) -> bool:
    """SQLITE_FULL: the file system (not our max_disk) has no room for the write."""
    return isinstance(exc, sqlite3.Error) and getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL


def _b64(data: bytes) -> bytes:
    return base64.urlsafe_b64encode(data).rstrip(b"=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _sha256_hex(jws: str) -> str:
    return hashlib.sha256(jws.encode("ascii")).hexdigest()


@dataclass(frozen=True, slots=True)
class _Sealed:
    seq: int
    readings: int
    payload: bytes
    jws: str
    digest: str
    created: float


@dataclass(slots=True)
class _Chunk:
    id: int
    n: int
    since: float  # monotonic time its readings were accepted


class Buffer:
    """One SQLite file in WAL mode holding staged readings, sealed batches and cursors."""

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
        self._chunks: deque[_Chunk] = deque()
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

    # -- lifecycle ---------------------------------------------------------------------------

    def open(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute(f"PRAGMA synchronous={self._sync}")
            db.execute("PRAGMA busy_timeout=5000")
            db.execute("PRAGMA journal_size_limit=4194304")
            # the buffer writes far more than it reads back: a small page cache spares a Pi's RAM
            db.execute("PRAGMA cache_size=-512")
            db.executescript(_SCHEMA)
        except sqlite3.Error as exc:
            raise BufferError(f"cannot open buffer {self.path}: {exc}") from exc
        self._db = db
        meta = dict(db.execute("SELECT key, value FROM meta").fetchall())
        version = meta.get("schema", SCHEMA_VERSION)
        if version != SCHEMA_VERSION:
            raise BufferError(f"buffer {self.path} has schema {version}, this citygw reads {SCHEMA_VERSION}")
        owner = meta.get("gateway")
        if owner is not None and owner != self.gateway:
            log.event("buffer_owner_changed", path=self.path).warning(
                "buffer %s was written by gateway %r; continuing as %r", self.path, owner, self.gateway
            )
        self._next_seq = int(meta.get("next_seq", 1))
        self._last_hash = meta.get("last_hash")
        self._pruned_seq = int(meta.get("pruned_seq", 0))
        self._pruned_hash = meta.get("pruned_hash")
        self._skip = int(meta.get("stage_skip", 0))
        if meta.get("schema") != SCHEMA_VERSION or owner != self.gateway:  # no write when nothing changed
            with self._tx():
                self._put_meta(schema=SCHEMA_VERSION, gateway=self.gateway)
        now = time.monotonic()
        for chunk_id, n, data in db.execute("SELECT id, n, data FROM chunks ORDER BY id"):
            raw = zlib.decompress(data)
            records = [tuple(r) for r in json.loads(raw)]
            self._chunks.append(_Chunk(chunk_id, n, now))
            self._staged.extend(records)
            self._staged_bytes += len(raw)
        if self._skip:
            del self._staged[: self._skip]
        saved = dict(db.execute("SELECT uplink, seq FROM cursors").fetchall())
        floor = self._pruned_seq
        for name in self._uplinks:
            self._cursors[name] = max(int(saved.get(name, floor)), floor)
        self._saved_cursors = dict(self._cursors)
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

    # -- ingest and sealing ------------------------------------------------------------------

    def commit(self, records: list[Record], *, seal_all: bool = False) -> CommitResult:
        """Accept ``records`` (one transaction) and seal what is due.

        On a write error nothing changes in memory or on disk and the error is raised: the
        caller still holds the records and can try again. A full file system first gets
        emergency retention (see the module docstring) and one more try.
        """
        try:
            return self._commit(records, seal_all=seal_all)
        except sqlite3.Error as exc:
            if not _is_full(exc):
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
        raw_new = json.dumps(records, separators=(",", ":")).encode() if records else b""
        staged_bytes = self._staged_bytes + len(raw_new)
        oldest = self._chunks[0].since if self._chunks else now
        plan = self._plan(staged, staged_bytes, now - oldest, seal_all=seal_all)
        sealed_count = sum(b.readings for b in plan)
        durable = bool(plan) and self._sync != "FULL"
        result = CommitResult(accepted=len(records), sealed=[b.seq for b in plan])
        if durable:  # a sealed batch may leave the box at once: its seq must survive a power cut
            db.execute("PRAGMA synchronous=FULL")
        pruned = self._pruned_seq, self._pruned_hash
        try:
            with self._tx():
                new_chunk: _Chunk | None = None
                keep_new = records[max(0, sealed_count - old_count) :] if records else []
                if keep_new:
                    data = raw_new if len(keep_new) == len(records) else json.dumps(keep_new).encode()
                    cur = db.execute(
                        "INSERT INTO chunks (n, data) VALUES (?, ?)",
                        (len(keep_new), zlib.compress(data, _ZLEVEL)),
                    )
                    assert cur.lastrowid is not None
                    new_chunk = _Chunk(cur.lastrowid, len(keep_new), now)
                rows = [
                    (
                        b.seq,
                        KIND_DATA,
                        b.created,
                        b.readings,
                        len(b.jws),
                        b.jws.partition(".")[0],
                        zlib.compress(b.payload, _ZLEVEL),
                        _unb64(b.jws[-_SIG_B64_LEN:]),
                        bytes.fromhex(b.digest),
                    )
                    for b in plan
                ]
                if rows:
                    db.executemany("INSERT INTO batches VALUES (?,?,?,?,?,?,?,?,?)", rows)
                chunks, skip = self._consume_chunks(min(sealed_count, old_count))
                seq, prev = (plan[-1].seq + 1, plan[-1].digest) if plan else (self._next_seq, self._last_hash)
                self._put_meta(next_seq=seq, last_hash=prev, stage_skip=skip)
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
        try:
            result.gaps = self._retention()
        except sqlite3.Error as exc:  # the readings are accepted; retention tries again next commit
            if not _is_full(exc) or self.full_cap is None:
                log.event("retention_failed", path=self.path).error("retention failed: %s", exc)
        return result

    def _plan(self, staged: list[Record], staged_bytes: int, age: float, *, seal_all: bool) -> list[_Sealed]:
        """Seal (build, sign, chain) the batches due now, in seq order; nothing is stored yet."""
        limits = self.limits
        plan: list[_Sealed] = []
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
                payload = encode_payload(self.gateway, seq, prev, created, staged[start : start + n])
                size = self._jws_size(len(payload))
                if size <= limits.max_bytes or n == 1:
                    break
                n = max(1, int(n * limits.max_bytes / size * 0.95))
            jws = self._signer.sign(payload)
            digest = _sha256_hex(jws)
            plan.append(_Sealed(seq, n, payload, jws, digest, created))
            start += n
            seq, prev = seq + 1, digest
        return plan

    def _jws_size(self, payload_len: int) -> int:
        header_len = len(_b64(b'{"alg":"EdDSA","kid":"' + b"x" * 43 + b'"}'))
        return header_len + 1 + (4 * payload_len + 2) // 3 + 1 + _SIG_B64_LEN

    def _consume_chunks(self, count: int) -> tuple[deque[_Chunk], int]:
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

    # -- delivery ----------------------------------------------------------------------------

    def fetch(self, after: int, limit: int, uplink: str | None = None) -> list[Outgoing]:
        """Up to ``limit`` batches with seq > ``after``, in seq order, as compact JWS.

        With ``uplink``, what is returned counts as possibly delivered to it until acknowledged:
        retention does not drop it (a gap record must never claim a batch the platform has)."""
        rows = (
            self._require_db()
            .execute(
                "SELECT seq, kind, created, readings, header, payload, sig FROM batches"
                " WHERE seq > ? ORDER BY seq LIMIT ?",
                (after, limit),
            )
            .fetchall()
        )
        out = [
            Outgoing(
                seq,
                b".".join((header.encode(), _b64(zlib.decompress(payload)), _b64(sig))),
                readings,
                kind,
                created,
            )
            for seq, kind, created, readings, header, payload, sig in rows
        ]
        if uplink is not None and out:
            self._sent[uplink] = max(self._sent.get(uplink, 0), out[-1].seq)
        return out

    def ack(self, uplink: str, seq: int) -> None:
        """Record that ``uplink`` holds every batch up to ``seq`` (persisted with the next commit)."""
        if seq > self._cursors.get(uplink, 0):
            self._cursors[uplink] = seq

    def park(self, uplink: str, seq: int, reason: str, status: int | None = None) -> None:
        """Keep batch ``seq`` for ``uplink`` (never pruned, never dropped by retention) until resent."""
        with self._tx():
            self._require_db().execute(
                "INSERT INTO parked (uplink, seq, reason, status, parked) VALUES (?, ?, ?, ?, ?)"
                " ON CONFLICT(uplink, seq) DO UPDATE SET reason = excluded.reason,"
                " status = excluded.status, parked = excluded.parked, resend = 0",
                (uplink, seq, reason[:500], status, time.time()),
            )

    def unpark(self, uplink: str, seq: int) -> None:
        with self._tx():
            self._require_db().execute("DELETE FROM parked WHERE uplink = ? AND seq = ?", (uplink, seq))

    def resend_requests(self, uplink: str) -> list[Outgoing]:
        """Parked batches of ``uplink`` that `citygw resend` marked."""
        rows = (
            self._require_db()
            .execute("SELECT seq FROM parked WHERE uplink = ? AND resend = 1 ORDER BY seq", (uplink,))
            .fetchall()
        )
        return [b for (seq,) in rows for b in self.fetch(seq - 1, 1) if b.seq == seq]

    def cursor(self, uplink: str) -> int:
        return self._cursors.get(uplink, self._pruned_seq)

    @property
    def last_seq(self) -> int:
        return self._next_seq - 1

    def seal_due_at(self) -> float | None:
        """Monotonic time at which the oldest staged reading must be sealed; None if none is."""
        if not self._staged or not self._chunks:
            return None
        return self._chunks[0].since + self.limits.max_age

    @property
    def staged_count(self) -> int:
        return len(self._staged)

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

    def _save_cursors(self) -> None:
        changed = [(k, v) for k, v in self._cursors.items() if self._saved_cursors.get(k) != v]
        if changed:
            self._require_db().executemany(
                "INSERT INTO cursors (uplink, seq) VALUES (?, ?)"
                " ON CONFLICT(uplink) DO UPDATE SET seq = excluded.seq",
                changed,
            )
            self._saved_cursors.update(changed)

    def _prune(self) -> None:
        """Delete batches every configured uplink has (none while there is no uplink)."""
        if not self._cursors:
            return
        floor = min(self._cursors.values())
        if floor <= self._pruned_seq:
            return
        db = self._require_db()
        row = db.execute(
            "SELECT hash FROM batches WHERE seq <= ? ORDER BY seq DESC LIMIT 1", (floor,)
        ).fetchone()
        if row is None:
            return
        db.execute("DELETE FROM batches WHERE seq <= ? AND seq NOT IN (SELECT seq FROM parked)", (floor,))
        self._pruned_seq, self._pruned_hash = floor, bytes(row[0]).hex()
        self._put_meta(pruned_seq=floor, pruned_hash=self._pruned_hash)

    # -- retention ---------------------------------------------------------------------------

    def used_bytes(self) -> int:
        db = self._require_db()
        pages = db.execute("PRAGMA page_count").fetchone()[0]
        free = db.execute("PRAGMA freelist_count").fetchone()[0]
        size: int = db.execute("PRAGMA page_size").fetchone()[0]
        return int((pages - free) * size)

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
        now = time.time()
        if now - self._last_age_check >= 60.0:
            self._last_age_check = now
            gap = self._drop_older_than(now - self.max_age)
            if gap:
                gaps.append(gap)
        return gaps

    # -- a full file system ------------------------------------------------------------------

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
        cap = int(used * _FULL_KEEP)
        first = self.full_cap is None
        self.full_cap = cap if first else min(cap, self.full_cap or cap)
        self._last_space_check = time.monotonic()
        if first:
            self.full_episodes += 1
            self._full_dropped = [0, 0]
            self._require_db().execute(f"PRAGMA wal_autocheckpoint={_FULL_WAL_PAGES}")
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
            if not _is_full(exc):
                raise
            return []
        self._checkpoint()  # the deletion's pages are now free inside the file: commits reuse them
        return [gap] if gap else []

    def _check_space(self) -> None:
        """While capped: once the file system has room again, make the reserve and lift the cap."""
        now = time.monotonic()
        if now - self._last_space_check < _SPACE_CHECK:
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
                "SELECT seq, readings FROM batches WHERE kind = ? AND created < ?"
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

    def _replace_with_gap(self, picked: list[tuple[int, int]], reason: str) -> Gap:
        """Delete the batches ``picked`` and store a signed gap record at the last one's seq."""
        db = self._require_db()
        first, last = picked[0][0], picked[-1][0]
        readings = sum(n for _, n in picked)
        gap = Gap(first, last, len(picked), readings, reason)
        last_hash = bytes(db.execute("SELECT hash FROM batches WHERE seq = ?", (last,)).fetchone()[0])
        body = {
            "gateway": self.gateway,
            "gap": {
                "from": first,
                "to": last,
                "batches": gap.batches,
                "readings": readings,
                "reason": reason,
            },
            "prev": self._hash_before(first),
            "last": last_hash.hex(),
            "created": round(time.time(), 3),
        }
        payload = json.dumps(body, separators=(",", ":")).encode()
        jws = self._signer.sign(payload)
        header = jws.partition(".")[0]
        sig = _unb64(jws[-_SIG_B64_LEN:])
        with self._tx():
            db.execute("DELETE FROM batches WHERE seq BETWEEN ? AND ?", (first, last))
            db.execute(
                "INSERT INTO batches VALUES (?,?,?,?,?,?,?,?,?)",
                (
                    last,
                    KIND_GAP,
                    time.time(),
                    0,
                    len(jws),
                    header,
                    zlib.compress(payload, _ZLEVEL),
                    sig,
                    last_hash,
                ),
            )
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

    # -- status ------------------------------------------------------------------------------

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

    # -- helpers -----------------------------------------------------------------------------

    def _require_db(self) -> sqlite3.Connection:
        if self._db is None:
            raise BufferError("buffer is not open")
        return self._db

    def _put_meta(self, **values: object) -> None:
        self._require_db().executemany(
            "INSERT INTO meta (key, value) VALUES (?, ?)"
            " ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            list(values.items()),
        )

    def _tx(self) -> _Transaction:
        return _Transaction(self._require_db())


class _Transaction:
    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def __enter__(self) -> None:
        self._db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is None:
            self._db.execute("COMMIT")
        else:
            self._db.execute("ROLLBACK")


def request_resend(
    path: Path, *, uplink: str | None = None, seqs: Sequence[int] = ()
) -> list[tuple[str, int]]:
    """Mark parked batches for resending (``citygw resend``); the daemon picks them up within
    30 s, or at its next start. Works beside a running daemon (WAL). Returns what was marked."""
    if not path.exists():
        raise BufferError(f"no buffer at {path}")
    db = sqlite3.connect(path, isolation_level=None)
    try:
        db.execute("PRAGMA busy_timeout=5000")
        where, args = "1 = 1", list[object]()
        if uplink is not None:
            where, args = "uplink = ?", [uplink]
        if seqs:
            where += f" AND seq IN ({','.join('?' * len(seqs))})"
            args.extend(seqs)
        db.execute("BEGIN IMMEDIATE")
        marked = db.execute(
            f"SELECT uplink, seq FROM parked WHERE {where} ORDER BY uplink, seq", args
        ).fetchall()
        db.execute(f"UPDATE parked SET resend = 1 WHERE {where}", args)
        db.execute("COMMIT")
        return [(str(u), int(s)) for u, s in marked]
    except sqlite3.OperationalError as exc:
        raise BufferError(f"cannot mark batches for resending in {path}: {exc}") from exc
    finally:
        db.close()
