"""A table that grows past the arena's mapping threshold and huge-page size,
shrinks by compaction, and grows again keeps every value (both cores)."""

import random


def test_large_table_grows_compacts_and_regrows_without_losing_a_value(core):
    rng = random.Random(5)
    t = core.KVTable()
    buf = core.LogBuffer(1)
    model = {}
    n = 120_000 if core.IMPLEMENTATION == "native" else 20_000
    for i in range(n):  # ~100 bytes a value: an arena well past 8 MiB
        v = rng.randbytes(rng.randrange(60, 140))
        buf.put(t, 0, i, v)
        model[i] = v
    for i in range(0, n, 3):  # garbage, then compaction and a smaller arena
        buf.delete(t, 0, i)
        del model[i]
    for i in range(0, n, 7):  # values that grow past their capacity move
        v = rng.randbytes(300)
        buf.put(t, 0, i, v)
        model[i] = v
    for i in range(n, n + n // 2):  # and grow again
        buf.put(t, 0, i, b"z" * 90)
        model[i] = b"z" * 90
    assert len(t) == len(model)
    assert t.to_dict() == model
    if core.IMPLEMENTATION == "native":
        st = t._stats()
        assert st["arena_len"] > (8 << 20) and st["count"] == len(model)


def test_a_clone_is_equal_then_independent(core):
    rng = random.Random(6)
    t = core.KVTable()
    buf = core.LogBuffer(1)
    for i in range(30_000):
        buf.put(t, 0, rng.randrange(20_000), rng.randbytes(rng.randrange(1, 90)))
        if i % 5 == 0:
            buf.delete(t, 0, rng.randrange(20_000))
    before = t.to_dict()
    c = t._clone()
    assert c.to_dict() == before and c._digest() == t._digest() and len(c) == len(t)
    for i in range(5_000):  # writes to either side never reach the other
        buf.put(c, 0, f"c{i}", b"c")
        buf.delete(c, 0, i)
        buf.put(t, 0, f"t{i}", b"t")
    assert "t1" not in c and "c1" not in t
    assert all(t[k] == v for k, v in before.items() if k >= 5_000 or k not in range(5_000))
    assert c.to_dict() == {**{k: v for k, v in before.items() if k not in range(5_000)},
                           **{f"c{i}": b"c" for i in range(5_000)}}
