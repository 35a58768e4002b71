"""The cost of one awaited write (rehydrate.aio) next to one sync write.

    .venv/bin/python benchmarks/aio_write.py            # --writes N --runs R --json

For each sync mode: N puts of a small value with ``Store.put``, then N with
``await AsyncStore.put`` (one at a time, on one event loop), each timed on
its own; prints the median and p99 per write in microseconds. Under
"interval" and "none" an awaited write that need not wait runs on the loop;
under "always" its fsync runs on the store's durability thread and the
coroutine waits for it there (one write in flight: no group commit).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import rehydrate as rh  # noqa: E402
import rehydrate.aio as rha  # noqa: E402
from _common import machine  # noqa: E402


def _stats(samples: list[float]) -> dict[str, float]:
    samples = sorted(samples)
    return {"median_us": statistics.median(samples) * 1e6,
            "p99_us": samples[int(len(samples) * 0.99) - 1] * 1e6}


def sync_writes(path: str, mode: str, n: int) -> dict[str, float]:
    out = []
    clock = time.perf_counter
    with rh.Store.open(path, sync=mode) as s:
        for i in range(n):
            t0 = clock()
            s.put("t", i, i)
            out.append(clock() - t0)
    return _stats(out)


def awaited_writes(path: str, mode: str, n: int) -> dict[str, float]:
    async def main() -> list[float]:
        out = []
        clock = time.perf_counter
        async with await rha.open(path, sync=mode) as s:
            for i in range(n):
                t0 = clock()
                await s.put("t", i, i)
                out.append(clock() - t0)
        return out

    return _stats(asyncio.run(main()))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--writes", type=int, default=20000)
    ap.add_argument("--always-writes", type=int, default=2000)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    results = {}
    with tempfile.TemporaryDirectory() as d:
        for mode in ("interval", "none", "always"):
            n = a.always_writes if mode == "always" else a.writes
            results[mode] = {
                "sync": sync_writes(os.path.join(d, f"{mode}-sync"), mode, n),
                "awaited": awaited_writes(os.path.join(d, f"{mode}-aio"), mode, n),
                "writes": n}
    report = {"machine": machine(), "results": results}
    if a.json:
        print(json.dumps(report))
        return
    for mode, r in results.items():
        print(f"sync={mode:<9} {r['writes']} writes   Store.put median {r['sync']['median_us']:.2f} us"
              f" (p99 {r['sync']['p99_us']:.1f})   await AsyncStore.put median "
              f"{r['awaited']['median_us']:.2f} us (p99 {r['awaited']['p99_us']:.1f})")


if __name__ == "__main__":
    main()
