"""The :class:`Reading`: one measured value of one quantity of one device at one time; the
:class:`Record`: a reading as the pipeline and the buffer hold it."""

from __future__ import annotations

import enum
import functools
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import NamedTuple

Value = float | int | bool | str


class Flag(enum.IntFlag):
    """Conditions a consumer must know about to read a value right (sent as SenML ``flags``)."""

    NONE = 0
    CLOCK_UNSYNCED = 1  # time came from a clock that was not yet synchronised
    COUNTER_ROLLOVER = 2  # a cumulative counter wrapped or was reset before this value
    PARTIAL = 4  # an aggregate over a window that was cut short


FLAG_NAMES: dict[Flag, str] = {
    Flag.CLOCK_UNSYNCED: "clock-unsynced",
    Flag.COUNTER_ROLLOVER: "counter-rollover",
    Flag.PARTIAL: "partial",
}


def flag_names(flags: int) -> list[str]:
    """The wire names of the flags set in ``flags``, in a fixed order."""
    return list(_flag_names(flags))


@functools.cache
def _flag_names(flags: int) -> tuple[str, ...]:
    # cached: it runs once per flagged record, and enum.IntFlag arithmetic is slow
    return tuple(name for flag, name in FLAG_NAMES.items() if flags & flag)


@dataclass(frozen=True, slots=True)
class Reading:
    """One value as a driver produced it.

    ``time`` is UTC seconds since the Unix epoch; ``unit`` is a SenML unit (RFC 8428 §12.1,
    RFC 8798) or ``""`` for unitless values; ``name`` comes from :mod:`citygw.vocabulary`.
    """

    device: str
    name: str
    value: Value
    unit: str
    time: float
    flags: int = 0


class Record(NamedTuple):
    """A reading as the pipeline and the buffer hold it, from intake to the sealed batch.

    The fields of a :class:`Reading`, in its order; ``flags`` is a plain int whose bits 0-15 are
    the public :class:`Flag` values and bits 16-30 the clock's boot tag
    (:mod:`citygw.pipeline.clock`), and whose bits from
    :data:`~citygw.wire.senml.WINDOW_SHIFT` up carry an aggregate's window length in milliseconds
    (:func:`~citygw.wire.senml.window_of`; 0 for a sample). Values JSON cannot carry (NaN,
    infinity) never become records (:func:`~citygw.wire.senml.records_of`).

    A named tuple: the pipeline makes hundreds of thousands a second and the buffer keeps tens of
    thousands in memory. On hot paths build one with ``tuple.__new__(Record, (...))``, which skips
    the Python-level ``__new__`` (half the cost). Unlike a plain tuple of strings and numbers, a
    named tuple stays tracked by the cycle collector: the daemon freezes its start-up heap so that
    full collections do not rescan it for them (:func:`citygw.daemon.gateway.settle_heap`). The
    buffer stores records on disk in its own
    column order (:data:`citygw.buffer.layout.STORED_COLUMNS`), not this one.
    """

    device: str
    name: str
    value: Value
    unit: str
    time: float  # UTC seconds since the Unix epoch
    flags: int


class Measurement(NamedTuple):
    """One decoded value: a quantity name (:mod:`citygw.vocabulary`), its value and SenML unit.

    A named tuple rather than a dataclass: decoders make millions of these, and a tuple is the
    cheapest immutable value Python has.
    """

    name: str
    value: Value
    unit: str


Sink = Callable[[list[Reading]], Awaitable[None]]
"""Where a bus hands its readings (the pipeline's ``put``)."""
