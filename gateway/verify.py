"""Checking signed batches the way a platform must: key, signature, payload, SenML pack, chains.

:class:`ChainVerifier` takes compact JWS strings one at a time (the order they arrived in) and says
of each whether it is good, a harmless duplicate (delivery is at least once; (gateway, chain, seq)
is the idempotency key) or bad, and why. ``citygw verify`` (:func:`verify_main`) runs it over files.
The wire contract is docs/integrator.md (contract version 2; version 1 payloads still verify);
this module is its executable form.
"""

from __future__ import annotations

import base64
import enum
import gzip
import json
import math
import re
import sys
import zlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, BinaryIO, NoReturn, TextIO, cast

from joserfc import jws
from joserfc.errors import JoseError
from joserfc.jwk import OKPKey

from gateway.errors import KeyFileError, VerificationError
from gateway.keyring import MAX_GATEWAY_ID, Keyring
from gateway.reading import Value
from gateway.signing import ALGORITHMS, chain_hash, load_public_keys
from gateway.streams import Event, Reset, Streams
from gateway.wireformat import is_gzip

Decoded = tuple[str, Value, str, float]
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


def decode_pack(pack: object) -> list[Decoded]:
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
    out: list[Decoded] = []
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
class _Batch:
    gateway: str
    chain: str
    seq: int
    prev: str | None
    created: float
    readings: list[Decoded]
    reset: Reset | None


@dataclass(frozen=True, slots=True)
class _Gap:
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


def _parse_json(payload: bytes) -> Any:
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


def _parse_item(doc: object, gateway: str) -> _Batch | _Gap:
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
    return _Batch(gateway, chain, seq, prev, created, decode_pack(doc["senml"]), reset)


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


def _parse_gap(doc: dict[str, Any], gateway: str, version: int, chain: str) -> _Gap:
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
    return _Gap(gateway, chain, first, last_seq, batches, readings, gap["reason"], prev, last, created)


# -- results -----------------------------------------------------------------------------------


class Outcome(enum.Enum):
    """What became of one item."""

    OK = "ok"
    DUPLICATE = "duplicate"  # the same JWS again for a (gateway, chain, seq) already verified: harmless
    BAD = "bad"


class Refusal(enum.Enum):
    """Why an item is bad, in classes a platform counts (and answers with an HTTP status)."""

    TOO_LARGE = "too_large"
    NOT_JWS = "not_jws"
    BAD_HEADER = "bad_header"
    UNKNOWN_KID = "unknown_kid"
    BAD_SIGNATURE = "bad_signature"
    NOT_BOUND = "not_bound"  # a known key signing for a gateway whose folder does not hold it
    MALFORMED = "malformed"  # well signed, but not the contract
    CONFLICT = "conflict"  # another content for a (gateway, chain, seq) already held
    BROKEN_LINK = "broken_link"  # prev does not match the item before


@dataclass(frozen=True, slots=True)
class ItemResult:
    """The verdict on one JWS.

    ``gateway``, ``chain``, ``seq`` (a data batch) and ``gap`` (a gap record's ``(from, to)``) are
    known only once the signature and the key binding checked out: nothing of an unverified payload
    is read. ``readings`` counts the readings a data batch carries (0 for a gap record).
    ``payload`` is the decoded JSON; ``refusal`` the class of a bad item.
    """

    outcome: Outcome
    reason: str = ""
    gateway: str | None = None
    seq: int | None = None
    gap: tuple[int, int] | None = None
    readings: int = 0
    payload: dict[str, Any] | None = field(default=None, repr=False, compare=False)
    refusal: Refusal | None = None
    chain: str | None = None
    created: float = 0.0
    reset: Reset | None = None
    gap_reason: str | None = None

    @property
    def ok(self) -> bool:
        return self.outcome is Outcome.OK

    @property
    def where(self) -> str:
        """``seq 4``, ``gap 3..4`` or ``seq ?``: how reports name the item."""
        if self.gap is not None:
            return f"gap {self.gap[0]}..{self.gap[1]}"
        return f"seq {self.seq if self.seq is not None else '?'}"


