"""systemd's watchdog, petted only while the daemon is really alive.

A ``WATCHDOG=1`` sent from a coroutine proves little: it is the loop itself that may be stuck. So
the pings come from a thread of their own, and that thread sends one only while

* the event loop turned recently: a coroutine stamps :attr:`Watchdog.loop_beat` every
  ``beat`` seconds, and a blocking call anywhere on the loop (a driver reading a port
  synchronously, a runaway computation) stops the stamps; and
* the buffer's thread answers: a no-op queued behind the commits comes back within
  ``store_limit`` seconds (a hung SD card leaves it waiting).

Bus and uplink tasks need no probe of their own: they run on the loop (a blocked one stops the
beat), and a task that fails on an unexpected error ends the daemon (citygw.daemon.gateway). When a
check fails the pings stop, and systemd restarts the service ``WatchdogSec=`` later
(``Restart=on-failure``).

For tests only, ``CITYGW_TEST_BLOCK_LOOP=AFTER:SECONDS`` blocks the event loop with a
``time.sleep(SECONDS)`` AFTER seconds after start.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from typing import TYPE_CHECKING

from citygw.logs import EventLog

if TYPE_CHECKING:
    from citygw.buffer.thread import Store
    from citygw.ops.sdnotify import Notifier

log = EventLog(__name__)

TEST_BLOCK_LOOP = "CITYGW_TEST_BLOCK_LOOP"


class Watchdog:
    """The liveness of the loop and the buffer thread, and the thread that pets systemd's watchdog."""

    def __init__(self, notifier: Notifier, store: Store, *, timeout: float | None = None) -> None:
        """``timeout``: ``WATCHDOG_USEC`` in seconds (None: systemd does not watch; liveness is still
        measured, for the metrics)."""
        self.notifier = notifier
        self.store = store
        self.timeout = timeout
        self.ping_every = timeout / 4 if timeout else 5.0
        self.beat = min(1.0, self.ping_every / 2)
        self.loop_stale = timeout / 2 if timeout else 30.0  # beats older than this: the loop is stuck
        self.store_limit = max(2 * timeout, 30.0) if timeout else 120.0
        now = time.monotonic()
        self.loop_beat = now
        self.loop_lag = 0.0  # how late the last beat woke up: the loop's responsiveness
        self._probe_since: float | None = None  # a buffer-thread probe outstanding since
        self.pings = 0
        self.healthy = True
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    async def run(self) -> None:
        """The loop's side: stamp the beat, keep one probe of the buffer thread outstanding."""
        self._schedule_test_block()
        probe: asyncio.Future[None] | None = None
        try:
            while True:
                before = time.monotonic()
                await asyncio.sleep(self.beat)
                now = time.monotonic()
                self.loop_lag = max(0.0, now - before - self.beat)
                self.loop_beat = now
                if self._probe_since is None:  # never awaited here: a slow commit must not stop the beat
                    self._probe_since = now
                    probe = asyncio.ensure_future(self.store.call(self._probed))
        finally:
            if probe is not None:
                probe.cancel()

    def _probed(self) -> None:  # runs on the buffer's thread
        self._probe_since = None

    def check(self, now: float | None = None) -> str | None:
        """What is stuck, or None when the loop and the buffer thread are alive (any thread)."""
        now = time.monotonic() if now is None else now
        quiet = now - self.loop_beat
        if quiet > self.loop_stale:
            return f"the event loop has not turned for {quiet:.1f} s"
        since = self._probe_since
        if since is not None and now - since > self.store_limit:
            return f"the buffer thread has not answered for {now - since:.1f} s"
        return None

    def start(self) -> None:
        """Start pinging (when systemd asked for it: ``$WATCHDOG_USEC``)."""
        if not self.timeout or self._thread is not None:
            return
        self._thread = threading.Thread(target=self._pinger, name="citygw-watchdog", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def _pinger(self) -> None:
        while not self._stop.wait(self.ping_every):
            problem = self.check()
            if problem is None:
                if not self.healthy:
                    log.event("watchdog_ok").warning("watchdog: alive again; pinging systemd")
                self.healthy = True
                self.pings += 1
                self.notifier.notify(watchdog=1)
            elif self.healthy:
                self.healthy = False
                log.event("watchdog_stuck").error(
                    "watchdog: %s; no longer pinging systemd, which restarts the service",
                    problem,
                )

    def _schedule_test_block(self) -> None:
        spec = os.environ.get(TEST_BLOCK_LOOP)
        if not spec:
            return
        after, _, seconds = spec.partition(":")
        log.event("watchdog_test_block").warning(
            "test build: blocking the event loop for %s s in %s s", seconds, after
        )
        asyncio.get_running_loop().call_later(float(after), time.sleep, float(seconds))
