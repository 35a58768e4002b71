"""What reading a feature gate costs on a request path: ``bool(gate)``
against a plain attribute read, in the same run.

    .venv/bin/python benchmarks/gates.py [--number 1000000] [--repeat 31] [--json]

Each figure is the median over ``--repeat`` timeit runs of ``--number``
reads, per read, with the empty loop's cost taken off: ``bool(gate)`` and
``if gate:`` on an open gate of a real store (four requirements, one a
callable), and the plain read of an attribute (``obj.flag``, a
``__slots__`` field) as the floor. Target (docs/warmup.md): ``bool(gate)``
at most 100 ns.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import timeit

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import machine  # noqa: E402


class _Plain:
    __slots__ = ("flag",)

    def __init__(self) -> None:
        self.flag = True


def per_read_ns(stmt: str, env: dict, number: int, repeat: int) -> float:
    runs = timeit.repeat(stmt, globals=env, number=number, repeat=repeat)
    return statistics.median(runs) / number * 1e9


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--number", type=int, default=1_000_000)
    p.add_argument("--repeat", type=int, default=31)
    p.add_argument("--json", action="store_true")
    a = p.parse_args(argv)
    import rehydrate as rh

    work = tempfile.mkdtemp(prefix="rh-gates-")
    try:
        with rh.Store.open(os.path.join(work, "state")) as store:
            store.put("sessions", "u:1", {"cart": []})
            gate = store.gate("checkout", requires=[
                rh.table_ready("sessions"), rh.phase_done("prime"), rh.lag_below(1.0),
                lambda s: True])
            assert gate
            env = {"gate": gate, "obj": _Plain()}
            empty = per_read_ns("pass", env, a.number, a.repeat)
            out = {
                "bool_gate_ns": per_read_ns("bool(gate)", env, a.number, a.repeat) - empty,
                "if_gate_ns": per_read_ns("if gate: pass", env, a.number, a.repeat) - empty,
                "attribute_ns": per_read_ns("obj.flag", env, a.number, a.repeat) - empty,
                "if_attribute_ns": per_read_ns("if obj.flag: pass", env, a.number,
                                               a.repeat) - empty,
                "empty_loop_ns": empty, "target_ns": 100, "number": a.number,
                "repeat": a.repeat, "core": rh._backend.core().IMPLEMENTATION,
                "machine": machine()}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if a.json:
        print(json.dumps(out, indent=2))
    else:
        print(f"bool(gate)      {out['bool_gate_ns']:6.1f} ns (target <= 100 ns)")
        print(f"if gate:        {out['if_gate_ns']:6.1f} ns")
        print(f"obj.flag        {out['attribute_ns']:6.1f} ns (a plain attribute read)")
        print(f"if obj.flag:    {out['if_attribute_ns']:6.1f} ns")
        print(f"(medians of {a.repeat} x {a.number:,} reads, the empty loop's "
              f"{out['empty_loop_ns']:.1f} ns taken off)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
