"""gateway.streams: seq ranges against a plain set, chains, resets and clones."""

from __future__ import annotations

import itertools
import random

import pytest

from citygw.receiver.streams import Reset, Spans, Streams


@pytest.mark.parametrize("seed", range(20))
def test_spans_hold_what_a_set_holds(seed: int) -> None:
    rng = random.Random(seed)
    spans, model = Spans(), set()
    for _ in range(200):
        first = rng.randint(1, 300)
        last = first + rng.choice([0, 0, 0, 1, 5, 30])
        spans.add(first, last)
        model.update(range(first, last + 1))
        flat = [s for a, b in spans for s in range(a, b + 1)]
        assert flat == sorted(model)
        ranges = list(spans)
        assert all(b + 1 < c for (_, b), (c, _) in itertools.pairwise(ranges))  # merged
    low, high = rng.randint(1, 100), rng.randint(100, 400)
    holes = [s for a, b in spans.holes(low, high) for s in range(a, b + 1)]
    assert holes == [s for s in range(low, high + 1) if s not in model]


def test_a_huge_range_costs_one_entry() -> None:
    spans = Spans()
    spans.add(3, 30_000_002)
    spans.add(1, 1)
    assert list(spans) == [(1, 1), (3, 30_000_002)]
    assert spans.holes(1, 30_000_010) == [(2, 2), (30_000_003, 30_000_010)]


def test_a_reset_whose_seq_1_arrives_late_links_once() -> None:
    streams = Streams()
    streams.add("gw", "A" * 22, 1, 1, created=1.0, readings=1)
    streams.add("gw", "A" * 22, 2, 2, created=2.0, readings=1)
    events = streams.add("gw", "B" * 22, 2, 2, created=12.0, readings=1)  # the new chain's seq 2 first
    assert [e.kind for e in events] == ["new-chain"]
    reset = Reset("A" * 22, 4, "corrupt")
    assert streams.add("gw", "B" * 22, 1, 1, created=11.0, readings=1, reset=reset) == []
    report = streams.report("gw")
    assert report["resets"][0]["lost"] == [[3, 4]] and report["resets"][0]["reason"] == "corrupt"
    assert report["clones"] == []


def test_a_reset_naming_a_chain_never_seen_loses_all_of_it() -> None:
    streams = Streams()
    streams.add("gw", "B" * 22, 1, 1, created=1.0, readings=1, reset=Reset("A" * 22, 7, "corrupt"))
    (reset,) = streams.report("gw")["resets"]
    assert (reset["old_chain"], reset["lost"], reset["lost_batches"]) == ("A" * 22, [[1, 7]], 7)


def test_the_old_chain_growing_past_its_announced_end_is_a_clone() -> None:
    streams = Streams()
    for seq in (1, 2, 3):
        streams.add("gw", "A" * 22, seq, seq, created=float(seq), readings=1)
    streams.add("gw", "B" * 22, 1, 1, created=10.0, readings=1, reset=Reset("A" * 22, 3, "corrupt"))
    events = streams.add("gw", "A" * 22, 4, 4, created=11.0, readings=1)
    assert [e.kind for e in events] == ["clone"]
    report = streams.report("gw")
    assert report["clones"] == [["A" * 22, "B" * 22]]
    assert report["chains"][0]["lost_in_reset"] == []  # a clone loses nothing: both chains go on


def test_a_v1_buffer_given_a_chain_id_at_the_upgrade_is_not_a_reset() -> None:
    streams = Streams()
    for seq in (1, 2, 4):  # seq 3 is still on its way
        streams.add("gw", "", seq, seq, created=float(seq), readings=1)
    events = streams.add("gw", "C" * 22, 5, 5, created=5.0, readings=1)
    assert [e.kind for e in events] == ["upgrade"]
    report = streams.report("gw")
    assert report["resets"] == [] and report["clones"] == []
    assert report["chains"][0]["missing"] == [[3, 3]]  # may still come: nothing was lost
    assert streams.add("gw", "", 3, 3, created=3.0, readings=1) == []
    assert streams.report("gw")["chains"][0]["missing"] == []
