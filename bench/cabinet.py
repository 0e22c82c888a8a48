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

The peer (ThingsBoard IoT Gateway 3.8.5, same work, same machine): 500 values/s at 14.3 % of a core,
66.9 MB peak RSS, p50 183 ms / p95 237 ms; saturating near 1,400 values/s at 80 % of a core.

Usage: python bench/cabinet.py [--interval 1] [--warmup 20] [--window 60] [--commit-interval 50ms]
       [--max-age 50ms]
"""

from __future__ import annotations

import argparse
import base64
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

from gateway.localbroker import LocalBroker
from gateway.signing import generate_key

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

    def __init__(self, port: int) -> None:
        self.values = 0
        self.latencies: list[float] = []
        self.polls: dict[str, set[float]] = {}  # device -> reading times seen while recording
        self.recording = False
        self._lock = threading.Lock()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="bench-cabinet")
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe("city/+/batches", qos=1)
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def _on_message(self, client: Any, userdata: Any, message: Any) -> None:
        received = time.time()
        payload = message.payload.split(b".")[1]
        body = json.loads(base64.urlsafe_b64decode(payload + b"=" * (-len(payload) % 4)))
        records = body.get("senml", ())
        base, device = 0.0, ""
        with self._lock:
            self.values += len(records)
            if not self.recording:
                return
            for record in records:
                base = record.get("bt", base)
                device = record.get("bn", device)
                when = base + record.get("t", 0.0)
                self.latencies.append(received - when)
                self.polls.setdefault(device, set()).add(round(when, 3))

    def snapshot(self) -> int:
        with self._lock:
            return self.values

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
        "uplinks": {"local": {"type": "mqtt", "url": broker.url}},
        "buses": {"cabinet": {"type": "modbus-tcp", "host": "127.0.0.1", "port": port}},
        "devices": devices,
    }
    path = work / "config.yaml"
    path.write_text(json.dumps(body))
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--interval", type=float, default=1.0, help="poll interval per unit, seconds")
    parser.add_argument("--warmup", type=float, default=20.0)
    parser.add_argument("--window", type=float, default=60.0)
    parser.add_argument("--commit-interval", default="50ms", help="buffer.commit_interval")
    parser.add_argument("--max-age", default="50ms", help="buffer.batch.max_age")
    args = parser.parse_args()

    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "drivers.modbus.server",
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
    with tempfile.TemporaryDirectory(prefix="citygw-cabinet-") as tmp, LocalBroker() as broker:
        work = Path(tmp)
        generate_key(work / "signing.key")
        path = config(work, broker, port, args)
        subscriber = Subscriber(broker.port)
        daemon = start_daemon(path, work)
        at_ready = proc_stat(daemon.pid)
        time.sleep(args.warmup)
        start, values_start = proc_stat(daemon.pid), subscriber.snapshot()
        subscriber.recording = True
        time.sleep(args.window)
        subscriber.recording = False
        end, values_end = proc_stat(daemon.pid), subscriber.snapshot()
        daemon.terminate()
        daemon.wait(30)
        subscriber.close()
    server.stdin.close()
    server.wait(10)
    latencies = subscriber.latencies
    asked = UNITS * REGISTERS / args.interval
    delivered = (values_end - values_start) / args.window
    summary = {
        "bench": "cabinet",
        "interval_s": args.interval,
        "asked_per_s": round(asked),
        "values_per_s": round(delivered, 1),
        "missed_polls": missed_polls(subscriber.polls, args.interval),
        "polls_seen": sum(len(t) for t in subscriber.polls.values()),
        "cpu_pct": round(100 * (end["cpu"] - start["cpu"]) / args.window, 2),
        "peak_rss_mib": round(end["hwm_kib"] / 1024, 1),
        "rss_at_ready_mib": round(at_ready["rss_kib"] / 1024, 1),
        "latency_p50_ms": round(1000 * percentile(latencies, 0.5), 1) if latencies else None,
        "latency_p95_ms": round(1000 * percentile(latencies, 0.95), 1) if latencies else None,
        "commit_interval": args.commit_interval,
        "batch_max_age": args.max_age,
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
