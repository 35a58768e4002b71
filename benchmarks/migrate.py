"""A state migration against the user's function run alone, same data.

    .venv/bin/python benchmarks/migrate.py [--keys 1800000] [--repeat 3] [--json]

Writes ``--keys`` users at version 1 (``{"name": "user <i>", "age", "visits"}``)
and checkpoints them. Then, in fresh processes, alternately:

- ``function``: opens the store without migrations and times, one after
  the other, what the migrate phase does around the function: decoding the
  table into a dict (``to_dict``), the migration's function alone on it
  (docs/migrations.md's ``split-name``, which touches every value) and
  encoding its result into a new table (``KVTable._put_items``); with the
  RSS the decoded dict adds;
- ``migrate``: opens a copy of the state with that migration registered and
  reads the migrate phase's seconds from the warmup report, the process's
  peak RSS (VmHWM) and, after it, one checkpoint's seconds (a put, then
  ``checkpoint()``: a snapshot of the migrated table).

Targets (issue): migrate phase <= 2 x the function's own time + one
checkpoint; peak RSS <= 2 x the table's memory (``memory_bytes`` of the
table before the migration) + 150 MiB. Medians of ``--repeat`` runs; the
ratio printed is the migrate phase / (2 x function + checkpoint).
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
from _common import machine, median, peak_rss_bytes, run_child  # noqa: E402

MIB = 2**20


def build(path: str, keys: int) -> None:
    import rehydrate as rh

    with rh.Store.open(path, sync="none") as s:
        put = s.put
        for i in range(keys):
            put("users", i, {"name": f"user {i}", "age": 20 + i % 60, "visits": i % 1000})
        s.checkpoint()


def split_name(t: dict) -> None:
    """The migration (docs/migrations.md's example): every value reshaped in place."""
    for u in t.values():
        u["first"], u["last"] = u.pop("name").split(" ", 1)


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def child_function(path: str) -> dict:
    import gc

    import rehydrate as rh

    with rh.Store.open(path, warmup=rh.Warmup(listeners=[])) as s:
        table = s.table("users")
        memory = table.memory_bytes
        gc.collect()
        rss0 = _rss_bytes()
        t0 = time.perf_counter()
        work = table.to_dict()
        decode_s = time.perf_counter() - t0
        dict_rss = _rss_bytes() - rss0
        gc.collect()  # what the open left, not the function's
        t0 = time.perf_counter()
        split_name(work)
        fn_s = time.perf_counter() - t0
        new = type(table)()
        t0 = time.perf_counter()
        new._reserve(len(work))
        new._put_items(work.items())
        encode_s = time.perf_counter() - t0
    return {"function_s": fn_s, "decode_s": decode_s, "encode_s": encode_s,
            "dict_rss_bytes": dict_rss, "memory_bytes": memory, "keys": len(work)}


def child_migrate(path: str) -> dict:
    import rehydrate as rh

    mig = rh.Migrations()
    mig.migration("split-name", table="users", to_version=2)(split_name)
    t0 = time.perf_counter()
    s = rh.Store.open(path, migrations=mig, warmup=rh.Warmup(listeners=[]))
    open_s = time.perf_counter() - t0
    peak = peak_rss_bytes()  # before the checkpoint below: the open's own peak
    phase = next(p for p in s.warmup_report["phases"] if p["name"] == "migrate")
    assert phase["migrations"] == ["split-name"], phase
    sample = s.table("users")[7]
    s.put("other", "after", 1)
    checkpoint_s = s.checkpoint()["duration_s"]
    memory_after = s.table("users").memory_bytes
    s.close()
    return {"migrate_s": phase["duration_s"], "open_s": open_s, "checkpoint_s": checkpoint_s,
            "peak_rss_bytes": peak, "memory_after_bytes": memory_after, "sample": sample}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--keys", type=int, default=1_800_000)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--json", action="store_true")
    p.add_argument("--child", nargs=2, metavar=("WHAT", "DIR"), help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.child:
        what, path = a.child
        out = child_function(path) if what == "function" else child_migrate(path)
        print(json.dumps(out))
        return 0
    work = tempfile.mkdtemp(prefix="rh-migrate-")
    try:
        base = os.path.join(work, "state")
        print(f"building {a.keys:,} users at version 1 ...", file=sys.stderr)
        build(base, a.keys)
        me = os.path.abspath(__file__)
        fns, migs = [], []
        for i in range(a.repeat):
            fns.append(run_child([me, "--child", "function", base]))
            run = os.path.join(work, f"run{i}")
            shutil.copytree(base, run)
            migs.append(run_child([me, "--child", "migrate", run]))
            shutil.rmtree(run)
            print(f"  run {i + 1}: function {fns[-1]['function_s']:.3f} s, decode "
                  f"{fns[-1]['decode_s']:.3f} s, encode {fns[-1]['encode_s']:.3f} s, migrate phase "
                  f"{migs[-1]['migrate_s']:.3f} s, checkpoint {migs[-1]['checkpoint_s']:.3f} s, "
                  f"peak RSS {migs[-1]['peak_rss_bytes'] / MIB:.0f} MiB", file=sys.stderr)
        fn_s = median([r["function_s"] for r in fns])
        migrate_s = median([r["migrate_s"] for r in migs])
        checkpoint_s = median([r["checkpoint_s"] for r in migs])
        peak = median([r["peak_rss_bytes"] for r in migs])
        memory = median([r["memory_bytes"] for r in fns])
        time_target = 2 * fn_s + checkpoint_s
        rss_target = 2 * memory + 150 * MIB
        out = {"keys": a.keys, "repeat": a.repeat, "function_s": fn_s,
               "decode_s": median([r["decode_s"] for r in fns]),
               "encode_s": median([r["encode_s"] for r in fns]),
               "dict_rss_bytes": median([r["dict_rss_bytes"] for r in fns]),
               "migrate_s": migrate_s, "ratio": migrate_s / time_target,
               "checkpoint_s": checkpoint_s, "open_s": median([r["open_s"] for r in migs]),
               "time_target_s": time_target, "time_ok": migrate_s <= time_target,
               "peak_rss_bytes": peak, "memory_bytes": memory,
               "memory_after_bytes": median([r["memory_after_bytes"] for r in migs]),
               "rss_target_bytes": rss_target, "rss_ok": peak <= rss_target,
               "sample": migs[0]["sample"], "machine": machine()}
        if a.json:
            print(json.dumps(out, indent=2))
        else:
            verdict = {True: "met", False: "NOT met"}
            print(f"function alone   {fn_s:.3f} s")
            print(f"around it        decode (to_dict) {out['decode_s']:.3f} s, encode "
                  f"(_put_items) {out['encode_s']:.3f} s; the decoded dict "
                  f"{out['dict_rss_bytes'] / MIB:.0f} MiB of RSS")
            print(f"one checkpoint   {checkpoint_s:.3f} s")
            print(f"migrate phase    {migrate_s:.3f} s; target <= 2 x {fn_s:.3f} + "
                  f"{checkpoint_s:.3f} (one checkpoint) = {time_target:.3f} s: "
                  f"{verdict[out['time_ok']]} ({migrate_s / time_target:.2f} x)")
            print(f"peak RSS         {peak / MIB:.0f} MiB; target <= 2 x {memory / MIB:.0f} MiB "
                  f"+ 150 MiB = {rss_target / MIB:.0f} MiB: {verdict[out['rss_ok']]} "
                  f"({peak / rss_target:.2f} x)")
        return 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
