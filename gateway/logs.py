"""The log contract of docs/operations.md ("Logs"): every line names its event, at the event's level,
with the fields that say what it is about (``device``, ``bus``, ``uplink``, ...).

A module logs through an :class:`EventLog`; a call names the event first and keeps the standard
logging call after it::

    log = EventLog(__name__)
    log.event("device_failing", device=name).warning("device %s: not answering; backing off", name)

:data:`EVENTS` is the list of events with their level and required fields: the tests check every
call in ``gateway/`` and ``drivers/`` against it (by reading the source), and every line a real
daemon writes (by parsing it). Levels: ``error`` needs a person, ``warning`` is trouble citygw
handles but someone should know of, ``info`` the life of the service, ``debug`` for developers.

Lines of libraries (asyncio, bleak) carry ``event=library``; the MQTT client library's own lines
(a socket error at every broker restart) are demoted to debug (:func:`library_logger`): the
uplink's ``uplink_retrying`` warning already says what happened, once.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass

DEBUG, INFO, WARNING, ERROR = logging.DEBUG, logging.INFO, logging.WARNING, logging.ERROR


@dataclass(frozen=True, slots=True)
class Event:
    """An event's level and the fields every line of it carries."""

    level: int
    fields: tuple[str, ...] = ()


_DEVICE, _BUS, _UPLINK, _PATH = ("device",), ("bus",), ("uplink",), ("path",)

EVENTS: Mapping[str, Event] = {
    # the service
    "started": Event(INFO),
    "stopped": Event(INFO),
    "failed": Event(ERROR),  # `citygw run` ends on an error
    "config_invalid": Event(ERROR, _PATH),
    "crashed": Event(ERROR),  # `citygw run` ends on an unexpected error (a bug): traceback once
    "task_failed": Event(ERROR),  # a task's unexpected error ends the daemon (docs/architecture.md)
    "task_restarting": Event(WARNING),  # an expected failure (a peer down, I/O): restarted
    "salvage_failed": Event(WARNING),
    "metrics_listening": Event(INFO),
    "metrics_unavailable": Event(WARNING),  # the port is taken: retried with backoff
    "watchdog_ok": Event(WARNING),
    "watchdog_stuck": Event(ERROR),
    "watchdog_test_block": Event(WARNING),
    "sd_notify_failed": Event(DEBUG),
    "clock_unsynced": Event(WARNING),
    "clock_synced": Event(WARNING),
    "clock_corrected": Event(INFO),
    "report_failed": Event(WARNING),
    "health_buffer_unread": Event(WARNING),  # a health report went without the buffer's figures
    # reload (SIGHUP) and remote configuration (signed documents)
    "reload_started": Event(INFO, _PATH),
    "reloaded": Event(INFO, _PATH),
    "reload_invalid": Event(ERROR, _PATH),  # one line per problem; the config in effect keeps running
    "reload_refused": Event(ERROR, _PATH),
    "config_refused": Event(WARNING, ("reason",)),
    "config_trying": Event(INFO, _PATH),
    "config_applied": Event(INFO, _PATH),
    "config_rolled_back": Event(ERROR, ("reason",)),
    "config_recovered": Event(WARNING, _PATH),  # a pending remote config rolled back at start
    "config_poll_failed": Event(WARNING, ("reason",)),
    # the buffer
    "commit_failed": Event(ERROR),
    "buffer_moved_aside": Event(ERROR, _PATH),  # a damaged file moved aside, a fresh one started
    "buffer_chain_assigned": Event(INFO, _PATH),
    "buffer_clock_step": Event(WARNING, _PATH),
    "batch_corrupt": Event(ERROR, ("seq",)),  # quarantined behind a gap record
    "wal_damaged": Event(ERROR, _PATH),  # accepted readings lost, accounted for by a gap record
    "wal_damaged_nothing_lost": Event(WARNING, _PATH),
    "wal_copy_unreadable": Event(DEBUG, _PATH),
    "buffer_restaged": Event(INFO, _PATH),
    "buffer_no_reserve": Event(WARNING, _PATH),
    "buffer_checkpoint_failed": Event(DEBUG, _PATH),
    "retention_failed": Event(ERROR, _PATH),
    "retention_dropped": Event(WARNING, ("reason", "seq")),
    "disk_full": Event(ERROR, _PATH),
    "disk_room_again": Event(WARNING, _PATH),
    # uplinks
    "uplink_connected": Event(INFO, _UPLINK),
    "uplink_retrying": Event(WARNING, _UPLINK),
    "status_offline_unsent": Event(WARNING, _UPLINK),  # a clean stop's offline status got no PUBACK
    "batch_rejected": Event(WARNING, ("uplink", "seq")),
    "batch_rejected_again": Event(WARNING, ("uplink", "seq")),
    "batch_resent": Event(INFO, ("uplink", "seq")),
    "batch_retry_after": Event(WARNING, ("uplink", "seq")),
    "mqtt_client": Event(DEBUG, _UPLINK),  # the MQTT client library's own lines, demoted
    # devices and buses
    "device_polling": Event(INFO, ("device", "bus")),
    "device_ok": Event(INFO, _DEVICE),
    "device_error": Event(WARNING, ("device", "reason")),
    "device_errors_counted": Event(INFO, ("device", "reason")),  # the end of an error episode
    "device_failing": Event(WARNING, _DEVICE),
    "device_stale": Event(WARNING, _DEVICE),
    "device_done": Event(INFO, _DEVICE),
    "counter_rollover": Event(INFO, _DEVICE),
    "poll_overrun": Event(WARNING, _DEVICE),
    "modbus_gap_refused": Event(WARNING, _DEVICE),
    "bus_connected": Event(INFO, _BUS),
    "port_open": Event(INFO, ("device", "path")),
    "serial_bus_shared": Event(ERROR, _BUS),
    "adverts_dropped": Event(WARNING, _BUS),
    "scanner_started": Event(INFO),  # the scanner's lines name its adapter (hci0) in msg
    "scanner_retrying": Event(WARNING),
    "scanner_silent": Event(WARNING),
    "scanner_passive_unavailable": Event(WARNING),
    "ble_replay": Event(INFO, _PATH),
    "ble_replay_loop": Event(DEBUG),
    # the receiving side (citygw receive) and the demo
    "receiving": Event(INFO),
    "batch_refused": Event(WARNING, ("reason",)),
    "batch_conflict": Event(ERROR, ("reason",)),
    "batch_forged": Event(ERROR, ("reason",)),  # a key signing for a gateway it is not bound to
    "receiver_upgraded": Event(INFO),
    "receiver_retrying": Event(WARNING),
    "status_refused": Event(WARNING),  # a status message not signed by a key of its gateway
    "gateway_offline": Event(WARNING),  # a gateway's last will arrived (citygw receive)
    "chain_new": Event(WARNING),
    "chain_upgrade": Event(INFO),
    "chain_clone": Event(ERROR),
    "keys_unbound": Event(WARNING),
    "keys_unreadable": Event(ERROR, _PATH),
    "key_unreadable": Event(ERROR, _PATH),
    "key_outside_folder": Event(WARNING, _PATH),
    "key_shared": Event(WARNING, ("reason",)),
    "keys_added": Event(INFO, _PATH),
    "demo_link": Event(INFO),
    "demo_platform_retrying": Event(WARNING),
    # a library's own line (asyncio, bleak)
    "library": Event(WARNING),
}


