"""The BLE driver at the narrowest seam below bleak, with no radio.

A real :class:`bleak.BleakScanner` runs on a bleak backend (:class:`Air`'s ``Replay``) that delivers
real ``BLEDevice`` / ``AdvertisementData`` values built from real payload bytes through bleak's own
detection-callback machinery, the way the BlueZ backend does. Readings go through the real pipeline
into a real SQLite buffer and are sealed and signed; the privacy test then searches the database
files and every signed batch for the addresses heard and for every hash the presence counter made.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import hashlib
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from bleak import BleakScanner
from bleak.backends.device import BLEDevice
from bleak.backends.scanner import AdvertisementData, BaseBleakScanner
from bleak.exc import BleakError

from citygw.buffer import BatchLimits, Buffer
from citygw.buffer.thread import Store
from citygw.config.ble import BleBus, BleDevice, BleFormat, PresenceCounter, Scanning
from citygw.drivers.ble.bus import BleBusRunner, run_bus
from citygw.drivers.ble.common import Advert
from citygw.drivers.ble.router import Router
from citygw.drivers.ble.scanner import Scanner, patterns_for
from citygw.drivers.health import DeviceHealth, DeviceState
from citygw.pipeline.intake import Pipeline
from citygw.reading import Reading
from citygw.wire.signing import Signer

from .support import payload_of

BTHOME_UUID = "0000fcd2-0000-1000-8000-00805f9b34fb"
THERMO = "A4:C1:38:0B:5E:ED"  # a configured BTHome thermometer
RUUVI = "CB:B8:33:4C:88:4F"  # a configured RuuviTag
STRANGER = "F0:99:B6:12:34:56"  # a Ruuvi nobody configured
PHONES = [f"5D:{i:02X}:7A:33:C1:{0xF0 + i:02X}" for i in range(5)]  # random-address phones


class Air:
    """What the radio would hear: adverts go to every running replay scanner via bleak's callbacks."""

    def __init__(self, *, passive_fails: bool = False, failing_starts: int = 0) -> None:
        self.running: list[BaseBleakScanner] = []
        self.modes: list[str] = []
        self.passive_fails = passive_fails
        self.failing_starts = failing_starts
        self.stops = 0
        self.on_start: list[dict[str, Any]] = []  # adverts sent as soon as a scanner starts

    def backend(self) -> type[BaseBleakScanner]:
        air = self

        class Replay(BaseBleakScanner):
            def __init__(
                self, detection_callback: Any, service_uuids: Any, scanning_mode: str, **kw: Any
            ) -> None:
                super().__init__(detection_callback, service_uuids)
                self.mode = scanning_mode
                self.bluez = kw.get("bluez", {})

            async def start(self) -> None:
                air.modes.append(self.mode)
                if self.mode == "passive" and air.passive_fails:
                    raise BleakError("passive scanning mode requires BlueZ experimental features")
                if air.failing_starts:
                    air.failing_starts -= 1
                    raise BleakError("org.bluez.Error.NotReady")
                air.running.append(self)
                for advert in air.on_start:
                    asyncio.get_running_loop().call_soon(functools.partial(air.send, **advert))

            async def stop(self) -> None:
                air.stops += 1
                if self in air.running:
                    air.running.remove(self)

        return Replay

    def factory(self) -> Callable[..., BleakScanner]:
        return functools.partial(BleakScanner, backend=self.backend())

    def send(
        self,
        address: str,
        *,
        rssi: int = -60,
        service: dict[str, bytes] | None = None,
        manufacturer: dict[int, bytes] | None = None,
    ) -> None:
        device = BLEDevice(address, None, None)
        adv = AdvertisementData(
            local_name=None,
            manufacturer_data=manufacturer or {},
            service_data=service or {},
            service_uuids=list(service or {}),
            tx_power=None,
            rssi=rssi,
            platform_data=(),
        )
        for scanner in list(self.running):
            scanner.call_detection_callbacks(device, adv)


def bus_config(**kw: Any) -> BleBus:
    return BleBus.model_validate({"type": "ble", "backoff_initial": "100ms", "backoff_max": "200ms", **kw})


