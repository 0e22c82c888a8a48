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

Threading: every :class:`Buffer` method is synchronous and runs on the store thread
(:class:`citygw.buffer.thread.Store`), one call at a time; the event loop reaches the buffer through the
store (``await store.call(...)``), the uplinks through :class:`citygw.pipeline.intake.UplinkOutbox`.
What other threads may read is listed on :class:`Buffer` (single ints and references, read
whole: a figure may be a commit old, never torn).

The parts, one responsibility each, stacked into :class:`Buffer`:

- :mod:`~citygw.buffer.layout`: the file's schema and the values the buffer hands out;
- :mod:`~citygw.buffer.state`: the state in memory, the connection, transactions;
- :mod:`~citygw.buffer.retention`: caps, the disk-full emergency, gap records;
- :mod:`~citygw.buffer.outbox`: batches out to the uplinks, cursors, parked batches;
- :mod:`~citygw.buffer.sealing`: staging and sealing (the JWS size estimate);
- :mod:`~citygw.buffer.damage`: a damaged file moved aside, a damaged WAL accounted for;
- :mod:`~citygw.buffer.file`: opening and closing: :class:`Buffer`.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from citygw.buffer.file import Buffer
    from citygw.buffer.layout import (
        KIND_DATA,
        KIND_GAP,
        RESERVE_BYTES,
        SCHEMA_VERSION,
        BatchLimits,
        BatchSigner,
        BufferStats,
        CommitResult,
        Gap,
        Outgoing,
        is_transient,
        new_chain_id,
        request_resend,
    )

_HOMES = {"Buffer": ".file"}  # the rest live in .layout


def __getattr__(name: str) -> Any:
    """Imported on first use: ``citygw status`` reads the layout and the report without loading
    the sealing side (the signer's cryptography)."""
    if name not in __all__:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_HOMES.get(name, ".layout"), __name__), name)
    globals()[name] = value
    return value


__all__ = [
    "KIND_DATA",
    "KIND_GAP",
    "RESERVE_BYTES",
    "SCHEMA_VERSION",
    "BatchLimits",
    "BatchSigner",
    "Buffer",
    "BufferStats",
    "CommitResult",
    "Gap",
    "Outgoing",
    "is_transient",
    "new_chain_id",
    "request_resend",
]
