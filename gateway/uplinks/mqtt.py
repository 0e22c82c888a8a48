"""MQTT uplink: compact JWS batches published QoS 1, acknowledged only on PUBACK.

Each batch travels in the uplink's ``format`` (:mod:`citygw.wire.envelope`): the compact JWS, or
that JWS gzip-compressed.

The only module that imports aiomqtt. A window of publishes is kept in flight (awaiting each
PUBACK in turn would cap a 200 ms cellular link at five batches a second); the cursor moves
only over a contiguous run of PUBACKed batches, so a lost connection resends from the first
unacknowledged one (at least once; the platform dedupes on gateway + seq).
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import aiomqtt

from citygw.backoff import Backoff
from citygw.errors import DeliveryError
from citygw.logs import EventLog, library_logger
from citygw.uplinks.base import Delivery, UplinkState, UplinkStatus
from citygw.wire.envelope import Format, serialize

if TYPE_CHECKING:
    from citygw.buffer import Outgoing
    from citygw.config import MqttUplink as MqttUplinkConfig
    from citygw.pipeline.intake import Pipeline
    from citygw.wire.liveness import Liveness

log = EventLog(__name__)

GOODBYE_TIMEOUT = 2.0  # seconds a clean stop waits for the broker to take the offline message


def _retryable(exc: Exception) -> bool:
    if isinstance(exc, ExceptionGroup):
        return all(_retryable(e) for e in exc.exceptions if isinstance(e, Exception))
    return isinstance(exc, aiomqtt.MqttError | OSError | DeliveryError | TimeoutError)


class MqttUplink:
    """Delivers every sealed batch to one MQTT broker, in seq order."""

    def __init__(
        self,
        name: str,
        config: MqttUplinkConfig,
        *,
        gateway: str,
        pipeline: Pipeline,
        liveness: Liveness | None = None,
    ) -> None:
        """``liveness``: the signed status messages (birth, last will, clean offline) published
        retained on ``config.status_topic`` (gateway.liveness); None publishes none."""
        self.name = name
        self.config = config
        self.gateway = gateway
        self.pipeline = pipeline
        self.liveness = liveness
        self.topic = config.topic_for(gateway)
        self.status_topic = config.status_topic_for(gateway)
        self.format = Format(config.format)
        self.status = UplinkStatus(name=name)
        self.on_puback: Callable[[float], None] | None = None  # seconds publish -> PUBACK (metrics)
        # remote configuration (gateway.remote): the retained topic of signed config documents
        self.config_topic: str | None = None
        self.on_config: Callable[[str, str], None] | None = None  # (document, where it came from)
        self._backoff = Backoff(config.backoff_initial, config.backoff_max, retry_on=_retryable)

    def _tls(self) -> ssl.SSLContext | None:
        if not self.config.tls:
            return None
        context = ssl.create_default_context(cafile=str(self.config.ca_file) if self.config.ca_file else None)
        if self.config.cert_file and self.config.cert_key_file:
            context.load_cert_chain(str(self.config.cert_file), str(self.config.cert_key_file))
        return context

    def _client(self) -> aiomqtt.Client:
        cfg = self.config
        client = aiomqtt.Client(
            cfg.host,
            cfg.port,
            username=cfg.username,
            password=cfg.password.get_secret_value() if cfg.password is not None else None,
            identifier=cfg.client_id or f"citygw-{self.gateway}-{self.name}",
            keepalive=int(cfg.keepalive),
            timeout=cfg.connect_timeout,
            tls_context=self._tls(),
            max_inflight_messages=cfg.window,
            will=(
                aiomqtt.Will(self.status_topic, self.liveness.message("offline", "lost"), qos=1, retain=True)
                if self.liveness is not None
                else None
            ),
            logger=library_logger(f"{__name__}.client.{self.name}", "mqtt_client", uplink=self.name),
        )
        client.pending_calls_threshold = cfg.window + 1
        return client

    async def run(self) -> None:
        """Connect, deliver, reconnect with jittered backoff; forever, until cancelled."""
        async for attempt in self._backoff.retrying():
            with attempt:
                self.status.state = UplinkState.CONNECTING
                connected = False
                try:
                    async with self._client() as client:
                        connected = True
                        self._backoff.reset()
                        self.status.state = UplinkState.CONNECTED
                        self.status.connects += 1
                        log.event("uplink_connected", uplink=self.name).info(
                            "uplink %s: connected to %s:%d", self.name, self.config.host, self.config.port
                        )
                        await self._announce(client)
                        try:
                            await self._session(client)
                        except asyncio.CancelledError:  # a clean stop: say so before disconnecting
                            await self._goodbye(client)
                            raise
                except Exception as exc:
                    if connected:  # the broker went away: the whole fleet is about to reconnect
                        self._backoff.session_lost()
                    self.status.disconnected(exc)
                    raise

    async def _announce(self, client: aiomqtt.Client) -> None:
        """The retained birth message: this box is online (the will, registered at connect, says
        offline for it if the connection dies)."""
        if self.liveness is not None:
            await client.publish(
                self.status_topic, self.liveness.message("online", "connected"), qos=1, retain=True
            )

    async def _goodbye(self, client: aiomqtt.Client) -> None:
        """The retained offline message of a clean stop, awaited (PUBACK) for a moment at most."""
        if self.liveness is None:
            return
        try:
            await asyncio.wait_for(
                client.publish(
                    self.status_topic, self.liveness.message("offline", "stopped"), qos=1, retain=True
                ),
                GOODBYE_TIMEOUT,
            )
        except (aiomqtt.MqttError, TimeoutError) as exc:
            log.event("status_offline_unsent", uplink=self.name).warning(
                "uplink %s: the offline status was not acknowledged (%s); the broker's last will "
                "says offline when the connection times out",
                self.name,
                exc,
            )

    async def _session(self, client: aiomqtt.Client) -> None:
        """Publish until the connection fails; raises to reconnect."""
        timeout = max(10.0, self.config.keepalive * 1.5)

        async def publish(batch: Outgoing) -> None:
            started = time.monotonic()
            body = serialize(batch.data, self.format)
            await client.publish(self.topic, body, qos=1, timeout=timeout)  # returns on PUBACK
            if self.on_puback is not None:
                self.on_puback(time.monotonic() - started)

        if self.config_topic is not None and self.on_config is not None:
            await client.subscribe(self.config_topic, qos=1, timeout=timeout)
        watcher = asyncio.ensure_future(self._watch(client))
        try:
            await Delivery(
                self.name, self.pipeline.outbox, publish, window=self.config.window, status=self.status
            ).run(watcher)
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError, aiomqtt.MqttError):
                await watcher

    async def _watch(self, client: aiomqtt.Client) -> None:
        """Hands config documents over; ends (raising) when the connection drops: aiomqtt's
        message stream does that."""
        async for message in client.messages:
            topic = self.config_topic
            if topic is None or self.on_config is None or not message.topic.matches(topic):
                continue
            payload = message.payload
            if isinstance(payload, bytes | bytearray) and payload:  # empty: the retained one was cleared
                self.on_config(bytes(payload).decode("utf-8", "replace"), f"mqtt {self.name} {topic}")
