"""The demo box's uplink: a TCP relay between the gateway and the broker that can be cut.

Cutting it drops every relayed connection and refuses new ones (a cellular link gone), while the
broker and the platform behind it stay up; restoring it lets the gateway reconnect and drain what
its buffer kept. The demo's platform connects to the broker directly, not through the link.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

from citygw.logs import EventLog

log = EventLog(__name__)

CHUNK = 65536


class Link:
    """Listens on a free loopback port (:attr:`port`) and relays to ``127.0.0.1:target``."""

    def __init__(self, target: int) -> None:
        self.target = target
        self.port = 0
        self.up = True
        self.cuts = 0
        self.down_since: float | None = None  # monotonic
        self.down_total = 0.0  # seconds
        self._server: asyncio.Server | None = None
        self._open: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        self._drop()

    def cut(self) -> None:
        """The uplink goes down: open connections are dropped, new ones refused."""
        if not self.up:
            return
        self.up = False
        self.cuts += 1
        self.down_since = time.monotonic()
        self._drop()
        log.event("demo_link").info("demo: uplink cut")

    def restore(self) -> None:
        if self.up:
            return
        self.up = True
        if self.down_since is not None:
            self.down_total += time.monotonic() - self.down_since
        self.down_since = None
        log.event("demo_link").info("demo: uplink restored")

    def toggle(self) -> None:
        self.restore() if not self.up else self.cut()

    def _drop(self) -> None:
        for writer in list(self._open):
            writer.transport.abort()
        self._open.clear()

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if not self.up:
            writer.transport.abort()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target)
        except OSError:
            writer.transport.abort()
            return
        self._open.update((writer, up_writer))
        try:
            await asyncio.gather(self._pump(reader, up_writer), self._pump(up_reader, writer))
        finally:
            for side in (writer, up_writer):
                self._open.discard(side)
                side.transport.abort()

    @staticmethod
    async def _pump(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError):
            while data := await source.read(CHUNK):
                sink.write(data)
                await sink.drain()
        sink.transport.abort()  # one side ended: end the other, as a TCP proxy does
