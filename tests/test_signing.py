"""Key files and the compact JWS, checked with an independent JOSE library (jwcrypto).

RFC 7515 §7.1 (compact serialization), RFC 8037 §3.1 (EdDSA), RFC 7638 (thumbprint as kid).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from jwcrypto import jwk, jws

from citygw.errors import KeyFileError
from citygw.wire.signing import Signer, chain_hash, generate_key, load_public_keys, public_key_path


def b64decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def b64encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def umask() -> Iterator[None]:
    """Run with the most permissive umask: the modes must come from us, not from the umask."""
    old = os.umask(0)
    yield
    os.umask(old)


# -- keygen ------------------------------------------------------------------------------------


@pytest.mark.usefixtures("umask")
def test_keygen_writes_private_0600_and_public_0644(tmp_path: Path) -> None:
    out = tmp_path / "signing.key"
    kid = generate_key(out)

    pub = tmp_path / "signing.key.pub"
    assert public_key_path(out) == pub
    assert mode_of(out) == 0o600
    assert mode_of(pub) == 0o644
    assert out.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----\n")  # PKCS#8, unencrypted
    assert pub.read_bytes().startswith(b"-----BEGIN PUBLIC KEY-----\n")  # SubjectPublicKeyInfo
    assert sorted(p.name for p in tmp_path.iterdir()) == ["signing.key", "signing.key.pub"]  # no temp left
    assert kid == jwk.JWK.from_pem(pub.read_bytes()).thumbprint()
    assert kid == jwk.JWK.from_pem(out.read_bytes()).thumbprint()


def test_keygen_public_mode_is_0644_under_a_strict_umask(tmp_path: Path) -> None:
    old = os.umask(0o077)
    try:
        generate_key(tmp_path / "k")
    finally:
        os.umask(old)
    assert mode_of(tmp_path / "k") == 0o600
    assert mode_of(tmp_path / "k.pub") == 0o644


@pytest.mark.usefixtures("umask")
def test_keygen_private_key_appears_complete_and_0600(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whatever gets the final name is already whole and private: never briefly readable by others."""
    seen: list[tuple[str, int, bytes]] = []
    real_link, real_replace = os.link, os.replace

    def spy(real: Any) -> Any:
        def call(src: Any, dst: Any, *args: Any, **kwargs: Any) -> Any:
            seen.append((Path(dst).name, stat.S_IMODE(os.stat(src).st_mode), Path(src).read_bytes()))
            return real(src, dst, *args, **kwargs)

        return call

    monkeypatch.setattr(os, "link", spy(real_link))
    monkeypatch.setattr(os, "replace", spy(real_replace))
    out = tmp_path / "signing.key"
    generate_key(out)
    generate_key(out, force=True)
    monkeypatch.undo()

    assert [name for name, _, _ in seen] == ["signing.key", "signing.key.pub"] * 2
    for name, mode, data in seen:
        assert mode == (0o600 if name == "signing.key" else 0o644)
        assert data.rstrip().endswith(
            b"-----END PRIVATE KEY-----" if mode == 0o600 else b"-----END PUBLIC KEY-----"
        )


def test_keygen_refuses_to_overwrite_a_key(key: Path) -> None:
    before = key.read_bytes(), public_key_path(key).read_bytes()

    with pytest.raises(KeyFileError, match="already exists"):
        generate_key(key)

    assert (key.read_bytes(), public_key_path(key).read_bytes()) == before


def test_keygen_refuses_when_only_the_public_key_exists(tmp_path: Path) -> None:
    out = tmp_path / "signing.key"
    public_key_path(out).write_text("published\n")

    with pytest.raises(KeyFileError, match=r"signing\.key\.pub already exists"):
        generate_key(out)

    assert not out.exists()
    assert public_key_path(out).read_text() == "published\n"


def test_keygen_force_replaces_the_key(key: Path) -> None:
    old_kid = Signer.from_file(key).kid

    new_kid = generate_key(key, force=True)

    assert new_kid != old_kid
    assert Signer.from_file(key).kid == new_kid
    assert mode_of(key) == 0o600
    assert jwk.JWK.from_pem(public_key_path(key).read_bytes()).thumbprint() == new_kid


def test_keygen_into_a_missing_directory_is_a_key_file_error(tmp_path: Path) -> None:
    with pytest.raises(KeyFileError, match="cannot write key"):
        generate_key(tmp_path / "nowhere" / "signing.key")


# -- loading the private key ---------------------------------------------------------------------


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604])
def test_signer_refuses_a_key_readable_by_others(key: Path, mode: int) -> None:
    key.chmod(mode)

    with pytest.raises(KeyFileError) as info:
        Signer.from_file(key)

    assert str(info.value) == f"{key} is readable by group/others (mode {mode:04o}); run: chmod 600 {key}"


def test_signer_refuses_a_key_writable_by_group(key: Path) -> None:
    key.chmod(0o620)

    with pytest.raises(KeyFileError, match=r"by group/others \(mode 0620\); run: chmod 600"):
        Signer.from_file(key)


def test_signer_accepts_a_read_only_key(key: Path) -> None:
    key.chmod(0o400)
    assert Signer.from_file(key).kid == jwk.JWK.from_pem(public_key_path(key).read_bytes()).thumbprint()


def test_signer_missing_key_says_how_to_make_one(tmp_path: Path) -> None:
    with pytest.raises(KeyFileError, match=r"does not exist \(create one with: citygw keygen"):
        Signer.from_file(tmp_path / "absent.key")


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_signer_unreadable_key(key: Path) -> None:
    key.chmod(0o000)
    with pytest.raises(KeyFileError, match="permission denied"):
        Signer.from_file(key)


def private_file(tmp_path: Path, data: bytes) -> Path:
    path = tmp_path / "other.key"
    path.write_bytes(data)
    path.chmod(0o600)
    return path


