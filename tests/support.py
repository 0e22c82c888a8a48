"""Test helpers: a collecting subscriber, jwcrypto verification, configs, the daemon as a subprocess."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from jwcrypto import jwk, jws

REPO = Path(__file__).resolve().parent.parent


def citygw(
    *args: str, stdin: str | None = None, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """``citygw ARGS`` as a command (``python -m citygw`` of this checkout), its output captured;
    ``env`` adds to the environment."""
    return subprocess.run(
        [sys.executable, "-m", "citygw", *args],
        capture_output=True,
        text=True,
        input=stdin,
        cwd=REPO,
        timeout=timeout,
        check=False,
        env=None if env is None else {**os.environ, **env},
    )


LIBFAKETIME = next(  # the daemon's clocks under a test's control (scripts/dev installs faketime)
    (
        p
        for p in (
            Path("/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1"),
            Path("/usr/lib/aarch64-linux-gnu/faketime/libfaketime.so.1"),
            Path("/usr/lib/faketime/libfaketime.so.1"),
        )
        if p.exists()
    ),
    None,
)


def b64decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def payload_of(token: str) -> dict[str, Any]:
    return json.loads(b64decode(token.split(".")[1]))  # type: ignore[no-any-return]


class Collector:
    """A QoS 1 subscriber with a persistent session: nothing published while it reconnects is lost."""

    def __init__(self, port: int, topic: str, client_id: str = "test-collector") -> None:
        self.messages: list[str] = []
        self._lock = threading.Lock()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=False)
        self.topic = topic
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe(topic, qos=1)
        self.client.on_message = self._on_message
        subscribed = threading.Event()
        self.client.on_subscribe = lambda *args: subscribed.set()
        self.client.reconnect_delay_set(0.1, 0.5)
        self.client.connect("127.0.0.1", port, keepalive=10)
        self.client.loop_start()
        # the broker holds the subscription (and keeps it across its restarts) from here on
        if not subscribed.wait(10):
            raise AssertionError(f"no SUBACK for {topic} within 10 s")

    def _on_message(self, client: Any, userdata: Any, message: Any) -> None:
        with self._lock:
            self.messages.append(message.payload.decode("ascii"))

    def snapshot(self) -> list[str]:
        with self._lock:
            return list(self.messages)

    def readings(self) -> int:
        return sum(len(payload_of(t).get("senml", [])) for t in self.snapshot())

    def wait(self, predicate: Callable[[Collector], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate(self):
                return
            time.sleep(0.1)
        raise AssertionError(f"timed out after {timeout} s waiting for {what}")

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def wait_until(condition: Callable[[], Any], timeout: float, what: str, every: float = 0.05) -> Any:
    """Poll ``condition`` until it is truthy (and return it); fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(every)


@dataclass
class Verified:
    """What an independent JOSE library (jwcrypto) makes of the batches received."""

    by_seq: dict[int, str] = field(default_factory=dict)
    gaps: list[dict[str, Any]] = field(default_factory=list)
    values: dict[str, list[Any]] = field(default_factory=dict)  # device -> values, in seq order
    duplicates: int = 0


_verified: dict[tuple[bytes, str], dict[str, Any]] = {}  # (public key PEM, token) -> its verified body
_keys: dict[bytes, jwk.JWK] = {}


def verified_body(token: str, pem: bytes) -> dict[str, Any]:
    """The payload of ``token`` once jwcrypto verified it under ``pem`` (and its header is the
    contract's); a token is verified once, so that a wait polling a growing list stays cheap."""
    body = _verified.get((pem, token))
    if body is None:
        key = _keys.get(pem)
        if key is None:
            key = _keys[pem] = jwk.JWK.from_pem(pem)
        obj = jws.JWS()
        obj.deserialize(token)
        obj.verify(key, alg="EdDSA")  # raises on a bad signature
        header = obj.jose_header
        assert header == {"alg": "EdDSA", "kid": key.thumbprint()}, header
        body = json.loads(obj.payload)
        if len(_verified) > 200_000:
            _verified.clear()
        _verified[(pem, token)] = body
    return body


