"""Soak: a compressed day at 20x a street box's rate, with the daemon's resources sampled.

A street box here is 50 sensors at 1 Hz (as in bench/uplinks.py); 20x is 1,000 readings/s, and
a day of it compressed 20x takes 72 minutes (``--duration 4320``). The gateway runs in a child
process (the daemon's own :class:`~citygw.daemon.gateway.Gateway`, started as ``citygw run`` does)
with a sampler task beside it that records, every ``--interval`` seconds: RSS, open file
descriptors, threads, asyncio tasks, and the buffer's file + WAL size. A loopback mosquitto and
a QoS 1 subscriber in this process count what arrives.

After ``--warmup`` (10 % of the run by default) every series must be flat. Prints one JSON line:

  rss_growth_pct      median RSS of the last 10 % of samples vs. the first 10 % after warm-up
  rss_mib             [after warm-up, at the end, peak]
  fds, tasks, threads [min, max] after warm-up
  db_mib              [min, max] of the buffer file + WAL after warm-up
  accepted, received  readings committed by the gateway / received by the subscriber (equal)
  flat                RSS growth < 5 %, fds/tasks/threads varying by at most 2, nothing lost

Usage: python bench/soak.py [--duration 4320] [--sensors 50] [--rate 20] [--interval 10]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

# bench/serial.py would shadow pyserial (``import serial``) for the gateway in the child process
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import paho.mqtt.client as mqtt  # noqa: E402

from citygw.demo.broker import LocalBroker  # noqa: E402
from citygw.wire.signing import generate_key  # noqa: E402


class Counter:
    """Counts the readings in every batch received (QoS 1, persistent session)."""

    def __init__(self, port: int) -> None:
        self.readings = 0
        self._lock = threading.Lock()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="soak", clean_session=False)
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe("city/+/batches", qos=1)
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def _on_message(self, client: Any, userdata: Any, message: Any) -> None:
        payload = message.payload.split(b".")[1]
        body = json.loads(base64.urlsafe_b64decode(payload + b"=" * (-len(payload) % 4)))
        with self._lock:
            self.readings += len(body.get("senml", ()))

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def _proc(pid: int) -> dict[str, int]:
    status = dict(
        line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line
    )
    return {
        "rss_kib": int(status["VmRSS"].split()[0]),
        "threads": int(status["Threads"]),
        "fds": len(os.listdir(f"/proc/{pid}/fd")),
    }


async def _child(config_path: Path, samples: Path, duration: float, interval: float) -> None:
    """The gateway, plus a sampler; stops (flushing, as on SIGTERM) after ``duration``."""
    from citygw.config import load_config
    from citygw.daemon.gateway import Gateway

    config = load_config(config_path)
    gateway = Gateway(config)
    db = config.buffer_path()

    async def sample() -> None:
        started = time.monotonic()
        with samples.open("a") as out:
            while time.monotonic() - started < duration:
                await asyncio.sleep(interval)
                files = [db, db.with_name(db.name + "-wal")]
                row = {
                    "t": round(time.monotonic() - started, 1),
                    **_proc(os.getpid()),
                    "tasks": len(asyncio.all_tasks()) - 1,  # not this sampler
                    "db_bytes": sum(p.stat().st_size for p in files if p.exists()),
                    "accepted": gateway.pipeline.counters.accepted,
                }
                out.write(json.dumps(row) + "\n")
                out.flush()
        gateway.stop()

    sampler = asyncio.create_task(sample(), name="soak-sampler")
    await gateway.run()
    sampler.cancel()
    with samples.open("a") as out:  # what the flush at the stop added
        out.write(json.dumps({"final_accepted": gateway.pipeline.counters.accepted}) + "\n")


def _summary(rows: list[dict[str, Any]], warmup: float, accepted: int, received: int) -> dict[str, Any]:
    warm = [r for r in rows if r["t"] >= warmup] or rows[-1:]
    tenth = max(1, len(warm) // 10)
    rss_warm = statistics.median(r["rss_kib"] for r in warm[:tenth])
    rss_end = statistics.median(r["rss_kib"] for r in warm[-tenth:])

    def span(key: str) -> list[int]:
        return [min(r[key] for r in warm), max(r[key] for r in warm)]

    growth = round((rss_end - rss_warm) / rss_warm * 100, 2)
    fds, tasks, threads = span("fds"), span("tasks"), span("threads")
    return {
        "samples": len(rows),
        "rss_growth_pct": growth,
        "rss_mib": [
            round(rss_warm / 1024, 1),
            round(rss_end / 1024, 1),
            round(max(r["rss_kib"] for r in rows) / 1024, 1),
        ],
        "fds": fds,
        "tasks": tasks,
        "threads": threads,
        "db_mib": [round(b / 1024**2, 2) for b in span("db_bytes")],
        "accepted": accepted,
        "received": received,
        "flat": growth < 5.0
        and all(hi - lo <= 2 for lo, hi in (fds, tasks, threads))
        and received == accepted,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=4320.0, help="seconds (4320: a day at 20x)")
    parser.add_argument("--sensors", type=int, default=50)
    parser.add_argument("--rate", type=float, default=20.0, help="readings/s per sensor (20x of 1 Hz)")
    parser.add_argument("--interval", type=float, default=10.0, help="seconds between samples")
    parser.add_argument("--warmup", type=float, default=None, help="seconds (default: 10 %% of the run)")
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--samples", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
        asyncio.run(_child(args.child, args.samples, args.duration, args.interval))
        return
    warmup = args.duration * 0.1 if args.warmup is None else args.warmup
    with tempfile.TemporaryDirectory(prefix="citygw-soak-") as tmp:
        workdir = Path(tmp)
        key = workdir / "signing.key"
        generate_key(key)
        (workdir / "broker").mkdir()
        broker = LocalBroker(workdir=workdir / "broker")
        broker.start()
        counter = Counter(broker.port)
        config = {
            "gateway": {"id": "gw-soak", "key_file": str(key)},
            "buffer": {"path": str(workdir / "state" / "buffer.db")},
            "metrics": {"enabled": False},
            "uplinks": {"local": {"type": "mqtt", "url": broker.url}},
            "buses": {"street": {"type": "synthetic"}},
            "devices": {
                f"sensor-{i:02d}": {"bus": "street", "rate": args.rate, "quantities": ["temperature", "pm25"]}
                for i in range(args.sensors)
            },
        }
        config_path = workdir / "citygw.yaml"
        config_path.write_text(json.dumps(config))
        samples = workdir / "samples.jsonl"
        child = [sys.executable, __file__, "--child", str(config_path), "--samples", str(samples)]
        child += ["--duration", str(args.duration), "--interval", str(args.interval)]
        env = dict(os.environ, CITYGW_STATE_DIR=str(workdir / "state"))
        try:
            done = subprocess.run(child, check=False, env=env, stderr=(workdir / "gateway.log").open("wb"))
            if done.returncode != 0:
                sys.stderr.write((workdir / "gateway.log").read_text())
                raise SystemExit(f"the gateway exited with {done.returncode}")
            deadline = time.monotonic() + 30
            rows = [json.loads(line) for line in samples.read_text().splitlines()]
            final = rows.pop()["final_accepted"]
            while counter.readings < final and time.monotonic() < deadline:
                time.sleep(0.2)  # the flush at the end is delivered within the drain timeout
            errors = (workdir / "gateway.log").read_text()
        finally:
            counter.close()
            broker.close()
    summary = _summary(rows, warmup, final, counter.readings)
    summary["log_lines"] = len(errors.splitlines())
    print(
        json.dumps(
            {
                "bench": "soak",
                "duration_s": args.duration,
                "readings_per_s": args.sensors * args.rate,
                **summary,
            }
        )
    )


if __name__ == "__main__":
    main()
