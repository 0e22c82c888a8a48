"""The street-cabinet workload: 50 Modbus TCP unit ids x 10 input registers, every value forwarded.

One pymodbus TCP server on loopback (its own process) holds 50 units of 10 input registers whose
values drift every 100 ms. ``citygw run`` (a real subprocess, the measured process) polls every
unit every ``--interval`` (1 s; 0.1 s asks for 5,000 values/s) with the durable buffer on and
forwards every value with QoS 1 to a loopback mosquitto; a subscriber in this process counts what
arrives. Batches are sealed by age: ``buffer.commit_interval`` and ``buffer.batch.max_age`` are
both 50 ms here (``--commit-interval``, ``--max-age``; defaults 1 s and 10 s, tuned for SD cards
and batch size, not latency). Units answer once per interval in one burst, so these settings
cost one commit and one signed batch per burst, not one per 50 ms: latency is about their sum.

After ``--warmup`` seconds (20), one ``--window`` (60 s) is measured. Prints one JSON line:

  values_per_s        values received by the subscriber in the window, per second
  asked_per_s         50 x 10 / interval
  missed_polls        polls of a unit absent from what arrived (gaps in each unit's reading times)
  cpu_pct             the daemon's user+system CPU in the window, % of one core
  peak_rss_mib        the daemon's VmHWM at the end
  rss_at_ready_mib    its VmRSS at sd_notify READY (imports and config: before any traffic)
  latency_p50_ms      reading time (the Reading's time, when the unit answered) to receipt
  latency_p95_ms      by the subscriber, over the values received in the window
  cpu_us_per_value    the daemon's CPU in the window per value received, microseconds
  wire_bytes_per_value  MQTT payload + topic bytes received in the window, per value (the uplink's
                      ``--format``: jws, the compact JWS; jws+gzip, that JWS gzip-compressed)
  *_unsynced          the same three with the clock not yet synchronised (every reading flagged
                      ``clock-unsynced``): a second daemon, fresh buffer, same window (``--clock``)

The peer sends 13.9 B/value on this workload (its unsigned JSON, payload + topic).

The peer (ThingsBoard IoT Gateway 3.8.5, same work, same machine): 500 values/s at 14.3 % of a core,
66.9 MB peak RSS, p50 183 ms / p95 237 ms; saturating near 1,400 values/s at 80 % of a core.

Usage: python bench/cabinet.py [--interval 1] [--warmup 20] [--window 60] [--commit-interval 50ms]
       [--max-age 50ms] [--format jws|jws+gzip] [--clock both|synced|unsynced]
"""

from __future__ import annotations

import argparse
import base64
import dataclasses
import itertools
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from running import start_daemon

from citygw.demo.broker import LocalBroker
from citygw.receiver.verify import MAX_TOKEN
from citygw.wire.envelope import unwrap
from citygw.wire.signing import generate_key

REPO = Path(__file__).resolve().parent.parent
UNITS, REGISTERS = 50, 10


def proc_stat(pid: int) -> dict[str, float]:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    status = dict(
        line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line
    )
    return {
        "cpu": (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK"),
        "hwm_kib": float(status["VmHWM"].split()[0]),
        "rss_kib": float(status["VmRSS"].split()[0]),
    }


class Subscriber:
    """Counts values and their latency (receipt time minus reading time), QoS 1."""

    def __init__(self, port: int, name: str) -> None:
        self.values = 0
        self.wire_bytes = 0  # payload + topic of the messages received while recording
        self.latencies: list[float] = []
        self.polls: dict[str, set[float]] = {}  # device -> reading times seen while recording
        self.recording = False
        self._lock = threading.Lock()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"bench-cabinet-{name}")
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe("city/+/batches", qos=1)
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def _on_message(self, client: Any, userdata: Any, message: Any) -> None:
        received = time.time()
        payload = unwrap(message.payload, limit=MAX_TOKEN).split(b".")[1]
        body = json.loads(base64.urlsafe_b64decode(payload + b"=" * (-len(payload) % 4)))
        records = body.get("senml", ())
        base, device = 0.0, ""
        with self._lock:
            self.values += len(records)
            if not self.recording:
                return
            self.wire_bytes += len(message.payload) + len(message.topic.encode())
            for record in records:
                base = record.get("bt", base)
                device = record.get("bn", device)
                when = base + record.get("t", 0.0)
                self.latencies.append(received - when)
                self.polls.setdefault(device, set()).add(round(when, 3))

    def snapshot(self) -> tuple[int, int]:
        with self._lock:
            return self.values, self.wire_bytes

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def missed_polls(polls: dict[str, set[float]], interval: float) -> int:
    """Polls missing between the first and last seen of each device (a gap of k intervals: k - 1)."""
    missed = 0
    for times in polls.values():
        ordered = sorted(times)
        # a late poll leaves gaps under 2 intervals (then the next is on time); a skipped one, 2 or more
        missed += sum(max(0, int((b - a) / interval + 0.05) - 1) for a, b in itertools.pairwise(ordered))
    return missed


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def config(work: Path, broker: LocalBroker, port: int, args: argparse.Namespace) -> Path:
    work.mkdir(exist_ok=True)
    registers = [
        {"name": "intensity", "channel": f"r{i}", "address": i, "function": 4} for i in range(REGISTERS)
    ]
    devices = {
        f"unit-{u:02d}": {"bus": "cabinet", "unit": u, "interval": args.interval, "registers": registers}
        for u in range(1, UNITS + 1)
    }
    body = {
        "gateway": {"id": "bench-cabinet", "key_file": str(work / "signing.key")},
        "buffer": {
            "path": str(work / "state" / "buffer.db"),
            "commit_interval": args.commit_interval,
            "batch": {"max_age": args.max_age},
        },
        "uplinks": {"local": {"type": "mqtt", "url": broker.url, "format": args.format}},
        "buses": {"cabinet": {"type": "modbus-tcp", "host": "127.0.0.1", "port": port}},
        "devices": devices,
    }
    path = work / "config.yaml"
    path.write_text(json.dumps(body))
    return path


