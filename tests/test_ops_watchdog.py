"""systemd's notify protocol and watchdog: READY, STATUS, and WATCHDOG only while the loop turns."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from citygw.demo.broker import LocalBroker
from citygw.ops.watchdog import TEST_BLOCK_LOOP, Watchdog

from .support import Collector, Daemon, write_config


class NotifySocket:
    """What systemd does with $NOTIFY_SOCKET: a unix datagram socket, drained all the time."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.1)
        self.messages: list[tuple[float, str]] = []
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._listen, daemon=True)
        self._thread.start()

    def _listen(self) -> None:
        while not self._done.is_set():
            with contextlib.suppress(TimeoutError):
                self.messages.append((time.monotonic(), self.sock.recv(4096).decode()))

    def times(self, field: str) -> list[float]:
        return [t for t, m in list(self.messages) if field in m.splitlines()]

    def close(self) -> None:
        self._done.set()
        self._thread.join()
        self.sock.close()


@pytest.fixture
def notify(tmp_path: Path) -> Iterator[NotifySocket]:
    n = NotifySocket(tmp_path / "notify.sock")
    yield n
    n.close()


def _start(daemon: Daemon, env: dict[str, str]) -> None:
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        daemon.start()
    finally:
        for k, v in saved.items():
            if v is None:
                del os.environ[k]
            else:
                os.environ[k] = v


def test_a_blocked_event_loop_stops_the_watchdog_pings_and_they_resume_after(
    tmp_path: Path,
    key: Path,
    broker: LocalBroker,
    collector: Collector,
    notify: NotifySocket,
    daemon_factory: Callable[[Path], Daemon],
) -> None:
    """WATCHDOG_USEC=1 s: a ping every 0.25 s while alive; the test build blocks the loop for 3 s."""
    config = write_config(
        tmp_path / "c.yaml", key=key, port=broker.port, devices={"d1": {"bus": "gen", "rate": 100}}
    )
    daemon = daemon_factory(config)
    _start(
        daemon,
        {"NOTIFY_SOCKET": str(notify.path), "WATCHDOG_USEC": "1000000", TEST_BLOCK_LOOP: "2.5:3"},
    )
    collector.wait(lambda c: c.readings() > 0, 30, "readings")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # wait for the block to pass and the pings to come back
        pings = notify.times("WATCHDOG=1")
        gaps = [b - a for a, b in itertools.pairwise(pings)]
        if gaps and max(gaps) > 2.5 and pings[-1] > pings[gaps.index(max(gaps)) + 1] + 1.0:
            break
        time.sleep(0.2)
    assert daemon.terminate() == 0
    first = notify.messages[0][1].splitlines()
    assert "READY=1" in first, notify.messages[:3]
    assert any(m.startswith("STATUS=accepted") for _, m in notify.messages)
    pings = notify.times("WATCHDOG=1")
    gaps = [b - a for a, b in itertools.pairwise(pings)]
    longest = max(gaps)
    # blocked 3 s: the pinger thread goes quiet once the loop's beat is 0.5 s old, for ~2.5 s
    assert 2.0 < longest < 4.5, gaps
    after = gaps.index(longest) + 1
    assert len(pings[:after]) >= 4, "pings every 0.25 s before the block"
    assert len(pings[after:]) >= 4, "pings resumed once the loop turned again"
    normal = sorted(gaps)[len(gaps) // 2]
    assert 0.15 < normal < 0.5, gaps
    log = (tmp_path / "daemon.log").read_text()
    assert "event=watchdog_stuck" in log and "the event loop has not turned for" in log
    assert "event=watchdog_ok" in log


def test_without_watchdog_usec_there_are_no_pings_but_ready_and_status(
    tmp_path: Path,
    key: Path,
    broker: LocalBroker,
    collector: Collector,
    notify: NotifySocket,
    daemon_factory: Callable[[Path], Daemon],
) -> None:
    config = write_config(tmp_path / "c.yaml", key=key, port=broker.port, devices={"d1": {"bus": "gen"}})
    daemon = daemon_factory(config)
    _start(daemon, {"NOTIFY_SOCKET": str(notify.path)})
    collector.wait(lambda c: c.readings() > 0, 30, "readings")
    assert daemon.terminate() == 0
    assert notify.times("READY=1") and notify.times("STOPPING=1")
    assert not notify.times("WATCHDOG=1")


class _Notifier:
    def __init__(self) -> None:
        self.sent: list[dict[str, str | int]] = []

    def notify(self, **fields: str | int) -> None:
        self.sent.append(fields)


class _Store:
    """Runs the probe like gateway.store.Store, or never (a buffer thread stuck in a commit)."""

    def __init__(self, *, stuck: bool) -> None:
        self.stuck = stuck

    async def call(self, fn: Callable[[], None]) -> None:
        if self.stuck:
            await asyncio.Event().wait()
        fn()


async def test_a_stuck_buffer_thread_stops_the_pings_a_busy_one_does_not() -> None:
    for stuck in (False, True):
        notifier = _Notifier()
        dog = Watchdog(notifier, _Store(stuck=stuck), timeout=0.4)  # type: ignore[arg-type]
        dog.store_limit = 0.5
        dog.start()
        beat = asyncio.create_task(dog.run())
        await asyncio.sleep(1.5)
        healthy = dog.check() is None
        recent = len(notifier.sent)
        await asyncio.sleep(0.5)
        recent = len(notifier.sent) - recent
        beat.cancel()
        dog.stop()
        assert healthy is not stuck
        assert (recent > 0) is not stuck, (stuck, notifier.sent)
        if stuck:
            assert "buffer thread has not answered" in (dog.check() or "")


def test_check_names_a_loop_that_stopped_turning() -> None:
    dog = Watchdog(_Notifier(), _Store(stuck=False), timeout=10.0)  # type: ignore[arg-type]
    now = time.monotonic()
    dog.loop_beat = now - 1.0
    assert dog.check(now) is None
    dog.loop_beat = now - 6.0
    assert dog.check(now) == "the event loop has not turned for 6.0 s"
