"""Throwaway TLS certificates for the development router (a private CA and a server cert).

Uses the ``cryptography`` package when it is installed (it is not a dependency of nomyo),
otherwise the native module (``nomyo._core.write_dev_certificates``, the code behind
``nomyo serve-dev --tls``).
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["DevCertificates", "make_test_certificates"]

_HOSTS = ("localhost",)
_IPS = ("127.0.0.1", "::1")


@dataclass(frozen=True)
class DevCertificates:
    """Paths of the generated PEM files.

    Attributes:
        ca_cert: the CA certificate; trust it in the client (``ssl.create_default_context(
            cafile=...)`` or ``SSL_CERT_FILE``).
        cert: the server certificate (for 127.0.0.1, ::1 and localhost) followed by nothing
            else; pass it as ``tls_cert``.
        key: the server's private key; pass it as ``tls_key``.
    """

    ca_cert: str
    cert: str
    key: str


def make_test_certificates(directory: str | os.PathLike[str], *, days: int = 7) -> DevCertificates:
    """Create a throwaway CA and a server certificate for 127.0.0.1/::1/localhost.

    Args:
        directory: where to write ``ca.pem``, ``server.pem`` and ``server-key.pem``.
        days: validity of both certificates.

    Returns:
        The paths of the files.

    Raises:
        OSError: a file cannot be written.
    """
    target = Path(directory)
    target.mkdir(parents=True, exist_ok=True)
    paths = DevCertificates(
        ca_cert=str(target / "ca.pem"),
        cert=str(target / "server.pem"),
        key=str(target / "server-key.pem"),
    )
    try:
        import cryptography  # noqa: F401
    except ImportError:
        from .._core import write_dev_certificates

        write_dev_certificates(paths.ca_cert, paths.cert, paths.key, days)
    else:
        _with_cryptography(paths, days)
    return paths


def _write(path: str, data: bytes, mode: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)


def _with_cryptography(paths: DevCertificates, days: int) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    start, end = now - datetime.timedelta(hours=1), now + datetime.timedelta(days=days)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "nomyo dev router CA")])
    ca_ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(x509, cert_sign=True), critical=True)
        .add_extension(ca_ski, critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    san: list[Any] = [x509.DNSName(h) for h in _HOSTS]
    san += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in _IPS]
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(x509, cert_sign=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName(san), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    _write(paths.ca_cert, ca_cert.public_bytes(pem), 0o644)
    _write(paths.cert, cert.public_bytes(pem), 0o644)
    key_pem = key.private_bytes(
        pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    _write(paths.key, key_pem, 0o600)


def _key_usage(x509: Any, *, cert_sign: bool) -> Any:
    return x509.KeyUsage(
        digital_signature=not cert_sign,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )
