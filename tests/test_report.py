"""Edge processing (gateway.report): properties over random sample streams, then the edge cases.

Aggregates are checked against the same statistics computed directly from the samples; on-change
output against its contract (every value sent moved by more than the dead-band or is a heartbeat,
and no gap between values sent exceeds the heartbeat unless the samples themselves had one).
"""

from __future__ import annotations

import itertools
import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from citygw.pipeline.clock import ClockWatch
from citygw.pipeline.edge import (
    MAX_EMPTY_WINDOWS,
    Aggregate,
    DevicePolicy,
    OnChange,
    Reporter,
    Statistic,
)
from citygw.reading import Flag, Reading, Record
from citygw.receiver.verify import decode_pack
from citygw.wire.ngsi import entities
from citygw.wire.senml import WINDOW_SHIFT, build_pack, record_of, window_flags, window_of

T0 = 1_790_035_200.0  # a UTC midnight: every window starts here
ALL = tuple(Statistic)


@dataclass(frozen=True)
class Out:
    """A record the stage made (an aggregate), read back."""

    device: str
    name: str
    value: Any
    unit: str
    time: float
    flags: int  # without the window bits
    window: float


class Stage:
    """The reporter as the pipeline drives it (stored records in and out), spoken to in readings:
    a sample passed through comes back as the very reading handed in."""

    def __init__(self, policies: Mapping[str, DevicePolicy], *, started: float) -> None:
        self.reporter = Reporter(policies, started=started)
        self.counters = self.reporter.counters
        self._origin: dict[int, tuple[Record, Reading]] = {}

    def _records(self, readings: Sequence[Reading]) -> list[Record]:
        records = []
        for reading in readings:
            record = record_of(reading)
            assert record is not None
            self._origin[id(record)] = (record, reading)
            records.append(record)
        return records

    def _readings(self, records: list[Record]) -> list[Any]:
        return [
            self._origin[id(r)][1]
            if id(r) in self._origin
            else Out(
                r.device,
                r.name,
                r.value,
                r.unit,
                r.time,
                r.flags & ((1 << WINDOW_SHIFT) - 1),
                window_of(r.flags),
            )
            for r in records
        ]

    def process(self, readings: Sequence[Reading]) -> list[Any]:
        return self._readings(self.reporter.process(self._records(readings)))

    def due(self, now: float) -> list[Any]:
        return self._readings(self.reporter.due(now))

    def flush(self, now: float) -> list[Any]:
        return self._readings(self.reporter.flush(now))


def chunks(readings: Sequence[Reading], sizes: Sequence[int]) -> list[list[Reading]]:
    """``readings`` cut as drivers hand them over: polls of a few readings each."""
    out, index = [], 0
    for size in sizes:
        if index >= len(readings):
            break
        out.append(list(readings[index : index + size]))
        index += size
    if index < len(readings):
        out.append(list(readings[index:]))
    return out


def run(
    reporter: Stage, readings: Sequence[Reading], sizes: Sequence[int] = (3,), *, end: float
) -> list[Any]:
    out: list[Any] = []
    for poll in chunks(readings, list(sizes) * (len(readings) + 1)):
        out.extend(reporter.process(poll))
    out.extend(reporter.flush(end))
    return out


def by_window(records: list[Out]) -> dict[float, dict[str, Out]]:
    windows: dict[float, dict[str, Out]] = defaultdict(dict)
    for record in records:
        statistic = record.name.rpartition("/")[2]
        assert statistic not in windows[record.time], f"two {statistic} records for window {record.time}"
        windows[record.time][statistic] = record
    return windows


# -- properties ------------------------------------------------------------------------------

samples_st = st.lists(
    st.tuples(
        st.floats(min_value=0.0, max_value=30.0, allow_nan=False),  # gap to the previous sample
        st.one_of(st.integers(-1000, 1000), st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False)),
    ),
    min_size=1,
    max_size=300,
)