@dataclass(slots=True)
class Totals:
    """Counts over everything a :class:`ChainVerifier` has seen."""

    batches: int = 0  # good data batches
    readings: int = 0  # readings in them
    gaps: int = 0  # good gap records
    dropped_batches: int = 0  # batches the gap records say were dropped
    dropped_readings: int = 0
    duplicates: int = 0
    bad: int = 0
    refused: dict[str, int] = field(default_factory=dict)  # bad items by Refusal value

    def summary(self) -> str:
        text = (
            f"verified {self.batches} batches ({self.readings} readings), "
            f"{self.duplicates} duplicates, {self.bad} bad"
        )
        if self.gaps:
            text += (
                f", {self.gaps} gap records ({self.dropped_batches} batches, "
                f"{self.dropped_readings} readings dropped on the box)"
            )
        return text


@dataclass(slots=True)
class _Links:
    """The hashes of one chain, by seq (what checks each ``prev``, whatever the arrival order)."""

    ends: dict[int, str] = field(default_factory=dict)  # seq -> hash of the item ending there
    starts: dict[int, str | None] = field(default_factory=dict)  # first seq of an item -> its prev
    batches: dict[int, str] = field(default_factory=dict)  # seq -> chain hash of its batch
    gaps: dict[int, str] = field(default_factory=dict)  # gap.from -> chain hash of the record


# -- the verifier ------------------------------------------------------------------------------


