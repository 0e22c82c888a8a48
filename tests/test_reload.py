"""SIGHUP reloads the config in the same process: the difference is applied, nothing accepted is
lost or duplicated, an invalid or restart-only change is refused and the old config keeps running.

Real mosquitto, the real daemon as a subprocess, real signals; every batch verified with an
independent JOSE library (jwcrypto) and the whole hash chain walked across the reload.
"""

from __future__ import annotations

import json
import re
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from citygw.demo.broker import LocalBroker

from .support import Collector, Daemon, payload_of, verify_all, write_config


def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def log_lines(daemon: Daemon, event: str) -> list[str]:
    if not daemon.log.exists():
        return []
    return [line for line in daemon.log.read_text().splitlines() if f"event={event} " in line]


def values_by_device(tokens: list[str], key: Path) -> dict[str, list[Any]]:
    verified = verify_all(tokens, key.with_name(key.name + ".pub"))
    assert not verified.gaps, verified.gaps
    return verified.values


def test_sighup_adds_a_device_and_changes_an_uplink_in_the_same_process_losing_nothing(
    tmp_path: Path,
    key: Path,
    broker: LocalBroker,
    collector: Collector,
    daemon_factory: Callable[[Path], Daemon],
) -> None:
    moved = Collector(broker.port, "fleet/+/batches", client_id="test-moved")
    try:
        batch = {"max_age": "300ms"}
        config = write_config(
            tmp_path / "config.yaml",
            key=key,
            port=broker.port,
            devices={"load-1": {"bus": "gen", "rate": 200, "count": 1600, "values": "sequence"}},
            buffer={"batch": batch},
        )
        daemon = daemon_factory(config)
        daemon.start()
        assert daemon.proc is not None
        pid = daemon.proc.pid
        collector.wait(lambda c: c.readings() > 200, 30, "readings before the reload")

        # a device on a new bus, and the uplink's topic changed
        data = json.loads(config.read_text())
        data["buses"]["gen2"] = {"type": "synthetic"}
        data["devices"]["load-2"] = {"bus": "gen2", "rate": 200, "count": 400, "values": "sequence"}
        data["uplinks"]["local"]["topic"] = "fleet/{gateway}/batches"
        config.write_text(json.dumps(data, indent=2))
        daemon.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: bool(log_lines(daemon, "reloaded")), 20, "the reload's log line")
        line = log_lines(daemon, "reloaded")[0]
        assert "buses started: gen2" in line and "uplinks restarted: local" in line, line
        assert "gen," not in line and "buses restarted" not in line, line  # the untouched bus runs on

        def delivered(device: str) -> int:
            tokens = collector.snapshot() + moved.snapshot()
            return len(values_by_device(tokens, key).get(device, []))

        wait_for(lambda: delivered("load-1") == 1600 and delivered("load-2") == 400, 60, "every reading")
        assert daemon.alive() and daemon.proc.pid == pid  # the same process
        assert moved.readings() > 0  # the changed uplink delivers to its new topic
        assert daemon.terminate() == 0

        tokens = collector.snapshot() + moved.snapshot()
        values = values_by_device(tokens, key)  # one chain, no seq missing, every signature good
        assert values["load-1"] == list(range(1600))  # nothing lost, nothing twice, in order
        assert values["load-2"] == list(range(400))
        chains = {payload_of(t)["chain"] for t in tokens}
        assert len(chains) == 1  # same buffer, same chain
    finally:
        moved.close()