@settings(max_examples=300, deadline=None)
@given(
    samples=samples_st,
    window=st.sampled_from([1.0, 5.0, 10.0, 60.0, 900.0]),
    statistics=st.lists(st.sampled_from(ALL), min_size=1, max_size=6, unique=True),
    sizes=st.lists(st.integers(1, 7), min_size=1, max_size=5),
    offset=st.floats(0, 1000),
)
def test_aggregates_equal_the_statistics_computed_directly(
    samples: list[tuple[float, float]],
    window: float,
    statistics: list[Statistic],
    sizes: list[int],
    offset: float,
) -> None:
    start = T0 + offset
    times, now = [], start
    for gap, _ in samples:
        now += gap
        times.append(now)
    readings = [Reading("d", "pm25", value, "ug/m3", t) for t, (_, value) in zip(times, samples, strict=True)]
    policy = DevicePolicy(Aggregate(window, tuple(statistics)))
    reporter = Stage({"d": policy}, started=start)
    out = run(reporter, readings, sizes, end=times[-1])

    expected: dict[float, list[float]] = defaultdict(list)
    for reading in readings:
        expected[math.floor(reading.time / window) * window].append(reading.value)  # type: ignore[arg-type]
    first, last = min(expected), max(expected)
    windows = by_window(out)
    assert sorted(windows) == [first + i * window for i in range(round((last - first) / window) + 1)]
    for begin, records in windows.items():
        values = expected.get(begin, [])
        for record in records.values():
            assert record.window == window and record.device == "d"
            assert record.name.startswith("pm25/")
            partial = (begin == first and start > begin) or begin == last
            assert bool(record.flags & Flag.PARTIAL) == partial, (begin, record)
        if not values:  # an empty window says so, and nothing else
            assert list(records) == ["count"] and records["count"].value == 0
            continue
        assert list(records) == [s.value for s in statistics]
        direct = {
            "mean": math.fsum(values) / len(values),
            "min": min(values),
            "max": max(values),
            "last": values[-1],
            "count": len(values),
            "sum": math.fsum(values),
        }
        for name, record in records.items():
            assert record.value == pytest.approx(direct[name], rel=1e-9, abs=1e-6), name
            assert record.unit == ("count" if name == "count" else "ug/m3")


@settings(max_examples=200, deadline=None)
@given(
    steps=st.lists(
        st.tuples(st.floats(0.1, 20.0), st.integers(0, 50), st.booleans()), min_size=1, max_size=200
    ),
    window=st.sampled_from([5.0, 60.0]),
)
def test_counters_aggregate_as_increments_never_counted_twice(
    steps: list[tuple[float, int, bool]], window: float
) -> None:
    """The windows' sums add up to the counter's rise, except across a reset (flagged)."""
    readings, now, value, rise = [], T0, 1000, 0
    for index, (gap, increment, reset) in enumerate(steps):
        now += gap
        if reset and index:
            value = increment  # the meter was reset; the driver flags the reading
            readings.append(Reading("m", "activeEnergyImport", value, "Wh", now, Flag.COUNTER_ROLLOVER))
            continue
        value += increment
        rise += increment if index else 0
        readings.append(Reading("m", "activeEnergyImport", value, "Wh", now))
    policy = DevicePolicy(Aggregate(window, (Statistic.COUNT,)), counters=frozenset({"activeEnergyImport"}))
    out = run(Stage({"m": policy}, started=T0), readings, end=now)
    sums = [r for r in out if r.name == "activeEnergyImport/sum"]
    assert sum(r.value for r in sums) == rise  # type: ignore[misc]
    assert sum(r.value for r in out if r.name.endswith("/count")) == len(readings)  # type: ignore[misc]
    flagged = {math.floor(r.time / window) * window for r in readings if r.flags & Flag.COUNTER_ROLLOVER}
    assert {r.time for r in sums if r.flags & Flag.COUNTER_ROLLOVER} == flagged & {r.time for r in sums}
    assert all(r.value >= 0 for r in sums)  # type: ignore[operator]


