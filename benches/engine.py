"""The native engine before and after a change, and direct against through a forward proxy.

Usage::

    .venv/bin/python benches/engine.py [--baseline OTHER/python] [--smoke]

Rows (a) warm small-request latency, (b) client CPU per request and (e) 64 concurrent
requests on one client, from ``compare.py``'s workloads and workers (``_worker_ours.py``),
for these variants, each in fresh worker processes, alternating in blocks (ABC, CBA, ...)
so that all sample the shared machine's drifting speed alike:

- ``before``: the package in ``--baseline`` (a ``python/`` folder with its own built
  ``_core``: e.g. ``git archive <commit>`` unpacked and built), when given;
- ``direct``: this checkout;
- ``proxied``: this checkout with ``HTTPS_PROXY`` naming a tinyproxy that the bench starts
  (the CONNECT tunnel is made once per connection; the bytes then pass through the proxy);
- ``squid``: the same through a squid that the bench starts, where squid is installed;
- with ``--httpx``: ``httpx_direct`` and ``httpx_squid`` (``NOMYO_TRANSPORT=httpx``), what
  the proxy costs another client on the same machine;
- ``nginx_h1`` and ``nginx_h2``: through nginx terminating TLS in front of the router, once on
  a port offering HTTP/1.1 only and once on a port offering HTTP/2 (ALPN ``h2``); nginx's
  logs give how many connections carried the requests.

tinyproxy relays in 2 KiB writes without ``TCP_NODELAY``: a request over 2 KiB (any with
RSA-4096 keys) reaches the router in two writes, the second held back by Nagle until the
router's delayed ACK (~40 ms) comes. No client can avoid that; httpx pays it too (the
``before`` build goes through httpx when a proxy is set). squid shows the engine's own cost.

Targets: ``direct`` within noise of ``before``; ``proxied`` latency within 1.25x and CPU
within 1.3x of ``direct``, same run. Prints a markdown table; raw numbers with ``--json``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from _harness import BENCHES, Workers, helper_process, log, make_trust_store
from _plan import FULL, SMOKE, Plan
from _targets import merge_timed, split

PROXY_VARIABLES = ("https_proxy", "http_proxy", "all_proxy", "no_proxy")


@dataclass
class VariantWorkers(Workers):
    """``_harness.Workers`` for variants of our client: each its own extra environment."""

    variants: dict[str, dict[str, str]] = field(default_factory=dict)

    def env(self, client: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "SSL_CERT_DIR")}
        env.pop("SSL_CERT_FILE", None)
        for name in PROXY_VARIABLES:
            env.pop(name, None)
            env.pop(name.upper(), None)
        env["PYTHONUNBUFFERED"] = "1"
        env.update({k: v for k, v in self.variants[client].items() if not k.startswith("_")})
        return env

    def spec(self, client: str, workload: str, **extra: Any) -> dict[str, Any]:
        spec = super().spec(client, workload, **extra)
        url = self.variants.get(client, {}).get("_URL")
        if url:  # a variant that reaches the router through another server (nginx)
            spec["url"] = url
        return spec

    def popen(self, client: str, spec: dict[str, Any], stderr: IO[str]) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [sys.executable, str(BENCHES / "_worker_ours.py"), json.dumps(spec)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
            cwd=BENCHES,
            env=self.env(client),
        )


def start_tinyproxy(directory: Path) -> tuple[subprocess.Popen[bytes], str]:
    binary = shutil.which("tinyproxy")
    if binary is None:
        raise SystemExit("tinyproxy is not installed (bash scripts/install-system-deps.sh)")
    import socket
    import time

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    conf = directory / "tinyproxy.conf"
    conf.write_text(
        f"Port {port}\nListen 127.0.0.1\nTimeout 60\nMaxClients 200\nDisableViaHeader Yes\n"
        f'LogFile "{directory / "tinyproxy.log"}"\nLogLevel Warning\n'
    )
    proc = subprocess.Popen([binary, "-d", "-c", str(conf)], stderr=subprocess.DEVNULL)
    for _ in range(200):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return proc, f"http://127.0.0.1:{port}"
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise SystemExit("tinyproxy did not start")


def start_squid(directory: Path) -> tuple[subprocess.Popen[bytes], str] | None:
    binary = shutil.which("squid") or (
        "/usr/sbin/squid" if os.path.exists("/usr/sbin/squid") else None
    )
    if binary is None:
        return None
    import socket
    import time

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    folder = directory / "squid"
    folder.mkdir()
    folder.chmod(0o777)  # squid drops to its own user
    conf = folder / "squid.conf"
    conf.write_text(
        f"http_port 127.0.0.1:{port}\nhttp_access allow all\ncache deny all\n"
        f"cache_mem 8 MB\npinger_enable off\naccess_log none\n"
        f"cache_log {folder}/cache.log\npid_filename {folder}/squid.pid\n"
        f"coredump_dir {folder}\nshutdown_lifetime 1 seconds\n"
    )
    proc = subprocess.Popen(
        [binary, "-N", "-f", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    for _ in range(200):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return proc, f"http://127.0.0.1:{port}"
        except OSError:
            time.sleep(0.05)
    proc.kill()
    return None


NGINX_CONF = """
worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    client_body_temp_path {prefix}/body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    client_max_body_size 64m;
    log_format conn '$connection $server_protocol';
    upstream router {{ server {upstream}; keepalive 32; }}
    server {{
        listen 127.0.0.1:{h2_port} ssl http2;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        http2_max_concurrent_streams 128;
        access_log {prefix}/h2.log conn;
        location / {{
            proxy_pass https://router;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
        }}
    }}
    server {{
        listen 127.0.0.1:{h1_port} ssl;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        access_log {prefix}/h1.log conn;
        location / {{
            proxy_pass https://router;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
        }}
    }}
}}
"""


def start_nginx(
    directory: Path, router_url: str, cert: str, key: str
) -> tuple[subprocess.Popen[bytes], str, str] | None:
    """nginx terminating TLS with HTTP/2 on one port and HTTP/1.1 only on another, both in
    front of the router (over TLS, kept alive): the same server, with and without h2."""
    binary = shutil.which("nginx") or (
        "/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else None
    )
    if binary is None:
        return None
    import socket
    import time

    ports = []
    for _ in range(2):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            ports.append(s.getsockname()[1])
    prefix = directory / "nginx"
    prefix.mkdir()
    (prefix / "nginx.conf").write_text(
        NGINX_CONF.format(
            prefix=prefix,
            upstream=router_url.removeprefix("https://"),
            h2_port=ports[0],
            h1_port=ports[1],
            cert=cert,
            key=key,
        )
    )
    proc = subprocess.Popen(
        [binary, "-p", str(prefix), "-c", str(prefix / "nginx.conf"), "-g", "daemon off;"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    for port in ports:
        for _ in range(200):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                time.sleep(0.05)
        else:
            proc.kill()
            return None
    return proc, f"https://127.0.0.1:{ports[0]}", f"https://127.0.0.1:{ports[1]}"


def nginx_connections(directory: Path) -> dict[str, str]:
    """Requests, connections and protocols nginx logged per variant."""
    out = {}
    for name, log_name in (("nginx_h2", "h2.log"), ("nginx_h1", "h1.log")):
        path = directory / "nginx" / log_name
        if not path.exists():
            continue
        entries = [line.split() for line in path.read_text().splitlines() if line.strip()]
        connections = {e[0] for e in entries}
        protocols = sorted({e[1] for e in entries})
        out[name] = (
            f"{len(entries)} requests over {len(connections)} connections ({', '.join(protocols)})"
        )
    return out


def run(workers: VariantWorkers, plan: Plan, names: list[str], e_blocks: int) -> dict[str, Any]:
    raw: dict[str, Any] = {}
    blocks = 4

    def in_blocks(label: str, workload: str, specs: list[dict[str, Any]]) -> dict[str, list[Any]]:
        parts: dict[str, list[Any]] = {name: [] for name in names}
        for i, extra in enumerate(specs):
            for name in names if i % 2 == 0 else names[::-1]:
                log(f"{label}: {name}, block {i + 1}")
                parts[name].append(workers.run(name, workers.spec(name, workload, **extra)))
        return parts

    latency = in_blocks(
        "a_latency",
        "latency",
        [
            {"n": n, "warmup": plan.latency_warmup, "interleave_rsa": False}
            for n in split(plan.latency_n, blocks)
        ],
    )
    raw["a_latency"] = {name: merge_timed(found) for name, found in latency.items()}
    concurrency = in_blocks(
        "e_concurrency",
        "concurrency",
        [
            {"concurrency": plan.concurrency, "rounds": 1, "warmup_rounds": plan.warmup_rounds}
            for _ in range(e_blocks)
        ],
    )
    raw["e_concurrency"] = {}
    for name, found in concurrency.items():
        total = sum(r["requests"] for r in found)
        seconds = sum(r["requests"] / r["req_per_s"] for r in found)
        raw["e_concurrency"][name] = {
            "req_per_s": total / seconds,
            "cpu_ms_per_request": sum(r["cpu_ms_per_request"] * r["requests"] for r in found)
            / total,
            "max_stall_ms": max(r["max_loop_stall_ms"] for r in found),
            "blocks": found,
        }
    return raw


def table(raw: dict[str, Any], names: list[str]) -> str:
    a, e = raw["a_latency"], raw["e_concurrency"]
    rows = [
        ("(a) warm small request, median latency, ms", {n: a[n]["median_ms"] for n in names}),
        ("(b) client CPU per request, median, ms", {n: a[n]["cpu_median_ms"] for n in names}),
        (
            "(b) client CPU per request, total / N, ms",
            {n: a[n]["cpu_ms_per_request"] for n in names},
        ),
        ("(e) 64 concurrent on one client, req/s", {n: e[n]["req_per_s"] for n in names}),
        (
            "(e) client CPU per request during (e), ms",
            {n: e[n]["cpu_ms_per_request"] for n in names},
        ),
        ("(e) max event-loop stall, ms", {n: e[n]["max_stall_ms"] for n in names}),
    ]
    ratios = [
        ("direct/before", "direct", "before"),
        ("proxied/direct", "proxied", "direct"),
        ("squid/direct", "squid", "direct"),
        ("httpx squid/direct", "httpx_squid", "httpx_direct"),
        ("nginx h2/h1", "nginx_h2", "nginx_h1"),
    ]
    ratios = [r for r in ratios if r[1] in names and r[2] in names]
    head = "| row | " + " | ".join(names) + "".join(f" | {r[0]}" for r in ratios) + " |"
    lines = [head, "|" + " --- |" * (1 + len(names) + len(ratios))]
    for label, values in rows:
        cells = [f"{values[n]:.2f}" for n in names]
        cells += [f"{values[top] / values[bottom]:.2f}x" for _, top, bottom in ratios]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--baseline", help="a python/ folder holding the other build's nomyo")
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--json", help="write the raw numbers here")
    parser.add_argument("--httpx", action="store_true", help="add httpx direct and via squid")
    parser.add_argument("--only", help="comma-separated variants to run (default: all)")
    parser.add_argument("--e-blocks", type=int, default=3, help="blocks of (e) per variant")
    args = parser.parse_args(argv)
    plan = SMOKE if args.smoke else FULL
    work = Path(tempfile.mkdtemp(prefix="nomyo-engine-bench-"))
    proxy_proc = squid = nginx = None
    try:
        bundle, cert, key = make_trust_store(work)
        proxy_proc, proxy_url = start_tinyproxy(work)
        variants: dict[str, dict[str, str]] = {}
        if args.baseline:
            variants["before"] = {"PYTHONPATH": str(Path(args.baseline).resolve())}
        variants["direct"] = {}
        variants["proxied"] = {"HTTPS_PROXY": proxy_url}
        squid = start_squid(work)
        if squid is not None:
            variants["squid"] = {"HTTPS_PROXY": squid[1]}
        if args.httpx:
            variants["httpx_direct"] = {"NOMYO_TRANSPORT": "httpx"}
            if squid is not None:
                variants["httpx_squid"] = {"NOMYO_TRANSPORT": "httpx", "HTTPS_PROXY": squid[1]}
        with helper_process(
            ["_router_proc.py", "--cert", cert, "--key", key, "--key-bits", "4096"], "router"
        ) as router:
            nginx = start_nginx(work, router["url"], cert, key)
            if nginx is not None:
                variants["nginx_h1"] = {"_URL": nginx[2]}
                variants["nginx_h2"] = {"_URL": nginx[1]}
            if args.only:
                variants = {k: v for k, v in variants.items() if k in args.only.split(",")}
            names = list(variants)
            keys = str(work / "keys")
            workers = VariantWorkers(
                Path(), bundle, router["url"], dict.fromkeys(names, keys), plan, variants=variants
            )
            workers.run("direct", workers.spec("direct", "gen_keys"))
            raw = run(workers, plan, names, args.e_blocks)
            raw["nginx_connections"] = nginx_connections(work)
    finally:
        for proc in (proxy_proc, squid[0] if squid else None, nginx[0] if nginx else None):
            if proc is not None:
                proc.terminate()
                proc.wait()
        shutil.rmtree(work, ignore_errors=True)
    print(table(raw, names))
    for name, seen in raw.get("nginx_connections", {}).items():
        print(f"- {name}: nginx logged {seen}")
    if args.json:
        Path(args.json).write_text(json.dumps(raw, indent=1, default=str))
    return 0


__all__ = ["VariantWorkers", "main", "run", "table"]

if __name__ == "__main__":
    sys.exit(main())
