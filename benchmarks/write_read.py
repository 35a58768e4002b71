"""Write and read throughput of a live store, each beside its baseline.

    python benchmarks/write_read.py [--puts 2000000] [--keys 1800000] [--repeat 5]

- ``put`` from one thread, ``sync="none"`` and ``"interval"`` (target >= 1M/s);
- records through ``batch()`` (target >= 3M/s);
- random reads ``table[key]`` on K keys with 32-byte bytes values, against a
  Python dict's ``get`` on the same keys in the same loop shape (target: >= 0.8x).

Medians over ``--repeat`` runs; the machine is shared and noisy. Puts and
batches under each sync mode, ``always`` included, in fresh processes:
``benchmarks/write_throughput.py``.
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
from _common import machine, median  # noqa: E402


def bench_put(work: str, n: int, sync: str, keys: list, value: bytes) -> float:
    import rehydrate as rh

    path = tempfile.mkdtemp(dir=work)
    shutil.rmtree(path)
    store = rh.Store.open(path, sync=sync)
    put = store.put
    t0 = time.perf_counter()
    for i in range(n):
        put("t", keys[i], value)
    dt = time.perf_counter() - t0
    store.close()
    shutil.rmtree(path)
    return n / dt


def bench_batch(work: str, n: int, keys: list, value: bytes, batch_size: int = 10_000):
    """(records/s inserting n new keys, records/s overwriting the same n keys)."""
    import rehydrate as rh

    path = tempfile.mkdtemp(dir=work)
    shutil.rmtree(path)
    store = rh.Store.open(path, sync="interval")
    rates = []
    for _pass in range(2):
        t0 = time.perf_counter()
        for start in range(0, n, batch_size):
            with store.batch() as b:
                put = b.put
                for k in keys[start:start + batch_size]:
                    put("t", k, value)
        rates.append(n / (time.perf_counter() - t0))
    store.close()
    shutil.rmtree(path)
    return rates


def bench_reads(work: str, nkeys: int, nreads: int, repeat: int):
    import rehydrate as rh

    path = os.path.join(work, "reads")
    rng = random.Random(1)
    keys = [f"user:{i:08d}" for i in range(nkeys)]
    values = [rng.randbytes(32) for _ in range(nkeys)]
    with rh.Store.open(path, sync="none") as store:
        for start in range(0, nkeys, 50_000):
            with store.batch() as b:
                for i in range(start, min(start + 50_000, nkeys)):
                    b.put("t", keys[i], values[i])
    store = rh.Store.open(path)
    table = store.table("t")
    d = dict(zip(keys, values))
    probe = [keys[rng.randrange(nkeys)] for _ in range(nreads)]
    assert all(table[k] == d[k] for k in probe[:1000])
    ours, theirs = [], []
    for _ in range(repeat):
        get = d.get
        t0 = time.perf_counter()
        for k in probe:
            get(k)
        theirs.append(nreads / (time.perf_counter() - t0))
        t0 = time.perf_counter()
        for k in probe:
            table[k]
        ours.append(nreads / (time.perf_counter() - t0))
    store.close()
    return median(ours), median(theirs)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--puts", type=int, default=2_000_000)
    p.add_argument("--keys", type=int, default=1_800_000)
    p.add_argument("--reads", type=int, default=2_000_000)
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)

    import rehydrate as rh

    work = tempfile.mkdtemp(prefix="rehydrate-wr-")
    try:
        rng = random.Random(2)
        keys = [f"k:{rng.randrange(10**9)}" for _ in range(args.puts)]
        value = bytes(range(32))
        res = {"benchmark": "write_read", "core": rh._backend.core().IMPLEMENTATION,
               "machine": machine()}
        for sync in ("none", "interval"):
            runs = [bench_put(work, args.puts, sync, keys, value) for _ in range(args.repeat)]
            res[f"put_per_s_{sync}"] = median(runs)
        runs = [bench_batch(work, args.puts, keys, value) for _ in range(args.repeat)]
        res["batch_records_per_s"] = median([r[0] for r in runs])
        res["batch_overwrite_records_per_s"] = median([r[1] for r in runs])
        ours, theirs = bench_reads(work, args.keys, args.reads, args.repeat)
        res.update(table_get_per_s=ours, dict_get_per_s=theirs, read_ratio=ours / theirs)
        if args.json:
            print(json.dumps(res))
        else:
            print(f"core {res['core']}")
            print(f"put, sync=none        {res['put_per_s_none'] / 1e6:6.2f} M/s  (target >= 1)")
            print(f"put, sync=interval    {res['put_per_s_interval'] / 1e6:6.2f} M/s  (target >= 1)")
            print(f"batch() new keys      {res['batch_records_per_s'] / 1e6:6.2f} M/s  (target >= 3)")
            print(f"batch() overwrites    {res['batch_overwrite_records_per_s'] / 1e6:6.2f} M/s")
            print(f"table[key]            {ours / 1e6:6.2f} M/s")
            print(f"dict.get              {theirs / 1e6:6.2f} M/s")
            print(f"read ratio            {res['read_ratio']:6.2f}  (target >= 0.8)")
        return 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