@settings(max_examples=300, deadline=None)
@given(
    samples=st.lists(
        st.tuples(st.floats(0.01, 40.0), st.floats(-100, 100, allow_nan=False)), min_size=1, max_size=300
    ),
    absolute=st.one_of(st.none(), st.floats(0, 20)),
    relative=st.one_of(st.none(), st.floats(0.001, 0.5)),
    heartbeat=st.floats(1.0, 60.0),
    sizes=st.lists(st.integers(1, 5), min_size=1, max_size=4),
)
def test_on_change_sends_moves_and_heartbeats_only_and_never_leaves_a_gap(
    samples: list[tuple[float, float]],
    absolute: float | None,
    relative: float | None,
    heartbeat: float,
    sizes: list[int],
) -> None:
    readings, now = [], T0
    for gap, value in samples:
        now += gap
        readings.append(Reading("d", "temperature", value, "Cel", now))
    policy = DevicePolicy(OnChange(heartbeat, absolute, relative))
    out = run(Stage({"d": policy}, started=T0), readings, sizes, end=now)

    assert out[0] is readings[0]
    assert all(r in readings for r in out)
    index = {id(r): i for i, r in enumerate(readings)}
    for previous, sent in itertools.pairwise(out):
        band = max(absolute or 0.0, (relative or 0.0) * abs(previous.value))  # type: ignore[arg-type]
        moved = abs(sent.value - previous.value) > band  # type: ignore[operator]
        i = index[id(sent)]
        nxt = readings[i + 1] if i + 1 < len(readings) else None
        heartbeat_due = sent.time - previous.time >= heartbeat or (
            nxt is not None and nxt.time - previous.time > heartbeat
        )
        assert moved or heartbeat_due, (previous, sent)
        if sent.time - previous.time > heartbeat:  # only where the device itself was silent that long
            assert index[id(sent)] == index[id(previous)] + 1
    # nothing that moved beyond the band is ever left unsent
    sent_ids = {id(r) for r in out}
    reference = out[0]
    for reading in readings[1:]:
        if id(reading) in sent_ids:
            reference = reading
            continue
        band = max(absolute or 0.0, (relative or 0.0) * abs(reference.value))  # type: ignore[arg-type]
        assert abs(reading.value - reference.value) <= band  # type: ignore[operator]


# -- cases -----------------------------------------------------------------------------------


def test_raw_is_the_default_and_readings_override_the_device() -> None:
    policy = DevicePolicy(
        Aggregate(60.0),
        readings={"rssi": None, "batteryLevel": OnChange(3600.0, absolute=1.0)},
    )
    reporter = Stage({"s": policy}, started=T0)
    polls = [
        [
            Reading("s", "temperature", 20.0 + i, "Cel", T0 + i),
            Reading("s", "rssi", -70 - i, "dBm", T0 + i),
            Reading("s", "batteryLevel", 90 - i * 0.1, "%", T0 + i),
            Reading("other", "temperature", 1.0, "Cel", T0 + i),
        ]
        for i in range(10)
    ]
    out = [r for poll in polls for r in reporter.process(poll)]
    assert [r.value for r in out if r.name == "rssi"] == [-70 - i for i in range(10)]
    assert [r.value for r in out if r.device == "other"] == [1.0] * 10
    assert [r.value for r in out if r.name == "batteryLevel"] == [90]  # never moved by more than 1
    open_window = [r for r in out if r.device == "s" and r.name.startswith("temperature")]
    assert open_window == []
    closed = reporter.flush(T0 + 60)
    assert [(r.name, r.value, r.time, r.window, r.flags) for r in closed] == [
        ("temperature/mean", 24.5, T0, 60.0, 0)
    ]


def test_a_silent_device_gets_count_zero_windows_from_the_clock_not_invented_values() -> None:
    reporter = Stage({"d": DevicePolicy(Aggregate(10.0, (Statistic.MEAN, Statistic.MAX)))}, started=T0)
    assert (
        reporter.process([Reading("d", "pm10", 5, "ug/m3", T0 + 1), Reading("d", "pm10", 7, "ug/m3", T0 + 2)])
        == []
    )
    assert reporter.due(T0 + 10 + 4.9) == []  # grace: a sample stamped in the window may still come
    first = reporter.due(T0 + 10 + 5.0)
    assert [(r.name, r.value, r.time) for r in first] == [("pm10/mean", 6, T0), ("pm10/max", 7, T0)]
    later = reporter.due(T0 + 45.0)
    assert [(r.name, r.value, r.time, r.unit) for r in later] == [
        ("pm10/count", 0, T0 + 10, "count"),
        ("pm10/count", 0, T0 + 20, "count"),
        ("pm10/count", 0, T0 + 30, "count"),
    ]
    assert reporter.due(T0 + 45.5) == []


