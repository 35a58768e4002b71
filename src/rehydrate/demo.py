"""``make demo``: write a sample state, rehydrate it in a fresh process, verify it.

    python -m rehydrate.demo [--dir DIR] [--ops N] [--keys K]

1. writes N mixed ops (80% put of 32-byte values, 10% incr, 10% delete over
   K keys) through ``Store`` in batches, with a progress bar;
2. starts a fresh Python process that opens the directory (the cold start),
   with a progress bar and a per-phase summary, and checks the state against
   what the writer says it wrote;
3. verifies the directory with ``rehydrate.verify``;
4. checkpoints, and opens it again in a fresh process, from the snapshot.
"""

from __future__ import annotations

from typing import Any

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time

from .shutdown_risk import silence


def _bar(total, desc, unit):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit=unit, unit_scale=True, file=sys.stderr,
                dynamic_ncols=True)


def write_sample(path: str, ops: int, keys: int, seed: int = 7) -> dict:
    """Write the sample; returns what the state must look like afterwards."""
    import rehydrate as rh

    rng = random.Random(seed)
    present = {}
    counters: dict[Any, Any] = {}
    batch_ops = 1000
    t0 = time.perf_counter()
    with rh.Store.open(path, sync="interval") as store, _bar(ops, "write", "op") as bar:
        done = 0
        while done < ops:
            n = min(batch_ops, ops - done)
            with store.batch() as b:
                for _ in range(n):
                    r = rng.random()
                    k = rng.randrange(keys)
                    if r < 0.8:
                        v = rng.randbytes(32)
                        b.put("kv", f"key:{k}", v)
                        present[k] = v
                    elif r < 0.9:
                        b.incr("counters", f"c:{k % 1000}", 1)
                        counters[k % 1000] = counters.get(k % 1000, 0) + 1
                    else:
                        b.delete("kv", f"key:{k}")
                        present.pop(k, None)
            done += n
            bar.update(n)
        lsn = store.sync()
    return {"ops": ops, "lsn": lsn, "kv_keys": len(present),
            "counter_total": sum(counters.values()),
            "sample": {f"key:{k}": present[k].hex() for k in list(present)[:50]},
            "write_s": time.perf_counter() - t0}


def rehydrate_and_check(path: str, expected_file: str) -> int:
    """The fresh process: open (cold start) with progress, print phases, check."""
    import rehydrate as rh

    expected = json.load(open(expected_file))
    bar = _bar(0, "rehydrate", "B")

    def progress(done, total):
        bar.total = total
        bar.n = done
        bar.refresh()

    store = rh.Store.open(path, progress=progress)
    bar.close()
    stats: Any = store.open_stats
    kv, counters = store.table("kv"), store.table("counters")
    snap: Any = next((ph for ph in stats["phases"] if ph["name"] == "snapshot"), {})
    total_records = store.recovery_report.applied + snap.get("lsn", 0)
    print(f"\ncold open of {path} (core: {rh._backend.core().IMPLEMENTATION}):")
    for ph in stats["phases"]:
        extra = ""
        if ph.get("lsn"):
            extra = f"  state at LSN {ph['lsn']:,} from the snapshot"
        if ph.get("records"):
            rate = ph["records"] / ph["duration_s"] if ph["duration_s"] else 0
            extra = (f"  {ph['records']:,} records, {ph['bytes'] / 1e6:.1f} MB, "
                     f"{rate / 1e6:.2f} M records/s")
        print(f"  {ph['name']:<18}{ph['duration_s'] * 1000:9.1f} ms{extra}")
    print(f"  {'total open':<18}{stats['total_s'] * 1000:9.1f} ms")
    print(f"  tables: kv {len(kv):,} keys ({kv.memory_bytes / 1e6:.1f} MB), "
          f"counters {len(counters):,} keys; last LSN {store.lsn:,}")
    problems = []
    if store.lsn != expected["lsn"]:
        problems.append(f"last LSN {store.lsn} != {expected['lsn']}")
    if len(kv) != expected["kv_keys"]:
        problems.append(f"kv has {len(kv)} keys, expected {expected['kv_keys']}")
    if sum(counters.values()) != expected["counter_total"]:
        problems.append("counter total differs")
    for k, hexv in expected["sample"].items():
        if kv.get(k) != bytes.fromhex(hexv):
            problems.append(f"value of {k} differs")
    store.close()
    if total_records != expected["lsn"]:
        problems.append(f"replayed {total_records} records, expected {expected['lsn']}")
    print("  state check: " + ("OK, matches what was written" if not problems
                               else "FAILED: " + "; ".join(problems)))
    return 0 if not problems else 1


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m rehydrate.demo", description=__doc__.split("\n")[0])
    p.add_argument("--dir", help="state directory (default: a temporary one, removed after)")
    p.add_argument("--ops", type=int, default=1_000_000)
    p.add_argument("--keys", type=int, default=200_000)
    p.add_argument("--_rehydrate", nargs=2, metavar=("DIR", "EXPECTED"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    silence()  # (its stores are closed by the demo: no SIGTERM warning)
    if args._rehydrate:
        return rehydrate_and_check(*args._rehydrate)
    if args.ops < 1 or args.keys < 1:
        p.error("--ops and --keys must be positive")

    import rehydrate as rh

    tmp = None
    if args.dir:
        path = args.dir
        if os.path.exists(path) and os.listdir(path):
            p.error(f"{path} exists and is not empty; pass a new directory")
    else:
        tmp = tempfile.mkdtemp(prefix="rehydrate-demo-")
        path = os.path.join(tmp, "state")
    try:
        print(f"1. writing {args.ops:,} mixed ops over {args.keys:,} keys to {path}")
        expected = write_sample(path, args.ops, args.keys)
        print(f"   wrote {expected['ops']:,} ops in {expected['write_s']:.2f} s "
              f"({expected['ops'] / expected['write_s'] / 1e6:.2f} M ops/s)")
        exp_file = os.path.join(tmp or os.path.dirname(os.path.abspath(path)), "expected.json")
        with open(exp_file, "w") as f:
            json.dump(expected, f)
        print("2. rehydrating in a fresh process")
        rc = subprocess.call([sys.executable, "-m", "rehydrate.demo", "--_rehydrate", path, exp_file])
        print("3. verifying")
        report = rh.verify(path)
        print(f"   {'OK' if report.ok else 'DAMAGED'}: {len(report.segments)} segments, "
              f"{report.frames:,} frames, {report.records:,} records, "
              f"{report.bytes_read / 1e6:.1f} MB checked in {report.duration_s * 1000:.0f} ms")
        print("4. checkpoint, then rehydrate again in a fresh process, from the snapshot")
        with rh.Store.open(path) as store:
            cp = store.checkpoint()
        print(f"   snapshot at LSN {cp['lsn']:,}: {cp['bytes'] / 1e6:.1f} MB in "
              f"{cp['duration_s']:.2f} s (writers paused {cp['pause_s'] * 1000:.0f} ms)")
        rc2 = subprocess.call([sys.executable, "-m", "rehydrate.demo", "--_rehydrate", path,
                               exp_file])
        return rc or rc2 or (0 if report.ok else 1)
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
