"""Is a buffer's write-ahead log damaged? What SQLite's recovery would silently discard.

On open, SQLite replays the WAL frame by frame and stops at the first frame whose salt or
checksum is wrong (https://www.sqlite.org/fileformat2.html#walformat, "4.3 WAL Reset" and
"4.4 Reader Algorithm"): every committed transaction after a damaged frame is dropped without
a word. A power cut on a healthy WAL leaves at worst a torn or unwritten *tail*: no complete,
correctly checksummed commit after the break. So the WAL is *damaged* exactly when, after the
first bad frame, the following frames check out again (seeded by the bad frame's own stored
checksum: only its content was hit) up to a commit frame — transactions that were committed
and that recovery will drop. :func:`scan` finds that; :func:`repaired_copy` writes a copy of
the database with the checksum chain recomputed over those frames, so SQLite itself can say
what the file held (the buffer compares its counters with the copy's).
"""

from __future__ import annotations

import shutil
import struct
from dataclasses import dataclass
from pathlib import Path

_MAGIC_LE, _MAGIC_BE = 0x377F0682, 0x377F0683
_HEADER = 32
_FRAME_HEADER = 24


@dataclass(frozen=True, slots=True)
class WalDamage:
    """Frames ``bad`` .. ``end - 1`` hold committed transactions recovery will discard."""

    bad: int  # index of the first frame recovery rejects
    end: int  # frames up to (not including) this index form complete transactions
    frames: int  # frames in the file


def _checksum(data: bytes, s0: int, s1: int, big: bool) -> tuple[int, int]:
    words = struct.unpack(f"{'>' if big else '<'}{len(data) // 4}I", data)
    mask = 0xFFFFFFFF
    for i in range(0, len(words), 2):
        s0 = (s0 + words[i] + s1) & mask
        s1 = (s1 + words[i + 1] + s0) & mask
    return s0, s1


def scan(wal: Path) -> WalDamage | None:
    """None when the WAL is absent, empty, of an older generation past its valid part, or ends
    in a torn tail (a power cut); a :class:`WalDamage` when committed frames follow a bad one."""
    try:
        data = wal.read_bytes()
    except FileNotFoundError:
        return None
    if len(data) < _HEADER:
        return None
    magic, _version, page_size, _ckpt, salt1, salt2, c1, c2 = struct.unpack(">8I", data[:_HEADER])
    if magic not in (_MAGIC_LE, _MAGIC_BE):
        return None
    big = magic == _MAGIC_BE
    if _checksum(data[:24], 0, 0, big) != (c1, c2):
        return None  # the header itself is bad: SQLite ignores the whole WAL (nothing to compare)
    frame_size = _FRAME_HEADER + page_size
    frames = (len(data) - _HEADER) // frame_size
    s0, s1 = c1, c2
    bad: int | None = None
    for i in range(frames):
        at = _HEADER + i * frame_size
        head = data[at : at + _FRAME_HEADER]
        _page, _commit, f_salt1, f_salt2, f_c1, f_c2 = struct.unpack(">6I", head)
        if (f_salt1, f_salt2) != (salt1, salt2):
            return None  # the end of this generation: everything before it is read
        s0, s1 = _checksum(head[:8] + data[at + _FRAME_HEADER : at + frame_size], s0, s1, big)
        if (s0, s1) != (f_c1, f_c2):
            bad = i
            s0, s1 = f_c1, f_c2  # its content was hit; the chain goes on from what it stored
            break
    if bad is None:
        return None
    end = None
    for i in range(bad + 1, frames):
        at = _HEADER + i * frame_size
        head = data[at : at + _FRAME_HEADER]
        _page, commit, f_salt1, f_salt2, f_c1, f_c2 = struct.unpack(">6I", head)
        if (f_salt1, f_salt2) != (salt1, salt2):
            break
        s0, s1 = _checksum(head[:8] + data[at + _FRAME_HEADER : at + frame_size], s0, s1, big)
        if (s0, s1) != (f_c1, f_c2):
            break  # a torn tail after the damage: what came before it still counts
        if commit:
            end = i + 1
    if end is None:
        return None  # no complete transaction after the break: a torn tail, not damage
    return WalDamage(bad=bad, end=end, frames=frames)


def repaired_copy(database: Path, damage: WalDamage, dest: Path) -> Path:
    """A copy of ``database`` at ``dest`` whose WAL holds frames ``0 .. damage.end - 1`` with the
    checksum chain recomputed: SQLite reads what the committed transactions wrote (the damaged
    frame's page included, so read only what a later frame rewrote, e.g. the meta table)."""
    wal = Path(f"{database}-wal")
    data = bytearray(wal.read_bytes())
    magic, _v, page_size, _ckpt, _salt1, _salt2, c1, c2 = struct.unpack(">8I", data[:_HEADER])
    big = magic == _MAGIC_BE
    frame_size = _FRAME_HEADER + page_size
    s0, s1 = c1, c2
    for i in range(damage.end):
        at = _HEADER + i * frame_size
        s0, s1 = _checksum(
            bytes(data[at : at + 8]) + bytes(data[at + _FRAME_HEADER : at + frame_size]), s0, s1, big
        )
        struct.pack_into(">2I", data, at + 16, s0, s1)
    shutil.copyfile(database, dest)
    Path(f"{dest}-wal").write_bytes(bytes(data[: _HEADER + damage.end * frame_size]))
    return dest