def devices(*, window: float | None = None) -> dict[str, BleDevice]:
    out: dict[str, BleDevice] = {
        "thermo": BleDevice.model_validate({"bus": "air", "format": "bthome", "address": THERMO.lower()}),
        "ruuvi": BleDevice.model_validate({"bus": "air", "format": "ruuvi", "address": RUUVI}),
    }
    if window is not None:
        presence = BleDevice.model_validate({"bus": "air", "type": "presence", "rssi_threshold": -85})
        assert isinstance(presence, PresenceCounter)
        out["footfall"] = presence.model_copy(update={"window": window})  # below the config's 10 s minimum
    return out


async def until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.01)


# --- the scanner -------------------------------------------------------------------------------


async def test_the_detection_callback_queues_real_bleak_values_and_counts_drops() -> None:
    air = Air()
    queue: asyncio.Queue[Advert] = asyncio.Queue(2)
    scanner = Scanner(
        adapter="hci0", scanning=Scanning.ACTIVE, patterns=[], queue=queue, factory=air.factory()
    )
    task = asyncio.create_task(scanner.run())
    await until(lambda: bool(air.running))
    for n in range(3):
        air.send(THERMO.lower(), rssi=-50 - n, service={BTHOME_UUID: bytes.fromhex("4002CA09")})
    advert = queue.get_nowait()
    assert advert.address == THERMO and advert.rssi == -50
    assert advert.service_data == {BTHOME_UUID: bytes.fromhex("4002CA09")}
    assert scanner.received == 3 and scanner.dropped == 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert air.running == [] and air.stops == 1  # cancelled: the bleak scanner was stopped


async def test_auto_falls_back_to_active_when_passive_is_refused(caplog: pytest.LogCaptureFixture) -> None:
    air = Air(passive_fails=True)
    scanner = Scanner(
        adapter="hci1", scanning=Scanning.AUTO, patterns=[], queue=asyncio.Queue(8), factory=air.factory()
    )
    with caplog.at_level(logging.WARNING):
        task = asyncio.create_task(scanner.run())
        await until(lambda: bool(air.running))
    assert air.modes == ["passive", "active"] and scanner.mode == "active"
    assert "falling back to active scanning" in caplog.text
    assert air.running[0].bluez == {"adapter": "hci1"}  # type: ignore[attr-defined]
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def test_a_missing_adapter_does_not_pin_auto_to_active() -> None:
    air = Air(passive_fails=True, failing_starts=1)  # the dongle is not plugged in yet at the first try
    scanner = Scanner(
        adapter="hci0",
        scanning=Scanning.AUTO,
        patterns=[],
        queue=asyncio.Queue(8),
        backoff_initial=0.05,
        backoff_max=0.05,
        factory=air.factory(),
    )
    task = asyncio.create_task(scanner.run())
    await until(lambda: bool(air.running))
    assert air.modes == ["passive", "active", "passive", "active"]
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def test_passive_asks_bluez_for_the_patterns() -> None:
    air = Air()
    wanted = patterns_for([BleFormat.RUUVI], presence=False)
    scanner = Scanner(
        adapter="hci0",
        scanning=Scanning.PASSIVE,
        patterns=wanted,
        queue=asyncio.Queue(8),
        factory=air.factory(),
    )
    task = asyncio.create_task(scanner.run())
    await until(lambda: bool(air.running))
    assert air.running[0].bluez == {"adapter": "hci0", "or_patterns": wanted}  # type: ignore[attr-defined]
    assert wanted[0].content_of_pattern == b"\x99\x04"
    assert len(patterns_for([BleFormat.BTHOME], presence=True)) == 1 + 32  # + every Flags value
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def test_restarts_with_backoff_when_bluez_is_gone_or_silent() -> None:
    air = Air(failing_starts=2)
    scanner = Scanner(
        adapter="hci0",
        scanning=Scanning.ACTIVE,
        patterns=[],
        queue=asyncio.Queue(8),
        restart_when_silent=0.3,
        backoff_initial=0.05,
        backoff_max=0.1,
        factory=air.factory(),
    )
    task = asyncio.create_task(scanner.run())
    await until(lambda: scanner.starts == 1)
    assert air.modes == ["active"] * 3  # two refused starts, then running
    await until(lambda: scanner.starts == 2)  # nothing heard for 0.3 s: restarted
    assert air.stops >= 1
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert air.running == []


