"""Prometheus metrics of the running gateway, served over HTTP on loopback (prometheus-client).

Nothing is counted twice: a custom collector reads, at scrape time, the counters the daemon keeps
anyway (device health, pipeline counters, uplink status, the clock, the watchdog) and the buffer
report the daemon refreshes every few seconds on the buffer's own thread. The scrape runs in
prometheus-client's HTTP thread, so it only reads plain attributes: it never touches SQLite and
never waits for the event loop. No metric carries a secret: labels are config ids and fixed words.

Metric names, for dashboards and alerts (docs/operations.md suggests alert rules):

=============================================== ========================================================
``citygw_info{gateway,version}``                1
``citygw_device_readings_total{device}``        readings the device gave
``citygw_device_frames_total{device}``          good frames or transactions
``citygw_device_errors_total{device,reason}``   errors by reason (timeout, crc, checksum, decode, ...)
``citygw_device_state{device,state}``           1 for the device's state (unknown/ok/stale/failing)
``citygw_device_last_seen_age_seconds{device}`` since the last good frame
``citygw_readings_accepted_total``              readings committed to the buffer
``citygw_readings_invalid_total``               readings refused (a value JSON cannot carry)
``citygw_buffer_*``                             staged readings, batches held, bytes, oldest batch age
``citygw_retention_dropped_*_total``            readings/gaps retention dropped before delivery
``citygw_uplink_state{uplink,state}``           1 for the uplink's state
``citygw_uplink_lag_batches{uplink}``           batches (and gap records) not acknowledged yet
``citygw_uplink_oldest_undelivered_age_seconds`` age of the oldest of them (0 when none)
``citygw_clock_synchronized``                   1 when the system clock is NTP-synchronised
``citygw_event_loop_lag_seconds``               how late the loop's last beat woke up
=============================================== ========================================================
"""

from __future__ import annotations

import contextlib
import functools
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, TypeVar

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from drivers.health import DeviceHealth, DeviceState
from gateway import __version__
from gateway.logs import EventLog
from gateway.uplinks.base import UplinkState

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer

    from gateway.daemon import Gateway
    from gateway.ops import Operations

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


def _items(health: DeviceHealth) -> list[tuple[str, int]]:
    return list(health.errors.items())


class GatewayCollector(Collector):
    """Reads the live objects of one :class:`Gateway` at scrape time."""

    def __init__(self, gateway: Gateway, ops: Operations) -> None:
        self.gateway = gateway
        self.ops = ops
        self.started = time.time()

    def collect(self) -> Iterable[Metric]:
        yield from self._process()
        yield from self._devices()
        yield from self._pipeline()
        yield from self._buffer()
        yield from self._uplinks()
        yield from self._clock()

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
            "citygw_device_last_seen_age_seconds", "Seconds since the last good frame.", labels=["device"]
        )
        now = time.monotonic()
        for h in health:
            readings.add_metric([h.device], h.readings)
            frames.add_metric([h.device], h.frames)
            counts: list[tuple[str, int]] = _snapshot(functools.partial(_items, h), [])
            for reason, count in counts:
                errors.add_metric([h.device, reason], count)
            for s in DeviceState:
                state.add_metric([h.device, s.value], 1 if h.state is s else 0)
            if h.last_seen is not None:
                seen.add_metric([h.device], max(0.0, now - h.last_seen))
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
        report = self.ops.report
        if report is None:
            return
        now = time.time()
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
        yield GaugeMetricFamily(
            "citygw_buffer_oldest_batch_age_seconds",
            "Age of the oldest batch held (0 when none).",
            value=0.0 if report.oldest_created is None else max(0.0, now - report.oldest_created),
        )
        yield GaugeMetricFamily(
            "citygw_buffer_gap_records",
            "Gap records held, not yet delivered everywhere.",
            value=report.gap_records,
        )
        yield GaugeMetricFamily(
            "citygw_buffer_report_age_seconds", "Age of the buffer figures above.", value=now - report.read_at
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
            "citygw_uplink_oldest_undelivered_age_seconds",
            "Age of the oldest batch the uplink has not acknowledged (0 when none).",
            labels=["uplink"],
        )
        report = self.ops.report
        lags = {u.name: u for u in report.uplinks} if report is not None else {}
        now = time.time()
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
            held = lags.get(name)
            if held is not None:
                caught_up = s.acked_seq >= last_seq
                lag.add_metric([name], 0 if caught_up else held.batches)
                lag_readings.add_metric([name], 0 if caught_up else held.readings)
                age = 0.0 if caught_up or held.oldest_created is None else max(0.0, now - held.oldest_created)
                oldest.add_metric([name], age)
        yield from (state, acked, connects, batches, readings, parked, lag, lag_readings, oldest)

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


class MetricsServer:
    """The HTTP endpoint: ``/metrics`` on ``host:port``, in a thread of prometheus-client's."""

    def __init__(self, collector: Collector, host: str, port: int) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(collector)
        self.host, self.port = host, port
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> bool:
        """Listen; False (logged) when the address is taken: metrics are not worth losing data over."""
        try:
            self._server, self._thread = start_http_server(self.port, self.host, registry=self.registry)
        except OSError as exc:
            log.event("metrics_unavailable").error(
                "metrics: cannot listen on %s:%d (%s); running without metrics",
                self.host,
                self.port,
                exc.strerror or exc,
            )
            return False
        log.event("metrics_listening").info("metrics on http://%s:%d/metrics", self.host, self.port)
        return True

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