class ChainVerifier:
    """Verifies a stream of compact JWS, keeping each gateway's chains.

    The order of the checks is the point: size and shape of the compact form, the protected
    header (exactly ``{"alg":"EdDSA","kid":...}``, or ``"Ed25519"`` by RFC 9864), the key
    (``kid`` known), the signature; only
    then is the payload decoded, and its ``gateway`` must be one the key is bound to (see
    :mod:`gateway.keyring`) before anything else of it is read. Then the payload and pack shape
    (contract v1 or v2), then the chain: items link over seqs, whatever order they arrive in — a
    resend after a parked batch arrives late and is fine. An item is bad when its ``prev`` is not
    the hash of the item before it (or the item after it does not link to it), or when its
    (gateway, chain, seq) was seen with other content. Seqs still missing at the end, resets and
    clones are the business of :attr:`streams` (see :mod:`gateway.streams`).
    """

    def __init__(self, keys: Keyring | Mapping[str, OKPKey]) -> None:
        self._keys = keys if isinstance(keys, Keyring) else Keyring(unbound=keys)
        self._links: dict[tuple[str, str], _Links] = {}
        self._registry = jws.JWSRegistry(algorithms=list(ALGORITHMS))  # RFC 8037 and RFC 9864 names
        self._registry.max_payload_length = MAX_PAYLOAD
        self.totals = Totals()
        self.streams = Streams()
        self.events: list[Event] = []

    @property
    def keyring(self) -> Keyring:
        return self._keys

    def verify(self, token: str) -> ItemResult:
        """The verdict on one compact JWS (surrounding whitespace ignored); updates :attr:`totals`."""
        result = self._check(token.strip())
        totals = self.totals
        if result.outcome is Outcome.OK:
            if result.gap is None:
                totals.batches += 1
                totals.readings += result.readings
            else:
                totals.gaps += 1
                totals.dropped_batches += result.gap[1] - result.gap[0] + 1
                assert result.payload is not None
                totals.dropped_readings += result.payload["gap"]["readings"]
        elif result.outcome is Outcome.DUPLICATE:
            totals.duplicates += 1
        else:
            totals.bad += 1
            kind = (result.refusal or Refusal.MALFORMED).value
            totals.refused[kind] = totals.refused.get(kind, 0) + 1
        return result

    def inspect(self, token: str) -> ItemResult:
        """Signature, key binding, header and payload checks only, no chain (for a receiver that
        keeps its own chain state); totals are not touched."""
        return self._check(token.strip(), link=False)

    def _check(self, token: str, *, link: bool = True) -> ItemResult:
        def bad(refusal: Refusal, reason: str) -> ItemResult:
            return ItemResult(Outcome.BAD, reason, refusal=refusal)

        if len(token) > MAX_TOKEN:
            return bad(Refusal.TOO_LARGE, f"larger than {MAX_TOKEN} characters")
        if not token.isascii():
            return bad(Refusal.NOT_JWS, "not a compact JWS (non-ASCII characters)")
        if token.count(".") != 2:
            return bad(Refusal.NOT_JWS, "not a compact JWS (not three parts)")
        if token.index(".") > MAX_HEADER:
            return bad(Refusal.NOT_JWS, f"not a compact JWS (protected header over {MAX_HEADER} characters)")
        try:
            obj = jws.extract_compact(token.encode("ascii"), registry=self._registry)
            header = obj.headers()
        except (JoseError, ValueError, RecursionError) as exc:
            return bad(Refusal.NOT_JWS, f"not a compact JWS ({exc})")
        if header.get("alg") not in ALGORITHMS:
            alg = str(header.get("alg"))[:32]
            return bad(Refusal.BAD_HEADER, f"alg {alg!r} is not {' or '.join(ALGORITHMS)}")
        kid = header.get("kid")
        if not isinstance(kid, str):
            return bad(Refusal.BAD_HEADER, "no kid in the protected header")
        extra = header.keys() - {"alg", "kid"}
        if extra:
            names = ", ".join(sorted(extra))
            return bad(Refusal.BAD_HEADER, f"unexpected protected header parameter(s) {names}")
        binding = self._keys.lookup(kid)
        if binding is None:
            return bad(Refusal.UNKNOWN_KID, f"unknown kid {kid[:64]}")
        try:
            valid = jws.validate_compact(obj, binding.key, registry=self._registry)
        except (JoseError, ValueError) as exc:
            return bad(Refusal.BAD_SIGNATURE, f"bad signature ({exc})")
        if not valid:
            return bad(Refusal.BAD_SIGNATURE, "bad signature")
        # signed by a key we hold: now, and only now, the payload is decoded
        try:
            doc: Any = _parse_json(obj.payload)
        except VerificationError as exc:
            return bad(Refusal.MALFORMED, str(exc))
        if not isinstance(doc, dict):
            return bad(Refusal.MALFORMED, "payload is not a JSON object")
        claimed = doc.get("gateway")
        if not isinstance(claimed, str) or not claimed or len(claimed) > MAX_GATEWAY_ID:
            return bad(Refusal.MALFORMED, "gateway: missing or not a non-empty string")
        if not binding.allows(claimed):
            owners = ", ".join(sorted(binding.gateways or ()))
            return ItemResult(
                Outcome.BAD,
                f"key {kid} is not a key of gateway {claimed} (it is {owners}'s): refused as a forgery",
                claimed,
                refusal=Refusal.NOT_BOUND,
            )
        try:
            item = _parse_item(doc, claimed)
        except VerificationError as exc:  # signed by the gateway's key: what it says may be shown
            seq = doc.get("seq")
            seq = seq if isinstance(seq, int) and not isinstance(seq, bool) else None
            return ItemResult(Outcome.BAD, str(exc), claimed, seq, _gap_hint(doc), refusal=Refusal.MALFORMED)
        digest = chain_hash(token)
        if isinstance(item, _Batch):
            result = ItemResult(
                Outcome.OK,
                "",
                item.gateway,
                item.seq,
                None,
                len(item.readings),
                doc,
                chain=item.chain,
                created=item.created,
                reset=item.reset,
            )
        else:
            result = ItemResult(
                Outcome.OK,
                "",
                item.gateway,
                None,
                (item.first, item.last_seq),
                0,
                doc,
                chain=item.chain,
                created=item.created,
                gap_reason=item.reason,
            )
        if not link:
            return result
        return self._link(result, item, digest)

    def _link(self, result: ItemResult, item: _Batch | _Gap, digest: str) -> ItemResult:
        links = self._links.setdefault((item.gateway, item.chain), _Links())
        if isinstance(item, _Batch):
            first = last = item.seq
            seen, end_hash, what = links.batches, digest, f"seq {item.seq}"
        else:
            first, last = item.first, item.last_seq
            seen, end_hash, what = links.gaps, item.last, f"a gap record from seq {item.first}"
        known = seen.get(first)
        if known == digest:
            return replace(result, outcome=Outcome.DUPLICATE)
        if known is not None:
            return replace(
                result,
                outcome=Outcome.BAD,
                reason=f"{what} was already received with different content",
                refusal=Refusal.CONFLICT,
            )
        problem = ""
        if first - 1 in links.ends and item.prev != links.ends[first - 1]:
            problem = f"prev is not the hash of the item before (seq {first - 1})"
        elif last + 1 in links.starts and links.starts[last + 1] != end_hash:
            problem = f"the item after (seq {last + 1}) does not link to this one"
        seen[first] = digest
        links.ends[last] = end_hash
        links.starts[first] = item.prev
        self.events += self.streams.add(
            item.gateway,
            item.chain,
            first,
            last,
            created=item.created,
            readings=len(item.readings) if isinstance(item, _Batch) else item.readings,
            gap_reason=item.reason if isinstance(item, _Gap) else None,
            reset=item.reset if isinstance(item, _Batch) else None,
        )
        if problem:
            return replace(result, outcome=Outcome.BAD, reason=problem, refusal=Refusal.BROKEN_LINK)
        return result

    def findings(self) -> tuple[list[str], list[str]]:
        """After the last item: (problems, notes). Problems are seqs still missing and cloned ids;
        notes are box resets and what they lost."""
        problems: list[str] = []
        notes: list[str] = []
        for gateway in self.streams.gateways():
            report = self.streams.report(gateway)
            for chain in report["chains"]:
                name = _chain_name(gateway, chain["chain"])
                for first, last in chain["missing"]:
                    seqs = f"seq {first}" if first == last else f"seqs {first}..{last}"
                    problems.append(f"{name}: {seqs} missing")
            for reset in report["resets"]:
                why = f" ({reset['reason']})" if reset["reason"] else " (not announced)"
                lost = ", ".join(f"{a}..{b}" if a != b else str(a) for a, b in reset["lost"]) or "none"
                notes.append(
                    f"gateway {gateway}: box reset{why}: chain {reset['new_chain']} replaces "
                    f"{reset['old_chain'] or '(v1)'}, which ended at seq {reset['old_last_seq']}; "
                    f"{reset['lost_batches']} batches lost in the reset (seqs {lost})"
                )
            for a, b in report["clones"]:
                problems.append(
                    f"gateway {gateway}: chains {a or '(v1)'} and {b or '(v1)'} interleave: two boxes "
                    "claim this gateway id (a cloned image?)"
                )
        return problems, notes


