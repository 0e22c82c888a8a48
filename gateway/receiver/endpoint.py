"""``citygw receive``: a reference platform endpoint, for integrators to read and tests to use.

It takes batches over HTTP (POST of the compact JWS, optionally gzip-encoded) or from an MQTT
topic (the compact JWS or, format ``jws+gzip``, that JWS gzip-compressed: gateway.wireformat),
and for each one, in this order: bounds its size; checks the header, the key (``kid``) and the
signature; decodes the payload only then, and refuses it unless the key is one of the
gateway's it names (``--keys DIR``: ``DIR/<gateway id>/*.pub``, re-read while running); checks
the payload and pack (contract v1 or v2). It stores each batch once per (gateway, chain, seq) —
a duplicate is acknowledged, not stored again; another content for a stored key is refused (409)
— keeps the readings in its own SQLite file, and tracks each gateway's chains
(:mod:`citygw.receiver.streams`): seqs still missing, gap records, box resets and what they lost, cloned
ids, and any ``prev`` that does not match what it holds. Whatever is refused is counted by kind
and logged (at most one line per kind every :data:`LOG_EVERY` seconds, with the count since).

HTTP answers: 200 stored or duplicate; 400 malformed, bad signature or unknown key (the gateway
parks it); 403 a key signing for a gateway it is not bound to; 409 a (gateway, chain, seq) already
held with other content; 413 too large.

With ``--mqtt`` it also takes the gateways' signed status messages (``--status-topic``,
:mod:`citygw.wire.liveness`); ``GET /fleet`` is the fleet view (:mod:`citygw.receiver.fleet`): each gateway's
last health and liveness with its chain state, the boxes that need a person first.
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
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

from citygw.backoff import Backoff
from citygw.errors import KeyFileError, VerificationError
from citygw.logs import EventLog
from citygw.receiver.fleet import Fleet, fleet_view
from citygw.receiver.streams import Event, Reset, Streams
from citygw.receiver.verify import MAX_TOKEN, ChainVerifier, Outcome, Refusal
from citygw.wire.envelope import TooLarge, unwrap
from citygw.wire.keyring import Keyring
from citygw.wire.liveness import StatusRefused, read_status
from citygw.wire.ngsi import samples
from citygw.wire.signing import chain_hash, load_public_keys

log = EventLog(__name__)

LOG_EVERY = 10.0  # seconds between log lines about refused items of one kind

SCHEMA_VERSION = 2
_SCHEMA = """
CREATE TABLE IF NOT EXISTS batches (
    gateway TEXT NOT NULL, chain TEXT NOT NULL, seq INTEGER NOT NULL, hash TEXT NOT NULL, prev TEXT,
    readings INTEGER NOT NULL, received REAL NOT NULL, created REAL NOT NULL, reset TEXT,
    jws TEXT NOT NULL,
    PRIMARY KEY (gateway, chain, seq)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS gaps (
    gateway TEXT NOT NULL, chain TEXT NOT NULL, first INTEGER NOT NULL, last INTEGER NOT NULL,
    batches INTEGER NOT NULL, readings INTEGER NOT NULL, reason TEXT NOT NULL, prev TEXT,
    last_hash TEXT NOT NULL, received REAL NOT NULL, created REAL NOT NULL, hash TEXT NOT NULL,
    PRIMARY KEY (gateway, chain, first)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS readings (
    gateway TEXT NOT NULL, chain TEXT NOT NULL, seq INTEGER NOT NULL, device TEXT NOT NULL,
    name TEXT NOT NULL, value, unit TEXT NOT NULL, time REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS readings_by_device ON readings (gateway, device, time);
"""
# a file of the first receiver (one chain per gateway, keyed on (gateway, seq)) is carried over
_MIGRATE_V1 = """
ALTER TABLE batches RENAME TO batches_v1;
ALTER TABLE gaps RENAME TO gaps_v1;
ALTER TABLE readings RENAME TO readings_v1;
DROP INDEX IF EXISTS readings_by_device;
{schema}
INSERT INTO batches SELECT gateway, '', seq, hash, prev, readings, received, received, NULL, jws
    FROM batches_v1;
INSERT INTO gaps SELECT gateway, '', first, last, batches, readings, reason, prev, last_hash, received,
    received, '' FROM gaps_v1;
INSERT INTO readings SELECT gateway, '', seq, device, name, value, unit, time FROM readings_v1;
DROP TABLE batches_v1;
DROP TABLE gaps_v1;
DROP TABLE readings_v1;
"""

_STATUS = {
    Refusal.TOO_LARGE: 413,
    Refusal.NOT_BOUND: 403,
    Refusal.CONFLICT: 409,
}


@dataclass(slots=True)
class Counts:
    stored: int = 0
    readings: int = 0
    duplicates: int = 0
    gap_records: int = 0
    bad: int = 0  # refused, of any kind but a conflict
    conflicts: int = 0
    refused: dict[str, int] = field(default_factory=dict)  # by kind (gateway.verify.Refusal)
    new_chains: int = 0
    clones: int = 0
    statuses: int = 0  # verified liveness messages (gateway.liveness)
    bad_statuses: int = 0  # status messages refused (unsigned, unknown or unbound key, malformed)


@dataclass(frozen=True, slots=True)
class Verdict:
    status: int  # the HTTP status to answer
    outcome: str  # stored, duplicate, gap, bad, conflict
    reason: str = ""


class _Throttle:
    """One log line per kind at most every ``every`` seconds, saying how many were held back."""

    def __init__(self, every: float) -> None:
        self._every = every
        self._last: dict[str, float] = {}
        self._held: dict[str, int] = {}

    def due(self, kind: str) -> str | None:
        """None: hold this line back (counted); else the suffix its line ends with."""
        now = time.monotonic()
        if now - self._last.get(kind, -float("inf")) < self._every:
            self._held[kind] = self._held.get(kind, 0) + 1
            return None
        self._last[kind] = now
        held = self._held.pop(kind, 0)
        return f" (and {held} more of this kind since the last line)" if held else ""


class Receiver:
    """Verifies, de-duplicates and stores batches in one SQLite file."""

    def __init__(self, db_path: Path, keys: Keyring | Iterable[Path]) -> None:
        keyring = keys if isinstance(keys, Keyring) else Keyring(unbound=load_public_keys(keys))
        self.verifier = ChainVerifier(keyring)
        self.db = sqlite3.connect(db_path, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self._migrate()
        self.fleet = Fleet(self.db)
        self.counts = Counts()
        self.streams = Streams()
        self._throttle = _Throttle(LOG_EVERY)
        self._replay()

    def close(self) -> None:
        self.db.close()

    def _migrate(self) -> None:
        version = self.db.execute("PRAGMA user_version").fetchone()[0]
        columns = {row[1] for row in self.db.execute("PRAGMA table_info(batches)")}
        if columns and "chain" not in columns:  # in one transaction: all carried over, or nothing
            self.db.executescript(f"BEGIN; {_MIGRATE_V1.format(schema=_SCHEMA)} COMMIT;")
            log.event("receiver_upgraded").info("carried the receiver's file over to contract v2 (chains)")
        else:
            self.db.executescript(_SCHEMA)
        if version != SCHEMA_VERSION:
            self.db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    def _replay(self) -> None:
        """Rebuild the chains' state from what the file holds, in the order it arrived."""
        rows = self.db.execute(
            "SELECT gateway, chain, seq, seq, created, readings, NULL, reset, received FROM batches "
            "UNION ALL SELECT gateway, chain, first, last, created, readings, reason, NULL, received "
            "FROM gaps ORDER BY 9"
        )
        for gateway, chain, first, last, created, readings, reason, reset, _ in rows:
            self.streams.add(
                gateway,
                chain,
                first,
                last,
                created=created,
                readings=readings,
                gap_reason=reason,
                reset=Reset(**json.loads(reset)) if reset else None,
            )

    def refuse(self, kind: Refusal, reason: str, gateway: str | None) -> Verdict:
        """Count and log (throttled) an item refused, and say how to answer it."""
        self.counts.refused[kind.value] = self.counts.refused.get(kind.value, 0) + 1
        if kind is Refusal.CONFLICT:
            self.counts.conflicts += 1
        else:
            self.counts.bad += 1
        who = f" from gateway {gateway}" if gateway else ""
        suffix = self._throttle.due(kind.value)
        if suffix is None:
            pass
        elif kind is Refusal.CONFLICT:
            log.event("batch_conflict", reason=kind.value).error(
                "refused a batch%s (%s): %s%s", who, kind.value, reason, suffix
            )
        elif kind is Refusal.NOT_BOUND:
            log.event("batch_forged", reason=kind.value).error(
                "refused a batch%s (%s): %s%s", who, kind.value, reason, suffix
            )
        else:
            log.event("batch_refused", reason=kind.value).warning(
                "refused a batch%s (%s): %s%s", who, kind.value, reason, suffix
            )
        outcome = "conflict" if kind is Refusal.CONFLICT else "bad"
        return Verdict(_STATUS.get(kind, 400), outcome, reason)

    def _note(self, events: list[Event]) -> None:
        for event in events:
            if event.kind == "clone":
                self.counts.clones += 1
                log.event("chain_clone").error("%s", event.text)
            elif event.kind == "upgrade":
                log.event("chain_upgrade").info("%s", event.text)
            else:
                self.counts.new_chains += 1
                log.event("chain_new").warning("%s", event.text)

    def accept(self, token: str) -> Verdict:
        token = token.strip()
        result = self.verifier.inspect(token)
        if result.outcome is not Outcome.OK or result.payload is None or result.gateway is None:
            return self.refuse(result.refusal or Refusal.MALFORMED, result.reason, result.gateway)
        body, gateway, digest = result.payload, result.gateway, chain_hash(token)
        chain = result.chain or ""
        if result.gap is not None:
            first, last = result.gap
            known = self.db.execute(
                "SELECT hash FROM gaps WHERE gateway = ? AND chain = ? AND first = ?", (gateway, chain, first)
            ).fetchone()
            if known is not None:
                if known[0] in (digest, ""):
                    self.counts.duplicates += 1
                    return Verdict(200, "duplicate")
                return self.refuse(
                    Refusal.CONFLICT,
                    f"a gap record from seq {first} already received with other content",
                    gateway,
                )
            gap = body["gap"]
            self.db.execute(
                "INSERT INTO gaps VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                (
                    gateway,
                    chain,
                    first,
                    last,
                    gap["batches"],
                    gap["readings"],
                    gap["reason"],
                    body.get("prev"),
                    body["last"],
                    time.time(),
                    result.created,
                    digest,
                ),
            )
            self.counts.gap_records += 1
            self._note(
                self.streams.add(
                    gateway,
                    chain,
                    first,
                    last,
                    created=result.created,
                    readings=gap["readings"],
                    gap_reason=gap["reason"],
                )
            )
            return Verdict(200, "gap")
        assert result.seq is not None
        seq = result.seq
        known = self.db.execute(
            "SELECT hash FROM batches WHERE gateway = ? AND chain = ? AND seq = ?", (gateway, chain, seq)
        ).fetchone()
        if known is not None:
            if known[0] == digest:
                self.counts.duplicates += 1
                return Verdict(200, "duplicate")
            where = f"chain {chain} seq {seq}" if chain else f"seq {seq}"
            why = (
                f"{where} already received with different content: a forgery, a bug, or two boxes "
                "sharing one buffer's identity (a cloned image)"
            )
            return self.refuse(Refusal.CONFLICT, why, gateway)
        batch_samples = samples(body)
        rows = [
            (
                gateway,
                chain,
                seq,
                s.device,
                s.name,  # as sent: voltage:l1-l2 stays apart from voltage:l1 and voltage
                s.value,
                s.unit,
                s.time,
            )
            for s in batch_samples
        ]
        reset = json.dumps(asdict(result.reset)) if result.reset is not None else None
        self.db.execute("BEGIN")
        self.db.execute(
            "INSERT INTO batches VALUES (?,?,?,?,?,?,?,?,?,?)",
            (
                gateway,
                chain,
                seq,
                digest,
                body.get("prev"),
                len(rows),
                time.time(),
                result.created,
                reset,
                token,
            ),
        )
        self.db.executemany("INSERT INTO readings VALUES (?,?,?,?,?,?,?,?)", rows)
        self.db.execute("COMMIT")
        self.counts.stored += 1
        self.counts.readings += len(rows)
        self.fleet.saw_batch(gateway, batch_samples, received=time.time())
        self._note(
            self.streams.add(
                gateway, chain, seq, seq, created=result.created, readings=len(rows), reset=result.reset
            )
        )
        return Verdict(200, "stored")

    def accept_status(self, payload: bytes) -> bool:
        """A message of the status topic (gateway.liveness): kept for the fleet view if its
        signature is a key of the gateway it names; else counted and logged (throttled)."""
        try:
            status = read_status(payload, self.verifier.keyring)
        except StatusRefused as exc:
            self.counts.bad_statuses += 1
            suffix = self._throttle.due("status")
            if suffix is not None:
                log.event("status_refused").warning("refused a status message: %s%s", exc, suffix)
            return False
        self.counts.statuses += 1
        box = self.fleet.boxes.get(status.gateway)
        news = box is None or box.status != status  # a retained copy comes again at every subscribe
        self.fleet.saw_status(status, received=time.time())
        if news and status.state == "offline" and status.reason != "stopped":
            log.event("gateway_offline").warning(
                "gateway %s is offline: its last will arrived (connection lost)", status.gateway
            )
        return True

    def view_fleet(self) -> dict[str, Any]:
        """The fleet view (gateway.fleet): every gateway heard from or registered, worst first."""
        registered = self.verifier.keyring.gateways()
        return fleet_view(self.fleet, self.report(), registered)

    def report(self) -> dict[str, Any]:
        """Per gateway: batches and readings held, and per chain the seqs missing (they may still
        come), the seqs lost in a box reset, gap records and links whose prev does not match; box
        resets; cloned ids. The gateway's own ``first_seq``, ``last_seq``, ``missing``, ``gaps`` and
        ``broken_links`` are those of its newest chain."""
        gateways: dict[str, Any] = {}
        for gateway in self.streams.gateways():
            streams = self.streams.report(gateway)
            for chain in streams["chains"]:
                chain["broken_links"] = self._broken_links(gateway, chain["chain"])
            current = next(
                (c for c in reversed(streams["chains"]) if c["superseded_by"] is None), streams["chains"][-1]
            )
            readings = self.db.execute(
                "SELECT count(*) FROM readings WHERE gateway = ?", (gateway,)
            ).fetchone()[0]
            gateways[gateway] = {
                "batches": sum(c["batches"] for c in streams["chains"]),
                "readings": readings,
                "chain": current["chain"],
                "first_seq": current["first_seq"],
                "last_seq": current["last_seq"],
                "missing": current["missing"],
                "gaps": current["gaps"],
                "broken_links": current["broken_links"],
                **streams,
            }
        return {"totals": asdict(self.counts), "gateways": gateways}

    def _broken_links(self, gateway: str, chain: str) -> list[int]:
        """Seqs (of batches, or a gap record's first) whose prev is not the hash held for seq - 1."""
        return [
            seq
            for (seq,) in self.db.execute(
                """
                WITH ends(seq, hash) AS (
                    SELECT seq, hash FROM batches WHERE gateway = ?1 AND chain = ?2
                    UNION ALL SELECT last, last_hash FROM gaps WHERE gateway = ?1 AND chain = ?2),
                starts(seq, prev) AS (
                    SELECT seq, prev FROM batches WHERE gateway = ?1 AND chain = ?2
                    UNION ALL SELECT first, prev FROM gaps WHERE gateway = ?1 AND chain = ?2)
                SELECT DISTINCT s.seq FROM starts s JOIN ends e ON e.seq = s.seq - 1
                WHERE s.prev IS NOT e.hash ORDER BY s.seq
                """,
                (gateway, chain),
            )
        ]


def http_app(receiver: Receiver) -> web.Application:
    async def post(request: web.Request) -> web.Response:
        try:
            body = await request.read()  # aiohttp has undone any Content-Encoding (gzip, deflate)
        except web.HTTPRequestEntityTooLarge:
            verdict = receiver.refuse(Refusal.TOO_LARGE, f"larger than {MAX_TOKEN} bytes", None)
            return web.json_response({"outcome": verdict.outcome, "reason": verdict.reason}, status=413)
        try:
            token = unwrap(body, limit=MAX_TOKEN).decode("ascii")  # a gzip body without Content-Encoding
        except TooLarge as exc:
            verdict = receiver.refuse(Refusal.TOO_LARGE, str(exc), None)
            return web.json_response({"outcome": verdict.outcome, "reason": verdict.reason}, status=413)
        except VerificationError as exc:
            verdict = receiver.refuse(Refusal.NOT_JWS, str(exc), None)
            return web.json_response({"outcome": "bad", "reason": verdict.reason}, status=400)
        except UnicodeDecodeError:
            verdict = receiver.refuse(Refusal.NOT_JWS, "body is not ASCII", None)
            return web.json_response({"outcome": "bad", "reason": verdict.reason}, status=400)
        verdict = receiver.accept(token)
        return web.json_response(
            {"outcome": verdict.outcome, "reason": verdict.reason}, status=verdict.status
        )

    async def report(request: web.Request) -> web.Response:
        return web.json_response(receiver.report())

    async def fleet(request: web.Request) -> web.Response:
        return web.json_response(receiver.view_fleet())

    app = web.Application(client_max_size=MAX_TOKEN + 2)
    app.router.add_post("/", post)
    app.router.add_post("/batches", post)
    app.router.add_get("/report", report)
    app.router.add_get("/fleet", fleet)
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


def _take(receiver: Receiver, message: bytes) -> None:
    """One MQTT message, in either format (gateway.wireformat)."""
    try:
        token = unwrap(message, limit=MAX_TOKEN)
    except TooLarge as exc:
        receiver.refuse(Refusal.TOO_LARGE, str(exc), None)
    except VerificationError as exc:
        receiver.refuse(Refusal.NOT_JWS, str(exc), None)
    else:
        receiver.accept(token.decode("ascii", errors="replace"))


async def _serve_mqtt(
    receiver: Receiver, url: str, topic: str, stop: asyncio.Event, status_topic: str | None = None
) -> None:
    """Subscribe with a persistent session (QoS 1) and take every message; a lost broker is
    connected to again with backoff, and the broker keeps what arrived meanwhile. Messages of
    ``status_topic`` (retained births and last wills, gateway.liveness) go to the fleet view."""
    from urllib.parse import urlsplit

    import aiomqtt

    parts = urlsplit(url)
    backoff = Backoff(0.5, 10.0, retry_on=lambda exc: isinstance(exc, aiomqtt.MqttError))
    while not stop.is_set():
        try:
            async with aiomqtt.Client(
                parts.hostname or "127.0.0.1",
                parts.port or 1883,
                identifier="citygw-receive",
                clean_session=False,
            ) as client:
                await client.subscribe(topic, qos=1)
                if status_topic:
                    await client.subscribe(status_topic, qos=1)
                log.event("receiving").info("receiving from %s topic %s", url, topic)
                backoff.reset()
                async for message in client.messages:
                    payload = message.payload
                    if status_topic and message.topic.matches(status_topic):
                        if isinstance(payload, bytes | bytearray):
                            receiver.accept_status(bytes(payload))
                    elif not isinstance(payload, bytes | bytearray):
                        receiver.refuse(Refusal.NOT_JWS, "an MQTT message that is not bytes", None)
                    elif len(payload) > MAX_TOKEN + 2:
                        receiver.refuse(Refusal.TOO_LARGE, f"larger than {MAX_TOKEN} bytes", None)
                    else:
                        _take(receiver, bytes(payload))
        except aiomqtt.MqttError as exc:
            backoff.failures += 1
            delay = backoff.delay()
            log.event("receiver_retrying").warning("mqtt %s: %s; connecting again in %.1f s", url, exc, delay)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), delay)


