"""TLS to the broker is verified by default: a real mosquitto with a certificate from a test CA."""

from __future__ import annotations

import datetime
import ipaddress
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from citygw.demo.broker import LocalBroker

from .support import Daemon, write_config


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def make_pki(directory: Path) -> tuple[Path, Path, Path]:
    """A CA and a server certificate for 127.0.0.1 / localhost, as PEM files."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(_name("citygw test CA"))
        .issuer_name(_name("citygw test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name("localhost"))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    ca_file, cert_file, key_file = directory / "ca.pem", directory / "server.pem", directory / "server.key"
    ca_file.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(_pem_key(key))
    return ca_file, cert_file, key_file


@pytest.fixture
def tls_broker(tmp_path: Path) -> Iterator[tuple[LocalBroker, Path]]:
    work = tmp_path / "tls-broker"
    work.mkdir()
    ca_file, cert_file, key_file = make_pki(work)
    broker = LocalBroker(workdir=work, tls=(ca_file, cert_file, key_file))
    broker.start()
    yield broker, ca_file
    broker.close()


def _tls_config(tmp_path: Path, key: Path, port: int, **uplink: str) -> Path:
    config = write_config(
        tmp_path / "c.yaml",
        key=key,
        port=port,
        devices={"d1": {"bus": "gen", "rate": 200, "count": 400}},
        buffer={"batch": {"max_age": "200ms"}},
    )
    text = config.read_text().replace(f'"mqtt://127.0.0.1:{port}"', f'"mqtts://127.0.0.1:{port}"')
    for k, v in uplink.items():
        text = text.replace('"keepalive": "5s",', f'"keepalive": "5s", "{k}": "{v}",')
    config.write_text(text)
    return config


def _wait_acked(daemon: Daemon, log: Path, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if "connected to 127.0.0.1" in log.read_text():
            return True
        time.sleep(0.2)
    return False


def test_tls_with_the_platform_ca_delivers(
    tmp_path: Path,
    key: Path,
    tls_broker: tuple[LocalBroker, Path],
    daemon_factory: Callable[[Path], Daemon],
) -> None:
    broker, ca_file = tls_broker
    config = _tls_config(tmp_path, key, broker.port, ca_file=str(ca_file))
    daemon = daemon_factory(config)
    daemon.start()
    assert _wait_acked(daemon, tmp_path / "daemon.log", 20), (tmp_path / "daemon.log").read_text()
    assert daemon.terminate() == 0


def test_tls_refuses_a_broker_it_cannot_verify(
    tmp_path: Path,
    key: Path,
    tls_broker: tuple[LocalBroker, Path],
    daemon_factory: Callable[[Path], Daemon],
) -> None:
    """No ca_file: the system's CAs are used, and they do not vouch for this broker."""
    broker, _ = tls_broker
    config = _tls_config(tmp_path, key, broker.port)
    daemon = daemon_factory(config)
    daemon.start()
    assert not _wait_acked(daemon, tmp_path / "daemon.log", 4)
    log = (tmp_path / "daemon.log").read_text()
    assert "CERTIFICATE_VERIFY_FAILED" in log or "certificate verify failed" in log, log
    assert log.count("certificate verify failed") <= 1, "a repeated error is logged once"
    assert daemon.alive()
    assert daemon.terminate() == 0
