"""ChainVerifier and ``citygw verify``: signature, payload shape, SenML pack (RFC 8428), hash chain."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path
from typing import Any

import pytest
from jwcrypto import jwk, jws

from citygw.errors import VerificationError
from citygw.receiver.verify import ChainVerifier, ItemResult, Outcome, decode_pack, verify_main
from citygw.wire.signing import Signer, chain_hash, generate_key, load_public_keys, public_key_path

GW = "gw-1"
T0 = 1700000000.0


def pack(seq: int, count: int = 3) -> list[dict[str, Any]]:
    """A small valid pack: ``count`` voltage readings one second apart, values tied to ``seq``."""
    records: list[dict[str, Any]] = [
        {"bn": f"{GW}/load-1/", "bt": T0 + seq * 10, "n": "voltage", "u": "V", "v": 230.0 + seq}
    ]
    records += [{"n": "voltage", "u": "V", "v": 230.0 + seq + i / 10, "t": float(i)} for i in range(1, count)]
    return records


def batch_payload(seq: int, prev: str | None, senml: Any = None, **extra: Any) -> bytes:
    body = {"gateway": GW, "seq": seq, "prev": prev, "created": T0 + seq * 10 + 5.5}
    body["senml"] = pack(seq) if senml is None else senml
    body.update(extra)
    return json.dumps(body, separators=(",", ":")).encode()


def gap_payload(first: int, last_seq: int, prev: str | None, last: str, readings: int = 6) -> bytes:
    body = {
        "gateway": GW,
        "gap": {
            "from": first,
            "to": last_seq,
            "batches": last_seq - first + 1,
            "readings": readings,
            "reason": "max_disk",
        },
        "prev": prev,
        "last": last,
        "created": T0 + 99.0,
    }
    return json.dumps(body, separators=(",", ":")).encode()


def chain(signer: Signer, n: int, start: int = 1, prev: str | None = None) -> list[str]:
    """Batches ``start .. start+n-1``, each linked to the one before."""
    tokens = []
    for seq in range(start, start + n):
        token = signer.sign(batch_payload(seq, prev))
        tokens.append(token)
        prev = chain_hash(token)
    return tokens


@pytest.fixture
def signer(key: Path) -> Signer:
    return Signer.from_file(key)


@pytest.fixture
def verifier(key: Path) -> ChainVerifier:
    return ChainVerifier(load_public_keys([public_key_path(key)]))


def run(verifier: ChainVerifier, tokens: list[str]) -> list[ItemResult]:
    return [verifier.verify(t) for t in tokens]


def outcomes(results: list[ItemResult]) -> list[str]:
    return [r.outcome.value for r in results]


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


# -- a good chain ------------------------------------------------------------------------------


def test_a_chain_of_five_verifies(verifier: ChainVerifier, signer: Signer) -> None:
    results = run(verifier, chain(signer, 5))

    assert outcomes(results) == ["ok"] * 5
    assert [(r.gateway, r.seq, r.readings) for r in results] == [(GW, s, 3) for s in range(1, 6)]
    assert verifier.totals.batches == 5
    assert verifier.totals.readings == 15
    assert verifier.totals.bad == verifier.totals.duplicates == 0
    assert verifier.totals.summary() == "verified 5 batches (15 readings), 0 duplicates, 0 bad"


def test_a_file_may_start_mid_chain(verifier: ChainVerifier, signer: Signer) -> None:
    tokens = chain(signer, 5)
    assert outcomes(run(verifier, tokens[2:])) == ["ok"] * 3


def test_a_batch_sealed_by_jwcrypto_verifies(verifier: ChainVerifier, key: Path) -> None:
    """The contract, not our library, is what counts: another producer's JWS verifies too."""
    private = jwk.JWK.from_pem(key.read_bytes())
    obj = jws.JWS(batch_payload(1, None))
    obj.add_signature(private, alg="EdDSA", protected={"alg": "EdDSA", "kid": private.thumbprint()})

    assert verifier.verify(obj.serialize(compact=True)).ok


def test_gateways_have_separate_chains(verifier: ChainVerifier, signer: Signer) -> None:
    other = signer.sign(json.dumps({**json.loads(batch_payload(1, None)), "gateway": "gw-2"}).encode())
    tokens = chain(signer, 2)

    assert outcomes(run(verifier, [tokens[0], other, tokens[1]])) == ["ok"] * 3


# -- broken chains -----------------------------------------------------------------------------


