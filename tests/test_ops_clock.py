"""Time: an unsynchronised clock flags readings; its sync corrects them; a step never reorders a batch."""

from __future__ import annotations

import ctypes
import ctypes.util
import itertools
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from citygw.buffer import BatchLimits, Buffer
from citygw.buffer.thread import Store
from citygw.pipeline import clock
from citygw.pipeline.clock import ClockWatch, system_synchronized
from citygw.pipeline.intake import Pipeline
from citygw.reading import Flag, Reading, Record
from citygw.wire.senml import build_pack
from citygw.wire.signing import Signer

from .support import payload_of

TAG = 0x1234 << 16
UNSYNCED = int(Flag.CLOCK_UNSYNCED)


class FakeClock:
    """A wall clock that can step, a boot-time clock that cannot, an NTP state that can change."""

    def __init__(self, wall: float, *, synced: bool) -> None:
        self.mono = 100.0
        self.offset = wall - self.mono
        self.synced = synced

    def wall(self) -> float:
        return self.mono + self.offset

    def advance(self, seconds: float) -> None:
        self.mono += seconds

    def watch(self) -> ClockWatch:
        return ClockWatch(lambda: self.synced, wall=self.wall, mono=lambda: self.mono, tag=TAG)


def rec(t: float, flags: int = 0, value: float = 1.0) -> Record:
    return Record("d1", "temperature", value, "Cel", t, flags)


def test_synchronised_clock_leaves_readings_alone() -> None:
    fake = FakeClock(1_790_000_000.0, synced=True)
    watch = fake.watch()
    records = [rec(fake.wall())]
    assert watch.stamp(records) is records
    assert watch.check() is None


def test_unsynced_readings_are_flagged_then_corrected_by_the_offset_seen_after_the_sync() -> None:
    fake = FakeClock(1_600_000_000.0, synced=False)  # booted with last year's saved time
    watch = fake.watch()
    assert not watch.synced
    stamped = watch.stamp([rec(fake.wall())])
    assert stamped[0].time == 1_600_000_000.0
    assert stamped[0].flags == UNSYNCED | TAG
    fake.advance(30)
    later = watch.stamp([rec(fake.wall())])
    assert later[0].time == 1_600_000_030.0
    # NTP synchronises: the wall clock jumps 190 million seconds forward
    fake.offset += 190_000_000.0
    fake.synced = True
    fix = watch.check()
    assert fix is not None and watch.synced
    fixed = [fix(r) for r in [*stamped, *later]]
    assert [r.time for r in fixed] == [1_790_000_000.0, 1_790_000_030.0]
    assert [r.flags for r in fixed] == [0, 0], "the time is right now: the flag goes"
    assert watch.corrected_readings == 2 and watch.unsynced_readings == 2


def test_a_step_of_the_unsynced_clock_keeps_readings_on_one_monotonic_timeline() -> None:
    fake = FakeClock(1_600_000_000.0, synced=False)
    watch = fake.watch()
    first = watch.stamp([rec(fake.wall())])
    fake.advance(10)
    fake.offset -= 3600  # a bad time source steps the clock back an hour, still unsynced
    second = watch.stamp([rec(fake.wall())])
    assert second[0].time - first[0].time == pytest.approx(10.0), "monotonic: 10 s later, not an hour earlier"
    fake.offset += 190_003_600.0
    fake.synced = True
    fix = watch.check()
    assert fix is not None
    assert [fix(r).time for r in (*first, *second)] == pytest.approx([1_790_000_000.0, 1_790_000_010.0])


def test_only_readings_flagged_in_this_boot_are_corrected() -> None:
    fake = FakeClock(1_600_000_000.0, synced=False)
    watch = fake.watch()
    other_boot = rec(1_500_000_000.0, UNSYNCED | (0x0042 << 16))
    never_flagged = rec(1_600_000_000.0, int(Flag.COUNTER_ROLLOVER))
    fake.offset += 1000.0
    fake.synced = True
    fix = watch.check()
    assert fix is not None
    assert fix(other_boot) is other_boot
    assert fix(never_flagged) is never_flagged


