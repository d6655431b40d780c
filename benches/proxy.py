"""What ``nomyo proxy`` costs next to the library, side by side in one run.

Usage::

    .venv/bin/python benches/proxy.py [--smoke] [--out benches/results]

One development router (HTTPS, RSA-4096 server key) runs in its own process. The same small
request is sent:

- by the library: ``SecureChatCompletion.create`` in a worker process of its own
  (sequentially for the latency, 64 callers on one client for the throughput);
- through ``nomyo proxy`` (its own process, same router), driven by ``wrk``, a C load
  generator with keep-alive connections, so that the caller is not the bottleneck: one
  connection for the latency, 64 for the throughput, and the same request with
  ``"stream": true`` for the time to the streamed reply;
- by the reference client (PyPI ``nomyo==0.2.9``) sequentially, for scale.

Each latency is measured in alternating blocks (library, proxy, library, proxy, ...) so both
meet the machine's drifting speed alike. The emulated stream is written in one piece once
the reply is opened, so its first chunk arrives with its last: wrk's time to the complete
stream bounds the time to the first chunk.

Results: a markdown table on stdout and in ``<out>/proxy.md``, raw numbers in
``<out>/proxy.json``. Needs ``wrk`` (Debian package ``wrk``; ``make bench-proxy`` installs it).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

BENCHES = Path(__file__).resolve().parent
ROOT = BENCHES.parent
sys.path.insert(0, str(BENCHES))

from _harness import helper_process, make_trust_store  # noqa: E402

MODEL = "Qwen/Qwen3-0.6B"
MESSAGES = [{"role": "user", "content": "ping"}]
BODY = {"model": MODEL, "messages": MESSAGES}

_LIBRARY_WORKER = r"""
import asyncio, json, statistics, sys, time
import nomyo

spec = json.loads(sys.argv[1])

async def main():
    async with nomyo.SecureChatCompletion(spec["url"], verify=spec["ca_file"]) as client:
        messages = [{"role": "user", "content": "ping"}]
        for _ in range(spec["warmup"]):
            await client.create(model=spec["model"], messages=messages)
        if spec["mode"] == "latency":
            times = []
            for _ in range(spec["n"]):
                started = time.perf_counter()
                await client.create(model=spec["model"], messages=messages)
                times.append(time.perf_counter() - started)
            return {"times": times}
        concurrency, total = spec["concurrency"], spec["total"]
        queue = asyncio.Queue()
        for _ in range(total):
            queue.put_nowait(None)
        async def caller():
            while not queue.empty():
                queue.get_nowait()
                await client.create(model=spec["model"], messages=messages)
        started = time.perf_counter()
        await asyncio.gather(*(caller() for _ in range(concurrency)))
        return {"seconds": time.perf_counter() - started, "requests": total}

print(json.dumps(asyncio.run(main())))
"""

_WRK_SCRIPT = """\
wrk.method = "POST"
wrk.body = {body}
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer {token}"
"""


def _lua_string(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def run_library(spec: dict[str, Any]) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH",)}
    proc = subprocess.run(
        [sys.executable, "-c", _LIBRARY_WORKER, json.dumps(spec)],
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"library worker failed: {proc.stderr[-2000:]}")
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def run_reference(spec: dict[str, Any], reference_dir: str) -> list[float]:
    script = r"""
import asyncio, json, sys, time
from nomyo import SecureChatCompletion
spec = json.loads(sys.argv[1])
async def main():
    client = SecureChatCompletion(base_url=spec["url"])
    messages = [{"role": "user", "content": "ping"}]
    for _ in range(spec["warmup"]):
        await client.create(model=spec["model"], messages=messages)
    times = []
    for _ in range(spec["n"]):
        started = time.perf_counter()
        await client.create(model=spec["model"], messages=messages)
        times.append(time.perf_counter() - started)
    return times