def test_a_missing_batch_is_reported_once_at_the_end(verifier: ChainVerifier, signer: Signer) -> None:
    tokens = chain(signer, 5)

    results = run(verifier, tokens[:2] + tokens[3:])

    assert outcomes(results) == ["ok"] * 4  # seq 3 may still come: only the end can tell
    assert verifier.findings() == (["gateway gw-1: seq 3 missing"], [])


def test_a_late_batch_fills_its_hole(verifier: ChainVerifier, signer: Signer) -> None:
    """Issue 17 item 7: a batch parked (422) and resent with `citygw resend` arrives after the ones
    behind it; the chain is checked over seqs, not over arrival order."""
    t = chain(signer, 5)

    results = run(verifier, [t[0], t[1], t[3], t[4], t[2]])

    assert outcomes(results) == ["ok"] * 5
    assert verifier.findings() == ([], [])


def test_a_late_batch_that_does_not_link_to_the_one_after_is_bad(
    verifier: ChainVerifier, signer: Signer
) -> None:
    t = chain(signer, 4)
    other = signer.sign(batch_payload(3, chain_hash(t[1]), senml=pack(3, count=1)))  # not the real seq 3

    results = run(verifier, [t[0], t[1], t[3], other])

    assert outcomes(results) == ["ok", "ok", "ok", "bad"]
    assert results[3].reason == "the item after (seq 4) does not link to this one"


def test_a_wrong_prev_is_reported(verifier: ChainVerifier, signer: Signer) -> None:
    t = chain(signer, 2)
    forged = signer.sign(batch_payload(3, "0" * 64))

    results = run(verifier, [*t, forged])

    assert outcomes(results) == ["ok", "ok", "bad"]
    assert results[2].reason == "prev is not the hash of the item before (seq 2)"


def test_same_seq_with_other_content_is_an_error(verifier: ChainVerifier, signer: Signer) -> None:
    t = chain(signer, 2)
    other = signer.sign(batch_payload(2, chain_hash(t[0]), senml=pack(2, count=1)))

    results = run(verifier, [*t, other])

    assert outcomes(results) == ["ok", "ok", "bad"]
    assert results[2].reason == "seq 2 was already received with different content"


def test_a_duplicate_is_counted_not_an_error(verifier: ChainVerifier, signer: Signer) -> None:
    t = chain(signer, 3)

    results = run(verifier, [t[0], t[1], t[1], t[2], t[0]])

    assert outcomes(results) == ["ok", "ok", "duplicate", "ok", "duplicate"]
    assert (results[2].gateway, results[2].seq) == (GW, 2)
    assert verifier.totals.duplicates == 2
    assert verifier.totals.bad == 0
    assert verifier.totals.batches == 3


# -- gap records -------------------------------------------------------------------------------


def test_a_gap_record_bridges_dropped_batches(verifier: ChainVerifier, signer: Signer) -> None:
    t = chain(signer, 5)
    gap = signer.sign(gap_payload(3, 4, prev=chain_hash(t[1]), last=chain_hash(t[3])))

    results = run(verifier, [t[0], t[1], gap, t[4]])

    assert outcomes(results) == ["ok"] * 4
    assert (results[2].seq, results[2].gap, results[2].readings) == (None, (3, 4), 0)
    assert verifier.totals.gaps == 1
    assert verifier.totals.dropped_batches == 2
    assert verifier.totals.summary() == (
        "verified 3 batches (9 readings), 0 duplicates, 0 bad, "
        "1 gap records (2 batches, 6 readings dropped on the box)"
    )


def test_a_resent_gap_record_is_a_duplicate(verifier: ChainVerifier, signer: Signer) -> None:
    t = chain(signer, 5)
    gap = signer.sign(gap_payload(3, 4, prev=chain_hash(t[1]), last=chain_hash(t[3])))

    assert outcomes(run(verifier, [t[0], t[1], gap, gap, t[4]])) == ["ok", "ok", "ok", "duplicate", "ok"]


def test_a_gap_record_with_the_wrong_prev_is_reported(verifier: ChainVerifier, signer: Signer) -> None:
    t = chain(signer, 5)
    gap = signer.sign(gap_payload(3, 4, prev=chain_hash(t[0]), last=chain_hash(t[3])))

    results = run(verifier, [t[0], t[1], gap, t[4]])

    assert outcomes(results) == ["ok", "ok", "bad", "ok"]
    assert results[2].where == "gap 3..4"
    assert results[2].reason == "prev is not the hash of the item before (seq 2)"


