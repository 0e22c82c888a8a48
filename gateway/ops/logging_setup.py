"""Logs: one line per event on stderr, ``key=value`` fields with stable keys, for journald.

Every line has ``level``, ``logger``, ``event`` and ``msg``; our calls name their event and its
fields through :class:`citygw.logs.EventLog` (the keys in :data:`FIELDS`, in that order), and a
library's line says ``event=library``. An exception's traceback goes on the same line, in ``exc``
with its newlines escaped, so that one event is one journal entry. Under systemd
(``$JOURNAL_STREAM`` set) each line starts with its syslog priority (``<4>`` for a warning), so
``journalctl -u citygw -p warning`` shows what a technician must look at, and no timestamp (the
journal adds its own); elsewhere the line starts with an ISO 8601 UTC time.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import time
from typing import TextIO

from citygw.redact import SecretFilter

FIELDS = ("event", "device", "bus", "uplink", "seq", "path", "reason")
"""Structured fields a log call may pass in ``extra``, printed in this order after ``logger``."""

_PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3, logging.CRITICAL: 2}
_OURS = ("gateway", "drivers", "citygw")
_BARE = re.compile(r"[A-Za-z0-9_.:/@+-]+")


def quote(value: object) -> str:
    """A value as it appears after ``key=``: bare when it is a simple token, else double-quoted."""
    text = str(value)
    if _BARE.fullmatch(text):
        return text
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\r", "\\r")
    return f'"{escaped}"'


class KeyValueFormatter(logging.Formatter):
    """``[<prio>|time ]level=... logger=... [event=... device=...] msg="..." [exc="..."]``."""

    def __init__(self, *, journald: bool) -> None:
        super().__init__()
        self.journald = journald

    def format(self, record: logging.LogRecord) -> str:
        parts: list[str] = []
        if self.journald:
            prefix = f"<{_PRIORITY.get(record.levelno, 6)}>"
        else:
            stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            prefix = f"{stamp}.{int(record.msecs):03d}Z "
        parts.append(f"level={record.levelname.lower()}")
        parts.append(f"logger={record.name}")
        for key in FIELDS:
            value = record.__dict__.get(key)
            if key == "event" and value is None and not record.name.startswith(_OURS):
                value = "library"  # a library's own line (asyncio, bleak): ours name their event
            if value is not None:
                parts.append(f"{key}={quote(value)}")
        parts.append(f"msg={quote(record.getMessage())}")
        if record.exc_text:  # set (redacted) by citygw.redact.SecretFilter
            parts.append(f"exc={quote(record.exc_text)}")
        elif record.exc_info:
            parts.append(f"exc={quote(self.formatException(record.exc_info))}")
        return prefix + " ".join(parts)


def setup(level: str = "info", *, stream: TextIO | None = None) -> None:
    """Send every log record at ``level`` or above to stderr (or ``stream``), one line each."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(KeyValueFormatter(journald=bool(os.environ.get("JOURNAL_STREAM"))))
    handler.addFilter(SecretFilter())  # no url query value, token or password in any line
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    # a library's chatter at INFO is not a technician's business
    for noisy in ("aiomqtt", "asyncio"):
        logging.getLogger(noisy).setLevel(max(root.level, logging.WARNING))