def test_shutdown_flushes_open_windows_as_partial_and_restart_marks_its_first_window() -> None:
    policy = {"d": DevicePolicy(Aggregate(60.0, (Statistic.SUM, Statistic.COUNT)))}
    before = Stage(policy, started=T0)
    before.process([Reading("d", "intensity", n, "count", T0 + n) for n in range(1, 21)])
    partial = before.flush(T0 + 20.5)
    assert [(r.name, r.value, r.flags) for r in partial] == [
        ("intensity/sum", 210, Flag.PARTIAL),
        ("intensity/count", 20, Flag.PARTIAL),
    ]
    after = Stage(policy, started=T0 + 30)  # restarted within the same window
    out = after.process([Reading("d", "intensity", n, "count", T0 + n) for n in range(31, 61)])
    out += after.flush(T0 + 61)
    assert [(r.name, r.value, r.time, r.flags) for r in out] == [
        ("intensity/sum", sum(range(31, 60)), T0, Flag.PARTIAL),
        ("intensity/count", 29, T0, Flag.PARTIAL),
        ("intensity/sum", 60, T0 + 60, Flag.PARTIAL),
        ("intensity/count", 1, T0 + 60, Flag.PARTIAL),
    ]


def test_text_values_have_last_and_count_only() -> None:
    reporter = Stage({"g": DevicePolicy(Aggregate(60.0, ALL))}, started=T0)
    reporter.process([Reading("g", "fixQuality", q, "", T0 + i) for i, q in enumerate("aab")])
    out = reporter.flush(T0 + 60)
    assert [(r.name, r.value) for r in out] == [("fixQuality/last", "b"), ("fixQuality/count", 3)]


def test_booleans_average_to_the_fraction_of_the_time_true() -> None:
    reporter = Stage({"p": DevicePolicy(Aggregate(60.0, (Statistic.MEAN, Statistic.MAX)))}, started=T0)
    reporter.process(
        [Reading("p", "occupancy", b, "", T0 + i) for i, b in enumerate([True, False, True, True])]
    )
    assert [(r.name, r.value) for r in reporter.flush(T0 + 60)] == [
        ("occupancy/mean", 0.75),
        ("occupancy/max", True),
    ]


def test_on_change_text_sends_every_change() -> None:
    reporter = Stage({"d": DevicePolicy(OnChange(3600.0))}, started=T0)
    out = reporter.process([Reading("d", "parkingStatus", s, "", T0 + i) for i, s in enumerate("ffoooff")])
    assert [(r.value, r.time - T0) for r in out] == [("f", 0), ("o", 2), ("f", 5)]


def test_clock_jumps_neither_flood_nor_lose_samples() -> None:
    reporter = Stage({"d": DevicePolicy(Aggregate(1.0, (Statistic.COUNT,)))}, started=T0)
    reporter.process([Reading("d", "co2", 400, "ppm", T0)])
    jumped = reporter.process([Reading("d", "co2", 410, "ppm", T0 + 10 * MAX_EMPTY_WINDOWS)])
    assert [(r.name, r.value) for r in jumped] == [("co2/count", 1)]  # no thousands of empty windows
    assert reporter.counters.skipped_windows == 10 * MAX_EMPTY_WINDOWS - 1
    back = reporter.process([Reading("d", "co2", 420, "ppm", T0 + 5)])  # stepped back by hours
    assert [(r.name, r.value, r.flags) for r in back] == [("co2/count", 1, Flag.PARTIAL)]
    late = reporter.process(
        [Reading("d", "co2", 430, "ppm", T0 + 6), Reading("d", "co2", 440, "ppm", T0 + 5.5)]
    )
    assert reporter.counters.late == 1  # a little late: counted in the open window, not lost
    assert [(r.name, r.value, r.time) for r in late] == [("co2/count", 1, T0 + 5)]
    assert [(r.value, r.time) for r in reporter.flush(T0 + 6.5)] == [(2, T0 + 6)]


def test_an_aggregate_is_a_signed_senml_record_with_its_window() -> None:
    sample = record_of(Reading("air-1", "pm25", 12, "ug/m3", T0 + 3))
    assert sample is not None
    mean = Record("air-1", "pm25/mean", 11.5, "ug/m3", T0, Flag.PARTIAL | window_flags(900.0))
    tiny = Record("air-1", "pm25/count", 0, "count", T0 + 900, window_flags(0.5))
    stored: list[Record] = [sample, mean, tiny]
    assert [window_of(r.flags) for r in stored] == [0.0, 900.0, 0.5]
    pack = build_pack("gw", stored)
    assert pack[0] == {
        "bver": 26,  # ug/m3 is a secondary unit (RFC 8798 §3, RFC 9100 §4)
        "bn": "gw/air-1/",
        "bt": T0,
        "n": "pm25/mean",
        "u": "ug/m3",
        "v": 11.5,
        "flags": "partial",
        "window": 900,
    }
    assert pack[1] == {"n": "pm25", "u": "ug/m3", "v": 12, "t": 3.0}
    assert pack[2] == {"n": "pm25/count", "u": "count", "v": 0, "t": 900.0, "window": 0.5}
    assert [name for name, *_ in decode_pack(pack)] == [
        "gw/air-1/pm25/mean",
        "gw/air-1/pm25",
        "gw/air-1/pm25/count",
    ]


