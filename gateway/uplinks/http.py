"""HTTP(S) uplinks: the JWS POSTed as it is (``http``), or as NGSI-LD entities (``ngsi-ld``).

The only module that imports aiohttp's client. Status codes decide a batch's fate:
2xx delivered; 408, 429 (honouring Retry-After), 5xx, timeouts and connection errors retry with
jittered backoff; any other 4xx rejects the batch for good: it is parked (kept, counted,
``citygw resend``-able) and the queue behind it goes on.
"""

from __future__ import annotations

import base64
import email.utils
import gzip
import hashlib
import json
import logging
import ssl
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING

import aiohttp

from gateway import ngsi
from gateway.backoff import Backoff
from gateway.errors import DeliveryError
from gateway.uplinks.base import Delivery, Rejected, RetryLater, UplinkState, UplinkStatus

if TYPE_CHECKING:
    from gateway.buffer import Outgoing
    from gateway.config.uplinks import HttpUplink as HttpUplinkConfig
    from gateway.config.uplinks import NgsiLdUplink as NgsiLdUplinkConfig
    from gateway.pipeline import Pipeline

log = logging.getLogger(__name__)

RETRY_STATUSES = frozenset({408, 425, 429})


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
    excerpt = " ".join(text.split())[:200]
    if status in RETRY_STATUSES or status >= 500:
        hint = retry_after(headers.get("Retry-After") if headers is not None else None)
        raise RetryLater(f"HTTP {status} {excerpt}".strip(), retry_after=hint, status=status)
    raise Rejected(f"HTTP {status} {excerpt}".strip(), status=status)


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
        self._headers: dict[str, str] = {}
        if config.bearer_token is not None:
            self._headers["Authorization"] = f"Bearer {config.bearer_token.get_secret_value()}"
        self._auth = (
            aiohttp.BasicAuth(config.username, config.password.get_secret_value() if config.password else "")
            if config.username
            else None
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

    async def run(self) -> None:
        """Deliver forever; on a retryable failure back off (Retry-After honoured) and resume."""
        async for attempt in self._backoff.retrying():
            with attempt:
                connector = aiohttp.TCPConnector(ssl=self._tls() or True, limit=self.config.window)
                timeout = aiohttp.ClientTimeout(total=self.config.timeout)
                async with aiohttp.ClientSession(
                    connector=connector, timeout=timeout, headers=self._headers, auth=self._auth
                ) as session:
                    self.status.state = UplinkState.CONNECTED
                    self.status.connects += 1

                    async def send(batch: Outgoing) -> None:
                        await self.deliver(session, batch)
                        self._backoff.reset()

                    try:
                        await Delivery(
                            self.name, self.pipeline, send, window=self.config.window, status=self.status
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
            "Idempotency-Key": f"{self.gateway}:{batch.seq}",
        }
        if self.config.gzip:
            body = gzip.compress(body, 6)
            headers["Content-Encoding"] = "gzip"
        try:
            async with session.post(self.config.url, data=body, headers=headers) as response:
                outcome(response.status, await response.text(errors="replace"), response.headers)
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise DeliveryError(f"POST {self.config.url}: {type(exc).__name__} {exc}".strip()) from exc


class NgsiLdUplink(_HttpBase):
    """Batch upsert of Smart Data Models entities to an NGSI-LD context broker."""

    config: NgsiLdUplinkConfig

    def __init__(self, name: str, config: NgsiLdUplinkConfig, *, gateway: str, pipeline: Pipeline) -> None:
        super().__init__(name, config, gateway=gateway, pipeline=pipeline)
        self.endpoint = config.url.rstrip("/") + "/ngsi-ld/v1/entityOperations/upsert?options=update"
        self.naming = {
            device: ngsi.EntityNaming(type=m.type, id=m.id) for device, m in config.entities.items()
        }
        if config.tenant:
            self._headers["NGSILD-Tenant"] = config.tenant

    def entities(self, batch: Outgoing) -> list[dict[str, object]]:
        middle = batch.data.split(b".", 2)[1]
        payload = json.loads(base64.urlsafe_b64decode(middle + b"=" * (-len(middle) % 4)))
        if "senml" not in payload:
            return []  # a gap record: nothing to upsert
        digest = hashlib.sha256(batch.data).hexdigest()[:16]
        source = f"urn:citygw:{self.gateway}:batch:{payload['seq']}:{digest}"
        return ngsi.entities(payload, source=source, context=list(self.config.context), naming=self.naming)

    async def deliver(self, session: aiohttp.ClientSession, batch: Outgoing) -> None:
        entities = self.entities(batch)
        if not entities:
            return
        try:
            async with session.post(
                self.endpoint,
                data=json.dumps(entities, separators=(",", ":")),
                headers={"Content-Type": "application/ld+json"},
            ) as response:
                text = await response.text(errors="replace")
                if response.status == 207:  # some entities refused: the batch cannot be partly redone
                    raise Rejected(f"HTTP 207 partial failure {' '.join(text.split())[:200]}", status=207)
                outcome(response.status, text, response.headers)
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise DeliveryError(f"POST {self.endpoint}: {type(exc).__name__} {exc}".strip()) from exc
