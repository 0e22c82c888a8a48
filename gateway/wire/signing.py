"""Ed25519 keys and the compact JWS that seals every batch.

The wire contract (docs/integrator.md): a compact JWS (RFC 7515) whose protected header is exactly
``{"alg":"EdDSA","kid":KID}``, signed with Ed25519 (RFC 8037), ``kid`` being the RFC 7638 JWK
thumbprint (SHA-256, base64url) of the public key. The JOSE work is joserfc's; this module owns the
key files (PKCS#8 PEM private key, mode 0600; SubjectPublicKeyInfo PEM public key next to it as
``FILE.pub``) and the chain hash that links a batch to the one before it.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import pwd
import stat
import tempfile
import warnings
from collections.abc import Iterable
from pathlib import Path

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from joserfc import jws
from joserfc.errors import SecurityWarning
from joserfc.jwk import OKPKey

from citygw.errors import KeyFileError

ALG = "EdDSA"
"""The JWS ``alg`` of the wire contract by default (RFC 8037 §3.1)."""
ALGORITHMS = ("EdDSA", "Ed25519")
"""The ``alg`` values a box may sign with (``gateway.jws_alg``) and a verifier accepts: RFC 9864 §2.2
deprecates the polymorphic ``EdDSA`` for the fully specified ``Ed25519`` (same Ed25519 signature)."""

_MAX_KEY_FILE = 64 * 1024  # a PEM key is a few hundred bytes; refuse to slurp anything big
_NO_HARD_LINKS = frozenset({errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK})


# RFC 9864 deprecates the polymorphic ``EdDSA`` in favour of ``Ed25519``; the wire contract
# predates it and every deployed verifier understands ``EdDSA``, so joserfc's warning about it is
# noise here. A filter for that one message, installed once: ``catch_warnings`` around each call
# would swap process-wide state from the buffer's thread and the event loop at once.
warnings.filterwarnings("ignore", message="EdDSA is deprecated", category=SecurityWarning)


def public_key_path(private_key: Path) -> Path:
    """Where :func:`generate_key` puts the public half of ``private_key``: ``FILE.pub``."""
    return private_key.with_name(private_key.name + ".pub")


def key_id(public_key: Ed25519PublicKey) -> str:
    """The ``kid`` of a key: its RFC 7638 JWK thumbprint (SHA-256, base64url, no padding)."""
    return OKPKey.import_key(public_key).thumbprint()


def chain_hash(jws_text: str) -> str:
    """The chain link to a batch: lowercase hex SHA-256 of its compact JWS (ASCII bytes)."""
    return hashlib.sha256(jws_text.encode("ascii")).hexdigest()


# -- key files ---------------------------------------------------------------------------------


def generate_key(out: Path, *, force: bool = False) -> str:
    """Create an Ed25519 key: ``out`` (PKCS#8 PEM, 0600) and ``out.pub`` (SPKI PEM, 0644).

    Each file appears atomically, complete, with its final mode (the private key is never readable
    by anyone else, not even briefly). An existing key is kept unless ``force``. Returns the kid.
    """
    pub = public_key_path(out)
    if not force:
        for path in (out, pub):
            if path.exists() or path.is_symlink():
                raise _exists(path)
    key = Ed25519PrivateKey.generate()
    private_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    public_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    staged: list[str] = []
    try:
        # both files are written and synced before either is put in place: a full disk leaves nothing
        private_tmp = _stage(out, private_pem, 0o600)
        staged.append(private_tmp)
        public_tmp = _stage(pub, public_pem, 0o644)
        staged.append(public_tmp)
        _place(private_tmp, out, replace=force)
        _place(public_tmp, pub, replace=force)
        _sync_dir(out.parent)
    except OSError as exc:
        raise KeyFileError(f"cannot write key {out}: {exc.strerror or exc}") from exc
    finally:
        for tmp in staged:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
    return key_id(key.public_key())


def _exists(path: Path) -> KeyFileError:
    return KeyFileError(f"{path} already exists; refusing to overwrite a key (--force replaces it)")


def _stage(target: Path, data: bytes, mode: int) -> str:
    """Write ``data`` to a new temporary file beside ``target`` (created 0600), fsynced, at ``mode``."""
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        os.fchmod(fd, mode)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        os.unlink(tmp)
        raise
    os.close(fd)
    return tmp


def _place(tmp: str, target: Path, *, replace: bool) -> None:
    """Give ``tmp`` the name ``target``: replacing it if ``replace``, else only if it does not exist."""
    if replace:
        os.replace(tmp, target)
        return
    try:
        os.link(tmp, target)  # atomic and never clobbers
    except FileExistsError:
        raise _exists(target) from None
    except OSError as exc:
        if exc.errno not in _NO_HARD_LINKS:
            raise
        if target.exists() or target.is_symlink():  # a file system without hard links (vfat)
            raise _exists(target) from None
        os.replace(tmp, target)


def _sync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError as exc:  # some file systems cannot fsync a directory; the files themselves are synced
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP):
            raise
    finally:
        os.close(fd)


def _read_key_file(path: Path, *, private: bool, owner: int | None = None) -> bytes:
    """The bytes of a key file; a private key must be a regular file nobody else can access
    (and, when ``owner`` is given, that belongs to that uid)."""
    what = "signing key" if private else "key file"
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        hint = " (create one with: citygw keygen --out FILE)" if private else ""
        raise KeyFileError(f"{what} {path} does not exist{hint}") from None
    except PermissionError:
        raise KeyFileError(f"cannot read {what} {path}: permission denied") from None
    except OSError as exc:
        raise KeyFileError(f"cannot read {what} {path}: {exc.strerror or exc}") from None
    try:
        st = os.fstat(fd)  # the file we opened, not whatever the path names a moment later
        if not stat.S_ISREG(st.st_mode):
            raise KeyFileError(f"{what} {path} is not a regular file")
        mode = stat.S_IMODE(st.st_mode)
        if private and mode & 0o077:
            how = "readable" if mode & 0o044 else "accessible"
            raise KeyFileError(f"{path} is {how} by group/others (mode {mode:04o}); run: chmod 600 {path}")
        if private and owner is not None and st.st_uid != owner:
            raise KeyFileError(
                f"{path} belongs to {_user(st.st_uid)} but citygw runs as {_user(owner)}; the signing key "
                f"must belong to the user the daemon runs as: run chown {_user(owner, bare=True)}: {path}"
            )
        with os.fdopen(fd, "rb", closefd=False) as stream:
            data = stream.read(_MAX_KEY_FILE + 1)
    except OSError as exc:
        raise KeyFileError(f"cannot read {what} {path}: {exc.strerror or exc}") from None
    finally:
        os.close(fd)
    if len(data) > _MAX_KEY_FILE:
        raise KeyFileError(f"{what} {path} is too large to be a PEM key")
    return data


def _user(uid: int, *, bare: bool = False) -> str:
    try:
        name = pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)
    return name if bare else f"{name} (uid {uid})"


def _parse_private(path: Path, data: bytes) -> Ed25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError:  # cryptography's way of saying "encrypted, and no password given"
        raise KeyFileError(
            f"{path} is an encrypted key; citygw needs an unencrypted PKCS#8 key, protected by mode 0600"
        ) from None
    except (ValueError, UnsupportedAlgorithm):
        raise KeyFileError(f"{path} is not a PEM Ed25519 private key") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyFileError(f"{path} is not an Ed25519 key (it is {_kind(key)})")
    return key


def _parse_public(path: Path, data: bytes) -> Ed25519PublicKey:
    if b"PRIVATE KEY-----" in data:
        return _parse_private(path, data).public_key()
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, UnsupportedAlgorithm):
        raise KeyFileError(f"{path} is not a PEM Ed25519 public (or private) key") from None
    if not isinstance(key, Ed25519PublicKey):
        raise KeyFileError(f"{path} is not an Ed25519 key (it is {_kind(key)})")
    return key


def _kind(key: object) -> str:
    name = type(key).__name__.lstrip("_")
    for suffix in ("PrivateKey", "PublicKey"):
        name = name.removesuffix(suffix)
    return name or "different"


def load_public_keys(paths: Iterable[Path]) -> dict[str, OKPKey]:
    """The verification keys in ``paths``, by kid.

    Each file is a SubjectPublicKeyInfo PEM (``FILE.pub``) or a PKCS#8 private key PEM, of which
    only the public half is kept (its file mode is not checked: nothing secret is used).
    """
    keys: dict[str, OKPKey] = {}
    for path in paths:
        public = _parse_public(path, _read_key_file(path, private=False))
        key = OKPKey.import_key(public)
        keys[key.thumbprint()] = key
    return keys


# -- signing -----------------------------------------------------------------------------------


class Signer:
    """Seals payloads into compact JWS with one Ed25519 key (header, key and registry built once)."""

    __slots__ = ("_header", "_key", "_registry", "kid", "public_key")

    def __init__(self, private_key: Ed25519PrivateKey, *, alg: str = ALG) -> None:
        if alg not in ALGORITHMS:
            raise ValueError(f"alg {alg!r} is not one of {', '.join(ALGORITHMS)}")
        self._key = OKPKey.import_key(private_key)
        self.public_key: Ed25519PublicKey = private_key.public_key()
        self.kid: str = self._key.thumbprint()
        self._header = {"alg": alg, "kid": self.kid}
        self._registry = jws.JWSRegistry(algorithms=[alg])

    @classmethod
    def from_file(cls, path: Path, *, check_owner: bool = True, alg: str = ALG) -> Signer:
        """Load the PKCS#8 PEM key at ``path``; it must be an Ed25519 key readable only by its owner,
        and (``check_owner``) that owner must be the user running this process.

        Raises :class:`KeyFileError` saying what is wrong and how to fix it.
        """
        owner = os.geteuid() if check_owner else None
        return cls(_parse_private(path, _read_key_file(path, private=True, owner=owner)), alg=alg)

    @property
    def key(self) -> OKPKey:
        """The key as a JWK, for documents other than batches (``citygw.config.document``)."""
        return self._key

    def sign(self, payload: bytes) -> str:
        """The compact JWS of ``payload``: header ``{"alg":"EdDSA","kid":KID}``, Ed25519 signature."""
        return jws.serialize_compact(dict(self._header), payload, self._key, registry=self._registry)

    def __repr__(self) -> str:
        return f"Signer(kid={self.kid!r})"
