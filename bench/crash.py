"""Crash consistency benchmark: kill -9 the daemon at random moments, 200 times by default.

Drives tests/crash.py's harness (the CI test runs a handful of kills with it): a real
mosquitto, a QoS 1 subscriber with a persistent session, `citygw run` as a subprocess with a
new identifiable synthetic device per run, killed while ingesting, sealing, publishing or
pruning; integrity_check after every kill; a final drain and a reading-by-reading check.
Prints one JSON line (``ok`` is true when nothing committed was lost, duplicated or changed).

Usage: python bench/crash.py [--kills N] [--seed N]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the tests package holds the harness

from citygw.demo.broker import LocalBroker
from citygw.wire.signing import generate_key
from tests.crash import CrashHarness
from tests.support import Collector


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=200)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="citygw-crash-") as tmp:
        workdir = Path(tmp)
        key = workdir / "signing.key"
        generate_key(key)
        (workdir / "broker").mkdir()
        broker = LocalBroker(workdir=workdir / "broker")
        broker.start()
        collector = Collector(broker.port, "city/+/batches", client_id="bench-crash")
        time.sleep(0.2)
        try:
            harness = CrashHarness(workdir, key=key, broker=broker, collector=collector, seed=args.seed)
            report = harness.run(args.kills)
        finally:
            collector.close()
            broker.close()
    print(json.dumps({"bench": "crash", "seed": args.seed, **report.summary()}))
    sys.exit(0 if report.ok else 1)


if __name__ == "__main__":
    main()
