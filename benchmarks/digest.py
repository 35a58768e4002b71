"""Table digest speed: native ``KVTable._digest()`` vs the pure twin, with a
Python baseline of ``hash(frozenset(d.items()))`` on the equivalent dict.

    cd /work/main && .venv/bin/python benchmarks/digest.py
    .venv/bin/python benchmarks/digest.py --keys 100000 --runs 3

Builds one table of N str keys ("user:<i>") with 32-byte bytes values (msgpack
bin8: 34 bytes stored), then times each digest as the median of several runs.
MB/s counts the bytes the digest hashes: per entry 4 (length prefix) + key +
value. The baseline is not the same function (it hashes decoded objects, is
salted per process and is not order-independent by design but by frozenset);
it is the cheapest "fingerprint of a dict" Python offers, for scale.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import rehydrate._core as C  # noqa: E402
import rehydrate._pure as P  # noqa: E402
from _common import machine  # noqa: E402


def median_time(fn, runs: int):
    times, result = [], None
    for _ in range(runs):
        gc.collect()
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--keys", type=int, default=1_800_000)
    ap.add_argument("--value-bytes", type=int, default=32)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--json", action="store_true", help="one JSON object instead of text")
    args = ap.parse_args()

    n, runs = args.keys, args.runs
    d = {f"user:{i}": i.to_bytes(8, "little") * (args.value_bytes // 8) + b"\0" * (args.value_bytes % 8)
         for i in range(n)}
    raw = [(C.encode_key(k), C.pack_value(v)) for k, v in d.items()]
    hashed_bytes = sum(4 + len(kb) + len(vb) for kb, vb in raw)

    native = C.KVTable()
    native._reserve(n)
    for kb, vb in raw:
        native._put_raw(kb, vb)
    pure = P.KVTable()
    for kb, vb in raw:
        pure._put_raw(kb, vb)
    del raw

    results = {}
    t_native, d_native = median_time(native._digest, runs)
    t_pure, d_pure = median_time(pure._digest, runs)
    # Pair assertion: the two cores agree, or the timing compares different work.
    assert d_native == d_pure, (hex(d_native), hex(d_pure))
    t_base, _ = median_time(lambda: hash(frozenset(d.items())), runs)
    for name, t in (("native _digest", t_native), ("pure _digest", t_pure),
                    ("hash(frozenset(d.items()))", t_base)):
        results[name] = {"median_s": t, "mb_per_s": hashed_bytes / t / 1e6,
                         "keys_per_s": n / t}

    if args.json:
        print(json.dumps({"keys": n, "hashed_bytes": hashed_bytes, "runs": runs,
                          "digest": f"{d_native:016x}", "stats": native._stats(),
                          "results": results, "machine": machine()}))
        return
    print(f"{n} keys, {args.value_bytes}-byte values, {hashed_bytes / 1e6:.1f} MB hashed, "
          f"median of {runs}; digest {d_native:016x}")
    for name, r in results.items():
        print(f"  {name:28s} {r['median_s'] * 1e3:9.1f} ms  {r['mb_per_s']:8.0f} MB/s  "
              f"{r['keys_per_s'] / 1e6:7.2f} M keys/s")
    print(f"  native vs pure: {t_pure / t_native:.0f}x; native vs baseline: "
          f"{t_base / t_native:.1f}x")


if __name__ == "__main__":
    main()
