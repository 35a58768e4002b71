"""HINTS presize tables at open; a damaged or hostile HINTS file is harmless."""

import json
import os

import pytest

from rehydrate import Store
from rehydrate import hints


def _write_store(path, n):
    with Store.open(path, sync="none") as s:
        with s.batch() as b:
            for i in range(n):
                b.put("t", i, b"v" * 16)
        s.put("u", "x", 1)


def test_a_clean_close_records_table_sizes(store_dir):
    _write_store(store_dir, 5000)
    h = hints.read(store_dir)
    assert h["t"]["keys"] == 5000 and h["u"]["keys"] == 1


def test_open_reserves_from_hints_and_state_is_unchanged(store_dir, core):
    _write_store(store_dir, 5000)
    with Store.open(store_dir) as s:
        t = s.table("t")
        assert len(t) == 5000 and t[4999] == b"v" * 16
        if core.IMPLEMENTATION == "native":
            # Reserved up front: room for every key without growing.
            assert t._stats()["slots"] * 7 >= 5000 * 10


@pytest.mark.parametrize("content", [
    b"", b"not json", b"[1,2]", b'{"format": 99, "tables": {}}',
    b'{"format": 1, "tables": {"t": {"keys": -5, "arena_bytes": 0}}}',
    b'{"format": 1, "tables": {"t": {"keys": "many", "arena_bytes": 0}}}',
    b'{"format": 1, "tables": "x"}',
])
def test_a_damaged_hints_file_is_ignored(store_dir, content):
    _write_store(store_dir, 100)
    with open(os.path.join(store_dir, "HINTS"), "wb") as f:
        f.write(content)
    with Store.open(store_dir) as s:
        assert len(s.table("t")) == 100


def test_a_hostile_hint_is_capped_by_what_the_log_can_hold(store_dir, core):
    _write_store(store_dir, 100)
    with open(os.path.join(store_dir, "HINTS"), "w") as f:
        json.dump({"format": 1, "tables": {"t": {"keys": 10**15, "arena_bytes": 10**15}}}, f)
    wal = os.path.join(store_dir, "wal")
    wal_bytes = sum(os.path.getsize(os.path.join(wal, n)) for n in os.listdir(wal))
    keys, arena = hints.capped(hints.read(store_dir)["t"], wal_bytes)
    assert keys <= wal_bytes // 6 and arena <= wal_bytes + 16 * keys
    with Store.open(store_dir) as s:
        t = s.table("t")
        assert len(t) == 100
        assert t.memory_bytes < 64 * wal_bytes + (1 << 20)
