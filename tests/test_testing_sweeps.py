"""rehydrate.testing for users: the crash and corruption sweeps, through
the ``rehydrate_sweeps`` fixture, on a custom StateType; both cores."""

from __future__ import annotations

import pytest

import rehydrate as rh
from rehydrate.testing import SimulatedCrash, crash_at


class Tally(rh.StateType):
    """Sums per key; its own op "add"."""

    def __init__(self):
        self.sums = {}

    def apply(self, op, key, value):
        if op == "add":
            self.sums[key] = self.sums.get(key, 0) + value
        elif op == "clear":
            self.sums.clear()
        else:
            raise ValueError(f"Tally takes add, not {op}")

    def snapshot(self):
        return sorted(self.sums.items())

    @classmethod
    def restore(cls, data):
        t = cls()
        t.sums = dict(data)
        return t

    def __len__(self):
        return len(self.sums)


ADDS = [("a", 1), ("b", 2), ("a", 3), ("c", 4), ("a", 5), ("b", 6)]


def _prefix_sums(n):
    sums = {}
    for key, v in ADDS[:n]:
        sums[key] = sums.get(key, 0) + v
    return sums


@pytest.mark.reliability
def test_crash_sweep_on_a_custom_table(store_dir, rehydrate_sweeps):
    kw = {"tables": {"tally": Tally}, "sync": "always", "segment_bytes": 4096}
    with rh.Store.open(store_dir, **kw) as s:
        s.write("tally", "add", "z", 100)
    acked = []

    def work(store):
        acked.clear()
        for i, (key, v) in enumerate(ADDS):
            store.write("tally", "add", key, v)
            acked.append(i + 1)
            if i == 2:
                store.checkpoint()

    def check(store, crashed):
        sums = dict(store.table("tally").sums)
        assert sums.pop("z") == 100
        n = next(n for n in range(len(ADDS) + 1) if _prefix_sums(n) == sums)  # a prefix
        assert n >= (acked[-1] if acked else 0)  # nothing acknowledged lost
        if crashed is None:
            assert n == len(ADDS)

    result = rehydrate_sweeps.crash(store_dir, work, check, **kw)
    assert result["crashes"] > 10 and result["points"] == result["crashes"] + 1


def test_corruption_sweep_on_a_custom_table(store_dir, rehydrate_sweeps):
    kw = {"tables": {"tally": Tally}}
    with rh.Store.open(store_dir, **kw) as s:
        for i, (key, v) in enumerate(ADDS):
            s.write("tally", "add", key, v)
            if i == 2:  # a snapshot the whole log still covers: a refused one costs nothing
                s.checkpoint()

    checked = []

    def check(store):
        # The store was closed cleanly: every write was acknowledged, and a
        # flip must be detected (a typed error) or lose nothing. A shorter
        # prefix, the empty one included, is a loss.
        assert store.table("tally").sums == _prefix_sums(len(ADDS))
        checked.append(store.lsn)

    result = rehydrate_sweeps.corrupt(store_dir, check, flips=60, **kw)
    assert result["flips"] == 60 and result["opened"] == len(checked)
    # Both outcomes occurred: flips the checks caught, and flips in the
    # snapshot, set aside by the open, which then replayed the whole log.
    print(result)
    assert result["detected"] > 0 and result["opened"] > 0, result


def test_crash_at_lets_earlier_operations_happen(store_dir):
    s = rh.Store.open(store_dir, sync="always")
    with pytest.raises(rh.StoreFailedError) as e:
        with crash_at(2) as state:
            s.put("t", 1, "first")  # write_all (1) happens, fsync (2) is the crash
    assert state["reached"] and isinstance(e.value.__cause__, SimulatedCrash)
    s.close()
    with rh.Store.open(store_dir) as again:  # the write reached the file, not the disk
        assert again.table("t")[1] == "first"


def test_crash_at_raises_a_base_exception(store_dir):
    s = rh.Store.open(store_dir, sync="always")
    with pytest.raises((SimulatedCrash, rh.StoreFailedError)):
        with crash_at(1):
            s.put("t", 1, "x")
    assert s.failed
    s.close()