def test_the_hidden_boot_tag_never_reaches_the_wire() -> None:
    rollover = int(Flag.COUNTER_ROLLOVER)
    pack = build_pack("gw", [rec(1.0, UNSYNCED | TAG), rec(2.0, UNSYNCED | TAG | rollover)])
    assert pack[0]["flags"] == "clock-unsynced"
    assert pack[1]["flags"] == "clock-unsynced,counter-rollover"


def test_a_clock_step_backwards_never_reorders_a_batch(tmp_path: Path, key: Path) -> None:
    """The clock steps back 5 s in the middle of a batch: the pack is still in time order."""
    buf = Buffer(
        tmp_path / "b.db", gateway="gw", signer=Signer.from_file(key), uplinks=[], limits=BatchLimits(100)
    )
    buf.open()
    times = [1_790_000_000.0 + i for i in range(10)] + [1_790_000_004.5 + i for i in range(10)]
    buf.commit([rec(t, value=i) for i, t in enumerate(times)], seal_all=True)
    (batch,) = buf.fetch(0, 10)
    buf.close()
    body = payload_of(batch.jws)
    base = body["senml"][0]["bt"]
    stamps = [base + r.get("t", 0.0) for r in body["senml"]]
    assert stamps == sorted(stamps)
    assert len(stamps) == 20
    assert stamps[0] == 1_790_000_000.0 and stamps[-1] == 1_790_000_013.5


@settings(max_examples=50, deadline=None)
@given(st.lists(st.floats(min_value=1.6e9, max_value=1.9e9), min_size=1, max_size=50))
def test_a_pack_never_goes_back_in_time(times: list[float]) -> None:
    pack = build_pack("gw", [rec(t) for t in times])
    base = pack[0]["bt"]
    stamps = [base + r.get("t", 0.0) for r in pack]
    assert all(b >= a - 1e-6 for a, b in itertools.pairwise(stamps))


async def test_pipeline_flags_while_unsynced_and_corrects_what_is_still_staged(
    tmp_path: Path, key: Path
) -> None:
    """Batch 1 is sealed before the sync (flagged, monotonic times); batch 2 after (corrected)."""
    fake = FakeClock(1_600_000_000.0, synced=False)
    watch = fake.watch()
    buf = Buffer(
        tmp_path / "b.db",
        gateway="gw",
        signer=Signer.from_file(key),
        uplinks=["u"],
        limits=BatchLimits(max_readings=3, max_age=3600),
    )
    store = Store(buf)
    await store.open()
    pipeline = Pipeline(store, commit_interval=0.01, commit_rows=100)
    pipeline.stamp = watch.stamp
    try:
        for i in range(5):  # 3 sealed at once, 2 stay staged
            await pipeline.put([Reading("d1", "temperature", 20.0 + i, "Cel", fake.wall())])
            fake.advance(1)
        await pipeline.commit()
        await pipeline.put([Reading("d1", "temperature", 25.0, "Cel", fake.wall())])  # still pending
        fake.offset += 190_000_000.0
        fake.synced = True
        fix = watch.check()
        assert fix is not None
        assert await pipeline.correct_times(fix) == 2  # the staged ones; the pending one is fixed too
        await pipeline.flush()
        first, second = (payload_of(b.jws) for b in await store.call(buf.fetch, 0, 10))
    finally:
        await store.close()
    assert first["senml"][0]["bt"] == 1_600_000_000.0
    assert all(r["flags"] == "clock-unsynced" for r in first["senml"])
    assert second["senml"][0]["bt"] == 1_790_000_003.0
    assert [second["senml"][0]["bt"] + r.get("t", 0) for r in second["senml"]] == [
        1_790_000_003.0,
        1_790_000_004.0,
        1_790_000_005.0,
    ]
    assert not any("flags" in r for r in second["senml"])
    assert watch.corrected_readings == 3