def test_signer_refuses_what_is_not_a_pem_key(tmp_path: Path) -> None:
    with pytest.raises(KeyFileError, match="is not a PEM Ed25519 private key"):
        Signer.from_file(private_file(tmp_path, b"gateway: gw-1\n"))


def test_signer_refuses_a_public_key_as_private(key: Path, tmp_path: Path) -> None:
    with pytest.raises(KeyFileError, match="is not a PEM Ed25519 private key"):
        Signer.from_file(private_file(tmp_path, public_key_path(key).read_bytes()))


def test_signer_refuses_another_key_type(tmp_path: Path) -> None:
    pem = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    with pytest.raises(KeyFileError, match=r"is not an Ed25519 key \(it is EC\)"):
        Signer.from_file(private_file(tmp_path, pem))


def test_signer_refuses_an_encrypted_key(key: Path, tmp_path: Path) -> None:
    loaded = serialization.load_pem_private_key(key.read_bytes(), password=None)
    pem = loaded.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret"),
    )
    with pytest.raises(KeyFileError, match="encrypted"):
        Signer.from_file(private_file(tmp_path, pem))


def test_signer_refuses_a_directory(tmp_path: Path) -> None:
    directory = tmp_path / "keydir"
    directory.mkdir(mode=0o700)
    with pytest.raises(KeyFileError, match="not a regular file"):
        Signer.from_file(directory)


# -- the JWS, verified by jwcrypto ---------------------------------------------------------------

PAYLOAD = json.dumps(
    {
        "gateway": "gw-1",
        "seq": 1,
        "prev": None,
        "created": 1700000000.5,
        "senml": [{"bn": "gw-1/load-1/", "bt": 1700000000.0, "n": "voltage", "u": "V", "v": 230.1}],
    },
    separators=(",", ":"),
).encode()


def test_jws_verifies_with_jwcrypto(key: Path) -> None:
    token = Signer.from_file(key).sign(PAYLOAD)

    public = jwk.JWK.from_pem(public_key_path(key).read_bytes())
    obj = jws.JWS()
    obj.deserialize(token)
    obj.verify(public, alg="EdDSA")

    assert obj.payload == PAYLOAD
    assert token.count(".") == 2  # compact serialization


def test_kid_is_the_rfc7638_thumbprint(key: Path) -> None:
    signer = Signer.from_file(key)
    public = jwk.JWK.from_pem(public_key_path(key).read_bytes())

    assert signer.kid == public.thumbprint()  # SHA-256 by default
    assert public.export_public(as_dict=True)["crv"] == "Ed25519"


def test_header_is_exactly_alg_and_kid(key: Path) -> None:
    signer = Signer.from_file(key)
    header_segment = signer.sign(PAYLOAD).split(".")[0]

    raw = b64decode(header_segment)
    assert json.loads(raw) == {"alg": "EdDSA", "kid": signer.kid}
    assert raw == b'{"alg":"EdDSA","kid":"' + signer.kid.encode() + b'"}'


def test_tampered_payload_fails_in_jwcrypto(key: Path) -> None:
    token = Signer.from_file(key).sign(PAYLOAD)
    header, _, signature = token.split(".")
    forged = f"{header}.{b64encode(PAYLOAD.replace(b'230.1', b'240.1'))}.{signature}"

    public = jwk.JWK.from_pem(public_key_path(key).read_bytes())
    obj = jws.JWS()
    obj.deserialize(forged)
    with pytest.raises(jws.InvalidJWSSignature):
        obj.verify(public, alg="EdDSA")


def test_sign_warns_nothing_even_where_warnings_are_errors(key: Path) -> None:
    """joserfc's RFC 9864 warning about EdDSA is silenced for that message only, process-wide."""
    code = (
        "import sys, warnings\n"
        "from pathlib import Path\n"
        "from citygw.wire.signing import Signer\n"
        "Signer.from_file(Path(sys.argv[1])).sign(b'{}')\n"
        "warnings.warn('other warnings still fire', UserWarning)\n"
    )
    done = subprocess.run(
        [sys.executable, "-W", "error", "-c", code, str(key)], capture_output=True, text=True, check=False
    )
    assert "other warnings still fire" in done.stderr
    assert "EdDSA" not in done.stderr


def test_same_payload_same_jws(key: Path) -> None:
    """Ed25519 is deterministic (RFC 8032 §5.1.6): a resealed batch is byte-identical, so a dedupe."""
    signer = Signer.from_file(key)
    assert signer.sign(PAYLOAD) == signer.sign(PAYLOAD)


# -- public keys and the chain hash ----------------------------------------------------------------


def test_load_public_keys_by_kid_from_public_and_private_files(key: Path, tmp_path: Path) -> None:
    other = tmp_path / "next.key"
    other_kid = generate_key(other)
    kid = Signer.from_file(key).kid

    keys = load_public_keys([public_key_path(key), other])  # a private file: its public half

    assert set(keys) == {kid, other_kid}
    assert not any(k.is_private for k in keys.values())


def test_load_public_keys_rejects_a_non_key(tmp_path: Path) -> None:
    junk = tmp_path / "junk.pub"
    junk.write_text("not a key\n")
    with pytest.raises(KeyFileError, match="is not a PEM Ed25519 public"):
        load_public_keys([junk])
    with pytest.raises(KeyFileError, match="does not exist"):
        load_public_keys([tmp_path / "absent.pub"])


def test_chain_hash_is_hex_sha256_of_the_ascii_jws(key: Path) -> None:
    token = Signer.from_file(key).sign(PAYLOAD)
    assert chain_hash(token) == hashlib.sha256(token.encode("ascii")).hexdigest()
    assert len(chain_hash(token)) == 64
