"""The lean wire format (issue 21): an MQTT uplink of ``format: jws+gzip`` sends each sealed
compact JWS gzip-compressed; stdlib gunzip gives back the very JWS, which jwcrypto verifies and
whose SHA-256 is the chain link; ``citygw receive`` and ``citygw verify`` read it beside today's.

Real daemon, real mosquitto, the receiver as a real subprocess; the messages are decompressed with
the standard library (``gzip``), not with our code.
"""

from __future__ import annotations

import gzip
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest

from citygw.demo.broker import LocalBroker
from citygw.receiver.verify import MAX_TOKEN
from citygw.wire.envelope import Format, TooLarge, serialize, unwrap
from citygw.wire.signing import Signer

from .support import Daemon, payload_of, start_load, verify_all
from .test_receive import Box, ReceiveProcess, add_gateway, make_key, publish

REPO = Path(__file__).resolve().parent.parent


class RawCollector:
    """A QoS 1 subscriber keeping every message's bytes as they came off the wire."""

    def __init__(self, port: int) -> None:
        self.messages: list[bytes] = []
        self._lock = threading.Lock()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="test-raw", clean_session=False)
        subscribed = threading.Event()
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe("city/+/batches", qos=1)
        self.client.on_subscribe = lambda *args: subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port, keepalive=10)
        self.client.loop_start()
        if not subscribed.wait(10):
            raise AssertionError("no SUBACK within 10 s")

    def _on_message(self, client: Any, userdata: Any, message: Any) -> None:
        with self._lock:
            self.messages.append(bytes(message.payload))

    def snapshot(self) -> list[bytes]:
        with self._lock:
            return list(self.messages)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


@pytest.fixture
def raw(broker: LocalBroker) -> Iterator[RawCollector]:
    collector = RawCollector(broker.port)
    yield collector
    collector.close()


def _readings(messages: list[bytes]) -> int:
    return sum(len(payload_of(gzip.decompress(m).decode("ascii").strip()).get("senml", [])) for m in messages)