def test_the_sync_state_sources(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    state = tmp_path / "clock"
    monkeypatch.setenv(clock.TEST_CLOCK_FILE, str(state))
    assert system_synchronized() is False  # no file: not synchronised
    state.write_text("synced\n")
    assert system_synchronized() is True
    monkeypatch.delenv(clock.TEST_CLOCK_FILE)
    # the real probes: the kernel's answer (any NTP client), else systemd-timesyncd's flag file
    monkeypatch.setattr(clock, "_adjtimex", lambda: None)
    monkeypatch.setattr(clock, "TIMESYNCD_FLAG", tmp_path / "timesync" / "synchronized")
    assert system_synchronized() is None
    (tmp_path / "timesync").mkdir()
    assert system_synchronized() is False
    (tmp_path / "timesync" / "synchronized").touch()
    assert system_synchronized() is True
    monkeypatch.setattr(clock, "_adjtimex", lambda: False)
    assert system_synchronized() is False


def test_adjtimex_reads_the_kernel_state_without_privileges() -> None:
    state = clock._adjtimex()  # a read (modes 0) needs no CAP_SYS_TIME
    if state is None:
        pytest.skip("adjtimex is filtered here (a container's seccomp profile)")
    # the same kernel state through another libc entry point: ntp_gettime(3) returns TIME_ERROR
    # (5) exactly when the kernel counts the clock unsynchronised
    libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
    ntptimeval = ctypes.create_string_buffer(256)  # struct ntptimeval and its reserved tail
    assert state is (libc.ntp_gettime(ntptimeval) != 5)


class _KernelSaying:
    """libc whose adjtimex(2) answers ``state`` with ``status`` in struct timex, as the kernel would."""

    def __init__(self, state: int, status: int) -> None:
        self.state, self.status = state, status

    def adjtimex(self, timex: Any) -> int:
        timex._obj.status = self.status  # ctypes.byref(...) wraps the struct the caller reads
        return self.state


@pytest.mark.parametrize(
    ("state", "status", "synced"),
    [
        (0, 0x2001, True),  # TIME_OK, STA_PLL | STA_NANO: chrony or ntpd steering the clock
        (1, 0x0001, True),  # TIME_INS: a leap second pending, still synchronised
        (5, 0x0041, False),  # TIME_ERROR with STA_UNSYNC: no NTP client has synchronised it
        (0, 0x0040, False),  # STA_UNSYNC alone
        (-1, 0, None),  # EPERM (a seccomp filter) or ENOSYS: no answer
    ],
)
def test_adjtimex_decodes_the_kernel_answer(
    monkeypatch: pytest.MonkeyPatch, state: int, status: int, synced: bool | None
) -> None:
    monkeypatch.setattr(clock, "_libc", _KernelSaying(state, status))
    assert clock._adjtimex() is synced


def test_an_unknown_sync_state_counts_as_synchronised() -> None:
    watch = ClockWatch(lambda: None)
    assert watch.synced and not watch.source_known
    records = [rec(1.0)]
    assert watch.stamp(records) is records


def test_a_flagged_record_keeps_its_boot_tag_on_disk_but_not_on_the_wire(tmp_path: Path, key: Path) -> None:
    """Staged on disk, a flagged reading keeps the boot tag: after a restart the sync still corrects
    the readings of this boot (and only those); the sealed batch carries the public flag only."""
    other_boot = 0x0042 << 16

    def buffer() -> Buffer:
        buf = Buffer(
            tmp_path / "b.db", gateway="gw", signer=Signer.from_file(key), uplinks=[], limits=BatchLimits(100)
        )
        buf.open()
        return buf

    first = buffer()
    first.commit([rec(1.0, UNSYNCED | TAG, value=1.0), rec(2.0, UNSYNCED | other_boot, value=2.0)])
    assert first.staged_count == 2
    first.close()
    again = buffer()  # the daemon restarted in the same boot; the records come back from disk
    fake = FakeClock(1_600_000_000.0, synced=False)
    watch = fake.watch()
    fake.offset += 1000.0
    fake.synced = True
    fix = watch.check()
    assert fix is not None
    assert again.correct_staged(fix) == 1, "the tag of this boot survived the restart"
    again.commit([], seal_all=True)
    (batch,) = again.fetch(0, 10)
    again.close()
    flags = {r["v"]: r.get("flags") for r in payload_of(batch.jws)["senml"]}
    assert flags[1.0] is None, "corrected: the time is right now"
    assert flags[2.0] == "clock-unsynced", "another boot's reading stays flagged, without its tag"
