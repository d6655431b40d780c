"""The run of the benchmark targets (a)-(h): each workload for both clients, in blocks
that alternate the clients, and the cold starts; the raw numbers go to ``Workers.raw``."""

from __future__ import annotations

import statistics
from typing import Any

from _harness import CLIENTS, Workers, log, monotonic
from _memscan import memscan
from _plan import BLOCKS, FLOOR_GAP, KIB

__all__ = ["cold_starts", "merge_timed", "run_all", "split"]


def run_all(workers: Workers, proxy_url: str) -> None:
    plan = workers.plan
    raw = workers.raw

    def each(label: str, workload: str, **extra: Any) -> dict[str, dict[str, Any]]:
        out = {}
        for client in CLIENTS:
            log(f"{label}: {client}")
            out[client] = workers.run(client, workers.spec(client, workload, **extra))
        raw[label] = out
        return out

    def in_blocks(
        label: str, workload: str, blocks: list[dict[str, Any]]
    ) -> dict[str, list[dict[str, Any]]]:
        """One worker per client per block, alternating the clients (ABBA...), so that both
        sample the machine's drifting speed alike; each block's spec adds its own fields."""
        parts: dict[str, list[dict[str, Any]]] = {client: [] for client in CLIENTS}
        for i, extra in enumerate(blocks):
            for client in CLIENTS if i % 2 == 0 else CLIENTS[::-1]:
                log(f"{label}: {client}, block {i + 1}")
                parts[client].append(workers.run(client, workers.spec(client, workload, **extra)))
        return parts

    def alternating(label: str, workload: str, n: int, **extra: Any) -> None:
        """``n`` timed requests per client in blocks; medians over all blocks."""
        blocks = [{"n": block, **extra} for block in split(n, BLOCKS)]
        parts = in_blocks(label, workload, blocks)
        raw[label] = {client: merge_timed(found) for client, found in parts.items()}

    def alternating_sizes(label: str) -> None:
        """(d) in blocks, like :func:`alternating`."""
        count = max(1, min(BLOCKS, *(n for _, n in plan.sizes)))
        counts = {size: split(n, count) for size, n in plan.sizes}
        blocks = [
            {
                "sizes": [[size, counts[size][i]] for size, _ in plan.sizes],
                "warmup": plan.size_warmup,
            }
            for i in range(count)
        ]
        parts = in_blocks(label, "sizes", blocks)
        raw[label] = {
            client: {
                "sizes": {
                    str(size): merge_timed([part["sizes"][str(size)] for part in found])
                    for size, _ in plan.sizes
                }
            }
            for client, found in parts.items()
        }

    alternating(
        "a_latency", "latency", plan.latency_n, warmup=plan.latency_warmup, interleave_rsa=True
    )
    each("b_rsa", "rsa", n=plan.rsa_n)
    log(f"b_floor: ours (seal, and a key GET after a {FLOOR_GAP * 1000:.0f} ms idle gap)")
    raw["b_floor"] = workers.run("ours", workers.spec("ours", "floor", n=plan.rsa_n, gap=FLOOR_GAP))
    alternating("c_latency_rtt20", "latency", plan.proxy_n, url=proxy_url, warmup=plan.proxy_warmup)
    alternating_sizes("d_sizes")
    large = [list(s) for s in plan.sizes if s[0] >= 64 * KIB]
    log("d_router_share: ours (pre-sealed bodies, replies not opened)")
    raw["d_router_share"] = workers.run("ours", workers.spec("ours", "router_share", sizes=large))
    each(
        "e_concurrency",
        "concurrency",
        concurrency=plan.concurrency,
        rounds=plan.rounds,
        warmup_rounds=plan.warmup_rounds,
    )
    raw["f_cold"] = cold_starts(workers)
    each("g_rss", "rss", size=plan.rss_size)
    scans: dict[str, Any] = {}
    for client in CLIENTS:
        log(f"h_memscan: {client}")
        scans[client] = memscan(workers, client, send=True)
        scans[client + "_control"] = memscan(workers, client, send=False)
    raw["h_memscan"] = scans


def split(n: int, blocks: int) -> list[int]:
    """``n`` as ``blocks`` near-equal positive parts (fewer when ``n`` is smaller)."""
    blocks = max(1, min(blocks, n))
    return [n // blocks + (i < n % blocks) for i in range(blocks)]


def merge_timed(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """One result of ``_timed_requests`` from the results of several blocks."""
    latencies = [x for part in parts for x in part["latencies_ms"]]
    cpu = [x for part in parts for x in part["cpu_ms"]]
    n = len(latencies)
    merged: dict[str, Any] = {
        "n": n,
        "latencies_ms": latencies,
        "median_ms": statistics.median(latencies),
        "min_ms": min(latencies),
        "cpu_ms_per_request": sum(p["cpu_ms_per_request"] * p["n"] for p in parts) / n,
        "cpu_median_ms": statistics.median(cpu),
        "cpu_ms": cpu,
    }
    if all("rsa_cpu_ms" in part for part in parts):
        rsa = [x for part in parts for x in part["rsa_cpu_ms"]]
        merged["rsa_cpu_ms"] = rsa
        merged["rsa_cpu_median_ms"] = statistics.median(rsa)
    return merged


def cold_starts(workers: Workers) -> dict[str, Any]:
    """New-process cold start: spawn -> first reply, per variant, runs interleaved."""
    variants = {
        "reference_ephemeral": ("reference", None),
        "reference_keydir": ("reference", workers.key_dirs["reference"]),
        "ours_ephemeral": ("ours", None),
        "ours_keydir": ("ours", workers.key_dirs["ours"]),
    }
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in variants}
    for client in CLIENTS:  # untimed: warm the page cache (bytecode: see precompile)
        workers.run(client, workers.spec(client, "cold"))
    for i in range(workers.plan.cold_runs):
        for name, (client, key_dir) in variants.items():
            log(f"f_cold: {name} {i + 1}/{workers.plan.cold_runs}")
            spec = workers.spec(client, "cold", key_dir=key_dir)
            spawned = monotonic()
            result = workers.run(client, spec)
            result["total_ms"] = (result["t_done"] - spawned) * 1000.0
            runs[name].append(result)
    summary = {}
    for name, results in runs.items():
        summary[name] = {
            "runs": results,
            "median_total_ms": statistics.median(r["total_ms"] for r in results),
            "median_in_process_ms": statistics.median(r["in_process_ms"] for r in results),
            "median_import_ms": statistics.median(r["import_ms"] for r in results),
            "median_keygen_ms": statistics.median(r["keygen_ms"] for r in results),
            "median_without_keygen_ms": statistics.median(
                r["total_ms"] - r["keygen_ms"] for r in results
            ),
        }
    return summary