def verify_all(tokens: list[str], public_key: Path) -> Verified:
    """Verify every JWS with jwcrypto; check seq uniqueness of content, then the hash chain."""
    pem = public_key.read_bytes()
    result = Verified()
    gap_tokens: dict[int, str] = {}
    bodies: dict[str, dict[str, Any]] = {}
    for token in tokens:
        body = bodies[token] = verified_body(token, pem)
        if "gap" in body:
            gap_tokens[body["gap"]["to"]] = token
            continue
        seq = body["seq"]
        if seq in result.by_seq:
            assert result.by_seq[seq] == token, f"seq {seq} arrived with two different contents"
            result.duplicates += 1
        result.by_seq[seq] = token
    # walk the chain from the lowest seq, crossing gap records
    seqs = sorted(set(result.by_seq) | set(gap_tokens))
    prev_hash: str | None = None
    expected = None
    for seq in seqs:
        if seq in gap_tokens:
            gap = payload_of(gap_tokens[seq])
            assert expected is None or gap["gap"]["from"] == expected, (gap, expected)
            assert prev_hash is None or gap["prev"] == prev_hash
            result.gaps.append(gap)
            prev_hash, expected = gap["last"], gap["gap"]["to"] + 1
            if seq not in result.by_seq:
                continue
        token = result.by_seq[seq]
        body = bodies[token]
        assert expected is None or seq == expected, f"seq {seq} follows {expected - 1}: batches missing"
        assert prev_hash is None or body["prev"] == prev_hash, f"chain broken at seq {seq}"
        prev_hash = hashlib.sha256(token.encode()).hexdigest()
        expected = seq + 1
        device = ""
        for record in body["senml"]:
            if "bn" in record:
                device = record["bn"].split("/")[1]
            result.values.setdefault(device, []).append(record.get("v", record.get("vs", record.get("vb"))))
    return result


def write_config(
    path: Path, *, key: Path, port: int, devices: dict[str, dict[str, Any]], **extra: Any
) -> Path:
    buffer: dict[str, Any] = {
        "path": str(path.parent / "state" / "buffer.db"),
        "commit_interval": "200ms",
        "batch": {"max_age": "1s"},  # the first batch in a second, not 10 s; a test's "batch" replaces it
    }
    buffer.update(extra.pop("buffer", {}))
    config = {
        "gateway": {"id": extra.pop("gateway_id", "gw-test"), "key_file": str(key)},
        "buffer": buffer,
        "uplinks": {
            "local": {
                "type": "mqtt",
                "url": f"mqtt://127.0.0.1:{port}",
                "keepalive": "5s",
                "backoff_initial": "200ms",
                "backoff_max": "2s",
            }
        },
        "buses": {"gen": {"type": "synthetic"}},
        "devices": devices,
        "metrics": {"enabled": False},  # tests that scrape pass metrics={"listen": free port}
        "health": {"enabled": False},  # exact reading counts; tests of health pass health={...}
    }
    config.update(extra)
    path.write_text(json.dumps(config, indent=2))  # JSON is YAML
    return path


class ReadyListener:
    """A ``$NOTIFY_SOCKET`` as systemd offers it (a unix datagram socket, drained all the time),
    so that a test knows when the daemon said READY=1 instead of guessing with a sleep."""

    def __init__(self) -> None:
        self._dir = tempfile.mkdtemp(prefix="citygw-notify-")  # short: sun_path holds 108 bytes
        self.path = os.path.join(self._dir, "notify.sock")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.settimeout(0.1)
        self.ready = threading.Event()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._listen, name="notify-listener", daemon=True)
        self._thread.start()

    def _listen(self) -> None:
        while not self._done.is_set():
            try:
                message = self.sock.recv(4096).decode()
            except TimeoutError:
                continue
            except OSError:
                return
            if "READY=1" in message.splitlines():
                self.ready.set()

    def close(self) -> None:
        self._done.set()
        self._thread.join()
        self.sock.close()
        shutil.rmtree(self._dir, ignore_errors=True)


