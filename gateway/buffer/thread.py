"""The buffer's own thread: SQLite work (and its fsyncs) never runs on the event loop."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import ParamSpec, TypeVar

from citygw.buffer import Buffer

P = ParamSpec("P")
T = TypeVar("T")


class Store:
    """Runs every :class:`Buffer` call on one dedicated thread, in submission order.

    A 500 ms SD-card stall then delays the next commit, not the polling of devices.
    """

    def __init__(self, buffer: Buffer) -> None:
        self.buffer = buffer
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="citygw-buffer")

    async def call(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._thread, lambda: fn(*args, **kwargs))

    async def open(self) -> None:
        await self.call(self.buffer.open)

    async def close(self) -> None:
        """Close the buffer (persisting cursors) and stop the thread; safe to call twice."""
        try:
            await self.call(self.buffer.close)
        finally:
            self._thread.shutdown(wait=True)
