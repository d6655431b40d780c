"""Soak: many requests through one client against a faulty router that is killed once.

Usage::

    .venv/bin/python benches/soak.py [--requests 20000] [--fault-rate 0.2] [--seed 1]
                                     [--concurrency 16] [--through-proxy] [--short]
                                     [--omit-payload-id] [--reply-binding require]
                                     [--json PATH]

One development router runs in its own process (``_soak_router.py``, HTTPS with a throwaway
CA, RSA-2048 server key). It injects a fault into ``--fault-rate`` of the HTTP requests it
receives, drawn uniformly from 429, 503, tampered reply, reply sealed to a wrong key, garbage
reply, slow reply (one in four past the client's 5 s timeout), replayed reply (an earlier
reply sealed for this client) and connection reset, and logs which request (by its unique
message) got which fault on each attempt. Halfway through, the soak kills the router with
SIGKILL, waits ``--down`` seconds and starts a new one on the same port with a new RSA key.

Direct (default): one ``SecureChatCompletion`` sends every request (``--concurrency`` at a
time, 5 s timeout, 2 retries). ``--through-proxy``: ``nomyo proxy`` runs as a subprocess in
front of the router and the soak sends OpenAI-shaped requests to it with httpx.

Every request must end as it must, judged by the fault of the router's last attempt for it:
its own reply (the echo of its unique message) when that attempt was clean or only slow; else
the typed error of that fault (direct: the exception class; proxy: status and OpenAI
``error.type``, see ``nomyo._relay.failure_reply``). A connection error is allowed only for
a request that overlapped the router's down time. No request may run past a 90 s deadline
(``hung``); a security failure must not be retried; a replayed reply must never be taken as
the answer (``FINDING``).

``--omit-payload-id`` makes the router seal its replies without ``_metadata.payload_id``
(PROTOCOL.md does not require a router to send it); the client then has nothing that ties a
replayed reply to the wrong request unless ``--reply-binding require``.

Resources (the soak process for direct, the proxy process for ``--through-proxy``) are read
from ``/proc`` after warm-up (the first 10 % of requests) and at the end, each time with no
request in flight and after ``gc.collect()`` (direct): RSS may grow by at most 15 %, open
files other than sockets by at most 4 and threads by at most 4 (constant slack: lazily
started executor threads and the like), sockets by at most ``--concurrency`` (a keep-alive
pool keeps up to one idle connection per request that was in flight at once, so how many
are open at a quiet moment varies; a leak of one socket per thousand requests exceeds it in
the full run). The figures are printed.

Exits 0 when nothing was violated, 1 otherwise; prints a summary table (progress on stderr).
``make soak`` runs 20 000 requests each way: about 2.5 minutes direct and 4 through the proxy
on a 2-core machine. ``--short`` (300 requests, about 15 s) is what ``tests/test_soak.py``
runs in ``make test``.
"""

from __future__ import annotations

import argparse
import array
import asyncio
import collections
import contextlib
import gc
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

BENCHES = Path(__file__).resolve().parent
if str(BENCHES) not in sys.path:
    sys.path.insert(0, str(BENCHES))

from _harness import _readline, make_trust_store  # noqa: E402

ROUTER = BENCHES / "_soak_router.py"
SHORT_REQUESTS = 300
DEADLINE = 90.0
CLIENT_TIMEOUT = 5.0
MAX_RETRIES = 2
RSS_GROWTH = 0.15
#: Open files other than sockets may grow by this much; sockets by the concurrency (see the
#: docstring).
FD_SLACK = 4
THREAD_SLACK = 4

