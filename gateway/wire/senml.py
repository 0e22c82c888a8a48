"""Readings as an RFC 8428 SenML pack: the body of every batch.

A batch's readings come as records (:class:`~citygw.reading.Record`, a named tuple: the buffer
keeps tens of thousands of them in memory and on disk, and the pack is built once per batch). The pack uses
``bn`` = ``"{gateway}/{device}/"`` (RFC 8428 §4.5.1: names resolve to
``gateway/device/quantity``), one ``bt`` on the first record and ``t`` relative to it, and
the value field that fits the type (``v``, ``vb``, ``vs``; §4.2). A pack whose units include a
secondary unit (``Wh``, ``ppm``, ``ug/m3``, … RFC 8798 §3) carries ``bver`` =
:data:`~citygw.vocabulary.SECONDARY_UNITS_VERSION` on its first record (RFC 9100 §4).

Flags travel in the extension field ``flags`` as one string, the flag names joined by ``,``
(``"clock-unsynced,counter-rollover"``): RFC 8428 §11 allows only numbers, strings, booleans and
data as field values, so not a list. A string also lets a later base field state them once per
run of records.

An aggregate's window length (:mod:`citygw.pipeline.edge`) travels in the record's flags, above bit
:data:`WINDOW_SHIFT`, in milliseconds: records stored before aggregates existed read as samples,
the stored format is unchanged, and :mod:`citygw.pipeline.clock`'s corrections (which keep every bit they
do not own) carry it along. On the wire it is the ``window`` field, in seconds.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from operator import attrgetter
from typing import Any

from citygw.reading import Reading, Record, flag_names
from citygw.vocabulary import SECONDARY_UNITS, SECONDARY_UNITS_VERSION

WINDOW_SHIFT = 32
"""Bits of a stored record's flags below this are flags (public 0-15, gateway.clock's 16-30);
the bits from here up hold an aggregate's window length in milliseconds."""

FLAG_SEPARATOR = ","
"""Between the flag names in a record's ``flags`` string."""

_by_time = attrgetter("time")


def record_of(reading: Reading) -> Record | None:
    """The stored form of a reading; None for a value JSON cannot carry (NaN, infinity)."""
    value = reading.value
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return Record(reading.device, reading.name, value, reading.unit, reading.time, reading.flags)


def records_of(readings: Iterable[Reading]) -> tuple[list[Record], int]:
    """The stored forms of ``readings`` (:func:`record_of` over many: the pipeline's intake, once
    per reading), and how many were refused (a value JSON cannot carry)."""
    new, isfinite = tuple.__new__, math.isfinite  # tuple.__new__: half the cost of Record(...)
    records: list[Record] = []
    refused = 0
    for reading in readings:
        value = reading.value
        if isinstance(value, float) and not isfinite(value):
            refused += 1
            continue
        records.append(
            new(Record, (reading.device, reading.name, value, reading.unit, reading.time, reading.flags))
        )
    return records, refused


def window_flags(seconds: float) -> int:
    """The bits that carry a window of ``seconds`` in a stored record's flags."""
    return round(seconds * 1000) << WINDOW_SHIFT


def window_of(flags: int) -> float:
    """The window length (seconds) a stored record's flags carry; 0 for a sample."""
    return (flags >> WINDOW_SHIFT) / 1000


def _seconds(millis: int) -> int | float:
    return millis // 1000 if millis % 1000 == 0 else millis / 1000


def build_pack(gateway: str, records: list[Record]) -> list[dict[str, Any]]:
    """The SenML pack for ``records``, ordered by time (a batch never goes back in time)."""
    ordered = sorted(records, key=_by_time)
    base_time = ordered[0].time
    pack: list[dict[str, Any]] = []
    last_device = None
    secondary = False
    for device, name, value, unit, when, flags in ordered:  # Record's field order
        rec: dict[str, Any] = {}
        if device != last_device:
            rec["bn"] = f"{gateway}/{device}/"
            last_device = device
        if not pack:
            rec["bt"] = base_time
        rec["n"] = name
        if unit:
            rec["u"] = unit
            secondary = secondary or unit in SECONDARY_UNITS
        if value is True or value is False:
            rec["vb"] = value
        elif isinstance(value, str):
            rec["vs"] = value
        else:
            rec["v"] = value
        offset = round(when - base_time, 6)
        if offset:
            rec["t"] = offset
        if flags:
            names = flag_names(flags)
            if names:
                rec["flags"] = FLAG_SEPARATOR.join(names)
            if flags >> WINDOW_SHIFT:
                rec["window"] = _seconds(flags >> WINDOW_SHIFT)
        pack.append(rec)
    if secondary:
        pack[0] = {"bver": SECONDARY_UNITS_VERSION, **pack[0]}
    return pack


PAYLOAD_VERSION = 2
"""The wire contract's version (``"v"``): 2 since each buffer's stream carries its own ``chain``."""


def encode_payload(
    gateway: str,
    seq: int,
    prev: str | None,
    created: float,
    records: list[Record],
    *,
    chain: str,
    reset: dict[str, Any] | None = None,
) -> bytes:
    """The JSON payload of a data batch (the wire contract, see docs/integrator.md).

    ``chain`` is the buffer's stream id; ``reset`` (only on a new chain's first batch) names the
    chain it replaces. Field order is fixed: v, gateway, chain, seq, prev, created, [reset], senml.
    """
    body: dict[str, Any] = {
        "v": PAYLOAD_VERSION,
        "gateway": gateway,
        "chain": chain,
        "seq": seq,
        "prev": prev,
        "created": round(created, 3),
    }
    if reset is not None:
        body["reset"] = reset
    body["senml"] = build_pack(gateway, records)
    return json.dumps(body, separators=(",", ":"), allow_nan=False).encode()


def encode_gap(
    gateway: str,
    *,
    chain: str,
    first: int,
    to: int,
    batches: int,
    readings: int,
    reason: str,
    prev: str | None,
    last: str,
    created: float,
) -> bytes:
    """The JSON payload of a gap record: seqs ``first``..``to`` will not arrive, and why (the wire
    contract, see docs/integrator.md). Field order is fixed: v, gateway, chain, gap, prev, last,
    created."""
    body = {
        "v": PAYLOAD_VERSION,
        "gateway": gateway,
        "chain": chain,
        "gap": {"from": first, "to": to, "batches": batches, "readings": readings, "reason": reason},
        "prev": prev,
        "last": last,
        "created": round(created, 3),
    }
    return json.dumps(body, separators=(",", ":"), allow_nan=False).encode()
