"""``citygw status``: the buffer (read-only) and the running daemon (its metrics), for a person or a script.

The buffer file is opened read-only and never created or written: with ``mode=ro`` beside a
running daemon (WAL lets a reader see the last commit without blocking the writer), and with
``immutable=1`` when the daemon is not running (a read-only WAL open would otherwise create the
``-wal`` and ``-shm`` files, owned by whoever ran ``status``, which the daemon could then not
write). Whether a daemon runs, and its PID, comes from the buffer's lock (:mod:`citygw.daemon.lock`),
so a daemon whose metrics port was taken is still found. The daemon's side — device health,
uplink states, the clock — comes from its metrics endpoint when it answers. The figures are
:func:`citygw.buffer.report.report_from`'s, the same the daemon reports on its own connection.
"""

from __future__ import annotations

import contextlib
import errno
import json
import sqlite3
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from citygw.buffer.report import BufferReport, UplinkLag, report_from
from citygw.daemon.lock import look
from citygw.errors import BufferStorageError

if TYPE_CHECKING:
    from citygw.config import Config


def _uri(path: Path) -> str:
    live = Path(f"{path}-wal").exists() and Path(f"{path}-shm").exists()
    return path.resolve().as_uri() + ("?mode=ro" if live else "?mode=ro&immutable=1")


@contextlib.contextmanager
def _readonly(path: Path) -> Iterator[sqlite3.Connection]:
    db = sqlite3.connect(_uri(path), uri=True, isolation_level=None, check_same_thread=False)
    try:
        db.execute("PRAGMA busy_timeout=2000")
        db.execute("BEGIN")  # one snapshot for every query below
        yield db
    finally:
        db.close()


def read_buffer(path: Path, uplinks: Sequence[str] | None = None) -> BufferReport:
    """A report on the buffer file at ``path``, read-only; ``uplinks`` are the configured ones
    (None: those the file has cursors for). Raises :class:`BufferStorageError` if it cannot be read."""
    if not path.exists():
        return BufferReport(str(path), exists=False, read_at=time.time())
    try:
        with _readonly(path) as db:
            return report_from(db, path, uplinks)
    except sqlite3.Error as exc:
        raise BufferStorageError(f"cannot read buffer {path}: {exc}") from exc


# --- the daemon's side: its metrics endpoint ---------------------------------------------------


@dataclass(slots=True)
class Live:
    """What the running daemon says about itself (from its metrics)."""

    gateway: str = ""
    devices: dict[str, dict[str, Any]] = field(default_factory=dict)
    uplinks: dict[str, dict[str, Any]] = field(default_factory=dict)
    values: dict[str, float] = field(default_factory=dict)  # unlabelled samples by name


def scrape(url: str, *, timeout: float = 2.0) -> Live | None:
    """Fetch and parse the metrics at ``url``; None when nothing answers there."""
    from prometheus_client.parser import text_string_to_metric_families

    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            text = response.read().decode("utf-8")
    except (urllib.error.URLError, OSError, ValueError):
        return None
    live = Live()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels, value = sample.labels, sample.value
            name = sample.name
            if name == "citygw_info":
                live.gateway = labels.get("gateway", "")
            elif "device" in labels:
                device = live.devices.setdefault(labels["device"], {"errors": {}})
                if name == "citygw_device_state" and value == 1:
                    device["state"] = labels["state"]
                elif name == "citygw_device_errors_total" and value:  # every known reason is there at 0
                    device["errors"][labels["reason"]] = int(value)
                elif name == "citygw_device_readings_total":
                    device["readings"] = int(value)
                elif name == "citygw_device_last_seen_timestamp_seconds":
                    device["last_seen_age"] = max(0.0, time.time() - value)
            elif "uplink" in labels:
                uplink = live.uplinks.setdefault(labels["uplink"], {})
                if name == "citygw_uplink_state" and value == 1:
                    uplink["state"] = labels["state"]
                elif name == "citygw_uplink_acked_seq":
                    uplink["acked_seq"] = int(value)
                elif name == "citygw_uplink_connects_total":
                    uplink["connects"] = int(value)
            elif not labels:
                live.values[name] = value
    return live


# --- the command -------------------------------------------------------------------------------


def _age(created: float | None, now: float) -> float | None:
    return None if created is None else round(max(0.0, now - created), 3)


