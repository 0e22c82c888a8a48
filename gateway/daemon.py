"""The daemon: builds the pipeline from a validated config and supervises its tasks.

One :class:`asyncio.TaskGroup` owns a named task per bus, uplink and the writer. A task that
crashes is logged with its traceback and restarted after a pause; a bus whose devices are all
done ends quietly. SIGTERM/SIGINT stop the drivers, flush the intake into the buffer (sealing
what is staged), stop the uplinks and close the buffer, in that order.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import importlib
import signal
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from drivers.health import DeviceHealth
from gateway.buffer import BatchLimits, Buffer
from gateway.config.report import report_policies
from gateway.logs import EventLog
from gateway.ops import Operations
from gateway.pipeline import Pipeline
from gateway.report import Reporter
from gateway.sdnotify import Notifier
from gateway.signing import Signer
from gateway.store import Store
from gateway.uplinks.base import UplinkState

if TYPE_CHECKING:
    from gateway.config import Config

log = EventLog(__name__)

RESTART_PAUSE = 5.0  # seconds between restarts of a crashed task


def _entry(target: str) -> Callable[..., Any]:
    """``"module:attribute"``, imported on first call: a box loads only the drivers and uplinks
    its config names (aiohttp, pymodbus, pyserial and bleak each cost megabytes of RSS)."""
    module, _, attribute = target.partition(":")

    def call(*args: Any, **kwargs: Any) -> Any:
        return getattr(importlib.import_module(module), attribute)(*args, **kwargs)

    call.__qualname__ = call.__name__ = target
    return call


# uplink type -> class: Uplink(name, config, gateway=..., pipeline=...), with .run() and .status
UPLINK_RUNNERS: dict[str, Callable[..., Any]] = {
    "mqtt": _entry("gateway.uplinks.mqtt:MqttUplink"),
    "http": _entry("gateway.uplinks.http:HttpUplink"),
    "ngsi-ld": _entry("gateway.uplinks.http:NgsiLdUplink"),
}

# bus type -> runner: run(bus_name, bus_config, {device: device_config}, sink, {device: health})
BUS_RUNNERS: dict[str, Callable[..., Awaitable[None]]] = {
    "synthetic": _entry("drivers.synthetic:run_bus"),
    "modbus-rtu": _entry("drivers.modbus.bus:run_bus"),
    "modbus-tcp": _entry("drivers.modbus.bus:run_bus"),
    "modbus-rtu-over-tcp": _entry("drivers.modbus.bus:run_bus"),
    "ble": _entry("drivers.ble.bus:run_bus"),
    "serial": _entry("drivers.serial.transport:run_bus"),
}


async def supervise(name: str, work: Callable[[], Awaitable[None]], *, pause: float = RESTART_PAUSE) -> None:
    """Run ``work`` until it returns; log and restart it whenever it crashes."""
    crashes = 0
    while True:
        try:
            await work()
            return
        except asyncio.CancelledError:
            raise
        except Exception:
            crashes += 1
            log.event("task_crashed").exception(
                "task %s crashed (%d times); restarting in %.0f s",
                name,
                crashes,
                pause,
            )
            await asyncio.sleep(pause)


class Gateway:
    """One running gateway: buffer, pipeline, drivers and uplinks of one config."""

    def __init__(
        self,
        config: Config,
        *,
        notifier: Notifier | None = None,
        drain_timeout: float = 2.0,
        handle_signals: bool = True,
    ) -> None:
        """``handle_signals``: SIGTERM and SIGINT call :meth:`stop` (False: the embedding program
        decides when to stop, e.g. ``citygw demo`` restores its uplink first)."""
        self.config = config
        self.drain_timeout = drain_timeout
        self.handle_signals = handle_signals
        self.notifier = notifier or Notifier()
        signer = Signer.from_file(config.gateway.key_file)
        buf = config.buffer
        self.buffer = Buffer(
            config.buffer_path(),
            gateway=config.gateway.id,
            signer=signer,
            uplinks=list(config.uplinks),
            limits=BatchLimits(buf.batch.max_readings, buf.batch.max_bytes, buf.batch.max_age),
            synchronous=buf.synchronous,
            max_disk=buf.max_disk,
            max_age=buf.max_age,
        )
        self.store = Store(self.buffer)
        self.pipeline = Pipeline(self.store, commit_interval=buf.commit_interval, commit_rows=buf.commit_rows)
        self.uplinks = [
            UPLINK_RUNNERS[uplink.type](name, uplink, gateway=config.gateway.id, pipeline=self.pipeline)
            for name, uplink in config.uplinks.items()
        ]
        policies = report_policies(config.devices)
        # edge processing (report: on_change / aggregate): in the pipeline, after the clock's stamp
        self.reporter = Reporter(policies, started=time.time()) if policies else None
        if self.reporter is not None:
            self.pipeline.process = self.reporter.process
        self.health: dict[str, DeviceHealth] = {}
        self._stop = asyncio.Event()
        self.ops = Operations(self)  # clock, watchdog, metrics

    def _buses(self) -> dict[str, Callable[[], Awaitable[None]]]:
        """One unit of work per bus that has devices, from the bus type's runner."""
        work: dict[str, Callable[[], Awaitable[None]]] = {}
        for bus_name, bus in self.config.buses.items():
            devices = {name: d for name, d in self.config.devices.items() if d.bus == bus_name}
            if not devices:
                continue
            runner = BUS_RUNNERS[bus.type]
            for name in devices:
                self.health[name] = DeviceHealth(name)
            health = {name: self.health[name] for name in devices}
            work[bus_name] = functools.partial(runner, bus_name, bus, devices, self.pipeline.put, health)
        return work

    def stop(self) -> None:
        self._stop.set()

    async def _close_windows(self) -> None:
        """Aggregate windows end on the clock, whether or not a sample comes to close them."""
        assert self.reporter is not None
        while True:
            await asyncio.sleep(1.0)
            out = self.reporter.due(time.time())
            if out:
                await self.pipeline.put_records(out)

    def status_line(self) -> str:
        uplinks = ", ".join(
            f"{u.name} {u.status.state.value} acked {u.status.acked_seq}" for u in self.uplinks
        )
        return (
            f"accepted {self.pipeline.counters.accepted} readings, sealed up to seq {self.buffer.last_seq}, "
            f"{self.buffer.staged_count} staged; {uplinks or 'no uplink'}"
        )

    async def _heartbeat(self) -> None:
        """sd_notify STATUS every few seconds (WATCHDOG comes from gateway.watchdog's thread)."""
        while True:
            self.notifier.notify(status=self.status_line())
            await asyncio.sleep(5.0)

    async def _drain(self, deadline: float) -> None:
        """At shutdown, give connected uplinks until ``deadline`` to deliver what was sealed."""
        while time.monotonic() < deadline and any(
            u.status.acked_seq < self.buffer.last_seq and u.status.state is UplinkState.CONNECTED
            for u in self.uplinks
        ):
            await asyncio.sleep(0.05)

    async def run(self) -> None:
        """Run until :meth:`stop` (or a signal); then shut down in order and return."""
        await self.store.open()
        loop = asyncio.get_running_loop()
        signals = (signal.SIGTERM, signal.SIGINT) if self.handle_signals else ()
        for sig in signals:
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, self.stop)
        try:
            async with asyncio.TaskGroup() as group:
                writer = group.create_task(supervise("writer", self.pipeline.run), name="writer")
                uplinks = [
                    group.create_task(supervise(f"uplink-{u.name}", u.run), name=f"uplink-{u.name}")
                    for u in self.uplinks
                ]
                buses = [
                    group.create_task(supervise(f"bus-{name}", work), name=f"bus-{name}")
                    for name, work in self._buses().items()
                ]
                heartbeat = group.create_task(self._heartbeat(), name="heartbeat")
                ops = group.create_task(supervise("ops", self.ops.run), name="ops")
                others = [heartbeat, ops]
                if self.reporter is not None:
                    windows = supervise("windows", self._close_windows)
                    others.append(group.create_task(windows, name="windows"))
                log.event("started").info(
                    "gateway %s running: %d buses, %d uplinks, buffer %s",
                    self.config.gateway.id,
                    len(buses),
                    len(uplinks),
                    self.buffer.path,
                )
                self.notifier.notify(ready=1, status=self.status_line())
                self.ops.start()
                await self._stop.wait()
                started = time.monotonic()
                self.notifier.notify(stopping=1, status="stopping: flushing the buffer")
                for task in buses:
                    task.cancel()
                await asyncio.gather(*buses, return_exceptions=True)
                if self.reporter is not None:  # open windows leave flagged partial
                    await self.pipeline.put_records(self.reporter.flush(time.time()))
                self.pipeline.stop()
                await asyncio.gather(writer, return_exceptions=True)
                await self.pipeline.flush()
                await self._drain(started + self.drain_timeout)
                for task in [*uplinks, *others]:
                    task.cancel()
            log.event("stopped").info(
                "stopped in %.2f s: %s",
                time.monotonic() - started,
                self.status_line(),
            )
        finally:
            for sig in signals:
                with contextlib.suppress(NotImplementedError, RuntimeError):
                    loop.remove_signal_handler(sig)
            self.ops.close()
            await self.store.close()
            self.notifier.close()
