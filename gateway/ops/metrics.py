"""Prometheus metrics of the running gateway, served over HTTP on loopback (prometheus-client).

Nothing is counted twice: a custom collector reads, at scrape time, the counters the daemon keeps
anyway (device health, pipeline counters, uplink status, the clock, the watchdog) and the buffer
report the daemon refreshes every few seconds on the buffer's own thread. The scrape runs in
prometheus-client's HTTP thread, so it only reads plain attributes: it never touches SQLite and
never waits for the event loop. No metric carries a secret: labels are config ids and fixed words.

Metric names, for dashboards and alerts (docs/operations.md lists them all and suggests alert
rules). Prometheus conventions: a moment is a ``*_timestamp_seconds`` (UTC epoch seconds; the
alert computes ``time() - x``), never an age that is stale as soon as it is scraped, and absent
when there is no such moment; a counter is present at 0 for every label value known in advance
(``citygw_device_errors_total`` for each reason the device's driver counts).

================================================================ =========================================
``citygw_info{gateway,version}``                                 1
``citygw_device_readings_total{device}``                         readings the device gave
``citygw_device_frames_total{device}``                           good frames or transactions
``citygw_device_errors_total{device,reason}``                    errors by reason (timeout, crc, ...)
``citygw_device_state{device,state}``                            1 for the device's state
``citygw_device_last_seen_timestamp_seconds{device}``            the last good frame
``citygw_modbus_transaction_seconds{device}``                    histogram: answered Modbus transactions
``citygw_readings_accepted_total``                               readings committed to the buffer
``citygw_readings_invalid_total``                                readings refused (a value JSON cannot carry)
``citygw_buffer_*``                                              staged, held, bytes, oldest batch
``citygw_retention_dropped_*_total``                             readings/gaps dropped before delivery
``citygw_buffer_corrupt_batches_total``                          stored batches found damaged, sent as gaps
``citygw_buffer_moved_aside{file}``                              1: a damaged buffer file was moved aside
``citygw_buffer_wal_lost_readings``                              readings a damaged WAL lost (last start)
``citygw_buffer_clock_steps_total``                              wall-clock steps seen (ages are monotonic)
``citygw_uplink_state{uplink,state}``                            1 for the uplink's state
``citygw_uplink_failures_total{uplink,reason}``                  failed connections and deliveries
``citygw_uplink_lag_batches{uplink}``                            batches not acknowledged yet
``citygw_uplink_oldest_undelivered_timestamp_seconds{uplink}``   when the oldest of them was sealed
``citygw_mqtt_puback_seconds{uplink}``                           histogram: publish to PUBACK
``citygw_clock_synchronized``                                    1 when the clock is NTP-synchronised
``citygw_event_loop_lag_seconds``                                how late the loop's last beat woke up
================================================================ =========================================
"""

from __future__ import annotations

import contextlib
import functools
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Protocol, TypeVar

from prometheus_client import CollectorRegistry, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from citygw import __version__
from citygw.backoff import Backoff
from citygw.drivers.health import DeviceHealth, DeviceState
from citygw.logs import EventLog
from citygw.uplinks.base import UplinkState

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer

    from citygw.buffer.report import BufferReport
    from citygw.daemon.running import RunningGateway
    from citygw.ops.watchdog import Watchdog
    from citygw.pipeline.clock import ClockWatch

log = EventLog(__name__)

T = TypeVar("T")
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def _snapshot(read: Callable[[], T], default: T) -> T:
    """``read()`` of a dict the event loop may be changing right now: retried, never raising."""
    for _ in range(5):
        try:
            return read()
        except RuntimeError:  # "dictionary changed size during iteration"
            continue
    return default


def _items(counts: dict[str, int]) -> list[tuple[str, int]]:
    return list(counts.items())


_MODBUS_REASONS = (
    "timeout",
    "crc",
    "connection",
    "framing",
    "gateway",
    "exception",
    "decode",
    "late",
    "mismatch",
)
_PORT_REASONS = ("no-port", "permission", "busy", "port")  # drivers.serial.port: a port that does not open