print(json.dumps(asyncio.run(main())))
"""
    env = {**os.environ, "PYTHONPATH": reference_dir, "SSL_CERT_FILE": spec["ca_file"]}
    proc = subprocess.run(
        [sys.executable, "-c", script, json.dumps(spec)],
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
        check=False,
        cwd=tempfile.gettempdir(),
    )
    if proc.returncode != 0:
        raise RuntimeError(f"reference worker failed: {proc.stderr[-2000:]}")
    times: list[float] = json.loads(proc.stdout.strip().splitlines()[-1])
    return times


def _seconds(value: str, unit: str) -> float:
    return float(value) * {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0}[unit]


def run_wrk(url: str, script: Path, *, connections: int, seconds: float) -> dict[str, float]:
    """Run wrk; returns the median latency (s), requests/s and the error count."""
    threads = min(2, connections)
    proc = subprocess.run(
        [
            "wrk",
            f"-t{threads}",
            f"-c{connections}",
            f"-d{seconds:g}s",
            "--latency",
            "--timeout",
            "30s",
            "-s",
            str(script),
            url,
        ],
        capture_output=True,
        text=True,
        timeout=seconds + 120,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"wrk failed: {proc.stderr}{proc.stdout}")
    out = proc.stdout
    median = re.search(r"^\s+50%\s+([\d.]+)(us|ms|s|m)\s*$", out, re.M)
    rate = re.search(r"^Requests/sec:\s+([\d.]+)", out, re.M)
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    socket_errors = re.search(r"Socket errors: (.*)", out)
    if median is None or rate is None:
        raise RuntimeError(f"cannot read wrk's output:\n{out}")
    if errors is not None or socket_errors is not None:
        raise RuntimeError(f"wrk saw failed requests:\n{out}")
    return {"median": _seconds(*median.groups()), "rps": float(rate.group(1))}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="tiny run (CI)")
    parser.add_argument("--out", default=str(BENCHES / "results"))
    parser.add_argument("--blocks", type=int, default=4, help="alternating blocks per client")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        print("benches/proxy.py needs wrk: apt-get install wrk (make bench-proxy does)")
        return 2
    n, warmup, seconds, total = (5, 2, 1.0, 32) if args.smoke else (100, 10, 5.0, 640)
    blocks = 1 if args.smoke else args.blocks
    token = "bench-proxy-token"
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="nomyo-bench-proxy-"))
    ca_file, cert, key = make_trust_store(work)
    results: dict[str, Any] = {"smoke": args.smoke}
    router_args = [str(BENCHES / "_router_proc.py"), "--cert", cert, "--key", key]
    with helper_process(router_args, "router") as router:
        url = router["url"]
        proxy = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "nomyo",
                "proxy",
                "--listen",
                "127.0.0.1:0",
                "--base-url",
                url,
                "--ca-file",
                ca_file,
                "--auth-token",
                token,
                "--model",
                MODEL,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        try:
            assert proxy.stdout is not None
            match = None
            while match is None:
                line = proxy.stdout.readline()
                if not line:
                    raise RuntimeError("the proxy exited before listening")
                match = re.search(r"listening on (http://\S+)", line)
            proxy_url = match.group(1) + "/v1/chat/completions"
            scripts = {}
            for name, body in (("plain", BODY), ("stream", {**BODY, "stream": True})):
                script = work / f"{name}.lua"
                script.write_text(
                    _WRK_SCRIPT.format(body=_lua_string(json.dumps(body)), token=token)
                )
                scripts[name] = script
            spec = {"url": url, "ca_file": ca_file, "model": MODEL, "warmup": warmup}
            library_times: list[float] = []
            proxy_medians: list[float] = []
            stream_medians: list[float] = []
            run_wrk(proxy_url, scripts["plain"], connections=1, seconds=1.0)  # warm-up
            for _ in range(blocks):
                library_times += run_library({**spec, "mode": "latency", "n": n})["times"]
                proxy_medians.append(
                    run_wrk(proxy_url, scripts["plain"], connections=1, seconds=seconds)["median"]
                )
                stream_medians.append(
                    run_wrk(proxy_url, scripts["stream"], connections=1, seconds=seconds)["median"]
                )
            library_rps: list[float] = []
            proxy_rps: list[float] = []
            for _ in range(blocks):
                done = run_library(
                    {**spec, "mode": "throughput", "concurrency": 64, "total": total}
                )
                library_rps.append(done["requests"] / done["seconds"])
                proxy_rps.append(
                    run_wrk(proxy_url, scripts["plain"], connections=64, seconds=seconds)["rps"]
                )
        finally:
            proxy.terminate()
            proxy.wait(30)
        reference_dir = ROOT / ".cache" / "reference-nomyo"
        reference_times: list[float] = []
        if (reference_dir / "nomyo").is_dir():
            reference_times = run_reference({**spec, "n": n}, str(reference_dir))
    results.update(
        library_latency=statistics.median(library_times),
        proxy_latency=statistics.median(proxy_medians),
        stream_latency=statistics.median(stream_medians),
        library_rps=statistics.median(library_rps),
        proxy_rps=statistics.median(proxy_rps),
        reference_latency=statistics.median(reference_times) if reference_times else None,
        blocks=blocks,
        n=n,
        wrk_seconds=seconds,
    )
    table = render(results)
    print(table)
    (out_dir / "proxy.md").write_text(table)
    (out_dir / "proxy.json").write_text(json.dumps(results, indent=2) + "\n")
    return 0


def render(r: dict[str, Any]) -> str:
    ms = 1000.0
    lib, prox, stream = r["library_latency"] * ms, r["proxy_latency"] * ms, r["stream_latency"] * ms
    ref = r["reference_latency"] * ms if r["reference_latency"] else None
    share = r["proxy_rps"] / r["library_rps"]
    lines = [
        f"- date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M:%S} UTC"
        + (" (smoke run: numbers mean nothing)" if r["smoke"] else ""),
        f"- machine: {platform.machine()}, cores: {os.cpu_count()}, "
        f"load average at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}",
        f"- {r['blocks']} alternating blocks; library N={r['n']} per block, wrk "
        f"{r['wrk_seconds']:g} s per block; router: DevRouter over HTTPS (RSA-4096), own process",
        "",
        "| workload | library | through nomyo proxy | target | met |",
        "|---|---:|---:|---|:-:|",
        f"| small request, median latency, ms | {lib:.2f} | {prox:.2f} | proxy <= library + 1 ms "
        f"| {'yes' if prox <= lib + 1 else 'no'} |",
        f"| 64 concurrent callers, req/s | {r['library_rps']:.0f} | {r['proxy_rps']:.0f} "
        f"({share:.0%}) | proxy >= 80% | {'yes' if share >= 0.8 else 'no'} |",
        f"| streamed (`stream: true`), time to the first chunk, median ms | — | {stream:.2f} | "
        f"<= non-streamed + 1 ms ({prox + 1:.2f}) | {'yes' if stream <= prox + 1 else 'no'} |",
    ]
    if ref is not None:
        lines.append(
            f"| for scale: reference 0.2.9, same request, median ms | {ref:.2f} | — | — | — |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    t0 = time.monotonic()
    code = main()
    print(f"(benches/proxy.py took {time.monotonic() - t0:.0f} s)")
    sys.exit(code)
