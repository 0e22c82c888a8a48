"""From drivers to the durable buffer: a bounded intake and the group-committing writer.

Drivers hand over lists of :class:`Reading` (one poll cycle each); the clock's ``stamp`` marks
them and the edge processing stage (``process``, :mod:`citygw.pipeline.edge`) decides what of them is
kept. The writer commits them in groups — when ``commit_rows`` are waiting or the oldest has
waited ``commit_interval`` — on the buffer's own thread, seals what is due, and wakes the
uplinks. When the intake is full (the card stalled) ``put`` waits: a driver's next poll is
delayed, nothing is dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from citygw.buffer import CommitResult, Outgoing, is_transient
from citygw.buffer.thread import Store
from citygw.logs import EventLog
from citygw.reading import Reading, Record
from citygw.wire.senml import records_of

log = EventLog(__name__)


@dataclass(slots=True)
class PipelineCounters:
    accepted: int = 0  # readings committed to the buffer
    invalid: int = 0  # readings refused (a value JSON cannot carry)
    commits: int = 0
    batches: int = 0
    gaps: int = 0
    dropped: int = 0  # readings in batches retention dropped before every uplink had them
    failed_commits: int = 0


class Pipeline:
    """Owns the intake and the writer task; uplinks wait on it for new batches."""

    def __init__(self, store: Store, *, commit_interval: float, commit_rows: int, limit: int = 0) -> None:
        self.store = store
        self.commit_interval = commit_interval
        self.commit_rows = commit_rows
        # one commit's worth waits while the previous one is written: double buffering, bounded
        self.limit = limit or max(commit_rows, 1000)
        self.counters = PipelineCounters()
        self._pending: list[Record] = []
        self._first_pending = 0.0
        self._wake = asyncio.Event()
        self._room = asyncio.Event()
        self._room.set()
        self._acks_dirty = False
        self._last_commit = time.monotonic()
        self._sealed = asyncio.Condition()
        self._stopping = False
        # gateway.clock's hook: flags (and keeps monotonic) the readings put while the clock is unsynced
        self.stamp: Callable[[list[Record]], list[Record]] | None = None
        self.outbox = UplinkOutbox(self)  # the uplinks' one way to the buffer
        # gateway.report's hook: what of the stamped readings is stored (on change, aggregates)
        self.process: Callable[[list[Record]], list[Record]] | None = None

    # -- the drivers' side -------------------------------------------------------------------

    async def put(self, readings: Iterable[Reading]) -> None:
        """Hand readings to the buffer; waits while the intake is full."""
        while len(self._pending) >= self.limit:
            self._room.clear()
            await self._room.wait()
        records, refused = records_of(readings)
        self.counters.invalid += refused
        if not records:
            return
        if self.stamp is not None:
            records = self.stamp(records)
        if self.process is not None:
            records = self.process(records)
        self._admit(records)

    async def put_records(self, records: list[Record]) -> None:
        """Hand over records already stamped and processed (gateway.report's closed windows)."""
        while len(self._pending) >= self.limit:
            self._room.clear()
            await self._room.wait()
        self._admit(records)

    def _admit(self, records: list[Record]) -> None:
        if not records:
            return
        if not self._pending:
            self._first_pending = time.monotonic()
            self._wake.set()
        self._pending.extend(records)
        if len(self._pending) >= self.commit_rows:
            self._wake.set()

    @property
    def pending_count(self) -> int:
        """Readings handed over and not committed yet (held in memory)."""
        return len(self._pending)

    # -- the uplinks' side -------------------------------------------------------------------

    async def acked(self, uplink: str, seq: int) -> None:
        """An uplink holds every batch up to ``seq``; persisted (and pruned) within a second."""
        await self.store.call(self.store.buffer.ack, uplink, seq)
        if not self._acks_dirty:
            self._acks_dirty = True
            self._wake.set()

    async def wait_sealed(self, after: int) -> None:
        """Return once a batch with seq > ``after`` exists."""
        async with self._sealed:
            await self._sealed.wait_for(lambda: self.store.buffer.last_seq > after)

    # -- the writer --------------------------------------------------------------------------

    def _due(self, now: float) -> float | None:
        """Monotonic time of the next commit, None when there is nothing to do."""
        due: list[float] = []
        if self._pending:
            full = len(self._pending) >= self.commit_rows
            due.append(now if full else self._first_pending + self.commit_interval)
        seal_at = self.store.buffer.seal_due_at()
        if seal_at is not None:
            due.append(seal_at)
        if self._acks_dirty:
            due.append(self._last_commit + 1.0)
        return min(due) if due else None

    async def run(self) -> None:
        """The writer: commit whenever something is due, sleep otherwise (no polling).

        Returns after :meth:`stop`, never in the middle of a commit.
        """
        while not self._stopping:
            now = time.monotonic()
            due = self._due(now)
            if due is not None and due <= now:
                await self.commit()
                continue
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), None if due is None else due - now)

    def stop(self) -> None:
        """Ask the writer to return after its current commit."""
        self._stopping = True
        self._wake.set()

    async def commit(self, *, seal_all: bool = False) -> CommitResult | None:
        """Commit what is pending (and seal what is due).

        On a write error the design expects (the file system full, an I/O error, the file
        locked: :func:`citygw.buffer.is_transient`) the readings stay pending and the writer
        tries again a second later; any other error is raised, the readings still pending, and
        ends the daemon (``citygw.daemon.gateway``: systemd restarts it, the staged readings are on disk).
        """
        records, self._pending = self._pending, []
        self._acks_dirty = False
        self._last_commit = time.monotonic()
        try:
            result = await self.store.call(self.store.buffer.commit, records, seal_all=seal_all)
        except Exception as exc:
            self._pending = records + self._pending
            if not is_transient(exc):  # a bug or a damaged file: retrying cannot help (gateway.daemon)
                raise
            self.counters.failed_commits += 1
            if self.counters.failed_commits == 1 or self.counters.failed_commits % 100 == 0:
                log.event("commit_failed").exception(
                    "buffer commit failed (%d times so far); readings kept in memory",
                    self.counters.failed_commits,
                )
            await asyncio.sleep(1.0)
            return None
        finally:
            if len(self._pending) < self.limit:
                self._room.set()
        self.counters.accepted += result.accepted
        self.counters.commits += 1
        self.counters.batches += len(result.sealed)
        self.counters.gaps += len(result.gaps)
        self.counters.dropped += sum(gap.readings for gap in result.gaps)
        if result.sealed or result.gaps:
            async with self._sealed:
                self._sealed.notify_all()
        return result

    async def correct_times(self, fix: Callable[[Record], Record]) -> int:
        """The clock synced: pass the pending and staged readings through ``fix`` (gateway.clock)."""
        self._pending = [fix(record) for record in self._pending]
        return await self.store.call(self.store.buffer.correct_staged, fix)

    async def flush(self) -> None:
        """Shutdown: commit everything pending and seal every staged reading."""
        await self.commit(seal_all=True)


