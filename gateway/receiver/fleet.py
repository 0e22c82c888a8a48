"""The fleet view of ``citygw receive``: each gateway's last health and liveness, worst first.

The receiver keeps, per gateway, the latest value of each health reading (device ``gateway``,
:mod:`citygw.ops.health`) from the batches it stored, and the latest verified status message
(:mod:`citygw.wire.liveness`) from the status topic; both survive a restart of the receiver (the
readings are in its file already, statuses in the ``liveness`` table). :func:`fleet_view` joins
them with the chain state (:mod:`citygw.receiver.streams`) and the gateways of the keys directory, and
sorts the boxes that need a person first (:class:`Severity`).
"""

from __future__ import annotations

import enum
import sqlite3
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

from citygw.config.health import HEALTH_DEVICE
from citygw.wire.liveness import Status
from citygw.wire.ngsi import Sample

SILENT_FACTOR = 3  # health intervals without a batch before a box counts as silent
SILENT_SLACK = 60.0  # seconds on top: batch sealing (buffer.batch.max_age) and delivery
LAG_LIMIT = 600.0  # seconds of uplink lag (or undelivered age) that need a look
DEFAULT_INTERVAL = 60.0  # a box that never sent healthInterval (health.interval's default)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS liveness (
    gateway TEXT PRIMARY KEY, state TEXT NOT NULL, reason TEXT NOT NULL, time REAL NOT NULL,
    version TEXT NOT NULL, config_version TEXT NOT NULL, received REAL NOT NULL
) WITHOUT ROWID;
"""


class Severity(enum.IntEnum):
    """Why a box needs a person, most urgent first (the fleet view's sort order)."""

    DOWN = 0  # its last will arrived, or it has been silent for several health intervals
    CHAIN = 1  # its stream is broken: a cloned identity, or a batch whose prev does not match
    STOPPED = 2  # stopped cleanly (a person or the service manager did it)
    NEVER_SEEN = 3  # in the keys directory, never heard from
    LAGGING = 4  # batches wait long for an uplink, or batches are missing
    DEGRADED = 5  # devices failing or stale, an uplink disconnected, the clock unsynchronised
    OK = 6


@dataclass(slots=True)
class Box:
    """What the receiver holds about one gateway."""

    health: dict[str, Any] = field(default_factory=dict)  # reading name -> latest value
    health_time: float | None = None  # when the box took its latest health readings
    last_seen: float | None = None  # when the receiver last stored a batch of it
    status: Status | None = None
    status_received: float | None = None


class Fleet:
    """Per gateway: last health, last liveness, last seen; kept in the receiver's SQLite file."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db
        self.db.executescript(_SCHEMA)
        self.boxes: dict[str, Box] = {}
        self._load()

    def _box(self, gateway: str) -> Box:
        return self.boxes.setdefault(gateway, Box())

    def _load(self) -> None:
        for gateway, received in self.db.execute(
            "SELECT gateway, max(received) FROM batches GROUP BY gateway"
        ):
            self._box(gateway).last_seen = received
        for gateway in list(self.boxes):  # per gateway: the (gateway, device, time) index serves it
            rows = self.db.execute(
                "SELECT name, value, max(time) FROM readings WHERE gateway = ? AND device = ? GROUP BY name",
                (gateway, HEALTH_DEVICE),
            )
            box = self.boxes[gateway]
            for name, value, when in rows:
                box.health[name] = value
                box.health_time = max(box.health_time or 0.0, when)
        for gateway, state, reason, when, version, config_version, received in self.db.execute(
            "SELECT * FROM liveness"
        ):
            box = self._box(gateway)
            box.status = Status(gateway, state, reason, when, version, config_version)
            box.status_received = received

    def saw_batch(self, gateway: str, samples: Iterable[Sample], *, received: float) -> None:
        box = self._box(gateway)
        box.last_seen = received
        for sample in samples:
            if sample.device != HEALTH_DEVICE:
                continue
            if (
                box.health_time is None
                or sample.time >= box.health_time - 1e-6
                or sample.name not in box.health
            ):
                box.health[sample.name] = sample.value
                box.health_time = max(box.health_time or 0.0, sample.time)

    def saw_status(self, status: Status, *, received: float) -> None:
        """A verified status message. The latest received wins, not the latest ``time``: a last
        will carries the time its connection began, before that connection's birth message."""
        box = self._box(status.gateway)
        box.status, box.status_received = status, received
        self.db.execute(
            "INSERT OR REPLACE INTO liveness VALUES (?,?,?,?,?,?,?)",
            (
                status.gateway,
                status.state,
                status.reason,
                status.time,
                status.version,
                status.config_version,
                received,
            ),
        )


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def assess(gateway: str, box: Box | None, chain: dict[str, Any] | None, now: float) -> dict[str, Any]:
    """One row of the fleet view: the figures, the problems in words, and the severity."""
    box = box or Box()
    health = box.health
    interval = _number(health.get("healthInterval")) or DEFAULT_INTERVAL
    lags = {
        name.partition(":")[2]: value
        for name, value in health.items()
        if name.startswith("uplinkLag:") and _number(value) is not None
    }
    lag = max(lags.values(), default=None)
    failing = [d for d in str(health.get("failingDevices") or "").split(",") if d]
    problems: list[tuple[Severity, str]] = []
    status = box.status
    seen = box.last_seen
    if status is not None and status.state == "offline":  # until its next birth message
        if status.reason == "stopped":
            problems.append((Severity.STOPPED, "stopped cleanly"))
        else:
            problems.append((Severity.DOWN, "offline: its last will arrived (connection lost)"))
    silent_after = SILENT_FACTOR * interval + SILENT_SLACK
    if seen is not None and now - seen > silent_after and not any(s == Severity.DOWN for s, _ in problems):
        problems.append((Severity.DOWN, f"silent for {now - seen:.0f} s (health every {interval:g} s)"))
    if seen is None and status is None:
        problems.append((Severity.NEVER_SEEN, "never heard from (a key is registered)"))
    if chain is not None:
        if chain.get("clones"):
            problems.append((Severity.CHAIN, "two boxes use this identity (cloned chain)"))
        if chain.get("broken_links"):
            problems.append((Severity.CHAIN, f"chain broken at seq {chain['broken_links'][0]}"))
        missing = sum(last - first + 1 for first, last in chain.get("missing", []))
        if missing:
            problems.append((Severity.LAGGING, f"{missing} batches missing"))
    if lag is not None and lag > LAG_LIMIT:
        problems.append((Severity.LAGGING, f"uplink lag {lag:.0f} s"))
    for name, value in health.items():
        if name.startswith("uplinkConnected:") and value is False:
            problems.append((Severity.DEGRADED, f"uplink {name.partition(':')[2]} disconnected"))
    if failing:
        problems.append((Severity.DEGRADED, f"devices failing or stale: {', '.join(failing)}"))
    if health.get("clockSynced") is False:
        problems.append((Severity.DEGRADED, "clock not synchronised"))
    severity = min((s for s, _ in problems), default=Severity.OK)
    config_version = health.get("configVersion")
    version = health.get("softwareVersion")
    if status is not None and (box.health_time is None or status.time > box.health_time):
        config_version, version = status.config_version, status.version
    return {
        "gateway": gateway,
        "severity": severity.name.lower(),
        "rank": int(severity),
        "problems": [text for _, text in sorted(problems, key=lambda p: p[0])],
        "last_seen": seen,
        "last_seen_age": None if seen is None else round(now - seen, 3),
        "liveness": None if status is None else {**asdict(status), "received": box.status_received},
        "lag": lag,
        "uplink_lag": lags,
        "undelivered_readings": health.get("undeliveredReadings"),
        "chain": None
        if chain is None
        else {
            "chain": chain.get("chain"),
            "last_seq": chain.get("last_seq"),
            "missing": chain.get("missing", []),
            "broken_links": chain.get("broken_links", []),
            "clones": chain.get("clones", []),
            "gaps": len(chain.get("gaps", [])),
        },
        "config_version": config_version,
        "software_version": version,
        "failing_devices": failing,
        "health": dict(health),
        "health_time": box.health_time,
    }


def fleet_view(
    fleet: Fleet, report: dict[str, Any], registered: Iterable[str] = (), *, now: float | None = None
) -> dict[str, Any]:
    """The fleet, the boxes that need a person first (then by gateway id)."""
    now = time.time() if now is None else now
    chains: dict[str, Any] = report.get("gateways", {})
    names = set(fleet.boxes) | set(chains) | set(registered)
    rows = [assess(name, fleet.boxes.get(name), chains.get(name), now) for name in names]
    rows.sort(key=lambda row: (row["rank"], row["gateway"]))
    counts: dict[str, int] = {}
    for row in rows:
        counts[row["severity"]] = counts.get(row["severity"], 0) + 1
    return {"at": now, "counts": counts, "gateways": rows}
