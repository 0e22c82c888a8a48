"""What every uplink shares: its status, its outcomes, and in-order windowed delivery.

An uplink's ``deliver(batch)`` returns when the destination has the batch, raises
:class:`Rejected` when the destination refuses it for good (the batch is parked: kept on disk,
counted, re-sendable with ``citygw resend``), and raises anything else for "try again later"
(the session ends and the uplink reconnects with backoff, resending from its cursor).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import ssl
from collections import Counter, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from citygw import redact
from citygw.errors import CitygwError, DeliveryError
from citygw.logs import EventLog

if TYPE_CHECKING:
    from citygw.buffer import Outgoing
    from citygw.pipeline.intake import UplinkOutbox

log = EventLog(__name__)

RESEND_CHECK = 30.0  # seconds between looks for batches `citygw resend` asked for


class UplinkState(enum.Enum):
    CONNECTING = "connecting"
    CONNECTED = "connected"
    DISCONNECTED = "disconnected"


@dataclass(slots=True)
class UplinkStatus:
    name: str
    state: UplinkState = UplinkState.CONNECTING
    connects: int = 0
    acked_seq: int = 0
    delivered_batches: int = 0
    delivered_readings: int = 0
    parked: int = 0
    last_error: str = ""
    failures: Counter[str] = field(default_factory=Counter)  # failure_reason() -> count (metrics)

    def disconnected(self, exc: BaseException) -> None:
        """The connection failed: say why in the log, once per distinct reason (a dead broker must
        not write a line per retry for days)."""
        self.state = UplinkState.DISCONNECTED
        self.failures[failure_reason(exc)] += 1
        text = redact.text(str(exc) or type(exc).__name__)  # a url in it may carry a secret
        if text != self.last_error:
            log.event("uplink_retrying", uplink=self.name).warning(
                "uplink %s: %s (retrying with backoff)", self.name, text
            )
        self.last_error = text


def failure_reason(exc: BaseException) -> str:
    """One short word for why a connection or a delivery failed, the label of
    ``citygw_uplink_failures_total``: ``http_<status>``, ``timeout``, ``tls``, ``refused``,
    ``network``, else the error's type (a bounded set: nothing of the peer's text)."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    status = getattr(exc, "status", None)
    if isinstance(status, int):
        return f"http_{status}"
    cause: BaseException | None = exc
    for _ in range(4):  # DeliveryError and aiomqtt's errors wrap the OS's
        if cause is None:
            break
        if isinstance(cause, TimeoutError):
            return "timeout"
        if isinstance(cause, ssl.SSLError):
            return "tls"
        if isinstance(cause, ConnectionRefusedError):
            return "refused"
        if isinstance(cause, OSError):
            return "network"
        cause = cause.__cause__ or cause.__context__
    return type(exc).__name__


