"""The daemon: builds the pipeline from a validated config and supervises its tasks.

One :class:`asyncio.TaskGroup` owns a named task per bus, uplink and the writer. Supervision
retries only the conditions the design expects — a full disk, I/O errors, a peer down, a device
silent — and most of those inside the task that meets them (uplinks and drivers back off and
reconnect, the writer keeps readings pending); a task that ends on one of them anyway is
restarted after a pause, logged once per reason. Anything else is a bug: it ends the task group,
the daemon flushes what it can into the buffer and exits 1 with the traceback logged once, and
systemd restarts it (a daemon that stays up but accepts nothing would never trip the watchdog).

One daemon per buffer: :class:`citygw.daemon.lock.BufferLock` is taken before the buffer is opened.
SIGTERM/SIGINT stop the drivers, flush the intake into the buffer (sealing what is staged), stop
the uplinks and close the buffer, in that order. SIGHUP reloads the config file in the same
process (:meth:`Gateway.reload`): an invalid file, or one that changes a key only a restart can
change, is refused with every problem logged and the config in effect keeps running; otherwise
the difference (:mod:`citygw.daemon.reload`) is applied — the buses and uplinks it touches restart,
the others go on, and nothing the pipeline accepted is dropped (same buffer, same chain).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import importlib
import logging
import signal
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from citygw.buffer import BatchLimits, Buffer, is_transient
from citygw.buffer.thread import Store
from citygw.config import model as config_model
from citygw.config.location import places
from citygw.config.report import report_policies
from citygw.daemon.lock import BufferLock
from citygw.daemon.reload import ReloadPlan, ReloadRefused, plan_reload
from citygw.daemon.remote import RemoteConfig, version_in_effect
from citygw.drivers.health import DeviceHealth
from citygw.errors import CitygwError, ConfigError, ConfigProblem, DeliveryError
from citygw.logs import EventLog
from citygw.ops.health import HealthReport
from citygw.ops.operations import Operations
from citygw.ops.sdnotify import Notifier
from citygw.pipeline.edge import Reporter
from citygw.pipeline.intake import Pipeline
from citygw.uplinks.base import UplinkState
from citygw.wire.liveness import Liveness
from citygw.wire.signing import Signer

if TYPE_CHECKING:
    from citygw.config import Config

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
    kind: _entry(t) for kind, t in config_model.UPLINK_RUNNERS.items()
}

# bus type -> runner: run(bus_name, bus_config, {device: device_config}, sink, {device: health})
BUS_RUNNERS: dict[str, Callable[..., Awaitable[None]]] = {
    kind: _entry(target) for kind, target in config_model.BUS_RUNNERS.items()
}


def expected(exc: BaseException) -> bool:
    """Whether ``exc`` is a condition the design retries: an I/O error or a peer down (OSError,
    timeouts, :class:`DeliveryError`), or a buffer call that may pass (full, I/O, locked)."""
    if isinstance(exc, BaseExceptionGroup):
        return all(expected(e) for e in exc.exceptions)
    return isinstance(exc, OSError | DeliveryError) or is_transient(exc)


def settle_heap() -> None:
    """Move what start-up (or a reload) built out of the cycle collector's way (:func:`gc.freeze`).

    The pipeline's records are tuples the collector tracks (a named tuple is never untracked the
    way a plain tuple of numbers and strings is), and hundreds of thousands a second live for one
    commit: each full collection would scan the whole start-up heap again for them. Frozen, the
    heap is left alone (reference counting still frees it); a reload, and stopping, unfreeze it
    first, so that what they replace or end is collected. bench/pipeline.py with the named-tuple
    records: 112k -> 120k readings/s, 0.69 -> 0.62 CPU seconds per 100k readings.
    """
    gc.collect()
    gc.freeze()


class TaskFailed(CitygwError):
    """A task ended on an error the design does not expect; its traceback is logged already."""

    def __init__(self, task: str, error: BaseException) -> None:
        super().__init__(f"task {task} failed: {type(error).__name__}: {error}")
        self.task = task
        self.error = error


async def supervise(
    name: str,
    work: Callable[[], Awaitable[None]],
    *,
    pause: float = RESTART_PAUSE,
    on_failure: Callable[[BaseException], None] | None = None,
) -> None:
    """Run ``work`` until it returns. After an expected failure (:func:`expected`) run it again
    ``pause`` seconds later, logging each distinct reason once (and telling ``on_failure``); any
    other error is logged with its traceback and raised as :class:`TaskFailed`, which ends the
    daemon's task group."""
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
            if on_failure is not None:
                on_failure(exc)
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
        self.liveness = Liveness(signer, config.gateway.id, lambda: self.config_version)  # MQTT status
        self.remote = RemoteConfig(self)  # signed config documents (gateway.remote)
        self.uplinks: list[Any] = [self._make_uplink(name, config) for name in config.uplinks]
        policies = report_policies(config.devices)
        # edge processing (report: on_change / aggregate): in the pipeline, after the clock's stamp
        self.reporter = Reporter(policies, started=time.time()) if policies else None
        if self.reporter is not None:
            self.pipeline.process = self.reporter.process
        # before the metrics, which hook their histograms into it
        self.health: dict[str, DeviceHealth] = {name: DeviceHealth(name) for name in config.devices}
        self._stop = asyncio.Event()
        # the config version in effect: a remote document's version, else one computed from the file
        self.config_version: str = config.gateway.config_version or version_in_effect(config)
        self.bus_failures: dict[str, int] = {}  # expected failures of each bus task since start
        self._group: asyncio.TaskGroup | None = None
        self._bus_tasks: dict[str, asyncio.Task[None]] = {}
        self._uplink_tasks: dict[str, asyncio.Task[None]] = {}
        self._reload_wanted = asyncio.Event()
        self.reload_lock = asyncio.Lock()  # one reload (SIGHUP or remote) at a time
        self.ops = Operations(self)  # clock, watchdog, metrics
        self.health_report = HealthReport(
            self, clock_synced=lambda: bool(self.ops.clock.synced)
        )  # the box's own health, as readings of device "gateway"

    def _make_uplink(self, name: str, config: Config) -> Any:
        uplink = config.uplinks[name]
        located = {"places": places(config.gateway.location, config.devices)}  # NGSI-LD entities need them
        made = UPLINK_RUNNERS[uplink.type](
            name,
            uplink,
            gateway=config.gateway.id,
            pipeline=self.pipeline,
            **(located if uplink.type == "ngsi-ld" else {}),
            **({"liveness": self.liveness} if uplink.type == "mqtt" else {}),
        )
        if uplink.type == "mqtt":  # the retained config topic comes in on the uplink's connection
            made.config_topic = (
                config.remote.topic_for(config.gateway.id) if config.gateway.operator_keys else None
            )
            made.on_config = self.remote.offer
        return made

    def _bus_work(self, bus_name: str) -> Callable[[], Awaitable[None]] | None:
        """The bus's unit of work from its type's runner; None for a bus without devices."""
        bus = self.config.buses[bus_name]
        devices = {name: d for name, d in self.config.devices.items() if d.bus == bus_name}
        if not devices:
            return None
        runner = BUS_RUNNERS[bus.type]
        health = {name: self.health[name] for name in devices}
        return functools.partial(runner, bus_name, bus, devices, self.pipeline.put, health)

    def _buses(self) -> dict[str, Callable[[], Awaitable[None]]]:
        """One unit of work per bus that has devices."""
        work = {name: self._bus_work(name) for name in self.config.buses}
        return {name: w for name, w in work.items() if w is not None}

    def _start_bus(self, name: str) -> None:
        assert self._group is not None
        work = self._bus_work(name)
        if work is None:
            return

        def failed(_exc: BaseException) -> None:
            self.bus_failures[name] = self.bus_failures.get(name, 0) + 1

        self._bus_tasks[name] = self._group.create_task(
            supervise(f"bus-{name}", work, on_failure=failed), name=f"bus-{name}"
        )

    def _start_uplink(self, uplink: Any) -> None:
        assert self._group is not None
        name = f"uplink-{uplink.name}"
        self._uplink_tasks[uplink.name] = self._group.create_task(supervise(name, uplink.run), name=name)

    @staticmethod
    async def _end(tasks: list[asyncio.Task[None]]) -> None:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def stop(self) -> None:
        self._stop.set()

    def request_reload(self) -> None:
        """SIGHUP: re-read the config file (in the reload task, not in the signal handler)."""
        self._reload_wanted.set()

    async def _reloads(self) -> None:
        while True:
            await self._reload_wanted.wait()
            self._reload_wanted.clear()
            await self.reload()

    async def reload(self) -> bool:
        """Re-read the config file and apply the difference; False (every problem logged, the
        config in effect still running) when the file is invalid or needs a restart."""
        from citygw.config import load_config

        path = self.config.source
        log.event("reload_started", path=str(path)).info("reloading the config from %s", path)
        try:
            new = await asyncio.to_thread(load_config, path)
        except ConfigError as exc:
            self._refused(path, exc.problems, "is not valid")
            return False
        try:
            plan = await self.apply(new)
        except ReloadRefused as exc:
            self._refused(path, exc.problems, "changes what only a restart can change")
            return False
        self.config_version = new.gateway.config_version or version_in_effect(new)
        log.event("reloaded", path=str(path)).info(
            "reloaded %s (config version %s): %s", path, self.config_version, plan.summary()
        )
        return True

    def _refused(self, path: Path, problems: list[ConfigProblem], what: str) -> None:
        for problem in problems:
            log.event("reload_invalid", path=str(path)).error("%s", problem)
        log.event("reload_refused", path=str(path)).error(
            "the new config %s (%d problem(s) above); the config in effect keeps running unchanged",
            what,
            len(problems),
        )

    async def apply(self, new: Config) -> ReloadPlan:
        """Turn the running gateway into one of ``new``: stop what goes or changes, then start
        what comes or changed. Raises :class:`ReloadRefused` (nothing touched) when ``new``
        changes a key only a restart can change."""
        async with self.reload_lock:
            return await self._apply(new)

    async def _apply(self, new: Config) -> ReloadPlan:
        old = self.config
        plan = plan_reload(old, new)
        if plan.needs_restart:
            raise ReloadRefused(
                [ConfigProblem(str(new.source), None, p.split(" ", 1)[0], p) for p in plan.needs_restart]
            )
        self.notifier.notify(reloading=1, status="reloading the config")
        gc.unfreeze()  # what the reload replaces may be collected again (see settle_heap)
        # 1. what goes or changes stops: readings a driver handed over stay in the intake
        going = [*plan.buses_stop, *plan.buses_restart]
        await self._end([self._bus_tasks.pop(b) for b in going if b in self._bus_tasks])
        uplinks = {u.name: u for u in self.uplinks}
        leaving = [*plan.uplinks_stop, *plan.uplinks_restart]
        await self._end([self._uplink_tasks.pop(u) for u in leaving if u in self._uplink_tasks])
        for name in leaving:
            uplinks.pop(name, None)
        if plan.reports_changed and self.reporter is not None:  # open windows leave flagged partial
            await self.pipeline.put_records(self.reporter.flush(time.time()))
        # 2. the new config is the one in effect
        self.config = new
        for name in new.devices.keys() - self.health.keys():
            health = self.health[name] = DeviceHealth(name)
            self.ops.timings.watch_device(health, new.buses[new.devices[name].bus].type)
        for name in self.health.keys() - new.devices.keys():
            del self.health[name]
        if plan.reports_changed:
            policies = report_policies(new.devices)
            self.reporter = Reporter(policies, started=time.time()) if policies else None
            self.pipeline.process = self.reporter.process if self.reporter is not None else None
        buf = new.buffer
        self.buffer.limits = BatchLimits(buf.batch.max_readings, buf.batch.max_bytes, buf.batch.max_age)
        self.buffer.max_disk, self.buffer.max_age = buf.max_disk, buf.max_age
        self.pipeline.commit_interval, self.pipeline.commit_rows = buf.commit_interval, buf.commit_rows
        logging.getLogger().setLevel(new.log.level.upper())
        await self.store.call(self.buffer.set_uplinks, list(new.uplinks))
        # 3. what comes or changed starts
        for name in [*plan.uplinks_start, *plan.uplinks_restart]:
            uplink = uplinks[name] = self._make_uplink(name, new)
            self.ops.timings.watch_uplink(uplink)
            self._start_uplink(uplink)
        self.uplinks[:] = [uplinks[name] for name in new.uplinks]
        for name in [*plan.buses_start, *plan.buses_restart]:
            self._start_bus(name)
        settle_heap()
        self.notifier.notify(ready=1, status=self.status_line())
        return plan

    async def _close_windows(self) -> None:
        """Aggregate windows end on the clock, whether or not a sample comes to close them."""
        while True:
            await asyncio.sleep(1.0)
            if self.reporter is None:  # a reload may bring report rules
                continue
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

        Raises :class:`citygw.daemon.lock.BufferInUse` (before touching the buffer) when another daemon
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
        if self.handle_signals:
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(signal.SIGHUP, self.request_reload)
        try:
            async with asyncio.TaskGroup() as group:
                self._group = group
                writer = group.create_task(supervise("writer", self.pipeline.run), name="writer")
                for uplink in self.uplinks:
                    self._start_uplink(uplink)
                for name in self.config.buses:
                    self._start_bus(name)
                heartbeat = group.create_task(supervise("heartbeat", self._heartbeat), name="heartbeat")
                ops = group.create_task(supervise("ops", self.ops.run), name="ops")
                windows = group.create_task(supervise("windows", self._close_windows), name="windows")
                reloads = group.create_task(supervise("reload", self._reloads), name="reload")
                remote = group.create_task(supervise("remote-config", self.remote.run), name="remote-config")
                health = group.create_task(supervise("health", self.health_report.run), name="health")
                others = [heartbeat, ops, windows, reloads, remote]
                log.event("started").info(
                    "gateway %s running: %d buses, %d uplinks, buffer %s, config version %s",
                    self.config.gateway.id,
                    len(self._bus_tasks),
                    len(self._uplink_tasks),
                    self.buffer.path,
                    self.config_version,
                )
                settle_heap()
                self.notifier.notify(ready=1, status=self.status_line())
                self.ops.start()
                await self._stop.wait()
                started = time.monotonic()
                self.notifier.notify(stopping=1, status="stopping: flushing the buffer")
                gc.unfreeze()  # what stops may be collected (a Gateway run inside another process)
                reloads.cancel()
                remote.cancel()
                async with self.reload_lock:  # a reload under way finishes first
                    await self._end([*self._bus_tasks.values(), health])  # the producers stop first
                if self.reporter is not None:  # open windows leave flagged partial
                    await self.pipeline.put_records(self.reporter.flush(time.time()))
                self.pipeline.stop()
                await asyncio.gather(writer, return_exceptions=True)
                await self.pipeline.flush()
                await self._drain(started + self.drain_timeout)
                for task in [*self._uplink_tasks.values(), *others]:
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
            self._group = None
            for sig in signals:
                with contextlib.suppress(NotImplementedError, RuntimeError):
                    loop.remove_signal_handler(sig)
            if self.handle_signals:
                with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                    loop.remove_signal_handler(signal.SIGHUP)
                    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # a late HUP never ends the flush
            self.ops.close()
            await self.store.close()
            self.notifier.close()
