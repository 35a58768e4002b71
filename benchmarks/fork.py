"""What fork safety costs: the write calls that check ownership, and a fork.

    python benchmarks/fork.py [--ops 1000000] [--keys 100000] [--forks 300] [--repeat 5] [--json]

- ``put``, ``delete`` and ``incr`` from one thread, ``sync="none"`` (calls/s):
  ``put``'s fast path is untouched; ``delete`` and ``incr`` test one flag per
  call, and every frame written tests the pid once;
- ``os.fork()``, the child's ``os._exit(0)`` and the parent's ``waitpid``
  with one open store of ``--keys`` keys (microseconds per round trip): the
  at-fork hooks take and release the store's lock in the parent and make
  the child's read-only view.

Medians over ``--repeat`` runs, each in a fresh process; the machine is
shared and noisy. Run it once on this tree and once on a tree without fork
safety (same native core) to see the difference; docs/benchmarks.md has
the figures.
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


def one_run(ops: int, keys: int, forks: int) -> dict:
    import rehydrate as rh

    work = tempfile.mkdtemp(prefix="rh-fork-bench-")
    try:
        store = rh.Store.open(os.path.join(work, "s"), sync="none")
        out = {}
        put, delete, incr = store.put, store.delete, store.incr
        t0 = time.perf_counter()
        for i in range(ops):
            put("t", i % keys, i)
        out["put_per_s"] = ops / (time.perf_counter() - t0)
        t0 = time.perf_counter()
        for i in range(ops):
            incr("t", i % keys, 1)
        out["incr_per_s"] = ops / (time.perf_counter() - t0)
        t0 = time.perf_counter()
        for i in range(ops):
            delete("t", i % keys)
        out["delete_per_s"] = ops / (time.perf_counter() - t0)
        for i in range(keys):
            put("t", i, i)
        t0 = time.perf_counter()
        for _ in range(forks):
            pid = os.fork()
            if pid == 0:
                os._exit(0)
            os.waitpid(pid, 0)
        out["fork_round_trip_us"] = (time.perf_counter() - t0) / forks * 1e6
        store.close()
        return out
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--ops", type=int, default=1_000_000)
    p.add_argument("--keys", type=int, default=100_000)
    p.add_argument("--forks", type=int, default=300)
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--json", action="store_true")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(one_run(args.ops, args.keys, args.forks)))
        return
    runs = [run_child([__file__, "--child", "--ops", str(args.ops), "--keys", str(args.keys),
                       "--forks", str(args.forks)]) for _ in range(args.repeat)]
    res = {k: median([r[k] for r in runs]) for k in runs[0]}
    res.update(repeat=args.repeat, ops=args.ops, keys=args.keys, forks=args.forks,
               machine=machine())
    if args.json:
        print(json.dumps(res))
        return
    print(f"put, sync=none      {res['put_per_s'] / 1e6:6.2f} M/s")
    print(f"incr, sync=none     {res['incr_per_s'] / 1e6:6.2f} M/s")
    print(f"delete, sync=none   {res['delete_per_s'] / 1e6:6.2f} M/s")
    print(f"fork round trip     {res['fork_round_trip_us']:8.1f} us (one store, {args.keys} keys)")


if __name__ == "__main__":
    main()
