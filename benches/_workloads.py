"""Client-agnostic benchmark workloads, shared by ``_worker_ours.py`` and ``_worker_reference.py``.

This module never imports ``nomyo``: each worker passes an ``Adapter`` that imports its own
client lazily (so that a cold-start run times the import too). A worker is started as
``python benches/_worker_<client>.py '<json spec>'`` (or with the spec on stdin) and prints
one JSON object on its last stdout line. The ``memscan`` workload first prints a
``{"ready": true, "pid": ...}`` line and waits for a line on stdin before it exits.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import ctypes
import gc
import json
import os
import random
import resource
import statistics
import sys
import time
import traceback
from collections.abc import Callable, Coroutine
from typing import Any, Protocol

MODEL = "bench-model"
SMALL_PROMPT = "Hello! In one sentence: why does end-to-end encryption matter for LLM prompts?"
_STDOUT = sys.stdout


def monotonic() -> float:
    """A system-wide monotonic clock, comparable between processes (CLOCK_MONOTONIC)."""
    return time.clock_gettime(time.CLOCK_MONOTONIC)


class Adapter(Protocol):
    """What a worker provides for its client."""

    name: str

    def load(self) -> None:
        """Import the client package."""

    def make_client(self, spec: dict[str, Any], url: str) -> Any:
        """Construct a SecureChatCompletion for ``url`` using the spec's key dir / CA file."""

    async def create(self, client: Any, messages: list[dict[str, Any]]) -> dict[str, Any]:
        """One chat completion."""

    async def close(self, client: Any) -> None:
        """Release the client's resources (if it has any)."""

    def gen_keys(self, key_dir: str) -> None:
        """Generate and save a 4096-bit key pair in ``key_dir`` with this client."""

    def rsa_op(self, key_dir: str) -> Callable[[], object]:
        """One RSA-4096 OAEP private-key operation with this client's crypto, prepared
        (key loaded, ciphertext made): each call of the result runs one."""

    def key_class(self) -> type:
        """The class whose ``generate_keys`` makes a client's key pair when it has none."""


