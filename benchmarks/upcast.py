"""Replay through a Python upcaster against the native path, same run.

    .venv/bin/python benchmarks/upcast.py [--records 1000000] [--repeat 5] [--json]

Writes a log of ``--records`` puts at version 1 (dict values of two small
fields, to 200,000 keys), then opens it alternately in fresh processes:

- ``native``: no migrations: records go straight into the native table;
- ``registered``: migrations registered (an upcaster for another table):
  this table has none, so it must stay on the native path;
- ``upcast``: an upcaster 1 -> 2 reshaping every value
  (``{"cents": c, "n": n}`` -> ``{"amount": c / 100, "n": n}``); each put
  is decoded, upcast and re-encoded, a run of records at a time.

Target (issue): >= 1M records/s through the upcaster; the native path as
fast as without migrations. Replay rate = records applied / replay phase
seconds (from the warmup report).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import machine, median, run_child  # noqa: E402


def build(path: str, records: int, keys: int) -> None:
    import rehydrate as rh

    with rh.Store.open(path, sync="none") as s:
        put = s.put
        for i in range(records):
            put("prices", i % keys, {"cents": i, "n": i & 7})


def child(path: str, upcast: bool, registered: bool = False) -> dict:
    import rehydrate as rh

    mig = None
    if registered:
        mig = rh.Migrations()
        mig.upcaster("another_table", from_version=1)(lambda v: v)
    if upcast:
        mig = rh.Migrations()

        @mig.upcaster("prices", from_version=1)
        def to_amount(v):
            return {"amount": v["cents"] / 100, "n": v["n"]}

    t0 = time.perf_counter()
    s = rh.Store.open(path, migrations=mig, warmup=rh.Warmup(listeners=[]))
    open_s = time.perf_counter() - t0
    replay = next(p for p in s.warmup_report["phases"] if p["name"] == "replay")
    sample = s.table("prices")[5]
    s.close()
    return {"open_s": open_s, "replay_s": replay["duration_s"], "records": replay["records"],
            "rate": replay["records"] / replay["duration_s"], "sample": repr(sample)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--records", type=int, default=1_000_000)
    p.add_argument("--keys", type=int, default=200_000)
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--json", action="store_true")
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--upcast", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--registered", action="store_true", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.child:
        print(json.dumps(child(a.child, a.upcast, a.registered)))
        return 0
    work = tempfile.mkdtemp(prefix="rh-upcast-")
    try:
        path = os.path.join(work, "state")
        print(f"building {a.records:,} v1 records ...", file=sys.stderr)
        build(path, a.records, a.keys)
        me = os.path.abspath(__file__)
        native, registered, upcast = [], [], []
        for i in range(a.repeat):
            native.append(run_child([me, "--child", path]))
            registered.append(run_child([me, "--child", path, "--registered"]))
            upcast.append(run_child([me, "--child", path, "--upcast"]))
            print(f"  run {i + 1}: native {native[-1]['rate'] / 1e6:.2f} M/s, registered "
                  f"{registered[-1]['rate'] / 1e6:.2f} M/s, upcast "
                  f"{upcast[-1]['rate'] / 1e6:.2f} M/s", file=sys.stderr)
        out = {"records": a.records, "keys": a.keys,
               "native_records_per_s": median([r["rate"] for r in native]),
               "upcast_records_per_s": median([r["rate"] for r in upcast]),
               "registered_records_per_s": median([r["rate"] for r in registered]),
               "native_open_s": median([r["open_s"] for r in native]),
               "upcast_open_s": median([r["open_s"] for r in upcast]),
               "target_upcast_records_per_s": 1_000_000, "machine": machine(),
               "samples": [native[0]["sample"], upcast[0]["sample"]]}
        if a.json:
            print(json.dumps(out, indent=2))
        else:
            print(f"native replay  {out['native_records_per_s'] / 1e6:.2f} M records/s "
                  f"(open {out['native_open_s']:.3f} s)")
            print(f"registered     {out['registered_records_per_s'] / 1e6:.2f} M records/s "
                  "(migrations given, none for this table)")
            print(f"upcast replay  {out['upcast_records_per_s'] / 1e6:.2f} M records/s "
                  f"(open {out['upcast_open_s']:.3f} s; target >= 1.00 M/s)")
        return 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
