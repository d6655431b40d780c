"""Target (h): the plaintext copies a client leaves in its process memory, counted by
scanning the worker's memory (``/proc/PID/mem``) while it waits."""

from __future__ import annotations

import json
import secrets
import tempfile
from typing import Any

from _harness import BenchError, Workers, _parse_result, _readline, log
from _plan import MIB

__all__ = ["memscan", "scan_memory"]


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
