"""HTTP(S) uplinks: the JWS POSTed as it is (``http``), or as NGSI-LD entities (``ngsi-ld``).

The only module that imports aiohttp's client. Status codes decide a batch's fate:
2xx to the POST that carried it: delivered; 408, 425, 429 and 5xx (honouring Retry-After),
timeouts and connection errors retry with jittered backoff; a redirect (3xx) is never followed
(a batch must not be delivered as a body-less GET, nor moved to a host nobody configured): it is
logged once with its ``Location`` and retried with backoff, the batch kept, until the url is
corrected; any other 4xx rejects the batch for good: it is parked (kept, counted,
``citygw resend``-able) and the queue behind it goes on.

An answer's body is never read whole: a 2xx's not at all, another's only its first
:data:`EXCERPT_BYTES` (for the log), and every request, body included, ends within the uplink's
``timeout``. Urls and server text pass through :mod:`citygw.redact` before anyone sees them.
"""

from __future__ import annotations

import asyncio
import email.utils
import gzip
import hashlib
import json
import logging
import ssl
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import urlsplit, urlunsplit

import aiohttp

from citygw import redact
from citygw.backoff import Backoff
from citygw.config.location import Places
from citygw.errors import DeliveryError
from citygw.uplinks.base import Delivery, Rejected, RetryLater, UplinkState, UplinkStatus
from citygw.wire import ngsi
from citygw.wire.envelope import compact_payload

if TYPE_CHECKING:
    from citygw.buffer import Outgoing
    from citygw.config.uplinks import HttpUplink as HttpUplinkConfig
    from citygw.config.uplinks import NgsiLdUplink as NgsiLdUplinkConfig
    from citygw.pipeline.intake import Pipeline

log = logging.getLogger(__name__)

RETRY_STATUSES = frozenset({408, 425, 429})
EXCERPT_BYTES = 2048  # of an answer's body, read for the log; the rest is never read
EXCERPT_WAIT = 2.0  # seconds to wait for that excerpt; the status alone decides the outcome


def _retryable(exc: Exception) -> bool:
    return isinstance(exc, DeliveryError | aiohttp.ClientError | OSError | TimeoutError)


def retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After header: delta-seconds or an HTTP-date (RFC 9110 §10.2.3)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def outcome(status: int, text: str, headers: Mapping[str, str] | None = None) -> None:
    """Raise what an HTTP status means for a batch; return for 2xx."""
    if 200 <= status < 300:
        return
    excerpt = redact.text(" ".join(text.split())[:200])
    if 300 <= status < 400:
        where = headers.get("Location") if headers is not None else None
        shown = redact.url(" ".join(where.split()))[:300] if where else "(no Location)"
        raise DeliveryError(
            f"HTTP {status} redirect to {shown} not followed:"
            " a batch counts as delivered only on a 2xx to the url it was POSTed to; set the uplink's"
            " url to the new address"
        )
    if status in RETRY_STATUSES or status >= 500:
        hint = retry_after(headers.get("Retry-After") if headers is not None else None)
        raise RetryLater(f"HTTP {status} {excerpt}".strip(), retry_after=hint, status=status)
    raise Rejected(f"HTTP {status} {excerpt}".strip(), status=status)


def idempotency_key(gateway: str, chain: str, seq: int, *, gap: bool = False) -> str:
    """The ``Idempotency-Key`` of a batch: ``{gateway}:{chain}:{seq}``, the wire contract's key;
    of a gap record (``gap``, whose ``seq`` is its ``gap.to``): ``{gateway}:{chain}:gap:{seq}``.

    Without the chain, a replaced buffer's batches (a new chain, seqs from 1 again) would reuse
    the keys of the old chain's, and a platform or proxy that honours the header would answer
    them with the old batches' stored 2xx: counted delivered, never stored. Without ``gap:``, a
    gap record would reuse the key of the data batch ``gap.to`` it replaced, which may have been
    POSTed and stored before (its answer lost): the gap record would be answered with that 2xx,
    never stored, and the seqs before ``to`` that it accounts for would stay missing at the
    platform with no gap record to explain them. Neither a gateway id nor a chain id holds a
    ``:``; the seq is the last part.
    """
    return f"{gateway}:{chain}:gap:{seq}" if gap else f"{gateway}:{chain}:{seq}"


