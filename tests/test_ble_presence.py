"""Presence counting: distinct advertisers per wall-clock window, from daily-salted hashes."""

from __future__ import annotations

import itertools

import pytest

from citygw.drivers.ble.presence import PresenceCounter
from citygw.reading import Flag, Reading

DAY0 = 1_790_035_200.0  # a UTC midnight (2026-09-23)


def salts() -> object:
    counter = itertools.count()
    return lambda n: next(counter).to_bytes(n, "big")


def counter(window: float = 60, threshold: int = -80) -> PresenceCounter:
    return PresenceCounter("footfall", window=window, rssi_threshold=threshold, random_bytes=salts())  # type: ignore[arg-type]


def test_counts_distinct_addresses_above_the_threshold_per_window() -> None:
    c = counter()
    c.start(DAY0)  # exactly on a boundary: a whole window
    for address, rssi in [("AA:00:00:00:00:01", -60), ("AA:00:00:00:00:01", -50), ("AA:00:00:00:00:02", -80)]:
        c.add(address, rssi)
    c.add("AA:00:00:00:00:03", -81)  # too far away
    assert c.close_due(DAY0 + 59.9) == []
    assert c.close_due(DAY0 + 60) == [Reading("footfall", "presenceCount", 2, "count", DAY0, 0)]
    c.add("AA:00:00:00:00:01", -60)
    assert c.close_due(DAY0 + 185) == [
        Reading("footfall", "presenceCount", 1, "count", DAY0 + 60, 0),
        Reading("footfall", "presenceCount", 0, "count", DAY0 + 120, 0),  # a quiet window counts 0
    ]
    assert c.next_close() == DAY0 + 240


def test_first_window_joined_late_and_scanner_outages_are_partial() -> None:
    c = counter(window=300)
    c.start(DAY0 + 100)
    c.add("AA:00:00:00:00:01", -60)
    assert c.close_due(DAY0 + 300) == [
        Reading("footfall", "presenceCount", 1, "count", DAY0, int(Flag.PARTIAL))
    ]
    c.interrupted()
    assert c.close_due(DAY0 + 600)[0].flags == Flag.PARTIAL
    assert c.close_due(DAY0 + 900)[0].flags == Flag.PARTIAL  # still down for this whole window
    c.resumed()
    assert c.close_due(DAY0 + 1200)[0].flags == Flag.PARTIAL  # came back during this one
    assert c.close_due(DAY0 + 1500)[0].flags == 0


def test_the_salt_changes_each_utc_day_and_hashes_are_not_addresses() -> None:
    c = counter(window=3600)
    c.start(DAY0 + 86_400 - 3600)
    c.add("AA:00:00:00:00:01", -60)
    before = c.hashes()
    c.close_due(DAY0 + 86_400)  # midnight: new day, new salt
    c.add("AA:00:00:00:00:01", -60)
    after = c.hashes()
    assert len(before) == len(after) == 1
    assert before != after  # the same phone is not linkable across days
    for digest in before | after:
        assert b"AA:00" not in digest and bytes.fromhex("AA0000000001") not in digest


def test_salts_are_random_by_default() -> None:
    a = PresenceCounter("a", window=60, rssi_threshold=-80)
    b = PresenceCounter("b", window=60, rssi_threshold=-80)
    a.start(DAY0)
    b.start(DAY0)
    a.add("AA:00:00:00:00:01", -60)
    b.add("AA:00:00:00:00:01", -60)
    assert a.hashes() != b.hashes()


@pytest.mark.parametrize("window", [7, 61, 0, -60])
def test_windows_must_divide_a_day(window: float) -> None:
    with pytest.raises(ValueError, match="divide a day"):
        PresenceCounter("x", window=window, rssi_threshold=-80)
