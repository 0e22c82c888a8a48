"""``citygw receive``: a reference platform endpoint, for integrators to read and tests to use.

It takes batches over HTTP (POST of the compact JWS, optionally gzip-encoded) or from an MQTT
topic, and for each one: verifies the signature against the configured public keys (by
``kid``) and the payload shape; stores it once per (gateway, seq) — a duplicate is
acknowledged, not stored again; a second, different content for a seq is refused (409); keeps
the readings in its own SQLite file; and tracks each gateway's chain: seqs still missing, gap
records that explain them, and any ``prev`` that does not match what it holds.

HTTP answers: 200 stored or duplicate; 400 bad signature or malformed (the gateway parks it);
409 a seq already held with other content.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import sqlite3
import sys
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from aiohttp import web

from gateway.logs import EventLog
from gateway.ngsi import samples
from gateway.signing import chain_hash, load_public_keys
from gateway.verify import ChainVerifier, Outcome

log = EventLog(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS batches (
    gateway TEXT NOT NULL, seq INTEGER NOT NULL, hash TEXT NOT NULL, prev TEXT,
    readings INTEGER NOT NULL, received REAL NOT NULL, jws TEXT NOT NULL,
    PRIMARY KEY (gateway, seq)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS gaps (
    gateway TEXT NOT NULL, first INTEGER NOT NULL, last INTEGER NOT NULL, batches INTEGER NOT NULL,
    readings INTEGER NOT NULL, reason TEXT NOT NULL, prev TEXT, last_hash TEXT NOT NULL,
    received REAL NOT NULL,
    PRIMARY KEY (gateway, first)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS readings (
    gateway TEXT NOT NULL, seq INTEGER NOT NULL, device TEXT NOT NULL, name TEXT NOT NULL,
    value, unit TEXT NOT NULL, time REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS readings_by_device ON readings (gateway, device, time);
"""


@dataclass(slots=True)
class Counts:
    stored: int = 0
    readings: int = 0
    duplicates: int = 0
    gap_records: int = 0
    bad: int = 0
    conflicts: int = 0


@dataclass(frozen=True, slots=True)
class Verdict:
    status: int  # the HTTP status to answer
    outcome: str  # stored, duplicate, gap, bad, conflict
    reason: str = ""


