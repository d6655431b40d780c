"""A new client per call, and the first request of a process, against the reference, side by side.

Usage::

    .venv/bin/python benches/new_client.py [--smoke] [--out benches/results]

Code that builds a client per call (instructor's and many frameworks' habit, over
``nomyo.openai_http_client()`` or a chat client) paid an RSA-4096 key generation per call
before clients shared one process-wide key pair (``nomyo._ephemeral``). Rows: the warm median
of a reused async chat client; a new async chat client per call (construct, one request,
close); a new ``openai.OpenAI`` over ``nomyo.openai_http_client()`` per call (ours only: the
reference has no SDK transport); and a new process's first request (spawn to first reply,
and import + construct + first request inside the worker). Target: a new client per call at
most 2x the warm median plus 5 ms. Same router (HTTPS, RSA-4096 server key, its own process),
same trust store, each workload in a fresh worker per client; runs interleaved.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _harness import (
    BENCHES,
    BenchError,
    _package_folder,
    helper_process,
    install_reference,
    log,
    make_trust_store,
    precompile,
)

WORKER = BENCHES / "_worker_new_client.py"
CLIENTS = ("reference", "ours")
#: Calls per workload (the reference pays a key generation per new client: fewer of those).
FULL = {"reused": 40, "new_chat": 30, "new_chat_reference": 6, "new_sdk": 30, "first": 5}
SMOKE = {"reused": 5, "new_chat": 5, "new_chat_reference": 2, "new_sdk": 5, "first": 2}


def run_worker(
    client: str, spec: dict[str, Any], reference_dir: Path, bundle: str
) -> tuple[Any, float]:
    """One worker to completion: its result and the spawn-to-exit time (ms)."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "SSL_CERT_DIR")}
    env.pop("SSL_CERT_FILE", None)
    if client == "reference":
        env["PYTHONPATH"] = str(reference_dir)
        env["SSL_CERT_FILE"] = bundle
    start = time.perf_counter()
    out = subprocess.run(
        [sys.executable, str(WORKER), json.dumps(spec)],
        capture_output=True,
        text=True,
        cwd=BENCHES,
        env=env,
        timeout=600,
        check=False,
    )
    elapsed = (time.perf_counter() - start) * 1000
    lines = [line for line in out.stdout.splitlines() if line.strip()]
    if out.returncode != 0 or not lines:
        raise BenchError(f"{client} {spec['workload']} failed:\n{out.stderr[-3000:]}")
    answer = json.loads(lines[-1])
    if ("reference-nomyo" in answer["file"]) != (client == "reference"):
        raise BenchError(f"{client} worker imported {answer['file']}")
    return answer["result"], elapsed


def measure(plan: dict[str, int], url: str, bundle: str, reference_dir: Path) -> dict[str, Any]:
    raw: dict[str, Any] = {client: {} for client in CLIENTS}

    def spec(workload: str, n: int = 0) -> dict[str, Any]:
        return {"workload": workload, "url": url, "ca_file": bundle, "n": n}

    for client in CLIENTS:
        log(f"{client}: reused client, {plan['reused']} calls")
        raw[client]["reused"] = run_worker(
            client, spec("reused", plan["reused"]), reference_dir, bundle
        )[0]
        n = plan["new_chat" if client == "ours" else "new_chat_reference"]
        log(f"{client}: new chat client per call, {n} calls")
        raw[client]["new_chat"] = run_worker(client, spec("new_chat", n), reference_dir, bundle)[0]
    log(f"ours: new SDK client per call, {plan['new_sdk']} calls")
    raw["ours"]["new_sdk"] = run_worker(
        "ours", spec("new_sdk", plan["new_sdk"]), reference_dir, bundle
    )[0]
    for client in CLIENTS:
        raw[client]["first"] = []
    for i in range(plan["first"]):
        for client in CLIENTS:
            log(f"{client}: first request of a process {i + 1}/{plan['first']}")
            inside, spawn = run_worker(client, spec("first"), reference_dir, bundle)
            raw[client]["first"].append({**inside, "spawn_to_exit_ms": spawn})
    return raw


def median(values: list[float]) -> float:
    return statistics.median(values)


def render(raw: dict[str, Any], smoke: bool) -> str:
    ref, ours = raw["reference"], raw["ours"]

    def ratio(a: float | None, b: float | None) -> str:
        return "—" if a is None or b is None or b == 0 else f"{a / b:.2f}x"

    def cell(value: float | None) -> str:
        return "—" if value is None else f"{value:.1f}"

    rows: list[tuple[str, float | None, float | None]] = [
        (
            "reused async chat client, warm median, ms",
            median(ref["reused"]),
            median(ours["reused"]),
        ),
        (
            "new async chat client per call (construct + request + close), median, ms",
            median(ref["new_chat"]),
            median(ours["new_chat"]),
        ),
        (
            "new openai.OpenAI over nomyo.openai_http_client() per call, median, ms",
            None,
            median(ours["new_sdk"]),
        ),
        (
            "first request of a process: import + construct + first reply, median, ms",
            median([r["first_reply_ms"] for r in ref["first"]]),
            median([r["first_reply_ms"] for r in ours["first"]]),
        ),
        (
            "first request of a process: spawn to exit, median, ms",
            median([r["spawn_to_exit_ms"] for r in ref["first"]]),
            median([r["spawn_to_exit_ms"] for r in ours["first"]]),
        ),
    ]
    warm = median(ours["reused"])
    target = 2 * warm + 5
    lines = [
        "| row | reference | ours | reference / ours |",
        "|---|---:|---:|---:|",
        *(f"| {label} | {cell(r)} | {cell(o)} | {ratio(r, o)} |" for label, r, o in rows),
        "",
        f"target for a new client per call (ours): at most 2 x warm + 5 ms = {target:.1f} ms; "
        f"chat {median(ours['new_chat']):.1f} ms "
        f"({'met' if median(ours['new_chat']) <= target else 'NOT met'}), "
        f"SDK {median(ours['new_sdk']):.1f} ms "
        f"({'met' if median(ours['new_sdk']) <= target else 'NOT met'})"
        + (" [smoke run]" if smoke else ""),
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="a few calls per row")
    parser.add_argument("--out", default=str(BENCHES / "results"), help="results folder")
    args = parser.parse_args(argv)
    plan = SMOKE if args.smoke else FULL
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    reference_dir = install_reference()
    precompile(_package_folder("nomyo"), reference_dir / "nomyo")
    work = Path(tempfile.mkdtemp(prefix="nomyo-bench-new-client-"))
    try:
        bundle, cert, key = make_trust_store(work)
        with helper_process(
            ["_router_proc.py", "--cert", cert, "--key", key, "--key-bits", "4096"], "router"
        ) as router:
            log(f"router {router['url']} (pid {router['pid']})")
            raw = measure(plan, router["url"], bundle, reference_dir)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report = render(raw, args.smoke)
    print(report)
    (out_dir / "new_client.md").write_text(report)
    (out_dir / "new_client.json").write_text(json.dumps({"smoke": args.smoke, "raw": raw}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
