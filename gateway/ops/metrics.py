"""Prometheus metrics of the running gateway, served over HTTP on loopback (prometheus-client).

Nothing is counted twice: a custom collector serves the counters the daemon keeps anyway (device
health, pipeline counters, uplink status, the clock) and the buffer report the daemon refreshes
every few seconds on the buffer's own thread. The scrape runs in prometheus-client's HTTP thread,
so it never reads the event loop's live objects and never touches SQLite: it serves a
:class:`~citygw.ops.figures.Figures` snapshot the loop took for it (:mod:`citygw.ops.figures`:
fresh when the loop answers within half a second, else the last one, and
``citygw_snapshot_timestamp_seconds`` says when it was taken), the histograms (thread-safe) and
the watchdog's view of the loop. No metric carries a secret: labels are config ids and fixed words.

Metric names, for dashboards and alerts (docs/operations.md lists them all and suggests alert
rules). Prometheus conventions: a moment is a ``*_timestamp_seconds`` (UTC epoch seconds; the
alert computes ``time() - x``), never an age that is stale as soon as it is scraped, and absent
when there is no such moment; a counter is present at 0 for every label value known in advance
(``citygw_device_errors_total`` for each reason the device's driver counts).

================================================================ =========================================
``citygw_info{gateway,version}``                                 1
``citygw_snapshot_timestamp_seconds``                            when the loop took the figures served
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
import os
import threading
import time
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from citygw import __version__
from citygw.backoff import Backoff
from citygw.drivers.health import DeviceState
from citygw.logs import EventLog
from citygw.uplinks.base import UplinkState

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer

    from citygw.drivers.health import DeviceHealth
    from citygw.ops.figures import Figures, FiguresFeed
    from citygw.ops.watchdog import Watchdog

log = EventLog(__name__)

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


# seconds: a loopback broker answers in a millisecond, a cellular link in a few hundred
PUBACK_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
# seconds: an RTU read of a few registers at 9600 baud takes 20-50 ms, a TCP one a millisecond
MODBUS_BUCKETS = (0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class Timings:
    """The histograms, fed as things happen by hooks in the Modbus poller and the MQTT uplink
    (prometheus-client's own histograms, thread-safe, outside any registry: the collector yields
    them). One per gateway (:class:`citygw.ops.operations.Operations` makes it and hooks each
    uplink and device into it, the daemon those a reload brings)."""

    def __init__(self) -> None:
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

    def watch_uplink(self, uplink: Any) -> None:
        """PUBACK round trips of an uplink that reports them (MQTT: ``on_puback``)."""
        if hasattr(uplink, "on_puback"):
            uplink.on_puback = self.puback.labels(uplink=uplink.name).observe

    def watch_device(self, health: DeviceHealth, bus_type: str) -> None:
        """Answered transactions of a device on a Modbus bus."""
        if bus_type.startswith("modbus"):
            health.observe_transaction = self.transaction.labels(device=health.device).observe

    def collect(self) -> Iterator[Metric]:
        yield from self.puback.collect()
        yield from self.transaction.collect()


class GatewayCollector(Collector):
    """Serves one gateway's figures: a :class:`~citygw.ops.figures.Figures` snapshot the event
    loop took (never the loop's live objects), the histograms, and what the watchdog sees."""

    def __init__(self, feed: FiguresFeed, timings: Timings, watchdog: Watchdog) -> None:
        self.feed = feed
        self.timings = timings
        self.watchdog = watchdog
        self.started = time.time()

    def collect(self) -> Iterable[Metric]:
        figures = self.feed.current()
        yield from self._process(figures)
        yield from self._devices(figures)
        yield from self._pipeline(figures)
        yield from self._buffer(figures)
        yield from self._uplinks(figures)
        yield from self._clock(figures)
        yield from self.timings.collect()

    def _process(self, figures: Figures) -> Iterator[Metric]:
        info = GaugeMetricFamily(
            "citygw_info", "The gateway and citygw version.", labels=["gateway", "version"]
        )
        info.add_metric([figures.gateway, __version__], 1)
        yield info
        yield GaugeMetricFamily(
            "citygw_snapshot_timestamp_seconds",
            "When the event loop took the figures served here, UTC epoch seconds (older than the "
            f"scrape when the loop did not answer within {self.feed.wait:g} s: the last ones are served).",
            value=time.time() - max(0.0, time.monotonic() - figures.taken),
        )
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

    def _devices(self, figures: Figures) -> Iterator[Metric]:
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
        for h in figures.devices:
            readings.add_metric([h.device], h.readings)
            frames.add_metric([h.device], h.frames)
            for reason, count in h.errors:
                errors.add_metric([h.device, reason], count)
            for s in DeviceState:
                state.add_metric([h.device, s.value], 1 if h.state is s else 0)
            if h.last_seen is not None:
                seen.add_metric([h.device], wall - max(0.0, now - h.last_seen))
        yield from (readings, frames, errors, state, seen)

    def _pipeline(self, figures: Figures) -> Iterator[Metric]:
        c = figures.pipeline
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

    def _buffer(self, figures: Figures) -> Iterator[Metric]:
        buffer = figures.buffer
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
        report = figures.report
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

    def _uplinks(self, figures: Figures) -> Iterator[Metric]:
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
        report = figures.report
        lags = {u.name: u for u in report.uplinks} if report is not None else {}
        last_seq = figures.buffer.last_seq
        for s in figures.uplinks:
            name = s.name
            for value in UplinkState:
                state.add_metric([name, value.value], 1 if s.state is value else 0)
            acked.add_metric([name], s.acked_seq)
            connects.add_metric([name], s.connects)
            batches.add_metric([name], s.delivered_batches)
            readings.add_metric([name], s.delivered_readings)
            parked.add_metric([name], s.parked)
            for reason, count in s.failures:
                failures.add_metric([name, reason], count)
            held = lags.get(name)
            if held is not None:
                caught_up = s.acked_seq >= last_seq
                lag.add_metric([name], 0 if caught_up else held.batches)
                lag_readings.add_metric([name], 0 if caught_up else held.readings)
                if not caught_up and held.oldest_created is not None:
                    oldest.add_metric([name], held.oldest_created)
        yield from (state, acked, connects, failures, batches, readings, parked, lag, lag_readings, oldest)

    def _clock(self, figures: Figures) -> Iterator[Metric]:
        clock, watchdog = figures.clock, self.watchdog
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
