"""Two builds of rehydrate opening the same directories, alternating, in one run.

    python benchmarks/compare_builds.py --base-python OTHER/.venv/bin/python \
        [--ops 3000000] [--keys 600000] [--snapshot-keys 1800000] [--rounds 7]

For a change that must not slow the open (a restructure), this is the
before/after measurement: the same replay directory (``benchmarks/replay.py``'s
op mix: the log only) and the same snapshot directory
(``benchmarks/snapshot.py``'s shape: a snapshot, no log after it) are built
once, then each round opens each directory in a fresh process with this
interpreter's rehydrate and with ``--base-python``'s, in alternating order.
Reports each build's median open time and the ratio (this / base) per
directory; the machine is shared and noisy, so only medians and ratios mean
anything.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import machine, median  # noqa: E402

CHILD = """
import json, sys, time
import rehydrate as rh
t0 = time.perf_counter()
s = rh.Store.open(sys.argv[1])
dt = time.perf_counter() - t0
n = sum(len(s.table(t)) for t in s.tables())
s.close()
print(json.dumps({"open_s": dt, "keys": n, "version": getattr(rh, "__version__", "?"),
                  "module": rh.__file__}))
"""


def open_once(python: str, directory: str) -> dict:
    out = subprocess.run([python, "-c", CHILD, directory], capture_output=True, text=True,
                         check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def build_snapshot_dir(directory: str, keys: int) -> None:
    import rehydrate as rh

    value = b"v" * 32
    with rh.Store.open(directory, sync="none") as s:
        for start in range(0, keys, 1000):
            with s.batch() as b:
                for k in range(start, min(start + 1000, keys)):
                    b.put("kv", f"key:{k}", value)
        s.checkpoint()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--base-python", required=True, help="the other build's interpreter")
    p.add_argument("--ops", type=int, default=3_000_000)
    p.add_argument("--keys", type=int, default=600_000)
    p.add_argument("--snapshot-keys", type=int, default=1_800_000)
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    from replay import build

    work = tempfile.mkdtemp(prefix="rehydrate-compare-")
    try:
        replay_dir = os.path.join(work, "replay")
        build(replay_dir, os.path.join(work, "ops.msgpack"), args.ops, args.keys)
        snap_dir = os.path.join(work, "snapshot")
        build_snapshot_dir(snap_dir, args.snapshot_keys)
        builds = {"base": args.base_python, "this": sys.executable}
        times: dict = {(d, b): [] for d in ("replay", "snapshot") for b in builds}
        keys: dict = {}
        for d, path in (("replay", replay_dir), ("snapshot", snap_dir)):
            for b in builds:  # a first open of each (its close records hints): not timed
                keys[(d, b)] = open_once(builds[b], path)["keys"]
        for r in range(args.rounds):
            order = list(builds) if r % 2 == 0 else list(reversed(list(builds)))
            for d, path in (("replay", replay_dir), ("snapshot", snap_dir)):
                for b in order:
                    times[(d, b)].append(open_once(builds[b], path)["open_s"])
            print(f"  round {r + 1}: " + ", ".join(
                f"{d} {b} {times[(d, b)][-1]:.3f} s" for d in ("replay", "snapshot")
                for b in builds), file=sys.stderr)
        result = {"benchmark": "compare_builds", "ops": args.ops, "keys": args.keys,
                  "snapshot_keys": args.snapshot_keys, "rounds": args.rounds,
                  "base_python": args.base_python, "machine": machine()}
        for d in ("replay", "snapshot"):
            if keys[(d, "base")] != keys[(d, "this")]:
                raise SystemExit(f"{d}: the builds disagree on the state "
                                 f"({keys[(d, 'base')]} vs {keys[(d, 'this')]} keys)")
            base, this = median(times[(d, "base")]), median(times[(d, "this")])
            result[d] = {"base_open_s": base, "this_open_s": this, "ratio": this / base,
                         "keys": keys[(d, "this")]}
        if args.json:
            print(json.dumps(result))
        else:
            for d in ("replay", "snapshot"):
                r = result[d]
                print(f"{d}: base {r['base_open_s']:.3f} s, this {r['this_open_s']:.3f} s, "
                      f"this/base {r['ratio']:.3f} (medians of {args.rounds})")
        return 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
