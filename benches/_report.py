"""The report of ``compare.py``: the markdown page with the table and its notes, and the
latency-vs-size plot."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from _harness import log
from _plan import BLOCKS, Plan
from _table import Row, size_label

__all__ = ["plot_sizes", "render"]


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
