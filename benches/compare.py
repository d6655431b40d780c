"""Benchmark nomyo-rs against the reference client (PyPI nomyo 0.2.9), side by side.

Usage::

    .venv/bin/python benches/compare.py [--smoke] [--out benches/results]

One development router (HTTPS, RSA-4096 server key) runs in its own process; every
workload runs once with the reference client and once with ours, each in a fresh worker
subprocess (``_worker_reference.py`` / ``_worker_ours.py``). Both clients get the same,
realistic trust store: certifi's CA bundle plus the throwaway test CA (``SSL_CERT_FILE``
for the reference, ``verify=`` for ours). The reference is installed into
``.cache/reference-nomyo`` by ``scripts/install-reference.sh`` and is only ever imported
in its own worker processes.

Workloads: (a) warm small-request latency; (b) client CPU time per small request against
the cost of one RSA-4096 private-key operation; (c) warm latency through a 20 ms RTT delay
proxy; (d) latency for 1 KiB .. 8 MiB echoed payloads (+ PNG plot); (e) 64 concurrent
requests on one client: throughput and worst event-loop stall; (f) cold start of a new
process; (g) peak RSS for an 8 MiB request; (h) plaintext copies left in process memory.

``--smoke`` runs everything with tiny N, 8 concurrent and payloads up to 64 KiB (CI keeps
the benches from rotting); the full run takes 10-15 minutes. Results: a markdown table on
stdout and in ``<out>/latest.md``, raw numbers in ``<out>/latest.json``, the plot in
``<out>/latency_vs_size.png``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

from _harness import (
    BENCHES,
    CLIENTS,
    Workers,
    _package_folder,
    helper_process,
    install_reference,
    log,
    make_trust_store,
    monotonic,
    precompile,
)
from _machine import machine_info, page_touch_us, steal_seconds
from _plan import FULL, SMOKE
from _report import plot_sizes, render
from _table import build_rows
from _targets import run_all

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="tiny N, payloads up to 64 KiB")
    parser.add_argument("--out", default=str(BENCHES / "results"), help="results folder")
    args = parser.parse_args(argv)
    plan = SMOKE if args.smoke else FULL
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()

    touch_start, steal_start, wall_start = page_touch_us(), steal_seconds(), monotonic()
    reference_dir = install_reference()
    precompile(_package_folder("nomyo"), reference_dir / "nomyo")
    work = Path(tempfile.mkdtemp(prefix="nomyo-bench-"))
    try:
        bundle, cert, key = make_trust_store(work)
        with helper_process(
            ["_router_proc.py", "--cert", cert, "--key", key, "--key-bits", "4096"], "router"
        ) as router:
            url = router["url"]
            log(f"router {url} (pid {router['pid']})")
            port = int(url.rsplit(":", 1)[1])
            with helper_process(
                ["_delay_proxy.py", "--target-port", str(port), "--delay", str(plan.delay)],
                "delay proxy",
            ) as proxy:
                proxy_url = f"https://127.0.0.1:{proxy['port']}"
                key_dirs = {client: str(work / f"keys-{client}") for client in CLIENTS}
                workers = Workers(reference_dir, bundle, url, key_dirs, plan)
                for client in CLIENTS:
                    workers.run(client, workers.spec(client, "gen_keys"))
                run_all(workers, proxy_url)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    raw = workers.raw
    plot_name = "latency_vs_size.png"
    plotted = plot_sizes(raw, plan, out_dir / plot_name)
    info = machine_info()
    info["page_touch"] = f"{touch_start:.2f} / {page_touch_us():.2f}"
    info["steal"] = (
        f"{steal_seconds() - steal_start:.0f} s in {monotonic() - wall_start:.0f} s of wall time"
    )
    rows = build_rows(raw, plan)
    report = render(rows, info, args.smoke, plot_name if plotted else None)
    print(report)
    (out_dir / "latest.md").write_text(report)
    (out_dir / "latest.json").write_text(
        json.dumps({"machine": info, "smoke": args.smoke, "plan": plan.__dict__, "raw": raw})
    )
    log(f"done in {time.perf_counter() - started:.0f} s; wrote {out_dir / 'latest.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
