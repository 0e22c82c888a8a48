"""Keeping secrets out of text a person or a machine may read: logs, errors, status, metrics.

An uplink url may carry a secret the platform asks for (``https://p.example/in?api_key=${API_KEY}``),
and a server may echo it back in an error page or a ``Location``. Every url shown anywhere goes
through :func:`url` (userinfo and every query value replaced by ``***``, the fragment dropped), and
every free text that may hold one through :func:`text` (any url in it redacted, and any secret
:func:`remember`-ed replaced). :class:`SecretFilter` does the latter for every log record, so that a
traceback that quotes a url or a header does not leak either.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Iterable
from urllib.parse import quote, quote_plus, urlsplit, urlunsplit

MASK = "***"
# a url ends before white space, a quote or a bracket, and before a trailing full stop, colon, ...
_URL = re.compile(r"\b[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>`]*[^\s'\"<>`.,:;!?)\]]")
_MIN_SECRET = 4  # shorter values (a 1, a yes) would mask ordinary words; their url context is masked anyway

_lock = threading.Lock()
_secrets: set[str] = set()


def url(value: str) -> str:
    """``value`` with its userinfo and query values masked and its fragment dropped.

    ``https://u:p@host/in?api_key=s3cr3t&x`` becomes ``https://***@host/in?api_key=***&x``: the
    host, path and query keys stay (an operator needs them to tell uplinks apart), the values go.
    """
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - raises on a malformed port: mask the whole authority then
    except ValueError:
        return _mask_loose(value)
    netloc = parts.netloc
    if "@" in netloc:
        netloc = f"{MASK}@{netloc.rsplit('@', 1)[1]}"
    query = "&".join(_mask_pair(pair) for pair in parts.query.split("&")) if parts.query else ""
    return urlunsplit((parts.scheme, netloc, parts.path, query, ""))


def _mask_pair(pair: str) -> str:
    key, sep, _ = pair.partition("=")
    return f"{key}={MASK}" if sep else key


def _mask_loose(value: str) -> str:
    scheme, _, rest = value.partition("://")
    if not any(mark in rest for mark in "@?#"):
        return value  # malformed, but nothing in it to hide
    host = rest.split("/", 1)[0].rsplit("@", 1)[-1].split("?", 1)[0]
    return f"{scheme}://{MASK}@{host}/{MASK}" if "@" in rest or "?" in rest else f"{scheme}://{host}/{MASK}"


def secrets_of(value: str) -> list[str]:
    """The parts of a url that are secret: the userinfo's user and password and every query value."""
    try:
        parts = urlsplit(value)
    except ValueError:
        return []
    found = [parts.username or "", parts.password or ""]
    for pair in parts.query.split("&"):
        found.append(pair.partition("=")[2])
    return [s for s in found if s]


def remember(values: Iterable[str | None]) -> None:
    """Secrets (tokens, passwords, url query values) to mask wherever they appear in :func:`text`."""
    with _lock:
        for value in values:
            if value and len(value) >= _MIN_SECRET:
                # as configured and as an HTTP client or server may print it, percent-encoded
                _secrets.update({value, quote(value, safe=""), quote_plus(value), quote(value, safe="/:=")})


def text(value: str) -> str:
    """``value`` with every url in it redacted (:func:`url`) and every remembered secret masked."""
    value = _URL.sub(lambda match: url(match.group(0)), value)
    with _lock:
        known = sorted(_secrets, key=len, reverse=True)
    for secret in known:
        if secret in value:
            value = value.replace(secret, MASK)
    return value


class SecretFilter(logging.Filter):
    """Redacts the message and the traceback of every record that passes (:func:`text`)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        clean = text(message)
        if clean != message:
            record.msg, record.args = clean, None
        if record.exc_info and record.exc_info[0] is not None and not record.exc_text:
            # the redacted traceback, which formatters prefer; exc_info stays for other handlers
            record.exc_text = text(logging.Formatter().formatException(record.exc_info))
        elif record.exc_text:
            record.exc_text = text(record.exc_text)
        return True
