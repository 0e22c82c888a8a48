"""Checking signed batches the way a platform must: signature, payload, SenML pack, hash chain.

:class:`ChainVerifier` takes compact JWS strings one at a time (the order they arrived in) and says
of each whether it is good, a harmless duplicate (delivery is at least once; (gateway, seq) is the
idempotency key) or bad, and why. ``citygw verify`` (:func:`verify_main`) runs it over files.
The wire contract is docs/integrator.md; this module is its executable form.
"""

from __future__ import annotations

import enum
import json
import math
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn, TextIO

from joserfc import jws
from joserfc.errors import JoseError
from joserfc.jwk import OKPKey

from gateway.errors import KeyFileError, VerificationError
from gateway.reading import Value
from gateway.signing import ALGORITHMS, chain_hash, load_public_keys

Decoded = tuple[str, Value, str, float]
"""One resolved SenML record: name (bn + n), value, unit (``""`` if none), time (UTC epoch s)."""

GAP_REASONS = frozenset({"max_disk", "max_age", "corrupt"})
MAX_PAYLOAD = 16 * 1024 * 1024  # base64url characters; joserfc's default (128 kB) is below our batches

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9:./_-]*")  # RFC 8428 §4.5.1
_HEX64 = re.compile(r"[0-9a-f]{64}")
_RECORD_FIELDS = frozenset({"bver", "bn", "bt", "n", "u", "v", "vb", "vs", "t", "flags", "window"})
_VALUE_FIELDS = ("v", "vb", "vs")
# v 2 (chain, reset): read here, checked by the receiver's side of the contract
_BATCH_FIELDS = frozenset({"v", "gateway", "chain", "seq", "prev", "created", "reset", "senml"})
_GAP_FIELDS = frozenset({"v", "gateway", "chain", "gap", "prev", "last", "created"})
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
    seq: int
    prev: str | None
    readings: list[Decoded]


@dataclass(frozen=True, slots=True)
class _Gap:
    gateway: str
    first: int
    last_seq: int
    batches: int
    readings: int
    prev: str | None
    last: str


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
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError:
        raise VerificationError("payload is not UTF-8") from None
    try:
        return json.loads(text, object_pairs_hook=_no_duplicate_keys, parse_constant=_no_constant)
    except ValueError as exc:
        raise VerificationError(f"payload is not JSON ({exc})") from None


def _hint(doc: object) -> tuple[str | None, int | None]:
    """Gateway and seq as the payload claims them, for reporting only (may be unverified)."""
    if not isinstance(doc, dict):
        return None, None
    gateway, seq = doc.get("gateway"), doc.get("seq")
    return (
        gateway if isinstance(gateway, str) else None,
        seq if isinstance(seq, int) and not isinstance(seq, bool) else None,
    )


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


def _parse_item(doc: object) -> _Batch | _Gap:
    if not isinstance(doc, dict):
        raise VerificationError("payload is not a JSON object")
    gateway = doc.get("gateway")
    if not isinstance(gateway, str) or not gateway:
        raise VerificationError("gateway: missing or not a non-empty string")
    if "gap" in doc:
        return _parse_gap(doc, gateway)
    unknown = doc.keys() - _BATCH_FIELDS
    if unknown:
        raise VerificationError(f"payload: unknown field(s) {', '.join(sorted(unknown))}")
    for name in ("seq", "created", "senml"):
        if name not in doc:
            raise VerificationError(f"payload: {name} is missing")
    seq = _integer(doc["seq"], "seq", minimum=1)
    prev = _prev(doc, seq, "seq")
    _number(doc["created"], "created")
    return _Batch(gateway, seq, prev, decode_pack(doc["senml"]))


