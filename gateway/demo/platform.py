"""The demo's city platform: the reference receiver (:class:`~citygw.receiver.endpoint.Receiver`) on
the broker.

It subscribes with QoS 1 and a persistent session, verifies every batch's signature and hash chain,
stores it once per seq, and keeps per device what arrived verified: how many readings and the
latest value of each reading name, for the live view and the summary.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiomqtt

from citygw.logs import EventLog
from citygw.reading import Value
from citygw.receiver.endpoint import Receiver
from citygw.wire.envelope import compact_payload

TOPIC = "city/+/batches"
RECONNECT = 0.5  # seconds before connecting again

log = EventLog(__name__)


@dataclass(slots=True)
class Latest:
    value: Value
    unit: str
    time: float  # UTC epoch seconds of the reading


@dataclass(slots=True)
class DeviceSeen:
    readings: int = 0
    latest: dict[str, Latest] = field(default_factory=dict)  # reading name -> latest value
    arrived: float = 0.0  # monotonic time its last batch arrived


def _payload(token: str) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(compact_payload(token))
    return doc


class Platform:
    """Receives from the broker on ``port``; batches land in ``db`` (SQLite)."""

    def __init__(self, port: int, *, db: Path, keys: Iterable[Path]) -> None:
        self.port = port
        self.receiver = Receiver(db, keys)
        self.devices: dict[str, DeviceSeen] = {}
        self.batches = 0  # verified and stored
        self.readings = 0

    async def run(self, ready: asyncio.Event) -> None:
        """Receive until cancelled; ``ready`` is set once subscribed. A lost connection is made
        again: the session is persistent, so the broker keeps what arrives meanwhile."""
        while True:
            try:
                async with aiomqtt.Client(
                    "127.0.0.1", self.port, identifier="citygw-demo-platform", clean_session=False
                ) as client:
                    await client.subscribe(TOPIC, qos=1)
                    ready.set()
                    async for message in client.messages:
                        payload = message.payload
                        if isinstance(payload, bytes | bytearray):
                            self.accept(bytes(payload).decode("ascii", errors="replace"))
            except aiomqtt.MqttError as exc:
                log.event("demo_platform_retrying").warning("demo platform: %s; reconnecting", exc)
                await asyncio.sleep(RECONNECT)

    def accept(self, token: str) -> None:
        verdict = self.receiver.accept(token)
        if verdict.outcome != "stored":
            return
        body = _payload(token.strip())
        self.batches += 1
        now = time.monotonic()
        device, base = "", 0.0
        for record in body["senml"]:  # RFC 8428: bn = "{gateway}/{device}/", bt once, t relative
            if "bn" in record:
                device = str(record["bn"]).rstrip("/").rsplit("/", 1)[-1]
                seen = self.devices.setdefault(device, DeviceSeen())
                seen.arrived = now
            base = float(record.get("bt", base))
            when = base + float(record.get("t", 0))
            value = record["v"] if "v" in record else record["vb"] if "vb" in record else record["vs"]
            seen = self.devices[device]
            seen.readings += 1
            latest = seen.latest.get(record["n"])
            if latest is None or when >= latest.time:
                seen.latest[record["n"]] = Latest(value, str(record.get("u", "")), when)
            self.readings += 1

    def report(self) -> dict[str, Any]:
        """The receiver's report: totals, and per gateway the seqs missing and chain links broken."""
        return self.receiver.report()

    def close(self) -> None:
        self.receiver.close()