def test_a_batch_after_a_gap_must_link_to_its_last(verifier: ChainVerifier, signer: Signer) -> None:
    t = chain(signer, 5)
    gap = signer.sign(gap_payload(3, 4, prev=chain_hash(t[1]), last="f" * 64))

    assert outcomes(run(verifier, [t[0], t[1], gap, t[4]])) == ["ok", "ok", "ok", "bad"]


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"batches": 3}, "gap.batches is 3 but 3..4 holds 2"),
        ({"reason": "full"}, "gap.reason: 'full' is not one of corrupt, max_age, max_disk"),
        ({"to": 2}, "gap.to: 2 is below 3"),
    ],
)
def test_malformed_gap_records(
    verifier: ChainVerifier, signer: Signer, change: dict[str, Any], reason: str
) -> None:
    body = json.loads(gap_payload(3, 4, prev="a" * 64, last="b" * 64))
    body["gap"].update(change)

    result = verifier.verify(signer.sign(json.dumps(body).encode()))

    assert (result.outcome, result.reason) == (Outcome.BAD, reason)


# -- signatures and headers ----------------------------------------------------------------------


def test_a_tampered_signature_is_bad(verifier: ChainVerifier, signer: Signer) -> None:
    token = chain(signer, 1)[0]
    header, payload, signature = token.split(".")
    middle = len(signature) // 2
    flipped = signature[:middle] + ("A" if signature[middle] != "A" else "B") + signature[middle + 1 :]

    result = verifier.verify(f"{header}.{payload}.{flipped}")

    # nothing of a payload whose signature failed is read, not even its seq
    assert (result.outcome, result.reason, result.seq) == (Outcome.BAD, "bad signature", None)


def test_a_tampered_payload_is_bad(verifier: ChainVerifier, signer: Signer) -> None:
    header, _, signature = chain(signer, 1)[0].split(".")
    forged = b64(batch_payload(1, None, senml=pack(1, count=2)))

    assert verifier.verify(f"{header}.{forged}.{signature}").reason == "bad signature"


def test_an_unknown_kid_is_bad(verifier: ChainVerifier, tmp_path: Path) -> None:
    stranger = tmp_path / "stranger.key"
    kid = generate_key(stranger)

    result = verifier.verify(Signer.from_file(stranger).sign(batch_payload(1, None)))

    assert (result.outcome, result.reason) == (Outcome.BAD, f"unknown kid {kid}")


def test_key_rotation_both_kids_verify(tmp_path: Path, key: Path, signer: Signer) -> None:
    new = tmp_path / "new.key"
    generate_key(new)
    verifier = ChainVerifier(load_public_keys([public_key_path(key), public_key_path(new)]))
    first = signer.sign(batch_payload(1, None))
    second = Signer.from_file(new).sign(batch_payload(2, chain_hash(first)))

    assert outcomes(run(verifier, [first, second])) == ["ok", "ok"]


@pytest.mark.parametrize(
    ("protected", "reason"),
    [
        ({"alg": "EdDSA", "kid": "KID", "typ": "JOSE"}, "unexpected protected header parameter(s) typ"),
        ({"alg": "EdDSA"}, "no kid in the protected header"),
    ],
)
def test_the_header_must_be_exactly_alg_and_kid(
    verifier: ChainVerifier, key: Path, protected: dict[str, str], reason: str
) -> None:
    private = jwk.JWK.from_pem(key.read_bytes())
    if "kid" in protected:
        protected["kid"] = private.thumbprint()
    obj = jws.JWS(batch_payload(1, None))
    obj.add_signature(private, alg="EdDSA", protected=protected)

    result = verifier.verify(obj.serialize(compact=True))

    assert (result.outcome, result.reason) == (Outcome.BAD, reason)


def test_another_alg_is_refused(verifier: ChainVerifier, signer: Signer) -> None:
    """No algorithm confusion: an HMAC 'signed' with the public key's kid is not accepted."""
    secret = jwk.JWK(kty="oct", k=b64(b"k" * 32))
    obj = jws.JWS(batch_payload(1, None))
    obj.add_signature(secret, alg="HS256", protected={"alg": "HS256", "kid": signer.kid})

    assert verifier.verify(obj.serialize(compact=True)).reason == "alg 'HS256' is not EdDSA or Ed25519"