def receive_main(
    *,
    keys: list[Path],
    keys_dir: Path | None = None,
    db: Path,
    http: str | None,
    mqtt: str | None,
    topic: str,
    duration: float | None,
    as_json: bool,
    status_topic: str | None = "city/+/status",
) -> int:
    if not http and not mqtt:
        sys.stderr.write("citygw receive: give --http HOST:PORT or --mqtt URL\n")
        return 2
    if not keys and keys_dir is None:
        sys.stderr.write("citygw receive: give --keys DIR (DIR/<gateway id>/*.pub) or --key FILE\n")
        return 2
    try:
        keyring = Keyring(keys_dir, unbound=load_public_keys(keys))
    except KeyFileError as exc:
        sys.stderr.write(f"citygw receive: {exc}\n")
        return 2
    if not keyring.bound:
        log.event("keys_unbound").warning(
            "keys given with --key may sign for any gateway id: use --keys DIR "
            "(DIR/<gateway id>/*.pub) to bind each key to its gateway"
        )
    receiver = Receiver(db, keyring)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)

        # one task group: a task that fails ends the receiver with its error, never silently
        async with asyncio.TaskGroup() as group:
            served = []
            if http:
                host, _, port = http.rpartition(":")
                served.append(
                    group.create_task(
                        _serve_http(receiver, host or "127.0.0.1", int(port), stop), name="http"
                    )
                )
            if mqtt:
                served.append(
                    group.create_task(_serve_mqtt(receiver, mqtt, topic, stop, status_topic), name="mqtt")
                )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), duration)
            stop.set()
            for task in served:
                task.cancel()

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
            f"{t['gap_records']} gap records, {t['bad']} bad, {t['conflicts']} conflicts, "
            f"{t['new_chains']} new chains, {t['clones']} clones\n"
        )
    clones = any(g["clones"] for g in report["gateways"].values())
    return 0 if report["totals"]["bad"] == 0 and report["totals"]["conflicts"] == 0 and not clones else 1
