"""Health: the metrics endpoint (scraped and parsed as Prometheus does) and ``citygw status``."""

from __future__ import annotations

import hashlib
import json
import socket
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from citygw.buffer import BatchLimits, Buffer, Gap
from citygw.commands.status import read_buffer
from citygw.config import load_config
from citygw.daemon.gateway import Gateway
from citygw.demo.broker import LocalBroker, free_port
from citygw.ops.metrics import TEST_LISTEN_RETRY_MAX
from citygw.ops.operations import TEST_REPORT_EVERY
from citygw.reading import Record
from citygw.wire.signing import Signer

from .support import Collector, Daemon, citygw, write_config

REPO = Path(__file__).resolve().parent.parent
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def parse(text: str) -> Samples:
    """Every sample, keyed by (name, sorted labels), through prometheus-client's own text parser."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def scrape(port: int) -> Samples:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        assert response.headers["Content-Type"].startswith("text/plain")
        return parse(response.read().decode())


def sample(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


REPORT_EVERY = "0.2"  # CITYGW_TEST_REPORT_EVERY for the daemons whose buffer report a test waits for


def scrape_after_report(port: int, since: float, timeout: float = 30.0) -> Samples:
    """The metrics once the daemon has refreshed its buffer report after ``since`` (wall time)."""
    deadline = time.monotonic() + timeout
    while True:
        samples = scrape(port)
        if samples.get(("citygw_buffer_report_timestamp_seconds", ()), 0.0) > since:
            return samples
        assert time.monotonic() < deadline, f"no buffer report after {since} within {timeout} s"
        time.sleep(0.05)


# --- a buffer with known contents --------------------------------------------------------------


def _known_buffer(path: Path, key: Path) -> dict[str, Any]:
    """Batches, a gap record (max_disk), cursor cdp at seq 20, 7 staged readings; what we know of it."""
    buf = Buffer(
        path,
        gateway="gw-status",
        signer=Signer.from_file(key),
        uplinks=["cdp", "backup"],
        limits=BatchLimits(max_readings=50, max_age=3600),
        max_disk=64 * 1024,
    )
    buf.open()
    gaps: list[Gap] = []
    for start in range(0, 6000, 1000):
        result = buf.commit(
            [
                Record("d1", "vs", f"{i:08x}" * 4, "", 1_790_000_000.0 + i, 0)
                for i in range(start, start + 1000)
            ]
        )
        gaps.extend(result.gaps)
    assert gaps, "the 64 KiB cap must have dropped something"
    held = buf.fetch(0, 100_000)
    buf.ack("cdp", held[3].seq)
    buf.commit([Record("d2", "co2", 400 + i, "ppm", 1_790_010_000.0 + i, 0) for i in range(7)])
    stats = buf.stats()
    cdp_after = [b for b in buf.fetch(held[3].seq, 100_000)]
    buf.close()
    return {
        "last_seq": stats.last_seq,
        "batches": stats.batches,
        "undelivered": stats.undelivered_readings,
        "staged": 7,
        "gap_records": sum(1 for b in held if b.kind == 1),
        "dropped": sum(g.readings for g in gaps),
        "dropped_batches": sum(g.batches for g in gaps),
        "cdp_cursor": held[3].seq,
        "cdp_lag": len(cdp_after),
        "cdp_lag_readings": sum(b.readings for b in cdp_after),
        "backup_lag": len(held),
        "oldest": min(b.created for b in held),
    }


def _status_config(tmp_path: Path, key: Path, buffer: Path, metrics_port: int) -> Path:
    config = write_config(
        tmp_path / "c.yaml",
        key=key,
        port=1883,
        devices={"d1": {"bus": "gen"}},
        gateway_id="gw-status",
        buffer={"path": str(buffer), "max_disk": "64KiB"},
        metrics={"listen": f"127.0.0.1:{metrics_port}"},
    )
    data = json.loads(config.read_text())
    data["uplinks"] = {"cdp": data["uplinks"]["local"], "backup": data["uplinks"]["local"]}
    config.write_text(json.dumps(data))
    return config


def _tree(directory: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(directory.iterdir())}


def test_status_reports_a_known_buffer_read_only_while_the_daemon_is_down(tmp_path: Path, key: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    known = _known_buffer(state / "buffer.db", key)
    config = _status_config(tmp_path, key, state / "buffer.db", free_port())
    before = _tree(state)

    done = citygw("status", "-c", str(config), "--json")
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    assert _tree(state) == before, "status neither creates nor writes anything next to the buffer"

    assert data["gateway"] == "gw-status"
    assert data["daemon"]["running"] is False
    buffer = data["buffer"]
    assert buffer["exists"] and buffer["written_by"] == "gw-status"
    assert buffer["last_seq"] == known["last_seq"]
    assert buffer["batches"] == known["batches"]
    assert buffer["undelivered_readings"] == known["undelivered"]
    assert buffer["staged_readings"] == 7
    assert buffer["gaps"] == {
        "records": known["gap_records"],
        "batches": known["dropped_batches"],
        "readings": known["dropped"],
        "reasons": {"max_disk": known["dropped"]},
    }
    assert buffer["max_bytes"] == 64 * 1024
    age = time.time() - known["oldest"]
    assert abs(buffer["oldest_undelivered_age_seconds"] - age) < 10
    uplinks = {u["name"]: u for u in data["uplinks"]}
    assert uplinks["cdp"]["acked_seq"] == known["cdp_cursor"]
    assert uplinks["cdp"]["lag_batches"] == known["cdp_lag"]
    assert uplinks["cdp"]["lag_readings"] == known["cdp_lag_readings"]
    assert uplinks["backup"]["lag_batches"] == known["backup_lag"]
    assert uplinks["cdp"]["state"] is None, "no daemon: no live state"
    assert data["devices"] == [
        {
            "name": "d1",
            "bus": "gen",
            "state": None,
            "readings": None,
            "errors": {},
            "last_seen_age_seconds": None,
        }
    ]

    done = citygw("status", "-c", str(config))
    assert done.returncode == 0, done.stderr
    text = done.stdout
    assert _tree(state) == before
    assert "citygw gw-status" in text and "not running" in text
    assert f"│ last seq    │ {known['last_seq']} " in text
    assert f"{known['batches']} batches, {known['undelivered']} readings" in text
    assert (
        f"{known['dropped']} readings in {known['dropped_batches']} batches (max_disk: {known['dropped']})"
        in text
    )
    cdp_row = next(line for line in text.splitlines() if line.startswith("│ cdp "))
    cells = [c.strip() for c in cdp_row.strip("│").split("│")]
    assert cells[:6] == [
        "cdp",
        "mqtt",
        "-",
        str(known["cdp_cursor"]),
        str(known["cdp_lag"]),
        str(known["cdp_lag_readings"]),
    ]


def test_status_of_a_box_without_a_buffer_yet(tmp_path: Path, key: Path) -> None:
    config = _status_config(tmp_path, key, tmp_path / "none" / "buffer.db", free_port())
    done = citygw("status", "-c", str(config), "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["buffer"]["exists"] is False
    assert not (tmp_path / "none").exists()


def test_the_running_daemon_is_scraped_parsed_and_shown_by_status(
    tmp_path: Path,
    key: Path,
    broker: LocalBroker,
    collector: Collector,
    daemon_factory: Callable[[Path], Daemon],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(TEST_REPORT_EVERY, REPORT_EVERY)
    port = free_port()
    config = write_config(
        tmp_path / "c.yaml",
        key=key,
        port=broker.port,
        devices={"d1": {"bus": "gen", "rate": 200}, "d2": {"bus": "gen", "rate": 50}},
        buffer={"batch": {"max_age": "500ms"}},
        metrics={"listen": f"127.0.0.1:{port}"},
    )
    daemon = daemon_factory(config)
    daemon.start()
    collector.wait(lambda c: c.readings() > 300, 30, "readings")
    samples = scrape_after_report(port, time.time())  # one buffer report refresh after the readings
    data = json.loads(citygw("status", "-c", str(config), "--json").stdout)
    table = citygw("status", "-c", str(config)).stdout
    assert daemon.terminate() == 0

    assert sample(samples, "citygw_info", gateway="gw-test", version="0.1.0") == 1
    assert sample(samples, "citygw_device_readings_total", device="d1") > 200
    assert sample(samples, "citygw_device_state", device="d1", state="ok") == 1
    assert sample(samples, "citygw_device_state", device="d2", state="failing") == 0
    scraped = time.time()
    assert scraped - 5 < sample(samples, "citygw_device_last_seen_timestamp_seconds", device="d2") <= scraped
    assert sample(samples, "citygw_readings_accepted_total") > 300
    assert sample(samples, "citygw_uplink_state", uplink="local", state="connected") == 1
    assert sample(samples, "citygw_uplink_acked_seq", uplink="local") > 0
    oldest = ("citygw_uplink_oldest_undelivered_timestamp_seconds", (("uplink", "local"),))
    assert samples.get(oldest, scraped) > scraped - 5  # absent when the uplink has every batch
    assert sample(samples, "citygw_buffer_last_seq") > 0
    assert sample(samples, "citygw_buffer_report_timestamp_seconds") > scraped - 6
    assert sample(samples, "citygw_retention_dropped_readings_total") == 0
    assert sample(samples, "citygw_clock_synchronized") == 1
    assert sample(samples, "citygw_alive") == 1
    assert sample(samples, "process_resident_memory_bytes") > 10e6

    assert data["daemon"]["running"] is True and data["daemon"]["clock_synchronized"] is True
    assert {d["name"]: d["state"] for d in data["devices"]} == {"d1": "ok", "d2": "ok"}
    assert data["uplinks"][0]["state"] == "connected"
    assert "│ daemon   │ running" in table
    assert "│ local  │ mqtt │ connected" in table


def test_metrics_in_the_text_format_with_errors_gaps_and_the_clock(tmp_path: Path, key: Path) -> None:
    """The collector over a gateway that is not running: every family parses, values are the live ones."""
    state = tmp_path / "state"
    state.mkdir()
    known = _known_buffer(state / "buffer.db", key)
    config = load_config(_status_config(tmp_path, key, state / "buffer.db", free_port()))
    gateway = Gateway(config)
    health = gateway._buses()  # builds the health of every configured device
    assert health
    gateway.health["d1"].seen(12)
    gateway.health["d1"].error("crc")
    gateway.health["d1"].error("crc")
    gateway.health["d1"].error("decode", "bad length")
    gateway.health["d1"].failing()
    gateway.pipeline.counters.dropped = known["dropped"]
    gateway.ops.report = read_buffer(state / "buffer.db", list(config.uplinks))
    gateway.ops.clock.synced = False
    registry = CollectorRegistry(auto_describe=False)
    registry.register(gateway.ops.collector())
    gateway.buffer.open()
    try:
        samples = parse(generate_latest(registry).decode())
    finally:
        gateway.buffer.close()

    assert sample(samples, "citygw_device_errors_total", device="d1", reason="crc") == 2
    assert sample(samples, "citygw_device_errors_total", device="d1", reason="decode") == 1
    assert sample(samples, "citygw_device_readings_total", device="d1") == 12
    assert sample(samples, "citygw_device_state", device="d1", state="failing") == 1
    assert sample(samples, "citygw_device_state", device="d1", state="ok") == 0
    assert sample(samples, "citygw_retention_dropped_readings_total") == known["dropped"]
    assert sample(samples, "citygw_buffer_gap_records") == known["gap_records"]
    assert sample(samples, "citygw_buffer_batches") == known["batches"]
    assert sample(samples, "citygw_buffer_last_seq") == known["last_seq"]
    assert sample(samples, "citygw_buffer_staged_readings") == 7
    assert sample(samples, "citygw_uplink_lag_batches", uplink="cdp") == known["cdp_lag"]
    assert sample(samples, "citygw_uplink_lag_batches", uplink="backup") == known["backup_lag"]
    oldest = sample(samples, "citygw_uplink_oldest_undelivered_timestamp_seconds", uplink="backup")
    assert oldest == pytest.approx(known["oldest"])
    assert sample(samples, "citygw_uplink_state", uplink="cdp", state="connecting") == 1
    assert sample(samples, "citygw_clock_synchronized") == 0
    labels = {dict(k[1]).get(label) for k in samples for label in ("device", "uplink", "reason", "state")}
    assert labels <= {None, "d1", "cdp", "backup", "crc", "decode", *_states()}, labels


def _states() -> set[str]:
    from citygw.drivers.health import DeviceState
    from citygw.uplinks.base import UplinkState

    return {s.value for s in DeviceState} | {s.value for s in UplinkState}


def test_metrics_refuse_a_remote_listen_address_unless_allowed(tmp_path: Path, key: Path) -> None:
    config = write_config(
        tmp_path / "c.yaml", key=key, port=1883, devices={}, metrics={"listen": "0.0.0.0:9108"}
    )
    done = citygw("check", "-c", str(config))
    assert done.returncode == 78
    assert "metrics.listen: '0.0.0.0:9108' is not a loopback address" in done.stderr
    assert "allow_remote: true" in done.stderr
    data = json.loads(config.read_text())
    data["metrics"]["allow_remote"] = True
    config.write_text(json.dumps(data))
    assert citygw("check", "-c", str(config)).returncode == 0


def _wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.1)


def _answers(port: int) -> bool:
    try:
        return ("citygw_info", (("gateway", "gw-test"), ("version", "0.1.0"))) in scrape(port)
    except OSError:
        return False


def test_a_taken_metrics_port_costs_the_metrics_only_while_it_is_taken(
    tmp_path: Path,
    key: Path,
    broker: LocalBroker,
    collector: Collector,
    daemon_factory: Callable[[Path], Daemon],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The port is taken at start: the data flows, status finds the daemon by its lock, and once
    the port is free the metrics come back by themselves; each is logged once."""
    monkeypatch.setenv(TEST_LISTEN_RETRY_MAX, "2")  # the next attempt soon after the port is free
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    log = tmp_path / "daemon.log"
    try:
        config = write_config(
            tmp_path / "c.yaml",
            key=key,
            port=broker.port,
            devices={"d1": {"bus": "gen", "rate": 100}},
            metrics={"listen": f"127.0.0.1:{port}"},
        )
        daemon = daemon_factory(config)
        daemon.start()
        assert daemon.proc is not None
        collector.wait(lambda c: c.readings() > 0, 30, "readings")
        _wait_for(lambda: "event=metrics_unavailable" in log.read_text(), 30, "the port's warning")
        data = json.loads(citygw("status", "-c", str(config), "--json").stdout)
        assert data["daemon"]["running"] is True and data["daemon"]["pid"] == daemon.proc.pid
        assert "its metrics at" in data["daemon"]["note"] and "do not answer" in data["daemon"]["note"]
        table = citygw("status", "-c", str(config)).stdout
        assert f"running (PID {daemon.proc.pid})" in table
    finally:
        taken.close()
    _wait_for(lambda: _answers(port), 60, "the metrics once the port is free")
    data = json.loads(citygw("status", "-c", str(config), "--json").stdout)
    assert data["daemon"]["running"] is True and "note" not in data["daemon"]
    assert data["daemon"]["accepted_readings"] > 0
    assert daemon.terminate() == 0
    text = log.read_text()
    assert text.count("event=metrics_unavailable") == 1, "a taken port is logged once, not per attempt"
    assert f"cannot listen on 127.0.0.1:{port}" in text and "level=warning" in text
    listening = [line for line in text.splitlines() if "event=metrics_listening" in line]
    assert len(listening) == 1 and "failed attempts)" in listening[0]


@pytest.mark.parametrize("listen", ["127.0.0.1:9108", "[::1]:9108", "localhost:1"])
def test_loopback_listen_addresses_are_accepted(tmp_path: Path, key: Path, listen: str) -> None:
    config = write_config(tmp_path / "c.yaml", key=key, port=1883, devices={}, metrics={"listen": listen})
    assert load_config(config).metrics.listen == listen
