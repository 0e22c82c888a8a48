"""Checking signed batches the way a platform must: key, signature, payload, SenML pack, chains.

:class:`ChainVerifier` takes compact JWS strings one at a time (the order they arrived in) and says
of each whether it is good, a harmless duplicate (delivery is at least once; (gateway, chain, seq)
is the idempotency key) or bad, and why. ``citygw verify`` (:func:`verify_main`) runs it over files.
The wire contract is docs/integrator.md (contract version 2; version 1 payloads still verify);
this module is its executable form.
"""

from __future__ import annotations

import enum
import gzip
import sys
import zlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, BinaryIO, TextIO, cast

from joserfc import jws
from joserfc.errors import JoseError
from joserfc.jwk import OKPKey

from citygw.errors import KeyFileError, VerificationError
from citygw.receiver.payloads import (
    CONTRACT_VERSION,
    GAP_REASONS,
    MAX_HEADER,
    MAX_PAYLOAD,
    MAX_SEQ,
    MAX_TOKEN,
    PayloadBatch,
    PayloadGap,
    ResolvedRecord,
    decode_pack,
    parse_item,
    parse_json,
)
from citygw.receiver.streams import Event, Reset, Streams
from citygw.wire.envelope import is_gzip
from citygw.wire.keyring import MAX_GATEWAY_ID, Keyring
from citygw.wire.signing import ALGORITHMS, chain_hash, load_public_keys

__all__ = [
    "CONTRACT_VERSION",
    "GAP_REASONS",
    "MAX_HEADER",
    "MAX_PAYLOAD",
    "MAX_SEQ",
    "MAX_TOKEN",
    "ChainVerifier",
    "ItemResult",
    "Outcome",
    "Refusal",
    "ResolvedRecord",
    "Totals",
    "decode_pack",
    "verify_main",
]


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
    :mod:`citygw.wire.keyring`) before anything else of it is read. Then the payload and pack shape
    (contract v1 or v2), then the chain: items link over seqs, whatever order they arrive in — a
    resend after a parked batch arrives late and is fine. An item is bad when its ``prev`` is not
    the hash of the item before it (or the item after it does not link to it), or when its
    (gateway, chain, seq) was seen with other content. Seqs still missing at the end, resets and
    clones are the business of :attr:`streams` (see :mod:`citygw.receiver.streams`).
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
            doc: Any = parse_json(obj.payload)
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
            item = parse_item(doc, claimed)
        except VerificationError as exc:  # signed by the gateway's key: what it says may be shown
            seq = doc.get("seq")
            seq = seq if isinstance(seq, int) and not isinstance(seq, bool) else None
            return ItemResult(Outcome.BAD, str(exc), claimed, seq, _gap_hint(doc), refusal=Refusal.MALFORMED)
        digest = chain_hash(token)
        if isinstance(item, PayloadBatch):
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

    def _link(self, result: ItemResult, item: PayloadBatch | PayloadGap, digest: str) -> ItemResult:
        links = self._links.setdefault((item.gateway, item.chain), _Links())
        if isinstance(item, PayloadBatch):
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
            readings=len(item.readings) if isinstance(item, PayloadBatch) else item.readings,
            gap_reason=item.reason if isinstance(item, PayloadGap) else None,
            reset=item.reset if isinstance(item, PayloadBatch) else None,
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
