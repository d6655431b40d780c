"""What the Responses and Messages APIs of ``nomyo proxy`` cost next to a chat completion.

Usage::

    .venv/bin/python benches/gateway.py [--smoke] [--rounds 600] [--out benches/results]

One development router (HTTPS, RSA-4096 server key) in its own process, one ``nomyo proxy``
in front of it. One keep-alive connection sends the same small request as a chat completion
(``/v1/chat/completions``), a Responses call (``/v1/responses``) and an Anthropic Messages
call (``/v1/messages``), each plain and with ``"stream": true``, one after the other in
rounds (the order rotates every round), so that every kind meets the shared machine's
drifting speed alike. Rows: the median latency of each kind, and the median over rounds of
its difference to the chat completion of the same round (paired, so that drift cancels).
A last table gives the translation alone (request in, reply out, in this process), which no
noise reaches.

Target: a Responses call and a Messages call at most 1 ms above the chat completion, same
run. Results: markdown on stdout and in ``<out>/gateway.md``, raw numbers in
``<out>/gateway.json``.
"""

from __future__ import annotations

import argparse
import datetime
import http.client
import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

BENCHES = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCHES))

from _harness import helper_process, make_trust_store  # noqa: E402

MODEL = "Qwen/Qwen3-0.6B"
TOKEN = "bench-gateway-token"
PING = [{"role": "user", "content": "ping"}]
REQUESTS: dict[str, tuple[str, dict[str, Any]]] = {
    "chat completion": ("/v1/chat/completions", {"messages": PING}),
    "responses": ("/v1/responses", {"input": "ping"}),
    "messages": ("/v1/messages", {"max_tokens": 16, "messages": PING}),
}


def _start_proxy(url: str, ca_file: str) -> tuple[subprocess.Popen[str], str]:
    proxy = subprocess.Popen(
        [
            *(sys.executable, "-m", "nomyo", "proxy", "--listen", "127.0.0.1:0"),
            *("--base-url", url, "--ca-file", ca_file, "--auth-token", TOKEN, "--model", MODEL),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert proxy.stdout is not None
    while True:
        line = proxy.stdout.readline()
        if not line:
            raise RuntimeError("the proxy exited before listening")
        match = re.search(r"listening on http://(\S+)", line)
        if match:
            return proxy, match.group(1)


def _kinds() -> dict[str, tuple[str, bytes]]:
    kinds = {}
    for name, (path, body) in REQUESTS.items():
        for stream in (False, True):
            full = {"model": MODEL, **body, **({"stream": True} if stream else {})}
            kinds[name + (", stream" if stream else "")] = (path, json.dumps(full).encode())
    return kinds


def measure(address: str, rounds: int, warmup: int) -> dict[str, list[float]]:
    """Seconds per request of each kind, ``rounds`` times, through one connection."""
    kinds = _kinds()
    names = list(kinds)
    times: dict[str, list[float]] = {name: [] for name in names}
    host, _, port = address.rpartition(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=60)
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {TOKEN}"}
    try:
        for number in range(warmup + rounds):
            shift = number % len(names)
            for name in names[shift:] + names[:shift]:
                path, body = kinds[name]
                started = time.perf_counter()
                connection.request("POST", path, body, headers)
                response = connection.getresponse()
                response.read()
                elapsed = time.perf_counter() - started
                if response.status != 200:
                    raise RuntimeError(f"{name}: HTTP {response.status}")
                if number >= warmup:
                    times[name].append(elapsed)
    finally:
        connection.close()
    return times


def translation_cost(repeat: int) -> dict[str, float]:
    """Seconds per request for the translation alone: parse the body, answer the reply."""
    from nomyo._anthropic import MESSAGES
    from nomyo._relay import CHAT
    from nomyo._responses import RESPONSES
    from nomyo.testing._backend import echo_completion

    apis = {"chat completion": CHAT, "responses": RESPONSES, "messages": MESSAGES}
    costs = {}
    for name, (_, body) in _kinds().items():
        api = apis[name.split(",")[0]]
        started = time.perf_counter()
        for _ in range(repeat):
            call = api.parse(body, default_model=MODEL)
            assert not hasattr(call, "status"), call
            reply = echo_completion({"model": MODEL, "messages": call.messages}, "p")  # type: ignore[union-attr]
            answer, _ = api.answer(call, reply)  # type: ignore[arg-type]
            answer[:] = bytes(len(answer))
        costs[name] = (time.perf_counter() - started) / repeat
    return costs


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="tiny run (numbers mean nothing)")
    parser.add_argument("--out", default=str(BENCHES / "results"))
    parser.add_argument("--rounds", type=int, default=600, help="rounds of all six requests")
    args = parser.parse_args()
    rounds, warmup = (5, 2) if args.smoke else (args.rounds, 30)
    work = Path(tempfile.mkdtemp(prefix="nomyo-bench-gateway-"))
    ca_file, cert, key = make_trust_store(work)
    router_args = [str(BENCHES / "_router_proc.py"), "--cert", cert, "--key", key]
    with helper_process(router_args, "router") as router:
        proxy, address = _start_proxy(router["url"], ca_file)
        try:
            times = measure(address, rounds, warmup)
        finally:
            proxy.terminate()
            proxy.wait(30)
    costs = translation_cost(50 if args.smoke else 2000)
    table = render(times, costs, rounds=rounds, smoke=args.smoke)
    print(table)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "gateway.md").write_text(table)
    raw = {"smoke": args.smoke, "rounds": rounds, "times": times, "translation": costs}
    (out / "gateway.json").write_text(json.dumps(raw) + "\n")
    return 0


def render(
    times: dict[str, list[float]], costs: dict[str, float], *, rounds: int, smoke: bool
) -> str:
    now = datetime.datetime.now(datetime.timezone.utc)
    ms = 1000.0
    lines = [
        f"- date: {now:%Y-%m-%d %H:%M:%S} UTC"
        + (" (smoke run: numbers mean nothing)" if smoke else ""),
        f"- {rounds} rounds of six requests on one keep-alive connection, order rotating; "
        "router RSA-4096 over HTTPS, each in its own process",
        "",
        "| through nomyo proxy | median latency | paired median vs chat completion | "
        "translation alone |",
        "|---|---:|---:|---:|",
    ]
    for name, values in times.items():
        base = "chat completion, stream" if "stream" in name else "chat completion"
        deltas = [a - b for a, b in zip(values, times[base], strict=True)]
        delta = "" if name.startswith("chat") else f"{statistics.median(deltas) * ms:+.2f} ms"
        lines.append(
            f"| {name} | {statistics.median(values) * ms:.2f} ms | {delta} | "
            f"{costs[name] * 1e6:.0f} µs |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
