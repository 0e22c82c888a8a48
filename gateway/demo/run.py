"""``citygw demo``: the real gateway on simulated devices, through its real drivers, into a platform
that verifies every batch; with a live view, an uplink outage to watch the buffer work, a summary.

Everything runs on loopback under a temporary directory: a fresh signing key; a mosquitto; a link
(:class:`~citygw.demo.link.Link`) between the gateway and the broker that can be cut; an Eastron
SDM630 behind a pymodbus server; a PMS5003 and a GPS on pty serial lines; the recorded BLE adverts
``config/demo.yaml`` replays at bleak's scanner seam; a synthetic load; the daemon's own
:class:`~citygw.daemon.gateway.Gateway` with that config (the same code a pole runs); and the reference
receiver as the city platform.

Stopping (``--duration``, ``q``, Ctrl-C, SIGTERM) is orderly: the link comes back if it was cut, the
gateway reconnects, stops its drivers, seals and delivers what it holds, and the platform's count
is compared with what the gateway accepted. A second Ctrl-C stops the gateway at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
import tempfile
import termios
import time
import tty
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from rich.text import Text

from citygw.config import load_config
from citygw.daemon.gateway import Gateway
from citygw.demo.broker import LocalBroker, free_port
from citygw.demo.devices import Gps, Pms5003, PtyPort, Sdm630, emit
from citygw.demo.link import Link
from citygw.demo.platform import Platform
from citygw.demo.view import Snapshot, Summary, plain_line, render, scrape, snapshot
from citygw.errors import CitygwError
from citygw.ops.logging_setup import setup as setup_logging
from citygw.ops.metrics import GatewayCollector
from citygw.shipped import shipped
from citygw.uplinks.base import UplinkState
from citygw.wire.signing import generate_key

log = logging.getLogger(__name__)

DEMO_CONFIG = shipped("demo.yaml")
RECONNECT_WAIT = 15.0  # seconds the gateway has, at the end, to reconnect after an outage
DRAIN_TIMEOUT = 15.0  # seconds it has to deliver what it holds once its drivers stopped
ARRIVAL_WAIT = 10.0  # seconds the platform has to receive what was acknowledged
KEYS = "o: uplink outage on/off   q or Ctrl-C: stop"


@dataclass(frozen=True, slots=True)
class Options:
    duration: float | None = None  # seconds; None: until stopped
    rate: float = 200.0  # synthetic readings per second
    outage_at: float | None = None  # seconds after the start
    outage_for: float = 10.0
    live: bool = False  # the rich view (a terminal, no --duration)
    as_json: bool = False  # the summary as one JSON line too
    log_level: str = "warning"


@contextlib.contextmanager
def _keys() -> Iterator[int | None]:
    """stdin in cbreak mode (keys without Enter, Ctrl-C still a signal) while the view runs."""
    if not sys.stdin.isatty():
        yield None
        return
    fd = sys.stdin.fileno()
    saved = termios.tcgetattr(fd)
    tty.setcbreak(fd)
    # Ctrl-C must not flush the terminal's output queue: a flush while the view's writer waits for
    # room in a full queue can leave that writer asleep for good (seen on Linux ptys)
    mode = termios.tcgetattr(fd)
    mode[3] |= termios.NOFLSH
    termios.tcsetattr(fd, termios.TCSANOW, mode)
    try:
        yield fd
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


class Demo:
    def __init__(self, options: Options) -> None:
        self.options = options
        self.stopping = asyncio.Event()
        self.signals = 0
        self.gateway: Gateway | None = None
        self.link: Link | None = None
        self.started = time.monotonic()
        self.peak_unacked = 0  # batches sealed and not acknowledged
        self.peak_undelivered = 0  # readings accepted and not delivered
        self.timed_outage = False  # the current outage is the --outage-at one

    # -- stopping -------------------------------------------------------------------------------

    def request_stop(self) -> None:
        self.signals += 1
        if self.signals > 1 and self.gateway is not None:
            sys.stderr.write("citygw demo: stopping now\n")
            self.gateway.stop()  # a second Ctrl-C: no waiting for the link
        self.stopping.set()

    def _on_key(self, fd: int) -> None:
        keys = os.read(fd, 64).decode(errors="replace").lower()
        if "o" in keys and self.link is not None:
            self.timed_outage = False
            self.link.toggle()
        if "q" in keys:
            self.stopping.set()

    # -- the run --------------------------------------------------------------------------------

    async def run(self) -> int:
        opts = self.options
        async with contextlib.AsyncExitStack() as stack:
            workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="citygw-demo-")))
            broker = stack.enter_context(LocalBroker())
            generate_key(workdir / "signing.key")
            self.link = link = Link(broker.port)
            await link.start()
            stack.push_async_callback(link.close)
            meter = Sdm630()
            modbus = meter.server()
            await modbus.start()
            stack.push_async_callback(modbus.stop)
            ports = []
            for name in ("pms5003", "gps"):
                ports.append(PtyPort(workdir / "dev" / name))
                stack.callback(ports[-1].close)
            platform = Platform(broker.port, db=workdir / "platform.db", keys=[workdir / "signing.key.pub"])
            stack.callback(platform.close)
            metrics_port = free_port()
            environ = dict(
                os.environ,
                CITYGW_DEMO_DIR=str(workdir),
                CITYGW_DEMO_PORT=str(link.port),
                CITYGW_DEMO_MODBUS_PORT=str(modbus.port),
                CITYGW_DEMO_METRICS_PORT=str(metrics_port),
                CITYGW_DEMO_RATE=str(opts.rate),
            )
            config = load_config(DEMO_CONFIG, environ=environ)
            self.gateway = gateway = Gateway(config, drain_timeout=DRAIN_TIMEOUT, handle_signals=False)
            header = (
                f"[bold]citygw demo[/]  gateway {config.gateway.id}, {len(config.devices)} simulated "
                f"devices  ·  broker mqtt://127.0.0.1:{broker.port}  ·  "
                f"metrics http://127.0.0.1:{metrics_port}/metrics  ·  state in {workdir}"
            )
            if not opts.live:
                sys.stdout.write(Text.from_markup(header).plain + "\n")
                sys.stdout.flush()
            return await self._run(gateway, platform, meter, ports, header)
        raise AssertionError("unreachable")  # pragma: no cover  (mypy: the stack does not swallow)

    async def _run(
        self, gateway: Gateway, platform: Platform, meter: Sdm630, ports: list[PtyPort], header: str
    ) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self.request_stop)
        try:
            async with asyncio.TaskGroup() as group:
                devices = [
                    group.create_task(meter.run(), name="demo-sdm630"),
                    group.create_task(emit(ports[0], Pms5003().frames, 1.0), name="demo-pms5003"),
                    group.create_task(emit(ports[1], Gps().frames, 1.0), name="demo-gps"),
                ]
                ready = asyncio.Event()
                receiving = group.create_task(platform.run(ready), name="demo-platform")
                await asyncio.wait_for(ready.wait(), 10)
                self.started = time.monotonic()
                running = group.create_task(gateway.run(), name="demo-gateway")
                await self._show(gateway, platform, running, header)
                await self._stop(gateway, running)
                await self._arrivals(gateway, platform)
                for task in [*devices, receiving]:
                    task.cancel()
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)
        summary = self._summary(gateway, platform)
        for line in summary.lines():
            sys.stdout.write(line + "\n")
        if self.options.as_json:
            sys.stdout.write(json.dumps(summary.as_dict()) + "\n")
        sys.stdout.flush()
        return 0 if summary.ok else 1

    def _tick(self) -> None:
        """The outage timer, and the buffer's peak depth."""
        assert self.gateway is not None and self.link is not None
        opts, link, elapsed = self.options, self.link, time.monotonic() - self.started
        if opts.outage_at is not None and link.cuts == 0 and elapsed >= opts.outage_at:
            self.timed_outage = True
            link.cut()
        if self.timed_outage and not link.up and elapsed >= self._outage_end():
            self.timed_outage = False
            link.restore()
        status = self.gateway.uplinks[0].status
        self.peak_unacked = max(self.peak_unacked, self.gateway.buffer.last_seq - status.acked_seq)
        undelivered = self.gateway.pipeline.counters.accepted - status.delivered_readings
        self.peak_undelivered = max(self.peak_undelivered, undelivered)

    def _outage_end(self) -> float:
        return (self.options.outage_at or 0.0) + self.options.outage_for

    def _snapshot(self, gateway: Gateway, platform: Platform, collector: GatewayCollector) -> Snapshot:
        assert self.link is not None
        elapsed = time.monotonic() - self.started
        left = max(0.0, self._outage_end() - elapsed) if self.timed_outage else None
        return snapshot(
            config=gateway.config,
            metrics=scrape(collector),
            platform_devices=platform.devices,
            platform_totals=asdict(platform.receiver.counts),
            elapsed=elapsed,
            link_up=self.link.up,
            outage_left=left,
            peak_unacked=self.peak_unacked,
            peak_undelivered=self.peak_undelivered,
        )

    async def _show(
        self, gateway: Gateway, platform: Platform, running: asyncio.Task[None], header: str
    ) -> None:
        """Until a stop is asked for (or the duration is up): the live view or progress lines."""
        opts = self.options
        collector = gateway.ops.collector()
        deadline = None if opts.duration is None else self.started + opts.duration

        def due() -> bool:
            return (
                self.stopping.is_set()
                or running.done()
                or (deadline is not None and time.monotonic() >= deadline)
            )

        if not opts.live:
            next_line = time.monotonic() + 1.0
            while not due():
                self._tick()
                if time.monotonic() >= next_line:
                    next_line += 1.0
                    sys.stdout.write(plain_line(self._snapshot(gateway, platform, collector)) + "\n")
                    sys.stdout.flush()
                await asyncio.sleep(0.1)
            return

        from rich.console import Console
        from rich.live import Live

        loop = asyncio.get_running_loop()
        console = Console()
        with _keys() as fd, Live(console=console, refresh_per_second=4, redirect_stderr=True) as live:
            setup_logging(opts.log_level, stream=sys.stderr)  # rich's proxy: logs go above the view
            if fd is not None:
                loop.add_reader(fd, self._on_key, fd)
            try:
                while not due():
                    self._tick()
                    live.update(
                        render(self._snapshot(gateway, platform, collector), header=header, keys=KEYS)
                    )
                    await asyncio.sleep(0.25)
                live.update(
                    render(
                        self._snapshot(gateway, platform, collector),
                        header=header,
                        keys="stopping: reconnecting, delivering what the buffer holds...",
                    )
                )
            finally:
                if fd is not None:
                    loop.remove_reader(fd)
        setup_logging(opts.log_level)

    async def _stop(self, gateway: Gateway, running: asyncio.Task[None]) -> None:
        """Bring the link back, let the gateway reconnect, then stop it (it delivers as it stops)."""
        assert self.link is not None
        self.link.restore()
        uplinks = gateway.uplinks
        deadline = time.monotonic() + RECONNECT_WAIT
        while (
            not running.done()
            and self.signals < 2
            and time.monotonic() < deadline
            and any(u.status.state is not UplinkState.CONNECTED for u in uplinks)
        ):
            await asyncio.sleep(0.1)
        gateway.stop()
        await running

    async def _arrivals(self, gateway: Gateway, platform: Platform) -> None:
        """Give the platform a moment for the batches the broker acknowledged last."""
        accepted = gateway.pipeline.counters.accepted
        deadline = time.monotonic() + ARRIVAL_WAIT
        while platform.readings < accepted and time.monotonic() < deadline and self.signals < 2:
            await asyncio.sleep(0.1)

    def _summary(self, gateway: Gateway, platform: Platform) -> Summary:
        assert self.link is not None
        report = platform.report()
        chain = report["gateways"].get(gateway.config.gateway.id, {})
        totals = report["totals"]
        accepted = gateway.pipeline.counters.accepted
        return Summary(
            devices={
                name: platform.devices[name].readings if name in platform.devices else 0
                for name in gateway.config.devices
            },
            accepted=accepted,
            batches_verified=platform.batches,
            readings_verified=platform.readings,
            duplicates=totals["duplicates"],
            bad=totals["bad"] + totals["conflicts"],
            missing_seqs=chain.get("missing", []),
            broken_links=chain.get("broken_links", []),
            lost=accepted - platform.readings,
            outages=self.link.cuts,
            outage_seconds=self.link.down_total,
            peak_unacked=self.peak_unacked,
            peak_undelivered=self.peak_undelivered,
            duration=time.monotonic() - self.started,
        )


def run_demo(options: Options) -> int:
    """Run the demo; the exit code: 0 when every device delivered and nothing was lost or unverified."""
    try:
        return asyncio.run(Demo(options).run())
    except KeyboardInterrupt:  # before the demo's own handlers were in place
        return 130
    except CitygwError as exc:  # e.g. mosquitto is not installed
        sys.stderr.write(f"citygw demo: {exc}\n")
        return 1
