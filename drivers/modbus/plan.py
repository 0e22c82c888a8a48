"""The read plan: the fewest requests that read every field of a device.

Every request costs a round trip — on RS-485 a request frame, two 3.5-character silences and
the device's turnaround (5-45 ms), whatever its size — so neighbouring fields are read together.
A request may span at most 125 registers (functions 3 and 4) or 2000 bits (functions 1 and 2)
(Modbus Application Protocol v1.1b3 §6.1-6.4), and may skip at most ``max_gap`` unused
registers between two fields: some devices refuse a read that touches an address they do not
map (exception 2, illegal data address), others answer it with zeros.

Fields are sorted by function and address and each request is extended while the next field
fits; for fields that do not overlap this greedy choice is optimal (an exchange argument: any
plan's first request ends no later than the greedy one's), so with ``max_gap`` at least the
largest gap the plan reaches :func:`minimum_requests`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from citygw.drivers.modbus.registers import Field

MAX_REGISTERS = 125  # per read of holding or input registers (functions 3, 4)
MAX_BITS = 2000  # per read of coils or discrete inputs (functions 1, 2)

FUNCTION_NAMES = {
    1: "coils",
    2: "discrete inputs",
    3: "holding registers",
    4: "input registers",
}


def max_count(function: int) -> int:
    return MAX_BITS if function in (1, 2) else MAX_REGISTERS


@dataclass(frozen=True, slots=True)
class Request:
    """One read: ``count`` registers (or bits) from ``address`` with ``function``."""

    function: int
    address: int
    count: int
    fields: tuple[Field, ...]

    @property
    def end(self) -> int:
        return self.address + self.count

    @property
    def gapless(self) -> bool:
        """Whether every address read belongs to a field."""
        covered: set[int] = set()
        for spec in self.fields:
            covered.update(range(spec.address, spec.end))
        return len(covered) == self.count

    def describe(self) -> str:
        """``read input registers 0-75 (function 4, 76 registers)``."""
        what = FUNCTION_NAMES.get(self.function, f"function {self.function}")
        unit = "bits" if self.function in (1, 2) else "registers"
        span = f"{self.address}" if self.count == 1 else f"{self.address}-{self.end - 1}"
        return f"read {what} {span} (function {self.function}, {self.count} {unit})"


def _requests(fields: Iterable[Field], max_gap: int | None) -> list[Request]:
    """Greedy merge; ``max_gap`` None allows any gap (the limit of the request size only)."""
    ordered = sorted(fields, key=lambda f: (f.function, f.address, f.end))
    requests: list[Request] = []
    group: list[Field] = []
    start = end = 0
    for spec in ordered:
        if group:
            same = spec.function == group[0].function
            gap_ok = max_gap is None or spec.address - end <= max_gap
            fits = max(end, spec.end) - start <= max_count(spec.function)
            if same and gap_ok and fits:
                group.append(spec)
                end = max(end, spec.end)
                continue
            requests.append(Request(group[0].function, start, end - start, tuple(group)))
        group, start, end = [spec], spec.address, spec.end
    if group:
        requests.append(Request(group[0].function, start, end - start, tuple(group)))
    return requests


@dataclass(frozen=True, slots=True)
class ReadPlan:
    """The requests that read a device, in address order."""

    requests: tuple[Request, ...]

    @classmethod
    def build(cls, fields: Iterable[Field], *, max_gap: int) -> ReadPlan:
        """The fewest requests skipping at most ``max_gap`` unused registers (or bits) between fields."""
        return cls(tuple(_requests(fields, max_gap)))

    def split(self, request: Request) -> ReadPlan:
        """This plan with ``request`` replaced by requests that read no unused address.

        For a device that refuses a read spanning an address it does not map: the bus runner
        splits the request that drew exception 2 (illegal data address) and keeps the split plan.
        """
        pieces = _requests(request.fields, 0)
        out: list[Request] = []
        for existing in self.requests:
            out.extend(pieces if existing == request else [existing])
        return ReadPlan(tuple(out))

    @property
    def registers(self) -> int:
        """Registers (and bits) read per poll, unused ones included."""
        return sum(r.count for r in self.requests)


def minimum_requests(fields: Iterable[Field]) -> int:
    """The fewest requests that can read ``fields`` at all: only the size limit applies."""
    return len(_requests(fields, None))
