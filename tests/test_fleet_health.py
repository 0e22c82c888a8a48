"""A fleet's view of its boxes (issue 18 items 1, 2 and 5), with real daemons and a real mosquitto.

Health readings of the reserved device ``gateway`` at ``health.interval`` in the signed stream;
the retained birth message and the last will on the status topic; ``citygw receive``'s ``/fleet``
and ``citygw fleet`` showing two real daemons, the one killed first.
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import json
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest

from citygw import __version__
from citygw.config import load_config
from citygw.demo.broker import LocalBroker
from citygw.errors import ConfigError
from citygw.receiver.endpoint import Receiver
from citygw.wire.keyring import Keyring
from citygw.wire.liveness import Liveness, Status, StatusRefused, read_status
from citygw.wire.signing import Signer, generate_key, public_key_path

from .support import REPO, Collector, Daemon, health_readings_of_a_box, verify_all, write_config
from .test_receive import ReceiveProcess

KEEPALIVE = 5.0  # seconds, the shortest an MQTT uplink allows
# seconds a broker may take beyond 1.5 keepalives to notice a silent client and the watcher to
# hear of it: mosquitto 2.0 checks keepalives on a timer of its own (measured up to 2.4 s late on
# a quiet machine, 3.3 s under the default run's four workers on two cores)
BROKER_CHECK = 5.0
BASE_NAMES = {
    "uptime",
    "healthInterval",
    "undeliveredReadings",
    "undeliveredBytes",
    "oldestUndeliveredAge",
    "bufferFreeBytes",
    "clockSynced",
    "uplinkLag:local",
    "uplinkConnected:local",
    "devices:ok",
    "devices:stale",
    "devices:failing",
    "devices:unknown",
    "failingDevices",
    "configVersion",
    "softwareVersion",
}


def wait_until(condition: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


class StatusWatcher:
    """A subscriber to the status topics that notes when each message arrived."""

    def __init__(self, port: int, topic: str = "city/+/status") -> None:
        self.messages: list[tuple[float, str, bool, bytes]] = []  # arrived (monotonic), topic, retained
        self._lock = threading.Lock()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
        subscribed = threading.Event()
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe(topic, qos=1)
        self.client.on_subscribe = lambda *args: subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port, keepalive=10)
        self.client.loop_start()
        assert subscribed.wait(10), "no SUBACK"

    def _on_message(self, client: Any, userdata: Any, message: Any) -> None:
        with self._lock:
            self.messages.append((time.monotonic(), message.topic, bool(message.retain), message.payload))

    def statuses(self, keyring: Keyring) -> list[tuple[float, bool, Status]]:
        with self._lock:
            held = list(self.messages)
        return [(at, retained, read_status(payload, keyring)) for at, _, retained, payload in held]

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def make_keys(root: Path, *gateways: str) -> tuple[Path, dict[str, Path]]:
    """A keys DIR (DIR/<gateway id>/*.pub) and each gateway's private key."""
    keys = root / "keys"
    private: dict[str, Path] = {}
    for gateway in gateways:
        private[gateway] = root / f"{gateway}.key"
        generate_key(private[gateway])
        (keys / gateway).mkdir(parents=True)
        (keys / gateway / "signing.key.pub").write_bytes(public_key_path(private[gateway]).read_bytes())
    return keys, private


def box_config(tmp: Path, gateway: str, key: Path, port: int, **extra: Any) -> Path:
    folder = tmp / gateway
    folder.mkdir(exist_ok=True)
    return write_config(
        folder / "config.yaml",
        key=key,
        port=port,
        gateway_id=gateway,
        devices={"t1": {"bus": "gen", "rate": 2}},
        buffer={"path": str(folder / "state" / "buffer.db"), "batch": {"max_age": "500ms"}},
        health={"interval": "1s"},
        **extra,
    )


@pytest.fixture
def daemons(tmp_path: Path) -> Iterator[Callable[[Path], Daemon]]:
    made: list[Daemon] = []

    def make(config: Path) -> Daemon:
        daemon = Daemon(config, config.parent / "daemon.log")
        made.append(daemon)
        daemon.start()
        return daemon

    yield make
    for daemon in made:
        if daemon.proc is not None and daemon.proc.poll() is None:
            daemon.proc.send_signal(signal.SIGCONT)  # one the test stopped
            daemon.proc.kill()
            daemon.proc.wait()


# -- config ------------------------------------------------------------------------------------


def test_health_section_and_reserved_device_are_checked_with_file_line_and_key(tmp_path: Path) -> None:
    key = tmp_path / "k.key"
    generate_key(key)
    path = tmp_path / "config.yaml"
    path.write_text(
        f"gateway:\n  id: gw-1\n  key_file: {key}\n"
        "health:\n  interval: 500ms\n  every: 1s\n"
        "buses:\n  gen: {type: synthetic}\n"
        "devices:\n  gateway:\n    bus: gen\n"
    )
    done = subprocess.run(
        [sys.executable, "-m", "citygw", "check", "-c", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=REPO,
    )
    assert done.returncode == 78, done.stderr
    assert f"{path}:5: health.interval: must be between 1s and 1d; got 500ms" in done.stderr
    assert f"{path}:6: health.every: unknown key 'every'; allowed here: enabled, interval" in done.stderr
    path.write_text(path.read_text().replace("  interval: 500ms\n  every: 1s\n", "  interval: 2s\n"))
    with pytest.raises(ConfigError) as raised:
        load_config(path)
    (problem,) = raised.value.problems
    assert (problem.line, problem.key) == (10, "devices.gateway")
    assert "reserved for the box's own health readings" in str(problem)


def test_status_topic_must_differ_from_the_batches_topic(tmp_path: Path, key: Path) -> None:
    path = write_config(tmp_path / "c.yaml", key=key, port=1883, devices={})
    raw = json.loads(path.read_text())
    raw["uplinks"]["local"]["status_topic"] = "city/{gateway}/batches"
    path.write_text(json.dumps(raw))
    with pytest.raises(ConfigError, match="status_topic is the batches topic"):
        load_config(path)


# -- item 1: health in the signed stream --------------------------------------------------------


def test_health_readings_arrive_signed_at_the_interval(
    tmp_path: Path, broker: LocalBroker, daemons: Callable[[Path], Daemon]
) -> None:
    _, private = make_keys(tmp_path, "gw-h")
    collector = Collector(broker.port, "city/gw-h/batches", client_id="health-collector")
    try:
        config = box_config(tmp_path, "gw-h", private["gw-h"], broker.port)
        daemon = daemons(config)

        def reports() -> list[dict[str, Any]]:
            """Per health report (one per uptime reading): name -> value, and its time."""
            verified = verify_all(collector.snapshot(), public_key_path(private["gw-h"]))
            out: dict[float, dict[str, Any]] = {}
            for seq in sorted(verified.by_seq):
                body = json.loads(base64.urlsafe_b64decode(verified.by_seq[seq].split(".")[1] + "=="))
                device, base = "", 0.0
                for record in body["senml"]:
                    device = record.get("bn", f"gw-h/{device}/").split("/")[1]
                    base = record.get("bt", base)
                    if device != "gateway":
                        continue
                    when = round(base + record.get("t", 0), 3)
                    value = record.get("v", record.get("vs", record.get("vb")))
                    out.setdefault(when, {"_time": when})[record["n"]] = (value, record.get("u"))
            return [out[t] for t in sorted(out)]

        found = wait_until(lambda: (r := reports()) and len(r) >= 4 and r, 30, "four health reports")
        assert daemon.alive()
    finally:
        collector.close()
    times = [report["_time"] for report in found]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert all(0.9 <= gap <= 3.0 for gap in gaps), gaps  # health.interval 1s, never faster
    last = found[-1]
    assert set(last) - {"_time", "socTemperature"} == BASE_NAMES
    expected_version = "file-" + hashlib.sha256(config.read_bytes()).hexdigest()[:12]
    assert last["configVersion"] == (expected_version, None)
    assert last["softwareVersion"] == (__version__, None)
    assert last["healthInterval"] == (1, "s")
    assert last["devices:ok"] == (1, "count") and last["failingDevices"] == ("", None)
    assert last["clockSynced"] == (True, None)
    assert last["uplinkConnected:local"] == (True, None)
    assert last["uptime"][1] == "s" and last["uptime"][0] >= found[0]["uptime"][0] + 2.5
    assert last["undeliveredBytes"][1] == "B" and last["bufferFreeBytes"][0] > 0


def test_a_set_config_version_is_reported(
    tmp_path: Path, broker: LocalBroker, daemons: Callable[[Path], Daemon]
) -> None:
    _, private = make_keys(tmp_path, "gw-v")
    config = box_config(tmp_path, "gw-v", private["gw-v"], broker.port)
    raw = json.loads(config.read_text())
    raw["gateway"]["config_version"] = "2026-12-06.3"
    config.write_text(json.dumps(raw))
    watcher = StatusWatcher(broker.port)
    try:
        daemons(config)
        keyring = Keyring(tmp_path / "keys")
        (_, _, status), *_ = wait_until(lambda: watcher.statuses(keyring), 20, "the birth message")
    finally:
        watcher.close()
    assert (status.state, status.reason, status.config_version) == ("online", "connected", "2026-12-06.3")


# -- item 2: liveness on MQTT -------------------------------------------------------------------


def test_birth_is_retained_and_a_killed_daemon_s_last_will_arrives(
    tmp_path: Path, broker: LocalBroker, daemons: Callable[[Path], Daemon]
) -> None:
    """kill -9: the broker publishes the will as the socket closes. SIGSTOP (a box that hangs,
    loses power or its link: nothing closes the connection): within 1.5 keepalives."""
    keys, private = make_keys(tmp_path, "gw-k", "gw-s")
    keyring = Keyring(keys)
    killed = daemons(box_config(tmp_path, "gw-k", private["gw-k"], broker.port))
    stopped = daemons(box_config(tmp_path, "gw-s", private["gw-s"], broker.port))
    first = StatusWatcher(broker.port)
    try:
        wait_until(lambda: len(first.statuses(keyring)) >= 2, 20, "both birth messages")
    finally:
        first.close()
    late = StatusWatcher(broker.port)  # subscribes after the births: gets them retained
    try:
        births = wait_until(
            lambda: (s := late.statuses(keyring)) and len(s) >= 2 and s, 10, "retained births"
        )
        assert {(s.gateway, s.state, retained) for _, retained, s in births} == {
            ("gw-k", "online", True),
            ("gw-s", "online", True),
        }
        assert all(s.version == __version__ for _, _, s in births)
        killed.kill9()
        stopped.proc.send_signal(signal.SIGSTOP)  # type: ignore[union-attr]
        frozen = time.monotonic()

        def will_of(gateway: str) -> tuple[float, Status] | None:
            for at, _, status in late.statuses(keyring):
                if status.gateway == gateway and status.state == "offline":
                    return at, status
            return None

        at, will = wait_until(lambda: will_of("gw-k"), KEEPALIVE * 1.5 + 5, "gw-k's last will")
        assert will.reason == "lost" and at - frozen < KEEPALIVE
        at, will = wait_until(lambda: will_of("gw-s"), KEEPALIVE * 1.5 + BROKER_CHECK + 2, "gw-s's last will")
        # MQTT 3.1.1 §3.1.2.10: the broker gives up after 1.5 keepalives (+ BROKER_CHECK)
        assert will.reason == "lost" and at - frozen <= KEEPALIVE * 1.5 + BROKER_CHECK, at - frozen
    finally:
        late.close()


def test_a_clean_stop_publishes_offline_retained(
    tmp_path: Path, broker: LocalBroker, daemons: Callable[[Path], Daemon]
) -> None:
    keys, private = make_keys(tmp_path, "gw-c")
    keyring = Keyring(keys)
    daemon = daemons(box_config(tmp_path, "gw-c", private["gw-c"], broker.port))
    watcher = StatusWatcher(broker.port)
    try:
        wait_until(lambda: watcher.statuses(keyring), 20, "the birth message")
        assert daemon.terminate() == 0
    finally:
        watcher.close()
    after = StatusWatcher(broker.port)
    try:
        ((_, retained, status),) = wait_until(lambda: after.statuses(keyring), 10, "the retained status")
    finally:
        after.close()
    assert (status.state, status.reason, retained) == ("offline", "stopped", True)


def test_a_status_signed_by_another_gateway_s_key_is_refused(tmp_path: Path) -> None:
    keys, private = make_keys(tmp_path, "gw-a", "gw-b")
    forged = Liveness(Signer.from_file(private["gw-a"]), "gw-b", lambda: "1").message("offline", "lost")
    with pytest.raises(StatusRefused, match="not a key of gateway gw-b"):
        read_status(forged, Keyring(keys))
    genuine = Liveness(Signer.from_file(private["gw-b"]), "gw-b", lambda: "1").message("offline", "lost")
    plain = json.loads(genuine)
    plain["state"] = "online"  # the readable copy says online; only the signed part counts
    assert read_status(json.dumps(plain).encode(), Keyring(keys)).state == "offline"
    receiver = Receiver(tmp_path / "r.db", Keyring(keys))
    try:
        assert not receiver.accept_status(forged) and not receiver.accept_status(b"offline")
        assert receiver.counts.bad_statuses == 2 and "gw-b" not in receiver.fleet.boxes
    finally:
        receiver.close()


# -- item 5: the fleet view ----------------------------------------------------------------------


def test_the_fleet_view_shows_two_real_daemons_the_killed_one_first(
    tmp_path: Path, broker: LocalBroker, daemons: Callable[[Path], Daemon]
) -> None:
    keys, private = make_keys(tmp_path, "gw-a", "gw-b", "gw-never")
    box_a = daemons(box_config(tmp_path, "gw-a", private["gw-a"], broker.port))
    box_b = daemons(box_config(tmp_path, "gw-b", private["gw-b"], broker.port))
    server = ReceiveProcess(tmp_path, keys, "--mqtt", f"mqtt://127.0.0.1:{broker.port}")
    url = f"http://127.0.0.1:{server.port}"
    try:

        def fleet() -> dict[str, Any]:
            with urllib.request.urlopen(f"{url}/fleet", timeout=10) as answer:
                return json.loads(answer.read())  # type: ignore[no-any-return]

        def row(view: dict[str, Any], gateway: str) -> dict[str, Any]:
            return next(r for r in view["gateways"] if r["gateway"] == gateway)

        def both_healthy() -> bool:
            view = fleet()
            return all(
                row(view, g)["severity"] == "ok" and row(view, g)["health"].get("uptime")
                for g in ("gw-a", "gw-b")
            )

        server.wait_for(both_healthy, "both boxes healthy in /fleet", timeout=30)
        view = fleet()
        assert [r["gateway"] for r in view["gateways"]] == ["gw-never", "gw-a", "gw-b"]
        assert row(view, "gw-never")["severity"] == "never_seen"
        a = row(view, "gw-a")
        assert a["liveness"]["state"] == "online" and a["chain"]["last_seq"] >= 1
        assert (
            a["config_version"]
            == "file-" + hashlib.sha256((tmp_path / "gw-a" / "config.yaml").read_bytes()).hexdigest()[:12]
        )
        assert a["failing_devices"] == [] and a["lag"] is not None and a["last_seen_age"] < 10
        box_b.kill9()
        server.wait_for(lambda: fleet()["gateways"][0]["gateway"] == "gw-b", "gw-b shown first", timeout=15)
        b = fleet()["gateways"][0]
        assert b["severity"] == "down" and b["liveness"]["reason"] == "lost"
        assert b["problems"][0] == "offline: its last will arrived (connection lost)"
        assert box_a.alive()
        table = subprocess.run(
            [sys.executable, "-m", "citygw", "fleet", "--url", url],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
            cwd=REPO,
        ).stdout
        rows = [line for line in table.splitlines() if line.startswith("│")]
        assert [line.split("│")[1].strip() for line in rows] == ["gw-b", "gw-never", "gw-a"], table
        assert "down" in rows[0] and "last will arrived" in rows[0]
        assert "ok" in rows[2] and a["config_version"] in rows[2]
        done = subprocess.run(
            [sys.executable, "-m", "citygw", "fleet", "--url", "http://127.0.0.1:1"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
            cwd=REPO,
        )
        assert done.returncode == 1 and "cannot read the fleet from http://127.0.0.1:1" in done.stderr
    finally:
        server.close()
    # the receiver's file keeps what the view needs: started again, it shows gw-b down at once
    again = ReceiveProcess(tmp_path, keys)
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{again.port}/fleet", timeout=10) as answer:
            view = json.loads(answer.read())
        assert view["gateways"][0]["gateway"] == "gw-b" and view["gateways"][0]["severity"] == "down"
        assert row(view, "gw-a")["health"]["configVersion"] == a["config_version"]
    finally:
        again.close()


def test_the_soc_temperature_comes_from_the_cpu_zone_or_is_left_out(tmp_path: Path) -> None:
    """/sys/class/thermal as the kernel lays it out (millidegrees): the CPU's zone wins over a
    board sensor listed first; no zone, or none that reads, leaves the reading out."""
    from citygw.ops.health import soc_temperature

    def zone(index: int, kind: str, temp: str) -> None:
        folder = tmp_path / "thermal" / f"thermal_zone{index}"
        folder.mkdir(parents=True)
        (folder / "type").write_text(f"{kind}\n")
        (folder / "temp").write_text(f"{temp}\n")

    assert soc_temperature(tmp_path / "thermal") is None
    zone(0, "acpitz", "27800")
    assert soc_temperature(tmp_path / "thermal") == 27.8
    zone(1, "x86_pkg_temp", "bad")  # a zone that does not read is skipped
    zone(2, "cpu-thermal", "61234")
    assert soc_temperature(tmp_path / "thermal") == 61.2


def test_a_report_without_the_buffer_figures_leaves_them_out(tmp_path: Path) -> None:
    """The buffer file could not be read: the report goes out with what the box still knows."""
    now = time.time()
    full = {r.name for r in health_readings_of_a_box(tmp_path / "a", now=now)}
    partial = {r.name for r in health_readings_of_a_box(tmp_path / "b", now=now, buffer=False)}
    assert full - partial == {
        "undeliveredReadings",
        "undeliveredBytes",
        "oldestUndeliveredAge",
        "bufferFreeBytes",
        "uplinkLag:local",
        "uplinkLag:platform",
    }
    assert "uplinkConnected:local" in partial and "configVersion" in partial


def test_the_fleet_view_orders_by_what_needs_a_person() -> None:
    """Each severity from the figures a receiver holds (gateway.fleet), worst first, then by id."""
    from citygw.receiver.fleet import Box, assess

    now = 1_800_000_000.0
    health = {"healthInterval": 60.0, "uplinkLag:lte": 1.0, "failingDevices": "", "clockSynced": True}
    chain = {"chain": "c", "last_seq": 9, "missing": [], "broken_links": [], "clones": [], "gaps": []}

    def row(box: Box | None, chain: dict[str, Any] | None = chain) -> tuple[str, list[str]]:
        out = assess("gw", box, chain, now)
        return out["severity"], out["problems"]

    assert row(Box(dict(health), now - 5, now - 5)) == ("ok", [])
    assert row(Box(dict(health), now - 300, now - 300)) == ("down", ["silent for 300 s (health every 60 s)"])
    assert row(Box(dict(health), now - 5, now - 5), {**chain, "clones": [["a", "b"]]})[0] == "chain"
    assert row(Box(dict(health), now - 5, now - 5), {**chain, "missing": [[3, 4]]}) == (
        "lagging",
        ["2 batches missing"],
    )
    assert row(Box({**health, "uplinkLag:lte": 900.0}, now - 5, now - 5)) == ("lagging", ["uplink lag 900 s"])
    assert row(Box({**health, "failingDevices": "m1,m2"}, now - 5, now - 5)) == (
        "degraded",
        ["devices failing or stale: m1, m2"],
    )
    assert row(Box({**health, "uplinkConnected:lte": False}, now - 5, now - 5))[0] == "degraded"
    assert row(None, None) == ("never_seen", ["never heard from (a key is registered)"])
    stopped = Status("gw", "offline", "stopped", now - 50, "0.1.0", "v1")
    assert row(Box(dict(health), now - 5, now - 5, stopped, now - 5))[0] == "stopped"
    will = Status("gw", "offline", "lost", now - 500, "0.1.0", "v1")
    box = Box({**health, "failingDevices": "m1", "configVersion": "v2"}, now - 5, now - 5, will, now - 2)
    down = assess("gw", box, chain, now)
    assert down["severity"] == "down" and down["problems"][0].startswith("offline: its last will")
    assert down["config_version"] == "v2"  # the health report is newer than the will's time
