"""Signed remote configuration: applied, refused (wrong key, other gateway, not a higher version),
rolled back by the box when the new config breaks its uplink, and recovered after a kill -9 in the
middle. Real mosquitto (the retained config topic), real daemons, `citygw config sign` as a
subprocess; the outcomes are read back from the signed stream itself.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import paho.mqtt.client as mqtt

from citygw.demo.broker import LocalBroker, free_port
from citygw.wire.signing import generate_key

from .support import REPO, Collector, Daemon, payload_of, verify_all, write_config
from .test_reload import log_lines, wait_for

TOPIC = "city/gw-test/config"
SIGN = [sys.executable, "-m", "citygw", "config", "sign"]


def sign(op_key: Path, config: dict[str, Any], *, version: int, gateway: str = "gw-test", tmp: Path) -> str:
    source = tmp / f"push-{version}-{time.monotonic_ns()}.yaml"
    source.write_text(json.dumps(config, indent=2))
    done = subprocess.run(
        [*SIGN, "--key", str(op_key), "--gateway", gateway, "--version", str(version), str(source)],
        capture_output=True,
        text=True,
        cwd=REPO,
        check=True,
    )
    return done.stdout.strip()


def push(port: int, document: str) -> None:
    """Publish ``document`` retained on the box's config topic, as a platform would."""
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"platform-{time.monotonic_ns()}")
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        client.publish(TOPIC, document, qos=1, retain=True).wait_for_publish(10)
    finally:
        client.loop_stop()
        client.disconnect()


def outcomes(tokens: list[str], key: Path) -> list[tuple[str, Any]]:
    """The readings of the reserved device ``gateway`` about config, from verified batches."""
    verify_all(tokens, key.with_name(key.name + ".pub"))  # every signature and the chain
    found: list[tuple[str, Any]] = []
    for token in tokens:
        body = payload_of(token)
        device = ""
        for record in body.get("senml", []):
            if "bn" in record:
                device = record["bn"].split("/")[1]
            if device == "gateway" and record["n"].startswith("config/"):
                found.append((record["n"], record.get("v", record.get("vs"))))
    return list(dict.fromkeys(found))


def loaded(pid: int, package: str) -> bool:
    """Whether the process ``pid`` has mapped one of ``package``'s compiled modules."""
    maps = Path(f"/proc/{pid}/maps").read_text()
    return f"/{package}/" in maps


def box(tmp_path: Path, key: Path, port: int, *, grace: str = "1s") -> tuple[Path, dict[str, Any], Path]:
    """A box's config (in ``tmp_path/etc``) that takes documents signed by its operator key."""
    (tmp_path / "etc").mkdir(exist_ok=True)
    op_key = tmp_path / "operator.key"
    generate_key(op_key)
    config = write_config(
        tmp_path / "etc" / "config.yaml",
        key=key,
        port=port,
        devices={"load-1": {"bus": "gen", "rate": 50, "values": "sequence"}},
        buffer={"batch": {"max_age": "300ms"}, "path": str(tmp_path / "state" / "buffer.db")},
        remote={"grace": grace},
    )
    data = json.loads(config.read_text())
    data["gateway"]["operator_keys"] = [str(op_key.with_name("operator.key.pub"))]
    config.write_text(json.dumps(data, indent=2))
    return config, data, op_key


class RunningBox(NamedTuple):
    config: Path
    data: dict[str, Any]
    op_key: Path
    original: str  # the config file as the box started on it
    daemon: Daemon


def running_box(
    tmp_path: Path,
    key: Path,
    broker: LocalBroker,
    collector: Collector,
    daemon_factory: Callable[[Path], Daemon],
    *,
    grace: str = "1s",
) -> RunningBox:
    """:func:`box`, its daemon started and its readings arriving at the broker."""
    config, data, op_key = box(tmp_path, key, broker.port, grace=grace)
    original = config.read_text()
    daemon = daemon_factory(config)
    daemon.start()
    collector.wait(lambda c: c.readings() > 20, 30, "readings")
    return RunningBox(config, data, op_key, original, daemon)


