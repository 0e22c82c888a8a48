"""What a platform knows of each box's stream: its chains, what is missing, lost, reset or cloned.

A gateway's stream is one or more **chains** (one per buffer file the box has had; ``""`` is the
implicit chain of payloads in contract v1). Each chain's seqs start at 1. This module is fed the
items a platform accepted (data batches and gap records, each once, in arrival order) and keeps
only ranges, so a gap record naming 30 million seqs costs a few bytes, never a set of them.

- **New chain**: the first item of a chain not seen before. Its predecessor is the chain its first
  batch's ``reset`` names, else the gateway's most recent chain. From then on the predecessor is
  *superseded*: its seqs not received are **lost in a box reset** (not "missing"), up to the seq
  the reset says the old chain sealed, else up to the highest seq received of it.
- **Upgrade**: a v2 chain whose first item is past seq 1 right after a gateway's v1 chain is the
  same buffer, given a chain id when the box's software moved to contract v2: not a reset.
- **Clone**: a superseded chain that goes on growing — a batch beyond the seq it ended at (per the
  reset, else the highest received when the new chain appeared), sealed after the new chain
  started — means two boxes claim one gateway id. Reported, never merged.
- **Missing**: seqs between a chain's lowest and highest held that no batch or gap record covers;
  they may still come (at least once, out of order across reconnects and uplinks).
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

Span = tuple[int, int]  # an inclusive seq range


@dataclass(frozen=True, slots=True)
class Reset:
    """A new chain's statement about the chain before it (its first batch's ``reset``)."""

    chain: str
    seq: int  # the highest seq the old chain sealed
    reason: str


@dataclass(frozen=True, slots=True)
class Event:
    """Something worth a log line: ``new-chain``, ``upgrade`` (v1 to v2, seqs going on) or ``clone``."""

    kind: str
    gateway: str
    chain: str
    other: str | None
    text: str


class Spans:
    """A set of seqs as sorted disjoint inclusive ranges."""

    __slots__ = ("_firsts", "_lasts")

    def __init__(self) -> None:
        self._firsts: list[int] = []
        self._lasts: list[int] = []

    def add(self, first: int, last: int) -> None:
        i = bisect.bisect_left(self._lasts, first - 1)  # the first range that may touch [first, last]
        j = i
        while j < len(self._firsts) and self._firsts[j] <= last + 1:
            first, last = min(first, self._firsts[j]), max(last, self._lasts[j])
            j += 1
        self._firsts[i:j] = [first]
        self._lasts[i:j] = [last]

    def __iter__(self) -> Iterator[Span]:
        return iter(zip(self._firsts, self._lasts, strict=True))

    def __bool__(self) -> bool:
        return bool(self._firsts)

    @property
    def low(self) -> int:
        return self._firsts[0]

    @property
    def high(self) -> int:
        return self._lasts[-1]

    def holes(self, low: int, high: int) -> list[Span]:
        """The ranges of ``low..high`` not covered."""
        out: list[Span] = []
        at = low
        for first, last in self:
            if last < at:
                continue
            if first > high:
                break
            if first > at:
                out.append((at, min(first - 1, high)))
            at = max(at, last + 1)
        if at <= high:
            out.append((at, high))
        return out


def count(spans: list[Span]) -> int:
    return sum(last - first + 1 for first, last in spans)


@dataclass(slots=True)
class Chain:
    """What is known of one chain of one gateway."""

    chain: str
    order: int  # arrival order of its first item among the gateway's chains
    first_created: float  # the earliest `created` seen on it
    batches: int = 0
    readings: int = 0
    held: Spans = field(default_factory=Spans)  # seqs of data batches received
    covered: Spans = field(default_factory=Spans)  # held, and seqs gap records account for
    gaps: list[tuple[int, int, int, str]] = field(default_factory=list)  # from, to, readings, reason
    reset: Reset | None = None  # what its first batch said of the chain before
    predecessor: str | None = None
    superseded_by: str | None = None
    ended_at: int | None = None  # the seq it sealed last, once superseded (reset.seq or held high)
    successor_created: float = 0.0
    clone_of: str | None = None  # the chain it interleaves with, once seen


class Streams:
    """Every gateway's chains, fed accepted items one at a time (see the module doc)."""

    def __init__(self) -> None:
        self._gateways: dict[str, dict[str, Chain]] = {}

    def add(
        self,
        gateway: str,
        chain: str,
        first: int,
        last: int,
        *,
        created: float,
        readings: int,
        gap_reason: str | None = None,
        reset: Reset | None = None,
    ) -> list[Event]:
        """One accepted item: a data batch (``first == last``) or a gap record (``gap_reason``)."""
        chains = self._gateways.setdefault(gateway, {})
        events: list[Event] = []
        state = chains.get(chain)
        if state is None:
            state = chains[chain] = Chain(chain, len(chains), created)
            events += self._new_chain(gateway, chains, state, reset, first)
        elif reset is not None and state.reset is None:
            state.reset = reset  # seq 1 arrived after later seqs of the chain
            events += self._link(gateway, chains, state, reset)
        state.first_created = min(state.first_created, created)
        if gap_reason is None:
            state.held.add(first, last)
            state.batches += 1
            state.readings += readings
        else:
            state.gaps.append((first, last, readings, gap_reason))
        state.covered.add(first, last)
        if state.superseded_by is not None and state.clone_of is None:
            limit = state.ended_at if state.ended_at is not None else 0
            if last > limit and created > state.successor_created:
                state.clone_of = state.superseded_by
                successor = chains[state.superseded_by]
                successor.clone_of = chain
                events.append(
                    Event(
                        "clone",
                        gateway,
                        chain,
                        state.superseded_by,
                        f"gateway {gateway}: chains {chain or '(v1)'} and {state.superseded_by} "
                        f"interleave (chain {chain or '(v1)'} sealed seq {last} after chain "
                        f"{state.superseded_by} started): two boxes claim this gateway id (a cloned "
                        "image?); give one its own id and key",
                    )
                )
        return events

    def _new_chain(
        self, gateway: str, chains: dict[str, Chain], state: Chain, reset: Reset | None, first: int
    ) -> list[Event]:
        if reset is not None:
            state.reset = reset
            return self._link(gateway, chains, state, reset)
        live = [c for c in chains.values() if c is not state and c.superseded_by is None]
        if not live:
            return []
        before = max(live, key=lambda c: c.order)
        if before.chain == "" and first > 1:
            # a box whose software moved to contract v2 keeps its buffer: the buffer gets a chain id
            # and its seqs go on, so the v1 chain is not lost; what it lacks may still come
            state.predecessor = ""
            return [
                Event(
                    "upgrade",
                    gateway,
                    state.chain,
                    "",
                    f"gateway {gateway}: contract v2 from seq {first} on, as chain {state.chain} "
                    "(its buffer's seqs go on)",
                )
            ]
        return self._supersede(gateway, before, state, ended_at=before.held.high if before.held else 0)

    def _link(self, gateway: str, chains: dict[str, Chain], state: Chain, reset: Reset) -> list[Event]:
        before = chains.get(reset.chain)
        if before is None:  # the old chain was never seen here
            before = chains[reset.chain] = Chain(reset.chain, -1, state.first_created)
        if before.superseded_by == state.chain:  # linked already, before its seq 1 arrived
            before.ended_at = reset.seq
            return []
        if before.superseded_by is not None:
            return []
        return self._supersede(gateway, before, state, ended_at=reset.seq)

    def _supersede(self, gateway: str, before: Chain, state: Chain, *, ended_at: int) -> list[Event]:
        before.superseded_by = state.chain
        before.ended_at = ended_at
        before.successor_created = state.first_created
        state.predecessor = before.chain
        lost = count(self._lost(before))
        why = f" ({state.reset.reason})" if state.reset is not None else ""
        return [
            Event(
                "new-chain",
                gateway,
                state.chain,
                before.chain,
                f"gateway {gateway}: new chain {state.chain} follows chain {before.chain or '(v1)'}, "
                f"which ended at seq {ended_at}{why}: a box reset (new or replaced buffer); {lost} "
                "batches of the old chain lost in it",
            )
        ]

    @staticmethod
    def _lost(chain: Chain) -> list[Span]:
        """A superseded chain's seqs that will never come (lost in the reset): from the lowest seq
        received of it (1 if none was) to the seq it ended at, those no batch or gap record covers."""
        if chain.superseded_by is None or chain.clone_of is not None:
            return []
        low = chain.covered.low if chain.covered else 1
        top = max(chain.ended_at or 0, chain.covered.high if chain.covered else 0)
        return chain.covered.holes(low, top) if top >= low else []

    # -- reporting -------------------------------------------------------------------------------

    def gateways(self) -> list[str]:
        return sorted(self._gateways)

    def chains(self, gateway: str) -> list[Chain]:
        return sorted(self._gateways.get(gateway, {}).values(), key=lambda c: c.order)

    def missing(self, chain: Chain) -> list[Span]:
        """Seqs of ``chain`` that may still come (not for a chain lost in a reset)."""
        if not chain.covered or (chain.superseded_by is not None and chain.clone_of is None):
            return []
        return chain.covered.holes(chain.covered.low, chain.covered.high)

    def lost_in_reset(self, chain: Chain) -> list[Span]:
        return self._lost(chain)

    def clones(self, gateway: str) -> list[list[str]]:
        pairs = {tuple(sorted((c.chain, c.clone_of))) for c in self.chains(gateway) if c.clone_of is not None}
        return [list(p) for p in sorted(pairs)]

    def report(self, gateway: str) -> dict[str, Any]:
        """JSON-ready: per chain what was received, missing and lost; resets; clones."""
        chains = []
        resets = []
        for c in self.chains(gateway):
            held = list(c.held)
            lost = self._lost(c)
            chains.append(
                {
                    "chain": c.chain,
                    "version": 1 if c.chain == "" else 2,
                    "batches": c.batches,
                    "readings": c.readings,
                    "first_seq": c.covered.low if c.covered else None,
                    "last_seq": c.covered.high if c.covered else None,
                    "held": [list(s) for s in held[:1000]],
                    "missing": [list(s) for s in self.missing(c)],
                    "lost_in_reset": [list(s) for s in lost],
                    "gaps": [{"from": f, "to": t, "readings": r, "reason": why} for f, t, r, why in c.gaps],
                    "superseded_by": c.superseded_by,
                }
            )
            if c.superseded_by is not None:
                successor = self._gateways[gateway][c.superseded_by]
                resets.append(
                    {
                        "old_chain": c.chain,
                        "new_chain": c.superseded_by,
                        "old_last_seq": c.ended_at,
                        "reason": successor.reset.reason if successor.reset is not None else None,
                        "announced": successor.reset is not None,
                        "lost_batches": count(lost),
                        "lost": [list(s) for s in lost],
                    }
                )
        return {"chains": chains, "resets": resets, "clones": self.clones(gateway)}
