"""Bytes per value on the wire, format by format, for one street-cabinet batch (issue 21).

The batch is what bench/cabinet.py seals once per poll: 50 units x 10 input registers read in
one burst (name ``intensity:rN``, unit ``count``, values drifting like the simulated server's),
with the clock synchronised and not (every record flagged ``clock-unsynced``). Each candidate is
built with the library that does it (joserfc for JWS, cbor2 and pycose for COSE when installed)
and measured as MQTT payload + topic (``city/bench-cabinet/batches``, 27 bytes), per value; CPU
is build + sign (+ compress) per value on this machine, one core.

Candidates (docs/integrator.md "Formats" says which one citygw sends and why):
  jws                    today: compact JWS of the v2 JSON payload (base64url payload, +33 %)
  jws+gzip               that same compact JWS, gzip-compressed (what ``format: jws+gzip`` sends)
  lean-jws               a SenML pack that states bn/bt/bu once per run and flags once per batch,
                         in a compact JWS
  lean-jws+gzip          that, gzip-compressed
  lean-jws-unencoded     the lean pack in a flattened JSON JWS with RFC 7797 ``b64: false``
  lean-jws-unencoded+gzip
  cose                   the lean pack as SenML CBOR (RFC 8428 §6) in a COSE_Sign1 (RFC 9052)
  cose+gzip

Usage: python bench/wire.py [--values 500] [--rounds 50]
Prints a Markdown table, then one JSON line (``bench``: ``wire``).
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import time
from collections.abc import Callable
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from joserfc import jws
from joserfc.jwk import OKPKey

from citygw.reading import Record
from citygw.wire.envelope import Format, serialize
from citygw.wire.senml import encode_payload
from citygw.wire.signing import Signer

GATEWAY = "bench-cabinet"
TOPIC = f"city/{GATEWAY}/batches"
CHAIN = "q1Ww3fGk0dTzv8J3xYb2Lw"
PREV = "9f2c" * 16
CREATED = 1795526443.108
CLOCK_UNSYNCED = 1  # gateway.reading.Flag.CLOCK_UNSYNCED
SENML_CBOR = {"bn": -2, "bt": -3, "bu": -4, "n": 0, "u": 1, "v": 2, "vs": 3, "vb": 4, "t": 6}  # RFC 8428 §6


def cabinet_batch(values: int, flags: int) -> list[Record]:
    """One burst of the cabinet workload: ``values`` readings, 10 per unit, each unit its own time."""
    records: list[Record] = []
    for index in range(values):
        unit, register = divmod(index, 10)
        when = round(CREATED + 0.0007 * unit + 0.000123 * (unit % 7), 6)
        value = int(1000 + 500 * math.sin((30 + unit + register) / 50))
        records.append(Record(f"unit-{unit + 1:02d}", f"intensity:r{register}", value, "count", when, flags))
    return records


def lean_body(records: list[Record]) -> dict[str, Any]:
    """The payload with a SenML pack that repeats nothing records share (RFC 8428 §4.1 base fields):
    ``bn`` per run of a device, ``bt`` whenever the time changes (no ``t``), ``bu`` once when every
    record has one unit; the flags every record has, once per batch."""
    common = min(r.flags for r in records) if records else 0
    units = {r.unit for r in records}
    pack: list[dict[str, Any]] = []
    device = when = None
    for dev, name, value, unit, at, _flags in sorted(records, key=lambda r: (r.time, r.device)):
        record: dict[str, Any] = {}
        if dev != device:
            record["bn"], device = f"{GATEWAY}/{dev}/", dev
        if at != when:
            record["bt"], when = at, at
        if not pack and len(units) == 1 and unit:
            record["bu"] = unit
        record["n"] = name
        if len(units) > 1 and unit:
            record["u"] = unit
        record["v"] = value
        pack.append(record)
    body: dict[str, Any] = {"v": 3, "gateway": GATEWAY, "chain": CHAIN, "seq": 1207, "prev": PREV}
    body["created"] = CREATED
    if common & CLOCK_UNSYNCED:
        body["flags"] = "clock-unsynced"
    body["senml"] = pack
    return body


def compact_json(body: object) -> bytes:
    return json.dumps(body, separators=(",", ":")).encode()


def candidates(key: Ed25519PrivateKey) -> dict[str, Callable[[list[Record]], bytes] | None]:
    signer = Signer(key)
    okp = OKPKey.import_key(key)
    registry = jws.JWSRegistry(algorithms=["EdDSA"])
    unencoded = {"alg": "EdDSA", "kid": signer.kid, "b64": False, "crit": ["b64"]}

    def today(records: list[Record]) -> bytes:
        payload = encode_payload(GATEWAY, 1207, PREV, CREATED, records, chain=CHAIN)
        return signer.sign(payload).encode("ascii")

    def lean(records: list[Record]) -> bytes:
        return signer.sign(compact_json(lean_body(records))).encode("ascii")

    def lean_unencoded(records: list[Record]) -> bytes:
        signed = jws.serialize_json(
            {"protected": unencoded}, compact_json(lean_body(records)), okp, registry=registry
        )
        return compact_json(signed)

    def gzipped(build: Callable[[list[Record]], bytes]) -> Callable[[list[Record]], bytes]:
        return lambda records: serialize(build(records), Format.JWS_GZIP)

    made: dict[str, Callable[[list[Record]], bytes] | None] = {
        "jws": today,
        "jws+gzip": gzipped(today),
        "lean-jws": lean,
        "lean-jws+gzip": gzipped(lean),
        "lean-jws-unencoded": lean_unencoded,
        "lean-jws-unencoded+gzip": gzipped(lean_unencoded),
        "cose": None,
        "cose+gzip": None,
    }
    cose = _cose(key, signer.kid)
    if cose is not None:
        made["cose"], made["cose+gzip"] = cose, gzipped(cose)
    return made


def _cose(key: Ed25519PrivateKey, kid: str) -> Callable[[list[Record]], bytes] | None:
    """SenML CBOR in a COSE_Sign1, by cbor2 and pycose (``pip install cbor2 pycose``); None without them."""
    try:
        cbor2 = importlib.import_module("cbor2")
        messages = importlib.import_module("pycose.messages")
        keys = importlib.import_module("pycose.keys")
        algorithms = importlib.import_module("pycose.algorithms")
        headers = importlib.import_module("pycose.headers")
    except ImportError:
        return None
    cose_key = keys.OKPKey.from_dict({"KTY": "OKP", "CURVE": "ED25519", "D": key.private_bytes_raw()})

    def build(records: list[Record]) -> bytes:
        body = lean_body(records)
        body["prev"] = bytes.fromhex(body["prev"])
        body["senml"] = [{SENML_CBOR[k]: v for k, v in r.items()} for r in body["senml"]]
        message = messages.Sign1Message(
            phdr={headers.Algorithm: algorithms.EdDSA, headers.KID: kid.encode()}, payload=cbor2.dumps(body)
        )
        message.key = cose_key
        return bytes(message.encode())

    return build


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--values", type=int, default=500, help="values per batch (the cabinet seals ~500)")
    parser.add_argument("--rounds", type=int, default=50, help="builds timed per candidate")
    args = parser.parse_args()
    key = Ed25519PrivateKey.generate()
    batches = {clock: cabinet_batch(args.values, flags) for clock, flags in (("synced", 0), ("unsynced", 1))}
    rows: dict[str, dict[str, float | None]] = {}
    for name, build in candidates(key).items():
        row: dict[str, float | None] = {}
        for clock, records in batches.items():
            if build is None:
                row[f"bytes_per_value_{clock}"] = row[f"cpu_us_per_value_{clock}"] = None
                continue
            body = build(records)
            started = time.perf_counter()
            for _ in range(args.rounds):
                build(records)
            elapsed = time.perf_counter() - started
            row[f"bytes_per_value_{clock}"] = round((len(body) + len(TOPIC)) / len(records), 2)
            row[f"cpu_us_per_value_{clock}"] = round(1e6 * elapsed / args.rounds / len(records), 2)
        rows[name] = row
    print("| format | B/value synced | B/value unsynced | build+sign µs/value synced | unsynced |")
    print("| --- | --- | --- | --- | --- |")
    for name, row in rows.items():
        cells = [
            row[f"{what}_{clock}"]
            for what in ("bytes_per_value", "cpu_us_per_value")
            for clock in ("synced", "unsynced")
        ]
        print(f"| {name} | " + " | ".join("n/a" if c is None else str(c) for c in cells) + " |")
    print(json.dumps({"bench": "wire", "values_per_batch": args.values, "formats": rows}))


if __name__ == "__main__":
    main()