def _wait(condition: Callable[[], bool], what: str, daemon: Daemon, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        assert daemon.alive(), f"the daemon exited: {daemon.log.read_text()}"
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def test_a_jws_gzip_uplink_sends_the_sealed_jws_compressed_and_receive_and_verify_read_it(
    tmp_path: Path,
    key: Path,
    broker: LocalBroker,
    raw: RawCollector,
    daemon_factory: Callable[[Path], Daemon],
) -> None:
    keys = tmp_path / "keys"
    add_gateway(keys, "gw-test", key)
    receiver = ReceiveProcess(tmp_path, keys, "--mqtt", f"mqtt://127.0.0.1:{broker.port}")
    try:
        receiver.wait_for(lambda: "receiving from" in receiver.log.read_text(), "the MQTT subscription")
        uplink = {"type": "mqtt", "url": f"mqtt://127.0.0.1:{broker.port}", "format": "jws+gzip"}
        daemon = start_load(
            tmp_path,
            key,
            broker.port,
            daemon_factory,
            rate=5_000,
            count=6_000,
            uplinks={"local": uplink},
            buffer={"batch": {"max_readings": 500}},
        )
        _wait(lambda: _readings(raw.snapshot()) >= 6_000, "6,000 readings", daemon)
        assert daemon.terminate() == 0
        messages = raw.snapshot()
        assert all(m[:2] == b"\x1f\x8b" for m in messages), "every message is one gzip member"
        tokens = [gzip.decompress(m).decode("ascii") for m in messages]
        assert all(t.endswith("\n") and t.count("\n") == 1 for t in tokens)
        verified = verify_all([t.strip() for t in tokens], key.with_name(key.name + ".pub"))  # jwcrypto
        assert verified.values["load-1"] == list(range(6_000)), "nothing lost, the chain over the JWS intact"
        assert sum(map(len, messages)) * 5 < sum(map(len, tokens)), "gzip takes most of the bytes off"

        def stored() -> bool:
            report = receiver.report()
            return report is not None and report["totals"]["stored"] == len(verified.by_seq)

        receiver.wait_for(stored, "the receiver to store every batch")
        report = receiver.report()
        assert report is not None
        assert report["totals"]["refused"] == {}, report["totals"]
        assert report["gateways"]["gw-test"]["missing"] == []
    finally:
        receiver.close()

    # the messages as captured, one after another: citygw verify reads them as a gzip file of lines
    capture = tmp_path / "batches.jws.gz"
    capture.write_bytes(b"".join(messages))
    pub = str(key.with_name(key.name + ".pub"))
    done = subprocess.run(
        [sys.executable, "-m", "citygw", "verify", "--key", pub, str(capture)],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert f"{len(verified.by_seq)} batches" in done.stdout, done.stdout
    damaged = bytearray(capture.read_bytes())
    damaged[len(damaged) // 2] ^= 0xFF
    capture.write_bytes(bytes(damaged))
    done = subprocess.run(
        [sys.executable, "-m", "citygw", "verify", "--key", pub, str(capture)],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode != 0 and done.stderr, "a damaged capture is reported, not taken as fewer batches"


def test_the_mqtt_receiver_bounds_what_a_gzip_message_inflates_to_and_goes_on(
    tmp_path: Path, broker: LocalBroker
) -> None:
    keys = tmp_path / "keys"
    k1 = make_key(tmp_path, "gw1")
    add_gateway(keys, "gw1", k1)
    box = Box(Signer.from_file(k1), "gw1")
    first, second = box.take(2)
    bomb = gzip.compress(b"e" * (MAX_TOKEN + 1_000_000), 9)  # ~17 MB of one byte: 17 kB on the wire
    good = serialize(first.encode(), Format.JWS_GZIP)
    two = good + serialize(second.encode(), Format.JWS_GZIP)  # two batches in one message
    receiver = ReceiveProcess(tmp_path, keys, "--mqtt", f"mqtt://127.0.0.1:{broker.port}")
    try:
        receiver.wait_for(lambda: "receiving from" in receiver.log.read_text(), "the MQTT subscription")
        publish(broker.port, "city/gw1/batches", [bomb, good[:-9], two, good, second.encode()])

        def arrived() -> bool:
            report = receiver.report()
            return report is not None and report["totals"]["stored"] == 2

        receiver.wait_for(arrived, "the two genuine batches, one in each format")
        report = receiver.report()
        assert report is not None
        assert report["totals"]["refused"] == {"too_large": 1, "not_jws": 2}, report["totals"]
        assert receiver.peak_rss_mib() < 200, "a bomb is refused before it is inflated whole"
    finally:
        receiver.close()


def test_unwrap_gives_back_the_jws_and_refuses_what_is_not_one_member() -> None:
    jws = b"eyJhbGciOiJFZERTQSJ9.e30.c2ln"
    assert unwrap(jws, limit=100) == jws  # today's format passes as it is
    lean = serialize(jws, Format.JWS_GZIP)
    assert lean == serialize(jws, Format.JWS_GZIP), "deterministic: no time stamp in the gzip header"
    assert gzip.decompress(lean) == jws + b"\n"
    assert unwrap(lean, limit=100) == jws
    with pytest.raises(TooLarge):
        unwrap(lean, limit=10)
    for broken in (lean[:-4], lean + lean, lean[:12] + bytes([lean[12] ^ 0xFF]) + lean[13:]):
        with pytest.raises(Exception, match="gzip"):
            unwrap(broken, limit=100)


def _post(port: int, body: bytes) -> int:
    request = urllib.request.Request(f"http://127.0.0.1:{port}/batches", data=body, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return int(answer.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def test_the_http_receiver_takes_a_jws_gzip_body_and_refuses_a_bomb(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    k1 = make_key(tmp_path, "gw1")
    add_gateway(keys, "gw1", k1)
    box = Box(Signer.from_file(k1), "gw1")
    (first,) = box.take(1)
    receiver = ReceiveProcess(tmp_path, keys)
    try:
        assert _post(receiver.port, gzip.compress(b"e" * (MAX_TOKEN + 1_000_000), 9)) == 413
        assert _post(receiver.port, serialize(first.encode(), Format.JWS_GZIP)) == 200
        report = receiver.report()
        assert report is not None
        assert report["totals"]["stored"] == 1 and report["totals"]["refused"] == {"too_large": 1}
    finally:
        receiver.close()
