"""A fleet of gateways' MQTT uplinks in one process, and what the broker sees when it restarts.

Each gateway is a real :class:`~citygw.buffer.Buffer` (its own SQLite file), store, pipeline
and :class:`~citygw.uplinks.mqtt.MqttUplink` with the default reconnect backoff (or the one
given). The broker logs every connection; after a restart the connections it logs are counted
per second of its clock. Used by ``tests/test_fleet.py`` and ``bench/fleet.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from citygw.buffer import Buffer
from citygw.buffer.thread import Store
from citygw.config.model import MqttUplink as MqttUplinkConfig
from citygw.demo.broker import LocalBroker
from citygw.pipeline.intake import Pipeline
from citygw.uplinks.mqtt import MqttUplink
from citygw.wire.signing import Signer

_CONNECTED = re.compile(rb"^(\d+): New client connected from \S+ as (\S+)", re.MULTILINE)


@dataclass
class FleetReport:
    fleet: int
    down_s: float
    reconnected: int  # gateways connected again within the timeout
    peak_per_s: int  # most connections the broker logged in one second of its clock
    peak_share: float  # peak_per_s / fleet (target < 0.10)
    first_s: float  # seconds from the broker's restart to the first / last reconnection
    last_s: float
    backoff_initial: float
    backoff_max: float

    def summary(self) -> dict[str, Any]:
        return asdict(self)


def prepare_broker(broker: LocalBroker) -> None:
    """Make ``broker`` (not started yet) log each connection with its epoch second."""
    with broker.conf.open("a") as conf:
        conf.write("log_type notice\nconnection_messages true\nlog_timestamp true\n")


async def fleet_restart(
    broker: LocalBroker,
    workdir: Path,
    key: Path,
    *,
    size: int = 50,
    down_s: float = 10.0,
    timeout: float = 120.0,
    backoff: dict[str, str] | None = None,
) -> FleetReport:
    """Connect ``size`` gateways, stop the broker for ``down_s``, start it, count reconnections."""
    config = MqttUplinkConfig.model_validate({"type": "mqtt", "url": broker.url, **(backoff or {})})
    signer = Signer.from_file(key)
    stores, uplinks = [], []
    for i in range(size):
        buffer = Buffer(workdir / f"gw-{i}.db", gateway=f"gw-{i}", signer=signer, uplinks=["fleet"])
        store = Store(buffer)
        await store.open()
        pipeline = Pipeline(store, commit_interval=1.0, commit_rows=1000)
        stores.append(store)
        uplinks.append(MqttUplink("fleet", config, gateway=f"gw-{i}", pipeline=pipeline))
    tasks = [asyncio.create_task(u.run(), name=f"fleet-{i}") for i, u in enumerate(uplinks)]
    log = broker.workdir / "mosquitto.log"
    try:
        await _until(lambda: all(u.status.connects >= 1 for u in uplinks), 30, "the fleet to connect")
        broker.stop()
        offset = log.stat().st_size
        await asyncio.sleep(down_s)
        broker.start()
        restarted = time.time()
        await _until(lambda: all(u.status.connects >= 2 for u in uplinks), timeout, "the fleet to reconnect")
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(BaseException):
                await task
        for store in stores:
            await store.close()
    with log.open("rb") as f:
        f.seek(offset)
        seconds = [int(m.group(1)) for m in _CONNECTED.finditer(f.read())]
    per_second = Counter(seconds)
    peak = max(per_second.values(), default=0)
    return FleetReport(
        fleet=size,
        down_s=down_s,
        reconnected=sum(u.status.connects >= 2 for u in uplinks),
        peak_per_s=peak,
        peak_share=round(peak / size, 3),
        first_s=round(min(seconds, default=0) - restarted, 1),
        last_s=round(max(seconds, default=0) - restarted, 1),
        backoff_initial=config.backoff_initial,
        backoff_max=config.backoff_max,
    )


async def _until(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.05)
