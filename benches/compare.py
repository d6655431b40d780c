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
import compileall
import contextlib
import datetime
import json
import mmap
import os
import platform
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

BENCHES = Path(__file__).resolve().parent
ROOT = BENCHES.parent
CLIENTS = ("reference", "ours")
WORKER = {"ours": BENCHES / "_worker_ours.py", "reference": BENCHES / "_worker_reference.py"}
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


class BenchError(RuntimeError):
    """A worker or helper process failed."""


def log(message: str) -> None:
    print(f"[compare {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def monotonic() -> float:
    return time.clock_gettime(time.CLOCK_MONOTONIC)


# -- environment ---------------------------------------------------------------------------


def install_reference() -> Path:
    """Run scripts/install-reference.sh (idempotent) and return the reference folder."""
    env = {**os.environ, "PYTHON": sys.executable}
    out = subprocess.run(
        ["bash", str(ROOT / "scripts" / "install-reference.sh")],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if out.returncode != 0:
        raise BenchError(f"install-reference.sh failed:\n{out.stderr[-2000:]}")
    return Path(out.stdout.strip().splitlines()[-1])


def precompile(*folders: Path) -> None:
    """Write the bytecode caches a ``pip install`` writes, so that no cold start compiles.

    The reference comes from pip and has them; ours is an editable build, which has none,
    and machines that set ``PYTHONDONTWRITEBYTECODE`` (as CI images do) never write them,
    so every new worker would compile our modules from source (~50 ms) and the reference's
    not. compileall writes them whatever that variable says.
    """
    for folder in folders:
        if not compileall.compile_dir(folder, quiet=1):
            raise BenchError(f"compileall failed for {folder}")


def _package_folder(name: str) -> Path:
    """Where ``name`` is imported from by this interpreter (the workers' for ours)."""
    import importlib.util

    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise BenchError(f"package {name} not found")
    return Path(next(iter(spec.submodule_search_locations)))


def make_trust_store(directory: Path) -> tuple[str, str, str]:
    """Test certificates, and a CA bundle = certifi's bundle + the test CA."""
    import certifi

    from nomyo.testing import make_test_certificates

    certs = make_test_certificates(directory / "certs")
    bundle = directory / "ca-bundle.pem"
    text = Path(certifi.where()).read_text()
    bundle.write_text(text.rstrip("\n") + "\n" + Path(certs.ca_cert).read_text())
    return str(bundle), certs.cert, certs.key


@contextlib.contextmanager
def helper_process(args: list[str], what: str, timeout: float = 60.0) -> Iterator[dict[str, Any]]:
    """Start a helper that prints one JSON line when ready; stop it on exit.

    The helper's stdin is a pipe we never write to: it exits when the pipe closes, so it
    cannot outlive this process.
    """
    with tempfile.TemporaryFile(mode="w+") as stderr:
        proc = subprocess.Popen(
            [sys.executable, *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
            cwd=BENCHES,
        )
        try:
            assert proc.stdout is not None
            line = _readline(proc.stdout, timeout)
            if not line:
                stderr.seek(0)
                raise BenchError(f"{what} did not start:\n{stderr.read()[-2000:]}")
            yield json.loads(line)
        finally:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            for stream in (proc.stdin, proc.stdout):
                if stream is not None:
                    stream.close()


def _readline(stream: IO[str], timeout: float) -> str:
    """readline() with a deadline (the helpers print their line within seconds)."""
    import selectors

    with selectors.DefaultSelector() as selector:
        selector.register(stream, selectors.EVENT_READ)
        if not selector.select(timeout):
            return ""
    return stream.readline()


# -- workers -------------------------------------------------------------------------------


@dataclass
class Workers:
    """Runs worker subprocesses for either client."""

    reference_dir: Path
    bundle: str
    url: str
    key_dirs: dict[str, str]
    plan: Plan
    raw: dict[str, Any] = field(default_factory=dict)

    def env(self, client: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "SSL_CERT_DIR")}
        env.pop("SSL_CERT_FILE", None)
        env["PYTHONUNBUFFERED"] = "1"
        if client == "reference":
            env["PYTHONPATH"] = str(self.reference_dir)
            env["SSL_CERT_FILE"] = self.bundle
        return env

    def spec(self, client: str, workload: str, **extra: Any) -> dict[str, Any]:
        spec: dict[str, Any] = {
            "workload": workload,
            "url": self.url,
            "ca_file": self.bundle,
            "key_dir": self.key_dirs.get(client),
        }
        spec.update(extra)
        return spec

    def popen(self, client: str, spec: dict[str, Any], stderr: IO[str]) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [sys.executable, str(WORKER[client]), json.dumps(spec)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
            cwd=BENCHES,
            env=self.env(client),
        )

    def run(self, client: str, spec: dict[str, Any]) -> dict[str, Any]:
        """Run one worker to completion and return its JSON result."""
        with tempfile.TemporaryFile(mode="w+") as stderr:
            proc = self.popen(client, spec, stderr)
            try:
                out, _ = proc.communicate(timeout=self.plan.timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.communicate()
                raise BenchError(f"{client} {spec['workload']} timed out") from None
            stderr.seek(0)
            return _parse_result(client, spec, out, stderr.read(), proc.returncode)


def _parse_result(
    client: str, spec: dict[str, Any], out: str, err: str, code: int | None
) -> dict[str, Any]:
    lines = [line for line in out.splitlines() if line.strip()]
    try:
        result: dict[str, Any] = json.loads(lines[-1])
    except (IndexError, json.JSONDecodeError):
        raise BenchError(
            f"{client} {spec['workload']} gave no result (exit {code}):\n{err[-3000:]}"
        ) from None
    if "error" in result or code != 0:
        raise BenchError(
            f"{client} {spec['workload']} failed: {result.get('error')}\n"
            f"{result.get('traceback', '')}\n{err[-2000:]}"
        )
    return result


# -- memory scan ---------------------------------------------------------------------------


def scan_memory(pid: int, needles: dict[str, bytes]) -> dict[str, dict[str, int]]:
    """Count occurrences of each needle in the readable memory of ``pid``, per region kind."""
    counts: dict[str, dict[str, int]] = {name: {} for name in needles}
    longest = max(len(n) for n in needles.values())
    chunk = 16 * MIB
    with open(f"/proc/{pid}/maps") as maps_file:
        regions = maps_file.read().splitlines()
    with open(f"/proc/{pid}/mem", "rb", buffering=0) as mem:
        for line in regions:
            parts = line.split(maxsplit=5)
            if len(parts) < 5 or not parts[1].startswith("r"):
                continue
            name = parts[5].strip() if len(parts) > 5 else ""
            if name in ("[vvar]", "[vvar_vclock]", "[vsyscall]"):
                continue
            kind = name if name.startswith("[") else ("file" if name else "anon")
            start, end = (int(x, 16) for x in parts[0].split("-"))
            pos = start
            while pos < end:
                size = min(chunk + longest - 1, end - pos)
                try:
                    mem.seek(pos)
                    data = mem.read(size)
                except (OSError, OverflowError, ValueError):
                    break
                limit = min(chunk, end - pos)  # matches starting past this belong to the next
                for needle_name, needle in needles.items():
                    found = 0
                    index = data.find(needle)
                    while 0 <= index < limit:
                        found += 1
                        index = data.find(needle, index + 1)
                    if found:
                        bucket = counts[needle_name]
                        bucket[kind] = bucket.get(kind, 0) + found
                pos += chunk
    return counts


def memscan(workers: Workers, client: str, send: bool) -> dict[str, Any]:
    """Run the memscan worker, scan its memory while it waits, then let it exit."""
    request_marker = "NOMYO-REQMARK-" + secrets.token_hex(12)
    reply_marker = "NOMYO-RPLMARK-" + secrets.token_hex(12)
    spec = workers.spec(
        client,
        "memscan",
        send=send,
        request_marker=[ord(c) for c in request_marker],
        reply_marker=[ord(c) for c in reply_marker],
    )
    with tempfile.TemporaryFile(mode="w+") as stderr:
        proc = workers.popen(client, spec, stderr)
        assert proc.stdout is not None and proc.stdin is not None
        try:
            line = _readline(proc.stdout, workers.plan.timeout)
            try:
                ready = json.loads(line)
            except json.JSONDecodeError:
                ready = {}
            if not ready.get("ready"):
                proc.kill()
                out, _ = proc.communicate()
                stderr.seek(0)
                _parse_result(client, spec, line + out, stderr.read(), proc.returncode)
                raise BenchError(f"{client} memscan never became ready")
            scan_error = None
            try:
                counts: dict[str, dict[str, int]] | None = scan_memory(
                    int(ready["pid"]),
                    {"request": request_marker.encode(), "reply": reply_marker.encode()},
                )
            except OSError as exc:  # no ptrace permission (e.g. Yama scope 2, containers)
                counts, scan_error = None, f"{type(exc).__name__}: {exc}"
                log(f"{client} memscan: cannot read the worker's memory: {scan_error}")
            proc.stdin.write("\n")
            proc.stdin.flush()
            out, _ = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        stderr.seek(0)
        result = _parse_result(client, spec, out, stderr.read(), proc.returncode)
    result["by_region"] = counts
    result["scan_error"] = scan_error
    if any(result.get("retained_references", {}).values()):
        log(f"{client} memscan: the client kept references to the caller's marker strs")
    result["request_copies"] = None if counts is None else sum(counts["request"].values())
    result["reply_copies"] = None if counts is None else sum(counts["reply"].values())
    return result


# -- the run -------------------------------------------------------------------------------


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


#: (a), (c) and (d) run in this many blocks per client, alternating the clients.
BLOCKS = 4


def split(n: int, blocks: int) -> list[int]:
    """``n`` as ``blocks`` near-equal positive parts (fewer when ``n`` is smaller)."""
    blocks = max(1, min(blocks, n))
    return [n // blocks + (i < n % blocks) for i in range(blocks)]


def in_rsa_ops(timed: dict[str, Any]) -> float:
    """Median over the requests of (a) of request CPU / the RSA op timed right after it:
    each pair meets the machine at the same moment, so its drifting speed cancels."""
    pairs: list[tuple[float, float]] = list(zip(timed["cpu_ms"], timed["rsa_cpu_ms"], strict=True))
    return statistics.median(cpu / rsa for cpu, rsa in pairs)


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


# -- report --------------------------------------------------------------------------------


@dataclass
class Row:
    metric: str
    reference: float | None
    ours: float | None
    fmt: str = "{:.1f}"
    lower_is_better: bool | None = True  # None: no ratio
    text: tuple[str, str] | None = None  # preformatted (reference, ours) cells

    def cells(self) -> list[str]:
        if self.text is not None:
            return [self.metric, *self.text, "—"]

        def show(value: float | None) -> str:
            return "—" if value is None else self.fmt.format(value)

        ratio = "—"
        ref, ours = self.reference, self.ours
        if self.lower_is_better is not None and ref is not None and ours is not None:
            num, den = (ref, ours) if self.lower_is_better else (ours, ref)
            if den > 0:
                ratio = f"{num / den:.2f}x"
        return [self.metric, show(ref), show(ours), ratio]


def size_label(size: int) -> str:
    return f"{size // MIB} MiB" if size >= MIB else f"{size // KIB} KiB"


def build_rows(raw: dict[str, Any], plan: Plan) -> list[Row]:
    a, b, c = raw["a_latency"], raw["b_rsa"], raw["c_latency_rtt20"]
    d, e, f, g, h = (
        raw["d_sizes"],
        raw["e_concurrency"],
        raw["f_cold"],
        raw["g_rss"],
        raw["h_memscan"],
    )
    # The unit of (b): one RSA-4096 private-key op of each client's own library, CPU time,
    # timed once after each request of (a) (so under the same machine conditions).
    rsa_ref = a["reference"]["rsa_cpu_median_ms"]
    rsa_core = a["ours"]["rsa_cpu_median_ms"]  # _core.open_bytes
    fl = raw["b_floor"]
    floor = rsa_core + fl["seal"]["median_ms"] + fl["get_after_gap"]["median_ms"]
    rtt_ms = plan.delay * 2000
    rows = [
        Row(
            f"(a) warm small request, median latency, ms (N={plan.latency_n})",
            a["reference"]["median_ms"],
            a["ours"]["median_ms"],
            "{:.2f}",
        ),
        Row(
            "(b) client CPU time per small request, median over the requests of (a), ms",
            a["reference"]["cpu_median_ms"],
            a["ours"]["cpu_median_ms"],
            "{:.2f}",
        ),
        Row(
            "(b) one RSA-4096 OAEP private-key op, CPU median, one timed after each request "
            "of (a), ms (cryptography / _core.open_bytes)",
            rsa_ref,
            rsa_core,
            "{:.2f}",
        ),
        Row(
            "(b) client CPU per request, in RSA-4096 private-key ops of its own library: "
            "median of each request's CPU over the op timed right after it",
            in_rsa_ops(a["reference"]),
            in_rsa_ops(a["ours"]),
            "{:.2f}",
        ),
        Row(
            "(b)   parts without the RSA op: seal / a key GET on the same transport, back to "
            f"back / after {FLOOR_GAP * 1000:.0f} ms idle (as while the router works), "
            "CPU median ms",
            None,
            None,
            text=("—", " / ".join(f"{fl[k]['median_ms']:.3f}" for k in FLOOR_PARTS)),
        ),
        Row(
            "(b)   floor here: RSA op + seal + GET after the idle gap, in RSA ops; "
            "the request's CPU above it, ms",
            None,
            None,
            text=(
                "—",
                f"{floor / rsa_core:.2f}; {a['ours']['cpu_median_ms'] - floor:.2f}",
            ),
        ),
        Row(
            "(b) client CPU per request, total over (a) / N (includes machine stalls), ms",
            a["reference"]["cpu_ms_per_request"],
            a["ours"]["cpu_ms_per_request"],
            "{:.2f}",
        ),
        Row(
            f"(b) machine noise: the same RSA op, back to back in a worker of its own, wall "
            f"time of {plan.rsa_n}, median / p90 / max, ms",
            None,
            None,
            text=(_spread(b["reference"]), _spread(b["ours"])),
        ),
        Row(
            f"(c) warm small request at {rtt_ms:.0f} ms RTT, median ms (N={plan.proxy_n})",
            c["reference"]["median_ms"],
            c["ours"]["median_ms"],
        ),
        Row(
            f"(c) requests within RTT + 15 ms ({rtt_ms + 15:.0f} ms), share",
            _share_within(c["reference"], rtt_ms + 15),
            _share_within(c["ours"], rtt_ms + 15),
            "{:.0%}",
            lower_is_better=None,
        ),
    ]
    share = raw["d_router_share"]["sizes"]
    for size, n in plan.sizes:
        key = str(size)
        rows.append(
            Row(
                f"(d) {size_label(size)} echoed, median latency, ms (N={n})",
                d["reference"]["sizes"][key]["median_ms"],
                d["ours"]["sizes"][key]["median_ms"],
            )
        )
        if key in share:
            floor = share[key]["median_ms"]
            best = d["reference"]["sizes"][key]["median_ms"] / floor
            rows.append(
                Row(
                    f"(d)   {size_label(size)}: the router's share alone (a pre-sealed body "
                    "posted, the reply read, not opened), ms; the best ratio it leaves",
                    None,
                    None,
                    text=("—", f"{floor:.1f}; at best {best:.1f}x"),
                )
            )
    total = plan.concurrency * plan.rounds
    rows += [
        Row(
            f"(e) {plan.concurrency} concurrent on one client, req/s ({total} requests)",
            e["reference"]["req_per_s"],
            e["ours"]["req_per_s"],
            lower_is_better=False,
        ),
        Row(
            "(e) max event-loop stall during (e), ms",
            e["reference"]["max_loop_stall_ms"],
            e["ours"]["max_loop_stall_ms"],
        ),
        Row(
            "(e) 1 ms ticks late by more than 10 ms during (e), of all ticks",
            None,
            None,
            text=(_stalls(e["reference"], ""), _stalls(e["ours"], "")),
        ),
        Row(
            "(e) control: the same loop idle, no request in flight, max stall ms / late ticks",
            None,
            None,
            text=(_idle(e["reference"]), _idle(e["ours"])),
        ),
        Row(
            f"(f) cold start, new process -> first reply, fresh key, median of {plan.cold_runs}, "
            "ms",
            f["reference_ephemeral"]["median_total_ms"],
            f["ours_ephemeral"]["median_total_ms"],
            "{:.0f}",
        ),
        Row(
            "(f)   of which: key generation (generate_keys on the first request), median, ms",
            f["reference_ephemeral"]["median_keygen_ms"],
            f["ours_ephemeral"]["median_keygen_ms"],
            "{:.0f}",
        ),
        Row(
            "(f)   the same start without the key generation (per run), median, ms",
            f["reference_ephemeral"]["median_without_keygen_ms"],
            f["ours_ephemeral"]["median_without_keygen_ms"],
            "{:.0f}",
        ),
        Row(
            f"(f) cold start with persisted key dir, median of {plan.cold_runs}, ms",
            f["reference_keydir"]["median_total_ms"],
            f["ours_keydir"]["median_total_ms"],
            "{:.0f}",
        ),
        Row(
            "(f)   of which: import of the package, ms",
            f["reference_keydir"]["median_import_ms"],
            f["ours_keydir"]["median_import_ms"],
            "{:.0f}",
        ),
        Row(
            "(f) import + construct + first request with persisted key dir (in the new "
            "process, without interpreter start-up), median, ms",
            f["reference_keydir"]["median_in_process_ms"],
            f["ours_keydir"]["median_in_process_ms"],
            "{:.0f}",
        ),
        Row(
            "(f)   the same minus one warm request (a), ms",
            f["reference_keydir"]["median_in_process_ms"] - a["reference"]["median_ms"],
            f["ours_keydir"]["median_in_process_ms"] - a["ours"]["median_ms"],
            "{:.0f}",
            lower_is_better=None,
        ),
        Row(
            f"(g) peak RSS, {size_label(plan.rss_size)} request, MiB",
            g["reference"]["peak_rss_kib"] / KIB,
            g["ours"]["peak_rss_kib"] / KIB,
        ),
        Row(
            "(g) peak RSS growth during that request, MiB",
            g["reference"]["delta_kib"] / KIB,
            g["ours"]["delta_kib"] / KIB,
        ),
        Row(
            "(h) request-only marker: copies left in memory (caller dropped it; ideal 0)",
            h["reference"]["request_copies"],
            h["ours"]["request_copies"],
            "{:.0f}",
            lower_is_better=None,
        ),
        Row(
            "(h) reply marker: copies in memory (caller holds 1; ideal 1)",
            h["reference"]["reply_copies"],
            h["ours"]["reply_copies"],
            "{:.0f}",
            lower_is_better=None,
        ),
        Row(
            "(h) control, no request sent: request / reply marker copies",
            None,
            None,
            text=(_pair(h["reference_control"]), _pair(h["ours_control"])),
        ),
    ]
    return rows


def _spread(rsa: dict[str, Any]) -> str:
    return f"{rsa['median_ms']:.2f} / {rsa['p90_ms']:.2f} / {rsa['max_ms']:.1f}"


def _share_within(latency: dict[str, Any], bound_ms: float) -> float:
    values: list[float] = latency["latencies_ms"]
    return sum(x <= bound_ms for x in values) / len(values)


def _stalls(result: dict[str, Any], prefix: str) -> str:
    return f"{result[prefix + 'stalls_over_10ms']} of {result[prefix + 'ticks']}"


def _idle(result: dict[str, Any]) -> str:
    return f"{result['idle_max_loop_stall_ms']:.1f} / {_stalls(result, 'idle_')}"


def _pair(scan: dict[str, Any]) -> str:
    if scan["request_copies"] is None:
        return "n/a (memory not readable)"
    return f"{scan['request_copies']} / {scan['reply_copies']}"


def page_touch_us(size: int = 64 * MIB) -> float:
    """Cost of the first touch of one fresh 4 KiB page, microseconds (median of 3 runs).

    A healthy machine pays a fraction of a microsecond; a VM whose host backs guest memory
    lazily or reclaims it pays tens. Every allocation-heavy step of both clients (and of
    the router) scales with it, so the report shows it next to the numbers.
    """
    runs = []
    for _ in range(3):
        area = mmap.mmap(-1, size)
        try:
            start = time.perf_counter()
            for offset in range(0, size, 4096):
                area[offset] = 1
            runs.append((time.perf_counter() - start) / (size // 4096) * 1e6)
        finally:
            area.close()
    return statistics.median(runs)


def steal_seconds() -> float:
    """CPU time the hypervisor took from this VM so far, all CPUs (0 when not reported)."""
    with contextlib.suppress(OSError, IndexError, ValueError), open("/proc/stat") as stat:
        fields = stat.readline().split()
        if fields[0] == "cpu" and len(fields) > 8:
            return int(fields[8]) / os.sysconf("SC_CLK_TCK")
    return 0.0


def machine_info() -> dict[str, str]:
    cpu = "unknown"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as cpuinfo:
        for line in cpuinfo:
            if line.lower().startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC"),
        "machine": platform.machine(),
        "cpu": cpu,
        "cores": str(os.cpu_count()),
        "python": platform.python_version(),
        "loadavg": " ".join(f"{x:.2f}" for x in os.getloadavg()),
    }


def render(rows: list[Row], info: dict[str, str], smoke: bool, plot: str | None) -> str:
    header = ["workload", "reference 0.2.9", "nomyo-rs", "ours better by"]
    lines = [
        "# nomyo-rs vs nomyo 0.2.9 (reference)" + (" — SMOKE run, not meaningful" if smoke else ""),
        "",
        f"- date: {info['date']}",
        f"- machine: {info['machine']}, CPU: {info['cpu']}, cores: {info['cores']}, "
        f"load average at the end: {info['loadavg']}",
        f"- python: {info['python']}",
        f"- machine health: first touch of a fresh 4 KiB page {info['page_touch']} us "
        "(start / end of the run; a healthy machine ~0.3 us); CPU time stolen by the "
        f"hypervisor during the run: {info['steal']}",
        "- router: nomyo.testing.DevRouter over HTTPS (RSA-4096 key), own process, "
        "same machine; trust store: certifi + test CA for both clients",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "|".join(["---", "---:", "---:", "---:"]) + "|",
    ]
    lines += ["| " + " | ".join(row.cells()) + " |" for row in rows]
    lines += [
        "",
        '"ours better by": reference / ours for times, RSS and CPU; ours / reference for '
        "throughput (above 1 = nomyo-rs is better). Latencies are medians. (a), (c) and (d) "
        f"run in {BLOCKS} blocks per client that alternate the clients (reference, ours, ours, "
        "reference, ...), each block in a fresh worker after its own warm-up, so that both "
        "clients meet the machine's drifting speed alike. (b) CPU is "
        "time.process_time() of the worker (all threads) around each request of (a) (on a "
        "VM, time the hypervisor takes while a thread runs is counted as that thread's CPU, "
        "which the total / N row includes). The RSA unit is one OAEP-SHA256 private-key "
        "operation of the client's own library (ours: _core.open_bytes of a 1-byte "
        "envelope, so AES-GCM and a locked buffer too), timed (CPU) right after each request "
        "of (a) in the same worker; 'in RSA-4096 private-key ops' is the median of each "
        "request's CPU over its own op, because this machine's speed drifts (the same op "
        "took 1.9 and 2.9 ms seconds apart). The client's irreducible work per request is "
        "one such op, to open the reply. The (b) floor adds what our request "
        "cannot avoid beside that op, measured apart in one worker: sealing the payload, and "
        "a server-key GET on the client's own transport and loop after the loop sat idle "
        "as long as the router takes (thread wake-ups, TLS, HTTP, kernel; no envelope "
        "crypto, no client logic). Above the floor: the larger POST and reply, opening "
        "beyond the bare RSA op, and the client's Python code. "
        "(e) control: the same 1 ms ticker in "
        "the same worker, with the client idle, for as long as (e) took (at most 10 s). "
        "(c) goes through a loopback proxy adding 10 ms per direction per chunk and one "
        "round trip per new connection. (f) is measured from spawning the worker process "
        "(interpreter start-up included) to the first decrypted reply; 'fresh key' "
        "generates an RSA-4096 key pair in the process, which dominates and varies a lot "
        "(a random number of prime candidates: a factor of ten between runs); the key "
        "generation rows time each client's own generate_keys in the same runs. Both "
        "clients' bytecode is precompiled, as pip does on install.",
        "",
        "(h): the request carries two markers: one only in the request (a first user "
        "message) and one the echo backend returns (the last user message). After the "
        "request the worker keeps only the reply dict, wipes and drops its own marker strs "
        "(nothing else referenced them), runs gc.collect(), and the parent counts each "
        "marker's UTF-8 bytes in every readable mapping of /proc/PID/mem. Ideal: request "
        "0, reply 1 (the reply's content str the caller holds). Anything more is a "
        "plaintext copy made by the client and left behind, live or in freed-but-not-"
        "overwritten memory (CPython's allocators do not clear freed memory). The control "
        "row runs the same harness without a client (expected 0 / 1).",
    ]
    if plot:
        lines += ["", f"![latency vs payload size]({plot})"]
    return "\n".join(lines) + "\n"


def plot_sizes(raw: dict[str, Any], plan: Plan, path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log("matplotlib is not installed: no plot (pip install matplotlib)")
        return False
    sizes = [size for size, _ in plan.sizes]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for client, label, marker in (
        ("reference", "nomyo 0.2.9 (reference)", "s"),
        ("ours", "nomyo-rs", "o"),
    ):
        medians = [raw["d_sizes"][client]["sizes"][str(s)]["median_ms"] for s in sizes]
        ax.plot(sizes, medians, marker=marker, label=label)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xticks(sizes, [size_label(s) for s in sizes])
    ax.set_xlabel("request payload (echoed back)")
    ax.set_ylabel("median latency, ms (log)")
    ax.set_title("Secure completion latency vs payload size (loopback HTTPS)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


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
