"""Backlog drain per uplink type: 24 h of 50 sensors at 1 Hz (4.32 M readings) waiting for the link.

The backlog is built once (real Buffer, real signer, 1,000 readings per batch), copied for each
uplink type, and drained by `citygw run` (a subprocess with `devices: {}`) into a loopback sink:
mosquitto + a counting subscriber (mqtt), or a counting aiohttp server (http, ngsi-ld; the
NGSI-LD broker is the one allowed fake). Time runs from the daemon's READY until its cursor for
the uplink reaches the last seq (read from the buffer file, WAL). RSS is sampled during the drain:
it must not grow with the backlog. Prints one JSON line.

Usage: python bench/uplinks.py [--hours 24] [--sensors 50] [--types mqtt,http,ngsi-ld]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import random
import shutil
import sqlite3
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from aiohttp import web
from running import start_daemon

from citygw.buffer import BatchLimits, Buffer
from citygw.demo.broker import LocalBroker, free_port
from citygw.reading import Record
from citygw.wire.signing import Signer, generate_key

QUANTITIES = [("pm25", "ug/m3"), ("temperature", "Cel"), ("relativeHumidity", "%RH"), ("co2", "ppm")]


def build_backlog(path: Path, key: Path, *, sensors: int, seconds: int, uplink: str) -> tuple[int, int]:
    """The buffer after an outage: every reading sealed and waiting for ``uplink``."""
    buf = Buffer(
        path,
        gateway="bench-gw",
        signer=Signer.from_file(key),
        uplinks=[uplink],
        limits=BatchLimits(max_readings=1000, max_age=3600),
    )
    buf.open()
    t0 = time.time() - seconds
    rng = random.Random(7)
    chunk: list[Record] = []
    total = 0
    for second in range(seconds):
        for sensor in range(sensors):
            name, unit = QUANTITIES[sensor % len(QUANTITIES)]
            value = round(20 + 5 * math.sin(second / 600 + sensor) + rng.random(), 2)
            chunk.append(Record(f"sensor-{sensor:02d}", name, value, unit, t0 + second + sensor / 1000, 0))
        if len(chunk) >= 5000:
            buf.commit(chunk)
            total += len(chunk)
            chunk = []
    buf.commit(chunk, seal_all=True)
    total += len(chunk)
    last = buf.last_seq
    buf.close()
    return total, last


class HttpSink:
    def __init__(self) -> None:
        self.port = free_port()
        self.requests = 0
        loop = asyncio.new_event_loop()
        ready = threading.Event()

        async def take(request: web.Request) -> web.Response:
            await request.read()
            self.requests += 1
            return web.Response(status=204)

        def run() -> None:
            asyncio.set_event_loop(loop)
            app = web.Application(client_max_size=64 * 1024 * 1024)
            app.router.add_route("POST", "/{tail:.*}", take)
            runner = web.AppRunner(app, access_log=None)
            loop.run_until_complete(runner.setup())
            loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", self.port).start())
            ready.set()
            loop.run_forever()

        threading.Thread(target=run, daemon=True).start()
        ready.wait(10)


def rss_kib(pid: int) -> tuple[float, float]:
    status = dict(
        line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line
    )
    return float(status["VmRSS"].split()[0]), float(status["VmHWM"].split()[0])


def drain(work: Path, key: Path, backlog: Path, kind: str, last_seq: int, readings: int) -> dict[str, Any]:
    run_dir = work / kind
    run_dir.mkdir()
    db = run_dir / "buffer.db"
    shutil.copy(backlog, db)
    broker: LocalBroker | None = None
    if kind == "mqtt":
        broker = LocalBroker()
        broker.start()
        uplink: dict[str, Any] = {"type": "mqtt", "url": broker.url}
        sub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="bench-sink")  # a platform listening
        sub.on_connect = lambda c, u, f, rc, p: c.subscribe("city/+/batches", qos=1)
        sub.connect("127.0.0.1", broker.port)
        sub.loop_start()
    else:
        sink = HttpSink()
        uplink = {
            "type": kind,
            "url": f"http://127.0.0.1:{sink.port}" + ("/batches" if kind == "http" else ""),
        }
    config = {
        "gateway": {
            "id": "bench-gw",
            "key_file": str(key),
            "location": {"latitude": 13.7465, "longitude": 100.5348},  # ngsi-ld entities need one
        },
        "buffer": {"path": str(db)},
        "uplinks": {"sink": uplink},
        "devices": {},
    }
    (run_dir / "config.yaml").write_text(json.dumps(config))
    daemon = start_daemon(run_dir / "config.yaml", run_dir, ready_within=60.0)
    started = time.monotonic()
    samples: list[float] = []
    cursor = 0
    probe = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    while cursor < last_seq and time.monotonic() - started < 900:
        time.sleep(0.5)
        rss, _ = rss_kib(daemon.pid)
        samples.append(rss / 1024)
        row = probe.execute("SELECT seq FROM cursors WHERE uplink = 'sink'").fetchone()
        cursor = row[0] if row else 0
    elapsed = time.monotonic() - started
    _, hwm = rss_kib(daemon.pid)
    daemon.terminate()
    daemon.wait(30)
    probe.close()
    if broker is not None:
        broker.close()
    tenth = samples[max(0, len(samples) // 10 - 1)] if samples else 0.0
    return {
        "seconds": round(elapsed, 1),
        "readings_per_s": round(readings / elapsed),
        "drained": cursor >= last_seq,
        "rss_at_10pct_mib": round(tenth, 1),
        "rss_at_end_mib": round(samples[-1], 1) if samples else 0.0,
        "peak_rss_mib": round(hwm / 1024, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hours", type=float, default=24.0)
    parser.add_argument("--sensors", type=int, default=50)
    parser.add_argument("--types", default="mqtt,http,ngsi-ld")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="citygw-bench-", dir=Path.cwd()) as tmp:
        work = Path(tmp)
        key = work / "signing.key"
        generate_key(key)
        backlog = work / "backlog.db"
        built = time.monotonic()
        readings, last_seq = build_backlog(
            backlog, key, sensors=args.sensors, seconds=int(args.hours * 3600), uplink="sink"
        )
        summary: dict[str, Any] = {
            "bench": "uplinks",
            "readings": readings,
            "batches": last_seq,
            "backlog_mib": round(backlog.stat().st_size / 2**20, 1),
            "build_s": round(time.monotonic() - built, 1),
        }
        for kind in args.types.split(","):
            summary[kind] = drain(work, key, backlog, kind, last_seq, readings)
        print(json.dumps(summary))


if __name__ == "__main__":
    main()
