"""The rows of the comparison table: each metric of the raw numbers, for both clients,
with the ratio."""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Any

from _plan import FLOOR_GAP, FLOOR_PARTS, KIB, MIB, Plan

__all__ = ["Row", "build_rows", "in_rsa_ops", "size_label"]


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


def in_rsa_ops(timed: dict[str, Any]) -> float:
    """Median over the requests of (a) of request CPU / the RSA op timed right after it:
    each pair meets the machine at the same moment, so its drifting speed cancels."""
    pairs: list[tuple[float, float]] = list(zip(timed["cpu_ms"], timed["rsa_cpu_ms"], strict=True))
    return statistics.median(cpu / rsa for cpu, rsa in pairs)


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