def test_signed_config_applies_and_bad_documents_are_refused(
    tmp_path: Path,
    key: Path,
    broker: LocalBroker,
    collector: Collector,
    daemon_factory: Callable[[Path], Daemon],
) -> None:
    config, data, op_key, original, daemon = running_box(tmp_path, key, broker, collector, daemon_factory)
    # remote config by MQTT only: the config_url poller (every task runs by now) has not loaded
    # aiohttp's client, ~8 MiB of resident memory on every box without a config_url
    assert daemon.proc is not None
    assert not loaded(daemon.proc.pid, "aiohttp"), "aiohttp loaded without a config_url"

    new = json.loads(json.dumps(data))
    new["buses"]["gen2"] = {"type": "synthetic"}
    new["devices"]["load-2"] = {"bus": "gen2", "rate": 50, "count": 100, "values": "sequence"}
    push(broker.port, sign(op_key, new, version=3, tmp=tmp_path))
    wait_for(lambda: bool(log_lines(daemon, "config_applied")), 30, "the config applied")
    assert json.loads(config.read_text()) == new
    assert config.with_name("config.yaml.previous").read_text() == original
    assert json.loads((tmp_path / "state" / "remote-config.json").read_text())["version"] == 3
    assert not (tmp_path / "state" / "remote-config.pending").exists()

    stranger = tmp_path / "stranger.key"
    generate_key(stranger)
    refused = [
        sign(stranger, new | {"log": {"level": "debug"}}, version=4, tmp=tmp_path),  # not an operator key
        sign(op_key, new | {"log": {"level": "debug"}}, version=5, gateway="gw-elsewhere", tmp=tmp_path),
        sign(op_key, data, version=3, tmp=tmp_path),  # a replay of the version in effect, other content
        sign(op_key, data, version=2, tmp=tmp_path),  # a downgrade
    ]
    for count, document in enumerate(refused, 1):
        push(broker.port, document)
        wait_for(lambda: len(log_lines(daemon, "config_refused")) == count, 20, f"refusal {count}")  # noqa: B023
    reasons = log_lines(daemon, "config_refused")
    assert "not one of gateway.operator_keys" in reasons[0]
    assert "is for gw-elsewhere, not gw-test" in reasons[1]
    assert "version 3 is not higher than 3" in reasons[2]
    assert "version 2 is not higher than 3" in reasons[3]
    assert json.loads(config.read_text()) == new  # nothing refused touched the config

    def recorded() -> list[tuple[str, Any]]:
        return outcomes(collector.snapshot(), key)

    wait_for(lambda: len(recorded()) >= 9, 20, "every outcome in the stream")
    names = [name for name, _ in recorded()]
    assert ("config/applied", 3) in recorded()
    assert names.count("config/refused") == 4 and names.count("config/refusedReason") == 4
    collector.wait(lambda c: len(values_of(c, key, "load-2")) == 100, 30, "the new device's readings")
    assert daemon.terminate() == 0
    values = verify_all(collector.snapshot(), key.with_name(key.name + ".pub")).values
    assert values["load-1"] == list(range(len(values["load-1"])))  # the untouched bus ran on


def values_of(collector: Collector, key: Path, device: str) -> list[Any]:
    return verify_all(collector.snapshot(), key.with_name(key.name + ".pub")).values.get(device, [])


def test_a_config_that_breaks_the_uplink_is_rolled_back_within_the_grace_period(
    tmp_path: Path,
    key: Path,
    broker: LocalBroker,
    collector: Collector,
    daemon_factory: Callable[[Path], Daemon],
) -> None:
    config, data, op_key, original, daemon = running_box(
        tmp_path, key, broker, collector, daemon_factory, grace="2s"
    )

    broken = json.loads(json.dumps(data))
    broken["uplinks"]["local"]["url"] = f"mqtt://127.0.0.1:{free_port()}"  # nobody listens there
    push(broker.port, sign(op_key, broken, version=1, tmp=tmp_path))
    wait_for(lambda: bool(log_lines(daemon, "config_trying")), 20, "the config tried")
    tried = time.monotonic()
    wait_for(lambda: bool(log_lines(daemon, "config_rolled_back")), 20, "the rollback")
    assert time.monotonic() - tried < 2 + 8  # the grace, and the load of a busy CI machine
    assert "uplink local not connected within the grace period" in log_lines(daemon, "config_rolled_back")[0]
    assert config.read_text() == original

    wait_for(lambda: ("config/rolledBack", 1) in outcomes(collector.snapshot(), key), 30, "the record")
    before = collector.readings()
    collector.wait(lambda c: c.readings() > before + 20, 30, "readings after the rollback")
    assert not log_lines(daemon, "config_applied")  # the retained document, seen again, stays refused
    assert daemon.terminate() == 0
    values = values_of(collector, key, "load-1")
    assert values == list(range(len(values)))  # nothing lost over the trial and the rollback