def error_reasons(bus_type: str) -> tuple[str, ...]:
    """The reasons a bus type's driver counts device errors under (drivers.modbus.client,
    drivers.serial.decoders, drivers.ble.common): ``citygw_device_errors_total`` starts each at 0,
    so that ``rate()`` and ``increase()`` see the first error. A reason not listed still appears
    when it happens."""
    if bus_type.startswith("modbus"):
        return (*_MODBUS_REASONS, *(_PORT_REASONS if bus_type == "modbus-rtu" else ()))
    if bus_type == "serial":
        from citygw.drivers.serial.decoders import REASONS as SERIAL_REASONS

        return (*_PORT_REASONS, "timeout", *(r.value for r in SERIAL_REASONS))
    if bus_type == "ble":
        from citygw.drivers.ble.common import REASONS as BLE_REASONS

        return tuple(r.value for r in BLE_REASONS)
    return ()


# seconds: a loopback broker answers in a millisecond, a cellular link in a few hundred
PUBACK_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
# seconds: an RTU read of a few registers at 9600 baud takes 20-50 ms, a TCP one a millisecond
MODBUS_BUCKETS = (0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class Timings:
    """The histograms, fed as things happen by hooks in the Modbus poller and the MQTT uplink
    (prometheus-client's own histograms, outside any registry: the collector yields them).

    One per gateway (:class:`citygw.ops.operations.Operations` makes it), however many collectors read it.
    """

    def __init__(self, gateway: RunningGateway) -> None:
        config = gateway.config
        self.puback = Histogram(
            "citygw_mqtt_puback_seconds",
            "Seconds from an MQTT publish (QoS 1) to its PUBACK.",
            ["uplink"],
            registry=None,
            buckets=PUBACK_BUCKETS,
        )
        self.transaction = Histogram(
            "citygw_modbus_transaction_seconds",
            "Seconds an answered Modbus transaction took (request, answer, the inter-frame silence).",
            ["device"],
            registry=None,
            buckets=MODBUS_BUCKETS,
        )
        for uplink in gateway.uplinks:
            if hasattr(uplink, "on_puback"):
                uplink.on_puback = self.puback.labels(uplink=uplink.name).observe
        for name, health in gateway.health.items():
            if config.buses[config.devices[name].bus].type.startswith("modbus"):
                health.observe_transaction = self.transaction.labels(device=name).observe

    def collect(self) -> Iterator[Metric]:
        yield from self.puback.collect()
        yield from self.transaction.collect()


class OperationsFigures(Protocol):
    """What the collector reads of the operations side (:class:`citygw.ops.operations.Operations`)."""

    @property
    def report(self) -> BufferReport | None:
        """The buffer file's last figures (None: not read yet)."""
        ...

    @property
    def clock(self) -> ClockWatch: ...

    @property
    def watchdog(self) -> Watchdog: ...

    @property
    def timings(self) -> Timings: ...


class GatewayCollector(Collector):
    """Reads the live objects of one :class:`Gateway` at scrape time."""

    def __init__(self, gateway: RunningGateway, ops: OperationsFigures) -> None:
        self.gateway = gateway
        self.ops = ops
        self.started = time.time()
        config = gateway.config
        bus_types = {name: config.buses[device.bus].type for name, device in config.devices.items()}
        self.reasons = {name: error_reasons(bus_type) for name, bus_type in bus_types.items()}

    def collect(self) -> Iterable[Metric]:
        yield from self._process()
        yield from self._devices()
        yield from self._pipeline()
        yield from self._buffer()
        yield from self._uplinks()
        yield from self._clock()
        yield from self.ops.timings.collect()

    def _process(self) -> Iterator[Metric]:
        info = GaugeMetricFamily(
            "citygw_info", "The gateway and citygw version.", labels=["gateway", "version"]
        )
        info.add_metric([self.gateway.config.gateway.id, __version__], 1)
        yield info
        yield GaugeMetricFamily(
            "process_start_time_seconds", "Start time of the daemon, UTC epoch seconds.", value=self.started
        )
        times = os.times()
        yield CounterMetricFamily(
            "process_cpu_seconds", "User and system CPU time spent.", value=times.user + times.system
        )
        with contextlib.suppress(OSError, ValueError, IndexError):
            with open("/proc/self/statm", "rb") as statm:
                resident = int(statm.read().split()[1]) * _PAGE
            yield GaugeMetricFamily("process_resident_memory_bytes", "Resident memory size.", value=resident)

    def _devices(self) -> Iterator[Metric]:
        health: list[DeviceHealth] = _snapshot(lambda: list(self.gateway.health.values()), [])
        readings = CounterMetricFamily(
            "citygw_device_readings", "Readings the device gave.", labels=["device"]
        )
        frames = CounterMetricFamily(
            "citygw_device_frames", "Good frames or transactions from the device.", labels=["device"]
        )
        errors = CounterMetricFamily(
            "citygw_device_errors",
            "Errors by reason (timeout, crc, checksum, decode, ...): decode errors included.",
            labels=["device", "reason"],
        )
        state = GaugeMetricFamily(
            "citygw_device_state", "1 for the state the device is in.", labels=["device", "state"]
        )
        seen = GaugeMetricFamily(
            "citygw_device_last_seen_timestamp_seconds",
            "When the last good frame came, UTC epoch seconds (absent until one came).",
            labels=["device"],
        )
        now, wall = time.monotonic(), time.time()
        for h in health:
            readings.add_metric([h.device], h.readings)
            frames.add_metric([h.device], h.frames)
            counted: list[tuple[str, int]] = _snapshot(functools.partial(_items, h.errors), [])
            counts = dict.fromkeys(self.reasons.get(h.device, ()), 0) | dict(counted)
            for reason, count in counts.items():
                errors.add_metric([h.device, reason], count)
            for s in DeviceState:
                state.add_metric([h.device, s.value], 1 if h.state is s else 0)
            if h.last_seen is not None:
                seen.add_metric([h.device], wall - max(0.0, now - h.last_seen))
        yield from (readings, frames, errors, state, seen)

    def _pipeline(self) -> Iterator[Metric]:
        c = self.gateway.pipeline.counters
        for name, value, text in (
            ("citygw_readings_accepted", c.accepted, "Readings committed to the buffer."),
            ("citygw_readings_invalid", c.invalid, "Readings refused: a value JSON cannot carry."),
            ("citygw_buffer_commits", c.commits, "Buffer transactions committed."),
            (
                "citygw_buffer_commit_failures",
                c.failed_commits,
                "Buffer commits that failed (kept, retried).",
            ),
            ("citygw_batches_sealed", c.batches, "Batches sealed and signed."),
            ("citygw_retention_dropped_gaps", c.gaps, "Gap records retention wrote in place of batches."),
            ("citygw_retention_dropped_readings", c.dropped, "Readings retention dropped before delivery."),
        ):
            yield CounterMetricFamily(name, text, value=value)

    def _buffer(self) -> Iterator[Metric]:
        buffer = self.gateway.buffer
        yield GaugeMetricFamily(
            "citygw_buffer_staged_readings", "Readings accepted, not sealed yet.", value=buffer.staged_count
        )
        yield GaugeMetricFamily("citygw_buffer_last_seq", "The last sealed seq.", value=buffer.last_seq)
        yield GaugeMetricFamily(
            "citygw_buffer_max_bytes", "The buffer's disk cap (buffer.max_disk).", value=buffer.max_disk
        )
        yield CounterMetricFamily(
            "citygw_buffer_corrupt_batches",
            "Stored batches found damaged and replaced by gap records (reason corrupt).",
            value=buffer.corrupt_batches,
        )
        yield CounterMetricFamily(
            "citygw_buffer_clock_steps",
            "Wall-clock steps seen; batch ages are measured on a monotonic clock.",
            value=buffer.clock_steps,
        )
        aside = GaugeMetricFamily(
            "citygw_buffer_moved_aside",
            "1: this buffer replaced a damaged file, kept under the name in the label.",
            labels=["file"],
        )
        if buffer.moved_aside_file is not None:
            aside.add_metric([buffer.moved_aside_file], 1)
        yield aside
        yield GaugeMetricFamily(
            "citygw_buffer_wal_lost_readings",
            "Accepted readings a damaged WAL lost, found at the last start (a gap record says so).",
            value=buffer.wal_lost_readings,
        )
        report = self.ops.report
        if report is None:
            return
        yield GaugeMetricFamily(
            "citygw_buffer_batches", "Batches and gap records held.", value=report.batches
        )
        yield GaugeMetricFamily(
            "citygw_buffer_undelivered_readings",
            "Readings in the batches held.",
            value=report.undelivered_readings,
        )
        yield GaugeMetricFamily("citygw_buffer_used_bytes", "Database pages in use.", value=report.used_bytes)
        yield GaugeMetricFamily("citygw_buffer_file_bytes", "The file and its WAL.", value=report.file_bytes)
        if report.oldest_created is not None:
            yield GaugeMetricFamily(
                "citygw_buffer_oldest_batch_timestamp_seconds",
                "When the oldest batch held was sealed, UTC epoch seconds (absent when none is held).",
                value=report.oldest_created,
            )
        yield GaugeMetricFamily(
            "citygw_buffer_gap_records",
            "Gap records held, not yet delivered everywhere.",
            value=report.gap_records,
        )
        yield GaugeMetricFamily(
            "citygw_buffer_report_timestamp_seconds",
            "When the buffer figures above were read, UTC epoch seconds.",
            value=report.read_at,
        )

    def _uplinks(self) -> Iterator[Metric]:
        state = GaugeMetricFamily(
            "citygw_uplink_state", "1 for the uplink's state.", labels=["uplink", "state"]
        )
        acked = GaugeMetricFamily(
            "citygw_uplink_acked_seq", "The last seq the uplink acknowledged.", labels=["uplink"]
        )
        connects = CounterMetricFamily("citygw_uplink_connects", "Connections made.", labels=["uplink"])
        batches = CounterMetricFamily(
            "citygw_uplink_delivered_batches", "Batches delivered since start.", labels=["uplink"]
        )
        readings = CounterMetricFamily(
            "citygw_uplink_delivered_readings", "Readings delivered since start.", labels=["uplink"]
        )
        parked = GaugeMetricFamily(
            "citygw_uplink_parked_batches", "Batches the destination refused for good.", labels=["uplink"]
        )
        lag = GaugeMetricFamily(
            "citygw_uplink_lag_batches", "Batches and gap records not acknowledged yet.", labels=["uplink"]
        )
        lag_readings = GaugeMetricFamily(
            "citygw_uplink_lag_readings", "Readings not acknowledged yet.", labels=["uplink"]
        )
        oldest = GaugeMetricFamily(
            "citygw_uplink_oldest_undelivered_timestamp_seconds",
            "When the oldest batch the uplink has not acknowledged was sealed, UTC epoch seconds "
            "(absent when the uplink has them all).",
            labels=["uplink"],
        )
        failures = CounterMetricFamily(
            "citygw_uplink_failures",
            "Failed connections and deliveries by reason: http_<status>, timeout, tls, refused, "
            "network, or the error's type.",
            labels=["uplink", "reason"],
        )
        report = self.ops.report
        lags = {u.name: u for u in report.uplinks} if report is not None else {}
        last_seq = self.gateway.buffer.last_seq
        for uplink in self.gateway.uplinks:
            s = uplink.status
            name = s.name
            for value in UplinkState:
                state.add_metric([name, value.value], 1 if s.state is value else 0)
            acked.add_metric([name], s.acked_seq)
            connects.add_metric([name], s.connects)
            batches.add_metric([name], s.delivered_batches)
            readings.add_metric([name], s.delivered_readings)
            parked.add_metric([name], getattr(s, "parked", 0))
            failed: list[tuple[str, int]] = _snapshot(functools.partial(_items, s.failures), [])
            for reason, count in failed:
                failures.add_metric([name, reason], count)
            held = lags.get(name)
            if held is not None:
                caught_up = s.acked_seq >= last_seq
                lag.add_metric([name], 0 if caught_up else held.batches)
                lag_readings.add_metric([name], 0 if caught_up else held.readings)
                if not caught_up and held.oldest_created is not None:
                    oldest.add_metric([name], held.oldest_created)
        yield from (state, acked, connects, failures, batches, readings, parked, lag, lag_readings, oldest)

    def _clock(self) -> Iterator[Metric]:
        clock, watchdog = self.ops.clock, self.ops.watchdog
        yield GaugeMetricFamily(
            "citygw_clock_synchronized", "1 when the system clock is synchronised.", value=int(clock.synced)
        )
        yield CounterMetricFamily(
            "citygw_clock_unsynced_readings",
            "Readings flagged clock-unsynced.",
            value=clock.unsynced_readings,
        )
        yield CounterMetricFamily(
            "citygw_clock_corrected_readings",
            "Flagged readings whose time was corrected when the clock synced.",
            value=clock.corrected_readings,
        )
        yield GaugeMetricFamily(
            "citygw_event_loop_lag_seconds", "How late the loop's last beat woke up.", value=watchdog.loop_lag
        )
        yield GaugeMetricFamily(
            "citygw_alive",
            "1 while the event loop and the buffer thread answer (what the watchdog pings on).",
            value=int(watchdog.check() is None),
        )


TEST_LISTEN_RETRY_MAX = "CITYGW_TEST_LISTEN_RETRY_MAX"
"""Environment variable for tests only: the longest wait between attempts to listen, instead of 30 s."""
LISTEN_RETRY = (1.0, float(os.environ.get(TEST_LISTEN_RETRY_MAX, 30.0)))  # seconds: first, longest wait


class MetricsServer:
    """The HTTP endpoint: ``/metrics`` on ``host:port``, in a thread of prometheus-client's."""

    def __init__(self, collector: Collector, host: str, port: int) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(collector)
        self.host, self.port = host, port
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def listening(self) -> bool:
        return self._server is not None

    def start(self) -> None:
        """Listen (once); raises :class:`OSError` when the address is taken or not ours."""
        if self._server is None:
            self._server, self._thread = start_http_server(self.port, self.host, registry=self.registry)

    async def serve(self) -> None:
        """Listen, and while the address is taken try again with jittered backoff (up to
        :data:`LISTEN_RETRY`), logged once when it starts failing and once when it listens:
        metrics are not worth losing data over, nor worth losing for good over a port taken
        for a while (a second daemon, a test, a forgotten exporter). Returns once listening."""
        failures = 0
        backoff = Backoff(*LISTEN_RETRY, retry_on=lambda exc: isinstance(exc, OSError))
        async for attempt in backoff.retrying():
            with attempt:
                try:
                    self.start()
                except OSError as exc:
                    failures += 1
                    if failures == 1:
                        log.event("metrics_unavailable").warning(
                            "metrics: cannot listen on %s:%d (%s); the daemon runs on and tries again "
                            "every %g s at most, without logging it each time",
                            self.host,
                            self.port,
                            exc.strerror or exc,
                            LISTEN_RETRY[1],
                        )
                    raise
        log.event("metrics_listening").info(
            "metrics on http://%s:%d/metrics%s",
            self.host,
            self.port,
            f" (after {failures} failed attempts)" if failures else "",
        )

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
