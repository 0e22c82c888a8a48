"""Liveness on MQTT: a retained birth message and a last will on the status topic.

When an MQTT uplink connects it registers a last will (``offline``, reason ``lost``, retained,
QoS 1) and publishes a retained birth message (``online``) on ``status_topic``
(``city/{gateway}/status`` by default). When the box dies, loses power or its link, the broker
publishes the will once the keepalive runs out (MQTT 3.1.1 §3.1.2.5: at most 1.5 keepalives), so
the platform sees a dead box without polling it. A clean stop publishes ``offline`` (reason
``stopped``) itself before it disconnects; a clean disconnect discards the will.

A message is a JSON object whose fields can be read as they are (``state``, ``gateway``, ``time``,
``version``, ``config_version``, ``reason``) and whose ``jws`` member is the compact JWS of the
same fields, signed with the box's batch key: a platform trusts only what the signature covers
(:func:`read_status`), since anyone allowed to publish on the broker could write the plain fields.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from joserfc import jws
from joserfc.errors import JoseError

from citygw import __version__
from citygw.errors import CitygwError
from citygw.wire.keyring import Keyring
from citygw.wire.signing import ALGORITHMS, Signer

STATUS_KIND = "citygw-status"
"""The ``kind`` member of a signed status document, so it is never taken for a batch."""
MAX_STATUS = 4096  # bytes of a status message a reader accepts


class Liveness:
    """Builds the signed status messages of one gateway."""

    def __init__(self, signer: Signer, gateway: str, config_version: Callable[[], str]) -> None:
        self.signer = signer
        self.gateway = gateway
        self.config_version = config_version

    def message(self, state: str, reason: str, *, at: float | None = None) -> bytes:
        """The message for ``state`` (``online``/``offline``) and ``reason`` (``connected``,
        ``lost``, ``stopped``), stamped ``at`` (default now, UTC epoch seconds)."""
        fields: dict[str, Any] = {
            "kind": STATUS_KIND,
            "state": state,
            "reason": reason,
            "gateway": self.gateway,
            "time": round(time.time() if at is None else at, 3),
            "version": __version__,
            "config_version": self.config_version(),
        }
        token = self.signer.sign(json.dumps(fields, separators=(",", ":")).encode())
        return json.dumps({**fields, "jws": token}, separators=(",", ":")).encode()


@dataclass(frozen=True, slots=True)
class Status:
    """A verified status message."""

    gateway: str
    state: str  # online | offline
    reason: str  # connected | lost | stopped
    time: float  # when the box wrote it (for a will: when the connection that died began)
    version: str
    config_version: str


class StatusRefused(CitygwError):
    """A status message that is not signed by a key of the gateway it names, or malformed."""


_REGISTRY = jws.JWSRegistry(algorithms=list(ALGORITHMS))


def read_status(payload: bytes, keyring: Keyring) -> Status:
    """The status ``payload`` holds, from its signed part only; :class:`StatusRefused` says why not."""
    if len(payload) > MAX_STATUS:
        raise StatusRefused(f"larger than {MAX_STATUS} bytes")
    try:
        outer = json.loads(payload)
        token = outer["jws"]
        obj = jws.extract_compact(token.encode("ascii"), registry=_REGISTRY)
        kid = obj.headers().get("kid")
    except (ValueError, KeyError, TypeError, AttributeError, JoseError) as exc:
        raise StatusRefused(f"not a status message ({type(exc).__name__})") from None
    binding = keyring.lookup(kid) if isinstance(kid, str) else None
    if binding is None:
        raise StatusRefused(f"unknown kid {str(kid)[:64]}")
    try:
        if not jws.validate_compact(obj, binding.key, registry=_REGISTRY):
            raise StatusRefused("bad signature")
        doc = json.loads(obj.payload)
    except (JoseError, ValueError) as exc:
        raise StatusRefused(f"bad signature ({exc})") from None
    if not isinstance(doc, dict) or doc.get("kind") != STATUS_KIND:
        raise StatusRefused("signed, but not a status document")
    gateway = doc.get("gateway")
    if not isinstance(gateway, str) or not binding.allows(gateway):
        raise StatusRefused(f"key {kid} is not a key of gateway {gateway}")
    try:
        return Status(
            gateway=gateway,
            state=str(doc["state"]),
            reason=str(doc["reason"]),
            time=float(doc["time"]),
            version=str(doc["version"]),
            config_version=str(doc["config_version"]),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise StatusRefused(f"a status field is missing or wrong ({exc})") from None
