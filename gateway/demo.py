"""``citygw demo``: the real gateway on simulated devices, into a broker it starts, verified live.

Everything runs on loopback under a temporary directory: a fresh signing key, a mosquitto,
the daemon's own :class:`~gateway.daemon.Gateway` with ``config/demo.yaml`` (the same code a
pole runs), and a receiver that verifies every batch's signature and hash chain as the city
platform would. With ``--duration`` it stops by itself and prints a summary; the exit code
says whether every accepted reading arrived verified.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import aiomqtt

from gateway.config import load_config
from gateway.daemon import Gateway
from gateway.localbroker import LocalBroker
from gateway.signing import generate_key, load_public_keys
from gateway.verify import ChainVerifier

DEMO_CONFIG = Path(__file__).resolve().parent.parent / "config" / "demo.yaml"


@dataclass(slots=True)
class Received:
    batches: int = 0
    readings: int = 0
    bad: int = 0
    duplicates: int = 0
    devices: set[str] | None = None


async def _receive(port: int, verifier: ChainVerifier, seen: Received, ready: asyncio.Event) -> None:
    """The stand-in city platform: subscribe, verify each batch, count."""
    async with aiomqtt.Client("127.0.0.1", port, identifier="citygw-demo-receiver") as client:
        await client.subscribe("city/+/batches", qos=1)
        ready.set()
        async for message in client.messages:
            token = message.payload.decode("ascii") if isinstance(message.payload, bytes) else ""
            result = verifier.verify(token)
            if result.outcome.value == "duplicate":
                seen.duplicates += 1
            elif not result.ok:
                seen.bad += 1
                sys.stderr.write(f"receiver: bad batch: {result.reason}\n")
            elif result.payload is not None and "senml" in result.payload:
                seen.batches += 1
                seen.readings += result.readings
                for record in result.payload["senml"]:
                    if "bn" in record and seen.devices is not None:
                        seen.devices.add(record["bn"].split("/")[1])


def _line(gateway: Gateway, seen: Received, started: float) -> str:
    up = gateway.uplinks[0].status
    return (
        f"[{time.monotonic() - started:6.1f}s] accepted {gateway.pipeline.counters.accepted:>8} | "
        f"sealed seq {gateway.buffer.last_seq:>5} | uplink {up.state.value:<12} acked {up.acked_seq:>5} | "
        f"verified {seen.batches:>5} batches {seen.readings:>8} readings, bad {seen.bad}\n"
    )


async def _demo(duration: float | None, rate: float) -> int:
    with tempfile.TemporaryDirectory(prefix="citygw-demo-") as tmp, LocalBroker() as broker:
        workdir = Path(tmp)
        generate_key(workdir / "signing.key")
        environ = dict(
            os.environ,
            CITYGW_DEMO_DIR=str(workdir),
            CITYGW_DEMO_PORT=str(broker.port),
            CITYGW_DEMO_RATE=str(rate),
        )
        config = load_config(DEMO_CONFIG, environ=environ)
        gateway = Gateway(config, drain_timeout=10.0)
        verifier = ChainVerifier(load_public_keys([workdir / "signing.key.pub"]))
        seen = Received(devices=set())
        ready = asyncio.Event()
        started = time.monotonic()
        sys.stdout.write(
            f"citygw demo: gateway {config.gateway.id}, {len(config.devices)} simulated devices, "
            f"broker on 127.0.0.1:{broker.port}, state in {workdir}\n"
        )
        receiver = asyncio.create_task(_receive(broker.port, verifier, seen, ready), name="demo-receiver")
        await asyncio.wait_for(ready.wait(), 10)
        running = asyncio.create_task(gateway.run(), name="demo-gateway")
        try:
            while not running.done():
                await asyncio.sleep(1.0)
                sys.stdout.write(_line(gateway, seen, started))
                sys.stdout.flush()
                if duration is not None and time.monotonic() - started >= duration:
                    gateway.stop()
                    await running
        except asyncio.CancelledError:  # Ctrl-C
            gateway.stop()
            await running
        finally:
            await running
            # give the receiver a moment for the last PUBACKed batches
            deadline = time.monotonic() + 5
            while seen.readings < gateway.pipeline.counters.accepted and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
            receiver.cancel()
            with contextlib.suppress(asyncio.CancelledError, aiomqtt.MqttError):
                await receiver
        accepted = gateway.pipeline.counters.accepted
        lost = accepted - seen.readings
        devices = sorted(seen.devices or ())
        sys.stdout.write(
            f"summary: devices {len(devices)} ({', '.join(devices)}), readings accepted {accepted}, "
            f"batches verified {seen.batches}, readings verified {seen.readings}, bad {seen.bad}, "
            f"duplicates {seen.duplicates}, lost {lost}\n"
        )
        return 0 if lost == 0 and seen.bad == 0 and accepted > 0 else 1


def run_demo(*, duration: float | None, rate: float) -> int:
    try:
        return asyncio.run(_demo(duration, rate))
    except KeyboardInterrupt:
        return 0
