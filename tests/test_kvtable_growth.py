"""A table that grows past the arena's mapping threshold and huge-page size,
shrinks by compaction, and grows again keeps every value (both cores)."""

import random

import pytest

from rehydrate.errors import CorruptionError


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


def _pairs_of(copy, **kw):
    """The (key, value) pairs a copy's columns hold, through the offsets."""
    out = []
    for n, koff, kdata, voff, vdata in copy._columns(**kw):
        ko, vo = memoryview(koff).cast("i"), memoryview(voff).cast("i")
        assert len(ko) == len(vo) == n + 1 and ko[0] == vo[0] == 0
        assert ko[n] == len(kdata) and vo[n] == len(vdata)
        out += [(bytes(kdata[ko[i]:ko[i + 1]]), bytes(vdata[vo[i]:vo[i + 1]])) for i in range(n)]
    return out


@pytest.mark.parametrize("prep", ["prepared", "none", "too_small"])
def test_a_copy_holds_the_entries_then_and_is_independent(core, prep):
    rng = random.Random(6)
    t = core.KVTable()
    buf = core.LogBuffer(1)
    small = t._copy_prepare()  # prepared for an empty table: too small later
    for i in range(30_000):
        buf.put(t, 0, rng.randrange(20_000), rng.randbytes(rng.randrange(1, 90)))
        if i % 5 == 0:
            buf.delete(t, 0, rng.randrange(20_000))
    before = sorted(t._items_raw())
    digest = t._digest()
    c = t._copy({"prepared": t._copy_prepare(), "none": None, "too_small": small}[prep])
    assert len(c) == len(t) and c._digest() == digest
    for i in range(5_000):  # writes to the table never reach the copy
        buf.put(t, 0, f"t{i}", b"t")
        buf.delete(t, 0, i)
    assert sorted(_pairs_of(c)) == before and c._digest() == digest != t._digest()
    # Batches split by rows and stay whole pairs.
    assert sorted(_pairs_of(c, max_rows=777)) == before
    assert max(n for n, *_ in c._columns(max_rows=777)) == 777


def test_a_copy_of_an_empty_table_has_no_batches(core):
    t = core.KVTable()
    c = t._copy(t._copy_prepare())
    assert len(c) == 0 and c._columns() == [] and c._digest() == t._digest()
    with pytest.raises(ValueError):
        c._columns(max_rows=0)


def _columns(pairs):
    from array import array

    ko, vo, k, v = array("i", [0]), array("i", [0]), b"", b""
    for kb, vb in pairs:
        k, v = k + kb, v + vb
        ko.append(len(k))
        vo.append(len(v))
    return ko.tobytes(), k, vo.tobytes(), v


def test_bulk_loads_sum_the_digest_and_refuse_a_key_twice(core):
    rng = random.Random(8)
    pairs = {core.encode_key(f"k{i}"): core.pack_value(rng.randbytes(rng.randrange(1, 300)))
             for i in range(5000)}
    items = list(pairs.items())
    t = core.KVTable()
    t._reserve(len(items), 0, bulk=True)
    total = t._load_pairs(*_columns(items[:3000]))
    total += t._load_pairs(*_columns(items[3000:]))  # a second batch into a filled table
    t._loaded()
    assert sorted(t._items_raw()) == sorted(items) and len(t) == len(items)
    from rehydrate._hashing import finish_digest

    assert finish_digest(total, len(items)) == t._digest()
    assert core.pairs_digest_sum(*_columns(items)) == total % (1 << 64)
    assert t._load_pairs(*_columns([]), summed=False) is None
    # A key already in the table: refused, and the table is emptied.
    t2 = core.KVTable()
    t2._load_pairs(*_columns(items[1:50]))
    with pytest.raises(CorruptionError):
        t2._load_pairs(*_columns(items[10:11]))
    assert len(t2) == 0
    # A key twice in one batch: the same.
    t3 = core.KVTable()
    with pytest.raises(CorruptionError):
        t3._load_pairs(*_columns([(b"\x02new", b"\x01"), (b"\x02new", b"\x02")]))
    assert len(t3) == 0


@pytest.mark.parametrize("koff, voff", [
    ([0, 5], [0, 1]),  # key past its data
    ([0, 2, 1], [0, 1, 2]),  # offsets going back
    ([-1, 2], [0, 1]),
    ([0, 2], [0, 9]),  # value past its data
])
def test_pairs_digest_sum_refuses_bad_offsets_on_both_cores(core, koff, voff):
    from array import array

    assert core.pairs_digest_sum(array("i", koff).tobytes(), b"\x02a",
                                 array("i", voff).tobytes(), b"\x01\x02") is None
