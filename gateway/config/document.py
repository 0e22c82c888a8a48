"""Signed config documents: what ``citygw config sign`` makes and a box verifies.

A document is a compact JWS (RFC 7515) signed with an operator's Ed25519 key (RFC 8037), the same
machinery as the batches (:mod:`citygw.wire.signing`). Its protected header is
``{"alg":"EdDSA","kid":KID,"typ":"citygw-config+jws"}`` (``typ`` keeps a batch from ever passing
for a config document); its payload is a JSON object::

    {"gateways": ["bkk-0042"], "version": 7, "issued": "2026-12-06T14:00:00Z", "config": "<YAML>"}

``gateways`` names the boxes it is for (one document may target many), ``version`` is a positive
integer the box requires to be higher than the version in effect (no replay, no downgrade) and
``config`` is the whole config file. The box's own ``operator_keys`` decide which kids it trusts.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from joserfc import jws
from joserfc.errors import JoseError

from citygw.errors import CitygwError
from citygw.wire.signing import ALG, ALGORITHMS

if TYPE_CHECKING:
    from joserfc.jwk import OKPKey

    from citygw.wire.signing import Signer

TYP = "citygw-config+jws"
MAX_DOCUMENT = 1024 * 1024  # characters: a config is a few KiB


class DocumentRefused(CitygwError):
    """A config document the box does not take; ``reason`` says why in a few words."""

    def __init__(self, reason: str, *, version: int = 0) -> None:
        super().__init__(reason)
        self.reason = reason
        self.version = version


@dataclass(frozen=True, slots=True)
class ConfigDocument:
    """A verified document."""

    kid: str
    gateways: tuple[str, ...]
    version: int
    issued: str
    config: str  # the YAML text
    digest: str  # SHA-256 (hex) of the compact JWS: the same document arriving again is known

    def config_digest(self) -> str:
        return hashlib.sha256(self.config.encode("utf-8")).hexdigest()


def digest(token: str) -> str:
    return hashlib.sha256(token.strip().encode("utf-8", "replace")).hexdigest()


def sign_document(signer: Signer, *, gateways: list[str], version: int, config: str) -> str:
    """The compact JWS of a config document (``signer`` holds the operator's key)."""
    if version < 1:
        raise ValueError("the version must be a positive integer")
    payload = {
        "gateways": gateways,
        "version": version,
        "issued": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "config": config,
    }
    header = {"alg": ALG, "kid": signer.kid, "typ": TYP}
    registry = jws.JWSRegistry(algorithms=[ALG])
    body = json.dumps(payload, ensure_ascii=False).encode("utf-8")
    return jws.serialize_compact(header, body, signer.key, registry=registry)


def verify_document(token: str, keys: dict[str, OKPKey]) -> ConfigDocument:
    """The document in ``token`` once its signature checks out under one of ``keys`` (by kid);
    raises :class:`DocumentRefused` saying why it does not."""
    token = token.strip()
    if len(token) > MAX_DOCUMENT:
        raise DocumentRefused(f"larger than {MAX_DOCUMENT} characters")
    if not token.isascii() or token.count(".") != 2:
        raise DocumentRefused("not a compact JWS")
    registry = jws.JWSRegistry(algorithms=list(ALGORITHMS))
    try:
        obj = jws.extract_compact(token.encode("ascii"), registry=registry)
        header = obj.headers()
    except (JoseError, ValueError, RecursionError) as exc:
        raise DocumentRefused(f"not a compact JWS ({exc})") from None
    if header.get("typ") != TYP:
        raise DocumentRefused(f"not a config document (typ is not {TYP})")
    if header.get("alg") not in ALGORITHMS:
        raise DocumentRefused(f"alg {str(header.get('alg'))[:32]!r} is not {' or '.join(ALGORITHMS)}")
    kid = header.get("kid")
    key = keys.get(kid) if isinstance(kid, str) else None
    if key is None:
        raise DocumentRefused(f"signed by key {str(kid)[:64]}, which is not one of gateway.operator_keys")
    try:
        valid = jws.validate_compact(obj, key, registry=registry)
    except (JoseError, ValueError) as exc:
        raise DocumentRefused(f"bad signature ({exc})") from None
    if not valid:
        raise DocumentRefused("bad signature")
    try:
        payload: Any = json.loads(obj.payload)
    except ValueError:
        raise DocumentRefused("the payload is not JSON") from None
    if not isinstance(payload, dict):
        raise DocumentRefused("the payload is not a JSON object")
    version = payload.get("version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise DocumentRefused("version is not a positive integer")
    gateways = payload.get("gateways")
    if not isinstance(gateways, list) or not all(isinstance(g, str) for g in gateways) or not gateways:
        raise DocumentRefused("gateways is not a list of gateway ids", version=version)
    config = payload.get("config")
    if not isinstance(config, str):
        raise DocumentRefused("config is not the text of a config file", version=version)
    return ConfigDocument(
        kid=str(kid),
        gateways=tuple(gateways),
        version=version,
        issued=str(payload.get("issued", "")),
        config=config,
        digest=digest(token),
    )
