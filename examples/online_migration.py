"""An online migration under load, end to end (docs/migrations.md, "Online migrations").

    python examples/online_migration.py [--dir DIR] [--keys N] [--rate R]
                                        [--step-s S] [--plot FILE] [--json]

The service keeps users in a rehydrate Store, table ``users``, and answers
one question, a user's display name and visit count. Version 1 stores
``{"name": "Ada Lovelace", "visits": 3}``; version 2 splits the name:
``{"first": "Ada", "last": "Lovelace", "visits": 3}``. The service's read
code understands both shapes, so either version can serve it.

What this script does (``run()`` below):

1. fills the store with N version-1 users and starts a **load**: a thread
   that reads and writes at a steady rate (80% reads of random users, 20%
   writes bumping a visit count), as a service's requests would;
2. **the good migration**: ``store.start_migration("split-name", compare=...)``
   builds the version-2 shadow of the table while the load runs; once it
   has caught up, reads move to it gradually, 1% -> 10% -> 100%, a while at
   each step, and ``complete_migration`` commits it; every write the load
   made meanwhile reached both versions;
3. **the broken migration**: the next release brings a migration to version
   3 with a bug (it loses the visit count of some users). It is started and
   routed the same way; the sampled comparison finds reads that disagree,
   and the store routes every read back to version 2 by itself, without
   anybody watching;
4. checks, reopening the directory, that every acknowledged write is in the
   state, and prints per-path latency, divergences and what happened; with
   ``--plot`` draws per-path read latency, the routed fraction and the
   divergences over time.

The exit code is 0 only when the good migration completed, the broken one
reverted by itself, and no acknowledged write was lost.
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
from typing import Any, Optional

from rehydrate import Migrations, RehydrateError, Store

TABLE = "users"
FIRST = ["Ada", "Alan", "Grace", "Edsger", "Barbara", "Donald", "Frances", "Ken"]
LAST = ["Lovelace", "Turing", "Hopper", "Dijkstra", "Liskov", "Knuth", "Allen", "Thompson"]
SAMPLE_EVERY_S = 0.05


def display(value: Any) -> tuple[str, int]:
    """What the service answers for a stored user, whatever its version."""
    if "name" in value:
        name = value["name"]
    else:
        name = f"{value['first']} {value['last']}"
    visits = value["visits"]
    if isinstance(visits, dict):  # version 3
        visits = visits["count"]
    return name, visits


def encode(name: str, visits: int, version: int) -> Any:
    """A user at ``version``."""
    if version == 1:
        return {"name": name, "visits": visits}
    first, last = name.split(" ", 1)
    return {"first": first, "last": last, "visits": visits}


def same_answer(old: Any, new: Any) -> bool:
    """The comparison the store samples: would a client see a difference?"""
    return display(old) == display(new)


def migrations(broken: bool) -> Migrations:
    """This release's migrations: version 2 always, and with ``broken`` the
    next release's version 3, whose function has a bug."""
    mig = Migrations()

    @mig.migration("split-name", table=TABLE, to_version=2, per_record=True, online=True)
    def split_name(key: Any, value: Any) -> Any:
        first, last = value["name"].split(" ", 1)
        return {"first": first, "last": last, "visits": value["visits"]}

    if broken:
        @mig.migration("visits-object", table=TABLE, to_version=3, per_record=True,
                       online=True)
        def visits_object(key: Any, value: Any) -> Any:
            count = value["visits"]
            if key % 5 == 0:
                count = 0  # the bug: a fifth of the users lose their visits
            return {**value, "visits": {"count": count}}

    return mig


class Load:
    """Steady reads and writes from one thread; what was acknowledged."""

    def __init__(self, store: Store, keys: int, rate: int, seed: int = 7) -> None:
        self.store, self.keys, self.rate = store, keys, rate
        self.rng = random.Random(seed)
        self.visits: dict[int, int] = {}  # acknowledged visit counts
        self.reads = self.writes = self.errors = 0
        self.version = 1  # the version writes are made at (the table's)
        self.write_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="load", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        period = 1.0 / self.rate
        due = time.perf_counter()
        while not self._stop.is_set():
            key = self.rng.randrange(self.keys)
            try:
                table = self.store.table(TABLE)
                value = table[key]
                if self.rng.random() < 0.2:
                    name, visits = display(value)
                    visits += 1
                    # Writes are at the table's version until the cutover,
                    # whatever version served the read: the run maps them
                    # into the new version itself.
                    with self.write_lock:
                        self.store.put(TABLE, key, encode(name, visits, self.version))
                    self.visits[key] = visits
                    self.writes += 1
                else:
                    self.reads += 1
            except RehydrateError:
                self.errors += 1
            due += period
            wait = due - time.perf_counter()
            if wait > 0:
                self._stop.wait(wait)


