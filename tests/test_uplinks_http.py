"""HTTP and NGSI-LD uplinks, several uplinks at once, and the reference receiver — all real processes.

The daemon and `citygw receive` run as subprocesses; between them sits a scripted HTTP server
(aiohttp, in this process) that answers 500, 429 with Retry-After, a timeout and a permanent
400 for one batch, and otherwise forwards the request to the real receiver.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from citygw.buffer import KIND_DATA, KIND_GAP
from citygw.demo.broker import LocalBroker, free_port
from citygw.reading import Record

from .support import (
    LIBFAKETIME,
    Collector,
    Daemon,
    payload_of,
    verified_body,
    verify_all,
    wait_until,
    write_config,
)

REPO = Path(__file__).resolve().parent.parent

Handler = Callable[[web.Request, bytes], Awaitable[web.StreamResponse]]


class ScriptedServer:
    """An aiohttp server on loopback in its own thread; ``handler`` decides each answer."""

    def __init__(self, handler: Handler) -> None:
        self.port = free_port()
        self.handler = handler
        self.requests: list[tuple[float, dict[str, str], bytes]] = []
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        assert self._ready.wait(10)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)

        async def any_request(request: web.Request) -> web.StreamResponse:
            body = await request.read()
            self.requests.append((time.monotonic(), dict(request.headers), body))
            return await self.handler(request, body)

        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", any_request)
        self._runner = web.AppRunner(app, access_log=None)
        self._loop.run_until_complete(self._runner.setup())
        self._loop.run_until_complete(web.TCPSite(self._runner, "127.0.0.1", self.port).start())
        self._ready.set()
        self._loop.run_forever()

    def close(self) -> None:
        async def stop() -> None:
            await self._runner.cleanup()

        asyncio.run_coroutine_threadsafe(stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)


class ReceiverProcess:
    """`citygw receive --http` as a subprocess."""

    def __init__(self, tmp_path: Path, key: Path, port: int | None = None) -> None:
        self.port = port or free_port()
        self.db = tmp_path / "received.db"
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "citygw",
                "receive",
                "--key",
                f"{key}.pub",
                "--db",
                str(self.db),
                "--http",
                f"127.0.0.1:{self.port}",
                "--json",
            ],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=(tmp_path / "receiver.log").open("ab"),
        )
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.1)
        raise AssertionError("receiver did not start")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/batches"

    def report(self) -> dict[str, Any]:
        with sqlite3.connect(self.db) as db:
            stored = db.execute("SELECT count(*), coalesce(max(seq), 0) FROM batches").fetchone()
            readings = db.execute("SELECT count(*) FROM readings").fetchone()[0]
        return {"batches": stored[0], "last_seq": stored[1], "readings": readings}

    def stop(self) -> dict[str, Any]:
        self.proc.terminate()
        out, _ = self.proc.communicate(timeout=15)
        return json.loads(out)  # type: ignore[no-any-return]


@pytest.fixture
def receiver(tmp_path: Path, key: Path) -> Iterator[ReceiverProcess]:
    r = ReceiverProcess(tmp_path, key)
    yield r
    if r.proc.poll() is None:
        r.proc.kill()
        r.proc.wait()


def _http_config(tmp_path: Path, key: Path, url: str, count: int, **uplink: Any) -> Path:
    config = write_config(
        tmp_path / "c.yaml",
        key=key,
        port=1,
        devices={"d1": {"bus": "gen", "rate": 500, "count": count, "values": "sequence"}},
        buffer={"batch": {"max_readings": 100, "max_age": "200ms"}},
    )
    data = json.loads(config.read_text())
    data["uplinks"] = {
        "platform": {
            "type": "http",
            "url": url,
            "timeout": "1s",
            "backoff_initial": "200ms",
            "backoff_max": "1s",
            "window": 1,
            **uplink,
        }
    }
    config.write_text(json.dumps(data))
    return config


def test_http_faults_retry_a_poison_batch_is_parked_and_every_other_arrives_once(
    tmp_path: Path,
    key: Path,
    receiver: ReceiverProcess,
    daemon_factory: Callable[[Path], Daemon],
) -> None:
    script = ["500", "429", "timeout"]  # the first three requests
    forwarded: list[int] = []

    async def handler(request: web.Request, body: bytes) -> web.StreamResponse:
        seq = int(request.headers["Idempotency-Key"].rsplit(":", 1)[1])
        if script:
            step = script.pop(0)
            if step == "500":
                return web.Response(status=500, text="upstream broken")
            if step == "429":
                return web.Response(status=429, headers={"Retry-After": "2"}, text="slow down")
            await asyncio.sleep(3)  # longer than the uplink's 1 s timeout
            return web.Response(status=200)
        if seq == 5:
            return web.Response(status=400, text="schema says no")
        async with (
            aiohttp.ClientSession() as session,
            session.post(receiver.url, data=body, headers={"Content-Type": "application/jose"}) as answer,
        ):
            forwarded.append(seq)
            return web.Response(status=answer.status, body=await answer.read())

    server = ScriptedServer(handler)
    try:
        config = _http_config(tmp_path, key, f"http://127.0.0.1:{server.port}/ingest", 2000, gzip=True)
        daemon = daemon_factory(config)
        daemon.start()
        daemon.wait_ready()  # its buffer file holds its tables

        def parked_readings() -> int:  # batch 5's size depends on how the seal timing fell
            with sqlite3.connect(tmp_path / "state" / "buffer.db") as db:
                row = db.execute(
                    "SELECT b.readings FROM parked p JOIN batches b ON b.seq = p.seq WHERE p.seq = 5"
                ).fetchone()
            return int(row[0]) if row else 0

        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and receiver.report()["readings"] + parked_readings() < 2000:
            time.sleep(0.2)
        assert parked_readings() > 0
        assert receiver.report()["readings"] == 2000 - parked_readings(), receiver.report()
        # Retry-After: 2 was honoured
        times = [t for t, _, _ in server.requests]
        assert times[2] - times[1] >= 2.0
        assert all(h.get("Content-Encoding") == "gzip" for _, h, _ in server.requests)
        assert daemon.terminate() == 0
        with sqlite3.connect(tmp_path / "state" / "buffer.db") as db:
            parked = db.execute("SELECT uplink, seq, status, reason FROM parked").fetchall()
        assert parked == [("platform", 5, 400, "HTTP 400 schema says no")]
        assert "batch 5 rejected (HTTP 400 schema says no); parked" in (tmp_path / "daemon.log").read_text()
        # the platform is fixed; a person resends the parked batch
        done = subprocess.run(
            [sys.executable, "-m", "citygw", "resend", "-c", str(config), "5"],
            cwd=REPO,
            capture_output=True,
            text=True,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        assert done.stdout == "platform 5\n"
        script.clear()

        async def accept_all(request: web.Request, body: bytes) -> web.StreamResponse:
            async with (
                aiohttp.ClientSession() as session,
                session.post(
                    receiver.url,
                    data=body,
                    headers={"Content-Type": "application/jose"},
                ) as answer,
            ):
                return web.Response(status=answer.status, body=await answer.read())

        server.handler = accept_all
        data = json.loads(config.read_text())
        data["devices"] = {}  # this run only drains the buffer
        config.write_text(json.dumps(data))
        daemon = daemon_factory(config)
        daemon.start()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and receiver.report()["readings"] < 2000:
            time.sleep(0.2)
        assert daemon.terminate() == 0
    finally:
        server.close()
    report = receiver.stop()
    gw = report["gateways"]["gw-test"]
    assert gw["readings"] == 2000
    assert gw["missing"] == [] and gw["broken_links"] == []
    assert report["totals"]["bad"] == 0 and report["totals"]["conflicts"] == 0
    assert report["totals"]["stored"] == gw["batches"] == gw["last_seq"]
    with sqlite3.connect(tmp_path / "state" / "buffer.db") as db:
        assert db.execute("SELECT count(*) FROM parked").fetchone()[0] == 0


class IdempotentPlatform:
    """A platform (or a proxy before it) that honours ``Idempotency-Key`` as the IETF draft says: a
    repeated key gets the first answer again, and the request is not processed (nor stored) again.
    :meth:`process` handles a key seen for the first time; by default it stores the JWS and answers 201."""

    def __init__(self) -> None:
        self.answered: dict[str, tuple[int, str]] = {}
        self.stored: list[str] = []
        self.replayed: list[str] = []  # the keys answered from the cache

    async def handle(self, request: web.Request, body: bytes) -> web.StreamResponse:
        idempotency_key = request.headers["Idempotency-Key"]
        if idempotency_key in self.answered:  # replayed: the body is not looked at, nor stored again
            self.replayed.append(idempotency_key)
            status, text = self.answered[idempotency_key]
            return web.Response(status=status, text=text, headers={"Idempotent-Replayed": "true"})
        return await self.process(idempotency_key, body.decode("ascii"))

    async def process(self, idempotency_key: str, token: str) -> web.StreamResponse:
        self.store(idempotency_key, token)
        return web.Response(status=201, text="stored")

    def store(self, idempotency_key: str, token: str) -> None:
        self.stored.append(token)
        self.answered[idempotency_key] = (201, "stored")


def test_a_replaced_buffers_batches_are_stored_by_a_platform_that_honours_idempotency_keys(
    tmp_path: Path, key: Path, daemon_factory: Callable[[Path], Daemon]
) -> None:
    """The platform (or a proxy before it) honours ``Idempotency-Key`` as the IETF draft says: a
    repeated key gets the first answer again and the request is not processed. The box's buffer is
    damaged between two runs and moved aside: the fresh buffer is a new chain whose seqs start at 1
    again. Each of its batches must still be stored, not answered with the old chain's cached 2xx."""
    platform = IdempotentPlatform()
    stored, replayed = platform.stored, platform.replayed
    public = Path(f"{key}.pub")

    def readings(tokens: list[str], device: str) -> list[Any]:
        return verify_all(tokens, public).values.get(device, [])

    server = ScriptedServer(platform.handle)
    try:
        config = _http_config(tmp_path, key, f"http://127.0.0.1:{server.port}/ingest", 300)
        daemon = daemon_factory(config)
        daemon.start()
        wait_until(lambda: len(readings(list(stored), "d1")) == 300, 30, "the first run's 300 readings")
        assert daemon.terminate() == 0
        old_chain = payload_of(stored[0])["chain"]

        buffer = tmp_path / "state" / "buffer.db"  # the card loses the file's first block
        with buffer.open("r+b") as f:
            f.write(bytes(4096))
        data = json.loads(config.read_text())
        data["devices"] = {"d2": {"bus": "gen", "rate": 500, "count": 300, "values": "sequence"}}
        config.write_text(json.dumps(data))
        daemon = daemon_factory(config)
        daemon.start()

        def sent_by_new_chain() -> list[str]:
            bodies = [body.decode("ascii") for _, _, body in list(server.requests)]
            return [token for token in bodies if payload_of(token)["chain"] != old_chain]

        wait_until(
            lambda: len(readings(sent_by_new_chain(), "d2")) == 300, 30, "the second run's batches sent"
        )
        assert daemon.terminate() == 0
    finally:
        server.close()
    assert "moved aside to" in daemon.log.read_text()
    new = [token for token in stored if payload_of(token)["chain"] != old_chain]
    assert len(readings(new, "d2")) == 300, f"answered from the cache, not stored: {replayed}"
    assert readings(new, "d2") == list(range(300))
    assert min(payload_of(token)["seq"] for token in new) == 1  # the seqs of the old chain again
    for _, headers, body in server.requests:  # the key names the chain: {gateway}:{chain}:{seq}
        payload = payload_of(body.decode("ascii"))
        assert headers["Idempotency-Key"] == f"gw-test:{payload['chain']}:{payload['seq']}"


