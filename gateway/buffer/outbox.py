"""The outbox: what the uplinks take from the buffer (batches after a cursor), and what they
give back (acknowledgements, parked batches); cursors and pruning.
"""

from __future__ import annotations

import time
import zlib
from collections.abc import Sequence

from citygw.buffer.layout import KIND_DATA, KIND_GAP, Outgoing, b64url
from citygw.buffer.retention import Retention
from citygw.logs import EventLog
from citygw.wire.signing import chain_hash

log = EventLog(__name__)


class Outbox(Retention):
    """Batches out to the uplinks, cursors and parked batches in."""

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
                    data = b".".join((bytes(header), b64url(zlib.decompress(payload)), b64url(sig)))
                    # a data batch's hash is its chain link; a gap record's is the link it carries on
                    intact = data.isascii() and (
                        kind != KIND_DATA or chain_hash(data.decode("ascii")) == bytes(digest).hex()
                    )
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