# --- the router --------------------------------------------------------------------------------


def advert(
    address: str,
    *,
    service: dict[str, bytes] | None = None,
    manufacturer: dict[int, bytes] | None = None,
    rssi: int = -60,
) -> Advert:
    return Advert(address, rssi, service or {}, manufacturer or {}, 0.0)


def test_router_allowlist_dedup_and_errors() -> None:
    router = Router(devices())
    ruuvi = bytes.fromhex("0512FC5394C37C0004FFFC040CAC364200CDCBB8334C884F")
    assert router.sensor(advert(STRANGER, manufacturer={0x0499: ruuvi}), 10.0) is None  # not configured
    first = router.sensor(advert(RUUVI, manufacturer={0x0499: ruuvi}), 10.0)
    assert first is not None and first.device == "ruuvi" and not first.duplicate
    assert [r.name for r in first.readings][-1] == "rssi" and first.readings[0] == Reading(
        "ruuvi", "temperature", 24.3, "Cel", 10.0
    )
    again = router.sensor(advert(RUUVI, manufacturer={0x0499: ruuvi}), 11.0)  # same sequence number
    assert again is not None and again.duplicate and again.readings == []
    assert router.sensor(advert(RUUVI, service={BTHOME_UUID: b"\x40"}), 12.0) is None  # no Ruuvi data in it
    bad = router.sensor(advert(THERMO, service={BTHOME_UUID: bytes.fromhex("4002CA")}), 12.0)
    assert bad is not None and bad.error is not None and bad.error.reason.value == "short"


def test_router_finds_a_bthome_sensor_by_the_mac_its_advert_carries() -> None:
    """Firmware on a random address puts its MAC in the advert (BTHome device information bit 1)."""
    router = Router(devices())
    carried = bytes.fromhex(
        "42" + "ED5E0B38C1A4" + "0007" + "02CA09"
    )  # THERMO's MAC, least significant first
    outcome = router.sensor(advert("5D:01:7F:22:9A:13", service={BTHOME_UUID: carried}), 10.0)
    assert outcome is not None and outcome.device == "thermo" and outcome.error is None
    assert outcome.readings[0] == Reading("thermo", "temperature", 25.06, "Cel", 10.0)
    other = bytes.fromhex("42" + "010203040506" + "0007" + "02CA09")  # carries a MAC nobody configured
    assert router.sensor(advert("5D:01:7F:22:9A:13", service={BTHOME_UUID: other}), 11.0) is None


# --- the bus, into the real buffer ---------------------------------------------------------------