class UplinkOutbox:
    """The uplinks' one seam to the buffer: each call runs on the store thread (``store.call``),
    none touches the buffer from the event loop (:mod:`citygw.buffer`'s threading contract)."""

    def __init__(self, pipeline: Pipeline) -> None:
        self._pipeline = pipeline
        self._store = pipeline.store

    @property
    def chain(self) -> str:
        """The buffer's chain id: every batch it holds belongs to it (``Idempotency-Key``).

        Set when the buffer is opened, before any uplink starts, and never changed while the
        daemon runs (a replaced buffer is a new chain only at the next start), so it is read
        here without a trip to the store thread. Batches sealed by a citygw before chains (v1
        payloads, kept across an upgrade) fall under it too: their seqs precede the chain's own.
        """
        return self._store.buffer.chain

    async def cursor(self, uplink: str) -> int:
        """The last seq ``uplink`` acknowledged (its saved cursor)."""
        return await self._store.call(self._store.buffer.cursor, uplink)

    async def fetch(self, after: int, limit: int, uplink: str) -> list[Outgoing]:
        """Up to ``limit`` batches after ``after``, in seq order, handed to ``uplink``."""
        return await self._store.call(self._store.buffer.fetch, after, limit, uplink)

    async def acked(self, uplink: str, seq: int) -> None:
        """``uplink`` holds every batch up to ``seq``."""
        await self._pipeline.acked(uplink, seq)

    async def wait_sealed(self, after: int) -> None:
        """Return once a batch with seq > ``after`` exists."""
        await self._pipeline.wait_sealed(after)

    async def park(self, uplink: str, seq: int, reason: str, status: int | None) -> None:
        """Keep batch ``seq`` for ``uplink`` until a person asks to resend it."""
        await self._store.call(self._store.buffer.park, uplink, seq, reason, status)

    async def unpark(self, uplink: str, seq: int) -> None:
        await self._store.call(self._store.buffer.unpark, uplink, seq)

    async def resend_requests(self, uplink: str) -> list[Outgoing]:
        """Parked batches of ``uplink`` that ``citygw resend`` marked."""
        return await self._store.call(self._store.buffer.resend_requests, uplink)
