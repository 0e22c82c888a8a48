"""The daemon: builds the pipeline from a validated config and supervises its tasks.

One :class:`asyncio.TaskGroup` owns a named task per bus, uplink and the writer. Supervision
retries only the conditions the design expects — a full disk, I/O errors, a peer down, a device
silent — and most of those inside the task that meets them (uplinks and drivers back off and
reconnect, the writer keeps readings pending); a task that ends on one of them anyway is
restarted after a pause, logged once per reason. Anything else is a bug: it ends the task group,
the daemon flushes what it can into the buffer and exits 1 with the traceback logged once, and
systemd restarts it (a daemon that stays up but accepts nothing would never trip the watchdog).

One daemon per buffer: :class:`gateway.lock.BufferLock` is taken before the buffer is opened.
SIGTERM/SIGINT stop the drivers, flush the intake into the buffer (sealing what is staged), stop
the uplinks and close the buffer, in that order.
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
from gateway.buffer import BatchLimits, Buffer, is_transient
from gateway.config.location import places
from gateway.config.report import report_policies
from gateway.errors import CitygwError, DeliveryError
from gateway.health import HealthReport, default_config_version
from gateway.liveness import Liveness
from gateway.lock import BufferLock
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


def expected(exc: BaseException) -> bool:
    """Whether ``exc`` is a condition the design retries: an I/O error or a peer down (OSError,
    timeouts, :class:`DeliveryError`), or a buffer call that may pass (full, I/O, locked)."""
    if isinstance(exc, BaseExceptionGroup):
        return all(expected(e) for e in exc.exceptions)
    return isinstance(exc, OSError | DeliveryError) or is_transient(exc)


class TaskFailed(CitygwError):
    """A task ended on an error the design does not expect; its traceback is logged already."""

    def __init__(self, task: str, error: BaseException) -> None:
        super().__init__(f"task {task} failed: {type(error).__name__}: {error}")
        self.task = task
        self.error = error


async def supervise(name: str, work: Callable[[], Awaitable[None]], *, pause: float = RESTART_PAUSE) -> None:
    """Run ``work`` until it returns. After an expected failure (:func:`expected`) run it again
    ``pause`` seconds later, logging each distinct reason once; any other error is logged with
    its traceback and raised as :class:`TaskFailed`, which ends the daemon's task group."""
    failures = 0
    last = ""
    while True:
        try:
            await work()
            return
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if not expected(exc):
                log.event("task_failed").error(
                    "task %s failed on an unexpected error (a bug); stopping so that the service "
                    "manager restarts citygw",
                    name,
                    exc_info=True,
                )
                raise TaskFailed(name, exc) from exc
            failures += 1
            reason = f"{type(exc).__name__}: {exc}"
            if reason != last:
                log.event("task_restarting").warning(
                    "task %s stopped (%s); restarting in %.0f s, again after each failure (%d so far)",
                    name,
                    reason,
                    pause,
                    failures,
                )
            last = reason
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
        signer = Signer.from_file(config.gateway.key_file, alg=config.gateway.jws_alg)
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
        self.lock = BufferLock(self.buffer.path)
        self.store = Store(self.buffer)
        self.pipeline = Pipeline(self.store, commit_interval=buf.commit_interval, commit_rows=buf.commit_rows)
        located = {"places": places(config.gateway.location, config.devices)}  # NGSI-LD entities need them
        # the config version in effect (health readings, MQTT status); reload and remote config set it
        self.config_version = default_config_version(config)
        self.liveness = Liveness(signer, config.gateway.id, lambda: self.config_version)  # MQTT status
        self.uplinks = [
            UPLINK_RUNNERS[uplink.type](
                name,
                uplink,
                gateway=config.gateway.id,
                pipeline=self.pipeline,
                **(located if uplink.type == "ngsi-ld" else {}),
                **({"liveness": self.liveness} if uplink.type == "mqtt" else {}),
            )
            for name, uplink in config.uplinks.items()
        ]
        policies = report_policies(config.devices)
        # edge processing (report: on_change / aggregate): in the pipeline, after the clock's stamp
        self.reporter = Reporter(policies, started=time.time()) if policies else None
        if self.reporter is not None:
            self.pipeline.process = self.reporter.process
        # before the metrics, which hook their histograms into it
        self.health: dict[str, DeviceHealth] = {name: DeviceHealth(name) for name in config.devices}
        self._stop = asyncio.Event()
        self.ops = Operations(self)  # clock, watchdog, metrics
        self.health_report = HealthReport(self)  # the box's own health, as readings of device "gateway"

    def _buses(self) -> dict[str, Callable[[], Awaitable[None]]]:
        """One unit of work per bus that has devices, from the bus type's runner."""
        work: dict[str, Callable[[], Awaitable[None]]] = {}
        for bus_name, bus in self.config.buses.items():
            devices = {name: d for name, d in self.config.devices.items() if d.bus == bus_name}
            if not devices:
                continue
            runner = BUS_RUNNERS[bus.type]
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
        """Run until :meth:`stop` (or a signal); then shut down in order and return.

        Raises :class:`gateway.lock.BufferInUse` (before touching the buffer) when another daemon
        holds the buffer, and :class:`TaskFailed` when a task ended on an unexpected error.
        """
        self.lock.acquire()
        try:
            await self._run()
        finally:
            self.lock.release()

    async def _salvage(self) -> None:
        """A task failed: commit and seal what the intake holds, if the buffer still lets us."""
        try:
            await asyncio.wait_for(self.pipeline.flush(), max(self.drain_timeout, 5.0))
        except Exception as exc:  # the failure may be the buffer's own: say so, the exit goes on
            log.event("salvage_failed").warning(
                "after the failure, %d readings in memory could not be committed: %s",
                self.pipeline.pending_count,
                exc,
            )

    async def _run(self) -> None:
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
                heartbeat = group.create_task(supervise("heartbeat", self._heartbeat), name="heartbeat")
                ops = group.create_task(supervise("ops", self.ops.run), name="ops")
                health = group.create_task(supervise("health", self.health_report.run), name="health")
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
                for task in [*buses, health]:  # the producers stop first
                    task.cancel()
                await asyncio.gather(*buses, health, return_exceptions=True)
                if self.reporter is not None:  # open windows leave flagged partial
                    await self.pipeline.put_records(self.reporter.flush(time.time()))
                self.pipeline.stop()
                await asyncio.gather(writer, return_exceptions=True)
                await self.pipeline.flush()
                await self._drain(started + self.drain_timeout)
                for task in [*uplinks, *others]:
                    task.cancel()
        except BaseExceptionGroup as failure:
            failed = [e for e in failure.exceptions if isinstance(e, TaskFailed)]
            if not failed:
                raise
            await self._salvage()
            raise failed[0] from None
        else:
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
