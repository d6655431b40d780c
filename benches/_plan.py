"""How much of each workload ``compare.py`` runs: the full and the smoke plan, and the
constants the targets and the report share."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "BLOCKS",
    "FLOOR_GAP",
    "FLOOR_PARTS",
    "FULL",
    "KIB",
    "MIB",
    "SMOKE",
    "Plan",
]

KIB, MIB = 1024, 1024 * 1024

#: The floor of target (b): a key GET after the event loop sat idle this long (about the
#: router's time on a small request here), and the parts reported.
FLOOR_GAP = 0.003
FLOOR_PARTS = ("seal", "get", "get_after_gap")


@dataclass(frozen=True)
class Plan:
    """How much of each workload to run."""

    latency_n: int
    latency_warmup: int
    rsa_n: int
    proxy_n: int
    proxy_warmup: int
    sizes: tuple[tuple[int, int], ...]  # (payload bytes, N)
    size_warmup: int
    concurrency: int
    rounds: int
    warmup_rounds: int
    cold_runs: int
    rss_size: int
    delay: float = 0.010
    timeout: float = 900.0


FULL = Plan(
    latency_n=100,
    latency_warmup=5,
    rsa_n=100,
    proxy_n=40,
    proxy_warmup=3,
    sizes=((KIB, 20), (64 * KIB, 20), (MIB, 10), (8 * MIB, 5)),
    size_warmup=2,
    concurrency=64,
    rounds=3,
    warmup_rounds=1,
    cold_runs=7,
    rss_size=8 * MIB,
)
SMOKE = Plan(
    latency_n=2,
    latency_warmup=1,
    rsa_n=2,
    proxy_n=1,
    proxy_warmup=1,
    sizes=((KIB, 1), (64 * KIB, 1)),
    size_warmup=1,
    # Small enough that the reference (~1-3 req/s on a loaded CI machine) finishes well
    # inside the timeout: smoke mode checks that the benchmark runs, not what it measures.
    concurrency=8,
    rounds=1,
    warmup_rounds=1,
    cold_runs=1,
    rss_size=64 * KIB,
    timeout=600.0,
)

#: (a), (c) and (d) run in this many blocks per client, alternating the clients.
BLOCKS = 4