def gather(config: Config, *, timeout: float = 2.0) -> dict[str, Any]:
    """Everything ``citygw status`` shows, as plain JSON-able data (the ``--json`` output)."""
    path = config.buffer_path()
    report = read_buffer(path, list(config.uplinks))
    metrics = config.metrics
    url = f"http://{metrics.listen}/metrics"
    live = scrape(url, timeout=timeout) if metrics.enabled else None
    foreign = live is not None and live.gateway != config.gateway.id
    lock = look(path)
    now = time.time()
    running: bool | None = lock.held
    if live is not None and not foreign:
        running = True  # a daemon of a citygw that took no lock yet
    elif running is None and metrics.enabled:
        running = False
    daemon: dict[str, Any] = {
        "running": running,
        "pid": lock.pid if lock.held else None,
        "metrics": url if metrics.enabled else None,
    }
    if foreign and live is not None:
        daemon["note"] = f"the metrics at {url} are gateway {live.gateway!r}'s, not this config's"
        live = None
    elif lock.held and live is None and metrics.enabled:
        daemon["note"] = (
            f"the daemon holds the buffer but its metrics at {url} do not answer "
            "(a port taken by something else: the daemon retries it; the log says so)"
        )
    if live is not None:
        daemon.update(
            clock_synchronized=bool(live.values.get("citygw_clock_synchronized", 1)),
            accepted_readings=int(live.values.get("citygw_readings_accepted_total", 0)),
            staged_readings=int(live.values.get("citygw_buffer_staged_readings", 0)),
            last_seq=int(live.values.get("citygw_buffer_last_seq", 0)),
            uptime_seconds=round(now - live.values.get("process_start_time_seconds", now), 1),
        )
    lags = {lag.name: lag for lag in report.uplinks}
    uplinks = []
    for name, uplink in config.uplinks.items():
        lag = lags.get(name)
        state = live.uplinks.get(name, {}) if live is not None else {}
        uplinks.append(
            {
                "name": name,
                "type": uplink.type,
                "state": state.get("state"),
                "acked_seq": state.get("acked_seq", lag.cursor if lag else 0),
                "lag_batches": lag.batches if lag else 0,
                "lag_readings": lag.readings if lag else 0,
                "oldest_undelivered_age_seconds": _age(lag.oldest_created if lag else None, now),
                "parked": lag.parked if lag else 0,
            }
        )
    devices = []
    for name, device in config.devices.items():
        health = live.devices.get(name, {}) if live is not None else {}
        age = health.get("last_seen_age")
        entry = {
            "name": name,
            "bus": device.bus,
            "state": health.get("state"),
            "readings": health.get("readings"),
            "errors": health.get("errors", {}),
            "last_seen_age_seconds": None if age is None else round(age, 1),
        }
        problem = port_problem(health.get("state"), health.get("errors", {}))
        if problem is not None:  # only for a failing device whose port does not open
            entry["port_problem"] = problem
        devices.append(entry)
    return {
        "gateway": config.gateway.id,
        "config": str(config.source),
        "daemon": daemon,
        "buffer": {
            "path": report.path,
            "exists": report.exists,
            "written_by": report.gateway,
            "chain": report.chain,
            "moved_aside": report.moved_aside,
            "wal_lost": report.wal_lost,
            "last_seq": report.last_seq,
            "staged_readings": report.staged,
            "batches": report.batches,
            "undelivered_readings": report.undelivered_readings,
            "oldest_undelivered_age_seconds": _age(report.oldest_created, now),
            "used_bytes": report.used_bytes,
            "max_bytes": config.buffer.max_disk,
            "file_bytes": report.file_bytes,
            "gaps": {
                "records": report.gap_records,
                "batches": report.dropped_batches,
                "readings": report.dropped_readings,
                "reasons": report.gap_reasons,
            },
        },
        "uplinks": uplinks,
        "devices": devices,
    }


def port_problem(state: str | None, errors: dict[str, int]) -> str | None:
    """For a failing device whose port does not open: the cause and its fix (the daemon's log line
    names the port, the user and the group)."""
    from citygw.drivers.serial.port import FIXES

    if state != "failing":
        return None
    for reason, fix in FIXES.items():
        if errors.get(reason):
            return f"{reason}: {fix}"
    return None


def human_age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f} {unit}"
    return f"{seconds:.1f} s"


