"""RFC 9864: ``alg`` ``EdDSA`` (RFC 8037, the default) or ``Ed25519`` (the fully specified name).

A box signs with one of them (``gateway.jws_alg``); ``citygw verify`` and ``citygw receive``
accept both, so a platform can switch its boxes one by one. Other JOSE libraries verify the
batches: jwcrypto and joserfc with either name (docs/integrator.md lists which libraries accept
which name).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from joserfc import jws as rfc_jws
from joserfc.jwk import OKPKey
from jwcrypto import jwk, jws

from citygw.config import load_config
from citygw.demo.broker import LocalBroker
from citygw.errors import ConfigError
from citygw.reading import Record
from citygw.receiver.verify import ChainVerifier, Outcome
from citygw.wire.senml import encode_payload
from citygw.wire.signing import Signer, chain_hash, load_public_keys, public_key_path

from .support import Collector, Daemon, b64decode, write_config

T0 = 1_790_000_000.0
CHAIN = "Q2l0eWd3VGVzdENoYWluMQ"  # a buffer\'s chain id (22 base64url characters)


def _header(token: str) -> dict[str, str]:
    header: dict[str, str] = json.loads(b64decode(token.split(".")[0]))
    return header


@pytest.mark.parametrize("alg", ["EdDSA", "Ed25519"])
def test_both_names_sign_and_other_libraries_verify_them(key: Path, alg: str) -> None:
    signer = Signer.from_file(key, alg=alg)
    payload = encode_payload(
        "gw-1", 1, None, T0, [Record("d", "temperature", 21.5, "Cel", T0, 0)], chain=CHAIN
    )
    token = signer.sign(payload)
    assert _header(token) == {"alg": alg, "kid": signer.kid}
    public = jwk.JWK.from_pem(public_key_path(key).read_bytes())
    obj = jws.JWS()
    obj.deserialize(token)
    obj.verify(public, alg=alg)  # jwcrypto 1.6 knows both names
    assert obj.payload == payload
    okp = OKPKey.import_key(public_key_path(key).read_bytes())
    assert rfc_jws.deserialize_compact(token, okp, algorithms=[alg]).payload == payload


def test_the_default_stays_eddsa(key: Path) -> None:
    assert _header(Signer.from_file(key).sign(b"{}"))["alg"] == "EdDSA"
    with pytest.raises(ValueError, match="alg 'ES256' is not one of EdDSA, Ed25519"):
        Signer.from_file(key, alg="ES256")


def test_verify_accepts_a_chain_that_switches_names(key: Path) -> None:
    """A box reconfigured from EdDSA to Ed25519 keeps its chain; the verifier follows."""
    verifier = ChainVerifier(load_public_keys([public_key_path(key)]))
    prev = None
    for seq, alg in enumerate(["EdDSA", "EdDSA", "Ed25519", "Ed25519"], start=1):
        token = Signer.from_file(key, alg=alg).sign(
            encode_payload(
                "gw-1", seq, prev, T0, [Record("d", "temperature", 21.5, "Cel", T0 + seq, 0)], chain=CHAIN
            )
        )
        result = verifier.verify(token)
        assert result.outcome is Outcome.OK, (seq, alg, result.reason)
        prev = chain_hash(token)


def test_jws_alg_is_a_gateway_setting(tmp_path: Path, key: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(f"gateway:\n  id: gw-1\n  key_file: {key}\n  jws_alg: Ed25519\n")
    assert load_config(path, environ={}).gateway.jws_alg == "Ed25519"
    path.write_text(f"gateway:\n  id: gw-1\n  key_file: {key}\n  jws_alg: ES256\n")
    with pytest.raises(ConfigError) as raised:
        load_config(path, environ={})
    assert "gateway.jws_alg" in str(raised.value) and "'EdDSA' or 'Ed25519'" in str(raised.value)


def test_a_daemon_set_to_ed25519_sends_batches_jwcrypto_verifies(
    tmp_path: Path,
    key: Path,
    broker: LocalBroker,
    collector: Collector,
    daemon_factory: Callable[[Path], Daemon],
) -> None:
    config = write_config(
        tmp_path / "c.yaml",
        key=key,
        port=broker.port,
        devices={"d1": {"bus": "gen", "rate": 100, "count": 20, "quantities": ["temperature"]}},
        buffer={"batch": {"max_age": "100ms"}},
    )
    data = json.loads(config.read_text())
    data["gateway"]["jws_alg"] = "Ed25519"
    config.write_text(json.dumps(data))
    daemon = daemon_factory(config)
    daemon.start()
    collector.wait(lambda c: c.readings() >= 20, 30, "20 readings")
    assert daemon.terminate() == 0
    public = jwk.JWK.from_pem(public_key_path(key).read_bytes())
    for token in collector.snapshot():
        assert _header(token)["alg"] == "Ed25519"
        obj = jws.JWS()
        obj.deserialize(token)
        obj.verify(public, alg="Ed25519")
