"""The configurable line protocol: one reading (or a few) per text line, for simple boards.

Radar speed counters, weather boards and home-made sensors print a line per measurement. Three
forms are read, each configured in the device's ``lines`` keys (:mod:`citygw.config.serial`):

- ``regex``: a regular expression with named groups, searched in the line (anchor it with ``^...$``
  to match whole lines only), e.g. ``speed=(?P<speed>\\d+) count=(?P<count>\\d+)``;
- ``csv``: delimited values in the order of ``columns``; a line equal to the column names (a header
  the board prints at start) is skipped;
- ``json``: one JSON object per line; fields are its top-level keys.

Each mapped field becomes ``Measurement(name, value * scale + offset, unit)``. A field that is absent
from a line (an optional group, an empty CSV cell, a missing JSON key) is skipped; a line that yields
no measurement at all, or holds a field that is not a number, is a :class:`DecodeError`.

Pure: no I/O, no clock.
"""

from __future__ import annotations

import csv
import enum
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from citygw.errors import DecodeError, Reason
from citygw.reading import Measurement, Value

_INT = re.compile(r"[+-]?[0-9]+")
_FLOAT = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")


class LineFormat(enum.StrEnum):
    REGEX = "regex"
    CSV = "csv"
    JSON = "json"


@dataclass(frozen=True, slots=True)
class FieldRule:
    """How one source field becomes a measurement: ``value * scale + offset`` in ``unit``."""

    name: str
    unit: str
    scale: float = 1.0
    offset: float = 0.0


class LineDecoder:
    """Decodes one line of a configured line protocol into measurements."""

    def __init__(
        self,
        form: LineFormat,
        fields: Mapping[str, FieldRule],
        *,
        pattern: str | None = None,
        columns: Sequence[str] = (),
        delimiter: str = ",",
    ) -> None:
        if not fields:
            raise ValueError("a line protocol needs at least one field")
        self.form = form
        self.fields = dict(fields)
        self.columns = tuple(columns)
        self.delimiter = delimiter
        self._pattern = re.compile(pattern) if pattern is not None else None
        if form is LineFormat.REGEX and self._pattern is None:
            raise ValueError("the regex line format needs a pattern")
        if form is LineFormat.CSV and not self.columns:
            raise ValueError("the csv line format needs columns")

    def decode(self, line: bytes) -> list[Measurement]:
        try:
            text = line.decode("utf-8").strip()
        except UnicodeDecodeError:
            raise DecodeError(Reason.SYNTAX, f"not UTF-8 text: {line[:60]!r}") from None
        raw: dict[str, Any] | None
        if self.form is LineFormat.REGEX:
            raw = self._regex(text)
        elif self.form is LineFormat.CSV:
            raw = self._csv(text)
        else:
            raw = self._json(text)
        if raw is None:
            return []  # the CSV header line
        out = [self._measure(source, raw[source]) for source in self.fields if raw.get(source) is not None]
        if not out:
            raise DecodeError(Reason.VALUE, f"none of the fields {', '.join(self.fields)} in {text[:60]!r}")
        return out

    def _regex(self, text: str) -> dict[str, Any]:
        assert self._pattern is not None
        match = self._pattern.search(text)
        if match is None:
            raise DecodeError(Reason.SYNTAX, f"does not match the pattern: {text[:60]!r}")
        return {key: value for key, value in match.groupdict().items() if value}

    def _csv(self, text: str) -> dict[str, Any] | None:
        try:
            values = next(csv.reader([text], delimiter=self.delimiter, strict=True), [])
        except csv.Error as exc:
            raise DecodeError(Reason.SYNTAX, f"not a CSV line ({exc}): {text[:60]!r}") from None
        values = [value.strip() for value in values]
        if len(values) != len(self.columns):
            raise DecodeError(
                Reason.SYNTAX, f"{len(values)} values; the columns are {', '.join(self.columns)}"
            )
        if tuple(values) == self.columns:
            return None
        return {column: value for column, value in zip(self.columns, values, strict=True) if value}

    def _json(self, text: str) -> dict[str, Any]:
        try:
            data = json.loads(text)
        except (ValueError, RecursionError):
            raise DecodeError(Reason.SYNTAX, f"not JSON: {text[:60]!r}") from None
        if not isinstance(data, dict):
            raise DecodeError(Reason.SYNTAX, f"not a JSON object: {text[:60]!r}")
        return data

    def _measure(self, source: str, raw: Any) -> Measurement:
        rule = self.fields[source]
        value: Value
        if isinstance(raw, str) and _INT.fullmatch(raw):
            value = int(raw)
        elif isinstance(raw, str) and _FLOAT.fullmatch(raw):
            value = float(raw)
        elif isinstance(raw, int | float) and not isinstance(raw, bool):
            value = raw
        else:
            raise DecodeError(Reason.VALUE, f"field {source}: {str(raw)[:40]!r} is not a number")
        try:
            if rule.scale != 1.0 or rule.offset != 0.0:
                value = value * rule.scale + rule.offset
        except OverflowError:
            value = math.inf
        if isinstance(value, float) and not math.isfinite(value):
            raise DecodeError(Reason.VALUE, f"field {source}: {str(raw)[:40]!r} is not a finite number")
        return Measurement(rule.name, value, rule.unit)