def test_a_kill_9_during_a_pending_config_ends_in_the_previous_config(
    tmp_path: Path,
    key: Path,
    broker: LocalBroker,
    collector: Collector,
    daemon_factory: Callable[[Path], Daemon],
) -> None:
    config, data, op_key, original, daemon = running_box(
        tmp_path, key, broker, collector, daemon_factory, grace="1m"
    )

    new = json.loads(json.dumps(data))
    new["log"] = {"level": "debug"}
    push(broker.port, sign(op_key, new, version=7, tmp=tmp_path))
    wait_for(lambda: bool(log_lines(daemon, "config_trying")), 20, "the config tried")
    assert (tmp_path / "state" / "remote-config.pending").exists()
    assert json.loads(config.read_text()) == new
    daemon.kill9()

    again = daemon_factory(config)
    again.start()
    wait_for(lambda: bool(log_lines(again, "config_recovered")), 20, "the recovery at start")
    assert config.read_text() == original  # the previous config, never none
    assert not (tmp_path / "state" / "remote-config.pending").exists()
    wait_for(lambda: ("config/rolledBack", 7) in outcomes(collector.snapshot(), key), 30, "the record")
    reason = dict(outcomes(collector.snapshot(), key))["config/rolledBackReason"]
    assert "stopped before the new config was confirmed" in reason
    assert again.terminate() == 0


def test_an_http_only_box_polls_config_url_with_a_conditional_get(
    tmp_path: Path, key: Path, daemon_factory: Callable[[Path], Daemon]
) -> None:
    from aiohttp import web

    from .test_uplinks_http import ScriptedServer

    (tmp_path / "etc").mkdir()
    op_key = tmp_path / "operator.key"
    generate_key(op_key)
    served: dict[str, str] = {}

    async def platform(request: web.Request, body: bytes) -> web.StreamResponse:
        if request.method == "POST":
            return web.Response(status=200)
        if "document" not in served:
            return web.Response(status=404)
        if request.headers.get("If-None-Match") == served["etag"]:
            return web.Response(status=304, headers={"ETag": served["etag"]})
        return web.Response(text=served["document"], headers={"ETag": served["etag"]})

    server = ScriptedServer(platform)
    try:
        url = f"http://127.0.0.1:{server.port}"
        config = write_config(
            tmp_path / "etc" / "config.yaml",
            key=key,
            port=free_port(),
            devices={"load-1": {"bus": "gen", "rate": 50, "values": "sequence"}},
            buffer={"batch": {"max_age": "300ms"}, "path": str(tmp_path / "state" / "buffer.db")},
            remote={"grace": "1s", "config_url": url + "/config/{gateway}", "poll_interval": "1s"},
        )
        data = json.loads(config.read_text())
        data["uplinks"] = {"platform": {"type": "http", "url": url + "/batches", "backoff_initial": "200ms"}}
        data["gateway"]["operator_keys"] = [str(op_key) + ".pub"]
        config.write_text(json.dumps(data, indent=2))
        daemon = daemon_factory(config)
        daemon.start()
        daemon.wait_ready()
        assert daemon.proc is not None and loaded(daemon.proc.pid, "aiohttp")  # the check sees it loaded

        new = json.loads(json.dumps(data))
        new["buffer"]["batch"]["max_age"] = "400ms"
        served.update(document=sign(op_key, new, version=1, tmp=tmp_path), etag='"v1"')
        wait_for(lambda: bool(log_lines(daemon, "config_applied")), 30, "the polled config applied")
        assert json.loads(config.read_text()) == new

        asked = lambda: any(h.get("If-None-Match") == '"v1"' for _, h, _ in server.requests)  # noqa: E731
        wait_for(asked, 10, "a conditional GET (If-None-Match)")

        def posted() -> list[str]:
            return [b.decode() for _, h, b in server.requests if b.startswith(b"eyJ")]

        wait_for(lambda: ("config/applied", 1) in outcomes(posted(), key), 20, "the record")
        assert daemon.terminate() == 0
    finally:
        server.close()


