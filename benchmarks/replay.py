"""Cold-start replay benchmark: rehydrate vs a pure-Python msgpack+dict baseline.

    python benchmarks/replay.py [--ops 10000000] [--keys 2000000] [--repeat 3]

Writes N mixed ops (80% put of 32-byte values over K keys, 10% incr, 10%
delete) through ``Store`` and the same ops into a msgpack file. Then, in the
same run and alternating, times in fresh processes:

- ``rehydrate``: ``Store.open`` of the directory (the whole cold open);
- ``python_msgpack_dict``: ``msgpack.Unpacker`` over the file, applied to a dict.

Reports medians, the ratio (target: rehydrate <= 0.15 x baseline), and peak
RSS of the rehydrate child against the tables' ``memory_bytes`` (target:
<= 1.5 x memory_bytes + 150 MiB).
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
from _common import (machine, median, peak_rss_bytes, rss_budget, run_child,  # noqa: E402
                     timed_open)

OP_PUT, OP_INCR, OP_DELETE = 0, 1, 2


def write_ops(store, chunk) -> None:
    """Write ``chunk`` (op_stream's items) to table "kv" in batches of 1,000
    ops, as a service writing in small transactions; the store cuts frames
    of ~256 KiB from them."""
    for start in range(0, len(chunk), 1000):
        with store.batch() as b:
            put, incr, delete = b.put, b.incr, b.delete
            for kind, k, v in chunk[start:start + 1000]:
                if kind == OP_PUT:
                    put("kv", k, v)
                elif kind == OP_INCR:
                    incr("kv", k, 1)
                else:
                    delete("kv", k)


def op_stream(ops: int, keys: int, seed: int = 42):
    """Deterministic (op, key, value) chunks, generated with numpy for speed."""
    import numpy as np

    rng = np.random.default_rng(seed)
    chunk = 100_000
    for start in range(0, ops, chunk):
        n = min(chunk, ops - start)
        r = rng.random(n)
        kidx = rng.integers(0, keys, n)
        vals = rng.bytes(32 * n)
        kinds = np.where(r < 0.8, OP_PUT, np.where(r < 0.9, OP_INCR, OP_DELETE))
        out = []
        for i in range(n):
            kind = int(kinds[i])
            k = int(kidx[i])
            if kind == OP_PUT:
                out.append((OP_PUT, f"key:{k}", vals[32 * i:32 * i + 32]))
            elif kind == OP_INCR:
                out.append((OP_INCR, f"cnt:{k}", 1))
            else:
                out.append((OP_DELETE, f"key:{k}", None))
        yield out


def build(directory: str, baseline_file: str, ops: int, keys: int) -> dict:
    import msgpack

    import rehydrate as rh

    t0 = time.perf_counter()
    packer = msgpack.Packer(use_bin_type=True)
    with rh.Store.open(directory, sync="none") as store, open(baseline_file, "wb") as f:
        for chunk in op_stream(ops, keys):
            write_ops(store, chunk)
            f.write(b"".join(packer.pack(item) for item in chunk))
        lsn = store.lsn
    return {"lsn": lsn, "build_s": time.perf_counter() - t0}


def child_baseline(path: str) -> dict:
    import msgpack

    t0 = time.perf_counter()
    state = {}
    with open(path, "rb") as f:
        for kind, k, v in msgpack.Unpacker(f, raw=False, use_list=False):
            if kind == OP_PUT:
                state[k] = v
            elif kind == OP_INCR:
                state[k] = state.get(k, 0) + v
            else:
                state.pop(k, None)
    return {"open_s": time.perf_counter() - t0, "keys": len(state),
            "peak_rss_bytes": peak_rss_bytes()}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--ops", type=int, default=10_000_000)
    p.add_argument("--keys", type=int, default=2_000_000)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--dir", help="work directory (default: a temporary one)")
    p.add_argument("--json", action="store_true")
    p.add_argument("--child-open", help=argparse.SUPPRESS)
    p.add_argument("--child-baseline", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child_open:
        print(json.dumps(timed_open(args.child_open)))
        return 0
    if args.child_baseline:
        print(json.dumps(child_baseline(args.child_baseline)))
        return 0

    work = args.dir or tempfile.mkdtemp(prefix="rehydrate-bench-")
    try:
        state_dir = os.path.join(work, "state")
        base_file = os.path.join(work, "ops.msgpack")
        print(f"building {args.ops:,} ops over {args.keys:,} keys in {work} ...", file=sys.stderr)
        built = build(state_dir, base_file, args.ops, args.keys)
        me = os.path.abspath(__file__)
        ours, base = [], []
        for i in range(args.repeat):
            ours.append(run_child([me, "--child-open", state_dir]))
            base.append(run_child([me, "--child-baseline", base_file]))
            print(f"  run {i + 1}: rehydrate {ours[-1]['open_s']:.3f} s, "
                  f"baseline {base[-1]['open_s']:.3f} s", file=sys.stderr)
        if ours[0]["keys"] != base[0]["keys"]:
            raise SystemExit(f"state differs: {ours[0]['keys']} vs {base[0]['keys']} keys")
        m_ours = median([r["open_s"] for r in ours])
        m_base = median([r["open_s"] for r in base])
        rss = median([r["peak_rss_bytes"] for r in ours])
        mem = ours[0]["memory_bytes"]
        budget = rss_budget(mem)
        result = {
            "benchmark": "replay", "ops": args.ops, "keys": args.keys, "repeat": args.repeat,
            "core": ours[0]["core"], "build_s": built["build_s"],
            "wal_bytes": sum(os.path.getsize(os.path.join(state_dir, "wal", n))
                             for n in os.listdir(os.path.join(state_dir, "wal"))),
            "rehydrate_open_s": m_ours, "baseline_open_s": m_base,
            "ratio": m_ours / m_base, "target_ratio": 0.15,
            "records_per_s": ours[0]["applied"] / m_ours,
            "peak_rss_bytes": rss, "memory_bytes": mem, "rss_budget_bytes": budget,
            "final_keys": ours[0]["keys"], "machine": machine(),
        }
        if args.json:
            print(json.dumps(result))
        else:
            print(f"rehydrate cold open     {m_ours:.3f} s  ({result['records_per_s'] / 1e6:.1f} M records/s, "
                  f"core {result['core']})")
            print(f"python_msgpack_dict     {m_base:.3f} s")
            print(f"ratio                   {result['ratio']:.3f}  (target <= 0.15)")
            print(f"peak RSS                {rss / 2**20:.0f} MiB  (budget {budget / 2**20:.0f} MiB "
                  f"= 1.5 x {mem / 2**20:.0f} MiB tables + 150 MiB)")
        return 0
    finally:
        if not args.dir:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