@dataclass(frozen=True, slots=True)
class Answer:
    """What the server said to one POST: the status, its headers, and an excerpt of its body."""

    status: int
    headers: Mapping[str, str]
    excerpt: str


async def _excerpt(response: aiohttp.ClientResponse) -> str:
    """At most :data:`EXCERPT_BYTES` of the body, waiting at most :data:`EXCERPT_WAIT` for them."""
    chunks: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(EXCERPT_WAIT):
            while size < EXCERPT_BYTES:
                chunk = await response.content.read(EXCERPT_BYTES - size)
                if not chunk:
                    break
                chunks.append(chunk)
                size += len(chunk)
    except (TimeoutError, aiohttp.ClientError):
        pass  # the status decides; the excerpt is only for the log
    return b"".join(chunks).decode("utf-8", errors="replace")


class _HttpBase:
    """Session handling shared by both HTTP uplinks."""

    def __init__(
        self, name: str, config: HttpUplinkConfig | NgsiLdUplinkConfig, *, gateway: str, pipeline: Pipeline
    ) -> None:
        self.name = name
        self.config = config
        self.gateway = gateway
        self.pipeline = pipeline
        self.status = UplinkStatus(name=name)
        self._backoff = Backoff(config.backoff_initial, config.backoff_max, retry_on=_retryable)
        # identity: a compressed answer could inflate without bound while its excerpt is read
        self._headers: dict[str, str] = {"Accept-Encoding": "identity"}
        if config.bearer_token is not None:
            self._headers["Authorization"] = f"Bearer {config.bearer_token.get_secret_value()}"
        self._auth = (
            aiohttp.BasicAuth(
                config.username,
                config.password.get_secret_value() if config.password else "",
                encoding="utf-8",  # RFC 7617 §2.1: any password, not only Latin-1 ones
            )
            if config.username
            else None
        )
        redact.remember(
            [
                *redact.secrets_of(config.url),
                config.bearer_token.get_secret_value() if config.bearer_token else None,
                config.password.get_secret_value() if config.password else None,
            ]
        )

    def _tls(self) -> ssl.SSLContext | None:
        if not self.config.url.startswith("https:"):
            return None
        context = ssl.create_default_context(cafile=str(self.config.ca_file) if self.config.ca_file else None)
        if self.config.cert_file and self.config.cert_key_file:
            context.load_cert_chain(str(self.config.cert_file), str(self.config.cert_key_file))
        return context

    async def deliver(self, session: aiohttp.ClientSession, batch: Outgoing) -> None:
        raise NotImplementedError

    async def post(
        self, session: aiohttp.ClientSession, url: str, *, data: bytes, headers: Mapping[str, str]
    ) -> Answer:
        """POST ``data`` once, within the uplink's ``timeout``: redirects not followed, and of the
        body only an excerpt read (none of a 2xx's but a 207's), the rest left unread."""
        try:
            async with (
                asyncio.timeout(self.config.timeout),
                session.post(url, data=data, headers=headers, allow_redirects=False) as response,
            ):
                wanted = response.status == 207 or not 200 <= response.status < 300
                answer = Answer(response.status, response.headers, await _excerpt(response) if wanted else "")
                response.close()  # the connection goes with whatever body is left
        except (TimeoutError, aiohttp.ClientError) as exc:
            detail = redact.text(f"{type(exc).__name__} {exc}".strip())
            raise DeliveryError(f"POST {redact.url(url)}: {detail}") from exc
        return answer

    async def run(self) -> None:
        """Deliver forever; on a retryable failure back off (Retry-After honoured) and resume."""
        async for attempt in self._backoff.retrying():
            with attempt:
                connector = aiohttp.TCPConnector(ssl=self._tls() or True, limit=self.config.window)
                timeout = aiohttp.ClientTimeout(total=self.config.timeout)
                async with aiohttp.ClientSession(
                    connector=connector,
                    timeout=timeout,
                    headers=self._headers,
                    auth=self._auth,
                    auto_decompress=False,
                ) as session:
                    self.status.state = UplinkState.CONNECTED
                    self.status.connects += 1

                    async def send(batch: Outgoing) -> None:
                        await self.deliver(session, batch)
                        self._backoff.reset()

                    try:
                        await Delivery(
                            self.name,
                            self.pipeline.outbox,
                            send,
                            window=self.config.window,
                            status=self.status,
                        ).run()
                    except Exception as exc:
                        self.status.disconnected(exc)
                        raise