def _parse_gap(doc: dict[str, Any], gateway: str) -> _Gap:
    if "seq" in doc:
        raise VerificationError("a gap record has no seq")
    unknown = doc.keys() - _GAP_FIELDS
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
    first = _integer(gap["from"], "gap.from", minimum=1)
    last_seq = _integer(gap["to"], "gap.to", minimum=first)
    batches = _integer(gap["batches"], "gap.batches", minimum=1)
    if batches != last_seq - first + 1:
        raise VerificationError(
            f"gap.batches is {batches} but {first}..{last_seq} holds {last_seq - first + 1}"
        )
    readings = _integer(gap["readings"], "gap.readings", minimum=0)
    if gap["reason"] not in GAP_REASONS:
        raise VerificationError(
            f"gap.reason: {gap['reason']!r} is not one of {', '.join(sorted(GAP_REASONS))}"
        )
    prev = _prev(doc, first, "gap.from")
    last = doc["last"]
    if not isinstance(last, str) or not _HEX64.fullmatch(last):
        raise VerificationError("last: not 64 lowercase hex digits")
    _number(doc["created"], "created")
    return _Gap(gateway, first, last_seq, batches, readings, prev, last)


# -- results -----------------------------------------------------------------------------------


class Outcome(enum.Enum):
    """What became of one item."""

    OK = "ok"
    DUPLICATE = "duplicate"  # the same JWS again for a (gateway, seq) already verified: harmless
    BAD = "bad"


@dataclass(frozen=True, slots=True)
class ItemResult:
    """The verdict on one JWS.

    ``seq`` is a data batch's seq, ``gap`` a gap record's ``(from, to)``; on a bad item they are
    what the payload claims, if it could be read. ``readings`` counts the readings a data batch
    carries (0 for a gap record). ``payload`` is the decoded JSON once the signature checked out.
    """

    outcome: Outcome
    reason: str = ""
    gateway: str | None = None
    seq: int | None = None
    gap: tuple[int, int] | None = None
    readings: int = 0
    payload: dict[str, Any] | None = field(default=None, repr=False, compare=False)

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

    def summary(self) -> str:
        text = (
            f"verified {self.batches} batches ({self.readings} readings), "
            f"{self.duplicates} duplicates, {self.bad} bad"
        )
        if self.gaps:
            text += (
                f", {self.gaps} gap records ({self.dropped_batches} batches, "
                f"{self.dropped_readings} readings dropped by retention)"
            )
        return text


@dataclass(slots=True)
class _Chain:
    """What is known of one gateway's chain."""

    next_seq: int
    head: str | None  # hash the next item's prev must equal
    batches: dict[int, str] = field(default_factory=dict)  # seq -> chain hash
    gaps: dict[int, str] = field(default_factory=dict)  # gap.from -> chain hash


# -- the verifier ------------------------------------------------------------------------------