def payload_text(size: int | None, seed: int = 1) -> str:
    """The user message: a realistic prompt, or ``size`` bytes of ASCII (base64 text)."""
    if not size:
        return SMALL_PROMPT
    rng = random.Random(seed)
    raw = rng.randbytes((size * 3) // 4 + 3)
    return base64.b64encode(raw).decode("ascii")[:size]


def _messages(text: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": text}]


def _reply_text(reply: dict[str, Any]) -> str:
    content = reply["choices"][0]["message"]["content"]
    if not isinstance(content, str):
        raise RuntimeError(f"unexpected reply content: {type(content).__name__}")
    return content


def _median_ms(values: list[float]) -> float:
    return statistics.median(values) * 1000.0


async def _timed_requests(
    adapter: Adapter,
    client: Any,
    text: str,
    n: int,
    warmup: int,
    rsa_op: Callable[[], object] | None = None,
) -> dict[str, Any]:
    """``n`` timed requests after ``warmup``; with ``rsa_op``, one RSA op is timed (CPU)
    after each request, outside the request's window, so that both medians sample the
    machine at the same moments (on a VM its speed can drift by a third within seconds)."""
    messages = _messages(text)
    for _ in range(warmup):
        if _reply_text(await adapter.create(client, messages)) != text:
            raise RuntimeError("echo mismatch during warm-up")
    latencies: list[float] = []
    cpu_each: list[float] = []
    rsa_cpu: list[float] = []
    cpu0 = time.process_time()
    for _ in range(n):
        start = time.perf_counter()
        cpu_start = time.process_time()
        reply = await adapter.create(client, messages)
        cpu_each.append(time.process_time() - cpu_start)
        latencies.append(time.perf_counter() - start)
        if _reply_text(reply) != text:
            raise RuntimeError("echo mismatch")
        del reply
        if rsa_op is not None:
            cpu_start = time.process_time()
            rsa_op()
            rsa_cpu.append(time.process_time() - cpu_start)
    cpu = time.process_time() - cpu0 - sum(rsa_cpu)  # all threads, between requests too
    result = {
        "n": n,
        "latencies_ms": [x * 1000.0 for x in latencies],
        "median_ms": _median_ms(latencies),
        "min_ms": min(latencies) * 1000.0,
        "cpu_ms_per_request": cpu / n * 1000.0,
        "cpu_median_ms": _median_ms(cpu_each),
        "cpu_ms": [x * 1000.0 for x in cpu_each],
    }
    if rsa_cpu:
        result["rsa_cpu_median_ms"] = _median_ms(rsa_cpu)
        result["rsa_cpu_ms"] = [x * 1000.0 for x in rsa_cpu]
    return result


async def wl_latency(adapter: Adapter, spec: dict[str, Any]) -> dict[str, Any]:
    """Warm latency (and client CPU time) of N requests of one payload size, after warm-up."""
    adapter.load()
    client = adapter.make_client(spec, spec["url"])
    try:
        text = payload_text(spec.get("size"))
        rsa_op = adapter.rsa_op(spec["key_dir"]) if spec.get("interleave_rsa") else None
        return await _timed_requests(
            adapter, client, text, spec["n"], spec.get("warmup", 1), rsa_op
        )
    finally:
        await adapter.close(client)


async def wl_sizes(adapter: Adapter, spec: dict[str, Any]) -> dict[str, Any]:
    """Warm latency per payload size (echoed back), smallest first, on one client."""
    adapter.load()
    client = adapter.make_client(spec, spec["url"])
    results: dict[str, Any] = {}
    try:
        for size, n in spec["sizes"]:
            text = payload_text(size)
            results[str(size)] = await _timed_requests(
                adapter, client, text, n, spec.get("warmup", 1)
            )
            del text
            gc.collect()
    finally:
        await adapter.close(client)
    return {"sizes": results}


async def wl_rsa(adapter: Adapter, spec: dict[str, Any]) -> dict[str, Any]:
    """Cost of one RSA-4096 OAEP private-key operation with this client's crypto."""
    adapter.load()
    rsa_op = adapter.rsa_op(spec["key_dir"])
    rsa_op()
    times = []
    for _ in range(spec["n"]):
        start = time.perf_counter()
        rsa_op()
        times.append(time.perf_counter() - start)
    ordered = sorted(times)
    return {
        "n": len(times),
        "median_ms": _median_ms(times),
        "min_ms": ordered[0] * 1000.0,
        "p90_ms": ordered[int(0.9 * (len(ordered) - 1))] * 1000.0,
        "max_ms": ordered[-1] * 1000.0,
    }


async def wl_router_share(adapter: Adapter, spec: dict[str, Any]) -> dict[str, Any]:
    """The router's share of the echoed sizes (``router_share_seconds``; our worker only)."""
    share = getattr(adapter, "router_share_seconds", None)
    if share is None:
        raise ValueError(f"{adapter.name} cannot measure the router's share")
    results = {}
    for size, n in spec["sizes"]:
        times = share(spec, size, n)
        results[str(size)] = {"n": n, "median_ms": _median_ms(times)}
    return {"sizes": results}


async def wl_floor(adapter: Adapter, spec: dict[str, Any]) -> dict[str, Any]:
    """What a small request costs beyond its RSA op when the client does nothing else:
    sealing, and a request on the same transport after the loop sat idle (our worker only;
    see ``floor_cpu_seconds``). With the RSA op it is the floor of target (b) here."""
    floor = getattr(adapter, "floor_cpu_seconds", None)
    if floor is None:
        raise ValueError(f"{adapter.name} cannot measure the floor")
    adapter.load()
    times = await floor(spec, spec["n"], spec["gap"])
    return {name: {"n": len(v), "median_ms": _median_ms(v)} for name, v in times.items()}


async def wl_count(adapter: Adapter, spec: dict[str, Any]) -> dict[str, Any]:
    """Warm up, then run ``n`` small requests (``what="requests"``) or ``n`` RSA private-key
    ops (``what="rsa"``) and nothing else: run under an instruction counter with two
    values of ``n``, the difference is the cost of ``n`` of them (``instructions.py``)."""
    adapter.load()
    n = spec["n"]
    if spec["what"] == "rsa":
        rsa_op = adapter.rsa_op(spec["key_dir"])
        for _ in range(n):
            rsa_op()
        return {"n": n}
    client = adapter.make_client(spec, spec["url"])
    messages = _messages(SMALL_PROMPT)
    try:
        for _ in range(spec.get("warmup", 3) + n):
            if _reply_text(await adapter.create(client, messages)) != SMALL_PROMPT:
                raise RuntimeError("echo mismatch")
    finally:
        await adapter.close(client)
    return {"n": n}


class _Ticker:
    """Measures event-loop stalls: sleeps 1 ms in a loop and records the worst lateness."""

    STALL = 0.010  # the target's bound: ticks later than this count as stalls

    def __init__(self, period: float = 0.001) -> None:
        self.period = period
        self.max_late = 0.0
        self.ticks = 0
        self.stalls = 0
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        while True:
            start = time.perf_counter()
            await asyncio.sleep(self.period)
            late = time.perf_counter() - start - self.period
            self.ticks += 1
            self.stalls += late > self.STALL
            self.max_late = max(self.max_late, late)

    def start(self) -> None:
        self.max_late = 0.0
        self.ticks = 0
        self.stalls = 0
        self._task = asyncio.ensure_future(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


async def wl_concurrency(adapter: Adapter, spec: dict[str, Any]) -> dict[str, Any]:
    """Throughput of ``concurrency`` simultaneous requests on one client, and loop stalls."""
    adapter.load()
    client = adapter.make_client(spec, spec["url"])
    concurrency = spec["concurrency"]
    text = payload_text(spec.get("size"))
    messages = _messages(text)

    async def one() -> None:
        if _reply_text(await adapter.create(client, messages)) != text:
            raise RuntimeError("echo mismatch")

    async def round_() -> None:
        await asyncio.gather(*(one() for _ in range(concurrency)))

    ticker = _Ticker()
    try:
        await one()
        for _ in range(spec.get("warmup_rounds", 1)):
            await round_()
        rounds = spec["rounds"]
        ticker.start()
        await asyncio.sleep(0.01)
        cpu0 = time.process_time()
        start = time.perf_counter()
        for _ in range(rounds):
            await round_()
        elapsed = time.perf_counter() - start
        cpu = time.process_time() - cpu0
        await ticker.stop()
        busy = (ticker.max_late, ticker.ticks, ticker.stalls)
        # Control: the same ticker in the same process with no request in flight, for as
        # long as the measurement took (capped). What it sees is the machine, not a client.
        ticker.start()
        await asyncio.sleep(min(elapsed, spec.get("idle_cap_s", 10.0)))
        await ticker.stop()
        idle = (ticker.max_late, ticker.ticks, ticker.stalls)
    finally:
        await ticker.stop()
        await adapter.close(client)
    total = concurrency * rounds
    return {
        "requests": total,
        "elapsed_s": elapsed,
        "req_per_s": total / elapsed,
        "cpu_ms_per_request": cpu / total * 1000.0,
        "max_loop_stall_ms": busy[0] * 1000.0,
        "ticks": busy[1],
        "stalls_over_10ms": busy[2],
        "idle_max_loop_stall_ms": idle[0] * 1000.0,
        "idle_ticks": idle[1],
        "idle_stalls_over_10ms": idle[2],
    }


def _time_calls(cls: object, name: str) -> list[float]:
    """Wrap ``cls.name`` so that every call's duration (s) is appended to the returned list."""
    durations: list[float] = []
    original = getattr(cls, name)

    def timed(*args: Any, **kwargs: Any) -> Any:
        start = monotonic()
        try:
            return original(*args, **kwargs)
        finally:
            durations.append(monotonic() - start)

    setattr(cls, name, timed)
    return durations


async def wl_cold(adapter: Adapter, spec: dict[str, Any]) -> dict[str, Any]:
    """Import + construct + first request in this fresh process (key dir optional).

    Key generation (the client's ``generate_keys``, which both clients call on the first
    request when they have no key) is timed separately: RSA-4096 key generation takes a
    random number of prime candidates, so it scatters over a factor of ten and dominates a
    fresh-key start.
    """
    t0 = monotonic()
    adapter.load()
    t1 = monotonic()
    # Ours makes the process-wide pair in the background from the first client's construction
    # (nomyo._ephemeral._make_pair), overlapping the server key fetch and the TLS connect.
    hook = getattr(adapter, "keygen_hook", None)
    target, name = hook() if hook is not None else (adapter.key_class(), "generate_keys")
    keygen = _time_calls(target, name)
    client = adapter.make_client(spec, spec["url"])
    t2 = monotonic()
    reply = await adapter.create(client, _messages(SMALL_PROMPT))
    t3 = monotonic()
    if _reply_text(reply) != SMALL_PROMPT:
        raise RuntimeError("echo mismatch")
    await adapter.close(client)
    return {
        "t_done": t3,
        "import_ms": (t1 - t0) * 1000.0,
        "construct_ms": (t2 - t1) * 1000.0,
        "first_request_ms": (t3 - t2) * 1000.0,
        "in_process_ms": (t3 - t0) * 1000.0,
        "keygen_ms": sum(keygen) * 1000.0,
    }


def _rss_kib() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


async def wl_rss(adapter: Adapter, spec: dict[str, Any]) -> dict[str, Any]:
    """Peak RSS (ru_maxrss) around one large request, after a warm small one."""
    adapter.load()
    client = adapter.make_client(spec, spec["url"])
    try:
        await adapter.create(client, _messages(SMALL_PROMPT))
        gc.collect()
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        text = payload_text(spec["size"])
        after_text = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        reply = await adapter.create(client, _messages(text))
        if _reply_text(reply) != text:
            raise RuntimeError("echo mismatch")
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        del reply, text
        gc.collect()
        rss_after = _rss_kib()
    finally:
        await adapter.close(client)
    return {
        "size": spec["size"],
        "peak_rss_kib": peak,
        "peak_before_kib": before,
        "peak_after_payload_built_kib": after_text,
        "delta_kib": peak - after_text,
        "rss_after_kib": rss_after,
    }


def _allow_ptrace() -> None:
    """Let the parent read /proc/PID/mem even under Yama ptrace_scope=1."""
    pr_set_ptracer, pr_set_ptracer_any = 0x59616D61, ctypes.c_ulong(-1).value
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(pr_set_ptracer, ctypes.c_ulong(pr_set_ptracer_any), 0, 0, 0)


def _wipe_str(text: str) -> None:
    """Zero the character data of a compact ASCII str in place (the harness's own objects).

    Dropping a str does not clear its bytes (CPython's allocator keeps them until reused),
    so the harness wipes the markers it built itself; what remains are copies made by the
    client. Only used on strs that nothing else may reference (checked by the caller).
    """
    if not text.isascii():
        raise ValueError("only ASCII markers can be wiped")
    offset = sys.getsizeof(text) - len(text) - 1  # header size of a compact ASCII str
    ctypes.memset(id(text) + offset, 0, len(text))


async def _memscan_request(
    adapter: Adapter, spec: dict[str, Any], messages: list[dict[str, Any]]
) -> dict[str, Any]:
    if not spec.get("send", True):
        # Control: no client. The "reply" holds a separate copy of the reply marker, as a
        # real reply does, so the control counts only what the harness itself leaves.
        copy = "".join(map(chr, spec["reply_marker"]))
        return {"choices": [{"message": {"content": copy}}]}
    client = adapter.make_client(spec, spec["url"])
    try:
        return await adapter.create(client, messages)
    finally:
        await adapter.close(client)


def wl_memscan(adapter: Adapter, spec: dict[str, Any]) -> dict[str, Any]:
    """Send one request carrying two markers, drop everything but the reply, and wait.

    The request marker is the first user message and only ever travels in the request; the
    reply marker is the last user message, which the echo backend sends back, so the reply
    dict the caller keeps holds it once. The markers arrive as lists of code points, so
    neither the command line nor the spec holds their bytes; ``"".join(map(chr, ...))``
    builds each as exactly one str object, which the harness wipes before dropping it.
    """
    _allow_ptrace()
    adapter.load()
    if spec.get("send", True):
        # Warm up the client machinery (imports, TLS, key loading) with a marker-free request
        # so that one-time allocations do not hide the marker's copies.
        asyncio.run(_warm(adapter, spec))
    request_marker = "".join(map(chr, spec["request_marker"]))
    reply_marker = "".join(map(chr, spec["reply_marker"]))
    messages = [
        {"role": "user", "content": request_marker},
        {"role": "user", "content": reply_marker},
    ]
    reply = asyncio.run(_memscan_request(adapter, spec, messages))
    del messages
    gc.collect()
    # 2 = our variable + getrefcount's argument: more means the client kept a reference.
    retained = {
        "request": sys.getrefcount(request_marker) - 2,
        "reply": sys.getrefcount(reply_marker) - 2,
    }
    held = _reply_text(reply) == reply_marker and _reply_text(reply) is not reply_marker
    if retained == {"request": 0, "reply": 0}:
        _wipe_str(request_marker)
        _wipe_str(reply_marker)
    del request_marker, reply_marker
    gc.collect()
    gc.collect()
    _STDOUT.write(json.dumps({"ready": True, "pid": os.getpid()}) + "\n")
    _STDOUT.flush()
    sys.stdin.readline()
    return {"reply_held": held, "retained_references": retained, "reply_keys": sorted(reply)}


async def _warm(adapter: Adapter, spec: dict[str, Any]) -> None:
    client = adapter.make_client(spec, spec["url"])
    try:
        await adapter.create(client, _messages(SMALL_PROMPT))
    finally:
        await adapter.close(client)


def wl_gen_keys(adapter: Adapter, spec: dict[str, Any]) -> dict[str, Any]:
    """Generate and save the key pair used by the other workloads."""
    adapter.load()
    adapter.gen_keys(spec["key_dir"])
    return {"key_dir": spec["key_dir"]}


_ASYNC: dict[str, Callable[[Adapter, dict[str, Any]], Coroutine[Any, Any, dict[str, Any]]]] = {
    "latency": wl_latency,
    "sizes": wl_sizes,
    "rsa": wl_rsa,
    "concurrency": wl_concurrency,
    "cold": wl_cold,
    "rss": wl_rss,
    "count": wl_count,
    "router_share": wl_router_share,
    "floor": wl_floor,
}
_SYNC: dict[str, Callable[[Adapter, dict[str, Any]], dict[str, Any]]] = {
    "memscan": wl_memscan,
    "gen_keys": wl_gen_keys,
}


def run_worker(adapter: Adapter, argv: list[str]) -> None:
    """Parse the spec (argv[1] or stdin), run the workload, print its JSON result."""
    try:
        spec = json.loads(argv[1] if len(argv) > 1 else sys.stdin.readline())
        name = spec["workload"]
        with contextlib.redirect_stdout(sys.stderr):
            if name in _ASYNC:
                result = asyncio.run(_ASYNC[name](adapter, spec))
            elif name in _SYNC:
                result = _SYNC[name](adapter, spec)
            else:
                raise ValueError(f"unknown workload {name!r}")
    except Exception as exc:
        _STDOUT.write(
            json.dumps(
                {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}
            )
            + "\n"
        )
        _STDOUT.flush()
        sys.exit(1)
    result["client"] = adapter.name
    result["workload"] = name
    _STDOUT.write(json.dumps(result) + "\n")
    _STDOUT.flush()
