"""Cold-open time per record as the log grows, from 1M to 20M mixed ops.

    .venv/bin/python benchmarks/scaling.py [--sizes 1000000,2000000,5000000,10000000,20000000]
        [--repeat 3] [--plot docs/img/scaling.png] [--json]

For each size N, builds the log of ``benchmarks/replay.py`` (N mixed ops over
N/5 keys: 80% put of 32-byte values, 10% incr, 10% delete, batches of 1,000),
times ``--repeat`` cold ``Store.open`` in fresh processes, then deletes that
size's data (20M ops is about 1 GB on disk). The smallest size's log is kept
to the end and opened between the runs of each larger size: a baseline in
the same run, so a machine that slowed down meanwhile is not taken for the
open scaling badly.

Reports per size: median open seconds, ns per record, records/s, the
deviation of ns/record from its median over all sizes, peak RSS against the
budget (1.5 x the tables' memory_bytes + 150 MiB) and the reference's
ns/record during that size's runs.

Target: time per record stays flat, every size within +-25% of the median.
``--plot FILE.png`` draws ns/record against ops (log x) with the +-25% band.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import machine, median, rss_budget, run_child, timed_open  # noqa: E402

SIZES = [1_000_000, 2_000_000, 5_000_000, 10_000_000, 20_000_000]
BAND = 0.25


def summarize(ops: int, runs: list, refs: list) -> dict:
    open_s = median([r["open_s"] for r in runs])
    records = runs[0]["applied"]
    mem = runs[0]["memory_bytes"]
    rss = median([r["peak_rss_bytes"] for r in runs])
    return {"ops": ops, "keys": ops // 5, "records": records, "final_keys": runs[0]["keys"],
            "open_s": open_s, "open_s_runs": [r["open_s"] for r in runs],
            "ns_per_record": open_s / records * 1e9, "records_per_s": records / open_s,
            "peak_rss_bytes": rss, "memory_bytes": mem, "rss_budget_bytes": rss_budget(mem),
            "rss_ok": rss <= rss_budget(mem),
            "reference_ns_per_record": median([r["open_s"] for r in refs])
            / refs[0]["applied"] * 1e9}


def plot(rows: list, med: float, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on a benchmark machine
    import matplotlib.pyplot as plt

    ops = [r["ops"] for r in rows]
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    ax.axhspan((1 - BAND) * med, (1 + BAND) * med, color="tab:green", alpha=0.15,
               label=f"median {med:.0f} ns \u00b125% (target)")
    ax.axhline(med, color="tab:green", lw=0.8)
    ax.plot(ops, [r["ns_per_record"] for r in rows], "o-", label="cold Store.open")
    ax.plot(ops, [r["reference_ns_per_record"] for r in rows], "x", color="grey",
            label=f"{ops[0]:,}-op log, opened between the runs")
    ax.set_xscale("log")
    ax.set_xticks(ops, [f"{o / 1e6:g}M" for o in ops])
    ax.minorticks_off()
    ax.set_ylim(bottom=0)
    ax.set_xlabel("mixed ops in the log (keys = ops / 5)")
    ax.set_ylabel("ns per record")
    ax.legend(loc="lower right", fontsize="small")
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=lambda s: sorted({int(x) for x in s.split(",")}),
                   default=SIZES, help="ops per log, comma-separated")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--plot", metavar="FILE.png")
    p.add_argument("--json", action="store_true")
    p.add_argument("--child-open", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.child_open:
        print(json.dumps(timed_open(a.child_open)))
        return 0
    import replay  # the mixed-op log of benchmarks/replay.py

    work = tempfile.mkdtemp(prefix="rh-scaling-")
    try:
        me = os.path.abspath(__file__)
        ref, rows = None, []
        for ops in a.sizes:
            path = os.path.join(work, f"ops-{ops}")
            print(f"building {ops:,} ops over {ops // 5:,} keys ...", file=sys.stderr)
            replay.build(path, os.devnull, ops, ops // 5)  # no msgpack copy: no baseline here
            ref = ref or path
            runs, refs = [], []
            for i in range(a.repeat):
                runs.append(run_child([me, "--child-open", path]))
                if path != ref:
                    refs.append(run_child([me, "--child-open", ref]))
                print(f"  run {i + 1}: {runs[-1]['open_s']:.3f} s"
                      + (f", reference {refs[-1]['open_s']:.3f} s" if refs else ""),
                      file=sys.stderr)
            if path != ref:
                shutil.rmtree(path)
            rows.append(summarize(ops, runs, refs or runs))
            core = runs[0]["core"]
        med = median([r["ns_per_record"] for r in rows])
        for r in rows:
            r["deviation"] = r["ns_per_record"] / med - 1
        out = {"benchmark": "scaling", "repeat": a.repeat, "core": core,
               "sizes": rows, "median_ns_per_record": med, "target_band": BAND,
               "flat": all(abs(r["deviation"]) <= BAND for r in rows),
               "rss_ok": all(r["rss_ok"] for r in rows), "machine": machine()}
        if a.plot:
            plot(rows, med, a.plot)
        if a.json:
            print(json.dumps(out, indent=2))
        else:
            print(f"core {out['core']}, median of {a.repeat} fresh-process opens per size; "
                  f"reference: the {rows[0]['ops']:,}-op log, opened between the runs")
            print(f"{'ops':>11} {'open':>8} {'ns/rec':>7} {'M rec/s':>8} {'dev':>7}"
                  f" {'peak RSS / budget':>20} {'ref ns/rec':>11}")
            for r in rows:
                print(f"{r['ops']:>11,} {r['open_s']:>7.3f}s {r['ns_per_record']:>7.1f}"
                      f" {r['records_per_s'] / 1e6:>8.2f} {r['deviation']:>+7.1%}"
                      f" {r['peak_rss_bytes'] / 2**20:>6.0f} / {r['rss_budget_bytes'] / 2**20:.0f}"
                      f" MiB {'met' if r['rss_ok'] else 'OVER':>4}"
                      f" {r['reference_ns_per_record']:>11.1f}")
            devs = [r["deviation"] for r in rows]
            print(f"ns per record: median {med:.1f}, {min(devs):+.1%} .. {max(devs):+.1%}; "
                  f"target within +-25%: {'met' if out['flat'] else 'MISSED'}")
            print(f"peak RSS <= 1.5 x memory_bytes + 150 MiB: "
                  f"{'met at every size' if out['rss_ok'] else 'MISSED'}")
            if a.plot:
                print(f"plot: {a.plot}")
        return 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
