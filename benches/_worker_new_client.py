"""Worker of ``benches/new_client.py``: times one workload with whichever ``nomyo`` is importable.

``python benches/_worker_new_client.py '<json spec>'`` prints one JSON line of timings (ms).
Ours is the installed package; the reference is put first on ``PYTHONPATH`` by the parent
(with ``SSL_CERT_FILE`` set to the benchmark's CA bundle, which the reference honours).
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from typing import Any

START = time.perf_counter()
MODEL = "bench-model"
MESSAGES = [{"role": "user", "content": "Hello! Why does end-to-end encryption matter?"}]


def ms_since(start: float) -> float:
    return (time.perf_counter() - start) * 1000


def is_ours(nomyo: Any) -> bool:
    return hasattr(nomyo, "openai_http_client")


def make_chat(nomyo: Any, spec: dict[str, Any]) -> Any:
    if is_ours(nomyo):
        return nomyo.SecureChatCompletion(spec["url"], verify=spec["ca_file"])
    return nomyo.SecureChatCompletion(base_url=spec["url"])


async def close(nomyo: Any, chat: Any) -> None:
    if is_ours(nomyo):
        await chat.aclose()


async def one(nomyo: Any, chat: Any) -> None:
    reply = await chat.create(model=MODEL, messages=MESSAGES)
    assert reply["choices"][0]["message"]["content"] == MESSAGES[0]["content"]


async def reused(nomyo: Any, spec: dict[str, Any]) -> list[float]:
    chat = make_chat(nomyo, spec)
    await one(nomyo, chat)  # warm: key, server key, connection
    times = []
    for _ in range(spec["n"]):
        start = time.perf_counter()
        await one(nomyo, chat)
        times.append(ms_since(start))
    await close(nomyo, chat)
    return times


async def new_chat(nomyo: Any, spec: dict[str, Any]) -> list[float]:
    """A new client per call (construct, one request, close), after one such call."""
    times = []
    for i in range(spec["n"] + 1):
        start = time.perf_counter()
        chat = make_chat(nomyo, spec)
        await one(nomyo, chat)
        await close(nomyo, chat)
        if i:
            times.append(ms_since(start))
    return times


def new_sdk(nomyo: Any, spec: dict[str, Any]) -> list[float]:
    """A new ``openai.OpenAI`` over ``nomyo.openai_http_client()`` per call (ours only)."""
    import openai

    times = []
    for i in range(spec["n"] + 1):
        start = time.perf_counter()
        http = nomyo.openai_http_client(spec["url"], verify=spec["ca_file"])
        with openai.OpenAI(api_key="unused", max_retries=0, http_client=http) as client:
            out = client.chat.completions.create(model=MODEL, messages=MESSAGES)  # type: ignore[arg-type]
            assert out.choices[0].message.content == MESSAGES[0]["content"]
        if i:
            times.append(ms_since(start))
    return times


async def first(spec: dict[str, Any]) -> dict[str, float]:
    """The first request of this process: import, construct, one request."""
    import nomyo

    imported = ms_since(START)
    chat = make_chat(nomyo, spec)
    await one(nomyo, chat)
    done = ms_since(START)
    await close(nomyo, chat)
    return {"import_ms": imported, "first_reply_ms": done}


def main() -> None:
    spec = json.loads(sys.argv[1])
    workload = spec["workload"]
    if workload == "first":
        result: Any = asyncio.run(first(spec))
    else:
        import nomyo

        if workload == "new_sdk":
            result = new_sdk(nomyo, spec)
        else:
            result = asyncio.run({"reused": reused, "new_chat": new_chat}[workload](nomyo, spec))
    print(json.dumps({"result": result, "file": nomyo_file()}))


def nomyo_file() -> str:
    import nomyo

    return str(nomyo.__file__)


if __name__ == "__main__":
    main()
