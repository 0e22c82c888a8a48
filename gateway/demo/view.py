"""What the demo shows: a snapshot of the gateway (from its own metrics), the link and the platform,
drawn as a live ``rich`` view, a plain progress line, or the closing summary.

The gateway's side comes from :class:`citygw.ops.metrics.GatewayCollector`, the collector behind its
``/metrics`` endpoint, so the view shows what an operator's Prometheus sees: device state and
counts, accepted readings, the sealed and acknowledged seqs, the uplink's state, the buffer file.
The platform's side is what arrived verified.

The live view fits the terminal it is drawn on: the full layout (two lines per device) when it
fits, else a compact one (a line per device, one-line header and buffer lines) with the buffer
panel above the devices, so at 80x24, the default terminal, the panel the ``o`` outage key exists
to show is always on screen and only a long device list is cut.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from prometheus_client.registry import Collector
from rich import box
from rich.console import Console, ConsoleOptions, Group, RenderableType, RenderResult
from rich.panel import Panel
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from citygw.config.ble import BleSensor
from citygw.config.modbus import ModbusDevice
from citygw.config.serial import SerialDevice

if TYPE_CHECKING:
    from citygw.config import Config
    from citygw.demo.platform import DeviceSeen

Labels = tuple[tuple[str, str], ...]

# the readings worth a glance, in the order shown (at most SHOWN per device)
HEADLINE = (
    "pm25",
    "pm10",
    "pm1",
    "voltage:l1",
    "current:l1",
    "activePower",
    "frequency",
    "activeEnergyImport",
    "latitude",
    "longitude",
    "speed",
    "temperature",
    "relativeHumidity",
    "atmosphericPressure",
    "batteryLevel",
    "co2",
)
SHOWN = 3
STATE_STYLE = {"ok": "green", "unknown": "yellow", "stale": "yellow", "failing": "red"}


def scrape(collector: Collector) -> dict[str, dict[Labels, float]]:
    """The collector's samples: metric sample name -> labels -> value."""
    out: dict[str, dict[Labels, float]] = {}
    for family in collector.collect():
        for sample in family.samples:
            out.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return out


def _get(
    metrics: Mapping[str, Mapping[Labels, float]], name: str, default: float = 0.0, **labels: str
) -> float:
    return metrics.get(name, {}).get(tuple(sorted(labels.items())), default)


def driver_of(config: Config, device: str) -> str:
    """How the gateway reads ``device``, in a few words."""
    d = config.devices[device]
    bus = config.buses[d.bus]
    if isinstance(d, ModbusDevice):
        return f"modbus {d.profile or 'registers'}"
    if isinstance(d, SerialDevice):
        return f"serial {d.protocol}"
    if isinstance(d, BleSensor):
        return f"ble {d.format.value}" + (" (replay)" if getattr(bus, "replay", None) else "")
    return bus.type


