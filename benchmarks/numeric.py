"""NumericTable replay: records/s of a cold open, and of the apply step alone.

    .venv/bin/python benchmarks/numeric.py [--ops 5000000] [--rows 1000000] [--repeat 3] [--json]

Builds a store with one NumericTable ({"hits": int64, "score": float64},
``rows`` rows) and ``ops`` records: puts of one cell at a random row (what a
``store.incr(..., column=)`` logs too), in batches of 10,000. Then, in fresh
processes:

- ``open``: a cold ``Store.open`` (replays every record);
- ``apply``: the replay loop (``scan_frames``) over the segments already in
  memory, run once checking only (``apply=False``) and once applying; the
  difference is the apply step, which for numeric records runs without the
  GIL (numcore.h).

Target (issue): numeric replay >= 50M ops/s.
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
from _common import machine, median, peak_rss_bytes, run_child  # noqa: E402

COLUMNS = {"hits": "int64", "score": "float64"}


def _tables(rows):
    import rehydrate as rh

    return {"stats": rh.NumericTable(COLUMNS, rows=rows)}


def build(path: str, ops: int, rows: int) -> None:
    import rehydrate as rh

    rng = random.Random(3)
    with rh.Store.open(path, sync="none", tables=_tables(rows)) as s:
        for start in range(0, ops, 10_000):
            with s.batch() as b:
                for _ in range(min(10_000, ops - start)):
                    if rng.random() < 0.8:
                        b.put("stats", rng.randrange(rows), {"hits": rng.randrange(1 << 20)})
                    else:
                        b.put("stats", rng.randrange(rows), {"score": rng.random()})


def child_open(path: str, rows: int) -> dict:
    import rehydrate as rh

    t0 = time.perf_counter()
    s = rh.Store.open(path, tables=_tables(rows))
    dt = time.perf_counter() - t0
    out = {"open_s": dt, "records": s.recovery_report.applied,
           "peak_rss_bytes": peak_rss_bytes(), "core": rh._backend.core().IMPLEMENTATION}
    s.close()
    return out


def child_apply(path: str, rows: int) -> dict:
    """The scan loop alone, segments read first: check-only vs applying."""
    from rehydrate._backend import core
    from rehydrate.tables import TableRegistry
    from rehydrate.kinds import resolve_kinds
    from rehydrate.wal import list_segments

    c = core()
    segs = [open(seg.path, "rb").read() for seg in list_segments(os.path.join(path, "wal"))[0]]
    times = {False: [], True: []}
    records = 0
    for _ in range(5):  # alternating, so both see the same machine
        for apply in (False, True):
            reg = TableRegistry(c, kinds=resolve_kinds(_tables(rows)))
            nlsn, records = 1, 0
            t0 = time.perf_counter()
            for data in segs:
                ctx = c.SegmentContext(reg)
                r = c.scan_frames(data, 32, nlsn, 0, ctx, apply)
                nlsn, records = r.next_lsn, records + r.records
            times[apply].append(time.perf_counter() - t0)
    check_s, apply_s = median(times[False]), median(times[True])
    return {"scan_check_s": check_s, "scan_apply_s": apply_s, "records": records,
            "apply_only_s": max(apply_s - check_s, 1e-9)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ops", type=int, default=5_000_000)
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--json", action="store_true")
    p.add_argument("--child-open", help=argparse.SUPPRESS)
    p.add_argument("--child-apply", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.child_open:
        print(json.dumps(child_open(a.child_open, a.rows)))
        return 0
    if a.child_apply:
        print(json.dumps(child_apply(a.child_apply, a.rows)))
        return 0
    work = tempfile.mkdtemp(prefix="rh-numeric-")
    try:
        path = os.path.join(work, "state")
        t0 = time.perf_counter()
        build(path, a.ops, a.rows)
        build_s = time.perf_counter() - t0
        me = os.path.abspath(__file__)
        opens, applies = [], []
        for _ in range(a.repeat):
            opens.append(run_child([me, "--child-open", path, "--rows", str(a.rows)]))
            applies.append(run_child([me, "--child-apply", path, "--rows", str(a.rows)]))
        open_s = median([o["open_s"] for o in opens])
        apply_s = median([x["apply_only_s"] for x in applies])
        check_s = median([x["scan_check_s"] for x in applies])
        out = {"ops": a.ops, "rows": a.rows, "build_s": build_s, "core": opens[0]["core"],
               "open_s": open_s, "open_records_per_s": a.ops / open_s,
               "scan_check_s": check_s, "apply_only_s": apply_s,
               "apply_ops_per_s": a.ops / apply_s,
               "peak_rss_bytes": max(o["peak_rss_bytes"] for o in opens),
               "runs": {"open_s": [o["open_s"] for o in opens],
                        "apply_only_s": [x["apply_only_s"] for x in applies]},
               "machine": machine()}
        if a.json:
            print(json.dumps(out, indent=2))
        else:
            print(f"{a.ops:,} numeric ops over {a.rows:,} rows ({out['core']} core), "
                  f"median of {a.repeat}:")
            print(f"  cold open      {open_s:.3f} s   {out['open_records_per_s'] / 1e6:.1f} M "
                  "records/s (read, check, decode, apply)")
            print(f"  scan, no apply {check_s:.3f} s")
            print(f"  apply step     {apply_s:.3f} s   {out['apply_ops_per_s'] / 1e6:.1f} M ops/s"
                  "   target >= 50 M ops/s")
        return 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
