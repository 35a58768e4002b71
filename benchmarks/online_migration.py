"""An online migration under a steady load, against the same load without one.

    .venv/bin/python benchmarks/online_migration.py [--keys 1800000] [--rate 4000]
        [--window-s 3] [--repeat 3] [--json]

Writes ``--keys`` users at version 1 (``{"name": "user <i>", "age", "visits"}``,
the values of benchmarks/migrate.py) and checkpoints them. Then, in one
process with the store open, ``--repeat`` times:

- ``baseline``: a load thread makes ``--rate`` requests a second (80% reads
  of random users, 20% puts), each timed from when it was due (a request
  held up counts in full), for ``--window-s`` seconds;
- ``run``: the same load while an online migration (a per-record function
  of trivial cost: the value with one more field) builds its shadow, from
  ``start_migration`` until the run has caught up; then the run is aborted
  so the next round starts from the same state. Its build rate is the
  table's records over that time (wall clock), and the rate of the build
  work itself (``build_rate`` of the status: records over the time slices
  ran);
- ``revert``: a run is started and caught up, all reads routed to it with a
  comparison that always disagrees (sample 1.0, max_divergence_rate 0), and
  reads made until the store reverts by itself; the time from the threshold
  found crossed to every read back on the old path is the status's
  ``revert_ms``, and the read that follows is checked to be served by the
  old path.

Targets: read and write p99 during the run <= 2 x the baseline's; build rate
>= 1M records/s; revert <= 10 ms. Medians over the rounds, baseline and run
side by side in the same process.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sys
import tempfile
import threading
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import machine, median  # noqa: E402

TABLE = "users"
# A request that starts this late after it was due was held up by the store
# (the thread's own wake-up takes less).
LATE_S = 0.002
SETTINGS = {"slice_ms": 0.25, "max_duty": 0.25}  # start_migration's (--slice-ms, --max-duty)
VALUES = {
    "dict": lambda i: {"name": f"user {i}", "age": 20 + i % 60, "visits": i % 1000},
    "int": lambda i: i,
}


def build(path: str, keys: int, values: str) -> None:
    import rehydrate as rh

    value = VALUES[values]
    with rh.Store.open(path, sync="none") as s:
        put = s.put
        for i in range(keys):
            put(TABLE, i, value(i))
        s.checkpoint()


def registry(values: str) -> Any:
    import rehydrate as rh

    mig = rh.Migrations()
    if values == "dict":
        @mig.migration("add-field", table=TABLE, to_version=2, per_record=True, online=True)
        def add_field(key: Any, value: Any) -> Any:
            value["plan"] = "free"  # trivial: one more field
            return value
    else:
        @mig.migration("add-field", table=TABLE, to_version=2, per_record=True, online=True)
        def add_one(key: Any, value: Any) -> Any:
            return value + 1  # trivial

    return mig


def pct(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    s = sorted(xs)
    return s[min(len(s) - 1, max(0, round(q / 100 * len(s) + 0.5) - 1))]


class Load:
    """``rate`` requests/s from one thread, each timed from when it was due."""

    def __init__(self, store: Any, keys: int, rate: int, seed: int, values: str) -> None:
        self.store, self.keys, self.rate, self.values = store, keys, rate, values
        self.rng = random.Random(seed)
        self.reads: list[float] = []
        self.writes: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="load", daemon=True)

    def __enter__(self) -> "Load":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        store, rng, period = self.store, self.rng, 1.0 / self.rate
        clock = time.perf_counter
        value = VALUES[self.values]
        due = clock()
        while not self._stop.is_set():
            key = rng.randrange(self.keys)
            # From when the request was due if the load is behind (a request
            # held up counts in full), else from its start (the thread's
            # own wake-up delay is not the store's).
            start = clock()
            since = due if start > due + LATE_S else start
            if rng.random() < 0.2:
                store.put(TABLE, key, value(key))
                self.writes.append(clock() - since)
            else:
                store.table(TABLE).get(key)
                self.reads.append(clock() - since)
            due += period
            wait = due - clock()
            if wait > 0:
                self._stop.wait(wait)
            elif wait < -1.0:
                due = clock()  # fell far behind: do not bunch up


def lat(load: Load) -> dict[str, Any]:
    return {"reads": len(load.reads), "writes": len(load.writes),
            "read_p50_us": pct(load.reads, 50) * 1e6, "read_p99_us": pct(load.reads, 99) * 1e6,
            "write_p50_us": pct(load.writes, 50) * 1e6,
            "write_p99_us": pct(load.writes, 99) * 1e6}


def wait_state(store: Any, mid: str, states: set[str], timeout_s: float) -> dict[str, Any]:
    end = time.perf_counter() + timeout_s
    st = store.migration_status(mid)
    while st["state"] not in states:
        if time.perf_counter() > end:
            raise SystemExit(f"{mid}: still {st['state']} after {timeout_s} s")
        time.sleep(0.05)  # polling a status (rarely: it sorts latency windows), not a sync
        st = store.migration_status(mid)
    return st


def one_round(store: Any, keys: int, rate: int, window_s: float, i: int, values: str
              ) -> dict[str, Any]:
    with Load(store, keys, rate, 2 * i, values) as base:
        time.sleep(window_s)  # the measurement window
    with Load(store, keys, rate, 2 * i + 1, values) as during:
        t0 = time.perf_counter()
        store.start_migration("add-field", slice_ms=SETTINGS["slice_ms"],
                              max_duty=SETTINGS["max_duty"])
        st = wait_state(store, "add-field", {"caught_up", "reverted"}, 600.0)
        build_s = time.perf_counter() - t0
    store.abort_migration("add-field", reason="benchmark round over")
    return {"baseline": lat(base), "run": lat(during), "build_s": build_s,
            "records": st["total"], "build_rate_wall": st["total"] / build_s,
            "build_rate_work": st.get("build_rate"), "state": st["state"]}


def revert_round(store: Any, keys: int) -> dict[str, Any]:
    store.start_migration("add-field", compare=lambda old, new: False, sample=1.0,
                          auto_revert={"max_divergence_rate": 0.0, "min_reads": 1})
    wait_state(store, "add-field", {"caught_up"}, 600.0)
    store.route("add-field", 1.0)
    table = store.table(TABLE)
    rng = random.Random(5)
    for _ in range(1000):
        table.get(rng.randrange(keys))
        if store.migration_status("add-field")["state"] == "reverted":
            break
    st = store.migration_status("add-field")
    # After the revert, reads are the old table's own (no routed view).
    old_after = store.table(TABLE) is not table and st["fraction"] == 0.0
    return {"state": st["state"], "reason": st["reason"], "revert_ms": st["revert_ms"],
            "reads_on_old_table_after": old_after}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--keys", type=int, default=1_800_000)
    ap.add_argument("--rate", type=int, default=4000)
    ap.add_argument("--window-s", type=float, default=3.0)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--values", choices=sorted(VALUES), default="dict",
                    help="dict: three-field users (benchmarks/migrate.py's); int: small ints")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--slice-ms", type=float, default=0.25, help="start_migration's slice_ms")
    ap.add_argument("--max-duty", type=float, default=0.25, help="start_migration's max_duty")
    ap.add_argument("--switch-interval-ms", type=float, default=None,
                    help="sys.setswitchinterval for this process (default: Python's 5 ms)")
    args = ap.parse_args()
    SETTINGS.update(slice_ms=args.slice_ms, max_duty=args.max_duty)
    if args.switch_interval_ms is not None:
        sys.setswitchinterval(args.switch_interval_ms / 1000)
    import rehydrate as rh

    work = tempfile.mkdtemp(prefix="rh-online-bench-")
    try:
        path = os.path.join(work, "s")
        build(path, args.keys, args.values)
        rounds = []
        with rh.Store.open(path, sync="interval", migrations=registry(args.values)) as store:
            for i in range(args.repeat):
                rounds.append(one_round(store, args.keys, args.rate, args.window_s, i, args.values))
            revert = revert_round(store, args.keys)
        res: dict[str, Any] = {"machine": machine(),
                               "core": os.environ.get("REHYDRATE_NO_EXTENSIONS") and "pure"
                               or "native", "keys": args.keys, "values": args.values, "settings": dict(SETTINGS),
                               "switch_interval_s": sys.getswitchinterval(), "rate": args.rate, "rounds": rounds,
                               "revert": revert}
        med: dict[str, Any] = {}
        for p in ("baseline", "run"):
            for k in ("read_p50_us", "read_p99_us", "write_p50_us", "write_p99_us"):
                med[f"{p}_{k}"] = median([r[p][k] for r in rounds])
        med["read_p99_ratio"] = med["run_read_p99_us"] / med["baseline_read_p99_us"]
        med["write_p99_ratio"] = med["run_write_p99_us"] / med["baseline_write_p99_us"]
        med["build_rate_wall"] = median([r["build_rate_wall"] for r in rounds])
        works = [r["build_rate_work"] for r in rounds if r["build_rate_work"]]
        med["build_rate_work"] = median(works) if works else None
        res["median"] = med
        res["targets"] = {"read_p99_ratio<=2": med["read_p99_ratio"] <= 2,
                          "write_p99_ratio<=2": med["write_p99_ratio"] <= 2,
                          "build_rate>=1M/s": med["build_rate_wall"] >= 1e6,
                          "revert<=10ms": (revert["revert_ms"] or 1e9) <= 10}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if args.json:
        print(json.dumps(res, indent=1))
    else:
        m = res["median"]
        print(f"online migration, {args.keys} keys ({args.values} values), {args.rate} req/s, {args.repeat} rounds "
              f"(medians)")
        for p in ("baseline", "run"):
            print(f"  {p:<9} read p50 {m[p + '_read_p50_us']:8.1f} us  p99 "
                  f"{m[p + '_read_p99_us']:8.1f} us   write p50 {m[p + '_write_p50_us']:8.1f} us"
                  f"  p99 {m[p + '_write_p99_us']:8.1f} us")
        print(f"  p99 ratio run/baseline: reads {m['read_p99_ratio']:.2f}, writes "
              f"{m['write_p99_ratio']:.2f}")
        work_rate = m["build_rate_work"]
        print(f"  build: {m['build_rate_wall'] / 1e6:.2f} M records/s wall"
              + (f", {work_rate / 1e6:.2f} M records/s of build work" if work_rate else ""))
        print(f"  revert: {revert['state']} ({revert['reason']}) in {revert['revert_ms']} ms; "
              f"reads on the old table after: {revert['reads_on_old_table_after']}")
        for k, ok in res["targets"].items():
            print(f"  target {k}: {'met' if ok else 'NOT met'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
