"""What the warmup machinery costs, and how good its prediction is.

    .venv/bin/python benchmarks/warmup.py [--ops 10000000] [--repeat 5] [--trace] [--json]

Builds the 10M-op log of ``benchmarks/replay.py``, then, alternating, in
fresh processes:

- ``plain``: ``Store.open`` with no listener, no budget, no stall watch
  (``Warmup(listeners=[])``), so the phases are only timed;
- ``watched``: ``Store.open`` with a budget for every phase, ``stall_s``, a
  listener on every event, and metrics scraped once after;
- ``background``: ``Store.open_background``: how long the call takes, when
  the first write is taken (a write to a new table, tried at once and held
  until the store takes writes) and when the store is ready;
- ``gated``: the same with five feature gates made as the call returns
  (table "kv" ready, phases replay and prime done, a lag bound, a
  callable), re-evaluated at every replay chunk and phase end, one waited
  for: what gates add to an open (target <= 1%).

With ``--trace``, two more in the same rotation:

- ``traced``: ``plain`` with OpenTelemetry's SDK tracer provider set, spans
  kept by its in-memory exporter, the open under a caller's span;
- ``no-otel``: ``plain`` with the ``opentelemetry`` package hidden (what a
  service without it runs).

Targets: watched costs <= 2% more than plain, traced <= 1% more than plain
(medians); the predicted duration of an open (from HISTORY, after earlier
opens of the same directory) is within +-30% of the actual.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import machine, median, run_child  # noqa: E402


def background_child(path: str, gated: bool = False) -> dict:
    import rehydrate as rh

    t0 = time.perf_counter()
    s = rh.Store.open_background(path, warmup=rh.Warmup(listeners=[]))
    returned_s = time.perf_counter() - t0
    if gated:
        s.gate("kv", requires=[rh.table_ready("kv")])
        s.gate("replayed", requires=[rh.phase_done("replay"), rh.lag_below(5)])
        s.gate("primed", requires=[rh.phase_done("prime")])
        s.gate("check", requires=[lambda store: True])
        threading.Thread(target=s.gate("all", requires=[
            rh.table_ready("kv"), rh.phase_done("prime")]).wait, daemon=True).start()
    s.put("probe", 0, 0)  # waits until writes are taken
    write_s = time.perf_counter() - t0
    s.wait_ready()
    ready_s = time.perf_counter() - t0
    s.close()
    return {"returned_s": returned_s, "first_write_s": write_s, "ready_s": ready_s}


class _HideOtel:
    """A sys.meta_path finder that refuses opentelemetry, as when it is not
    installed."""

    def find_spec(self, name, path=None, target=None):
        if name == "opentelemetry" or name.startswith("opentelemetry."):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None


def traced_child(path: str) -> dict:
    import rehydrate as rh
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    tracer = trace.get_tracer("benchmark")
    t0 = time.perf_counter()
    with tracer.start_as_current_span("service start"):
        s = rh.Store.open(path, warmup=rh.Warmup(listeners=[]))
    open_s = time.perf_counter() - t0
    out = {"open_s": open_s, "predicted_s": s.warmup_report["predicted_s"],
           "spans": len(exporter.get_finished_spans())}
    s.close()
    out["spans_cost_s"] = _spans_cost(path)
    return out


def _spans_cost(path: str, n: int = 500) -> float:
    """Seconds one open's spans take to make, record and export (the open
    and its six phases, with their attributes), without the open: the
    tracing's cost measured on its own, where the opens' medians above are
    too noisy to show it."""
    from rehydrate import PHASES, tracing

    entry = {"duration_s": 0.1, "records": 10, "bytes": 100, "rate": 100.0, "lsn": 5}
    t0 = time.perf_counter()
    for _ in range(n):
        trace = tracing.start_open(path, mode="foreground", recovery="tolerate-tail")
        with trace.current():
            for phase in PHASES:
                trace.phase_started(phase)
                trace.phase_stats({"name": phase, **entry}, 0.1)
                trace.phase_ended()
        trace.finished(lsn=5, predicted_s=1.0)
    return (time.perf_counter() - t0) / n


def child(path: str, watched: bool, hide_otel: bool = False) -> dict:
    if hide_otel:
        sys.meta_path.insert(0, _HideOtel())
    import rehydrate as rh

    events = [0]

    class Count:
        def on_phase_start(self, phase, info):
            events[0] += 1

        def on_progress(self, phase, done, total):
            events[0] += 1

        def on_phase_end(self, phase, stats):
            events[0] += 1

        def on_corruption(self, problem):
            events[0] += 1

    if watched:
        w = rh.Warmup(budgets={p: 600 for p in rh.PHASES}, stall_s=60, listeners=[Count()])
    else:
        w = rh.Warmup(listeners=[])
    t0 = time.perf_counter()
    s = rh.Store.open(path, warmup=w)
    open_s = time.perf_counter() - t0
    if watched:
        from prometheus_client import generate_latest

        generate_latest(s.metrics())
    out = {"open_s": open_s, "predicted_s": s.warmup_report["predicted_s"],
           "events": events[0]}
    s.close()
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ops", type=int, default=10_000_000)
    p.add_argument("--keys", type=int, default=2_000_000)
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--trace", action="store_true",
                   help="also time opens traced by the OpenTelemetry SDK, and without it")
    p.add_argument("--json", action="store_true")
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--traced", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--no-otel", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--watched", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--background", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--gated", action="store_true", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.child and a.background:
        print(json.dumps(background_child(a.child, a.gated)))
        return 0
    if a.child and a.traced:
        print(json.dumps(traced_child(a.child)))
        return 0
    if a.child:
        print(json.dumps(child(a.child, a.watched, a.no_otel)))
        return 0
    import replay  # the 10M-op log of benchmarks/replay.py

    work = tempfile.mkdtemp(prefix="rh-warmup-")
    try:
        path = os.path.join(work, "state")
        print(f"building {a.ops:,} ops ...", file=sys.stderr)
        replay.build(path, os.path.join(work, "ops.msgpack"), a.ops, a.keys)
        me = os.path.abspath(__file__)
        run_child([me, "--child", path])  # a first open: HISTORY for the predictions
        plain, watched, bg, gated, traced, no_otel = [], [], [], [], [], []
        for i in range(a.repeat):
            plain.append(run_child([me, "--child", path]))
            watched.append(run_child([me, "--child", path, "--watched"]))
            bg.append(run_child([me, "--child", path, "--background"]))
            gated.append(run_child([me, "--child", path, "--background", "--gated"]))
            more = ""
            if a.trace:
                traced.append(run_child([me, "--child", path, "--traced"]))
                no_otel.append(run_child([me, "--child", path, "--no-otel"]))
                more = (f", traced {traced[-1]['open_s']:.3f} s, no-otel "
                        f"{no_otel[-1]['open_s']:.3f} s")
            print(f"  run {i + 1}: plain {plain[-1]['open_s']:.3f} s, watched "
                  f"{watched[-1]['open_s']:.3f} s{more} (predicted "
                  f"{plain[-1]['predicted_s']:.3f} / {watched[-1]['predicted_s']:.3f} s)",
                  file=sys.stderr)
        m_plain = median([r["open_s"] for r in plain])
        m_watched = median([r["open_s"] for r in watched])
        errors = [r["predicted_s"] / r["open_s"] - 1 for r in plain + watched]
        out = {"ops": a.ops, "plain_open_s": m_plain, "watched_open_s": m_watched,
               "overhead": m_watched / m_plain - 1, "overhead_target": 0.02,
               "prediction_errors": errors, "prediction_error_median": median(errors),
               "prediction_error_max": max(errors, key=abs), "prediction_target": 0.30,
               "events_per_watched_open": watched[0]["events"],
               "background": {k: median([r[k] for r in bg])
                              for k in ("returned_s", "first_write_s", "ready_s")},
               "gated": {k: median([r[k] for r in gated])
                         for k in ("returned_s", "first_write_s", "ready_s")},
               "machine": machine()}
        if a.trace:
            m_traced = median([r["open_s"] for r in traced])
            m_no_otel = median([r["open_s"] for r in no_otel])
            out["trace"] = {"traced_open_s": m_traced, "no_otel_open_s": m_no_otel,
                            "overhead": m_traced / m_plain - 1,
                            "overhead_vs_no_otel": m_traced / m_no_otel - 1,
                            "overhead_target": 0.01, "spans_per_open": traced[0]["spans"],
                            "spans_cost_s": median([r["spans_cost_s"] for r in traced])}
            out["trace"]["spans_cost_of_plain_open"] = out["trace"]["spans_cost_s"] / m_plain
        if a.json:
            print(json.dumps(out, indent=2))
        else:
            print(f"plain open     {m_plain:.3f} s (median of {a.repeat})")
            print(f"watched open   {m_watched:.3f} s: overhead {out['overhead']:+.1%} "
                  "(target <= +2%)")
            print(f"prediction     median error {out['prediction_error_median']:+.1%}, worst "
                  f"{out['prediction_error_max']:+.1%} (target within +-30%)")
            b = out["background"]
            print(f"background     returns in {b['returned_s'] * 1e3:.1f} ms, takes writes "
                  f"after {b['first_write_s']:.3f} s, ready after {b['ready_s']:.3f} s "
                  f"({b['ready_s'] / m_plain:.2f} x plain)")
            g = out["gated"]
            print(f"gated          ready after {g['ready_s']:.3f} s: "
                  f"{g['ready_s'] / b['ready_s'] - 1:+.1%} against background without gates "
                  "(target <= +1%)")
            if a.trace:
                t = out["trace"]
                print(f"traced open    {t['traced_open_s']:.3f} s ({t['spans_per_open']} spans): "
                      f"overhead {t['overhead']:+.1%} (target <= +1%); without opentelemetry "
                      f"{t['no_otel_open_s']:.3f} s ({t['overhead_vs_no_otel']:+.1%})")
                print(f"spans alone    {t['spans_cost_s'] * 1e6:.0f} us per open: "
                      f"{t['spans_cost_of_plain_open']:.4%} of a plain open")
        return 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
