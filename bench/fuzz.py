"""Coverage-guided fuzzing (atheris, libFuzzer) of every byte decoder and of the config loader.

Each target runs in its own process from the seed corpus in tests/corpus/ (copied to a scratch
directory, so libFuzzer's finds do not land in the repository). A decoder may only raise its
DecodeError and the config loader only ConfigError; anything else is a crash, and libFuzzer
stops with the input that caused it. The hypothesis suites in tests/ (test_serial_fuzz.py,
test_ble_fuzz.py, test_config_fuzz.py) are the CI form. Needs ``pip install atheris``.
Prints one JSON line: per target, executions, seconds and whether it crashed.

Usage: python bench/fuzz.py [--runs 1000000] [--targets pms5003,nmea,...]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# bench/serial.py would shadow pyserial (``import serial``) for the drivers imported below
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

TARGETS = {  # target -> corpus directory under tests/corpus
    "pms5003": "serial",
    "sds011": "serial",
    "mhz19": "serial",
    "nmea": "serial",
    "bthome": "ble",
    "bthome-encrypted": "ble",
    "ruuvi": "ble",
    "pvvx": "ble",
    "config": "config",
}


def _one_input(target: str) -> Callable[[bytes], None]:
    """The function libFuzzer calls with each input (imports instrumented for coverage)."""
    import atheris

    with atheris.instrument_imports():
        from citygw.config.loader import load
        from citygw.drivers.ble import bthome, pvvx, ruuvi
        from citygw.drivers.serial import DecodeError as SerialDecodeError
        from citygw.drivers.serial import decode_mhz19, decode_nmea, decode_pms5003, decode_sds011
        from citygw.errors import ConfigError
        from citygw.errors import DecodeError as BleDecodeError

    key = bthome.Key(bytes.fromhex("231d39c1d7cc1ab1aee224cd096db932"), "54:48:E6:8F:80:A5")
    serial = {"pms5003": decode_pms5003, "sds011": decode_sds011, "mhz19": decode_mhz19, "nmea": decode_nmea}
    if target in serial:
        decode = serial[target]

        def serial_input(data: bytes) -> None:
            with contextlib.suppress(SerialDecodeError):
                decode(data)

        return serial_input
    if target == "config":
        scratch = Path(tempfile.mkdtemp(prefix="citygw-fuzz-")) / "citygw.yaml"

        def config_input(data: bytes) -> None:
            scratch.write_bytes(data)
            with contextlib.suppress(ConfigError):
                load(scratch, environ={})

        return config_input
    ble: dict[str, Callable[[bytes], object]] = {
        "bthome": bthome.decode,
        "bthome-encrypted": lambda data: bthome.decode(data, key),
        "ruuvi": ruuvi.decode,
        "pvvx": pvvx.decode,
    }
    decode_ble = ble[target]

    def ble_input(data: bytes) -> None:
        with contextlib.suppress(BleDecodeError):
            decode_ble(data)

    return ble_input


def child(target: str, corpus: str, runs: int) -> None:
    import atheris

    one_input = _one_input(target)
    crashes = Path(tempfile.gettempdir()) / "citygw-fuzz-crashes"
    crashes.mkdir(exist_ok=True)
    options = [
        f"-runs={runs}",
        "-max_len=1024",
        "-print_final_stats=1",
        f"-artifact_prefix={crashes}/{target}-",
    ]
    atheris.Setup([sys.argv[0], corpus, *options], one_input)
    atheris.Fuzz()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=1_000_000, help="executions per target")
    parser.add_argument("--targets", default=",".join(TARGETS))
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--corpus", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.corpus, args.runs)
        return
    results: dict[str, dict[str, object]] = {}
    for target in args.targets.split(","):
        with tempfile.TemporaryDirectory(prefix=f"citygw-corpus-{target}-") as scratch:
            for seed in (REPO / "tests" / "corpus" / TARGETS[target]).iterdir():
                shutil.copy(seed, scratch)
            started = time.monotonic()
            done = subprocess.run(
                [sys.executable, __file__, "--child", target, "--corpus", scratch, "--runs", str(args.runs)],
                capture_output=True,
                text=True,
                check=False,
            )
        execs = re.search(r"stat::number_of_executed_units: (\d+)", done.stderr)
        results[target] = {
            "execs": int(execs.group(1)) if execs else None,
            "seconds": round(time.monotonic() - started, 1),
            "crashed": done.returncode != 0,
        }
        if done.returncode != 0:
            sys.stderr.write(f"--- {target}\n{done.stderr[-4000:]}\n")
    print(json.dumps({"bench": "fuzz", "runs": args.runs, "targets": results}))
    sys.exit(1 if any(r["crashed"] for r in results.values()) else 0)


if __name__ == "__main__":
    main()