def test_records_stored_before_windows_existed_still_read_as_samples() -> None:
    old = Record("dev", "temperature", 21.5, "Cel", T0, int(Flag.CLOCK_UNSYNCED) | 3 << 16)
    assert window_of(old.flags) == 0.0
    assert build_pack("gw", [old])[0] == {
        "bn": "gw/dev/",
        "bt": T0,
        "n": "temperature",
        "u": "Cel",
        "v": 21.5,
        "flags": "clock-unsynced",
    }


def test_ngsi_keeps_aggregates_apart_from_the_live_attribute() -> None:
    records: list[Record] = [
        Record("m", "voltage:l1/mean", 230.1, "V", T0, window_flags(60.0)),
        Record("m", "voltage:l1", 230.4, "V", T0 + 61, 0),
    ]
    pack = build_pack("gw", records)
    meter, mean = entities({"gateway": "gw", "senml": pack}, source="s", context=["c"])
    assert meter["phaseVoltage"]["value"] == {"L1": 230.4}
    assert mean["type"] == "DeviceMeasurement" and mean["controlledProperty"]["value"] == "voltage:l1/mean"
    assert mean["numValue"]["value"] == 230.1


def test_windows_sampled_before_the_clock_synced_are_corrected_like_their_samples() -> None:
    """Booted with an old saved time: windows open on that timeline; the sync ends the open one
    (partial, no empty windows for the jump), and every aggregate made before the sync carries the
    clock's flags, so the same fix that moves the samples moves it onto the true timeline."""
    start = 1_599_999_960.0  # a multiple of 60: the saved time, a year behind
    wall = [start]
    mono = [100.0]
    synced = [False]
    watch = ClockWatch(lambda: synced[0], wall=lambda: wall[0], mono=lambda: mono[0], tag=0x77 << 16)
    reporter = Reporter({"d": DevicePolicy(Aggregate(60.0, (Statistic.MEAN,)))}, started=wall[0])

    def poll(value: float) -> list[Record]:
        stamped = watch.stamp([Record("d", "pm25", value, "ug/m3", wall[0], 0)])
        return reporter.process(stamped)

    out: list[Record] = []
    for second in range(90):  # a whole window and half the next, unsynced
        out += poll(10.0 + (second >= 60))
        wall[0] += 1
        mono[0] += 1
    assert [(r.name, r.value, r.time) for r in out] == [("pm25/mean", 10.0, start)]
    assert out[0].flags & ~window_flags(60.0) == int(Flag.CLOCK_UNSYNCED) | 0x77 << 16
    step = 31_536_000.0 + 17.5  # NTP: a year and some seconds forward
    wall[0] += step
    synced[0] = True
    fix = watch.check()
    assert fix is not None
    after = poll(20.0)  # the first sample on the true timeline
    assert [(r.name, r.value, r.time, r.flags & 0xFFFF) for r in after] == [
        ("pm25/mean", 11.0, start + 60, int(Flag.CLOCK_UNSYNCED | Flag.PARTIAL))
    ]
    assert reporter.counters.skipped_windows == 0  # the jump is no run of empty windows
    corrected = [fix(r) for r in out + after]
    assert [(r.time, r.flags & 0xFFFF) for r in corrected] == [
        (start + step, 0),
        (start + 60 + step, int(Flag.PARTIAL)),
    ]
    assert [window_of(r.flags) for r in corrected] == [60.0, 60.0]


def test_on_change_sends_when_the_clock_changes_or_goes_back() -> None:
    reporter = Reporter({"d": DevicePolicy(OnChange(600.0, absolute=5.0))}, started=T0)
    first = Record("d", "noiseLevel", 50.0, "dB", T0, int(Flag.CLOCK_UNSYNCED))
    same = Record("d", "noiseLevel", 50.5, "dB", T0 + 1, int(Flag.CLOCK_UNSYNCED))
    synced = Record("d", "noiseLevel", 51.0, "dB", T0 + 86400, 0)
    back = Record("d", "noiseLevel", 51.0, "dB", T0 + 86000, 0)
    assert reporter.process([first, same, synced, back]) == [first, synced, back]