@dataclasses.dataclass
class Run:
    """One daemon's measured window."""

    subscriber: Subscriber
    at_ready: dict[str, float]
    start: dict[str, float]
    end: dict[str, float]
    values: int
    wire_bytes: int


def measure(args: argparse.Namespace, work: Path, broker: LocalBroker, port: int, *, synced: bool) -> Run:
    """Start a daemon on a fresh buffer, let it warm up, measure one window, stop it."""
    name = "synced" if synced else "unsynced"
    path = config(work / name, broker, port, args)
    generate_key(work / name / "signing.key")
    subscriber = Subscriber(broker.port, name)
    daemon = start_daemon(path, work / name, synced=synced)
    try:
        at_ready = proc_stat(daemon.pid)
        time.sleep(args.warmup)
        start, (values_start, bytes_start) = proc_stat(daemon.pid), subscriber.snapshot()
        subscriber.recording = True
        time.sleep(args.window)
        subscriber.recording = False
        end, (values_end, bytes_end) = proc_stat(daemon.pid), subscriber.snapshot()
    finally:
        daemon.terminate()
        daemon.wait(30)
        subscriber.close()
    return Run(subscriber, at_ready, start, end, values_end - values_start, bytes_end - bytes_start)


def per_value(run: Run) -> dict[str, float | None]:
    """CPU (microseconds) and wire bytes per value received in the window."""
    if not run.values:
        return {"cpu_us_per_value": None, "wire_bytes_per_value": None}
    return {
        "cpu_us_per_value": round(1e6 * (run.end["cpu"] - run.start["cpu"]) / run.values, 1),
        "wire_bytes_per_value": round(run.wire_bytes / run.values, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--interval", type=float, default=1.0, help="poll interval per unit, seconds")
    parser.add_argument("--warmup", type=float, default=20.0)
    parser.add_argument("--window", type=float, default=60.0)
    parser.add_argument("--commit-interval", default="50ms", help="buffer.commit_interval")
    parser.add_argument("--max-age", default="50ms", help="buffer.batch.max_age")
    parser.add_argument(
        "--format", default="jws", choices=("jws", "jws+gzip"), help="the MQTT uplink's format"
    )
    parser.add_argument("--clock", default="both", choices=("both", "synced", "unsynced"))
    args = parser.parse_args()

    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "citygw.drivers.modbus.server",
            "--units",
            f"1-{UNITS}",
            "--registers",
            str(REGISTERS),
            "--drift",
        ],
        cwd=REPO,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert server.stdout is not None and server.stdin is not None
    port = int(json.loads(server.stdout.readline())["port"])
    runs: dict[bool, Run] = {}
    with tempfile.TemporaryDirectory(prefix="citygw-cabinet-") as tmp, LocalBroker() as broker:
        work = Path(tmp)
        for synced in (True, False):
            if args.clock in ("both", "synced" if synced else "unsynced"):
                runs[synced] = measure(args, work, broker, port, synced=synced)
    server.stdin.close()
    server.wait(10)
    first = runs[True] if True in runs else runs[False]
    latencies = first.subscriber.latencies
    asked = UNITS * REGISTERS / args.interval
    summary: dict[str, object] = {
        "bench": "cabinet",
        "interval_s": args.interval,
        "clock": "synced" if True in runs else "unsynced",
        "asked_per_s": round(asked),
        "values_per_s": round(first.values / args.window, 1),
        "missed_polls": missed_polls(first.subscriber.polls, args.interval),
        "polls_seen": sum(len(t) for t in first.subscriber.polls.values()),
        "cpu_pct": round(100 * (first.end["cpu"] - first.start["cpu"]) / args.window, 2),
        "peak_rss_mib": round(first.end["hwm_kib"] / 1024, 1),
        "rss_at_ready_mib": round(first.at_ready["rss_kib"] / 1024, 1),
        "latency_p50_ms": round(1000 * percentile(latencies, 0.5), 1) if latencies else None,
        "latency_p95_ms": round(1000 * percentile(latencies, 0.95), 1) if latencies else None,
        "format": args.format,
        **per_value(first),
    }
    if True in runs and False in runs:
        unsynced = runs[False]
        summary["values_per_s_unsynced"] = round(unsynced.values / args.window, 1)
        summary.update({f"{key}_unsynced": value for key, value in per_value(unsynced).items()})
    summary["commit_interval"] = args.commit_interval
    summary["batch_max_age"] = args.max_age
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