def _gap_hint(doc: dict[str, Any]) -> tuple[int, int] | None:
    gap = doc.get("gap")
    if not isinstance(gap, dict):
        return None
    first, last = gap.get("from"), gap.get("to")
    if isinstance(first, int) and isinstance(last, int):
        return first, last
    return None


def _chain_name(gateway: str, chain: str) -> str:
    return f"gateway {gateway}" + (f" chain {chain}" if chain else "")


# -- citygw verify -----------------------------------------------------------------------------


def verify_main(
    key_files: Sequence[Path],
    inputs: Sequence[Path | str],
    *,
    keys_dir: Path | None = None,
    stdin: TextIO | None = None,
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
) -> int:
    """``citygw verify``: check files of compact JWS (one per line; ``-`` or none: stdin).

    A file that starts with the gzip magic is read inflated: messages of format ``jws+gzip``
    concatenated (each a member holding one JWS line) or any gzipped file of lines.

    Keys come from ``keys_dir`` (``DIR/<gateway id>/*.pub``: each key only for its gateway) and
    ``key_files`` (any gateway). Each bad item is one line on stderr, ``line N: seq S: reason``
    (prefixed ``FILE: `` when there are several inputs), and verification goes on with the next
    line; after the last, seqs still missing and cloned ids go to stderr too, box resets and a
    summary to stdout. Returns 0 if nothing was bad, 1 otherwise, 2 if no key could be loaded or an
    input could not be read.
    """
    stdin = stdin if stdin is not None else sys.stdin
    stdout = stdout if stdout is not None else sys.stdout
    stderr = stderr if stderr is not None else sys.stderr
    unbound: dict[str, OKPKey] = {}
    for path in key_files:
        try:
            unbound.update(load_public_keys([path]))
        except KeyFileError as exc:
            stderr.write(f"citygw verify: {exc}\n")
    try:
        keyring = Keyring(keys_dir, unbound=unbound)
    except KeyFileError as exc:
        stderr.write(f"citygw verify: {exc}\n")
        return 2
    if not len(keyring):
        stderr.write("citygw verify: no public key could be loaded; nothing verified\n")
        return 2
    verifier = ChainVerifier(keyring)
    sources: list[Path | str] = list(inputs) or ["-"]
    several = len(sources) > 1
    unreadable = False
    for source in sources:
        label = "stdin" if str(source) == "-" else str(source)
        prefix = f"{label}: " if several else ""
        try:
            if str(source) == "-":
                _verify_lines(verifier, stdin, prefix, stderr)
            else:
                with open(source, "rb") as stream:
                    if is_gzip(stream.peek(2)):  # lean messages (jws+gzip), or a gzipped file of lines
                        with gzip.GzipFile(fileobj=stream) as inflated:
                            _verify_lines(verifier, cast(BinaryIO, inflated), prefix, stderr)
                    else:
                        _verify_lines(verifier, stream, prefix, stderr)
        except (OSError, EOFError, zlib.error) as exc:  # gzip.BadGzipFile is an OSError
            stderr.write(f"citygw verify: cannot read {label}: {getattr(exc, 'strerror', None) or exc}\n")
            unreadable = True
    problems, notes = verifier.findings()
    for problem in problems:
        stderr.write(problem + "\n")
    for note in notes:
        stdout.write(note + "\n")
    stdout.write(verifier.totals.summary() + "\n")
    if unreadable:
        return 2
    return 1 if verifier.totals.bad or problems else 0


def _lines(stream: TextIO | BinaryIO) -> Iterator[str | None]:
    """The lines of ``stream``; None for a line too long to be a batch (read past in bounded
    pieces, never held whole)."""
    limit = MAX_TOKEN + 2  # a token, a CR and the LF
    while True:
        line = stream.readline(limit)
        if not line:
            return
        text = line.decode("ascii", errors="replace") if isinstance(line, bytes) else line
        if len(text) == limit and not text.endswith("\n"):
            while text and not text.endswith("\n"):
                more = stream.readline(1024 * 1024)
                text = more.decode("ascii", errors="replace") if isinstance(more, bytes) else more
            yield None
            continue
        yield text


def _verify_lines(verifier: ChainVerifier, stream: TextIO | BinaryIO, prefix: str, stderr: TextIO) -> None:
    for number, line in enumerate(_lines(stream), 1):
        if line is None:
            verifier.totals.bad += 1
            stderr.write(f"{prefix}line {number}: seq ?: larger than {MAX_TOKEN} characters\n")
            continue
        if not line.strip():
            continue
        result = verifier.verify(line)
        if result.outcome is Outcome.BAD:
            stderr.write(f"{prefix}line {number}: {result.where}: {result.reason}\n")
