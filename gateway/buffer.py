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
import contextlib
import hashlib
import json
import os
import re
import shutil
import sqlite3
import tempfile
import time
import zlib
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from gateway import wal
from gateway.errors import BufferOwnerError, BufferStorageError
from gateway.logs import EventLog
from gateway.senml import PAYLOAD_VERSION, Record, encode_payload

log = EventLog(__name__)

SCHEMA_VERSION = 2  # 2: batches.held (the buffer clock at sealing), meta.chain
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
    created REAL NOT NULL,        -- UTC epoch seconds (shown to people; never used for age)
    readings INTEGER NOT NULL,
    size INTEGER NOT NULL,        -- length of the compact JWS on the wire
    header TEXT NOT NULL,         -- base64url protected header
    payload BLOB NOT NULL,        -- zlib(payload JSON)
    sig BLOB NOT NULL,            -- raw signature
    hash BLOB NOT NULL,           -- SHA-256 of the JWS: the chain link to the next batch
    held REAL                     -- the buffer clock when sealed: what max_age measures
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


_CHAIN_RE = re.compile(r"[A-Za-z0-9_-]{22}")
_DAMAGE_CODES = (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB)
_CLOCK_STEP = 1.0  # seconds: a jump of the wall clock against the monotonic one larger than this is a step


class _Damaged(Exception):
    """The file's content cannot be read: it is moved aside (internal to :meth:`Buffer.open`)."""


def new_chain_id() -> str:
    """A chain id: 16 random bytes, base64url without padding (22 characters)."""
    return base64.urlsafe_b64encode(os.urandom(16)).rstrip(b"=").decode("ascii")


def _is_damage(exc: sqlite3.Error) -> bool:
    """SQLITE_CORRUPT or SQLITE_NOTADB: the file is damaged (not busy, full, or unreadable)."""
    code = getattr(exc, "sqlite_errorcode", None)
    return code is not None and code & 0xFF in _DAMAGE_CODES


def _opt_str(value: object) -> str | None:
    return None if value is None else str(value)


def _record(item: object) -> Record:
    """A stored record as JSON gave it back; TypeError/ValueError when it is not one."""
    if not isinstance(item, list) or len(item) != 6:
        raise TypeError(f"not a stored reading: {item!r:.80}")
    device, name, unit, value, when, flags = item
    if not (isinstance(device, str) and isinstance(name, str) and isinstance(unit, str)):
        raise TypeError(f"not a stored reading: {item!r:.80}")
    if not isinstance(value, int | float | bool | str) or not isinstance(flags, int):
        raise TypeError(f"not a stored reading: {item!r:.80}")
    return (device, name, unit, value, float(when), flags)


# primary result codes of conditions that may pass by themselves: full, I/O error, lock held, ...
_TRANSIENT = {
    getattr(sqlite3, f"SQLITE_{name}")
    for name in ("FULL", "IOERR", "BUSY", "LOCKED", "CANTOPEN", "READONLY", "NOMEM", "PROTOCOL")
}