def test_a_document_cannot_touch_keys_paths_outside_or_carry_secrets(tmp_path: Path, key: Path) -> None:
    """What :func:`citygw.daemon.remote.screen` refuses, on real configs loaded from real files."""
    from citygw.config import load_config
    from citygw.daemon.remote import screen

    etc = tmp_path / "etc"
    etc.mkdir()
    config, data, _ = box(tmp_path, key, 1883)
    current = load_config(config)
    other_key = tmp_path / "other.key"
    generate_key(other_key)
    outside = tmp_path / "elsewhere" / "ca.pem"
    outside.parent.mkdir()
    outside.write_text("x")
    inside = etc / "ca.pem"
    inside.write_text("x")
    secret = etc / "password"
    secret.write_text("s3cret\n")

    def verdict(change: Callable[[dict[str, Any]], None]) -> str | None:
        new = json.loads(json.dumps(data))
        change(new)
        path = etc / "incoming.yaml"
        path.write_text(json.dumps(new))
        return screen(current, load_config(path), path.read_text())

    def tls(ca: Path) -> Callable[[dict[str, Any]], None]:
        def change(d: dict[str, Any]) -> None:
            d["uplinks"]["local"].update(url="mqtts://127.0.0.1:8883", ca_file=str(ca))

        return change

    assert verdict(lambda d: None) is None
    assert "gateway.key_file" in str(verdict(lambda d: d["gateway"].update(key_file=str(other_key))))
    assert "gateway.operator_keys" in str(verdict(lambda d: d["gateway"].update(operator_keys=[])))
    assert "gateway.id" in str(verdict(lambda d: d["gateway"].update(id="gw-other")))
    assert "outside the box's config and state directories" in str(verdict(tls(outside)))
    assert verdict(tls(inside)) is None
    inline = verdict(lambda d: d["uplinks"]["local"].update(username="u", password="p"))
    assert "secret inline (uplinks.local.password)" in str(inline)
    assert verdict(lambda d: d["uplinks"]["local"].update(username="u", password_file=str(secret))) is None
    assert "only a restart" in str(verdict(lambda d: d.update(metrics={"enabled": True})))


def test_a_config_whose_new_bus_cannot_start_is_rolled_back(
    tmp_path: Path,
    key: Path,
    broker: LocalBroker,
    collector: Collector,
    daemon_factory: Callable[[Path], Daemon],
) -> None:
    config, data, op_key, original, daemon = running_box(
        tmp_path, key, broker, collector, daemon_factory, grace="3s"
    )

    broken = json.loads(json.dumps(data))  # a meter on a Modbus TCP gateway that is not there
    broken["buses"]["cabinet"] = {
        "type": "modbus-tcp",
        "host": "127.0.0.1",
        "port": free_port(),
        "timeout": "200ms",
    }
    broken["devices"]["meter-1"] = {
        "bus": "cabinet",
        "unit": 1,
        "profile": "eastron-sdm120",
        "interval": "200ms",
    }
    push(broker.port, sign(op_key, broken, version=1, tmp=tmp_path))
    wait_for(lambda: bool(log_lines(daemon, "config_rolled_back")), 30, "the rollback")
    assert "bus cabinet cannot start" in log_lines(daemon, "config_rolled_back")[0]
    assert config.read_text() == original
    wait_for(lambda: ("config/rolledBack", 1) in outcomes(collector.snapshot(), key), 30, "the record")
    assert daemon.terminate() == 0