def test_invalid_or_restart_only_reload_keeps_the_old_config_running(
    tmp_path: Path,
    key: Path,
    broker: LocalBroker,
    collector: Collector,
    daemon_factory: Callable[[Path], Daemon],
) -> None:
    config = write_config(
        tmp_path / "config.yaml",
        key=key,
        port=broker.port,
        devices={"load-1": {"bus": "gen", "rate": 100, "values": "sequence"}},
        buffer={"batch": {"max_age": "300ms"}},
    )
    good = config.read_text()
    daemon = daemon_factory(config)
    daemon.start()
    assert daemon.proc is not None
    collector.wait(lambda c: c.readings() > 50, 30, "readings")

    # two problems at once: both are logged with line and key
    bad = good.replace('"rate": 100', '"rate": -1')
    config.write_text(bad.replace('"keepalive": "5s"', '"keepalive": "5s", "colour": 1'))
    daemon.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: bool(log_lines(daemon, "reload_refused")), 20, "the refusal")
    problems = log_lines(daemon, "reload_invalid")
    assert len(problems) == 2, problems
    assert any(re.search(r"config\.yaml:\d+: devices\.load-1\.rate: ", p) for p in problems), problems
    unknown = r"config\.yaml:\d+: uplinks\.local\.colour: unknown key"
    assert any(re.search(unknown, p) for p in problems), problems

    # a key only a restart can change: refused by name
    config.write_text(good.replace('"gw-test"', '"gw-other"'))
    daemon.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: len(log_lines(daemon, "reload_refused")) == 2, 20, "the second refusal")
    assert any("gateway.id changed" in p and "restart" in p for p in log_lines(daemon, "reload_invalid"))

    # the old config keeps running: readings go on flowing, in sequence
    before = collector.readings()
    collector.wait(lambda c: c.readings() > before + 100, 30, "readings after the refused reloads")
    assert daemon.alive()
    assert not log_lines(daemon, "reloaded")
    assert daemon.terminate() == 0
    values = values_by_device(collector.snapshot(), key)["load-1"]
    assert values == list(range(len(values)))


# --- the plan: what a change restarts (pure, on real configs loaded from files) -------------------


def _load(tmp_path: Path, key: Path, name: str, **changes: Any) -> Any:
    from citygw.config import load_config

    data: dict[str, Any] = {
        "gateway": {
            "id": "gw-test",
            "key_file": str(key),
            "location": {"latitude": 13.7, "longitude": 100.5},
        },
        "buffer": {"path": str(tmp_path / "state" / "buffer.db")},
        "metrics": {"enabled": False},
        "uplinks": {
            "local": {"type": "mqtt", "url": "mqtt://127.0.0.1:1883"},
            "cdp": {"type": "ngsi-ld", "url": "http://127.0.0.1:1026"},
        },
        "buses": {"gen": {"type": "synthetic"}, "gen2": {"type": "synthetic"}},
        "devices": {"a": {"bus": "gen"}, "b": {"bus": "gen2"}},
    }
    for dotted, value in changes.items():
        node = data
        *parents, last = dotted.split("__")
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
    path = tmp_path / f"{name}.yaml"
    path.write_text(json.dumps(data))
    return load_config(path)


def test_the_plan_restarts_only_what_a_change_touches(tmp_path: Path, key: Path) -> None:
    from citygw.daemon.reload import plan_reload

    old = _load(tmp_path, key, "old")
    same = plan_reload(old, _load(tmp_path, key, "same"))
    assert not same.changes and not same.needs_restart

    # a report rule changes what is sent, not how the device is read: no bus restarts
    report = plan_reload(
        old,
        _load(
            tmp_path, key, "report", devices__b={"bus": "gen2", "report": {"on_change": {"deadband": 0.2}}}
        ),
    )
    assert report.reports_changed and not report.buses_restart
    assert report.uplinks_restart == ["cdp"]  # NGSI-LD entities come from the devices

    rate = plan_reload(old, _load(tmp_path, key, "rate", devices__b={"bus": "gen2", "rate": 5}))
    assert rate.buses_restart == ["gen2"] and not rate.buses_start

    moved = plan_reload(old, _load(tmp_path, key, "topic", uplinks__local__topic="x/{gateway}/batches"))
    assert moved.uplinks_restart == ["local"] and not moved.buses_restart

    restart = plan_reload(old, _load(tmp_path, key, "id", gateway__id="gw-other", buffer__synchronous="full"))
    assert [p.split(" ")[0] for p in restart.needs_restart] == ["gateway.id", "buffer.synchronous"]