class ChainVerifier:
    """Verifies a stream of compact JWS, keeping each gateway's hash chain.

    An item is bad for a bad signature (or unknown ``kid``), a header other than exactly
    ``{"alg":"EdDSA","kid":...}`` (or ``"Ed25519"``, RFC 9864), a malformed payload or pack, or a
    broken chain: a seq that skips or goes back, a ``prev`` that is not the hash of the item
    before, the same seq with other content. A well-signed, well-formed item that breaks the
    chain still becomes the chain's head, so one lost batch is one error, not a cascade. The
    first item seen of a gateway starts its chain wherever it is (a file may begin mid-chain).
    ``history`` bounds how many seqs per gateway are remembered to recognise duplicates (None:
    all).
    """

    def __init__(self, keys: Mapping[str, OKPKey], *, history: int | None = None) -> None:
        self._keys = dict(keys)
        self._history = history
        self._chains: dict[str, _Chain] = {}
        self._registry = jws.JWSRegistry(algorithms=list(ALGORITHMS))  # RFC 8037 and RFC 9864 names
        self._registry.max_payload_length = MAX_PAYLOAD
        self.totals = Totals()

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
                assert result.payload is not None
                totals.dropped_batches += result.payload["gap"]["batches"]
                totals.dropped_readings += result.payload["gap"]["readings"]
        elif result.outcome is Outcome.DUPLICATE:
            totals.duplicates += 1
        else:
            totals.bad += 1
        return result

    def inspect(self, token: str) -> ItemResult:
        """Signature, header and payload checks only, no chain (for a receiver that keeps its own
        chain state and must accept at-least-once, out-of-order delivery); totals are not touched."""
        return self._check(token.strip(), link=False)

    def _check(self, token: str, *, link: bool = True) -> ItemResult:
        if not token.isascii():
            return ItemResult(Outcome.BAD, "not a compact JWS (non-ASCII characters)")
        try:
            obj = jws.extract_compact(token.encode("ascii"), registry=self._registry)
        except (JoseError, ValueError) as exc:
            return ItemResult(Outcome.BAD, f"not a compact JWS ({exc})")
        try:
            doc: Any = _parse_json(obj.payload)
            doc_error: VerificationError | None = None
        except VerificationError as exc:
            doc, doc_error = None, exc
        gateway, seq = _hint(doc)
        gap = _gap_hint(doc)

        def bad(reason: str) -> ItemResult:
            return ItemResult(Outcome.BAD, reason, gateway, seq, gap)

        header = obj.headers()
        if header.get("alg") not in ALGORITHMS:
            return bad(f"alg {header.get('alg')!r} is not {' or '.join(ALGORITHMS)}")
        kid = header.get("kid")
        if not isinstance(kid, str):
            return bad("no kid in the protected header")
        extra = header.keys() - {"alg", "kid"}
        if extra:
            return bad(f"unexpected protected header parameter(s) {', '.join(sorted(extra))}")
        key = self._keys.get(kid)
        if key is None:
            return bad(f"unknown kid {kid}")
        try:
            valid = jws.validate_compact(obj, key, registry=self._registry)
        except (JoseError, ValueError) as exc:
            return bad(f"bad signature ({exc})")
        if not valid:
            return bad("bad signature")
        if doc_error is not None:
            return bad(str(doc_error))
        try:
            item = _parse_item(doc)
        except VerificationError as exc:
            return bad(str(exc))
        if not link:
            if isinstance(item, _Batch):
                return ItemResult(Outcome.OK, "", item.gateway, item.seq, None, len(item.readings), doc)
            return ItemResult(Outcome.OK, "", item.gateway, None, (item.first, item.last_seq), 0, doc)
        if isinstance(item, _Batch):
            return self._link_batch(item, chain_hash(token), doc)
        return self._link_gap(item, chain_hash(token), doc)

    def _chain(self, gateway: str, first: int, prev: str | None) -> _Chain:
        chain = self._chains.get(gateway)
        if chain is None:  # the first we see of this gateway: its chain starts here
            chain = self._chains[gateway] = _Chain(next_seq=first, head=prev)
        return chain

    def _remember(self, seen: dict[int, str], key: int, digest: str) -> None:
        seen[key] = digest
        if self._history is not None and len(seen) > self._history:
            del seen[next(iter(seen))]

    def _link_batch(self, item: _Batch, digest: str, doc: dict[str, Any]) -> ItemResult:
        chain = self._chain(item.gateway, item.seq, item.prev)
        n = len(item.readings)

        def verdict(outcome: Outcome, reason: str = "") -> ItemResult:
            return ItemResult(outcome, reason, item.gateway, item.seq, None, n, doc)

        known = chain.batches.get(item.seq)
        if known == digest:
            return verdict(Outcome.DUPLICATE)
        if known is not None:
            return verdict(Outcome.BAD, f"seq {item.seq} was already received with different content")
        if item.seq < chain.next_seq:
            return verdict(Outcome.BAD, self._behind(chain, item.seq, f"seq {item.seq}"))
        problem = _link_problem(chain, item.seq, item.prev)
        self._remember(chain.batches, item.seq, digest)
        chain.next_seq, chain.head = item.seq + 1, digest
        return verdict(Outcome.BAD, problem) if problem else verdict(Outcome.OK)

    def _link_gap(self, item: _Gap, digest: str, doc: dict[str, Any]) -> ItemResult:
        chain = self._chain(item.gateway, item.first, item.prev)
        span = (item.first, item.last_seq)

        def verdict(outcome: Outcome, reason: str = "") -> ItemResult:
            return ItemResult(outcome, reason, item.gateway, None, span, 0, doc)

        known = chain.gaps.get(item.first)
        if known == digest:
            return verdict(Outcome.DUPLICATE)
        if known is not None:
            return verdict(
                Outcome.BAD, f"a gap record from seq {item.first} was already received with other content"
            )
        if item.first < chain.next_seq:
            return verdict(Outcome.BAD, self._behind(chain, item.first, f"gap {item.first}..{item.last_seq}"))
        problem = _link_problem(chain, item.first, item.prev)
        self._remember(chain.gaps, item.first, digest)
        chain.next_seq, chain.head = item.last_seq + 1, item.last
        return verdict(Outcome.BAD, problem) if problem else verdict(Outcome.OK)

    def _behind(self, chain: _Chain, seq: int, what: str) -> str:
        oldest = min(chain.batches, default=seq)
        if self._history is not None and seq < oldest:
            return f"{what} is older than the history kept (cannot tell a duplicate from a replay)"
        return f"{what} arrived out of order (the chain is already at seq {chain.next_seq - 1})"