#: Direct: the outcome (exception class name, or "ok") the last attempt's fault allows.
EXPECT_DIRECT: dict[str, frozenset[str]] = {
    "none": frozenset({"ok"}),
    "slow": frozenset({"ok", "APITimeoutError"}),
    "429": frozenset({"RateLimitError"}),
    "503": frozenset({"ServiceUnavailableError", "ServerError"}),
    "tamper": frozenset({"SecurityError"}),
    "wrong_key": frozenset({"SecurityError"}),
    "garbage": frozenset({"EnvelopeError", "SecurityError"}),
    "replay": frozenset({"SecurityError"}),
    "reset": frozenset({"APIConnectionError"}),
    "stale_key": frozenset(),
}
#: Direct: allowed for a request that overlapped the router's down time.
DOWN_DIRECT = frozenset({"APIConnectionError", "APITimeoutError"})
#: Through the proxy: "<status>" for a reply, "<status> <error.type>" for an error.
EXPECT_PROXY: dict[str, frozenset[str]] = {
    "none": frozenset({"ok"}),
    "slow": frozenset({"ok", "502 api_connection_error"}),
    "429": frozenset({"429 rate_limit_error"}),
    "503": frozenset({"503 service_unavailable_error"}),
    "tamper": frozenset({"502 security_error"}),
    "wrong_key": frozenset({"502 security_error"}),
    "garbage": frozenset({"502 security_error"}),
    "replay": frozenset({"502 security_error"}),
    "reset": frozenset({"502 api_connection_error"}),
    "stale_key": frozenset(),
}
DOWN_PROXY = frozenset({"502 api_connection_error"})
#: Faults after which a retry is wrong (the reply was refused as untrustworthy).
NOT_RETRIED = frozenset({"tamper", "wrong_key", "garbage", "replay"})
#: Outcome labels of a request that got a reply other than its own.
WRONG_REPLY = "wrong reply"
HUNG = "hung"


@dataclass
class Config:
    """One soak run."""

    requests: int = 20_000
    fault_rate: float = 0.2
    seed: int = 1
    concurrency: int = 16
    through_proxy: bool = False
    down: float = 1.0
    warmup: float = 0.1
    #: Print a line to stderr every tenth of the run.
    progress: bool = False
    #: The router leaves ``_metadata.payload_id`` out of its replies.
    omit_payload_id: bool = False
    #: The client's ``reply_binding`` ("off" or "require").
    reply_binding: Literal["off", "require"] = "off"


@dataclass
class Resources:
    """One reading of a process's resources."""

    rss_kib: int
    fds: int
    #: Of ``fds``, how many are sockets (the keep-alive pools' connections among them).
    sockets: int
    threads: int


