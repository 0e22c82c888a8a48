"""Edge processing: which readings are sent, before anything is written to the buffer (pure).

A device, and each reading name within it, is reported one of three ways (:class:`Policy`):

- **raw** (``None``, the default): every sample;
- **on change** (:class:`OnChange`): a sample is sent when it moved by more than the dead-band
  since the last value sent, or when the last value sent is ``heartbeat`` old. A dead-band is
  ``absolute`` (in the reading's unit) and/or ``relative`` (a fraction of the last value sent);
  with both, the move must exceed both. No dead-band: any change is sent. So that no gap between
  values sent exceeds the heartbeat, the latest unsent sample is held, and sent (as the heartbeat)
  when the next sample would come too late; a longer gap means the device itself fell silent;
- **aggregate** (:class:`Aggregate`): one record per statistic per window. Windows are aligned to
  the clock (multiples of ``window`` seconds since the epoch: a 15-minute window starts at :00,
  :15, :30, :45). A record's time is its window's start and it carries the window length
  (``window`` on the wire, :func:`citygw.wire.senml.window_of`); its name is
  ``{reading}/{statistic}`` (``pm25/mean``). A window that saw no sample is reported as
  ``{reading}/count`` = 0, nothing else. A counter
  (``counter: true``) is aggregated as its increments between successive samples, so ``sum`` is
  how much it went up within the window and is always reported: successive windows never count
  the same increment twice. A sample flagged ``counter-rollover`` starts the counter again: the
  step across it is not counted and the window's records carry the flag. Text values only have
  ``last`` and ``count``.

The first window after start and the windows still open at shutdown (:meth:`Reporter.flush`) are
flagged :attr:`Flag.PARTIAL`: each holds only part of its window's samples, and together with the
other part (before a restart, after it) they hold them all.

:class:`Reporter` works on stored records (:class:`citygw.reading.Record`) as the pipeline holds
them, after the clock's stamp: an aggregate carries the clock flags of its samples (so the times
of windows sampled before the clock synchronised are corrected, or flagged, like theirs), and a
change of timeline (the clock synchronised) ends the open window as partial instead of reporting
the jump as empty windows. Values JSON cannot carry (NaN) never reach it. It keeps one small
state per (device, reading), does no I/O and reads no clock: the caller passes the time to
:meth:`Reporter.due` (windows that ended without a sample closing them) and :meth:`Reporter.flush`.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping
from dataclasses import dataclass, field

from citygw.reading import Flag, Record, Value
from citygw.wire.senml import WINDOW_SHIFT, window_flags

# flags that say which timeline a time is on (gateway.clock: unsynced, and the boot); a change of
# timeline ends a window and restarts on-change comparisons
_TIMELINE = ((1 << WINDOW_SHIFT) - 1) & ~int(Flag.COUNTER_ROLLOVER | Flag.PARTIAL)
_ROLLOVER = int(Flag.COUNTER_ROLLOVER)
_PARTIAL = int(Flag.PARTIAL)

MAX_EMPTY_WINDOWS = 1000
"""Empty windows reported at once at most: a clock that jumps by years must not flood the buffer."""
LATE_GRACE = 5.0
"""Seconds a window stays open after its end for a sample stamped inside it (at most the window)."""


class Statistic(enum.StrEnum):
    MEAN = "mean"
    MIN = "min"
    MAX = "max"
    LAST = "last"
    COUNT = "count"
    SUM = "sum"


NUMERIC_STATISTICS = frozenset({Statistic.MEAN, Statistic.MIN, Statistic.MAX, Statistic.SUM})
COUNT_UNIT = "count"  # RFC 8428 §12.1


@dataclass(frozen=True, slots=True)
class OnChange:
    """Send on a move of more than the dead-band, and at least every ``heartbeat`` seconds."""

    heartbeat: float
    absolute: float | None = None
    relative: float | None = None  # a fraction: 0.05 is 5 %


@dataclass(frozen=True, slots=True)
class Aggregate:
    """Statistics over clock-aligned windows of ``window`` seconds."""

    window: float
    statistics: tuple[Statistic, ...] = (Statistic.MEAN,)


Policy = OnChange | Aggregate | None
"""How one reading is reported; None is raw: every sample."""


@dataclass(frozen=True, slots=True)
class DevicePolicy:
    """A device's policy, its per-reading overrides and the names of its cumulative counters."""

    default: Policy = None
    readings: Mapping[str, Policy] = field(default_factory=dict)
    counters: frozenset[str] = frozenset()

    def policy_of(self, name: str) -> Policy:
        return self.readings.get(name, self.default)


@dataclass(slots=True)
class ReportCounters:
    samples: int = 0  # readings handed in
    sent: int = 0  # readings and aggregate records handed on
    late: int = 0  # samples stamped in a window already closed: counted in the open one
    skipped_windows: int = 0  # empty windows not reported after a jump of the clock


