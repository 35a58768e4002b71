"""Import time: ``import rehydrate`` (both cores) beside ``python -c pass``
and the heavy libraries it imports only when used.

    .venv/bin/python benchmarks/import_time.py
    .venv/bin/python benchmarks/import_time.py --runs 21 --json

For each statement, the median over ``--runs`` fresh interpreters of:

- wall: the whole ``python -c STATEMENT`` process, start to exit (what a
  service or a CLI call pays), and that minus the ``pass`` baseline;
- importtime: the cumulative microseconds ``python -X importtime`` reports
  for the statement's top-level modules (the import alone, without the
  interpreter's own start).

It also lists which of the heavy modules (pyarrow, numpy, prometheus_client,
tqdm, pandas, polars, matplotlib) each statement leaves in ``sys.modules``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import machine, median  # noqa: E402

HEAVY = ("pyarrow", "numpy", "prometheus_client", "tqdm", "pandas", "polars", "matplotlib")
CASES = [
    ("pass", "pass", {}),
    ("import rehydrate", "import rehydrate", {}),
    ("import rehydrate (pure core)", "import rehydrate", {"REHYDRATE_NO_EXTENSIONS": "1"}),
    ("import pyarrow", "import pyarrow", {}),
    ("import numpy", "import numpy", {}),
]


def wall_s(statement: str, env: dict) -> float:
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", statement], env=env, check=True)
    return time.perf_counter() - t0


def _top_level(statement: str, env: dict) -> dict:
    """{module: cumulative us} of the outermost imports ``-X importtime``
    lists for ``python -c statement`` (nested imports are indented)."""
    err = subprocess.run([sys.executable, "-X", "importtime", "-c", statement], env=env,
                         check=True, capture_output=True, text=True).stderr
    out = {}
    for line in err.splitlines():
        parts = line.split("|")
        if not line.startswith("import time:") or len(parts) != 3 or "cumulative" in line:
            continue
        if parts[2].startswith("  "):
            continue  # nested under another import
        out[parts[2].strip()] = int(parts[1])
    return out


def importtime_us(statement: str, env: dict) -> int:
    """The statement's own imports: the top-level ones that ``pass`` (the
    interpreter's start-up: site, encodings...) does not make, summed."""
    startup = _top_level("pass", env)
    return sum(us for name, us in _top_level(statement, env).items() if name not in startup)


def heavy_loaded(statement: str, env: dict) -> list:
    code = (f"{statement}\nimport json, sys\n"
            f"print(json.dumps(sorted(m for m in {HEAVY!r} if m in sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], env=env, check=True,
                         capture_output=True, text=True).stdout
    loaded: list = json.loads(out)
    return loaded


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=11)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    rows = []
    for label, statement, extra in CASES:
        env = {k: v for k, v in os.environ.items() if k != "REHYDRATE_NO_EXTENSIONS"}
        env.update(extra)
        wall_s(statement, env)  # warm the page cache
        walls = [wall_s(statement, env) for _ in range(args.runs)]
        imports = [importtime_us(statement, env) for _ in range(args.runs)]
        rows.append({"statement": label, "wall_ms": round(median(walls) * 1000, 1),
                     "importtime_ms": round(median(imports) / 1000, 1),
                     "heavy_loaded": heavy_loaded(statement, env)})
    base = rows[0]["wall_ms"]
    for r in rows:
        r["over_pass_ms"] = round(r["wall_ms"] - base, 1)
    if args.json:
        print(json.dumps({"runs": args.runs, "machine": machine(), "rows": rows}, indent=1))
        return
    print(f"median of {args.runs} runs, {machine()}")
    print(f"{'statement':30} {'wall ms':>8} {'- pass':>8} {'importtime ms':>14}  heavy modules loaded")
    for r in rows:
        print(f"{r['statement']:30} {r['wall_ms']:8.1f} {r['over_pass_ms']:8.1f} "
              f"{r['importtime_ms']:14.1f}  {', '.join(r['heavy_loaded']) or '-'}")


if __name__ == "__main__":
    main()