class Timeline:
    """The run's status every SAMPLE_EVERY_S, for the report and the plot."""

    def __init__(self, store: Store, t0: float) -> None:
        self.store, self.t0 = store, t0
        self.points: list[dict[str, Any]] = []
        self.events: list[tuple[float, str]] = []

    def event(self, what: str) -> None:
        self.events.append((round(time.perf_counter() - self.t0, 4), what))

    def sample(self, migration: str) -> dict[str, Any]:
        st = self.store.migration_status(migration)
        paths = st.get("paths") or {}
        self.points.append({
            "t": round(time.perf_counter() - self.t0, 4), "migration": migration,
            "state": st["state"], "fraction": st["fraction"], "progress": st["progress"],
            "divergences": st.get("divergences", 0),
            "old_p99_ms": _ms((paths.get("old") or {}).get("latency_p99_s")),
            "new_p99_ms": _ms((paths.get("new") or {}).get("latency_p99_s")),
            "old_reads": (paths.get("old") or {}).get("reads", 0),
            "new_reads": (paths.get("new") or {}).get("reads", 0)})
        return st

    def hold(self, migration: str, seconds: float, until: Optional[set[str]] = None
             ) -> dict[str, Any]:
        """Sample for ``seconds`` (or until the run's state is in ``until``)."""
        end = time.perf_counter() + seconds
        st = self.sample(migration)
        while time.perf_counter() < end and not (until and st["state"] in until):
            time.sleep(SAMPLE_EVERY_S)  # a sampling period, not a synchronization
            st = self.sample(migration)
        return st


def _ms(s: Optional[float]) -> Optional[float]:
    return None if s is None else round(s * 1e3, 4)


def wait_state(tl: Timeline, migration: str, states: set[str], timeout_s: float) -> dict[str, Any]:
    st = tl.hold(migration, timeout_s, until=states)
    if st["state"] not in states:
        raise SystemExit(f"migration {migration} is {st['state']}, not {sorted(states)}, "
                         f"after {timeout_s:g} s")
    return st


def run(directory: str, keys: int, rate: int, step_s: float) -> dict[str, Any]:
    res: dict[str, Any] = {"keys": keys, "rate": rate, "step_s": step_s}
    rng = random.Random(1)
    initial: dict[int, int] = {}
    with Store.open(directory) as s:
        with s.batch() as b:
            for k in range(keys):
                initial[k] = rng.randrange(100)
                b.put(TABLE, k, encode(f"{rng.choice(FIRST)} {rng.choice(LAST)}", initial[k], 1))
    t0 = time.perf_counter()
    guard = {"max_divergence_rate": 0.02, "max_errors": 20, "max_latency_ratio": 20.0,
             "min_reads": 50}

    # -- the good migration, version 1 -> 2 ------------------------------------
    store = Store.open(directory, migrations=migrations(broken=False))
    load = Load(store, keys, rate)
    load.visits = initial
    tl = Timeline(store, t0)
    load.start()
    try:
        tl.event("start v2")
        store.start_migration("split-name", compare=same_answer, sample=0.2, auto_revert=guard)
        wait_state(tl, "split-name", {"caught_up", "reverted"}, 60.0)
        tl.event("caught up")
        for fraction in (0.01, 0.10, 1.0):
            store.route("split-name", fraction)
            tl.event(f"{fraction:.0%} to v2")
            st = tl.hold("split-name", step_s, until={"reverted"})
            if st["state"] == "reverted":
                break
        good = tl.sample("split-name")
        if good["state"] == "caught_up":
            # Writes are at version 1 until the cutover and at version 2 from
            # it on: the load's own lock makes the switch one step for it.
            with load.write_lock:
                entry = store.complete_migration("split-name")
                load.version = 2
            tl.event("v2 complete")
            res["good_ledger"] = {k: entry[k] for k in ("id", "lsn", "from_version",
                                                          "to_version", "digest_after")}
        res["good"] = store.migration_status("split-name")
    finally:
        load.stop()
        store.close()

    # -- the broken migration, version 2 -> 3 ----------------------------------
    store = Store.open(directory, migrations=migrations(broken=True))
    load2 = Load(store, keys, rate, seed=8)
    load2.visits, load2.version = load.visits, 2
    tl.store = store
    load2.start()
    try:
        tl.event("start v3 (broken)")
        store.start_migration("visits-object", compare=same_answer, sample=0.2,
                              auto_revert=guard)
        wait_state(tl, "visits-object", {"caught_up", "reverted"}, 60.0)
        for fraction in (0.01, 0.10, 1.0):
            if tl.sample("visits-object")["state"] == "reverted":
                break
            store.route("visits-object", fraction)
            tl.event(f"{fraction:.0%} to v3")
            tl.hold("visits-object", step_s, until={"reverted"})
        bad = tl.sample("visits-object")
        if bad["state"] == "reverted":
            tl.event("v3 reverted by itself")
        res["broken"] = store.migration_status("visits-object")
    finally:
        load2.stop()
        store.close()

    # -- every acknowledged write is there -------------------------------------
    with Store.open(directory, migrations=migrations(broken=True), create=False) as check:
        table = check.table(TABLE)
        lost = [k for k, visits in load2.visits.items() if display(table[k])[1] != visits]
        res["version_after"] = next((e["to_version"] for e in reversed(check.ledger)), 1)
    res["lost"] = len(lost)
    res["load"] = {"reads": load.reads + load2.reads, "writes": load.writes + load2.writes,
                   "errors": load.errors + load2.errors}
    res["timeline"] = tl.points
    res["events"] = tl.events
    res["ok"] = (res["good"]["state"] == "completed" and res["broken"]["state"] == "reverted"
                 and res["lost"] == 0)
    return res


