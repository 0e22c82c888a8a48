"""Durations and sizes as people write them in a config file: ``250ms``, ``5m``, ``1h30m``, ``64KiB``.

:func:`parse_duration` returns seconds (float) and :func:`parse_size` bytes (int); both raise
:class:`ValueError` with a message that says what to write instead. :data:`Duration` and :data:`Size`
are the pydantic types built on them; :func:`duration_within` and :func:`size_within` bound them with
messages in the same units.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from typing import Annotated, Any

from pydantic import BeforeValidator, WithJsonSchema
from pydantic_core import PydanticCustomError

__all__ = [
    "Duration",
    "Size",
    "describe",
    "duration_within",
    "format_duration",
    "format_size",
    "parse_duration",
    "parse_size",
    "size_within",
]

_NUMBER = r"\d+(?:\.\d+)?"
_DURATION_UNITS: dict[str, float] = {"d": 86400.0, "h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
# Components in this order, each at most once: 1d12h, 1h30m, 2m30s, 1s500ms.
_DURATION_RE = re.compile(
    rf"(?:(?P<d>{_NUMBER})\s*d)?\s*(?:(?P<h>{_NUMBER})\s*h)?\s*(?:(?P<m>{_NUMBER})\s*m(?!s))?"
    rf"\s*(?:(?P<s>{_NUMBER})\s*s)?\s*(?:(?P<ms>{_NUMBER})\s*ms)?"
)
DURATION_PATTERN = rf"^\s*(?:{_NUMBER}\s*(?:d|h|m|s|ms)?\s*)+$"
_DURATION_HINT = "write e.g. 500ms, 30s, 5m, 2h or 30d"

_SIZE_UNITS: dict[str, int] = {
    "": 1,
    "B": 1,
    "kB": 1000,
    "MB": 1000**2,
    "GB": 1000**3,
    "TB": 1000**4,
    "KiB": 1024,
    "MiB": 1024**2,
    "GiB": 1024**3,
    "TiB": 1024**4,
}
_SIZE_RE = re.compile(rf"(?P<number>{_NUMBER})\s*(?P<unit>[A-Za-z]*)")
SIZE_PATTERN = rf"^\s*{_NUMBER}\s*(?:B|kB|MB|GB|TB|KiB|MiB|GiB|TiB)?\s*$"
_SIZE_HINT = "write e.g. 512, 64KiB, 500MB or 2GiB (kB, MB, GB = 1000 bytes; KiB, MiB, GiB = 1024)"


def describe(value: object) -> str:
    """How a YAML value reads to its author, for "got ..." in messages."""
    if value is None:
        return "an empty value (null)"
    if isinstance(value, bool):
        return f"the boolean {str(value).lower()}"
    if isinstance(value, int | float):
        return f"the number {value}"
    if isinstance(value, str):
        return f"the text {value!r}"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list | tuple):
        return "a list"
    return f"a {type(value).__name__}"


def parse_duration(value: str | int | float) -> float:
    """Seconds in ``value``: a plain number of seconds, or ``250ms``, ``30s``, ``5m``, ``2h``, ``30d``,
    ``1h30m`` (units largest first, each once)."""
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise ValueError(f"expected a duration; got {describe(value)}; {_DURATION_HINT}")
    if not isinstance(value, str):
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"{value} is not a duration; {_DURATION_HINT}")
        return float(value)
    text = value.strip()
    if re.fullmatch(_NUMBER, text):
        return float(text)
    match = _DURATION_RE.fullmatch(text)
    if match is None or not any(match.groupdict().values()):
        raise ValueError(f"{value!r} is not a duration; {_DURATION_HINT}")
    return sum(float(n) * _DURATION_UNITS[unit] for unit, n in match.groupdict().items() if n is not None)


def parse_size(value: str | int) -> int:
    """Bytes in ``value``: a plain number of bytes, or ``10kB``, ``500MB``, ``2GB`` (SI, 1000) or
    ``64KiB``, ``16MiB``, ``2GiB`` (IEC, 1024)."""
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise ValueError(f"expected a size; got {describe(value)}; {_SIZE_HINT}")
    if isinstance(value, int | float):
        if not math.isfinite(value) or value < 0 or value != int(value):
            raise ValueError(f"{value} is not a size in whole bytes; {_SIZE_HINT}")
        return int(value)
    match = _SIZE_RE.fullmatch(value.strip())
    if match is None or match["unit"] not in _SIZE_UNITS:
        raise ValueError(f"{value!r} is not a size; {_SIZE_HINT}")
    number = float(match["number"]) * _SIZE_UNITS[match["unit"]]
    if number != int(number):
        raise ValueError(f"{value!r} is not a whole number of bytes; {_SIZE_HINT}")
    return int(number)


def format_duration(seconds: float) -> str:
    """``seconds`` the way :func:`parse_duration` reads it back: ``90`` -> ``1m30s``."""
    millis = round(seconds * 1000)
    if millis == 0:
        return "0s"
    if abs(millis - seconds * 1000) > 1e-6 or millis < 0:
        return f"{seconds:g}s"
    parts = []
    for unit, scale in _DURATION_UNITS.items():
        count, millis = divmod(millis, round(scale * 1000))
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts)


def format_size(size: int) -> str:
    """``size`` bytes in the largest unit that states it exactly: ``65536`` -> ``64KiB``."""
    for unit, scale in sorted(_SIZE_UNITS.items(), key=lambda item: -item[1]):
        if scale > 1 and size % scale == 0 and size:
            return f"{size // scale}{unit}"
    return f"{size} bytes"


def _validate_duration(value: Any) -> float:
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise PydanticCustomError("citygw_duration", "{reason}", {"reason": str(exc)}) from None


def _validate_size(value: Any) -> int:
    try:
        return parse_size(value)
    except ValueError as exc:
        raise PydanticCustomError("citygw_size", "{reason}", {"reason": str(exc)}) from None


Duration = Annotated[
    float,
    BeforeValidator(_validate_duration),
    WithJsonSchema(
        {
            "anyOf": [{"type": "number", "minimum": 0}, {"type": "string", "pattern": DURATION_PATTERN}],
            "description": "seconds, or a duration such as 500ms, 30s, 5m, 2h, 30d or 1h30m",
        }
    ),
]
"""Seconds; written as a plain number of seconds or as ``500ms``, ``30s``, ``5m``, ``2h``, ``30d``."""

Size = Annotated[
    int,
    BeforeValidator(_validate_size),
    WithJsonSchema(
        {
            "anyOf": [{"type": "integer", "minimum": 0}, {"type": "string", "pattern": SIZE_PATTERN}],
            "description": "bytes, or a size such as 64KiB, 500MB or 2GiB",
        }
    ),
]
"""Bytes; written as a plain number or as ``10kB``, ``500MB`` (SI) or ``64KiB``, ``2GiB`` (IEC)."""


def _within(
    low: float | None, high: float | None, fmt: Callable[[Any], str], kind: str
) -> Callable[[Any], Any]:
    def check(value: Any) -> Any:
        if (low is None or value >= low) and (high is None or value <= high):
            return value
        if low is not None and high is not None:
            allowed = f"must be between {fmt(low)} and {fmt(high)}"
        elif low is not None:
            allowed = f"must be at least {fmt(low)}"
        else:
            allowed = f"must be at most {fmt(high)}"
        raise PydanticCustomError(
            f"{kind}_range", "{allowed}; got {got}", {"allowed": allowed, "got": fmt(value)}
        )

    return check


def duration_within(low: float | None = None, high: float | None = None) -> Callable[[Any], Any]:
    """An after-validator bounding a :data:`Duration` to ``low..high`` seconds (inclusive)."""
    return _within(low, high, format_duration, "duration")


def size_within(low: int | None = None, high: int | None = None) -> Callable[[Any], Any]:
    """An after-validator bounding a :data:`Size` to ``low..high`` bytes (inclusive)."""
    return _within(low, high, format_size, "size")
