"""The unit's system call filter, applied for real: what the daemon calls must pass it.

The filter is rebuilt from ``systemd/citygw.service``'s ``SystemCallFilter=`` lines exactly as systemd
reads them (an allow-list, then ``~`` removals, then additions, group names expanded by
``systemd-analyze syscall-filter``) and loaded with libseccomp into a child process, which then
runs citygw's own code. A call the filter refuses fails with EPERM, as under the unit's
``SystemCallErrorNumber=EPERM``.
"""

from __future__ import annotations

import ctypes.util
import functools
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
UNIT = REPO / "systemd" / "citygw.service"

pytestmark = [
    pytest.mark.skipif(
        shutil.which("systemd-analyze") is None, reason="systemd-analyze (Debian package systemd)"
    ),
    pytest.mark.skipif(ctypes.util.find_library("seccomp") is None, reason="libseccomp (libseccomp2)"),
]


@functools.cache
def _expand(name: str) -> frozenset[str]:
    """The system calls a name or an @group of ``SystemCallFilter=`` stands for (on this machine)."""
    if not name.startswith("@"):
        return frozenset({name})
    done = subprocess.run(
        ["systemd-analyze", "syscall-filter", name], capture_output=True, text=True, check=True
    )
    calls: set[str] = set()
    for line in done.stdout.splitlines()[1:]:
        word = line.strip()
        if not word:
            break  # the listing of the group ends at its first blank line
        if not word.startswith("#"):
            calls |= _expand(word)
    return frozenset(calls)


def unit_allowed_calls(unit_text: str) -> frozenset[str]:
    """The set of system calls ``SystemCallFilter=`` lines allow, in systemd's order of reading."""
    allowed: set[str] | None = None
    for line in unit_text.splitlines():
        if not line.startswith("SystemCallFilter="):
            continue
        value = line.partition("=")[2].strip()
        deny = value.startswith("~")
        names = set().union(*(_expand(n) for n in value.lstrip("~").split()))
        if allowed is None:
            assert not deny, "the unit's first SystemCallFilter= is an allow-list"
            allowed = set(names)
        elif deny:
            allowed -= names
        else:
            allowed |= names
    assert allowed is not None, "the unit has no SystemCallFilter="
    return frozenset(allowed)


# A child that loads the filter (libseccomp: default action EPERM, the allowed calls pass), then
# asks gateway.clock what it asks on a box, and reports whether the kernel answered.
_CHILD = r"""
import ctypes, ctypes.util, errno, json, sys
calls = json.loads(sys.stdin.read())
from citygw.pipeline import clock  # import before the filter: the loader's calls are not the question
seccomp = ctypes.CDLL(ctypes.util.find_library("seccomp"), use_errno=True)
seccomp.seccomp_init.restype = ctypes.c_void_p
seccomp.seccomp_init.argtypes = [ctypes.c_uint32]
seccomp.seccomp_rule_add.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int, ctypes.c_uint]
seccomp.seccomp_load.argtypes = [ctypes.c_void_p]
seccomp.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
SCMP_ACT_ALLOW = 0x7FFF0000
SCMP_ACT_ERRNO = 0x00050000 | errno.EPERM
ctx = seccomp.seccomp_init(SCMP_ACT_ERRNO)
for name in calls:
    number = seccomp.seccomp_syscall_resolve_name(name.encode())
    if number >= 0:  # a call of another architecture
        assert seccomp.seccomp_rule_add(ctx, SCMP_ACT_ALLOW, number, 0) == 0, name
assert seccomp.seccomp_load(ctx) == 0, "seccomp_load"
print(json.dumps({"kernel": clock._adjtimex()}))
"""


def _clock_under(calls: frozenset[str]) -> bool | None:
    done = subprocess.run(
        [sys.executable, "-c", _CHILD],
        input=json.dumps(sorted(calls)),
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    state: bool | None = json.loads(done.stdout)["kernel"]
    return state


def test_the_clock_check_gets_the_kernel_answer_inside_the_units_filter() -> None:
    from citygw.pipeline import clock

    if clock._adjtimex() is None:
        pytest.skip("adjtimex is filtered here already (a container's seccomp profile)")
    allowed = unit_allowed_calls(UNIT.read_text())
    assert "clock_settime" not in allowed and "settimeofday" not in allowed, "reading, not setting"
    # glibc's adjtimex() is clock_adjtime(CLOCK_REALTIME) (clock_adjtime64 on 32-bit time64)
    assert {"adjtimex", "clock_adjtime", "clock_adjtime64"} <= allowed
    assert _clock_under(allowed) is not None, "inside the filter the clock check fell back to a file"


def test_the_harness_sees_a_filter_that_refuses_the_clock_call() -> None:
    """The same child without clock_adjtime: the kernel is not asked (what the old unit did)."""
    from citygw.pipeline import clock

    if clock._adjtimex() is None:
        pytest.skip("adjtimex is filtered here already (a container's seccomp profile)")
    allowed = unit_allowed_calls(UNIT.read_text())
    assert _clock_under(allowed - {"clock_adjtime", "clock_adjtime64"}) is None
