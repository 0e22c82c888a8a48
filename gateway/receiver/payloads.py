"""The payloads of signed batches, parsed as the wire contract says (docs/integrator.md): the
batch and gap-record documents, the SenML pack (RFC 8428) resolved into plain records, and every
limit a verifier enforces before it parses. Pure: bytes in, values or a
:class:`~citygw.errors.VerificationError` out. :mod:`citygw.receiver.verify` checks chains with it.
"""

from __future__ import annotations

import base64
import json
import math
import re
from dataclasses import dataclass
from typing import Any, NoReturn

from citygw.errors import VerificationError
from citygw.reading import Value
from citygw.receiver.streams import Reset

ResolvedRecord = tuple[str, Value, str, float]
"""One resolved SenML record: name (bn + n), value, unit (``""`` if none), time (UTC epoch s)."""

CONTRACT_VERSION = 2
"""The wire contract's version (docs/integrator.md); payloads without ``v`` are version 1."""
GAP_REASONS = frozenset({"max_disk", "max_age", "corrupt"})
MAX_PAYLOAD = 16 * 1024 * 1024  # base64url characters; joserfc's default (128 kB) is below our batches
MAX_HEADER = 512  # base64url characters of the protected header ({"alg":"EdDSA","kid":...} is ~90)
MAX_TOKEN = MAX_HEADER + 1 + MAX_PAYLOAD + 1 + 86  # the largest compact JWS looked at
MAX_SEQ = 2**53 - 1  # seqs and counts stay exact in every JSON implementation (RFC 8259 §6)

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9:./_-]*")  # RFC 8428 §4.5.1
_HEX64 = re.compile(r"[0-9a-f]{64}")
_RECORD_FIELDS = frozenset({"bver", "bn", "bt", "n", "u", "v", "vb", "vs", "t", "flags", "window"})
_VALUE_FIELDS = ("v", "vb", "vs")
_CHAIN = re.compile(r"[A-Za-z0-9_-]{22}")
_REASON = re.compile(r"[a-z][a-z0-9_-]{0,31}")
_BATCH_FIELDS = frozenset({"gateway", "seq", "prev", "created", "senml"})
_BATCH_FIELDS_V2 = _BATCH_FIELDS | {"v", "chain", "reset"}
_GAP_FIELDS = frozenset({"gateway", "gap", "prev", "last", "created"})
_GAP_FIELDS_V2 = _GAP_FIELDS | {"v", "chain"}
_RESET_FIELDS = frozenset({"chain", "seq", "reason"})
_GAP_RANGE_FIELDS = frozenset({"from", "to", "batches", "readings", "reason"})


# -- SenML -------------------------------------------------------------------------------------


def decode_pack(pack: object) -> list[ResolvedRecord]:
    """Validate an RFC 8428 SenML pack strictly and resolve it into ``(name, value, unit, time)``.

    ``bn``/``bt`` apply to the records that follow until changed (§4.5.2); ``t`` is relative to
    ``bt``. A record has only known fields (``bver bn bt n u v vb vs t flags window``) of the right types and
    exactly one value field; names match §4.5.1; times never go back. Raises
    :class:`VerificationError` naming the first offending record.
    """
    if not isinstance(pack, list):
        raise VerificationError("senml: not a JSON array")
    if not pack:
        raise VerificationError("senml: empty pack")
    out: list[ResolvedRecord] = []
    base_name = ""
    base_time = 0.0
    last_time = -math.inf
    for index, record in enumerate(pack):
        where = f"senml[{index}]"
        if not isinstance(record, dict):
            raise VerificationError(f"{where}: not a JSON object")
        unknown = record.keys() - _RECORD_FIELDS
        if unknown:
            raise VerificationError(f"{where}: unknown field(s) {', '.join(sorted(unknown))}")
        if "bver" in record and (index or type(record["bver"]) is not int or record["bver"] < 10):
            raise VerificationError(f"{where}.bver: not a SenML version (an integer >= 10, first record)")
        if "bn" in record:
            base_name = _string(record["bn"], f"{where}.bn")
        if "bt" in record:
            base_time = float(_number(record["bt"], f"{where}.bt"))
        name = base_name + _string(record["n"], f"{where}.n") if "n" in record else base_name
        if not _NAME.fullmatch(name):
            raise VerificationError(f"{where}: name {name!r} is not a valid SenML name (RFC 8428 §4.5.1)")
        unit = _string(record["u"], f"{where}.u") if "u" in record else ""
        present = [f for f in _VALUE_FIELDS if f in record]
        if len(present) != 1:
            raise VerificationError(
                f"{where}: needs exactly one of v, vb, vs (has {', '.join(present) or 'none'})"
            )
        value = _value(present[0], record[present[0]], f"{where}.{present[0]}")
        when = base_time + (float(_number(record["t"], f"{where}.t")) if "t" in record else 0.0)
        if when < last_time:
            raise VerificationError(f"{where}: time {when} goes back (the record before is at {last_time})")
        last_time = when
        if "flags" in record:
            flags = record["flags"]
            if not isinstance(flags, str) or not all(flags.split(",")):  # RFC 8428 §11: a string
                raise VerificationError(f"{where}.flags: not flag names joined by ','")
        if "window" in record and _number(record["window"], f"{where}.window") <= 0:
            raise VerificationError(f"{where}.window: not a positive number of seconds")
        out.append((name, value, unit, when))
    return out


