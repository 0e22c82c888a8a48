"""The metrics serve a snapshot the event loop took, never the loop's live objects.

A real daemon whose loop is blocked by a blocking call still answers a scrape over HTTP within
the bound, with the last figures and the moment they were taken; a real gateway whose devices a
reload adds and removes again and again is scraped over HTTP all the while, and every scrape is
one config's devices, each with every error reason of its driver from 0.
"""

from __future__ import annotations

import asyncio
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest

from citygw.commands.status import scrape as status_scrape
from citygw.config import load_config
from citygw.daemon.gateway import Gateway
from citygw.demo.broker import LocalBroker, free_port
from citygw.drivers.modbus.server import ModbusSimulator
from citygw.ops.figures import (
    FRESH_WAIT,
    BufferFigures,
    ClockFigures,
    Figures,
    FiguresFeed,
    PipelineFigures,
    error_reasons,
)
from citygw.ops.watchdog import TEST_BLOCK_LOOP

from .support import Daemon, start_load, write_config
from .test_modbus_cli import units
from .test_ops_status import Samples, parse, sample

BLOCK = 8.0  # seconds the daemon's loop is blocked: far longer than a scrape may take
SCRAPE_BOUND = FRESH_WAIT + 1.5  # the wait for the loop, and room for a loaded test machine


def _timed_scrape(port: int) -> tuple[float, float, Samples]:
    """(wall time the scrape started, seconds it took, its samples)."""
    started, t0 = time.time(), time.monotonic()
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=BLOCK + 5) as response:
        text = response.read().decode()
    return started, time.monotonic() - t0, parse(text)