async def test_adverts_reach_the_buffer_and_no_address_or_hash_leaves(tmp_path: Path, key: Path) -> None:
    salts: list[bytes] = []

    def recorded(n: int) -> bytes:
        salts.append(os.urandom(n))
        return salts[-1]

    buffer = Buffer(
        tmp_path / "buffer.db",
        gateway="gw-ble",
        signer=Signer.from_file(key),
        uplinks=["cloud"],
        limits=BatchLimits(max_readings=20),
    )
    store = Store(buffer)
    await store.open()
    pipeline = Pipeline(store, commit_interval=0.05, commit_rows=50)
    writer = asyncio.create_task(pipeline.run())
    air = Air()
    config = devices(window=1.0)
    health = {name: DeviceHealth(name) for name in config}
    runner = BleBusRunner(
        "air", bus_config(), config, pipeline.put, health, factory=air.factory(), random_bytes=recorded
    )
    bus = asyncio.create_task(runner.run())
    await until(lambda: bool(air.running))
    await until(lambda: time.time() % 1.0 < 0.5)  # start early in a window

    ruuvi = bytes.fromhex("0512FC5394C37C0004FFFC040CAC364200CDCBB8334C884F")
    for packet in range(3):
        # a BTHome thermometer sends each packet twice (same packet id): counted once
        for _ in range(2):
            air.send(THERMO, rssi=-70, service={BTHOME_UUID: bytes.fromhex(f"4000{packet:02x}02CA0903BF13")})
        for phone in PHONES:
            air.send(phone, rssi=-70 if phone != PHONES[-1] else -95)  # the last one is too far away
    air.send(RUUVI, rssi=-77, manufacturer={0x0499: ruuvi})
    air.send(STRANGER, rssi=-40, manufacturer={0x0499: ruuvi})
    closed = health["footfall"].readings  # windows closed before these adverts were routed
    await until(lambda: pipeline.counters.accepted >= 3 * 3 + 9 + 1, timeout=5)
    await until(lambda: health["footfall"].readings > closed, timeout=3)  # their window closed

    bus.cancel()
    await asyncio.gather(bus, return_exceptions=True)
    assert air.running == []  # the bleak scanner was stopped with the bus
    pipeline.stop()
    await writer
    await pipeline.flush()
    tokens = [batch.jws for batch in buffer.fetch(0, 10_000)]
    await store.close()

    records = [
        (rec.get("bn"), rec["n"], rec.get("v", rec.get("vb", rec.get("vs"))))
        for t in tokens
        for rec in payload_of(t)["senml"]
    ]
    names = [n for _, n, _ in records]
    assert names.count("temperature") == 4  # 3 BTHome packets (duplicates dropped) + 1 Ruuvi
    assert names.count("atmosphericPressure") == 1  # the stranger's Ruuvi advert was not recorded
    counts = [v for _, n, v in records if n == "presenceCount"]
    # one window heard it all: 4 phones near enough, the 2 Ruuvis and the thermometer (advertisers all);
    # the windows before and after it heard nothing
    assert sorted(counts)[-1] == 7 and sum(counts) == 7
    assert health["thermo"].readings == 9 and health["thermo"].state is DeviceState.OK
    assert health["ruuvi"].readings == 9

    addresses = [THERMO, RUUVI, STRANGER, *PHONES]
    hashes = [
        hashlib.blake2b(a.encode(), key=salt, digest_size=8).digest() for a in addresses for salt in salts
    ]
    assert salts and hashes
    spellings: list[bytes] = []
    for a in addresses:
        raw = bytes.fromhex(a.replace(":", ""))
        spellings += [
            a.encode(),
            a.lower().encode(),
            a.replace(":", "").encode(),
            a.replace(":", "").lower().encode(),
            a.replace(":", "-").encode(),
            raw,
            raw[::-1],
        ]
    secrets = spellings + hashes + [h.hex().encode() for h in hashes] + salts
    stored = b"".join(p.read_bytes() for p in tmp_path.glob("buffer.db*"))
    assert stored  # the database (and its WAL) were written
    wire = "\n".join(tokens).encode() + b"".join(
        base64.urlsafe_b64decode(t.split(".")[1] + "==") for t in tokens
    )
    for secret in secrets:
        assert secret not in stored, secret
        assert secret not in wire, secret


async def test_run_bus_is_the_daemon_runner_and_cancels_cleanly() -> None:
    air = Air()
    got: list[list[Reading]] = []

    async def sink(readings: list[Reading]) -> None:
        got.append(readings)

    config = devices()
    health = {name: DeviceHealth(name) for name in config}
    task = asyncio.create_task(run_bus("air", bus_config(), config, sink, health, factory=air.factory()))
    await until(lambda: bool(air.running))
    air.send(THERMO, service={BTHOME_UUID: bytes.fromhex("4002CA09")})
    await until(lambda: bool(got))
    assert got[0][0] == Reading("thermo", "temperature", 25.06, "Cel", got[0][0].time)
    assert abs(got[0][0].time - time.time()) < 2
    before = {t for t in asyncio.all_tasks() if t is not asyncio.current_task()}
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert air.running == []
    leftover = {t for t in asyncio.all_tasks() if t is not asyncio.current_task() and not t.done()} - (
        before - {task}
    )
    assert not leftover
