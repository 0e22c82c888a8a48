"""Pipeline benchmark: synthetic -> durable buffer -> JWS -> mosquitto on loopback -> subscriber.

Runs `citygw run` as a real subprocess (the measured process) with a synthetic device that
produces as fast as the pipeline takes, and a QoS 1 subscriber in this process that counts
what arrives. Time runs from the daemon's sd_notify READY to the last reading received.
Prints one JSON line:

  readings_per_s          end to end, READY -> last reading received
  cpu_s_per_100k          the daemon's user+system CPU per 100,000 readings
  peak_rss_mib            the daemon's VmHWM
  disk_bytes_per_reading  bytes the daemon caused to be written to storage (/proc/PID/io)
  wire_bytes_per_reading  size of the compact JWS per reading (what the broker carries)
  disk_to_wire            the ratio of the two (target <= 3)

Usage: python bench/pipeline.py [--readings N] [--batch N]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from running import start_daemon

from citygw.demo.broker import LocalBroker
from citygw.wire.signing import generate_key


def proc_stat(pid: int) -> dict[str, float]:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    io = dict(line.split(": ") for line in Path(f"/proc/{pid}/io").read_text().splitlines())
    status = dict(
        line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line
    )
    return {
        "cpu": (int(fields[11]) + int(fields[12])) / ticks,
        "write_bytes": float(io["write_bytes"]) - float(io.get("cancelled_write_bytes", 0)),
        "hwm_kib": float(status["VmHWM"].split()[0]),
    }


class Counter:
    def __init__(self, port: int) -> None:
        self.readings = 0
        self.wire_bytes = 0
        self.last = 0.0
        self.done = threading.Event()
        self.target = 0
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="bench-counter")
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe("city/+/batches", qos=1)
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def _on_message(self, client: Any, userdata: Any, message: Any) -> None:
        token = message.payload
        payload = token.split(b".")[1]
        body = json.loads(__import__("base64").urlsafe_b64decode(payload + b"=" * (-len(payload) % 4)))
        self.readings += len(body.get("senml", ()))
        self.wire_bytes += len(token)
        self.last = time.monotonic()
        if self.readings >= self.target:
            self.done.set()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--readings", type=int, default=500_000)
    parser.add_argument("--batch", type=int, default=1000, help="buffer.batch.max_readings")
    parser.add_argument("--synchronous", default="normal", choices=["normal", "full"])
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="citygw-bench-", dir=Path.cwd()) as tmp, LocalBroker() as broker:
        work = Path(tmp)
        generate_key(work / "signing.key")
        config = {
            "gateway": {"id": "bench-gw", "key_file": str(work / "signing.key")},
            "buffer": {
                "path": str(work / "state" / "buffer.db"),
                "synchronous": args.synchronous,
                "batch": {"max_readings": args.batch},
            },
            "uplinks": {"local": {"type": "mqtt", "url": broker.url}},
            "buses": {"gen": {"type": "synthetic"}},
            "devices": {
                "load-1": {
                    "bus": "gen",
                    "rate": 1_000_000,
                    "count": args.readings,
                    "quantities": ["temperature", "relativeHumidity", "pm25", "co2"],
                }
            },
        }
        (work / "config.yaml").write_text(json.dumps(config))
        counter = Counter(broker.port)
        counter.target = args.readings
        daemon = start_daemon(work / "config.yaml", work)
        at_ready = proc_stat(daemon.pid)
        started = time.monotonic()
        if not counter.done.wait(600):
            daemon.kill()
            raise SystemExit(f"only {counter.readings} of {args.readings} readings arrived")
        elapsed = counter.last - started
        at_end = proc_stat(daemon.pid)
        daemon.terminate()
        daemon.wait(30)
        counter.client.loop_stop()
        n = counter.readings
        disk = (at_end["write_bytes"] - at_ready["write_bytes"]) / n
        wire = counter.wire_bytes / n
        summary = {
            "bench": "pipeline",
            "readings": n,
            "batch": args.batch,
            "synchronous": args.synchronous,
            "readings_per_s": round(n / elapsed),
            "cpu_s_per_100k": round((at_end["cpu"] - at_ready["cpu"]) / n * 100_000, 3),
            "peak_rss_mib": round(at_end["hwm_kib"] / 1024, 1),
            "disk_bytes_per_reading": round(disk, 1),
            "wire_bytes_per_reading": round(wire, 1),
            "disk_to_wire": round(disk / wire, 2),
        }
        print(json.dumps(summary))


if __name__ == "__main__":
    main()