@dataclass
class Report:
    """What a soak run found."""

    config: Config
    elapsed: float = 0.0
    outcomes: collections.Counter[tuple[str, str]] = field(default_factory=collections.Counter)
    attempts: collections.Counter[str] = field(default_factory=collections.Counter)
    max_attempts: int = 0
    downtime: float = 0.0
    down_errors: int = 0
    warm: Resources | None = None
    end: Resources | None = None
    peak_rss_kib: int = 0
    violations: list[str] = field(default_factory=list)
    findings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.violations and not self.findings

    @property
    def rss_growth(self) -> float:
        if self.warm is None or self.end is None:
            return 0.0
        return self.end.rss_kib / self.warm.rss_kib - 1.0

    def to_json(self) -> dict[str, Any]:
        return {
            "config": asdict(self.config),
            "elapsed": round(self.elapsed, 1),
            "requests_per_second": round(self.config.requests / self.elapsed, 1),
            "outcomes": [
                {"last_fault": kind, "result": result, "count": count}
                for (kind, result), count in sorted(self.outcomes.items())
            ],
            "attempts_by_fault": dict(sorted(self.attempts.items())),
            "max_attempts": self.max_attempts,
            "downtime": round(self.downtime, 2),
            "down_errors": self.down_errors,
            "warm": asdict(self.warm) if self.warm else None,
            "end": asdict(self.end) if self.end else None,
            "peak_rss_kib": self.peak_rss_kib,
            "rss_growth": round(self.rss_growth, 4),
            "violations": self.violations,
            "findings": self.findings,
        }

    def render(self) -> str:
        c = self.config
        where = "through nomyo proxy" if c.through_proxy else "direct (one SecureChatCompletion)"
        lines = [
            f"soak {where}: {c.requests} requests, {c.concurrency} concurrent, "
            f"fault rate {c.fault_rate:g}, seed {c.seed}: {self.elapsed:.1f} s "
            f"({c.requests / max(self.elapsed, 1e-9):.0f} req/s)",
            f"router down {self.downtime:.2f} s (SIGKILL, restarted with a new key): "
            f"{self.down_errors} requests that overlapped it ended in a connection error",
            "",
            "| fault injected | router attempts |",
            "|---|---:|",
        ]
        lines += [f"| {kind} | {n} |" for kind, n in sorted(self.attempts.items())]
        lines += ["", "| last attempt's fault | outcome | requests |", "|---|---|---:|"]
        lines += [
            f"| {kind} | {result} | {n} |" for (kind, result), n in sorted(self.outcomes.items())
        ]
        lines.append(f"most attempts for one request: {self.max_attempts}")
        if self.warm and self.end:
            who = "proxy process" if c.through_proxy else "soak process"
            lines += [
                "",
                f"| {who} | after warm-up | end | limit |",
                "|---|---:|---:|---:|",
                f"| RSS (KiB) | {self.warm.rss_kib} | {self.end.rss_kib} "
                f"(peak {self.peak_rss_kib}, {self.rss_growth:+.1%}) | +{RSS_GROWTH:.0%} |",
                f"| open files other than sockets | {self.warm.fds - self.warm.sockets} "
                f"| {self.end.fds - self.end.sockets} | +{FD_SLACK} |",
                f"| sockets | {self.warm.sockets} | {self.end.sockets} | +{c.concurrency} |",
                f"| threads | {self.warm.threads} | {self.end.threads} | +{THREAD_SLACK} |",
            ]
        lines.append("")
        for finding in self.findings[:30]:
            lines.append(f"FINDING: {finding}")
        if len(self.findings) > 30:
            lines.append(f"... and {len(self.findings) - 30} more findings")
        if self.findings:
            lines.append(f"{len(self.findings)} findings")
        for violation in self.violations[:30]:
            lines.append(f"VIOLATION: {violation}")
        if len(self.violations) > 30:
            lines.append(f"... and {len(self.violations) - 30} more violations")
        lines.append("PASS" if self.ok else "FAIL")
        return "\n".join(lines)


# -- processes -----------------------------------------------------------------------------