class _OnChangeState:
    __slots__ = (
        "absolute",
        "counters",
        "heartbeat",
        "held",
        "relative",
        "sent",
        "sent_flags",
        "sent_time",
        "sent_value",
    )

    def __init__(self, policy: OnChange, counters: ReportCounters) -> None:
        self.heartbeat = policy.heartbeat
        self.absolute = policy.absolute or 0.0
        self.relative = policy.relative or 0.0
        self.sent: Record | None = None
        # the sent record's fields, kept in slots: read for every sample, cheaper than from the record
        self.sent_value: Value = 0
        self.sent_time = 0.0
        self.sent_flags = 0
        self.held: Record | None = None
        self.counters = counters

    def moved(self, value: Value, ref: Value) -> bool:
        if value.__class__ is str or ref.__class__ is str or value.__class__ is bool:
            return value != ref
        try:
            delta = abs(value - ref)  # type: ignore[operator]
        except TypeError:
            return value != ref
        band = self.absolute
        if self.relative:
            band = max(band, self.relative * abs(ref))  # type: ignore[arg-type]
        return bool(delta > band)

    def feed(self, record: Record, value: Value, when: float, flags: int, out: list[Record]) -> None:
        """``value``, ``when`` and ``flags`` are ``record``'s (the caller read them already)."""
        if self.sent is None or (flags ^ self.sent_flags) & _TIMELINE:  # the first, or the clock changed
            out.append(record)
            self.sent, self.sent_value, self.sent_time, self.sent_flags = record, value, when, flags
            self.held = None
            return
        gap = when - self.sent_time
        held = self.held
        if held is not None:
            self.held = None
            if gap > self.heartbeat:
                out.append(held)  # the heartbeat: this sample would come too late for it
                self.sent, self.sent_value, self.sent_time, self.sent_flags = (
                    held,
                    held.value,
                    held.time,
                    held.flags,
                )
                gap = when - held.time
        ref = self.sent_value
        if (value.__class__ is float or value.__class__ is int) and (
            ref.__class__ is float or ref.__class__ is int
        ):  # the common case, inline: |value - ref| > max(absolute, relative * |ref|)
            delta = value - ref
            band = self.absolute
            if self.relative:
                band = max(band, self.relative * (ref if ref >= 0 else -ref))
            moved = delta > band or -delta > band
        else:
            moved = self.moved(value, ref)
        if moved or gap >= self.heartbeat or gap < 0:  # gap < 0: the clock went back
            out.append(record)
            self.sent, self.sent_value, self.sent_time, self.sent_flags = record, value, when, flags
        else:
            self.held = record


