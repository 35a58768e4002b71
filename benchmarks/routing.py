"""The cost of a routed read (docs/migrations.md, "Routing and automatic
revert"): ``view[key]`` against a plain ``table[key]``, per core and
fraction. Run: .venv/bin/python benchmarks/routing.py"""

from __future__ import annotations

import timeit

from rehydrate import _backend
from rehydrate.routing import Routing

N = 10000


def main() -> None:
    for name in ("native", "pure"):
        with _backend.use(name) as c:
            old, new = c.KVTable(), c.KVTable()
            for i in range(N):
                kb = c.encode_key(i)
                old._put_raw(kb, c.pack_value(i))
                new._put_raw(kb, c.pack_value(i + 1))
            keys = list(range(N))
            for f in (0.0, 0.5, 1.0):
                r = Routing("m", "t", old, new, encode_key=c.encode_key,
                            failed=lambda k: False, compare=lambda a, b: True, sample=0.01,
                            auto_revert={"max_latency_ratio": 100.0, "min_reads": 10**9},
                            on_revert=lambda s: None, seed=1)
                r.set_fraction(f)
                v = r.view()

                def plain() -> None:
                    for k in keys:
                        old[k]

                def routed() -> None:
                    for k in keys:
                        v[k]

                # Interleaved, best of many: the machine may be shared.
                p = q = float("inf")
                for _ in range(15):
                    p = min(p, timeit.timeit(plain, number=2))
                    q = min(q, timeit.timeit(routed, number=2))
                p, q = p / (2 * N) * 1e9, q / (2 * N) * 1e9
                print(f"{name:6} fraction {f:.1f}: table[key] {p:4.0f} ns, "
                      f"view[key] {q:4.0f} ns, added {q - p:4.0f} ns")


if __name__ == "__main__":
    main()