def _link_problem(chain: _Chain, first: int, prev: str | None) -> str:
    """Why an item starting at seq ``first`` with ``prev`` does not continue ``chain`` ("" if it does)."""
    if first > chain.next_seq:
        missing = chain.next_seq if first == chain.next_seq + 1 else f"{chain.next_seq}..{first - 1}"
        return f"seq {missing} missing before seq {first}"
    if prev != chain.head:
        return f"prev is not the hash of the item before (seq {first - 1})"
    return ""


def _gap_hint(doc: object) -> tuple[int, int] | None:
    if not isinstance(doc, dict) or not isinstance(doc.get("gap"), dict):
        return None
    first, last = doc["gap"].get("from"), doc["gap"].get("to")
    if isinstance(first, int) and isinstance(last, int):
        return first, last
    return None


# -- citygw verify -----------------------------------------------------------------------------


def verify_main(
    key_files: Sequence[Path],
    inputs: Sequence[Path | str],
    *,
    stdin: TextIO | None = None,
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
) -> int:
    """``citygw verify``: check files of compact JWS (one per line; ``-`` or none: stdin).

    Each bad item is one line on stderr, ``line N: seq S: reason`` (prefixed ``FILE: `` when there
    are several inputs); a summary goes to stdout. Returns 0 if nothing was bad, 1 otherwise, 2 if
    no key could be loaded or an input could not be read.
    """
    stdin = stdin if stdin is not None else sys.stdin
    stdout = stdout if stdout is not None else sys.stdout
    stderr = stderr if stderr is not None else sys.stderr
    keys: dict[str, OKPKey] = {}
    for path in key_files:
        try:
            keys.update(load_public_keys([path]))
        except KeyFileError as exc:
            stderr.write(f"citygw verify: {exc}\n")
    if not keys:
        stderr.write("citygw verify: no public key could be loaded; nothing verified\n")
        return 2
    verifier = ChainVerifier(keys)
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
                with open(source, encoding="utf-8", errors="replace") as stream:
                    _verify_lines(verifier, stream, prefix, stderr)
        except OSError as exc:
            stderr.write(f"citygw verify: cannot read {label}: {exc.strerror or exc}\n")
            unreadable = True
    stdout.write(verifier.totals.summary() + "\n")
    if unreadable:
        return 2
    return 1 if verifier.totals.bad else 0


def _verify_lines(verifier: ChainVerifier, stream: TextIO, prefix: str, stderr: TextIO) -> None:
    for number, line in enumerate(stream, 1):
        if not line.strip():
            continue
        result = verifier.verify(line)
        if result.outcome is Outcome.BAD:
            stderr.write(f"{prefix}line {number}: {result.where}: {result.reason}\n")
