"""Micro-benchmarks: sealing and opening envelopes with ``nomyo._core`` vs pure ``cryptography``.

Both sides do the same work: JSON of the payload, AES-256-GCM, RSA-OAEP-SHA256 key wrap
under a 4096-bit key, base64 and the envelope JSON (PROTOCOL.md section 3). Not part of
the default test run (testpaths is ``tests/``); run explicitly::

    .venv/bin/python -m pytest benches/test_micro.py            # needs pytest-benchmark
    .venv/bin/python -m pytest benches/test_micro.py --benchmark-only --benchmark-columns=median,ops
"""

from __future__ import annotations

import base64
import json
import os
from typing import Any

import pytest

pytest.importorskip("pytest_benchmark")
pytest.importorskip("cryptography")

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from nomyo import _core

OAEP = padding.OAEP(
    mgf=padding.MGF1(algorithm=hashes.SHA256()), algorithm=hashes.SHA256(), label=None
)
SIZES = {"small": 0, "1MiB": 1024 * 1024}


def _payload(size: int) -> dict[str, Any]:
    text = "Hello! Summarise end-to-end encryption in one sentence." if not size else "x" * size
    return {"model": "bench-model", "messages": [{"role": "user", "content": text}]}


def py_seal(obj: Any, recipient: rsa.RSAPublicKey) -> bytes:
    """The envelope with pyca/cryptography (what the reference client does)."""
    plaintext = json.dumps(obj).encode("utf-8")
    aes_key = AESGCM.generate_key(bit_length=256)
    nonce = os.urandom(12)
    sealed = AESGCM(aes_key).encrypt(nonce, plaintext, None)
    ciphertext, tag = sealed[:-16], sealed[-16:]
    envelope = {
        "version": "1.0",
        "algorithm": "hybrid-aes256-rsa4096",
        "encrypted_payload": {
            "ciphertext": base64.b64encode(ciphertext).decode("ascii"),
            "nonce": base64.b64encode(nonce).decode("ascii"),
            "tag": base64.b64encode(tag).decode("ascii"),
        },
        "encrypted_aes_key": base64.b64encode(recipient.encrypt(aes_key, OAEP)).decode("ascii"),
        "key_algorithm": "RSA-OAEP-SHA256",
        "payload_algorithm": "AES-256-GCM",
    }
    return json.dumps(envelope).encode("utf-8")


def py_open(envelope: bytes, key: rsa.RSAPrivateKey) -> Any:
    """Open an envelope with pyca/cryptography."""
    document = json.loads(envelope)
    encrypted = document["encrypted_payload"]
    aes_key = key.decrypt(base64.b64decode(document["encrypted_aes_key"]), OAEP)
    nonce = base64.b64decode(encrypted["nonce"])
    sealed = base64.b64decode(encrypted["ciphertext"]) + base64.b64decode(encrypted["tag"])
    return json.loads(AESGCM(aes_key).decrypt(nonce, sealed, None))


@pytest.fixture(scope="module")
def keys() -> tuple[_core.PrivateKey, rsa.RSAPrivateKey]:
    """One RSA-4096 key, as a ``_core`` key and as a ``cryptography`` key."""
    core_key = _core.PrivateKey.generate(4096)
    py_key = serialization.load_pem_private_key(core_key.to_pem(), password=None)
    assert isinstance(py_key, rsa.RSAPrivateKey)
    return core_key, py_key


@pytest.mark.parametrize("size", list(SIZES), ids=list(SIZES))
def test_seal_core(benchmark: Any, keys: Any, size: str) -> None:
    core_key, py_key = keys
    obj = _payload(SIZES[size])
    public = core_key.public_key()
    benchmark.group = f"seal {size}"
    envelope = benchmark(_core.seal_json, obj, public)
    assert py_open(envelope, py_key) == obj


@pytest.mark.parametrize("size", list(SIZES), ids=list(SIZES))
def test_seal_cryptography(benchmark: Any, keys: Any, size: str) -> None:
    core_key, py_key = keys
    obj = _payload(SIZES[size])
    public = py_key.public_key()
    benchmark.group = f"seal {size}"
    envelope = benchmark(py_seal, obj, public)
    assert _core.open_json(envelope, core_key)[0] == obj


@pytest.mark.parametrize("size", list(SIZES), ids=list(SIZES))
def test_open_core(benchmark: Any, keys: Any, size: str) -> None:
    core_key, py_key = keys
    obj = _payload(SIZES[size])
    envelope = py_seal(obj, py_key.public_key())
    benchmark.group = f"open {size}"
    value, _, algorithm = benchmark(_core.open_json, envelope, core_key)
    assert value == obj
    assert algorithm == "hybrid-aes256-rsa4096"


@pytest.mark.parametrize("size", list(SIZES), ids=list(SIZES))
def test_open_cryptography(benchmark: Any, keys: Any, size: str) -> None:
    core_key, py_key = keys
    obj = _payload(SIZES[size])
    envelope = _core.seal_json(obj, core_key.public_key())
    benchmark.group = f"open {size}"
    assert benchmark(py_open, envelope, py_key) == obj
