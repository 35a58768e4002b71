"""T8 (docs/reliability.md): every fuzz harness in fuzz/, run for a bounded
number of inputs without atheris: each seed of its corpus, then seeded
mutations of them (bit flips, byte changes, inserts, deletes, truncations,
splices). A harness raises on anything but its typed outcome, and the
differential ones when the native core and the pure twin disagree.
``make fuzz`` runs the same harnesses, coverage-guided, for much longer.
"""

from __future__ import annotations

import importlib
import os
import random
import sys

import pytest

from helpers.tier import scale

FUZZ = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "fuzz")
HARNESSES = {  # harness -> its corpus
    "fuzz_segment": "segment",
    "fuzz_payload": "payload",
    "fuzz_manifest": "manifest",
    "fuzz_arrow_ipc": "arrow_ipc",
    "fuzz_kvimage": "kvimage",
}


def _mutate(rng: random.Random, data: bytes, other: bytes) -> bytes:
    b = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        what = rng.randrange(6)
        pos = rng.randrange(len(b) + 1)
        if what == 0 and b:
            i = rng.randrange(len(b))
            b[i] ^= 1 << rng.randrange(8)
        elif what == 1 and b:
            b[rng.randrange(len(b))] = rng.choice((0, 0xFF, 0x7F, 0x80, rng.randrange(256)))
        elif what == 2:
            b[pos:pos] = rng.randbytes(rng.randint(1, 8))
        elif what == 3 and b:
            del b[pos:pos + rng.randint(1, 16)]
        elif what == 4:
            del b[pos:]
        else:
            cut = rng.randrange(len(other) + 1)
            b[pos:] = other[cut:]
    return bytes(b)


@pytest.mark.reliability
@pytest.mark.parametrize("harness", sorted(HARNESSES))
def test_harness_bounded(harness, core_name):
    if core_name != "native":
        pytest.skip("each harness runs both cores itself; once is enough")
    sys.path.insert(0, FUZZ)
    try:
        mod = importlib.import_module(harness)
    finally:
        sys.path.remove(FUZZ)
    cdir = os.path.join(FUZZ, "corpus", HARNESSES[harness])
    seeds = [open(os.path.join(cdir, n), "rb").read() for n in sorted(os.listdir(cdir))]
    assert seeds, f"no seeds in {cdir}"
    for data in seeds:
        mod.test_one_input(data)
    rng = random.Random(harness)
    for _ in range(scale(20_000, 1_000_000)):
        data = _mutate(rng, rng.choice(seeds), rng.choice(seeds))
        try:
            mod.test_one_input(data)
        except Exception as e:
            raise AssertionError(f"{harness} failed on {data[:200]!r}...: {e!r}") from e
