"""Benchmark worker for the REFERENCE client (PyPI nomyo 0.2.9); see ``_workloads.py``.

Run with ``PYTHONPATH=.cache/reference-nomyo`` (scripts/install-reference.sh) and
``SSL_CERT_FILE=<CA bundle>``: the reference builds its httpx clients with default
verification, which honours SSL_CERT_FILE, so it is given the same trust store as ours.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from types import ModuleType
from typing import Any

from _workloads import MODEL, run_worker

REFERENCE_VERSION = "0.2.9"


class ReferenceAdapter:
    """nomyo 0.2.9: ``SecureChatCompletion(base_url, key_dir=)``; trust via SSL_CERT_FILE."""

    name = "reference"

    def __init__(self) -> None:
        self.nomyo: ModuleType | None = None

    def load(self) -> None:
        if self.nomyo is not None:
            return
        import nomyo

        if getattr(nomyo, "__version__", None) != REFERENCE_VERSION:
            raise RuntimeError(f"nomyo {nomyo.__version__!r} is not the reference client")
        if "reference-nomyo" not in (nomyo.__file__ or ""):
            raise RuntimeError(f"imported {nomyo.__file__}, not the isolated reference")
        self.nomyo = nomyo

    def make_client(self, spec: dict[str, Any], url: str) -> Any:
        assert self.nomyo is not None
        if os.environ.get("SSL_CERT_FILE") != spec["ca_file"]:
            raise RuntimeError("SSL_CERT_FILE must point at the benchmark's CA bundle")
        return self.nomyo.SecureChatCompletion(base_url=url, key_dir=spec.get("key_dir"))

    async def create(self, client: Any, messages: list[dict[str, Any]]) -> dict[str, Any]:
        reply: dict[str, Any] = await client.create(model=MODEL, messages=messages)
        return reply

    async def close(self, client: Any) -> None:
        """The reference opens a fresh httpx client per request: nothing to close."""

    def key_class(self) -> type:
        assert self.nomyo is not None
        cls: type = self.nomyo.SecureCompletionClient.SecureCompletionClient
        return cls

    def gen_keys(self, key_dir: str) -> None:
        assert self.nomyo is not None
        client = self.nomyo.SecureCompletionClient.SecureCompletionClient()
        client.generate_keys(save_to_file=True, key_dir=key_dir)

    def rsa_op(self, key_dir: str) -> Callable[[], object]:
        """pyca/cryptography RSA-4096 OAEP-SHA256 decrypt of a 1-byte message."""
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import padding, rsa

        with open(os.path.join(key_dir, "private_key.pem"), "rb") as handle:
            key = serialization.load_pem_private_key(handle.read(), password=None)
        assert isinstance(key, rsa.RSAPrivateKey)
        oaep = padding.OAEP(
            mgf=padding.MGF1(algorithm=hashes.SHA256()), algorithm=hashes.SHA256(), label=None
        )
        wrapped = key.public_key().encrypt(b"x", oaep)
        return lambda: key.decrypt(wrapped, oaep)


if __name__ == "__main__":
    run_worker(ReferenceAdapter(), sys.argv)