def test_a_scrape_while_the_loop_is_blocked_is_answered_in_time_with_the_last_figures(
    tmp_path: Path,
    key: Path,
    broker: LocalBroker,
    daemon_factory: Callable[[Path], Daemon],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    port = free_port()
    monkeypatch.setenv(TEST_BLOCK_LOOP, f"3:{BLOCK}")  # time.sleep on the loop, 3 s after the start
    daemon = start_load(
        tmp_path,
        key,
        broker.port,
        daemon_factory,
        rate=200,
        count=1_000_000,
        metrics={"listen": f"127.0.0.1:{port}"},
    )
    daemon.wait_ready()
    deadline = time.monotonic() + 60
    stalled: list[tuple[float, Samples]] = []  # scrapes served with figures older than the wait
    fresh_after: Samples | None = None
    while fresh_after is None:
        assert time.monotonic() < deadline, f"{len(stalled)} stalled scrapes, none fresh after them"
        try:
            started, took, samples = _timed_scrape(port)
        except OSError:  # not listening yet
            time.sleep(0.05)
            continue
        assert took < SCRAPE_BOUND, f"a scrape took {took:.1f} s"
        age = started - sample(samples, "citygw_snapshot_timestamp_seconds")
        if age > FRESH_WAIT + 0.5:
            stalled.append((age, samples))
            if len(stalled) == 2:  # citygw status, too, is answered while the loop is blocked
                live = status_scrape(f"http://127.0.0.1:{port}/metrics", timeout=2.0)
                assert live is not None and live.gateway == "gw-test"
        elif stalled and sample(samples, "citygw_readings_accepted_total") > sample(
            stalled[0][1], "citygw_readings_accepted_total"
        ):  # the loop answers again, and has gone on accepting
            fresh_after = samples
        time.sleep(0.1)
    assert daemon.terminate() == 0

    assert len(stalled) >= 3, "scraped several times while the loop was blocked"
    assert max(age for age, _ in stalled) > BLOCK / 2
    accepted = {sample(s, "citygw_readings_accepted_total") for _, s in stalled}
    assert len(accepted) == 1, "one snapshot served until the loop answers again"
    assert sample(fresh_after, "citygw_device_state", device="load-1", state="ok") == 1


def _config(path: Path, key: Path, broker: int, modbus: int, devices: list[str], port: int) -> Path:
    meter = {"bus": "plc", "unit": 1, "profile": "eastron-sdm630", "interval": "100ms"}
    return write_config(
        path,
        key=key,
        port=broker,
        devices=dict.fromkeys(devices, meter),
        buses={"plc": {"type": "modbus-tcp", "host": "127.0.0.1", "port": modbus}},
        metrics={"listen": f"127.0.0.1:{port}"},
    )


async def test_scrapes_while_a_reload_adds_and_removes_devices_see_one_config_each(
    tmp_path: Path, key: Path, broker: LocalBroker
) -> None:
    port = free_port()
    sets = [
        [f"meter-{i}" for i in range(0, 12)],
        [f"meter-{i}" for i in range(6, 30)],
        [f"meter-{i}" for i in range(20, 24)],
    ]
    reasons = set(error_reasons("modbus-tcp"))
    scraped: list[Samples] = []
    failures: list[BaseException] = []
    done = threading.Event()

    def scrape_all_the_while() -> None:
        while not done.is_set():
            try:
                _, took, samples = _timed_scrape(port)
                assert took < SCRAPE_BOUND, f"a scrape took {took:.1f} s"
                scraped.append(samples)
            except OSError:  # not listening yet
                time.sleep(0.01)
            except BaseException as exc:
                failures.append(exc)
                return

    async with ModbusSimulator(units()) as modbus:
        configs = [
            load_config(_config(tmp_path / f"c{i}.yaml", key, broker.port, modbus.port, devices, port))
            for i, devices in enumerate(sets)
        ]
        gateway = Gateway(configs[0], handle_signals=False)
        running = asyncio.create_task(gateway.run())
        scraper = threading.Thread(target=scrape_all_the_while, name="scraper")
        scraper.start()
        try:
            deadline = time.monotonic() + 30
            while not scraped:
                assert time.monotonic() < deadline and not running.done() and not failures, failures
                await asyncio.sleep(0.05)
            for round_ in range(45):
                await gateway.apply(configs[(round_ + 1) % len(configs)])
                await asyncio.sleep(0.02)
            seen = len(scraped)
            while len(scraped) < seen + 3 and not failures:  # a few after the last reload
                assert time.monotonic() < deadline + 60
                await asyncio.sleep(0.05)
        finally:
            done.set()
            await asyncio.to_thread(scraper.join)
            gateway.stop()
            await running

    assert not failures, failures
    assert len(scraped) >= 10, len(scraped)
    for samples in scraped:
        devices = _devices(samples)
        assert devices in sets, devices
        for device in devices:
            counted = {
                dict(labels)["reason"]
                for name, labels in samples
                if name == "citygw_device_errors_total" and dict(labels)["device"] == device
            }
            assert reasons <= counted, f"{device}: {sorted(reasons - counted)} missing"
    assert _devices(scraped[-1]) == sets[0], "the config the last reload applied"


def _devices(samples: Samples) -> list[str]:
    devices = {dict(labels)["device"] for name, labels in samples if name == "citygw_device_state"}
    return sorted(devices, key=lambda d: int(d.split("-")[1]))


def test_scrapes_during_a_stall_ask_the_loop_once_and_keep_no_history() -> None:
    """Twenty scrapes while the loop sleeps: each gets the last figures within the bound, and the
    loop, once it turns again, takes one set of figures for all of them, not twenty."""
    taken: list[float] = []

    def take_now() -> Figures:
        taken.append(time.monotonic())
        return replace(EMPTY, taken=taken[-1])

    feed = FiguresFeed(take_now, wait=0.2)
    loop = asyncio.new_event_loop()

    async def attach() -> None:
        feed.attach()

    runner = threading.Thread(target=loop.run_forever, name="loop")
    runner.start()
    try:
        asyncio.run_coroutine_threadsafe(attach(), loop).result(5)
        first = feed.latest
        loop.call_soon_threadsafe(time.sleep, 2.0)  # the loop is blocked from now on
        time.sleep(0.1)
        served: list[tuple[float, Figures]] = []

        def scrape() -> None:
            t0 = time.monotonic()
            figures = feed.current()
            served.append((time.monotonic() - t0, figures))

        scrapes = [threading.Thread(target=scrape) for _ in range(20)]
        for t in scrapes:
            t.start()
        for t in scrapes:
            t.join()
        assert len(served) == 20 and all(figures is first for _, figures in served)
        assert max(took for took, _ in served) < 0.2 + 1.0
        assert len(taken) == 1, "only the first figures so far"
        asyncio.run_coroutine_threadsafe(asyncio.sleep(0), loop).result(10)  # the loop turns again
        assert len(taken) == 2, "one request queued for all twenty scrapes"
        assert feed.current() is feed.latest and feed.latest is not first
    finally:
        loop.call_soon_threadsafe(loop.stop)
        runner.join()
        loop.close()
    assert feed.current() is feed.latest, "a closed loop: the last figures"


EMPTY = Figures(
    taken=0.0,
    gateway="gw",
    devices=(),
    pipeline=PipelineFigures(0, 0, 0, 0, 0, 0, 0),
    buffer=BufferFigures(0, 0, 0, 0, 0, None, 0),
    report=None,
    uplinks=(),
    clock=ClockFigures(True, 0, 0),
)