def read_resources(pid: int | None = None) -> Resources:
    """RSS, open files and threads of ``pid`` (default: this process) from /proc."""
    base = Path("/proc") / (str(pid) if pid is not None else "self")
    rss = 0
    for line in (base / "status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1])
    sockets = fds = 0
    for name in os.listdir(base / "fd"):
        with contextlib.suppress(OSError):  # closed since listed
            target = os.readlink(base / "fd" / name)
            fds += 1
            sockets += target.startswith("socket:")
    return Resources(rss, fds, sockets, len(os.listdir(base / "task")))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RouterProcess:
    """``_soak_router.py`` in a subprocess that can be killed and started again."""

    def __init__(self, cert: str, key: str, log: Path, config: Config) -> None:
        self.cert, self.key, self.log, self.config = cert, key, log, config
        self.port = 0
        self.generation = -1
        self.url = ""
        self.fingerprint = ""
        self.stderr = log.with_suffix(".stderr")
        self.proc: subprocess.Popen[str] | None = None

    def start(self) -> None:
        self.generation += 1
        args = [
            sys.executable,
            str(ROUTER),
            *("--cert", self.cert, "--key", self.key, "--log", str(self.log)),
            *("--port", str(self.port), "--fault-rate", str(self.config.fault_rate)),
            *("--seed", str(self.config.seed), "--generation", str(self.generation)),
        ]
        if self.config.omit_payload_id:
            args.append("--omit-payload-id")
        with open(self.stderr, "a") as stderr:
            self.proc = subprocess.Popen(
                args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr, text=True
            )
        assert self.proc.stdout is not None
        line = _readline(self.proc.stdout, 60.0)
        if not line:
            raise RuntimeError(f"the soak router did not start:\n{self.stderr.read_text()[-2000:]}")
        info = json.loads(line)
        self.port, self.url, self.fingerprint = info["port"], info["url"], info["fingerprint"]

    def kill(self) -> None:
        """SIGKILL, and wait until it is gone (its port is free again)."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)
        self._close_pipes()

    def _close_pipes(self) -> None:
        assert self.proc is not None
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                stream.close()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self._close_pipes()


@contextlib.contextmanager
def proxy_process(
    router_url: str, bundle: str, home: Path, reply_binding: str = "off"
) -> Iterator[tuple[str, int]]:
    """``nomyo proxy`` in front of the router; yields its base URL and pid."""
    import httpx

    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("NOMYO_")}
    env["HOME"] = str(home)  # its client key and config stay in the run's directory
    with tempfile.TemporaryFile(mode="w+") as stderr:
        proc = subprocess.Popen(
            [
                *(sys.executable, "-m", "nomyo", "proxy", "--listen", f"127.0.0.1:{port}"),
                *("--base-url", router_url, "--ca-file", bundle),
                *("--reply-binding", reply_binding),
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            env=env,
        )
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 60.0
            while True:
                if proc.poll() is not None or time.monotonic() > deadline:
                    stderr.seek(0)
                    raise RuntimeError(f"nomyo proxy did not start:\n{stderr.read()[-2000:]}")
                with contextlib.suppress(httpx.HTTPError):
                    if httpx.get(url + "/healthz", timeout=2.0).status_code == 200:
                        break
                time.sleep(0.1)
            yield url, proc.pid
        finally:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


# -- the run -------------------------------------------------------------------------------


class Soak:
    """Runs the requests and collects what happened to each (preallocated, so the soak's own
    bookkeeping does not grow the RSS it measures)."""

    def __init__(self, config: Config, router: RouterProcess, run_id: str) -> None:
        self.config = config
        self.router = router
        n = config.requests
        self.tags = [f"soak {run_id} #{i:06d} {secrets.token_hex(6)}" for i in range(n)]
        self.results: list[str] = ["" for _ in range(n)]
        self.started = array.array("d", bytes(8 * n))
        self.ended = array.array("d", bytes(8 * n))
        self.done = 0
        self.down_at = 0.0
        self.up_at = 0.0
        self.peak_rss_kib = 0

    async def run_phase(
        self,
        indices: range,
        send: Callable[[str], Awaitable[str]],
        kill_after: int | None = None,
    ) -> None:
        it = iter(indices)
        restart: asyncio.Task[None] | None = None

        async def worker() -> None:
            nonlocal restart
            for i in it:
                self.started[i] = time.time()
                try:
                    self.results[i] = await asyncio.wait_for(send(self.tags[i]), DEADLINE)
                except asyncio.TimeoutError:
                    self.results[i] = HUNG
                self.ended[i] = time.time()
                self.done += 1
                if self.config.progress and self.done % max(1, self.config.requests // 10) == 0:
                    print(f"soak: {self.done}/{self.config.requests} done", file=sys.stderr)
                if kill_after is not None and self.done == kill_after and restart is None:
                    restart = asyncio.create_task(self._kill_and_restart())

        await asyncio.gather(*(worker() for _ in range(self.config.concurrency)))
        if restart is not None:
            await restart

    async def _kill_and_restart(self) -> None:
        self.down_at = time.time()
        await asyncio.to_thread(self.router.kill)
        await asyncio.sleep(self.config.down)
        await asyncio.to_thread(self.router.start)
        self.up_at = time.time()

    async def sample_peak(self, pid: int | None, stop: asyncio.Event) -> None:
        while not stop.is_set():
            self.peak_rss_kib = max(self.peak_rss_kib, read_resources(pid).rss_kib)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.5)

    async def drive(
        self, send: Callable[[str], Awaitable[str]], pid: int | None
    ) -> tuple[Resources, Resources]:
        n = self.config.requests
        warm = max(1, int(n * self.config.warmup))
        await self.run_phase(range(warm), send)
        warm_resources = self.quiet_sample(pid)
        stop = asyncio.Event()
        sampler = asyncio.create_task(self.sample_peak(pid, stop))
        await self.run_phase(range(warm, n), send, kill_after=warm + (n - warm) // 2)
        stop.set()
        await sampler
        end_resources = self.quiet_sample(pid)
        return warm_resources, end_resources

    def quiet_sample(self, pid: int | None) -> Resources:
        if pid is None:
            gc.collect()
        sample = read_resources(pid)
        self.peak_rss_kib = max(self.peak_rss_kib, sample.rss_kib)
        return sample


async def _send_direct(client: Any, tag: str) -> str:
    from nomyo import NomyoError

    try:
        reply = await client.create(model="soak", messages=[{"role": "user", "content": tag}])
    except NomyoError as exc:
        return type(exc).__name__
    content = reply["choices"][0]["message"]["content"]
    return "ok" if content == tag else WRONG_REPLY


async def _send_proxy(http: Any, url: str, tag: str) -> str:
    import httpx

    try:
        response = await http.post(
            url + "/v1/chat/completions",
            json={"model": "soak", "messages": [{"role": "user", "content": tag}]},
        )
    except httpx.HTTPError as exc:
        return f"proxy unreachable: {type(exc).__name__}"
    try:
        body = response.json()
    except ValueError:
        return f"{response.status_code} (not JSON)"
    if response.status_code == 200:
        return "ok" if body["choices"][0]["message"]["content"] == tag else WRONG_REPLY
    error = body.get("error") if isinstance(body, dict) else None
    kind = error.get("type") if isinstance(error, dict) else None
    return f"{response.status_code} {kind}"


def _run_direct(soak: Soak, bundle: str) -> tuple[Resources, Resources]:
    from nomyo import SecureChatCompletion

    async def main() -> tuple[Resources, Resources]:
        async with SecureChatCompletion(
            base_url=soak.router.url,
            verify=bundle,
            timeout=CLIENT_TIMEOUT,
            max_retries=MAX_RETRIES,
            reply_binding=soak.config.reply_binding,
        ) as client:
            return await soak.drive(lambda tag: _send_direct(client.chat.completions, tag), None)

    return asyncio.run(main())


def _run_proxy(soak: Soak, bundle: str, home: Path) -> tuple[Resources, Resources]:
    import httpx

    with proxy_process(soak.router.url, bundle, home, soak.config.reply_binding) as (url, pid):

        async def main() -> tuple[Resources, Resources]:
            limits = httpx.Limits(max_connections=soak.config.concurrency)
            async with httpx.AsyncClient(timeout=DEADLINE + 10.0, limits=limits) as http:
                return await soak.drive(lambda tag: _send_proxy(http, url, tag), pid)

        return asyncio.run(main())


def judge(soak: Soak, log: Path, report: Report) -> None:
    """Check every request's outcome against the faults the router logged for it."""
    proxy = soak.config.through_proxy
    expect, down_ok = (EXPECT_PROXY, DOWN_PROXY) if proxy else (EXPECT_DIRECT, DOWN_DIRECT)
    by_tag: dict[str, list[str]] = collections.defaultdict(list)
    for line in log.read_text().splitlines():
        entry = json.loads(line)
        report.attempts[entry["kind"]] += 1
        if entry["tag"] is not None:
            by_tag[entry["tag"]].append(entry["kind"])
    for i, tag in enumerate(soak.tags):
        result = soak.results[i]
        kinds = by_tag.get(tag, [])
        report.max_attempts = max(report.max_attempts, len(kinds))
        last = kinds[-1] if kinds else "(never reached the router)"
        report.outcomes[(last, result)] += 1
        overlapped = soak.started[i] <= soak.up_at and soak.ended[i] >= soak.down_at
        where = f"request #{i} (attempts {kinds})"
        if result == HUNG:
            report.violations.append(f"{where} hung past the {DEADLINE:g} s deadline")
        elif result == WRONG_REPLY:
            if last == "replay":
                report.findings.append(
                    f"{where}: the client ACCEPTED a replayed reply (another request's reply, "
                    "sealed for this client) as this request's answer"
                )
            else:
                report.violations.append(f"{where} got a reply that is not its own")
        elif result in down_ok and overlapped:
            report.down_errors += 1
        elif result in expect.get(last, frozenset()):
            pass
        else:
            report.violations.append(f"{where} ended as {result!r}")
        retried_after = [k for k in kinds[:-1] if k in NOT_RETRIED]
        if retried_after:
            report.violations.append(f"{where}: retried after {retried_after}")


def run_soak(config: Config) -> Report:
    """Run one soak and judge it."""
    report = Report(config)
    with tempfile.TemporaryDirectory(prefix="nomyo-soak-") as tmp:
        directory = Path(tmp)
        bundle, cert, key = make_trust_store(directory)
        log = directory / "faults.jsonl"
        router = RouterProcess(cert, key, log, config)
        soak = Soak(config, router, secrets.token_hex(4))
        started = time.monotonic()
        try:
            router.start()
            if config.through_proxy:
                home = directory / "home"
                home.mkdir()
                warm, end = _run_proxy(soak, bundle, home)
            else:
                warm, end = _run_direct(soak, bundle)
        finally:
            router.stop()
        report.elapsed = time.monotonic() - started
        report.warm, report.end = warm, end
        report.peak_rss_kib = soak.peak_rss_kib
        report.downtime = soak.up_at - soak.down_at
        judge(soak, log, report)
    if report.rss_growth > RSS_GROWTH:
        report.violations.append(
            f"RSS grew by {report.rss_growth:.1%} after warm-up (limit {RSS_GROWTH:.0%})"
        )
    if end.fds - end.sockets > warm.fds - warm.sockets + FD_SLACK:
        report.violations.append(
            f"open files other than sockets grew from {warm.fds - warm.sockets} "
            f"to {end.fds - end.sockets}"
        )
    if end.sockets > warm.sockets + config.concurrency:
        report.violations.append(f"sockets grew from {warm.sockets} to {end.sockets}")
    if end.threads > warm.threads + THREAD_SLACK:
        report.violations.append(f"threads grew from {warm.threads} to {end.threads}")
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--fault-rate", type=float, default=0.2)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--down", type=float, default=1.0, help="seconds the router stays down")
    parser.add_argument("--through-proxy", action="store_true")
    parser.add_argument("--short", action="store_true", help=f"{SHORT_REQUESTS} requests (CI)")
    parser.add_argument("--json", help="also write the report as JSON here")
    parser.add_argument(
        "--omit-payload-id",
        action="store_true",
        help="the router leaves _metadata.payload_id out of its replies (as the protocol allows)",
    )
    parser.add_argument("--reply-binding", choices=("off", "require"), default="off")
    args = parser.parse_args(argv)
    if not 0.0 <= args.fault_rate <= 1.0:
        parser.error("--fault-rate must be between 0 and 1")
    if args.requests < 20:
        parser.error("--requests must be at least 20")
    config = Config(
        requests=SHORT_REQUESTS if args.short else args.requests,
        fault_rate=args.fault_rate,
        seed=args.seed,
        concurrency=args.concurrency,
        through_proxy=args.through_proxy,
        down=args.down,
        progress=True,
        omit_payload_id=args.omit_payload_id,
        reply_binding=args.reply_binding,
    )
    report = run_soak(config)
    print(report.render(), flush=True)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report.to_json(), indent=2) + "\n")
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
