"""Responses in, readings out: the pure half of a Modbus device.

:func:`decode_response` turns the registers (or bits) of one response into readings, given the
time the response arrived and the device's :class:`Counters`. No I/O, no clock, no logging.

Cumulative counters (``counter: true``: energy, pulses, running hours) are sent as the device's
own cumulative reading, never as a difference, so nothing is ever negative. When a counter goes
down, the reading carries :attr:`~citygw.reading.Flag.COUNTER_ROLLOVER`: the counter either
wrapped past its type's maximum (the previous value was in the top quarter of the type's range
and the new one in the bottom quarter) or the meter was reset or replaced. A consumer that
computes consumption as the difference of successive readings must not subtract across a
flagged reading: the flagged reading starts a new series.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass, field

from citygw.drivers.modbus.plan import Request
from citygw.drivers.modbus.registers import NUMERIC, DataType, Field, decode_field, int_range
from citygw.errors import DecodeError, Reason
from citygw.reading import Flag, Reading


class CounterEvent(enum.Enum):
    NONE = "none"
    ROLLOVER = "rollover"  # wrapped past the type's maximum
    RESET = "reset"  # went down otherwise: the meter was reset or replaced


@dataclass(slots=True)
class Counters:
    """The last raw value of each cumulative counter of one device, and what happened to them."""

    last: dict[str, int | float] = field(default_factory=dict)
    rollovers: int = 0
    resets: int = 0

    def observe(self, spec: Field, raw: int | float) -> CounterEvent:
        """Record ``raw`` as the counter's latest value; say whether it went down since the last one."""
        previous = self.last.get(spec.name)
        self.last[spec.name] = raw
        if previous is None or raw >= previous:
            return CounterEvent.NONE
        if spec.type in NUMERIC and spec.type not in (DataType.F32, DataType.F64):
            low, high = int_range(spec.type)
            quarter = (high - low) // 4
            if previous >= high - quarter and raw <= low + quarter:
                self.rollovers += 1
                return CounterEvent.ROLLOVER
        self.resets += 1
        return CounterEvent.RESET


@dataclass(frozen=True, slots=True)
class DecodedResponse:
    """What one response gave: the readings of the fields that decoded, an error per field that
    did not, and the counters that went down."""

    readings: list[Reading]
    errors: list[DecodeError]
    events: list[tuple[str, CounterEvent]]  # counters that went down: (reading name, what happened)


def decode_response(
    request: Request,
    data: Sequence[int] | Sequence[bool],
    *,
    device: str,
    time: float,
    counters: Counters,
) -> DecodedResponse:
    """The readings of every field of ``request`` in ``data`` (the response's registers or bits,
    first address first). A field that does not decode is reported in ``errors``; the others
    still give their readings."""
    if len(data) < request.count:
        error = DecodeError(
            Reason.DECODE, f"{request.describe()}: the response has {len(data)} values, not {request.count}"
        )
        return DecodedResponse([], [error], [])
    readings: list[Reading] = []
    errors: list[DecodeError] = []
    events: list[tuple[str, CounterEvent]] = []
    start = request.address
    for spec in request.fields:
        try:
            value, raw = decode_field(spec, data[spec.address - start : spec.end - start])
        except DecodeError as exc:
            errors.append(exc)
            continue
        flags = 0
        if raw is not None:
            event = counters.observe(spec, raw)
            if event is not CounterEvent.NONE:
                flags = Flag.COUNTER_ROLLOVER
                events.append((spec.name, event))
        readings.append(Reading(device, spec.name, value, spec.unit, time, flags))
    return DecodedResponse(readings, errors, events)
