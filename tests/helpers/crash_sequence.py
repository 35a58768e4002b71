"""The crash writer's deterministic op sequence, shared by writer and checker.

``ops(seed)`` yields the same op tuples (see helpers/model.py) every time, so
the parent can recompute the state of any recovered prefix. Incrs only touch
the "counters" table, which never holds a non-number: no op ever fails.
"""

from __future__ import annotations

import itertools
import random


def ops(seed: int):
    rng = random.Random(seed)
    for i in itertools.count():
        r = rng.random()
        if r < 0.40:
            yield ("put", "kv", f"k{rng.randrange(100)}", {"i": i, "pad": "p" * rng.randrange(60)})
        elif r < 0.50:
            yield ("delete", "kv", f"k{rng.randrange(100)}")
        elif r < 0.75:
            yield ("incr", "counters", rng.randrange(30), rng.randrange(-3, 10))
        elif r < 0.95:
            n = rng.randrange(2, 7)
            sub = []
            for j in range(n):
                if rng.random() < 0.5:
                    sub.append(("put", "kv", f"b{rng.randrange(100)}", [i, j]))
                else:
                    sub.append(("incr", "counters", rng.randrange(30), 1))
            yield ("batch", sub)
        else:
            # Large and compressible: an LZ4 frame, and a quick segment roll.
            yield ("put", "kv", f"big{rng.randrange(5)}", "z" * rng.randrange(600, 5000))


def count(op) -> int:
    return len(op[1]) if op[0] == "batch" else 1


def ops_up_to(seed: int, lsn: int):
    """The ops whose records are exactly LSNs 1..lsn; ValueError if ``lsn``
    falls inside an op (a batch must never be recovered in part)."""
    out = []
    done = 0
    for op in ops(seed):
        if done == lsn:
            return out
        if done > lsn:
            raise ValueError(f"LSN {lsn} is inside op {len(out) - 1} ({out[-1]!r})")
        out.append(op)
        done += count(op)
    raise AssertionError("unreachable")


def continue_writing(store, seed: int, max_ops: int, out) -> None:
    """Write the sequence on from the store's LSN, printing each
    acknowledged LSN to ``out`` (flushed) after its write returns."""
    gen = ops(seed)
    for _ in range(len(ops_up_to(seed, store.lsn))):  # raises if the LSN splits an op
        next(gen)
    for _ in range(max_ops):
        op = next(gen)
        if op[0] == "batch":
            with store.batch() as b:
                for sub in op[1]:
                    getattr(b, sub[0])(*sub[1:])
            lsn = b.lsn
        else:
            lsn = getattr(store, op[0])(*op[1:])
        out.write(f"{lsn}\n")
        out.flush()
