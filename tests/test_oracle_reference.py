"""The REFERENCE client (PyPI nomyo 0.2.9) against the independent OracleServer.

Installs the reference with scripts/install-reference.sh and drives it through
tests/reference_driver.py in subprocesses; the oracle itself needs only `cryptography`.
"""

from __future__ import annotations

import base64
import datetime
import http.client
import ipaddress
import json
import ssl
import urllib.parse
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from oracle_server import (
    ENVELOPE_FIELDS,
    EnvelopeAuthError,
    EnvelopeError,
    OracleServer,
    open_envelope,
    seal_envelope,
)

pytestmark = pytest.mark.reference

VALID_FROM = datetime.datetime(2000, 1, 1)  # naive datetimes are UTC to cryptography
VALID_UNTIL = datetime.datetime(2099, 1, 1)
PASSWORD = "correct horse ✓ battery"
#: The ``run_reference`` fixture of conftest.py: (exit code, JSON output) of the driver.
RunReference = Callable[..., tuple[int, dict[str, Any]]]


@pytest.fixture(scope="session")
def key_dir(run_reference: RunReference, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Unencrypted 4096-bit client keys written by the reference."""
    path = tmp_path_factory.mktemp("ref-keys")
    code, out = run_reference("gen-keys", str(path))
    assert code == 0, out
    return path


@pytest.fixture
def oracle() -> Iterator[OracleServer]:
    """A plain-HTTP oracle router with a 2048-bit key."""
    with OracleServer(key_bits=2048) as server:
        yield server


# --- key files -------------------------------------------------------------------------------


def test_driver_refuses_a_foreign_nomyo(run_reference: RunReference, tmp_path: Path) -> None:
    fake = tmp_path / "nomyo"
    fake.mkdir()
    (fake / "__init__.py").write_text('__version__ = "0.2.9"\n')
    code, out = run_reference("load-keys", str(tmp_path), env={"PYTHONPATH": str(tmp_path)})
    assert code == 4
    assert out["error"] == "DriverError"


def test_keys_without_password(run_reference: RunReference, key_dir: Path) -> None:
    code, out = run_reference("load-keys", str(key_dir))
    assert code == 0, out
    assert out["key_size"] == 4096
    assert out["public_key_pem"].strip() == (key_dir / "public_key.pem").read_text().strip()
    assert (key_dir / "private_key.pem").stat().st_mode & 0o777 == 0o600
    assert (key_dir / "public_key.pem").stat().st_mode & 0o777 == 0o644
    private = serialization.load_pem_private_key((key_dir / "private_key.pem").read_bytes(), None)
    assert isinstance(private, rsa.RSAPrivateKey)
    assert run_reference("roundtrip-with-keys", str(key_dir)) == (
        0,
        {"ok": True, "key_size": 4096},
    )


def test_keys_with_password(run_reference: RunReference, tmp_path: Path) -> None:
    env = {"KEY_PW": PASSWORD}
    code, gen = run_reference("gen-keys", str(tmp_path), "--password-env", "KEY_PW", env=env)
    assert code == 0, gen
    pem = (tmp_path / "private_key.pem").read_bytes()
    assert pem.startswith(b"-----BEGIN ENCRYPTED PRIVATE KEY-----")
    serialization.load_pem_private_key(pem, PASSWORD.encode("utf-8"))
    code, loaded = run_reference("load-keys", str(tmp_path), "--password-env", "KEY_PW", env=env)
    assert code == 0, loaded
    assert loaded["public_key_pem"].strip() == gen["public_key_pem"].strip()
    code, rt = run_reference(
        "roundtrip-with-keys", str(tmp_path), "--password-env", "KEY_PW", env=env
    )
    assert (code, rt["ok"]) == (0, True)


def test_encrypted_key_needs_the_right_password(
    run_reference: RunReference, tmp_path: Path
) -> None:
    env = {"KEY_PW": PASSWORD, "WRONG_PW": "nope"}
    assert run_reference("gen-keys", str(tmp_path), "--password-env", "KEY_PW", env=env)[0] == 0
    for extra in ([], ["--password-env", "WRONG_PW"]):
        code, out = run_reference("load-keys", str(tmp_path), *extra, env=env)
        assert code == 3
        assert out["error"] == "ValueError"
        assert out["status_code"] is None


# --- chat over HTTP --------------------------------------------------------------------------


def _chat(
    run_reference: RunReference, url: str, key_dir: Path, *extra: str
) -> tuple[int, dict[str, Any]]:
    return run_reference(
        "chat",
        url,
        "--model",
        "test-model",
        "--key-dir",
        str(key_dir),
        "--max-retries",
        "0",
        *extra,
    )


def test_reference_chats_through_the_oracle(
    run_reference: RunReference, key_dir: Path, oracle: OracleServer
) -> None:
    message = "Hello, oracle! ünïcödé + / = %"
    code, out = _chat(
        run_reference, oracle.url, key_dir, "--message", message, "--allow-http",
        "--api-key", "sk-test", "--tier", "high", "--repeat", "2",
        "--params", '{"temperature": 0.5}',
    )  # fmt: skip
    assert code == 0, out
    assert len(out["responses"]) == len(out["latencies_ms"]) == 2
    assert len(oracle.requests) == 2
    client_pem = (key_dir / "public_key.pem").read_text().strip()
    for response, recorded in zip(out["responses"], oracle.requests, strict=True):
        _check_response(response, recorded, message)
        _check_recorded(recorded, message, client_pem)
    ids = {r["headers"]["x-payload-id"] for r in oracle.requests}
    nonces = {r["envelope"]["encrypted_payload"]["nonce"] for r in oracle.requests}
    assert len(ids) == len(nonces) == 2


def _check_response(response: dict[str, Any], recorded: dict[str, Any], message: str) -> None:
    assert response["object"] == "chat.completion"
    assert response["model"] == "test-model"
    assert response["choices"][0]["message"] == {"role": "assistant", "content": message}
    meta = response["_metadata"]
    assert meta["payload_id"] == recorded["headers"]["x-payload-id"]
    assert meta["is_encrypted"] is True
    assert meta["encryption_algorithm"] == "hybrid-aes256-rsa4096"
    assert isinstance(meta["processed_at"], int)
    assert meta["security_tier"] == "high"


def _check_recorded(recorded: dict[str, Any], message: str, client_pem: str) -> None:
    assert recorded["body"] == {
        "model": "test-model",
        "messages": [{"role": "user", "content": message}],
        "temperature": 0.5,
    }
    headers = recorded["headers"]
    assert headers["authorization"] == "Bearer sk-test"
    assert headers["x-security-tier"] == "high"
    assert headers["content-type"] == "application/octet-stream"
    assert urllib.parse.unquote(headers["x-public-key"]).strip() == client_pem
    assert headers["x-public-key"] == urllib.parse.quote(client_pem)
    assert tuple(recorded["envelope"]) == ENVELOPE_FIELDS


def test_oracle_rejection_reaches_the_reference(run_reference: RunReference, key_dir: Path) -> None:
    with OracleServer(key_bits=2048, api_key="right") as server:
        code, out = _chat(
            run_reference,
            server.url,
            key_dir,
            "--message",
            "x",
            "--allow-http",
            "--api-key",
            "wrong",
        )
        assert code == 3
        assert out["error"] == "AuthenticationError"
        assert out["status_code"] == 401
        assert server.requests == []
        assert [r["status"] for r in server.rejections] == [401]


# --- chat over HTTPS -------------------------------------------------------------------------


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _make_ca() -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name("oracle test CA"))
        .issuer_name(_name("oracle test CA"))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(VALID_FROM)
        .not_valid_after(VALID_UNTIL)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(_ca_usage(), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def _ca_usage() -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True, content_commitment=False, key_encipherment=False,
        data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
        encipher_only=False, decipher_only=False,
    )  # fmt: skip


def _make_leaf(
    ca_key: ec.EllipticCurvePrivateKey, ca: x509.Certificate
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    san = [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
    ski = ca.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name("127.0.0.1"))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(VALID_FROM)
        .not_valid_after(VALID_UNTIL)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName(san), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    return key, cert


@pytest.fixture
def tls_files(tmp_path: Path) -> tuple[Path, ssl.SSLContext]:
    """A throwaway CA file and a server SSL context for 127.0.0.1 signed by it."""
    ca_key, ca = _make_ca()
    leaf_key, leaf = _make_leaf(ca_key, ca)
    ca_file = tmp_path / "ca.pem"
    ca_file.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    chain = tmp_path / "server.pem"
    chain.write_bytes(
        leaf.public_bytes(serialization.Encoding.PEM)
        + leaf_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(chain)
    return ca_file, context


def test_reference_chats_over_tls(
    run_reference: RunReference, key_dir: Path, tls_files: tuple[Path, ssl.SSLContext]
) -> None:
    ca_file, context = tls_files
    with OracleServer(key_bits=2048, ssl_context=context) as server:
        assert server.url.startswith("https://127.0.0.1:")
        code, out = _chat(run_reference, server.url, key_dir, "--message", "over tls")
        assert code == 3, out  # the throwaway CA is not trusted without --ca-file
        assert server.requests == []
        code, out = _chat(
            run_reference, server.url, key_dir, "--message", "over tls", "--ca-file", str(ca_file)
        )
        assert code == 0, out
        assert out["responses"][0]["choices"][0]["message"]["content"] == "over tls"
        assert [r["body"]["messages"][0]["content"] for r in server.requests] == ["over tls"]


# --- the oracle on its own -------------------------------------------------------------------


def test_oracle_keeps_connections_alive(oracle: OracleServer) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", int(oracle.url.rsplit(":", 1)[1]), timeout=10)
    try:
        for _ in range(2):
            conn.request("GET", "/pki/public_key")
            reply = conn.getresponse()
            body = reply.read()
            assert reply.status == 200
            assert reply.getheader("Content-Length") == str(len(body))
            assert body.decode() == oracle.public_key_pem
        conn.request("POST", "/v1/chat/secure_completion", body=b"{}", headers=_post_headers())
        reply = conn.getresponse()
        assert reply.status == 400
        assert "detail" in json.loads(reply.read())
    finally:
        conn.close()


def _post_headers() -> dict[str, str]:
    pem = "-----BEGIN PUBLIC KEY-----\nbad\n-----END PUBLIC KEY-----\n"
    return {
        "Content-Type": "application/octet-stream",
        "X-Payload-ID": "00000000-0000-4000-8000-000000000000",
        "X-Public-Key": urllib.parse.quote(pem),
    }


def test_envelope_helpers_round_trip_and_refuse_tampering() -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    sealed = seal_envelope(b'{"hi": 1}', key.public_key(), processed_at=123)
    assert open_envelope(sealed, key) == b'{"hi": 1}'
    envelope = json.loads(sealed)
    assert list(envelope) == [*ENVELOPE_FIELDS, "processed_at"]
    envelope["encrypted_payload"]["tag"] = base64.b64encode(bytes(16)).decode()
    with pytest.raises(EnvelopeAuthError):
        open_envelope(json.dumps(envelope).encode(), key)
    for field, value in (("version", "2.0"), ("algorithm", "none"), ("extra", 1)):
        broken = {**json.loads(sealed), field: value}
        with pytest.raises(EnvelopeError):
            open_envelope(json.dumps(broken).encode(), key)
    with pytest.raises(EnvelopeError):
        open_envelope(b"not json", key)