def _value(field_name: str, raw: object, where: str) -> Value:
    if field_name == "v":
        return _number(raw, where)
    if field_name == "vb":
        if not isinstance(raw, bool):
            raise VerificationError(f"{where}: not a boolean")
        return raw
    return _string(raw, where)


def _string(raw: object, where: str) -> str:
    if not isinstance(raw, str):
        raise VerificationError(f"{where}: not a string")
    return raw


def _number(raw: object, where: str) -> int | float:
    if isinstance(raw, bool) or not isinstance(raw, int | float):
        raise VerificationError(f"{where}: not a number")
    try:
        finite = math.isfinite(raw)
    except OverflowError:  # an int too large for a float
        finite = False
    if not finite:
        raise VerificationError(f"{where}: not a finite number")
    return raw


def _integer(raw: object, where: str, *, minimum: int) -> int:
    if isinstance(raw, bool) or not isinstance(raw, int):
        raise VerificationError(f"{where}: not an integer")
    if raw < minimum:
        raise VerificationError(f"{where}: {raw} is below {minimum}")
    return raw


# -- payloads ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PayloadBatch:
    gateway: str
    chain: str
    seq: int
    prev: str | None
    created: float
    readings: list[ResolvedRecord]
    reset: Reset | None


@dataclass(frozen=True, slots=True)
class PayloadGap:
    gateway: str
    chain: str
    first: int
    last_seq: int
    batches: int
    readings: int
    reason: str
    prev: str | None
    last: str
    created: float


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise VerificationError(f"payload: duplicate key {key!r}")
            seen.add(key)
    return obj


def _no_constant(name: str) -> NoReturn:
    raise VerificationError(f"payload: {name} is not JSON")


def parse_json(payload: bytes) -> Any:
    """The payload's JSON; only ever called on a payload whose signature checked out."""
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError:
        raise VerificationError("payload is not UTF-8") from None
    try:
        return json.loads(text, object_pairs_hook=_no_duplicate_keys, parse_constant=_no_constant)
    except RecursionError:
        raise VerificationError("payload is nested too deeply") from None
    except ValueError as exc:
        raise VerificationError(f"payload is not JSON ({exc})") from None


def _prev(doc: dict[str, Any], first: int, what: str) -> str | None:
    """``prev``: the hash of the item before; null (or absent) exactly when ``first`` is seq 1."""
    prev = doc.get("prev")
    if prev is None:
        if first != 1:
            raise VerificationError(f"prev is null but {what} is {first} (only seq 1 has no prev)")
        return None
    if not isinstance(prev, str) or not _HEX64.fullmatch(prev):
        raise VerificationError("prev: not 64 lowercase hex digits")
    if first == 1:
        raise VerificationError(f"prev must be null when {what} is 1 (nothing comes before it)")
    return prev


def _chain_id(raw: object, where: str) -> str:
    """A chain id: 16 bytes in base64url without padding (22 characters)."""
    if not isinstance(raw, str) or not _CHAIN.fullmatch(raw):
        raise VerificationError(f"{where}: not a chain id (22 base64url characters)")
    if base64.urlsafe_b64encode(base64.urlsafe_b64decode(raw + "==")).decode("ascii")[:22] != raw:
        raise VerificationError(f"{where}: not a chain id (not canonical base64url of 16 bytes)")
    return raw