@pytest.mark.parametrize("junk", ["", "not a jws", "a.b", "é.é.é"])
def test_what_is_not_a_compact_jws(verifier: ChainVerifier, junk: str) -> None:
    result = verifier.verify(junk)
    assert result.outcome is Outcome.BAD
    assert result.reason.startswith("not a compact JWS")


# -- payload shape and SenML ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("senml", "reason"),
    [
        (
            [{"bn": "gw-1/load-1/", "bt": T0, "n": "voltage", "v": 1.0, "vs": "x"}],
            "senml[0]: needs exactly one",
        ),
        (
            [{"bn": "gw-1/load-1/", "bt": T0, "n": "voltage"}],
            "senml[0]: needs exactly one of v, vb, vs (has none)",
        ),
        ([{"bn": "gw 1/", "bt": T0, "n": "voltage", "v": 1}], "senml[0]: name 'gw 1/voltage' is not a valid"),
        (
            [{"bn": "/gw-1/", "bt": T0, "n": "voltage", "v": 1}],
            "senml[0]: name '/gw-1/voltage' is not a valid",
        ),
        ([{"bt": T0, "n": "volt\u00e4ge", "v": 1}], "senml[0]: name 'volt\u00e4ge' is not a valid"),
        (
            [{"bn": "gw-1/a/", "bt": T0, "n": "v", "v": 1, "t": 5}, {"n": "v", "v": 2, "t": 4}],
            "senml[1]: time 1700000004.0 goes back",
        ),
        ([], "senml: empty pack"),
        ({"n": "x", "v": 1}, "senml: not a JSON array"),
        ([{"bt": T0, "n": "x", "v": "1"}], "senml[0].v: not a number"),
        ([{"bt": T0, "n": "x", "v": True}], "senml[0].v: not a number"),
        ([{"bt": T0, "n": "x", "vb": 1}], "senml[0].vb: not a boolean"),
        ([{"bt": T0, "n": "x", "vs": 1}], "senml[0].vs: not a string"),
        ([{"bt": "now", "n": "x", "v": 1}], "senml[0].bt: not a number"),
        ([{"bt": T0, "n": "x", "v": 1, "ut": 60}], "senml[0]: unknown field(s) ut"),
        ([{"bt": T0, "n": "x", "v": 1, "flags": ["partial"]}], "senml[0].flags: not flag names"),
        ([{"bver": "26", "bt": T0, "n": "x", "v": 1}], "senml[0].bver: not a SenML version"),
        (
            [{"bt": T0, "n": "x", "v": 1}, {"bver": 26, "n": "y", "v": 1}],
            "senml[1].bver: not a SenML version",
        ),
        (["x"], "senml[0]: not a JSON object"),
    ],
)
def test_malformed_packs_are_bad(verifier: ChainVerifier, signer: Signer, senml: Any, reason: str) -> None:
    result = verifier.verify(signer.sign(batch_payload(1, None, senml=senml)))

    assert result.outcome is Outcome.BAD
    assert result.reason.startswith(reason), result.reason
    assert result.seq == 1


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (batch_payload(1, "a" * 64), "prev must be null when seq is 1"),
        (batch_payload(2, None), "prev is null but seq is 2"),
        (batch_payload(2, "A" * 64), "prev: not 64 lowercase hex digits"),
        (batch_payload(0, None), "seq: 0 is below 1"),
        (batch_payload(1, None, extra="x"), "payload: unknown field(s) extra"),
        (batch_payload(1, None, created="yesterday"), "created: not a number"),
        (b'{"gateway":"gw-1","seq":1,"prev":null,"created":NaN,"senml":[]}', "payload: NaN is not JSON"),
        (
            b'{"gateway":"gw-1","seq":1,"seq":2,"prev":null,"created":1,"senml":[]}',
            "payload: duplicate key 'seq'",
        ),
        (b"[1, 2]", "payload is not a JSON object"),
        (b"\xff\xfe", "payload is not UTF-8"),
        (b'{"seq":1}', "gateway: missing"),
        (
            gap_payload(3, 4, "a" * 64, "b" * 64).replace(b'"prev"', b'"seq":3,"prev"'),
            "a gap record has no seq",
        ),
    ],
)
def test_malformed_payloads_are_bad(
    verifier: ChainVerifier, signer: Signer, payload: bytes, reason: str
) -> None:
    result = verifier.verify(signer.sign(payload))

    assert result.outcome is Outcome.BAD
    assert result.reason.startswith(reason), result.reason


