"""Fleet reconnect benchmark: 50 gateways' MQTT uplinks and a broker restart, as the broker sees it.

Each gateway is a real buffer + pipeline + MQTT uplink with the default reconnect backoff (full
jitter), all in this process (tests/fleet.py). The broker (mosquitto on loopback) is stopped
for ``--down`` seconds and started again; the connections it logs are counted per second.
Prints one JSON line; the target is ``peak_share`` at most 0.10 (no second sees more than 10 %
of the fleet).

Usage: python bench/fleet.py [--fleet 50] [--down 10]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the tests package holds the fleet

from citygw.demo.broker import LocalBroker
from citygw.wire.signing import generate_key
from tests.fleet import fleet_restart, prepare_broker


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fleet", type=int, default=50)
    parser.add_argument("--down", type=float, default=10.0, help="seconds the broker is away")
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)  # 50 uplinks each say once that the broker went away
    with tempfile.TemporaryDirectory(prefix="citygw-fleet-") as tmp:
        workdir = Path(tmp)
        key = workdir / "signing.key"
        generate_key(key)
        (workdir / "broker").mkdir()
        broker = LocalBroker(workdir=workdir / "broker")
        prepare_broker(broker)
        broker.start()
        try:
            report = asyncio.run(fleet_restart(broker, workdir, key, size=args.fleet, down_s=args.down))
        finally:
            broker.close()
    print(json.dumps({"bench": "fleet", **report.summary(), "target_met": report.peak_share <= 0.10}))


if __name__ == "__main__":
    main()
