"""Client instructions per small request, counted by valgrind, for both clients.

Usage::

    .venv/bin/python benches/instructions.py [--requests 20] [--rsa 20]

Target (b) of the benchmark compares a client's CPU time per request with one RSA-4096
private-key operation. On a virtual machine whose hypervisor takes the CPU away while a
thread runs, that time is counted as the thread's own, so CPU time per request scatters by
orders of magnitude (``compare.py`` prints the same RSA op's p90 and max to show it).
Instruction counts do not: valgrind counts every user-space instruction of every thread of
the worker, repeatably, whatever the machine does meanwhile.

Each count is the difference of two runs of the same worker (``count`` workload) that
differ only in the number of requests (or RSA ops), so start-up, imports, key loading and
warm-up cancel out. Valgrind hides AVX-512 from the program, so both crypto libraries take
their AVX2 code paths: the unit (one RSA op) and the requests are counted on the same path.
Not counted: instructions in the kernel (system calls, the TCP stack, thread wake-ups).
The router runs outside valgrind. Prints a markdown table; writes nothing else.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from _harness import (
    BENCHES,
    CLIENTS,
    WORKER,
    BenchError,
    Workers,
    helper_process,
    install_reference,
    log,
    make_trust_store,
)
from _plan import FULL

_COLLECTED = re.compile(r"Collected\s*:\s*(\d+)")


def instructions(workers: Workers, client: str, spec: dict[str, Any], out: Path) -> int:
    """Run one worker under callgrind and return the instructions it executed."""
    command = [
        "valgrind",
        "--tool=callgrind",
        f"--callgrind-out-file={out}",
        sys.executable,
        str(WORKER[client]),
        json.dumps(spec),
    ]
    done = subprocess.run(
        command,
        env=workers.env(client),
        cwd=BENCHES,
        capture_output=True,
        text=True,
        timeout=3600,
        check=False,
    )
    found = _COLLECTED.search(done.stderr)
    if done.returncode != 0 or found is None:
        raise BenchError(
            f"{client} under valgrind failed (exit {done.returncode}):\n"
            f"{done.stdout[-3000:]}\n{done.stderr[-1500:]}"
        )
    return int(found.group(1))


def per_item(workers: Workers, client: str, what: str, n: int, work: Path) -> float:
    counts = []
    for k in (0, n):
        log(f"{client}: {what} x{k} under valgrind")
        spec = workers.spec(client, "count", what=what, n=k)
        counts.append(instructions(workers, client, spec, work / f"{client}-{what}-{k}.out"))
    return (counts[1] - counts[0]) / n


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=20, help="requests counted")
    parser.add_argument("--rsa", type=int, default=20, help="RSA ops counted")
    parser.add_argument(
        "--clients", default=",".join(CLIENTS), help="comma-separated: reference,ours"
    )
    args = parser.parse_args(argv)
    clients = args.clients.split(",")
    if not clients or set(clients) - set(CLIENTS):
        parser.error(f"--clients takes a comma-separated subset of {','.join(CLIENTS)}")
    if shutil.which("valgrind") is None:
        raise BenchError("valgrind is not installed (Debian: apt-get install valgrind)")
    reference_dir = install_reference()
    work = Path(tempfile.mkdtemp(prefix="nomyo-instructions-"))
    results: dict[str, dict[str, float]] = {}
    try:
        bundle, cert, key = make_trust_store(work)
        with helper_process(
            ["_router_proc.py", "--cert", cert, "--key", key, "--key-bits", "4096"], "router"
        ) as router:
            key_dirs = {client: str(work / f"keys-{client}") for client in CLIENTS}
            workers = Workers(reference_dir, bundle, router["url"], key_dirs, FULL)
            for client in clients:
                workers.run(client, workers.spec(client, "gen_keys"))
                results[client] = {
                    "request": per_item(workers, client, "requests", args.requests, work),
                    "rsa": per_item(workers, client, "rsa", args.rsa, work),
                }
    finally:
        shutil.rmtree(work, ignore_errors=True)
    names = {"reference": "reference 0.2.9", "ours": "nomyo-rs"}
    shown = [c for c in CLIENTS if c in results]
    print(
        "| valgrind (callgrind), user space, all threads | "
        + " | ".join(names[c] for c in shown)
        + " |"
    )
    print("|---|" + "---:|" * len(shown))
    for label, key in (
        ("instructions per small request, millions", "request"),
        ("instructions per RSA-4096 OAEP private-key op, millions", "rsa"),
    ):
        print(f"| {label} | " + " | ".join(f"{results[c][key] / 1e6:.1f}" for c in shown) + " |")
    ratios = " | ".join(f"{results[c]['request'] / results[c]['rsa']:.2f}" for c in shown)
    print(f"| per request, in RSA ops of the client's own library | {ratios} |")
    if len(shown) == 2:
        ref, ours = results["reference"], results["ours"]
        print(
            f"\nreference / ours instructions per request: {ref['request'] / ours['request']:.1f}x"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