class _WindowState:
    """One reading's open window and its running statistics."""

    __slots__ = (
        "count",
        "counter",
        "counters",
        "device",
        "end",
        "flags",
        "grace",
        "high",
        "last",
        "length",
        "low",
        "name",
        "numbers",
        "partial",
        "previous",
        "start",
        "statistics",
        "timeline",
        "total",
        "unit",
        "window_bits",
    )

    def __init__(
        self, record: Record, policy: Aggregate, *, counter: bool, started: float, counters: ReportCounters
    ) -> None:
        self.device, self.name, self.unit = record.device, record.name, record.unit
        self.length = policy.window
        self.window_bits = window_flags(policy.window)
        self.statistics = policy.statistics
        if counter and Statistic.SUM not in self.statistics:
            self.statistics = (*self.statistics, Statistic.SUM)
        self.counter = counter
        self.grace = min(LATE_GRACE, self.length)
        self.counters = counters
        self.previous: Value | None = None  # a counter's last cumulative value
        self.timeline = record.flags & _TIMELINE
        self.start = math.floor(record.time / self.length) * self.length
        self.end = self.start + self.length
        self.partial = started > self.start
        self._reset()

    def _reset(self) -> None:
        self.count = 0  # samples in the window
        self.numbers = 0  # values in the numeric statistics (a counter's increments)
        self.total: float | int = 0
        self.low: Value = 0
        self.high: Value = 0
        self.last: Value | None = None
        self.flags = 0

    def _restart(self, when: float, out: list[Record]) -> None:
        """Close the open window as partial and open the one holding ``when`` (no empty ones between)."""
        self.close(out, partial=True)
        self.start = math.floor(when / self.length) * self.length
        self.end = self.start + self.length
        self.partial = True
        self._reset()

    def feed(self, record: Record, value: Value, when: float, flags: int, out: list[Record]) -> None:
        """``value``, ``when`` and ``flags`` are ``record``'s (the caller read them already)."""
        if (flags & _TIMELINE) != self.timeline:  # the clock was synchronised (or lost): a new timeline
            self.timeline = flags & _TIMELINE
            self.previous = None
            self._restart(when, out)
        elif when >= self.end:
            self.advance(when, out)
        elif when < self.start:
            if self.start - when > self.grace:  # the clock stepped back: start again there
                self._restart(when, out)
            else:
                self.counters.late += 1
        self.count += 1
        self.flags |= flags
        if self.counter:
            previous, self.previous = self.previous, value
            if flags & _ROLLOVER or previous is None:
                return
            try:
                value = value - previous  # type: ignore[operator]
            except TypeError:
                return
            if value < 0:  # went down without the driver's flag: not an increment either
                self.flags |= _ROLLOVER
                return
        elif value.__class__ is str:
            self.last = value
            return
        self.last = value
        try:
            if self.numbers:
                self.total += value  # type: ignore[operator]
                if value < self.low:  # type: ignore[operator]
                    self.low = value
                elif value > self.high:  # type: ignore[operator]
                    self.high = value
            else:
                self.total = value + 0  # type: ignore[operator]  # a bool becomes an int
                self.low = self.high = value
            self.numbers += 1
        except TypeError:
            pass

    def advance(self, when: float, out: list[Record]) -> None:
        """Close the open window and any empty ones up to the window holding ``when``."""
        self.close(out, partial=self.partial)
        self.partial = False
        start = math.floor(when / self.length) * self.length
        empty = round((start - self.end) / self.length)
        if empty > MAX_EMPTY_WINDOWS:
            self.counters.skipped_windows += empty
        elif empty > 0:
            for index in range(empty):
                out.append(self._record(Statistic.COUNT, 0, self.end + index * self.length, self.timeline))
        self.start, self.end = start, start + self.length
        self._reset()

    def close(self, out: list[Record], *, partial: bool) -> None:
        """The records of the open window."""
        flags = self.flags | (_PARTIAL if partial else 0)
        start = self.start
        if not self.count:
            out.append(self._record(Statistic.COUNT, 0, start, flags | self.timeline))
            return
        numbers = self.numbers
        for statistic in self.statistics:
            if statistic is Statistic.COUNT:
                out.append(self._record(statistic, self.count, start, flags))
            elif statistic is Statistic.LAST:
                if self.last is not None:
                    out.append(self._record(statistic, self.last, start, flags))
            elif not numbers:
                continue
            elif statistic is Statistic.MEAN:
                out.append(self._record(statistic, self.total / numbers, start, flags))
            elif statistic is Statistic.MIN:
                out.append(self._record(statistic, self.low, start, flags))
            elif statistic is Statistic.MAX:
                out.append(self._record(statistic, self.high, start, flags))
            else:
                out.append(self._record(statistic, self.total, start, flags))

    def _record(self, statistic: Statistic, value: Value, start: float, flags: int) -> Record:
        unit = COUNT_UNIT if statistic is Statistic.COUNT else self.unit
        if not self.counter:
            flags &= ~_ROLLOVER
        return tuple.__new__(
            Record, (self.device, f"{self.name}/{statistic}", value, unit, start, flags | self.window_bits)
        )


class Reporter:
    """The processing stage: stored records of samples in, the records to store out."""

    def __init__(self, policies: Mapping[str, DevicePolicy], *, started: float) -> None:
        """``policies`` by device (a device not named is raw); ``started`` is when sampling began
        (UTC epoch seconds): the window holding it is partial."""
        self.policies = dict(policies)
        self.started = started
        self.counters = ReportCounters()
        self._states: dict[tuple[str, str], _OnChangeState | _WindowState | None] = {}
        self._windows: list[_WindowState] = []

    def process(self, records: list[Record]) -> list[Record]:
        """The records to store now, for ``records`` (one poll of a device, in time order)."""
        out: list[Record] = []
        states = self._states
        for record in records:
            # one unpack (by Record's field order) costs less than five reads by name
            device, name, value, _unit, when, flags = record
            try:
                state = states[device, name]
            except KeyError:
                state = states[device, name] = self._new_state(record)
            if state is None:
                out.append(record)
            else:
                state.feed(record, value, when, flags, out)
        self.counters.samples += len(records)
        self.counters.sent += len(out)
        return out

    def _new_state(self, record: Record) -> _OnChangeState | _WindowState | None:
        device = self.policies.get(record.device)
        if device is None:
            return None
        policy = device.policy_of(record.name)
        if policy is None:
            return None
        if isinstance(policy, OnChange):
            return _OnChangeState(policy, self.counters)
        state = _WindowState(
            record,
            policy,
            counter=record.name in device.counters,
            started=self.started,
            counters=self.counters,
        )
        self._windows.append(state)
        return state

    def due(self, now: float) -> list[Record]:
        """The records of windows that ended (a grace period ago) without a later sample closing them."""
        out: list[Record] = []
        for state in self._windows:
            if now - state.grace >= state.end:
                state.advance(now - state.grace, out)
        self.counters.sent += len(out)
        return out

    def flush(self, now: float) -> list[Record]:
        """At shutdown: the records of every window that saw a sample, flagged partial unless the
        window is over; after this the reporter starts afresh."""
        out: list[Record] = []
        for state in self._windows:
            if now >= state.end:
                state.advance(now, out)
            if state.count:  # a window just begun, with no sample yet, says nothing
                state.close(out, partial=True)
        self._windows.clear()
        self._states.clear()
        self.counters.sent += len(out)
        return out
