"""Write throughput by sync mode: single puts and batches of 1,000.

    .venv/bin/python benchmarks/write_throughput.py [--ops 2000000] [--max-s 5] [--repeat 5] [--json]

For each sync mode (``always``, ``interval``, ``none``) and each way of
writing:

- ``put``: ``store.put`` from one thread, one record per call;
- ``batch``: ``store.batch()`` of 1,000 puts, committed at once;

a fresh process opens a new store in that mode and writes up to ``--ops``
puts of a 32-byte value to new keys (as ``benchmarks/write_read.py`` does),
or stops once ``--max-s`` seconds have passed (the clock is read every 1,000
puts): under ``always`` every commit waits for its fsync, so single puts run
at the disk's fsync rate and ``--ops`` of them would take minutes. The six runs
alternate in each of ``--repeat`` rounds. Reports ops/s (puts written /
seconds, medians) and each one's ratio to ``sync="none"``, the baseline
measured alongside. As in write_read.py, the time covers the writes, not
the ``close`` that flushes what ``interval`` and ``none`` still buffer.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import machine, median, run_child  # noqa: E402

MODES = ("always", "interval", "none")
WAYS = ("put", "batch")
UNIT = 1000  # puts per batch, and between two looks at the clock


def child(path: str, mode: str, way: str, ops: int, max_s: float) -> dict:
    import rehydrate as rh

    rng = random.Random(2)
    keys = [f"k:{rng.randrange(10**9)}" for _ in range(ops)]
    value = bytes(range(32))
    store = rh.Store.open(path, sync=mode)
    put, done = store.put, 0
    t0 = time.perf_counter()
    while done < ops and time.perf_counter() - t0 < max_s:
        chunk = keys[done:done + UNIT]
        if way == "batch":
            with store.batch() as b:
                bput = b.put
                for k in chunk:
                    bput("t", k, value)
        else:
            for k in chunk:
                put("t", k, value)
        done += len(chunk)
    seconds = time.perf_counter() - t0
    store.close()
    shutil.rmtree(path)
    return {"ops": done, "s": seconds, "ops_per_s": done / seconds,
            "core": rh._backend.core().IMPLEMENTATION}


def fmt_rate(r: float) -> str:
    return f"{r / 1e6:6.2f} M/s" if r >= 1e5 else f"{r / 1e3:6.1f} k/s"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ops", type=int, default=2_000_000)
    p.add_argument("--max-s", type=float, default=5.0)
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--json", action="store_true")
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--mode", choices=MODES, help=argparse.SUPPRESS)
    p.add_argument("--way", choices=WAYS, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.child:
        print(json.dumps(child(a.child, a.mode, a.way, a.ops, a.max_s)))
        return 0
    work = tempfile.mkdtemp(prefix="rh-writes-")
    try:
        me = os.path.abspath(__file__)
        runs = {(m, w): [] for m in MODES for w in WAYS}
        for i in range(a.repeat):
            for (m, w), rs in runs.items():
                rs.append(run_child([me, "--child", os.path.join(work, f"{m}-{w}-{i}"),
                                     "--mode", m, "--way", w, "--ops", str(a.ops),
                                     "--max-s", str(a.max_s)]))
            print(f"  run {i + 1}: " + ", ".join(f"{m}/{w} {fmt_rate(rs[-1]['ops_per_s']).strip()}"
                                                 for (m, w), rs in runs.items()),
                  file=sys.stderr)
        rate = {k: median([r["ops_per_s"] for r in rs]) for k, rs in runs.items()}
        out = {"benchmark": "write_throughput", "repeat": a.repeat, "max_ops": a.ops,
               "max_s": a.max_s, "batch_size": UNIT, "core": runs["none", "put"][0]["core"],
               "modes": {m: {w: {"ops_per_s": rate[m, w],
                                 "ops": median([r["ops"] for r in runs[m, w]]),
                                 "vs_none": rate[m, w] / rate["none", w]} for w in WAYS}
                         for m in MODES},
               "machine": machine()}
        if a.json:
            print(json.dumps(out, indent=2))
        else:
            print(f"core {out['core']}, median of {a.repeat} fresh processes; up to "
                  f"{a.ops:,} puts or {a.max_s:g} s each")
            print(f"{'sync':<9} {'put':>11} {'x none':>7}   {'batch of 1,000':>14} {'x none':>7}")
            for m in MODES:
                put, batch = out["modes"][m]["put"], out["modes"][m]["batch"]
                print(f"{m:<9} {fmt_rate(put['ops_per_s']):>11} {put['vs_none']:>7.3f}   "
                      f"{fmt_rate(batch['ops_per_s']):>14} {batch['vs_none']:>7.3f}")
        return 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