def is_transient(exc: BaseException) -> bool:
    """A failed buffer call worth retrying (the file system full, an I/O error, the file locked);
    anything else (a damaged file, SQL that no longer fits the file, a bug) will fail again."""
    code = getattr(exc, "sqlite_errorcode", None)
    if isinstance(exc, sqlite3.OperationalError) and code is not None:
        return code & 0xFF in _TRANSIENT
    return isinstance(exc, OSError)


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

    # -- lifecycle ---------------------------------------------------------------------------

    def open(self) -> None:
        """Open (or create) the file. A damaged file is moved aside and a fresh buffer, on a new
        chain, takes its place (see :meth:`_move_aside`); one of another gateway is refused."""
        try:
            self._open_file()
        except _Damaged as damage:
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
            if _is_damage(exc):
                raise _Damaged(str(exc)) from exc
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
        """Read what the file holds into memory; raises _Damaged for content that cannot be read."""
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
        db.executescript(_SCHEMA)
        if version == 1 and "batches" in tables:
            columns = {row[1] for row in db.execute("PRAGMA table_info(batches)")}
            if "held" not in columns:
                db.execute("ALTER TABLE batches ADD COLUMN held REAL")
        try:
            self._next_seq = int(str(meta.get("next_seq", 1)))
            self._last_hash = _opt_str(meta.get("last_hash"))
            self._pruned_seq = int(str(meta.get("pruned_seq", 0)))
            self._pruned_hash = _opt_str(meta.get("pruned_hash"))
            self._skip = int(str(meta.get("stage_skip", 0)))
            self._clock_base = float(str(meta.get("clock", 0.0)))
            self._clock_mono = time.monotonic()
            self._accepted_total = int(str(meta.get("accepted", 0)))
            reset = meta.get("reset")
            self._reset = json.loads(str(reset)) if reset is not None else None
        except (TypeError, ValueError) as exc:
            raise _Damaged(f"its meta table is damaged ({exc})") from exc
        chain = meta.get("chain")
        fresh: dict[str, object] = dict(self._pending_meta)
        self._pending_meta = {}
        if "reset" in fresh:
            self._reset = json.loads(str(fresh["reset"]))
        if not isinstance(chain, str) or not _CHAIN_RE.fullmatch(chain):
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
        self.moved_aside = _opt_str(fresh.get("moved_aside", meta.get("moved_aside")))
        now = time.monotonic()
        for chunk_id, n, data in db.execute("SELECT id, n, data FROM chunks ORDER BY id"):
            try:
                raw = zlib.decompress(data)
                records = [_record(r) for r in json.loads(raw)]
            except (zlib.error, ValueError, TypeError) as exc:
                raise _Damaged(f"staged chunk {chunk_id} cannot be read ({exc})") from exc
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
                    to, last = held_next - 1, _opt_str(held.get("last_hash"))
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
        body = {
            "v": PAYLOAD_VERSION,
            "gateway": self.gateway,
            "chain": self.chain,
            "gap": {
                "from": first,
                "to": to,
                "batches": to - first + 1,
                "readings": readings,
                "reason": "corrupt",
            },
            "prev": prev,
            "last": last,
            "created": round(time.time(), 3),
        }
        payload = json.dumps(body, separators=(",", ":")).encode()
        jws = self._signer.sign(payload)
        record = {
            "readings": readings if lost is not None else None,
            "from": first,
            "to": to,
            "kept": kept.name,
        }
        with self._tx():
            self._require_db().execute(
                "INSERT INTO batches VALUES (?,?,?,?,?,?,?,?,?,?)",
                (
                    to,
                    KIND_GAP,
                    time.time(),
                    0,
                    len(jws),
                    jws.partition(".")[0],
                    zlib.compress(payload, _ZLEVEL),
                    _unb64(jws[-_SIG_B64_LEN:]),
                    bytes.fromhex(last),
                    self._held_now(),
                ),
            )
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
            if isinstance(old_chain, str) and _CHAIN_RE.fullmatch(old_chain):
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
        held = self._held_now()
        accepted_total = self._accepted_total + len(records)
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
            digest = _sha256_hex(jws)
            plan.append(_Sealed(seq, n, payload, jws, digest, created))
            start += n
            seq, prev = seq + 1, digest
        return plan

    def _jws_size(self, payload_len: int) -> int:
        header_len = len(_b64(b'{"alg":"Ed25519","kid":"' + b"x" * 43 + b'"}'))  # the longer alg
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
        retention does not drop it (a gap record must never claim a batch the platform has).
        A stored batch whose JWS no longer hashes to its chain link (damaged on the card) is
        quarantined: replaced by a signed gap record (reason ``corrupt``) and counted."""
        while True:
            rows = (
                self._require_db()
                .execute(
                    "SELECT seq, kind, created, readings, CAST(header AS BLOB), payload, sig, hash"
                    " FROM batches WHERE seq > ? ORDER BY seq LIMIT ?",
                    (after, limit),
                )
                .fetchall()
            )
            out: list[Outgoing] = []
            damaged: tuple[int, int, int, str] | None = None
            for seq, kind, created, readings, header, payload, sig, digest in rows:
                try:
                    data = b".".join((bytes(header), _b64(zlib.decompress(payload)), _b64(sig)))
                    # a data batch's hash is its chain link; a gap record's is the link it carries on
                    linked = kind != KIND_DATA or hashlib.sha256(data).digest() == bytes(digest)
                    intact = linked and data.isascii()
                    why = "its JWS does not match its stored hash"
                except zlib.error as exc:
                    intact, why = False, f"its payload cannot be decompressed ({exc})"
                if not intact:
                    damaged = seq, kind, int(readings), why
                    break
                out.append(Outgoing(seq, data, readings, kind, created))
            if damaged is None:
                break
            self._quarantine(*damaged)
        if uplink is not None and out:
            self._sent[uplink] = max(self._sent.get(uplink, 0), out[-1].seq)
        return out

    def _quarantine(self, seq: int, kind: int, readings: int, why: str) -> None:
        """Replace the damaged batch ``seq`` by a signed gap record (reason ``corrupt``)."""
        self.corrupt_batches += 1
        log.event("batch_corrupt", seq=seq).error(
            "buffer: batch %d (%d readings) is damaged on disk (%s); replaced by a signed gap record"
            " (reason corrupt), delivery goes on",
            seq,
            readings,
            why,
        )
        if kind == KIND_GAP:  # a damaged gap record: sign it again for its own seq
            readings = 0
        self._replace_with_gap([(seq, readings)], "corrupt", quiet=True)

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

    def set_uplinks(self, uplinks: Sequence[str]) -> None:
        """A reload changed the uplinks: a new one starts from its saved cursor (else from what is
        still held), one that went no longer holds batches back from pruning."""
        floor = self._pruned_seq
        for name in uplinks:
            if name not in self._cursors:
                saved = (
                    self._require_db().execute("SELECT seq FROM cursors WHERE uplink = ?", (name,)).fetchone()
                )
                self._cursors[name] = max(int(saved[0]) if saved else floor, floor)
                self._saved_cursors[name] = self._cursors[name]
        for name in set(self._cursors) - set(uplinks):
            del self._cursors[name]
            self._sent.pop(name, None)
        self._uplinks = list(uplinks)

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
        self._watch_wall_clock()
        now = time.monotonic()
        if now - self._last_age_check >= min(60.0, max(1.0, self.max_age / 60)):
            self._last_age_check = now
            gap = self._drop_older_than(self._held_now() - self.max_age)
            if gap:
                gaps.append(gap)
        return gaps

    def _held_now(self) -> float:
        """The buffer clock: seconds this buffer has been open over its life (monotonic)."""
        return self._clock_base + time.monotonic() - self._clock_mono

    def _watch_wall_clock(self) -> None:
        """Say so once when the wall clock steps (NTP after a boot without RTC): ages do not move."""
        offset = time.time() - time.monotonic()
        step = offset - self._wall_offset
        if abs(step) <= _CLOCK_STEP:
            return
        self._wall_offset = offset
        self.clock_steps += 1
        log.event("buffer_clock_step", path=self.path).warning(
            "buffer: the wall clock stepped by %+.0f s; batch ages for max_age are measured on the"
            " buffer's monotonic clock, so the step drops nothing",
            step,
        )

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

    def _replace_with_gap(self, picked: list[tuple[int, int]], reason: str, *, quiet: bool = False) -> Gap:
        """Delete the batches ``picked`` and store a signed gap record at the last one's seq."""
        db = self._require_db()
        first, last = picked[0][0], picked[-1][0]
        readings = sum(n for _, n in picked)
        gap = Gap(first, last, len(picked), readings, reason)
        last_hash = bytes(db.execute("SELECT hash FROM batches WHERE seq = ?", (last,)).fetchone()[0])
        body = {
            "v": PAYLOAD_VERSION,
            "gateway": self.gateway,
            "chain": self.chain,
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
                "INSERT INTO batches VALUES (?,?,?,?,?,?,?,?,?,?)",
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
                    self._held_now(),
                ),
            )
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
            raise BufferStorageError("buffer is not open")
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
        raise BufferStorageError(f"no buffer at {path}")
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
        raise BufferStorageError(f"cannot mark batches for resending in {path}: {exc}") from exc
    finally:
        db.close()
