"""A per-record migration's whole path, native core against the pure twin.

    .venv/bin/python benchmarks/per_record.py [--keys 1800000] [--pure-keys 200000]
                                              [--repeat 3] [--json]

For each core, in a fresh process: a KVTable of ``--keys`` small values
(ints for ``int+1``, ``{"name", "age"}`` dicts for ``dict-merge``), then,
timed together, what a per-record migration does (per_record.py): the
consistent view (one arena copy), ``View.batches()`` (4096 records decoded
at a time), ``apply_fn`` with a trivial Python function (``lambda k, v:
v + 1`` or ``lambda k, v: {**v, "x": 1}``) and ``put_many`` into a new
KVTable. Records/s is keys / seconds, the median of ``--repeat`` runs. The
pure twin runs on ``--pure-keys`` to keep the run short; its rate is per
record all the same. Target (native): >= 1M records/s.

Beside each, the floor of any implementation on the same machine at the
same moment: msgpack decoding the values, the function, msgpack encoding
the results, 4096 at a time, with no table and no keys (``_floor``). On a
shared machine the ratio of the two is steadier than either figure.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import machine, median, run_child  # noqa: E402

FNS = {
    "int+1": (lambda i: i, lambda k, v: v + 1),
    "dict-merge": (lambda i: {"name": f"user {i}", "age": i % 90},
                   lambda k, v: {**v, "x": 1}),
}


def child(fn_name: str, keys: int, repeat: int) -> dict:
    from rehydrate import _backend
    from rehydrate import _format as F
    from rehydrate.per_record import apply_fn, consistent_view, put_many

    core = _backend.core()
    make, fn = FNS[fn_name]
    table = core.KVTable()
    table._put_items((i, make(i)) for i in range(keys))
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        view = consistent_view(table, F.KIND_KV, core)
        out = core.KVTable()
        out._reserve(view.count)
        for ks, vs in view.batches():
            puts, _deletes, errors = apply_fn(fn, ks, vs)
            assert not errors and not put_many(out, F.KIND_KV, core, puts)
        out._loaded()
        times.append(time.perf_counter() - t0)
        assert len(out) == keys
        del out, view
    s = median(times)
    floor = median([_floor(fn, make, keys) for _ in range(repeat)])
    return {"core": core.IMPLEMENTATION, "fn": fn_name, "keys": keys, "seconds": s,
            "records_per_s": keys / s, "runs": times, "floor_seconds": floor,
            "floor_records_per_s": keys / floor}


def _floor(fn, make, keys: int, rows: int = 4096) -> float:
    """What no implementation of this path avoids, timed on the same
    machine at the same time: msgpack decoding every value (one unpackb per
    4096, as the native batches do), the function on each, and msgpack
    encoding the results (one Packer call per 4096); no table, no keys."""
    import msgpack

    packer = msgpack.Packer(use_bin_type=True, autoreset=True)
    chunks = [packer.pack([make(i) for i in range(a, min(a + rows, keys))])
              for a in range(0, keys, rows)]
    t0 = time.perf_counter()
    for n, chunk in enumerate(chunks):
        values = msgpack.unpackb(chunk)
        packer.pack([fn(n * rows + j, v) for j, v in enumerate(values)])
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--keys", type=int, default=1_800_000)
    ap.add_argument("--pure-keys", type=int, default=200_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--child", nargs=3, metavar=("FN", "KEYS", "REPEAT"))
    a = ap.parse_args()
    if a.child:
        print(json.dumps(child(a.child[0], int(a.child[1]), int(a.child[2]))))
        return
    rows = []
    for fn_name in FNS:
        for core, keys in (("native", a.keys), ("pure", a.pure_keys)):
            env = dict(os.environ)
            if core == "pure":
                env["REHYDRATE_NO_EXTENSIONS"] = "1"
            else:
                env.pop("REHYDRATE_NO_EXTENSIONS", None)
            rows.append(run_child([os.path.abspath(__file__), "--child", fn_name, str(keys),
                                   str(a.repeat)], env=env))
    result = {"machine": machine(), "rows": rows, "target_records_per_s": 1_000_000}
    if a.json:
        print(json.dumps(result, indent=2))
        return
    for r in rows:
        print(f"{r['fn']:<11} {r['core']:<7} {r['keys']:>9,} keys  {r['seconds']:.3f} s  "
              f"{r['records_per_s']:>12,.0f} records/s  (msgpack + fn alone: "
              f"{r['floor_seconds']:.3f} s, {r['floor_records_per_s']:,.0f}/s)")


if __name__ == "__main__":
    main()