def _number(name: str, value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return str(value)
    if isinstance(value, int):
        return str(value)
    if name in ("latitude", "longitude"):
        return f"{value:.5f}"
    magnitude = abs(value)
    return f"{value:.0f}" if magnitude >= 1000 else f"{value:.1f}" if magnitude >= 10 else f"{value:.2f}"


def headline(latest: Mapping[str, Any]) -> str:
    """A few of a device's latest readings, e.g. ``pm25 21 ug/m3  pm10 30 ug/m3``."""
    names = [n for n in HEADLINE if n in latest][:SHOWN] or sorted(latest)[:SHOWN]
    parts = []
    for name in names:
        item = latest[name]
        unit = f" {item.unit}" if item.unit and item.unit not in ("/", "lat", "lon", "count") else ""
        parts.append(f"{name} {_number(name, item.value)}{unit}")
    return "  ".join(parts)


@dataclass(frozen=True, slots=True)
class DeviceRow:
    name: str
    driver: str
    state: str
    readings: int  # the device gave (its health)
    errors: int
    seen_ago: float | None  # seconds since its last good frame
    verified: int  # readings the platform verified
    latest: str


@dataclass(frozen=True, slots=True)
class Snapshot:
    gateway: str
    elapsed: float
    accepted: int
    staged: int
    sealed_seq: int
    acked_seq: int
    uplink: str
    delivered_batches: int
    delivered_readings: int
    held_batches: int  # in the buffer file, as of its last report
    file_bytes: int
    link_up: bool
    outage_left: float | None  # seconds until a timed outage ends
    peak_unacked: int  # batches
    peak_undelivered: int  # readings
    platform_batches: int
    platform_readings: int
    duplicates: int
    bad: int
    devices: list[DeviceRow] = field(default_factory=list)

    @property
    def unacked(self) -> int:
        """Sealed batches the uplink has not had acknowledged: the buffer's depth for it."""
        return max(0, self.sealed_seq - self.acked_seq)

    @property
    def undelivered(self) -> int:
        """Readings accepted (staged or sealed) that the uplink has not delivered yet."""
        return max(0, self.accepted - self.delivered_readings)


def snapshot(
    *,
    config: Config,
    metrics: Mapping[str, Mapping[Labels, float]],
    platform_devices: Mapping[str, DeviceSeen],
    platform_totals: Mapping[str, int],
    elapsed: float,
    link_up: bool,
    outage_left: float | None,
    peak_unacked: int,
    peak_undelivered: int,
) -> Snapshot:
    uplink = next(iter(config.uplinks))
    state = next(
        (dict(labels)["state"] for labels, v in metrics.get("citygw_uplink_state", {}).items() if v),
        "?",
    )
    rows = []
    for name in config.devices:
        dev_state = next(
            (
                dict(labels)["state"]
                for labels, v in metrics.get("citygw_device_state", {}).items()
                if v and dict(labels)["device"] == name
            ),
            "unknown",
        )
        errors = sum(
            v
            for labels, v in metrics.get("citygw_device_errors_total", {}).items()
            if dict(labels)["device"] == name
        )
        seen_at = metrics.get("citygw_device_last_seen_timestamp_seconds", {}).get((("device", name),))
        age = None if seen_at is None else max(0.0, time.time() - seen_at)
        seen = platform_devices.get(name)
        rows.append(
            DeviceRow(
                name=name,
                driver=driver_of(config, name),
                state=dev_state,
                readings=int(_get(metrics, "citygw_device_readings_total", device=name)),
                errors=int(errors),
                seen_ago=age,
                verified=seen.readings if seen is not None else 0,
                latest=headline(seen.latest) if seen is not None else "",
            )
        )
    return Snapshot(
        gateway=config.gateway.id,
        elapsed=elapsed,
        accepted=int(_get(metrics, "citygw_readings_accepted_total")),
        staged=int(_get(metrics, "citygw_buffer_staged_readings")),
        sealed_seq=int(_get(metrics, "citygw_buffer_last_seq")),
        acked_seq=int(_get(metrics, "citygw_uplink_acked_seq", uplink=uplink)),
        uplink=state,
        delivered_batches=int(_get(metrics, "citygw_uplink_delivered_batches_total", uplink=uplink)),
        delivered_readings=int(_get(metrics, "citygw_uplink_delivered_readings_total", uplink=uplink)),
        held_batches=int(_get(metrics, "citygw_buffer_batches")),
        file_bytes=int(_get(metrics, "citygw_buffer_file_bytes")),
        link_up=link_up,
        outage_left=outage_left,
        peak_unacked=peak_unacked,
        peak_undelivered=peak_undelivered,
        platform_batches=platform_totals.get("stored", 0),
        platform_readings=platform_totals.get("readings", 0),
        duplicates=platform_totals.get("duplicates", 0),
        bad=platform_totals.get("bad", 0) + platform_totals.get("conflicts", 0),
        devices=rows,
    )


def plain_line(s: Snapshot) -> str:
    """One progress line, for logs and pipes."""
    link = "up" if s.link_up else "DOWN"
    return (
        f"[{s.elapsed:6.1f}s] accepted {s.accepted:>7} | sealed seq {s.sealed_seq:>5} | "
        f"link {link:<4} uplink {s.uplink:<12} acked {s.acked_seq:>5} | "
        f"undelivered {s.undelivered:>6} readings {s.unacked:>4} batches | "
        f"verified {s.platform_batches:>5} batches {s.platform_readings:>7} readings, bad {s.bad}"
    )


def _age(seconds: float | None) -> str:
    return "nothing yet" if seconds is None else f"frame {seconds:.1f}s ago"


def render(s: Snapshot, *, header: str, keys: str) -> RenderableType:
    """The live view, laid out for the terminal it is drawn on (:class:`View`)."""
    return View(s, header=header, keys=keys)


class View:
    """The first layout that fits the console's height: full, compact, compact with a one-line
    header; else the last, of which only the end of the device list is cut."""

    def __init__(self, s: Snapshot, *, header: str, keys: str) -> None:
        self.snapshot, self.header, self.keys = s, header, keys

    def layouts(self) -> list[Group]:
        s, header, keys = self.snapshot, self.header, self.keys
        return [
            _full(s, header=header, keys=keys),
            _compact(s, header=Text.from_markup(header), keys=keys),
            _compact(s, header=_line(header), keys=keys),
        ]

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        height = options.height or console.height
        unbounded = options.update(height=None)
        layouts = self.layouts()
        yield next(
            (view for view in layouts if len(console.render_lines(view, unbounded, pad=False)) <= height),
            layouts[-1],
        )


def _line(markup: str) -> Text:
    """One line of the compact view: cut with an ellipsis rather than wrapped."""
    text = Text.from_markup(markup, overflow="ellipsis")
    text.no_wrap = True
    return text


def _link(s: Snapshot) -> Text:
    if s.link_up:
        return Text("link up", style="bold green")
    left = f" ({s.outage_left:.0f} s left)" if s.outage_left is not None else ""
    return Text(f"LINK DOWN: outage{left}", style="bold red")


def _bar(s: Snapshot, width: int) -> ProgressBar:
    return ProgressBar(
        total=max(1000, s.peak_undelivered, s.undelivered),
        completed=s.undelivered,
        width=width,
        complete_style="red" if not s.link_up or s.unacked > 2 else "green",
    )


def _compact(s: Snapshot, *, header: Text, keys: str) -> Group:
    """A line per device and per buffer fact; the buffer panel before the devices."""
    peak, peak_batches = max(s.peak_undelivered, s.undelivered), max(s.peak_unacked, s.unacked)
    depth = Table.grid(padding=(0, 1), expand=True)
    depth.add_column(no_wrap=True)
    depth.add_column(width=20, no_wrap=True)
    depth.add_column(ratio=1, no_wrap=True, overflow="ellipsis")
    depth.add_row("not delivered", _bar(s, 20), f"{s.undelivered} readings (peak {peak}), {s.staged} staged")
    bad = f"[red]{s.bad} bad[/]" if s.bad else "0 bad"
    buffer = Panel(
        Group(
            _link(s),
            depth,
            _line(f"sealed and unacknowledged: {s.unacked} batches (peak {peak_batches})"),
            _line(
                f"buffer file: {s.held_batches} batches held, {s.file_bytes / 1024:.0f} KiB "
                "(refreshed every 5 s)"
            ),
            _line(
                f"gateway: accepted [bold]{s.accepted}[/] readings, sealed up to seq [bold]{s.sealed_seq}[/]"
            ),
            _line(
                f"uplink {s.uplink}, acked seq [bold]{s.acked_seq}[/], "
                f"delivered {s.delivered_batches} batches"
            ),
            _line(
                f"platform: verified [bold]{s.platform_batches}[/] batches, [bold]{s.platform_readings}[/] "
                f"readings; {s.duplicates} duplicates, {bad}"
            ),
        ),
        title="buffer and uplink",
        title_align="left",
    )
    table = Table(expand=True, pad_edge=False, box=box.SIMPLE_HEAD, show_edge=False)
    table.add_column("device", no_wrap=True, overflow="ellipsis", max_width=16)
    table.add_column("health", no_wrap=True)
    table.add_column("readings", justify="right", no_wrap=True)
    table.add_column("errors", justify="right", no_wrap=True)
    table.add_column("verified", justify="right", no_wrap=True)
    table.add_column("latest at the platform", ratio=1, no_wrap=True, overflow="ellipsis")
    for row in s.devices:
        age = "" if row.seen_ago is None else f" {row.seen_ago:.1f}s"
        table.add_row(
            row.name,
            Text.assemble((row.state, STATE_STYLE.get(row.state, "")), (age, "dim")),
            f"{row.readings}",
            Text(f"{row.errors}", style="red" if row.errors else "dim"),
            f"{row.verified}",
            row.latest,
        )
    return Group(Panel(header, subtitle=keys, subtitle_align="left"), buffer, table)


def _full(s: Snapshot, *, header: str, keys: str) -> Group:
    """Two lines per device (driver, age of its last frame), the buffer panel below."""
    table = Table(expand=True, pad_edge=False)
    table.add_column("device", no_wrap=True)
    table.add_column("health", no_wrap=True)
    table.add_column("readings", justify="right", no_wrap=True)
    table.add_column("verified", justify="right", no_wrap=True)
    table.add_column("latest at the platform", min_width=24, ratio=1)
    for row in s.devices:
        errors = Text(f"{row.errors} errors", style="red" if row.errors else "dim")
        table.add_row(
            Text.assemble(row.name, "\n", (row.driver, "dim")),
            Text.assemble((row.state, STATE_STYLE.get(row.state, "")), "\n", (_age(row.seen_ago), "dim")),
            Text.assemble(f"{row.readings}\n", errors),
            f"{row.verified}",
            row.latest,
        )

    link = _link(s)
    peak, peak_batches = max(s.peak_undelivered, s.undelivered), max(s.peak_unacked, s.unacked)
    depth = Table.grid(padding=(0, 1))
    depth.add_column()
    depth.add_column(width=30)
    depth.add_column()
    depth.add_row(
        "not delivered yet",
        _bar(s, 30),
        f"{s.undelivered} readings (peak {peak}): {s.staged} staged, "
        f"{s.unacked} batches sealed and unacknowledged (peak {peak_batches})",
    )
    depth.add_row(
        "buffer file",
        "",
        f"{s.held_batches} batches held, {s.file_bytes / 1024:.0f} KiB (refreshed every 5 s)",
    )
    flow = Table.grid(padding=(0, 2))
    flow.add_row(
        f"gateway: accepted [bold]{s.accepted}[/] readings, sealed up to seq [bold]{s.sealed_seq}[/]",
        f"uplink {s.uplink}, acked seq [bold]{s.acked_seq}[/], delivered {s.delivered_batches} batches",
    )
    bad = f"[red]{s.bad} bad[/]" if s.bad else "0 bad"
    flow.add_row(
        f"platform: verified [bold]{s.platform_batches}[/] batches, [bold]{s.platform_readings}[/] readings",
        f"{s.duplicates} duplicates (at-least-once), {bad}",
    )
    return Group(
        Panel(Text.from_markup(header), subtitle=keys, subtitle_align="left"),
        table,
        Panel(Group(link, depth, flow), title="buffer and uplink", title_align="left"),
    )


@dataclass(frozen=True, slots=True)
class Summary:
    devices: dict[str, int]  # device -> readings the platform verified (every configured device)
    accepted: int
    batches_verified: int
    readings_verified: int
    duplicates: int
    bad: int
    missing_seqs: list[list[int]]
    broken_links: list[int]
    lost: int
    outages: int
    outage_seconds: float
    peak_unacked: int
    peak_undelivered: int
    duration: float

    @property
    def silent(self) -> list[str]:
        return [name for name, n in self.devices.items() if n == 0]

    @property
    def ok(self) -> bool:
        return (
            self.accepted > 0
            and not self.silent
            and self.lost == 0
            and self.bad == 0
            and not self.missing_seqs
            and not self.broken_links
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "duration_s": round(self.duration, 1),
            "devices": self.devices,
            "silent_devices": self.silent,
            "readings_accepted": self.accepted,
            "batches_verified": self.batches_verified,
            "readings_verified": self.readings_verified,
            "duplicates": self.duplicates,
            "bad": self.bad,
            "missing_seqs": self.missing_seqs,
            "broken_links": self.broken_links,
            "lost": self.lost,
            "outages": self.outages,
            "outage_s": round(self.outage_seconds, 1),
            "peak_unacked_batches": self.peak_unacked,
            "peak_undelivered_readings": self.peak_undelivered,
        }

    def lines(self) -> Iterable[str]:
        seen = sum(1 for n in self.devices.values() if n)
        yield (
            f"summary: {seen} of {len(self.devices)} devices seen "
            f"({', '.join(f'{k} {v}' for k, v in self.devices.items())})"
        )
        yield (
            f"  readings accepted {self.accepted}, verified {self.readings_verified} in "
            f"{self.batches_verified} batches; duplicates {self.duplicates}, bad {self.bad}, "
            f"missing seqs {len(self.missing_seqs)}, broken links {len(self.broken_links)}, lost {self.lost}"
        )
        if self.outages:
            yield (
                f"  uplink outages {self.outages} ({self.outage_seconds:.1f} s): the buffer held up to "
                f"{self.peak_undelivered} readings ({self.peak_unacked} sealed batches) and delivered them"
            )
        if self.silent:
            yield f"  FAILED: no verified reading from {', '.join(self.silent)}"
        yield "  result: " + ("ok, nothing lost" if self.ok else "FAILED")
