"""The metrics endpoint of a real daemon, scraped as Prometheus does: the conventions it follows.

A Modbus meter on a real pymodbus server (and a unit that never answers), a real mosquitto, a
real HTTP server that answers 503, and an MQTT uplink to a port where nothing listens: moments
are ``*_timestamp_seconds``, every known error reason is there from 0, uplink failures are
counted by reason or HTTP status, and the MQTT PUBACK round trip and the Modbus transaction time
are histograms.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from aiohttp import web

from citygw.demo.broker import LocalBroker, free_port
from citygw.drivers.modbus.server import ModbusSimulator
from citygw.errors import Reason
from citygw.ops.figures import error_reasons
from citygw.ops.operations import TEST_REPORT_EVERY

from .support import Collector, Daemon, write_config
from .test_modbus_cli import units
from .test_ops_status import REPORT_EVERY, Samples, sample, scrape, scrape_after_report
from .test_uplinks_http import ScriptedServer


async def _busy(request: web.Request, body: bytes) -> web.StreamResponse:
    return web.Response(status=503, text="maintenance")


def _ready(samples: Samples) -> bool:
    """Everything the test asserts has happened at least as often as it asserts."""
    at_least = {
        ("citygw_mqtt_puback_seconds_count", (("uplink", "local"),)): 1,
        ("citygw_modbus_transaction_seconds_count", (("device", "meter-1"),)): 2,
        ("citygw_uplink_failures_total", (("reason", "http_503"), ("uplink", "platform"))): 1,
        ("citygw_uplink_failures_total", (("reason", "refused"), ("uplink", "down"))): 1,
        ("citygw_device_errors_total", (("device", "dead"), ("reason", "timeout"))): 1,
    }
    return all(samples.get(key, 0.0) >= least for key, least in at_least.items())


async def test_metrics_follow_the_prometheus_conventions(
    tmp_path: Path,
    key: Path,
    broker: LocalBroker,
    collector: Collector,
    daemon_factory: Callable[[Path], Daemon],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(TEST_REPORT_EVERY, REPORT_EVERY)
    platform = ScriptedServer(_busy)
    port = free_port()
    try:
        async with ModbusSimulator(units()) as server:
            config = write_config(
                tmp_path / "c.yaml",
                key=key,
                port=broker.port,
                devices={
                    "meter-1": {"bus": "plc", "unit": 1, "profile": "eastron-sdm630", "interval": "200ms"},
                    "dead": {"bus": "plc", "unit": 9, "profile": "xy-md02", "interval": "200ms"},
                },
                buses={"plc": {"type": "modbus-tcp", "host": "127.0.0.1", "port": server.port}},
                buffer={"batch": {"max_age": "300ms"}},
                uplinks={
                    "local": {"type": "mqtt", "url": f"mqtt://127.0.0.1:{broker.port}", "keepalive": "5s"},
                    "platform": {
                        "type": "http",
                        "url": f"http://127.0.0.1:{platform.port}/batches",
                        "backoff_initial": "100ms",
                        "backoff_max": "500ms",
                    },
                    "down": {
                        "type": "mqtt",
                        "url": f"mqtt://127.0.0.1:{free_port()}",
                        "backoff_initial": "100ms",
                        "backoff_max": "500ms",
                    },
                },
                metrics={"listen": f"127.0.0.1:{port}"},
            )  # fmt: skip
            daemon = daemon_factory(config)
            daemon.start()
            deadline = time.monotonic() + 60
            samples: Samples = {}
            while not _ready(samples):  # the server shares this loop: wait without blocking it
                assert time.monotonic() < deadline, sorted({name for name, _ in samples})
                await asyncio.sleep(0.2)
                samples = await asyncio.to_thread(_try_scrape, port)
            # one buffer report refresh after that, for the buffer's moments
            samples = await asyncio.to_thread(scrape_after_report, port, time.time())
            scraped = time.time()
            assert daemon.terminate() == 0
    finally:
        platform.close()

    names = {name for name, _ in samples}
    assert not [n for n in names if n.endswith("_age_seconds")], "moments are timestamps, not ages"

    # every reason a Modbus device is counted under is there, at 0 until it happens
    for reason in ("timeout", "crc", "connection", "framing", "gateway", "exception", "decode"):
        assert sample(samples, "citygw_device_errors_total", device="meter-1", reason=reason) == 0
    assert sample(samples, "citygw_device_errors_total", device="dead", reason="timeout") > 0
    assert sample(samples, "citygw_device_errors_total", device="dead", reason="crc") == 0

    seen = sample(samples, "citygw_device_last_seen_timestamp_seconds", device="meter-1")
    assert scraped - 5 < seen <= scraped
    assert ("citygw_device_last_seen_timestamp_seconds", (("device", "dead"),)) not in samples

    # uplink failures by HTTP status and by reason
    assert sample(samples, "citygw_uplink_failures_total", uplink="platform", reason="http_503") >= 1
    assert sample(samples, "citygw_uplink_failures_total", uplink="down", reason="refused") >= 1
    assert not any(n == "citygw_uplink_failures_total" and ("uplink", "local") in k for n, k in samples)
    held = sample(samples, "citygw_uplink_oldest_undelivered_timestamp_seconds", uplink="platform")
    assert held < scraped and held == sample(samples, "citygw_buffer_oldest_batch_timestamp_seconds")
    assert sample(samples, "citygw_buffer_report_timestamp_seconds") > scraped - 6

    # histograms: the PUBACK round trip of the MQTT uplink, the meter's Modbus transactions
    count = sample(samples, "citygw_mqtt_puback_seconds_count", uplink="local")
    assert (
        count >= 1
        and sample(samples, "citygw_mqtt_puback_seconds_bucket", uplink="local", le="+Inf") == count
    )
    assert 0 < sample(samples, "citygw_mqtt_puback_seconds_sum", uplink="local") / count < 1
    assert ("citygw_mqtt_puback_seconds_count", (("uplink", "platform"),)) not in samples
    count = sample(samples, "citygw_modbus_transaction_seconds_count", device="meter-1")
    assert count >= 2
    assert 0 < sample(samples, "citygw_modbus_transaction_seconds_sum", device="meter-1") / count < 0.2
    buckets = [
        v
        for (n, k), v in samples.items()
        if n == "citygw_modbus_transaction_seconds_bucket" and ("device", "meter-1") in k
    ]
    assert len(buckets) == 12 and max(buckets) == count  # cumulative: +Inf holds them all
    assert sample(samples, "citygw_modbus_transaction_seconds_count", device="dead") == 0  # never answered


def _try_scrape(port: int) -> Samples:
    try:
        return scrape(port)
    except OSError:
        return {}


def test_error_reasons_of_each_driver_are_the_documented_labels() -> None:
    """The ``reason`` labels ``citygw_device_errors_total`` starts at 0 for each bus type, pinned in
    order: one ``Reason`` for every decoder layer must not put a BLE word on a serial device nor
    change a word an alert matches; and every decoder's reason is in docs/operations.md."""
    modbus = ("timeout", "crc", "connection", "framing", "gateway", "exception", "decode", "late", "mismatch")
    port = ("no-port", "permission", "busy", "port")
    assert error_reasons("modbus-tcp") == modbus
    assert error_reasons("modbus-rtu") == (*modbus, *port)
    assert error_reasons("serial") == (
        *port,
        "timeout",
        *("short", "long", "header", "length", "checksum", "trailer", "syntax", "value"),
    )
    assert error_reasons("ble") == (
        "short",
        "length",
        "format",
        "value",
        "unknown-object",
        "no-key",
        "decrypt",
        "plaintext",
        "encrypted",
        "empty",
    )
    row = next(
        line
        for line in (Path(__file__).parents[1] / "docs" / "operations.md").read_text().splitlines()
        if line.startswith("| `citygw_device_errors_total")
    )
    for reason in Reason:  # every word a decoder refuses with is documented
        assert f"`{reason.value}`" in row, reason
    for reason in (*modbus, *port):  # and every word a link or a port counts
        assert f"`{reason}`" in row, reason