def _box(path: Path) -> tuple[int, int, list[tuple[int, int]]]:
    """The box's buffer: the last seq sealed, the uplink's cursor, and (seq, kind) of each batch held."""
    with sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True) as db:
        meta = dict(db.execute("SELECT key, value FROM meta").fetchall())
        cursor = db.execute("SELECT seq FROM cursors WHERE uplink = 'platform'").fetchone()
        held = db.execute("SELECT seq, kind FROM batches ORDER BY seq").fetchall()
    return int(meta.get("next_seq", 1)) - 1, int(cursor[0]) if cursor else 0, held


def test_a_gap_record_is_stored_by_a_platform_that_honours_idempotency_keys(
    tmp_path: Path, key: Path, daemon_factory: Callable[[Path], Daemon]
) -> None:
    """A gap record has no seq of its own: it travels as seq ``gap.to``, the seq of the data batch it
    replaced. Batches 1 and 2 are POSTed in one window: the platform never gets batch 1 (its request
    is lost) and stores batch 2, whose answer is lost (after the uplink's timeout): both stay
    undelivered on the box. The box restarts with its uplink taken out for a while, and
    ``buffer.max_age`` replaces 1..2 with a gap record. Put back, the uplink sends the gap record: a
    platform that honours ``Idempotency-Key`` must store it, not answer it with batch 2's stored
    2xx, or seq 1 stays missing with no gap record to account for it."""
    timeout = 1.0

    class LossyPlatform(IdempotentPlatform):
        async def process(self, idempotency_key: str, token: str) -> web.StreamResponse:
            seq = payload_of(token).get("seq")
            if seq == 1:  # lost on the way: never processed, nothing comes back in time
                await asyncio.sleep(timeout * 2.5)
                return web.Response(status=504)
            self.store(idempotency_key, token)
            if seq == 2:  # stored; the answer is lost (it comes after the uplink's timeout)
                await asyncio.sleep(timeout * 2.5)
            return web.Response(status=201, text="stored")

    platform = LossyPlatform()
    stored, replayed = platform.stored, platform.replayed

    def config(uplink: bool, devices: dict[str, dict[str, Any]], batch: dict[str, Any]) -> Path:
        path = write_config(
            tmp_path / "c.yaml",
            key=key,
            port=1,
            devices=devices,
            buffer={"max_age": "60s", "batch": batch},  # max_age: the smallest the config allows
        )
        data = json.loads(path.read_text())
        data["uplinks"] = {}
        if uplink:
            data["uplinks"]["platform"] = {
                "type": "http",
                "url": f"http://127.0.0.1:{server.port}/ingest",
                "timeout": f"{timeout}s",
                "backoff_initial": "200ms",
                "backoff_max": "1s",
                "window": 2,
            }
        path.write_text(json.dumps(data))
        return path

    if LIBFAKETIME is None:
        pytest.fail("libfaketime is missing: scripts/dev installs it (apt package faketime)")
    buffer = tmp_path / "state" / "buffer.db"
    server = ScriptedServer(platform.handle)
    try:
        # 1. two readings, two batches, POSTed in one window; neither is delivered
        one_each = {"max_readings": 1, "max_age": "100ms"}
        daemon = daemon_factory(config(True, {"d1": {"bus": "gen", "rate": 50, "count": 2}}, one_each))
        daemon.start()

        def posts_of(seq: int) -> int:
            return sum(payload_of(body.decode()).get("seq") == seq for _, _, body in list(server.requests))

        wait_until(lambda: posts_of(1) >= 2 and stored, 15, "batch 1 sent twice, batch 2 stored")
        assert daemon.terminate() == 0
        assert _box(buffer) == (2, 0, [(1, KIND_DATA), (2, KIND_DATA)])

        # 2. the uplink taken out; the buffer clock moves past max_age (libfaketime steps the
        # daemon's monotonic clock, which ages batches): retention replaces 1..2 with a gap record
        offset = tmp_path / "faketime"
        offset.write_text("+0s\n")
        staged = {"max_readings": 100_000, "max_age": "86400s"}  # this run seals nothing until it stops
        daemon = daemon_factory(config(False, {"d2": {"bus": "gen", "rate": 20}}, staged))
        daemon.prefix = [
            "env",
            f"LD_PRELOAD={LIBFAKETIME}",
            f"FAKETIME_TIMESTAMP_FILE={offset}",
            "FAKETIME_NO_CACHE=1",
        ]
        daemon.start()
        daemon.wait_ready()
        offset.write_text("+90s\n")
        wait_until(lambda: _box(buffer)[2] == [(2, KIND_GAP)], 15, "retention (max_age) to drop batches 1..2")
        assert daemon.terminate() == 0

        # 3. the uplink is back: it sends the gap record, then the batch the second run sealed
        daemon = daemon_factory(config(True, {}, one_each))
        daemon.start()
        wait_until(lambda: _box(buffer)[1] == _box(buffer)[0] == 3, 15, "every batch delivered")
        assert daemon.terminate() == 0
    finally:
        server.close()
    assert "retention (max_age): dropped batches 1..2" in daemon.log.read_text()
    pem = Path(f"{key}.pub").read_bytes()
    bodies = [verified_body(token, pem) for token in stored]  # each genuinely signed by the box
    data = {body["seq"]: token for token, body in zip(stored, bodies, strict=True) if "gap" not in body}
    gaps = [body for body in bodies if "gap" in body]
    covered = set(data).union(*(range(g["gap"]["from"], g["gap"]["to"] + 1) for g in gaps))
    assert covered == {1, 2, 3}, (
        f"seqs neither stored nor covered by a stored gap record; replayed: {replayed}"
    )
    assert [(g["gap"]["from"], g["gap"]["to"], g["gap"]["reason"]) for g in gaps] == [(1, 2, "max_age")]
    # the platform holds batch 2 as well as the gap record that gave it up: one chain all the same
    assert gaps[0]["prev"] is None and gaps[0]["last"] == hashlib.sha256(data[2].encode()).hexdigest()
    assert payload_of(data[3])["prev"] == gaps[0]["last"]
    chain = payload_of(stored[0])["chain"]
    for _, headers, body in server.requests:  # a gap record's key is not its data batch's
        payload = payload_of(body.decode("ascii"))
        expected = (
            f"gw-test:{chain}:gap:{payload['gap']['to']}"
            if "gap" in payload
            else f"gw-test:{chain}:{payload['seq']}"
        )
        assert headers["Idempotency-Key"] == expected
    # and the reference verifier takes that stream (batch 2 and the gap record ending at it) as whole
    stream = tmp_path / "stored.jws"
    stream.write_text("".join(f"{token}\n" for token in stored))
    checked = subprocess.run(
        [sys.executable, "-m", "citygw", "verify", "--key", f"{key}.pub", str(stream)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_one_uplink_down_does_not_slow_the_other_and_catches_up(
    tmp_path: Path,
    key: Path,
    broker: LocalBroker,
    collector: Collector,
    daemon_factory: Callable[[Path], Daemon],
) -> None:
    http_port = free_port()
    config = write_config(
        tmp_path / "c.yaml",
        key=key,
        port=broker.port,
        devices={"d1": {"bus": "gen", "rate": 1000, "count": 8000, "values": "sequence"}},
        buffer={"batch": {"max_readings": 200, "max_age": "200ms"}},
    )
    data = json.loads(config.read_text())
    data["uplinks"]["down"] = {
        "type": "http",
        "url": f"http://127.0.0.1:{http_port}/batches",
        "timeout": "1s",
        "backoff_initial": "200ms",
        "backoff_max": "1s",
    }
    config.write_text(json.dumps(data))
    daemon = daemon_factory(config)
    started = time.monotonic()
    daemon.start()
    collector.wait(lambda c: c.readings() >= 8000, 30, "all readings over MQTT while HTTP is down")
    mqtt_done = time.monotonic() - started
    assert mqtt_done < 15, f"MQTT took {mqtt_done:.1f} s for 8 s of readings"
    db = tmp_path / "state" / "buffer.db"
    with sqlite3.connect(db) as conn:
        cursors = dict(conn.execute("SELECT uplink, seq FROM cursors").fetchall())
        held = conn.execute("SELECT count(*) FROM batches").fetchone()[0]
    assert cursors.get("down", 0) == 0
    assert held >= 40  # nothing pruned while one uplink lacks it
    receiver = ReceiverProcess(tmp_path, key, port=http_port)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and receiver.report()["readings"] < 8000:
            time.sleep(0.2)
        assert receiver.report()["readings"] == 8000
    finally:
        assert daemon.terminate() == 0
        report = receiver.stop()
    assert report["gateways"]["gw-test"]["missing"] == []
    verified = verify_all(collector.snapshot(), Path(f"{key}.pub"))
    assert verified.values["d1"] == list(range(8000))
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT count(*) FROM batches").fetchone()[0] <= 1  # pruned once both had them


def test_receiver_refuses_forgeries_and_conflicts_and_dedupes(tmp_path: Path, key: Path) -> None:
    from citygw.buffer import BatchLimits, Buffer
    from citygw.receiver.endpoint import Receiver
    from citygw.wire.signing import Signer, generate_key

    buf = Buffer(
        tmp_path / "b.db",
        gateway="gw-1",
        signer=Signer.from_file(key),
        uplinks=[],
        limits=BatchLimits(max_readings=10),
    )
    buf.open()
    buf.commit(
        [Record("dev", "co2", 400 + i, "ppm", 1_790_000_000.0 + i, 0) for i in range(40)], seal_all=True
    )
    tokens = [b.jws for b in buf.fetch(0, 100)]
    buf.close()
    other = tmp_path / "other.key"
    generate_key(other)
    forged = Signer.from_file(other).sign(json.dumps({"gateway": "gw-1", "seq": 2}).encode())
    receiver = Receiver(tmp_path / "r.db", [Path(f"{key}.pub")])
    assert receiver.accept(tokens[0]).outcome == "stored"
    assert receiver.accept(tokens[0]).outcome == "duplicate"
    assert receiver.accept(tokens[2]).outcome == "stored"
    verdict = receiver.accept(forged)
    assert (verdict.status, verdict.outcome) == (400, "bad") and "unknown kid" in verdict.reason
    header, payload, _ = tokens[1].split(".")
    other_sig = tokens[3].split(".")[2]
    assert receiver.accept(f"{header}.{payload}.{other_sig}").status == 400
    report = receiver.report()["gateways"]["gw-1"]
    assert report["missing"] == [[2, 2]]
    assert report["readings"] == 20
    assert receiver.accept(tokens[1]).outcome == "stored"
    assert receiver.report()["gateways"]["gw-1"]["missing"] == []
    assert receiver.report()["gateways"]["gw-1"]["broken_links"] == []