def _human_bytes(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"  # pragma: no cover


def render(data: dict[str, Any]) -> None:
    """The status as tables, for a person at a terminal (or reading a ticket)."""
    from rich.console import Console
    from rich.table import Table

    class _Console(Console):
        def on_broken_pipe(self) -> None:  # rich would exit 1 itself; gateway.cli says what a closed pipe is
            self.quiet = True
            raise BrokenPipeError(errno.EPIPE, "stdout's reader went away")

    console = _Console(width=None if sys.stdout.isatty() else 120, highlight=False)
    daemon, buffer = data["daemon"], data["buffer"]
    if daemon["running"] is None:
        running = "unknown (metrics disabled, lock file not readable)"
    elif daemon["running"]:
        running = "running" + (f" (PID {daemon['pid']})" if daemon.get("pid") else "")
    else:
        running = "not running"
    head = Table(title=f"citygw {data['gateway']}", show_header=False, title_justify="left")
    head.add_column("what", style="bold")
    head.add_column("value")
    head.add_row("config", data["config"])
    head.add_row("daemon", running)
    if daemon.get("note"):
        head.add_row("note", daemon["note"])
    if "clock_synchronized" in daemon:
        head.add_row("clock", "synchronised" if daemon["clock_synchronized"] else "NOT synchronised")
        head.add_row("uptime", human_age(daemon["uptime_seconds"]))
        head.add_row("accepted", f"{daemon['accepted_readings']} readings since start")
    console.print(head)

    table = Table(title="buffer", show_header=False, title_justify="left")
    table.add_column("what", style="bold")
    table.add_column("value")
    table.add_row("file", buffer["path"] if buffer["exists"] else f"{buffer['path']} (not created yet)")
    table.add_row("last seq", str(buffer["last_seq"]))
    table.add_row("staged", f"{buffer['staged_readings']} readings")
    table.add_row("held", f"{buffer['batches']} batches, {buffer['undelivered_readings']} readings")
    table.add_row("oldest held", human_age(buffer["oldest_undelivered_age_seconds"]))
    table.add_row("disk", f"{_human_bytes(buffer['used_bytes'])} of {_human_bytes(buffer['max_bytes'])}")
    gaps = buffer["gaps"]
    dropped = (
        f"{gaps['readings']} readings in {gaps['batches']} batches ("
        + ", ".join(f"{reason}: {n}" for reason, n in sorted(gaps["reasons"].items()))
        + ")"
        if gaps["records"]
        else "none"
    )
    table.add_row("dropped", dropped)
    aside = buffer.get("moved_aside")
    if aside:
        table.add_row("replaced", f"a damaged buffer, kept as {aside.get('file')}: {aside.get('why')}")
    wal = buffer.get("wal_lost")
    if wal:
        lost = "an unknown number of" if wal.get("readings") is None else wal.get("readings")
        table.add_row("WAL lost", f"{lost} accepted readings at a start (a gap record says so)")
    console.print(table)

    table = Table(title="uplinks", title_justify="left")
    for column in ("uplink", "type", "state", "acked seq", "lag batches", "lag readings", "oldest", "parked"):
        table.add_column(column, justify="left" if column in ("uplink", "type", "state") else "right")
    for u in data["uplinks"]:
        table.add_row(
            u["name"],
            u["type"],
            u["state"] or "-",
            str(u["acked_seq"]),
            str(u["lag_batches"]),
            str(u["lag_readings"]),
            human_age(u["oldest_undelivered_age_seconds"]),
            str(u["parked"]),
        )
    console.print(table)

    table = Table(title="devices", title_justify="left")
    for column in ("device", "bus", "state", "readings", "errors", "last seen"):
        table.add_column(column, justify="right" if column == "readings" else "left")
    for d in data["devices"]:
        errors = ", ".join(f"{reason} {n}" for reason, n in sorted(d["errors"].items())) or "-"
        age = d["last_seen_age_seconds"]
        table.add_row(
            d["name"],
            d["bus"],
            d["state"] or "-",
            "-" if d["readings"] is None else str(d["readings"]),
            errors,
            "-" if age is None else f"{human_age(age)} ago",
        )
    console.print(table)
    for d in data["devices"]:
        if d.get("port_problem"):
            console.print(f"{d['name']}: the port does not open ({d['port_problem']})")


def status_main(config: Config, *, as_json: bool) -> int:
    try:
        data = gather(config)
    except BufferStorageError as exc:
        sys.stderr.write(f"citygw status: {exc}\n")
        return 1
    if as_json:
        sys.stdout.write(json.dumps(data, indent=2, sort_keys=False) + "\n")
    else:
        render(data)
    return 0


__all__ = ["BufferReport", "UplinkLag", "read_buffer"]
