"""What the report says about the machine: its CPU, load, Python, and its health (the
cost of a fresh page, the CPU time the hypervisor took)."""

from __future__ import annotations

import contextlib
import datetime
import mmap
import os
import platform
import statistics
import time

from _plan import MIB

__all__ = ["machine_info", "page_touch_us", "steal_seconds"]


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
