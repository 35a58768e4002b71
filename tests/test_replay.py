"""The base a state starts from (``snapshot.load_base``, ``check_base``) and
the read-only replay built on it (``rehydrate.replay``): what an open and the
readers share."""

import errno
import os

import pytest

from rehydrate import CorruptionError, StorageIOError, Store
from rehydrate import manifest as M
from rehydrate import replay
from rehydrate import snapshot as S
from rehydrate._backend import core as current_core
from rehydrate.tables import TableRegistry

from helpers import corrupt as C


def _two_snapshots(path):
    """A store with snapshots at two LSNs, the log kept whole; (old, new)."""
    with Store.open(path) as s:
        for i in range(20):
            s.put("t", i, {"v": i})
        old = s.checkpoint()["lsn"]
        for i in range(20, 30):
            s.put("t", i, {"v": i})
        new = s.checkpoint()["lsn"]
    return old, new


def _spath(path, lsn):
    return os.path.join(path, S.SNAPSHOTS_DIR, S.snapshot_name(lsn))


def _break_meta(path, lsn):
    C.flip_bit(os.path.join(_spath(path, lsn), S.META_NAME), 20, 0)


def test_load_base_takes_the_newest_that_loads_and_reports_the_others(tmp_path):
    path = str(tmp_path / "s")
    old, new = _two_snapshots(path)
    _break_meta(path, new)
    before = C.tree_hashes(path)
    registry = TableRegistry(current_core())
    base = S.load_base(path, M.read(path), registry)
    assert base.lsn == old and isinstance(base.offsets, dict)
    assert [(p.kind, p.path, p.lsn, p.action) for p in base.problems] == \
        [("bad_snapshot", _spath(path, new), new, "skipped")]
    assert len(registry.by_name["t"].table) == 20
    assert C.tree_hashes(path) == before  # a reader changes nothing


def test_load_base_on_bad_strict_and_adapt(tmp_path):
    path = str(tmp_path / "s")
    old, new = _two_snapshots(path)
    _break_meta(path, new)
    bad = []
    seen = []

    def adapt(name, kind, table, version, spath, lsn):
        seen.append((name, version, spath, lsn))
        return table

    base = S.load_base(path, M.read(path), TableRegistry(current_core()),
                       on_bad=lambda lsn, spath: bad.append((lsn, spath)), adapt=adapt)
    assert base.lsn == old
    assert bad == [(new, _spath(path, new))]
    assert seen == [("t", 1, _spath(path, old), old)]
    with pytest.raises(CorruptionError) as e:
        S.load_base(path, M.read(path), TableRegistry(current_core()), strict=True)
    assert e.value.reason == "bad_snapshot"


def test_an_io_error_is_no_bad_snapshot_for_a_caller_that_acts_on_one(tmp_path, monkeypatch):
    path = str(tmp_path / "s")
    old, new = _two_snapshots(path)
    real = S.load

    def failing(spath, make_table):
        if spath == _spath(path, new):
            raise OSError(errno.EIO, "injected", spath)
        return real(spath, make_table)

    monkeypatch.setattr(S, "load", failing)
    man = M.read(path)
    # A reader passes over it, as over a failed one (nothing on disk changes).
    base = S.load_base(path, man, TableRegistry(current_core()))
    assert base.lsn == old and [p.lsn for p in base.problems] == [new]
    bad = []
    for kw in ({"on_bad": lambda lsn, spath: bad.append(lsn)}, {"strict": True}):
        with pytest.raises(StorageIOError):
            S.load_base(path, man, TableRegistry(current_core()), **kw)
    assert bad == []


def test_check_base_names_what_verify_names(tmp_path):
    man = {"ledger": [{"lsn": 10}]}
    S.check_base("d", man, 10, 5)
    assert S.has_base(man, 10, 11) and not S.has_base(man, 9, 5)
    for base_lsn, log_start, lsn in ((9, 5, 11), (3, 5, 11), (12, 20, 20)):
        with pytest.raises(CorruptionError) as e:
            S.check_base("d", man, base_lsn, log_start)
        assert (e.value.reason, e.value.lsn) == ("no_base", lsn)


def test_reader_walker_without_a_base_raises_or_only_checks(tmp_path):
    path = str(tmp_path / "s")
    old, new = _two_snapshots(path)
    man = dict(M.read(path), log_start=new + 1)  # as if the log were trimmed
    for lsn in (old, new):
        _break_meta(path, lsn)
    with pytest.raises(CorruptionError) as e:
        replay.replay_readonly(path, man, "skip-corrupted", TableRegistry(current_core()))
    assert (e.value.reason, e.value.lsn) == ("no_base", new + 1)
    fresh = TableRegistry(current_core(), materialize=False)
    w = replay.reader_walker(path, man, "skip-corrupted", TableRegistry(current_core()),
                             no_base="check", fresh_registry=lambda: fresh)
    assert w.apply is False and w.registry is fresh
    assert w.run().report.last_lsn >= new
