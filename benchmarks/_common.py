"""Shared helpers for the benchmarks: child processes, medians, machine facts."""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys


def run_child(args, env=None) -> dict:
    """Run ``python <args>`` in a fresh process; it prints one JSON object last."""
    out = subprocess.run([sys.executable, *args], check=True, capture_output=True, text=True,
                         env=env)
    return json.loads(out.stdout.strip().splitlines()[-1])


def peak_rss_bytes() -> int:
    """This process's peak RSS (VmHWM).

    Not getrusage's ru_maxrss: Linux carries that across exec, so a child
    started by a big parent would report the parent's peak.
    """
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def median(xs):
    return statistics.median(xs)


def machine() -> dict:
    return {"cpus": os.cpu_count(), "python": platform.python_version(),
            "platform": platform.platform(), "processor": platform.processor()}


def rss_budget(memory_bytes: int) -> float:
    """The cold-open peak-RSS target: 1.5 x the tables' memory_bytes + 150 MiB."""
    return 1.5 * memory_bytes + 150 * 2**20


def fmt_s(x: float) -> str:
    return f"{x:.3f} s"


def timed_open(directory: str, table: str = "kv") -> dict:
    """A cold ``Store.open`` in this (fresh) process: seconds, what it did, peak RSS."""
    import time

    import rehydrate as rh

    t0 = time.perf_counter()
    store = rh.Store.open(directory)
    open_s = time.perf_counter() - t0
    t = store.table(table)
    out = {"open_s": open_s, "applied": store.recovery_report.applied, "keys": len(t),
           "memory_bytes": t.memory_bytes, "peak_rss_bytes": peak_rss_bytes(),
           "core": rh._backend.core().IMPLEMENTATION}
    store.close()
    return out