class Daemon:
    """``citygw run`` as a real subprocess; ``prefix`` runs it through e.g. ``ip netns exec NS``
    (a command that execs it, so that signals reach the daemon itself). Unless the test gives it
    a ``$NOTIFY_SOCKET`` of its own, the daemon gets one here: :meth:`wait_ready` waits for READY=1."""

    def __init__(self, config: Path, log: Path, *, prefix: Sequence[str] = ()) -> None:
        self.config = config
        self.log = log
        self.prefix = list(prefix)
        self.proc: subprocess.Popen[bytes] | None = None
        self._notify: ReadyListener | None = None

    def start(self) -> None:
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.close_notify()
        if "NOTIFY_SOCKET" not in env:
            self._notify = ReadyListener()
            env["NOTIFY_SOCKET"] = self._notify.path
        self.proc = subprocess.Popen(
            [*self.prefix, sys.executable, "-m", "citygw", "run", "-c", str(self.config)],
            stdout=subprocess.DEVNULL,
            stderr=self.log.open("ab"),
            env=env,
            cwd=REPO,
        )

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Until the daemon notified READY=1 (its buffer open, its uplinks and buses started)."""
        assert self.proc is not None and self._notify is not None, "start() it without a NOTIFY_SOCKET"
        deadline = time.monotonic() + timeout
        while not self._notify.ready.wait(0.05):
            if self.proc.poll() is not None:
                raise AssertionError(f"the daemon exited ({self.proc.returncode}) before READY=1")
            if time.monotonic() > deadline:
                raise AssertionError(f"no READY=1 from the daemon within {timeout} s")

    def close_notify(self) -> None:
        if self._notify is not None:
            self._notify.close()
            self._notify = None

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()
        self.close_notify()

    def terminate(self, timeout: float = 10.0) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout)
        self.close_notify()
        return code

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


def start_load(
    tmp_path: Path,
    key: Path,
    port: int,
    factory: Callable[[Path], Daemon],
    *,
    rate: int,
    count: int,
    device: str = "load-1",
    **extra: Any,
) -> Daemon:
    """The daemon with one synthetic device whose reading i has value i."""
    config = write_config(
        tmp_path / "config.yaml",
        key=key,
        port=port,
        devices={device: {"bus": "gen", "rate": rate, "count": count, "values": "sequence"}},
        **extra,
    )
    daemon = factory(config)
    daemon.start()
    return daemon


@dataclass
class BufferSnapshot:
    """What a buffer file holds, read by plain sqlite3 (e.g. right after a kill -9)."""

    integrity: str
    values: dict[str, set[Any]] = field(default_factory=dict)  # device -> values, staged or sealed
    hashes: dict[int, bytes] = field(default_factory=dict)  # seq -> SHA-256 of its JWS (data batches)
    staged: int = 0  # readings in chunks, not yet sealed
    cursors: dict[str, int] = field(default_factory=dict)
    next_seq: int = 1


def read_buffer(db_path: Path) -> BufferSnapshot:
    """Every reading the buffer file holds (staged or sealed), with integrity_check's verdict."""
    from citygw.buffer.layout import KIND_DATA  # the file's layout is known in one module

    with sqlite3.connect(db_path) as db:
        snap = BufferSnapshot(integrity=str(db.execute("PRAGMA integrity_check").fetchone()[0]))
        meta = dict(db.execute("SELECT key, value FROM meta").fetchall())
        skip = int(meta.get("stage_skip", 0))
        assert skip >= 0
        snap.next_seq = int(meta.get("next_seq", 1))
        for (data,) in db.execute("SELECT data FROM chunks ORDER BY id"):
            records = json.loads(zlib.decompress(data))
            for device, _n, _u, value, _t, _f in records[skip:]:
                snap.values.setdefault(device, set()).add(value)
                snap.staged += 1
            skip = max(0, skip - len(records))
        rows = db.execute("SELECT seq, payload, hash FROM batches WHERE kind = ?", (KIND_DATA,))
        for seq, payload, digest in rows:
            snap.hashes[seq] = bytes(digest)
            body = json.loads(zlib.decompress(payload))
            device = ""
            for record in body["senml"]:
                if "bn" in record:
                    device = record["bn"].split("/")[1]
                snap.values.setdefault(device, set()).add(record["v"])
        snap.cursors = {str(u): int(s) for u, s in db.execute("SELECT uplink, seq FROM cursors")}
    return snap


def committed_values(db_path: Path) -> dict[str, set[int]]:
    """Every reading the buffer file holds (staged or sealed); its integrity check must pass."""
    snap = read_buffer(db_path)
    assert snap.integrity == "ok", snap.integrity
    return snap.values


def health_readings_of_a_box(tmp: Path, *, now: float, buffer: bool = True) -> list[Any]:
    """Every health reading a box emits (gateway.health), from a real Gateway built on a config
    with two uplinks and a thermal zone written like the kernel's (/sys/class/thermal)."""
    from citygw.commands.status import BufferReport, UplinkLag
    from citygw.config import load_config
    from citygw.daemon.gateway import Gateway
    from citygw.ops.health import HealthReport
    from citygw.wire.signing import generate_key

    tmp.mkdir(parents=True, exist_ok=True)
    key = tmp / "health.key"
    generate_key(key)
    zone = tmp / "thermal" / "thermal_zone0"
    zone.mkdir(parents=True)
    (zone / "type").write_text("cpu-thermal\n")
    (zone / "temp").write_text("48312\n")
    config = write_config(
        tmp / "health.yaml",
        key=key,
        port=1883,
        devices={"t1": {"bus": "gen"}, "t2": {"bus": "gen"}},
        health={"interval": "30s"},
    )
    raw = json.loads(config.read_text())
    raw["uplinks"]["platform"] = {"type": "http", "url": "https://platform.example.city/ingest"}
    config.write_text(json.dumps(raw))
    gateway = Gateway(load_config(config), handle_signals=False)
    report = BufferReport(
        str(gateway.buffer.path),
        exists=True,
        undelivered_readings=120,
        undelivered_bytes=48_000,
        oldest_created=now - 42.5,
        file_bytes=1_000_000,
        uplinks=(UplinkLag("local", 3, 2, 120, now - 42.5), UplinkLag("platform", 5, 0, 0, None)),
    )
    return HealthReport(
        gateway, clock_synced=lambda: bool(gateway.ops.clock.synced), thermal=tmp / "thermal"
    ).readings(report if buffer else None, now)
