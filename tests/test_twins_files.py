"""The native core and its pure twin write the same bytes and read each
other's files to the same state. Needs both cores, so it runs once: under
the "native" parameter (it selects each core explicitly inside)."""

from __future__ import annotations

import os
import random
import shutil

import pytest

from rehydrate import manifest

from rehydrate import Store, _backend, verify

from helpers import corrupt as C
from helpers.model import INT64_MAX, INT64_MIN, Model, apply_to_store, canon_state, store_state


def _ops():
    rng = random.Random(99)
    keys = ["a", b"a", 1, "", b"", 0, -1, INT64_MAX, INT64_MIN, "ключ", b"\x00\xff"]
    ops = []
    for i in range(400):
        r = rng.random()
        k = rng.choice(keys + [f"k{rng.randrange(50)}"])
        t = rng.choice(["kv", "other", "ümlaut"])
        if r < 0.35:
            v = rng.choice([None, True, i, -i * 1.5, f"s{i}", b"b\x00" * (i % 5), [i, (i, "t")],
                            {"n": i, "l": [1.25, None]}, (1 << 64) - 1])
            ops.append(("put", t, k, v))
        elif r < 0.45:
            ops.append(("delete", t, k))
        elif r < 0.6:
            ops.append(("incr", "counters", rng.randrange(20), rng.choice([1, -2, 0.5, 1000])))
        elif r < 0.62:
            ops.append(("clear", t))
        elif r < 0.8:
            ops.append(("batch", [("put", t, f"b{i}-{j}", j) for j in range(rng.randrange(1, 8))]
                        + [("incr", "counters", 0, 1)]))
        elif r < 0.9:
            ops.append(("put", "big", i % 7, "z" * rng.randrange(500, 6000)))  # LZ4
        else:
            ops.append(("put", "big", i % 7, rng.randbytes(rng.randrange(100, 2000))))  # raw
    return ops


def _write(path, ops):
    m = Model()
    with Store.open(path, sync="always", segment_bytes=4096) as s:
        for op in ops:
            assert apply_to_store(s, op) == m.apply(op)
    return m


def _files(path):
    out = {}
    for rel in sorted(C.tree_hashes(path)):
        if rel == "LOCK":
            continue
        with open(os.path.join(path, rel), "rb") as f:
            out[rel] = f.read()
    return out


def _comparable(report, root):
    d = report.as_dict()
    d.pop("duration_s")
    for s in d["segments"]:
        s["path"] = os.path.relpath(s["path"], root)
    for p in d["problems"]:
        p["path"] = os.path.relpath(p["path"], root)
    return d


def test_both_cores_write_identical_files_and_read_each_others(core, tmp_path):
    if core.IMPLEMENTATION == "pure":
        pytest.skip("compares the two cores; runs once, under the native parameter")
    ops = _ops()
    models = {}
    for name in ("native", "pure"):
        with _backend.use(name) as c:
            assert c.IMPLEMENTATION == name
            models[name] = _write(str(tmp_path / name), ops)
    assert canon_state(models["native"].tables) == canon_state(models["pure"].tables)
    native, pure = _files(str(tmp_path / "native")), _files(str(tmp_path / "pure"))
    assert sorted(native) == sorted(pure)
    assert len([n for n in native if n.startswith("wal")]) >= 3
    for rel in native:
        if rel in ("HINTS", "HISTORY"):
            continue  # sizes and timings of earlier opens: not authoritative
        if rel == "MANIFEST":
            # Each store has its own random identity; the rest must agree.
            a, b = (manifest.decode(x[rel], rel) for x in (native, pure))
            assert a.pop("store_id") != b.pop("store_id")
            assert a == b, "MANIFEST differs between the cores"
            continue
        assert native[rel] == pure[rel], f"{rel} differs between the cores"
    want = canon_state(models["pure"].tables)
    for reader in ("native", "pure"):
        for writer in ("native", "pure"):
            with _backend.use(reader):
                with Store.open(str(tmp_path / writer), recovery="strict") as s:
                    assert canon_state(store_state(s)) == want, (reader, writer)
                    assert s.lsn == models[writer].lsn


def test_both_cores_judge_the_same_damage_the_same_way(core, tmp_path):
    if core.IMPLEMENTATION == "pure":
        pytest.skip("compares the two cores; runs once, under the native parameter")
    base = str(tmp_path / "base")
    with _backend.use("pure"):
        _write(base, _ops()[:150])
    frames = C.all_frames(base)
    rng = random.Random(5)
    for case in range(12):
        d = str(tmp_path / f"case{case}")
        shutil.copytree(base, d)
        f = rng.choice(frames)
        seg = f.segment.replace(base, d)
        if case % 3 == 0:
            C.truncate(seg, rng.randrange(f.offset, f.end))
        elif case % 3 == 1:
            C.flip_bit(seg, rng.randrange(f.offset, f.end), rng.randrange(8))
        else:
            C.zero_range(seg, rng.randrange(f.offset, f.end), f.end)
        results = {}
        for name in ("native", "pure"):
            with _backend.use(name):
                results[name] = [_comparable(verify(d, recovery="skip-corrupted"), d)]
                for mode in ("tolerate-tail", "point-in-time", "skip-corrupted"):
                    copy = f"{d}-{name}-{mode}"
                    shutil.copytree(d, copy)
                    try:
                        with Store.open(copy, recovery=mode) as s:
                            results[name].append((mode, s.lsn, canon_state(store_state(s)),
                                                  _comparable(s.recovery_report, copy)))
                    except Exception as e:  # compared below: same type, same place
                        results[name].append((mode, type(e).__name__, getattr(e, "offset", None),
                                              getattr(e, "reason", None)))
        assert results["native"] == results["pure"], f"case {case}: {f}"