class Receiver:
    """Verifies, de-duplicates and stores batches in one SQLite file."""

    def __init__(self, db_path: Path, key_files: Iterable[Path]) -> None:
        self.verifier = ChainVerifier(load_public_keys(key_files))
        self.db = sqlite3.connect(db_path, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.executescript(_SCHEMA)
        self.counts = Counts()

    def close(self) -> None:
        self.db.close()

    def accept(self, token: str) -> Verdict:
        token = token.strip()
        result = self.verifier.inspect(token)
        if result.outcome is not Outcome.OK or result.payload is None or result.gateway is None:
            self.counts.bad += 1
            log.event("batch_refused", reason=result.reason).warning("refused a batch: %s", result.reason)
            return Verdict(400, "bad", result.reason)
        body, gateway, digest = result.payload, result.gateway, chain_hash(token)
        if "gap" in body:
            gap = body["gap"]
            self.db.execute(
                "INSERT OR IGNORE INTO gaps VALUES (?,?,?,?,?,?,?,?,?)",
                (
                    gateway,
                    gap["from"],
                    gap["to"],
                    gap["batches"],
                    gap["readings"],
                    gap["reason"],
                    body.get("prev"),
                    body["last"],
                    time.time(),
                ),
            )
            self.counts.gap_records += 1
            return Verdict(200, "gap")
        seq = int(body["seq"])
        known = self.db.execute(
            "SELECT hash FROM batches WHERE gateway = ? AND seq = ?", (gateway, seq)
        ).fetchone()
        if known is not None:
            if known[0] == digest:
                self.counts.duplicates += 1
                return Verdict(200, "duplicate")
            self.counts.conflicts += 1
            log.event("batch_conflict", seq=seq).error(
                "gateway %s seq %d arrived again with different content", gateway, seq
            )
            return Verdict(409, "conflict", f"seq {seq} already received with different content")
        rows = [
            (
                gateway,
                seq,
                s.device,
                s.quantity if s.phase is None else f"{s.quantity}:{s.phase.lower()}",
                s.value,
                s.unit,
                s.time,
            )
            for s in samples(body)
        ]
        self.db.execute("BEGIN")
        self.db.execute(
            "INSERT INTO batches VALUES (?,?,?,?,?,?,?)",
            (gateway, seq, digest, body.get("prev"), len(rows), time.time(), token),
        )
        self.db.executemany("INSERT INTO readings VALUES (?,?,?,?,?,?,?)", rows)
        self.db.execute("COMMIT")
        self.counts.stored += 1
        self.counts.readings += len(rows)
        return Verdict(200, "stored")

    def report(self) -> dict[str, Any]:
        """Per gateway: seqs held, readings, seqs still missing (not explained by a gap record),
        gap records, and links whose prev does not match the batch before."""
        gateways: dict[str, Any] = {}
        for (gateway,) in self.db.execute(
            "SELECT DISTINCT gateway FROM batches UNION SELECT gateway FROM gaps"
        ):
            seqs = [
                s
                for (s,) in self.db.execute(
                    "SELECT seq FROM batches WHERE gateway = ? ORDER BY seq", (gateway,)
                )
            ]
            gaps = self.db.execute(
                "SELECT first, last, readings, reason, last_hash FROM gaps WHERE gateway = ? ORDER BY first",
                (gateway,),
            ).fetchall()
            covered = set(seqs)
            for first, last, *_ in gaps:
                covered.update(range(first, last + 1))
            top = max(covered, default=0)
            low = min(covered, default=1)
            missing = [s for s in range(low, top + 1) if s not in covered]
            hashes = dict(
                self.db.execute("SELECT seq, hash FROM batches WHERE gateway = ?", (gateway,)).fetchall()
            )
            for _first, last, _, _, last_hash in gaps:
                hashes[last] = last_hash
            broken = [
                seq
                for seq, prev in self.db.execute(
                    "SELECT seq, prev FROM batches WHERE gateway = ?", (gateway,)
                )
                if seq - 1 in hashes and prev != hashes[seq - 1]
            ]
            readings = self.db.execute(
                "SELECT count(*) FROM readings WHERE gateway = ?", (gateway,)
            ).fetchone()[0]
            gateways[gateway] = {
                "batches": len(seqs),
                "first_seq": low,
                "last_seq": top,
                "readings": readings,
                "missing": _ranges(missing),
                "gaps": [{"from": f, "to": t, "readings": r, "reason": why} for f, t, r, why, _ in gaps],
                "broken_links": broken,
            }
        return {"totals": asdict(self.counts), "gateways": gateways}


def _ranges(seqs: list[int]) -> list[list[int]]:
    out: list[list[int]] = []
    for seq in seqs:
        if out and out[-1][1] == seq - 1:
            out[-1][1] = seq
        else:
            out.append([seq, seq])
    return out


def http_app(receiver: Receiver) -> web.Application:
    async def post(request: web.Request) -> web.Response:
        body = await request.read()  # aiohttp has undone any Content-Encoding (gzip, deflate)
        try:
            token = body.decode("ascii")
        except UnicodeDecodeError:
            return web.json_response({"outcome": "bad", "reason": "body is not ASCII"}, status=400)
        verdict = receiver.accept(token)
        return web.json_response(
            {"outcome": verdict.outcome, "reason": verdict.reason}, status=verdict.status
        )

    async def report(request: web.Request) -> web.Response:
        return web.json_response(receiver.report())

    app = web.Application(client_max_size=32 * 1024 * 1024)
    app.router.add_post("/", post)
    app.router.add_post("/batches", post)
    app.router.add_get("/report", report)
    return app


async def _serve_http(receiver: Receiver, host: str, port: int, stop: asyncio.Event) -> None:
    runner = web.AppRunner(http_app(receiver), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    log.event("receiving").info("receiving on http://%s:%d/batches", host, port)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


async def _serve_mqtt(receiver: Receiver, url: str, topic: str, stop: asyncio.Event) -> None:
    from urllib.parse import urlsplit

    import aiomqtt

    parts = urlsplit(url)
    async with aiomqtt.Client(
        parts.hostname or "127.0.0.1", parts.port or 1883, identifier="citygw-receive", clean_session=False
    ) as client:
        await client.subscribe(topic, qos=1)
        log.event("receiving").info("receiving from %s topic %s", url, topic)
        async for message in client.messages:
            payload = message.payload
            if isinstance(payload, bytes | bytearray):
                receiver.accept(bytes(payload).decode("ascii", errors="replace"))
            if stop.is_set():
                return


def receive_main(
    *,
    keys: list[Path],
    db: Path,
    http: str | None,
    mqtt: str | None,
    topic: str,
    duration: float | None,
    as_json: bool,
) -> int:
    if not http and not mqtt:
        sys.stderr.write("citygw receive: give --http HOST:PORT or --mqtt URL\n")
        return 2
    receiver = Receiver(db, keys)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        tasks = []
        if http:
            host, _, port = http.rpartition(":")
            tasks.append(asyncio.create_task(_serve_http(receiver, host or "127.0.0.1", int(port), stop)))
        if mqtt:
            tasks.append(asyncio.create_task(_serve_mqtt(receiver, mqtt, topic, stop)))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), duration)
        stop.set()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    try:
        asyncio.run(main())
    finally:
        report = receiver.report()
        receiver.close()
    if as_json:
        sys.stdout.write(json.dumps(report) + "\n")
    else:
        t = report["totals"]
        sys.stdout.write(
            f"stored {t['stored']} batches ({t['readings']} readings), {t['duplicates']} duplicates, "
            f"{t['gap_records']} gap records, {t['bad']} bad, {t['conflicts']} conflicts\n"
        )
    return 0 if report["totals"]["bad"] == 0 and report["totals"]["conflicts"] == 0 else 1