class EventLog:
    """A module's logger whose lines name their event: ``log.event(name, **fields).warning(...)``."""

    __slots__ = ("logger",)

    def __init__(self, name: str) -> None:
        self.logger = logging.getLogger(name)

    def event(self, name: str, **fields: object) -> logging.LoggerAdapter[logging.Logger]:
        """The logger for one line of event ``name`` (one of :data:`EVENTS`) with ``fields``."""
        return logging.LoggerAdapter(self.logger, {"event": name, **fields})


class _Demote(logging.Filter):
    """Rewrites a library's lines as debug lines of one event, dropped below the logger's level."""

    def __init__(self, logger: logging.Logger, event: str, fields: Mapping[str, object]) -> None:
        super().__init__()
        self.logger, self.event, self.fields = logger, event, fields

    def filter(self, record: logging.LogRecord) -> bool:
        record.levelno, record.levelname = DEBUG, "DEBUG"
        record.event = self.event
        record.__dict__.update(self.fields)
        return self.logger.isEnabledFor(DEBUG)


def library_logger(name: str, event: str, **fields: object) -> logging.Logger:
    """A logger to hand a library (the MQTT client) whose every line becomes a debug line of
    ``event`` with ``fields``: its errors are the ordinary life of a connection we report ourselves."""
    logger = logging.getLogger(name)
    if not any(isinstance(f, _Demote) for f in logger.filters):
        logger.addFilter(_Demote(logger, event, fields))
    return logger