def _version(doc: dict[str, Any]) -> tuple[int, str]:
    """The contract version and the chain (``""`` for v1)."""
    if "v" not in doc:
        if "chain" in doc:
            raise VerificationError("chain without v: a v2 payload says v: 2")
        return 1, ""
    version = doc["v"]
    if version != CONTRACT_VERSION or isinstance(version, bool):
        raise VerificationError(
            f"v: contract version {version!r} is not supported (this verifier knows 1 and {CONTRACT_VERSION})"
        )
    if "chain" not in doc:
        raise VerificationError("chain is missing (v2)")
    return 2, _chain_id(doc["chain"], "chain")


def parse_item(doc: object, gateway: str) -> PayloadBatch | PayloadGap:
    if not isinstance(doc, dict):
        raise VerificationError("payload is not a JSON object")
    version, chain = _version(doc)
    if "gap" in doc:
        return _parse_gap(doc, gateway, version, chain)
    allowed = _BATCH_FIELDS if version == 1 else _BATCH_FIELDS_V2
    unknown = doc.keys() - allowed
    if unknown:
        raise VerificationError(f"payload: unknown field(s) {', '.join(sorted(unknown))}")
    for name in ("seq", "created", "senml"):
        if name not in doc:
            raise VerificationError(f"payload: {name} is missing")
    seq = _seq(doc["seq"], "seq", minimum=1)
    prev = _prev(doc, seq, "seq")
    created = float(_number(doc["created"], "created"))
    reset = None
    if "reset" in doc:
        if seq != 1:
            raise VerificationError(f"reset: only seq 1 of a chain carries one, not seq {seq}")
        reset = _reset(doc["reset"], chain)
    return PayloadBatch(gateway, chain, seq, prev, created, decode_pack(doc["senml"]), reset)


def _reset(raw: object, chain: str) -> Reset:
    if not isinstance(raw, dict):
        raise VerificationError("reset: not a JSON object")
    if raw.keys() != _RESET_FIELDS:
        raise VerificationError(f"reset: needs exactly the fields {', '.join(sorted(_RESET_FIELDS))}")
    old = _chain_id(raw["chain"], "reset.chain")
    if old == chain:
        raise VerificationError("reset.chain: names this chain itself")
    seq = _seq(raw["seq"], "reset.seq", minimum=0)
    reason = raw["reason"]
    if not isinstance(reason, str) or not _REASON.fullmatch(reason):
        raise VerificationError("reset.reason: not a short lowercase word")
    return Reset(old, seq, reason)


def _seq(raw: object, where: str, *, minimum: int) -> int:
    value = _integer(raw, where, minimum=minimum)
    if value > MAX_SEQ:
        raise VerificationError(f"{where}: {value} is above {MAX_SEQ} (2^53 - 1)")
    return value


def _parse_gap(doc: dict[str, Any], gateway: str, version: int, chain: str) -> PayloadGap:
    if "seq" in doc:
        raise VerificationError("a gap record has no seq")
    unknown = doc.keys() - (_GAP_FIELDS if version == 1 else _GAP_FIELDS_V2)
    if unknown:
        raise VerificationError(f"gap record: unknown field(s) {', '.join(sorted(unknown))}")
    for name in ("last", "created"):
        if name not in doc:
            raise VerificationError(f"gap record: {name} is missing")
    gap = doc["gap"]
    if not isinstance(gap, dict):
        raise VerificationError("gap: not a JSON object")
    if gap.keys() != _GAP_RANGE_FIELDS:
        raise VerificationError(f"gap: needs exactly the fields {', '.join(sorted(_GAP_RANGE_FIELDS))}")
    first = _seq(gap["from"], "gap.from", minimum=1)
    last_seq = _seq(gap["to"], "gap.to", minimum=first)
    batches = _seq(gap["batches"], "gap.batches", minimum=1)
    if batches != last_seq - first + 1:
        raise VerificationError(
            f"gap.batches is {batches} but {first}..{last_seq} holds {last_seq - first + 1}"
        )
    readings = _seq(gap["readings"], "gap.readings", minimum=0)
    if gap["reason"] not in GAP_REASONS:
        raise VerificationError(
            f"gap.reason: {gap['reason']!r} is not one of {', '.join(sorted(GAP_REASONS))}"
        )
    prev = _prev(doc, first, "gap.from")
    last = doc["last"]
    if not isinstance(last, str) or not _HEX64.fullmatch(last):
        raise VerificationError("last: not 64 lowercase hex digits")
    created = float(_number(doc["created"], "created"))
    return PayloadGap(gateway, chain, first, last_seq, batches, readings, gap["reason"], prev, last, created)
