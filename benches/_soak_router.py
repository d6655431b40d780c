"""A development router process for the soak (benches/soak.py) that injects faults itself.

Usage::

    python benches/_soak_router.py --cert server.pem --key server-key.pem --log faults.jsonl \\
        [--port 0] [--key-bits 2048] [--fault-rate 0.2] [--seed 1] [--generation 0]

Every ``POST /v1/chat/secure_completion`` draws, from an RNG seeded with ``seed`` and
``generation``, whether it gets a fault (probability ``--fault-rate``) and which one (uniform
over :data:`KINDS`). Before handling it the runner opens the request with the router's key to
learn its last user message (the soak makes each one unique: its *tag*), then appends one JSON
line ``{"tag", "payload_id", "kind", "generation", "t"}`` to ``--log`` (flushed, so the file
survives SIGKILL). ``--omit-payload-id`` seals replies without ``_metadata.payload_id``, as a
router that does not echo it. ``kind`` is ``"none"`` for an unfaulted request, ``"stale_key"`` for a
request sealed to another server key (the router answers 400 "decryption failed").

The fault is pushed onto the router's FIFO right before the router takes it: ``_handle`` runs
synchronously from the push to ``FaultQueue.pop()`` (no ``await`` in between), so concurrent
requests cannot take each other's fault.

Prints ``{"url", "port", "pid", "fingerprint"}`` once it listens; serves until SIGTERM/SIGINT,
until stdin closes (it never outlives the soak), or until it is killed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import sys
import time
from typing import IO, Any

from _router_proc import _watch_stdin  # run from benches/, like _router_proc.py

from nomyo import _core
from nomyo._exceptions import NomyoError
from nomyo._http_server import HTTPRequest, HTTPResponse
from nomyo.testing import DevRouter, Fault, RecordedRequest
from nomyo.testing._router import _Outcome

SECURE_PATH = "/v1/chat/secure_completion"
#: The injected faults, drawn uniformly.
KINDS = ("429", "503", "tamper", "wrong_key", "garbage", "slow", "replay", "reset")
#: Garbage 200 bodies (one is drawn per garbage fault).
GARBAGE = (
    b"",
    b"not json at all",
    b"{}",
    b"[1, 2, 3]",
    b'{"version": "1.0", "algorithm": "hybrid-aes256-rsa4096"}',
    b"\x00\xff\xfe garbage \x80",
    b'{"version": "1.0", "algorithm": "hybrid-aes256-rsa4096", "encrypted_payload": {',
)
#: A "slow" fault: ``delay`` then ``slow_body`` seconds; one in four waits past the soak
#: client's 5 s timeout.
SLOW_DELAYS = (0.2, 0.5, 1.0, 6.0)


class SoakRouter(DevRouter):
    """A DevRouter that draws its own faults and logs, per request, which one it applied."""

    def __init__(
        self,
        *,
        rate: float,
        seed: int,
        generation: int,
        log: IO[str],
        omit_payload_id: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self._omit_payload_id = omit_payload_id
        self._rng = random.Random(f"{seed}/{generation}")
        self._rate = rate
        self._generation = generation
        self._log = log

    def _tag(self, request: HTTPRequest) -> str | None:
        """The request's last message content, or None when it cannot be opened here."""
        try:
            payload, _, _ = _core.open_json(request.body or b"", self._key)
        except (NomyoError, ValueError, TypeError):
            return None
        messages = payload.get("messages") if isinstance(payload, dict) else None
        if isinstance(messages, list) and messages and isinstance(messages[-1], dict):
            content = messages[-1].get("content")
            return content if isinstance(content, str) else None
        return None

    def _draw(self, client_key: str | None) -> tuple[str, Fault | None]:
        if self._rng.random() >= self._rate:
            return "none", None
        kind = self._rng.choice(KINDS)
        if kind == "429":
            return kind, Fault(status=429, detail="soak: rate limited", retry_after="0.2")
        if kind == "503":
            return kind, Fault(status=503, detail="soak: unavailable")
        if kind == "tamper":
            return kind, Fault(tamper_reply=True)
        if kind == "wrong_key":
            return kind, Fault(wrong_key_reply=True)
        if kind == "garbage":
            return kind, Fault(garbage_reply=self._rng.choice(GARBAGE))
        if kind == "slow":
            delay = self._rng.choice(SLOW_DELAYS)
            return kind, Fault(delay=delay, slow_body=self._rng.choice((0.0, 0.3, 0.8)))
        if kind == "replay":
            if client_key is None or not self.has_earlier_reply(client_key):
                return "none", None  # nothing to replay yet: answered normally
            return kind, Fault(replay_reply=True)
        return kind, Fault(drop_connection=True)

    async def _process(self, request: HTTPRequest, record: RecordedRequest) -> _Outcome:
        outcome = await super()._process(request, record)
        if self._omit_payload_id and outcome.reply is not None and outcome.client_key is not None:
            # As a router that does not echo the payload id: the same reply, sealed again
            # without _metadata.payload_id (PROTOCOL.md does not require the server to send it).
            outcome.reply["_metadata"].pop("payload_id", None)
            outcome.response.body = _core.seal_json(
                outcome.reply, outcome.client_key, processed_at=int(time.time())
            )
        return outcome

    async def _handle(self, request: HTTPRequest) -> HTTPResponse:
        if request.path == SECURE_PATH and request.method == "POST":
            tag = self._tag(request)
            client_key = None
            payload_id = None
            for name, value in request.headers:
                if name == "x-public-key":
                    client_key = value
                elif name == "x-payload-id":
                    payload_id = value
            kind, fault = ("stale_key", None) if tag is None else self._draw(client_key)
            line = {
                "tag": tag,
                "payload_id": payload_id,
                "kind": kind,
                "generation": self._generation,
                "t": time.time(),
            }
            self._log.write(json.dumps(line) + "\n")
            self._log.flush()
            if fault is not None:
                assert not self.faults, "a fault was left in the queue"
                self.faults.push(fault)  # taken by super()._handle before it first awaits
        return await super()._handle(request)


async def _main(args: argparse.Namespace) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    _watch_stdin(loop, stop)
    with open(args.log, "a", encoding="utf-8") as log:
        router = SoakRouter(
            rate=args.fault_rate,
            seed=args.seed,
            generation=args.generation,
            log=log,
            omit_payload_id=args.omit_payload_id,
            host="127.0.0.1",
            port=args.port,
            key_bits=args.key_bits,
            tls_cert=args.cert,
            tls_key=args.key,
            idle_timeout=600.0,
            max_recorded=16,
        )
        # The wrong-key fault's stranger keys, made now so no reply waits for a key
        # generation (the soak's client key is RSA-4096, the proxy's too).
        for bits in (2048, 4096):
            await router._stranger(bits)
        async with router:
            line = {
                "url": router.url,
                "port": router.port,
                "pid": os.getpid(),
                "fingerprint": router.public_key.fingerprint(),
            }
            sys.stdout.write(json.dumps(line) + "\n")
            sys.stdout.flush()
            await stop.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--cert", required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--log", required=True)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--key-bits", type=int, default=2048)
    parser.add_argument("--fault-rate", type=float, default=0.2)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--generation", type=int, default=0)
    parser.add_argument(
        "--omit-payload-id",
        action="store_true",
        help="leave _metadata.payload_id out of the sealed replies",
    )
    asyncio.run(_main(parser.parse_args()))


if __name__ == "__main__":
    main()