def test_decode_pack_resolves_base_name_and_time() -> None:
    senml = [
        {"bn": "gw-1/load-1/", "bt": 1700000000.0, "n": "voltage", "u": "V", "v": 230.1},
        {"n": "current", "u": "A", "v": 1, "t": 0.5},
        {"bn": "gw-1/door-1/", "n": "open", "vb": True, "t": 1, "flags": "clock-unsynced"},
        {"n": "state", "vs": "ok", "t": 1},
        {"bt": 1700000010, "n": "count", "v": 7},
    ]

    assert decode_pack(senml) == [
        ("gw-1/load-1/voltage", 230.1, "V", 1700000000.0),
        ("gw-1/load-1/current", 1, "A", 1700000000.5),
        ("gw-1/door-1/open", True, "", 1700000001.0),
        ("gw-1/door-1/state", "ok", "", 1700000001.0),
        ("gw-1/door-1/count", 7, "", 1700000010.0),
    ]


def test_decode_pack_raises_verification_error() -> None:
    with pytest.raises(VerificationError, match="empty pack"):
        decode_pack([])


def test_large_batches_verify(verifier: ChainVerifier, signer: Signer) -> None:
    """A 256 KiB batch (the buffer's default cap) is above joserfc's default payload limit."""
    token = signer.sign(batch_payload(1, None, senml=pack(1, count=4000)))
    assert len(token) > 200_000

    assert verifier.verify(token).ok


# -- citygw verify -------------------------------------------------------------------------------


def write_lines(path: Path, tokens: list[str]) -> Path:
    path.write_text("".join(f"{t}\n" for t in tokens))
    return path


def test_verify_main_good_file(
    key: Path, signer: Signer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    batches = write_lines(tmp_path / "batches.jws", chain(signer, 5))

    assert verify_main([public_key_path(key)], [batches]) == 0

    out, err = capsys.readouterr()
    assert out == "verified 5 batches (15 readings), 0 duplicates, 0 bad\n"
    assert err == ""


def test_verify_main_reports_bad_lines(
    key: Path, signer: Signer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    t = chain(signer, 5)
    header, payload, signature = t[2].split(".")
    tampered = f"{header}.{payload}.{signature[:10]}{'A' if signature[10] != 'A' else 'B'}{signature[11:]}"
    batches = tmp_path / "batches.jws"
    batches.write_text(f"{t[0]}\n{t[1]}\n\n{tampered}\n{t[1]}\n{t[3]}\n{t[4]}\n")

    assert verify_main([public_key_path(key)], [batches]) == 1

    out, err = capsys.readouterr()
    assert err.splitlines() == ["line 4: seq ?: bad signature", "gateway gw-1: seq 3 missing"]
    assert out == "verified 4 batches (12 readings), 1 duplicates, 1 bad\n"


def test_verify_main_reads_stdin_and_several_files(
    key: Path, signer: Signer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    t = chain(signer, 4)
    first = write_lines(tmp_path / "one.jws", t[:2])

    code = verify_main([key], [first, "-"], stdin=io.StringIO(f"{t[3]}\n"))

    out, err = capsys.readouterr()
    assert code == 1
    assert err == "gateway gw-1: seq 3 missing\n"
    assert out == "verified 3 batches (9 readings), 0 duplicates, 0 bad\n"


def test_verify_main_no_key_is_exit_2(
    tmp_path: Path, signer: Signer, capsys: pytest.CaptureFixture[str]
) -> None:
    batches = write_lines(tmp_path / "batches.jws", chain(signer, 1))

    assert verify_main([tmp_path / "absent.pub"], [batches]) == 2

    out, err = capsys.readouterr()
    assert out == ""
    assert "absent.pub does not exist" in err
    assert "no public key could be loaded" in err


def test_verify_main_unreadable_input_is_exit_2(
    key: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert verify_main([public_key_path(key)], [tmp_path / "absent.jws"]) == 2

    out, err = capsys.readouterr()
    assert "cannot read" in err
    assert out == "verified 0 batches (0 readings), 0 duplicates, 0 bad\n"


def test_verify_main_unknown_kid_is_exit_1(
    tmp_path: Path, key: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    stranger = tmp_path / "stranger.key"
    generate_key(stranger)
    batches = write_lines(tmp_path / "batches.jws", chain(Signer.from_file(stranger), 2))

    assert verify_main([public_key_path(key)], [batches]) == 1

    _, err = capsys.readouterr()
    assert err.splitlines()[0].startswith("line 1: seq ?: unknown kid ")