class Rejected(CitygwError):
    """The destination refused a batch for good; retrying the same bytes cannot help."""

    def __init__(self, reason: str, *, status: int | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status


class RetryLater(DeliveryError):
    """The destination asked us to come back later (HTTP 429/503 with Retry-After, ...)."""

    def __init__(self, reason: str, *, retry_after: float | None = None, status: int | None = None) -> None:
        super().__init__(reason)
        self.retry_after = retry_after
        self.status = status


Deliver = Callable[["Outgoing"], Awaitable[None]]


class Delivery:
    """Delivers every sealed batch after an uplink's cursor, in seq order, ``window`` at a time.

    The cursor moves only over a contiguous run of finished batches (delivered or parked), so
    a failed session resends from the first unfinished one: at least once, never skipped.
    """

    def __init__(
        self, name: str, outbox: UplinkOutbox, deliver: Deliver, *, window: int, status: UplinkStatus
    ) -> None:
        self.name = name
        self.outbox = outbox
        self.deliver = deliver
        self.window = window
        self.status = status

    async def _finish(self, batch: Outgoing, task: asyncio.Task[None]) -> None:
        try:
            task.result()
        except Rejected as exc:
            self.status.parked += 1
            self.status.failures[failure_reason(exc)] += 1
            log.event("batch_rejected", uplink=self.name, seq=batch.seq).warning(
                "uplink %s: batch %d rejected (%s); parked, the queue goes on", self.name, batch.seq, exc
            )
            await self.outbox.park(self.name, batch.seq, exc.reason, exc.status)
            return
        self.status.delivered_batches += 1
        self.status.delivered_readings += batch.readings

    async def _resend_parked(self) -> None:
        """Batches a person asked to resend (`citygw resend`), out of order: the platform dedupes."""
        for batch in await self.outbox.resend_requests(self.name):
            try:
                await self.deliver(batch)
            except Rejected as exc:
                await self.outbox.park(self.name, batch.seq, exc.reason, exc.status)
                log.event("batch_rejected_again", uplink=self.name, seq=batch.seq).warning(
                    "uplink %s: resent batch %d rejected again (%s)", self.name, batch.seq, exc
                )
                continue
            await self.outbox.unpark(self.name, batch.seq)
            self.status.parked = max(0, self.status.parked - 1)
            log.event("batch_resent", uplink=self.name, seq=batch.seq).info(
                "uplink %s: parked batch %d resent and accepted", self.name, batch.seq
            )

    async def run(self, watcher: asyncio.Future[None] | None = None) -> None:
        """Deliver until a retryable error (raised) or until ``watcher`` ends (connection lost).

        A destination may ask a batch to wait (HTTP ``Retry-After``), whichever place it holds in
        the window: the session then ends with a :class:`RetryLater` carrying the longest wait any
        answered batch asked for, so that no batch is sent again before its time (logged).
        """
        inflight: deque[tuple[Outgoing, asyncio.Task[None]]] = deque()
        asked: dict[int, float] = {}  # seq -> seconds its destination asked it to wait
        try:
            await self._deliver(inflight, asked, watcher)
        except DeliveryError as exc:
            await self._stop(inflight, asked)
            if not asked:
                raise
            seq, wait = max(asked.items(), key=lambda item: item[1])
            log.event("batch_retry_after", uplink=self.name, seq=seq).warning(
                "uplink %s: batch %d asked to wait %g s (Retry-After); nothing is resent before then",
                self.name,
                seq,
                wait,
            )
            if isinstance(exc, RetryLater) and (exc.retry_after or 0.0) >= wait:
                raise
            raise RetryLater(str(exc), retry_after=wait) from exc
        finally:
            await self._stop(inflight, asked)

    @staticmethod
    async def _stop(inflight: deque[tuple[Outgoing, asyncio.Task[None]]], asked: dict[int, float]) -> None:
        """Cancel what is still in flight; note the waits asked by those already answered."""
        for _, task in inflight:
            task.cancel()
        while inflight:
            batch, task = inflight.popleft()
            with contextlib.suppress(BaseException):
                await task
            if task.done() and not task.cancelled():
                exc = task.exception()
                if isinstance(exc, RetryLater) and exc.retry_after:
                    asked[batch.seq] = max(asked.get(batch.seq, 0.0), exc.retry_after)

    async def _deliver(
        self,
        inflight: deque[tuple[Outgoing, asyncio.Task[None]]],
        asked: dict[int, float],
        watcher: asyncio.Future[None] | None,
    ) -> None:
        acked = await self.outbox.cursor(self.name)
        after = acked
        await self._resend_parked()
        while True:
            if len(inflight) < self.window:
                for batch in await self.outbox.fetch(after, self.window - len(inflight), self.name):
                    inflight.append((batch, asyncio.ensure_future(self.deliver(batch))))
                    after = batch.seq
            waits: set[asyncio.Future[None]] = {watcher} if watcher is not None else set()
            if inflight:
                await asyncio.wait({inflight[0][1], *waits}, return_when=asyncio.FIRST_COMPLETED)
            else:
                sealed = asyncio.ensure_future(self.outbox.wait_sealed(after))
                try:
                    done, _ = await asyncio.wait(
                        {sealed, *waits}, timeout=RESEND_CHECK, return_when=asyncio.FIRST_COMPLETED
                    )
                finally:
                    sealed.cancel()
                if not done:
                    await self._resend_parked()
            if watcher is not None and watcher.done():
                watcher.result()
                raise DeliveryError("connection closed")
            while inflight and inflight[0][1].done():
                batch, task = inflight.popleft()
                try:
                    await self._finish(batch, task)  # raises a retryable error: reconnect, resend
                except RetryLater as exc:
                    if exc.retry_after:
                        asked[batch.seq] = exc.retry_after
                    raise
                acked = batch.seq
            if acked != self.status.acked_seq:
                self.status.acked_seq = acked
                await self.outbox.acked(self.name, acked)
