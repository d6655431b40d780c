"""Benchmark worker for OUR client (nomyo-rs); see ``_workloads.py`` for the protocol.

Run with the venv's python and no PYTHONPATH pointing at the reference client.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections.abc import Callable
from types import ModuleType
from typing import Any

from _workloads import MODEL, run_worker


class OursAdapter:
    """nomyo-rs: ``SecureChatCompletion(base_url, key_dir=, verify=<CA bundle>)``."""

    name = "ours"

    def __init__(self) -> None:
        self.nomyo: ModuleType | None = None

    def load(self) -> None:
        if self.nomyo is not None:
            return
        import nomyo

        if not hasattr(nomyo, "PrivateKey") or "reference-nomyo" in (nomyo.__file__ or ""):
            raise RuntimeError(f"imported {nomyo.__file__}, which is not nomyo-rs")
        self.nomyo = nomyo

    def make_client(self, spec: dict[str, Any], url: str) -> Any:
        assert self.nomyo is not None
        return self.nomyo.SecureChatCompletion(
            base_url=url, key_dir=spec.get("key_dir"), verify=spec["ca_file"]
        )

    async def create(self, client: Any, messages: list[dict[str, Any]]) -> dict[str, Any]:
        reply: dict[str, Any] = await client.create(model=MODEL, messages=messages)
        return reply

    async def close(self, client: Any) -> None:
        await client.aclose()

    def key_class(self) -> type:
        assert self.nomyo is not None
        cls: type = self.nomyo.SecureCompletionClient
        return cls

    def keygen_hook(self) -> tuple[object, str]:
        """Where a client without a key dir gets its key made: the process-wide pair."""
        from nomyo import _ephemeral

        return _ephemeral, "_make_pair"

    def gen_keys(self, key_dir: str) -> None:
        assert self.nomyo is not None
        self.nomyo.SecureCompletionClient().generate_keys(save_to_file=True, key_dir=key_dir)

    def rsa_op(self, key_dir: str) -> Callable[[], object]:
        """``_core.open_bytes`` of a 1-byte envelope: one RSA-4096 OAEP decrypt (+ tiny AES)."""
        from nomyo import _core

        with open(os.path.join(key_dir, "private_key.pem"), "rb") as handle:
            key = _core.PrivateKey.from_pem(handle.read())
        envelope = _core.seal_bytes(b"x", key.public_key())

        def run() -> None:
            _core.open_bytes(envelope, key).close()

        return run

    async def floor_cpu_seconds(self, spec: dict[str, Any], n: int, gap: float) -> dict[str, Any]:
        """Per-request CPU time of the parts of a small request that are not the RSA op.

        ``seal``: sealing the small payload to the server key (RSA-OAEP public op + AES-GCM).
        ``get`` / ``get_after_gap``: a server-key ``GET`` on the client's own native transport
        and event loop (the same pool, completion queue and wake-ups as a request, no
        envelope crypto, no client logic), back to back, and after the loop sat idle for
        ``gap`` seconds, as it does while the router works on a request.
        """
        from _workloads import SMALL_PROMPT

        from nomyo import _core
        from nomyo._constants import PUBLIC_KEY_PATH

        client = self.make_client(spec, spec["url"])
        try:
            messages = [{"role": "user", "content": SMALL_PROMPT}]
            for _ in range(3):
                await self.create(client, messages)
            transport = client.client._transport
            native = getattr(transport, "pool", None)  # the native transport's pool
            server_key = client.client.server_public_key
            if native is None or server_key is None:
                raise RuntimeError("the client is not on the native transport")
            url = client.client.router_url + PUBLIC_KEY_PATH
            payload = {"model": MODEL, "messages": messages}
            out: dict[str, list[float]] = {"seal": [], "get": [], "get_after_gap": []}
            for _ in range(n):
                start = time.process_time()
                _core.seal_json(payload, server_key)
                out["seal"].append(time.process_time() - start)
            for name, pause in (("get", 0.0), ("get_after_gap", gap)):
                for _ in range(n):
                    if pause:
                        await asyncio.sleep(pause)
                    start = time.process_time()
                    exchange = await native.aget_key(url)
                    out[name].append(time.process_time() - start)
                    if exchange.status != 200:
                        raise RuntimeError(f"the key GET answered {exchange.status}")
            return out
        finally:
            await self.close(client)

    def router_share_seconds(self, spec: dict[str, Any], size: int, n: int) -> list[float]:
        """The router's share of one echoed request of ``size``: ``n`` POSTs of a body sealed
        once beforehand, each reply read whole and not opened (no client crypto, no JSON)."""
        from urllib.parse import quote

        from _workloads import payload_text

        from nomyo import _core
        from nomyo._constants import COMPLETION_PATH, PUBLIC_KEY_PATH

        with open(os.path.join(spec["key_dir"], "private_key.pem"), "rb") as handle:
            key = _core.PrivateKey.from_pem(handle.read())
        transport = _core.Transport([spec["ca_file"]])
        limits: dict[str, Any] = {
            "ok_limit": 64 << 20,
            "error_limit": 1 << 16,
            "timeouts": (60.0, 60.0, 60.0, 60.0),
        }
        answer = transport.send(
            {"method": "GET", "url": spec["url"] + PUBLIC_KEY_PATH, "headers": [], **limits}
        )
        server_key = _core.PublicKey.from_pem(answer.body())
        payload = {"model": MODEL, "messages": [{"role": "user", "content": payload_text(size)}]}
        envelope = _core.seal_json(payload, server_key)
        headers = [
            ("X-Payload-ID", "router-share"),
            ("X-Public-Key", quote(key.public_key().to_pem())),
            ("Content-Type", "application/octet-stream"),
        ]
        url = spec["url"] + COMPLETION_PATH
        times = []
        for i in range(n + 1):  # the first is a warm-up
            start = time.perf_counter()
            answer = transport.send(
                {"method": "POST", "url": url, "headers": headers, "body": envelope, **limits}
            )
            if answer.status != 200 or answer.received_bytes <= size:
                raise RuntimeError(f"router answered {answer.status}, {answer.received_bytes} B")
            if i:
                times.append(time.perf_counter() - start)
        return times


if __name__ == "__main__":
    run_worker(OursAdapter(), sys.argv)
