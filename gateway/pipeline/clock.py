"""Is the system clock synchronised yet? And the readings stamped before it was.

A Raspberry Pi has no real-time clock: it boots with the time saved at the last shutdown
(fake-hwclock) or 1970, and the clock jumps when NTP synchronises it, minutes later or, on a pole
without uplink, days later. Until then a reading's time is wrong by an unknown amount.

:class:`ClockWatch` asks the kernel (``adjtimex(2)``: ``STA_UNSYNC`` / ``TIME_ERROR``, which every
NTP client maintains) and, where that syscall is unavailable, systemd-timesyncd's
``/run/systemd/timesync/synchronized``. While the clock is unsynchronised every reading entering the
pipeline gets :attr:`Flag.CLOCK_UNSYNCED` and a time on one monotonic timeline (``CLOCK_BOOTTIME``
plus the wall-clock offset seen when the unsynchronised span began), so a step of the unsynchronised
clock cannot reorder them. When the clock syncs, the readings of this boot still waiting in the
pipeline or the buffer's staging area are moved onto the true timeline (the offset between the wall
clock and ``CLOCK_BOOTTIME`` measured after the sync) and lose the flag. Readings sealed before the
sync leave flagged, on the monotonic timeline; readings from an earlier boot stay flagged for good
(their monotonic clock is gone).

The boot is told apart by a tag kept in bits 16-30 of a record's flags, which never reach the wire
(:func:`citygw.reading.flag_names` names only the public flags).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import hashlib
import os
import time
from collections.abc import Callable
from pathlib import Path

from citygw.logs import EventLog
from citygw.reading import Flag, Record

log = EventLog(__name__)

TIMESYNCD_FLAG = Path("/run/systemd/timesync/synchronized")
TEST_CLOCK_FILE = "CITYGW_TEST_CLOCK_FILE"
"""Environment variable for tests only: a file holding ``synced`` or ``unsynced`` replaces the probes."""

STEP = 0.5  # seconds: a change of the wall-clock offset larger than this is a step, not a slew
_TAG_SHIFT = 16
_TAG_MASK = 0x7FFF << _TAG_SHIFT
_UNSYNCED = int(Flag.CLOCK_UNSYNCED)

# adjtimex(2)
_STA_UNSYNC = 0x0040
_TIME_ERROR = 5


class _Timex(ctypes.Structure):
    """The head of ``struct timex`` (linux/timex.h); the tail is padding the kernel may fill."""

    _fields_ = [
        ("modes", ctypes.c_uint),
        ("offset", ctypes.c_long),
        ("freq", ctypes.c_long),
        ("maxerror", ctypes.c_long),
        ("esterror", ctypes.c_long),
        ("status", ctypes.c_int),
        ("rest", ctypes.c_byte * 512),
    ]


_libc: ctypes.CDLL | None = None


def _adjtimex() -> bool | None:
    """The kernel's view (read only: ``modes`` 0); None when the syscall is not available."""
    global _libc
    try:
        if _libc is None:
            _libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
        adjtimex = _libc.adjtimex
    except (OSError, AttributeError):
        return None
    timex = _Timex()
    state = adjtimex(ctypes.byref(timex))
    if state < 0:  # EPERM under a seccomp filter without adjtimex, ENOSYS elsewhere
        return None
    return not (state == _TIME_ERROR or timex.status & _STA_UNSYNC)


def _test_file(path: str) -> bool:
    try:
        return Path(path).read_text().strip() == "synced"
    except OSError:
        return False


def system_synchronized() -> bool | None:
    """True when the system clock is NTP-synchronised, False when not, None when no source can tell."""
    test = os.environ.get(TEST_CLOCK_FILE)
    if test:
        return _test_file(test)
    kernel = _adjtimex()
    if kernel is not None:
        return kernel
    if TIMESYNCD_FLAG.exists():
        return True
    if TIMESYNCD_FLAG.parent.is_dir():  # timesyncd runs, and has not synchronised yet
        return False
    return None


def boottime() -> float:
    """Seconds since boot, counting time suspended: the monotonic clock readings are kept on."""
    return time.clock_gettime(time.CLOCK_BOOTTIME)


def boot_tag() -> int:
    """A 15-bit tag of this boot (from the kernel's boot id), placed in bits 16-30 of flags."""
    try:
        boot_id = Path("/proc/sys/kernel/random/boot_id").read_bytes()
    except OSError:  # hidden (systemd's ProcSubset=pid): a tag of this process, which is stricter
        boot_id = os.urandom(16)
    return (int.from_bytes(hashlib.sha256(boot_id).digest()[:2], "big") & 0x7FFF) << _TAG_SHIFT


class ClockWatch:
    """Tracks the clock's sync state; flags readings while unsynced and corrects them once synced.

    ``probe`` returns True/False/None (None: cannot tell, taken as synchronised so that a box
    whose clock no source can read does not flag every reading forever).
    """

    def __init__(
        self,
        probe: Callable[[], bool | None] = system_synchronized,
        *,
        wall: Callable[[], float] = time.time,
        mono: Callable[[], float] = boottime,
        tag: int | None = None,
    ) -> None:
        self._probe = probe
        self._wall = wall
        self._mono = mono
        self.tag = boot_tag() if tag is None else tag
        self.source_known = True
        self.synced = True
        self.unsynced_readings = 0  # readings flagged since start
        self.corrected_readings = 0  # flagged readings whose time was corrected after the sync
        self.last_correction = 0.0  # seconds added to the flagged readings at the last sync
        self._ref = 0.0  # wall - mono when the unsynchronised span began
        state = probe()
        self.source_known = state is not None
        if state is False:
            self._enter_unsynced()

    def _offset(self) -> float:
        return self._wall() - self._mono()

    def _enter_unsynced(self) -> None:
        self.synced = False
        self._ref = self._offset()
        log.event("clock_unsynced").warning(
            "clock: the system clock is not synchronised; readings are flagged clock-unsynced "
            "and their times corrected once it is",
        )

    def check(self) -> Callable[[Record], Record] | None:
        """Probe the clock; when it just became synchronised, the fix for the flagged readings."""
        state = self._probe()
        if state is None:
            state = True
        if state == self.synced:
            return None
        if not state:
            self._enter_unsynced()
            return None
        self.synced = True
        delta = self._offset() - self._ref
        self.last_correction = delta
        log.event("clock_synced").warning(
            "clock: synchronised; correcting the times of flagged readings by %+.3f s",
            delta,
        )
        return self.fix(delta)

    def stamp(self, records: list[Record]) -> list[Record]:
        """The pipeline's hook: flag ``records`` while the clock is unsynced (and keep them monotonic)."""
        if self.synced:
            return records
        shift = self._ref - self._offset()
        if abs(shift) < STEP:  # no step since the span began: keep the times exactly as stamped
            shift = 0.0
        flags = _UNSYNCED | self.tag
        self.unsynced_readings += len(records)
        new = tuple.__new__  # half the cost of Record(...) (see Record)
        return [new(Record, (d, n, v, u, t + shift, f | flags)) for d, n, v, u, t, f in records]

    def fix(self, delta: float) -> Callable[[Record], Record]:
        """Move a record flagged during this boot by ``delta`` seconds and clear its clock flags."""
        tag, clear = self.tag, ~(_UNSYNCED | _TAG_MASK)

        def fixed(record: Record) -> Record:
            flags = record.flags
            if not flags & _UNSYNCED or (flags & _TAG_MASK) != tag:
                return record
            self.corrected_readings += 1
            return record._replace(time=record.time + delta, flags=flags & clear)

        return fixed
