"""The buffer file's layout and the values the buffer hands out.

The SQLite schema (its version, the batch kinds), the value types of the buffer's interface
(:class:`BatchLimits`, :class:`Outgoing`, :class:`Gap`, :class:`CommitResult`, :class:`BufferStats`),
the error classification of SQLite failures, and :func:`request_resend` (``citygw resend``, which
writes beside a running daemon). Every module that reads the file's tables takes their names from
here.
"""

from __future__ import annotations

import base64
import os
import re
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass, field
from operator import attrgetter
from pathlib import Path
from typing import Protocol

from citygw.errors import BufferStorageError
from citygw.reading import Record

SCHEMA_VERSION = 2  # 2: batches.held (the buffer clock at sealing), meta.chain


KIND_DATA = 0


KIND_GAP = 1


SIG_B64_LEN = 86  # an Ed25519 signature is 64 bytes, 86 base64url characters


ZLEVEL = 1  # cheap on a Pi; JSON of readings still shrinks 3-6x


RESERVE_BYTES = 4 * 1024**2  # room set aside for the moment the file system is full (~ a full WAL)


FULL_KEEP = 0.8  # after SQLITE_FULL, keep the buffer under this share of the size it had


SPACE_CHECK = 5.0  # seconds between looks at the free space while capped


FULL_WAL_PAGES = 64  # while capped, checkpoint the WAL every 64 pages (not 1000): it stays small


SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS chunks (
    id INTEGER PRIMARY KEY,
    n INTEGER NOT NULL,           -- readings in this chunk
    data BLOB NOT NULL            -- zlib(JSON list of stored rows: see stored_row)
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
    """What the buffer needs of a signer (see :class:`citygw.wire.signing.Signer`)."""

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

    @property
    def gap(self) -> bool:
        """Whether this is a gap record (its ``seq`` is its ``gap.to``), not a data batch."""
        return self.kind == KIND_GAP


@dataclass(frozen=True, slots=True)
class Gap:
    """Batches dropped before every uplink had them (retention, or damage on the box)."""

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


def is_full(exc: BaseException) -> bool:
    """SQLITE_FULL: the file system (not our max_disk) has no room for the write."""
    return isinstance(exc, sqlite3.Error) and getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL


CHAIN_RE = re.compile(r"[A-Za-z0-9_-]{22}")


DAMAGE_CODES = (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB)


CLOCK_STEP = 1.0  # seconds: a jump of the wall clock against the monotonic one larger than this is a step


class Damaged(Exception):
    """The file's content cannot be read: it is moved aside (internal to :meth:`Buffer.open`)."""


def new_chain_id() -> str:
    """A chain id: 16 random bytes, base64url without padding (22 characters)."""
    return base64.urlsafe_b64encode(os.urandom(16)).rstrip(b"=").decode("ascii")


def is_damage(exc: sqlite3.Error) -> bool:
    """SQLITE_CORRUPT or SQLITE_NOTADB: the file is damaged (not busy, full, or unreadable)."""
    code = getattr(exc, "sqlite_errorcode", None)
    return code is not None and code & 0xFF in DAMAGE_CODES


def opt_str(value: object) -> str | None:
    return None if value is None else str(value)


STORED_COLUMNS = ("device", "name", "unit", "value", "time", "flags")
"""The order of a record's fields in a staged chunk's JSON rows (``chunks.data``): the order of the
first stored format, kept so that files written by earlier versions read back. It differs from
:class:`~citygw.reading.Record`'s (value before unit): convert with :data:`stored_row` and
:func:`stored_record`, never by position."""

stored_row = attrgetter(*STORED_COLUMNS)
"""The row a record is stored as in a staged chunk (a plain tuple in :data:`STORED_COLUMNS` order;
``json.dumps`` writes it as a JSON array)."""


def stored_record(item: object) -> Record:
    """A record from a staged chunk's row as JSON gave it back; TypeError/ValueError when it is not one."""
    if not isinstance(item, list) or len(item) != len(STORED_COLUMNS):
        raise TypeError(f"not a stored reading: {item!r:.80}")
    device, name, unit, value, when, flags = item  # STORED_COLUMNS
    if not (isinstance(device, str) and isinstance(name, str) and isinstance(unit, str)):
        raise TypeError(f"not a stored reading: {item!r:.80}")
    if not isinstance(value, int | float | bool | str) or not isinstance(flags, int):
        raise TypeError(f"not a stored reading: {item!r:.80}")
    return Record(device=device, name=name, value=value, unit=unit, time=float(when), flags=flags)


TRANSIENT = {
    getattr(sqlite3, f"SQLITE_{name}")
    for name in ("FULL", "IOERR", "BUSY", "LOCKED", "CANTOPEN", "READONLY", "NOMEM", "PROTOCOL")
}


def is_transient(exc: BaseException) -> bool:
    """A failed buffer call worth retrying (the file system full, an I/O error, the file locked);
    anything else (a damaged file, SQL that no longer fits the file, a bug) will fail again."""
    code = getattr(exc, "sqlite_errorcode", None)
    if isinstance(exc, sqlite3.OperationalError) and code is not None:
        return code & 0xFF in TRANSIENT
    return isinstance(exc, OSError)


def b64url(data: bytes) -> bytes:
    return base64.urlsafe_b64encode(data).rstrip(b"=")


@dataclass(frozen=True, slots=True)
class Sealed:
    seq: int
    readings: int
    payload: bytes
    jws: str
    digest: str
    created: float


@dataclass(slots=True)
class Chunk:
    id: int
    n: int
    since: float  # monotonic time its readings were accepted


class Transaction:
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