def report_text(res: dict[str, Any]) -> str:
    g, b = res["good"], res["broken"]
    lines = [f"online migrations under load: {res['keys']} users, {res['rate']} requests/s "
             f"({res['load']['reads']} reads, {res['load']['writes']} writes, "
             f"{res['load']['errors']} errors)",
             f"  split-name v1 -> v2: {g['state']}; reads by path "
             f"old {g['paths']['old']['reads']} / new {g['paths']['new']['reads']}; "
             f"compared {g['compared']}, divergences {g['divergences']}"]
    for route in ("old", "new"):
        p = g["paths"][route]
        if p.get("latency_p99_s") is not None:
            lines.append(f"    {route} path read p50 {p['latency_p50_s'] * 1e6:.1f} us, "
                         f"p99 {p['latency_p99_s'] * 1e6:.1f} us")
    lines.append(f"  visits-object v2 -> v3 (broken): {b['state']}"
                 + (f" by itself: {b['reason']} (all reads back on v2 in "
                    f"{b['revert_ms']:.3f} ms)" if b["state"] == "reverted" else ""))
    lines.append(f"  table version after: {res['version_after']}; acknowledged writes "
                 f"lost: {res['lost']}")
    return "\n".join(lines)


def plot(res: dict[str, Any], path: str) -> None:
    """Per-path p99 read latency, the routed fraction and divergences over time."""
    import matplotlib

    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt

    pts = res["timeline"]
    fig, (lat, frac, div) = plt.subplots(3, 1, figsize=(10, 8), sharex=True)
    for m, style in (("split-name", "-"), ("visits-object", "--")):
        mp = [p for p in pts if p["migration"] == m]
        for route, color in (("old", "tab:blue"), ("new", "tab:green")):
            xs = [p["t"] for p in mp if p[f"{route}_p99_ms"] is not None]
            ys = [p[f"{route}_p99_ms"] * 1e3 for p in mp if p[f"{route}_p99_ms"] is not None]
            if xs:
                lat.plot(xs, ys, style, color=color, label=f"{m}: {route} path p99")
        frac.plot([p["t"] for p in mp], [p["fraction"] for p in mp], style, color="tab:purple",
                  label=f"{m}: fraction on the new path")
        div.plot([p["t"] for p in mp], [p["divergences"] for p in mp], style, color="tab:red",
                 label=f"{m}: divergences")
    lat.set_yscale("log")
    lat.set_ylabel("read latency p99 (us)")
    frac.set_ylabel("routed fraction")
    div.set_ylabel("divergent reads")
    div.set_xlabel("seconds")
    for t, what in res["events"]:
        for a in (lat, frac, div):
            a.axvline(t, color="grey", ls=":", lw=0.8)
        frac.annotate(what, (t, 0.95), xycoords=("data", "axes fraction"), rotation=90,
                      va="top", ha="right", fontsize=7, color="dimgrey")
    for a in (lat, frac, div):
        a.legend(loc="upper left", fontsize=7)
    lat.set_title("online migrations: v1 -> v2 shifted gradually; v2 -> v3 (broken) reverts")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dir", help="the state directory (kept); default a temporary one")
    ap.add_argument("--keys", type=int, default=20000)
    ap.add_argument("--rate", type=int, default=2000, help="requests per second")
    ap.add_argument("--step-s", type=float, default=1.0, help="seconds at each routed fraction")
    ap.add_argument("--plot", help="write a PNG here")
    ap.add_argument("--json", action="store_true", help="print the result as JSON")
    args = ap.parse_args(argv)
    if args.keys < 10 or args.rate < 1 or args.step_s <= 0:
        print("--keys must be >= 10, --rate >= 1, --step-s > 0", file=sys.stderr)
        return 2
    directory = args.dir or tempfile.mkdtemp(prefix="online-migration-")
    if args.dir and os.path.isdir(args.dir) and os.listdir(args.dir):
        print(f"{args.dir} is not empty: give a new directory", file=sys.stderr)
        return 1
    try:
        res = run(directory, args.keys, args.rate, args.step_s)
    except RehydrateError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    finally:
        if not args.dir:
            shutil.rmtree(directory, ignore_errors=True)
    if args.plot:
        plot(res, args.plot)
    print(json.dumps(res) if args.json else report_text(res))
    return 0 if res["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