class HttpUplink(_HttpBase):
    """POST of the compact JWS, ``Content-Type: application/jose``."""

    config: HttpUplinkConfig

    async def deliver(self, session: aiohttp.ClientSession, batch: Outgoing) -> None:
        body = batch.data
        headers = {
            "Content-Type": "application/jose",
            "Idempotency-Key": idempotency_key(
                self.gateway, self.pipeline.outbox.chain, batch.seq, gap=batch.gap
            ),
        }
        if self.config.gzip:
            body = gzip.compress(body, 6)
            headers["Content-Encoding"] = "gzip"
        answer = await self.post(session, self.config.url, data=body, headers=headers)
        outcome(answer.status, answer.excerpt, answer.headers)


class NgsiLdUplink(_HttpBase):
    """Batch upsert of Smart Data Models entities to an NGSI-LD context broker."""

    config: NgsiLdUplinkConfig

    def __init__(
        self,
        name: str,
        config: NgsiLdUplinkConfig,
        *,
        gateway: str,
        pipeline: Pipeline,
        places: Places | None = None,
    ) -> None:
        super().__init__(name, config, gateway=gateway, pipeline=pipeline)
        self.endpoint = upsert_endpoint(config.url)
        self.places = places or Places()
        self.naming: dict[str, ngsi.EntityNaming] = {}
        for device in {*config.entities, *self.places.devices}:
            mapping = config.entities.get(device)
            self.naming[device] = ngsi.EntityNaming(
                type=mapping.type if mapping else None,
                id=mapping.id if mapping else None,
                location=self.places.devices.get(device),
                attributes=dict(mapping.attributes) if mapping else {},
            )
        if config.tenant:
            self._headers["NGSILD-Tenant"] = config.tenant

    def entities(self, batch: Outgoing) -> list[dict[str, object]]:
        if batch.gap:
            return []  # a gap record: nothing to upsert
        payload = json.loads(compact_payload(batch.data))
        digest = hashlib.sha256(batch.data).hexdigest()[:16]
        source = f"urn:citygw:{self.gateway}:batch:{payload['seq']}:{digest}"
        return ngsi.entities(
            payload,
            source=source,
            context=list(self.config.context),
            naming=self.naming,
            location=self.places.box,
        )

    async def deliver(self, session: aiohttp.ClientSession, batch: Outgoing) -> None:
        entities = self.entities(batch)
        if not entities:
            return
        answer = await self.post(
            session,
            self.endpoint,
            data=json.dumps(entities, separators=(",", ":")).encode(),
            headers={"Content-Type": "application/ld+json"},
        )
        if answer.status == 207:  # some entities refused: the batch cannot be partly redone
            excerpt = redact.text(" ".join(answer.excerpt.split())[:200])
            raise Rejected(f"HTTP 207 partial failure {excerpt}", status=207)
        outcome(answer.status, answer.excerpt, answer.headers)


def upsert_endpoint(url: str) -> str:
    """The batch upsert endpoint below a broker's ``url``, keeping the url's query (an api key)."""
    parts = urlsplit(url)
    query = "&".join(q for q in ("options=update", parts.query) if q)
    path = parts.path.rstrip("/") + "/ngsi-ld/v1/entityOperations/upsert"
    return urlunsplit((parts.scheme, parts.netloc, path, query, ""))
