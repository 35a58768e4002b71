"""The public names, and the error classes' contract (bases, data, messages,
pickling)."""

from __future__ import annotations

import os
import pickle
import types

import pytest

import rehydrate
from rehydrate import (
    BatchTooLargeError,
    ConfigError,
    CorruptionError,
    InvalidOperationError,
    LockedError,
    NotAStoreError,
    RehydrateError,
    Store,
    StoreClosedError,
    StoreFailedError,
    TornTailError,
    UnsupportedFormatError,
    UnsupportedKeyError,
    ValueEncodingError,
    _fileio,
    verify,
)

from helpers import corrupt as C


def test_every_name_in_all_exists():
    for name in rehydrate.__all__:
        assert hasattr(rehydrate, name), name
    assert len(set(rehydrate.__all__)) == len(rehydrate.__all__)


def test_every_public_name_is_in_all():
    public = {n for n, v in vars(rehydrate).items()
              if not n.startswith("_") and not isinstance(v, types.ModuleType)}
    assert public <= set(rehydrate.__all__), public - set(rehydrate.__all__)


def test_star_import_gives_exactly_all():
    ns = {}
    exec("from rehydrate import *", ns)
    ns.pop("__builtins__")
    assert set(ns) == set(rehydrate.__all__)


def test_the_documented_api_is_exported():
    for name in ("Store", "Batch", "verify", "inspect", "RecoveryReport", "Problem",
                 "RehydrateError", "SYNC_MODES", "RECOVERY_MODES", "__version__"):
        assert name in rehydrate.__all__, name
    for name in ("open",):
        assert callable(getattr(rehydrate.Store, name))
    for attr in ("put", "delete", "incr", "clear", "batch", "sync", "table", "tables",
                 "close", "lsn", "durable_lsn"):
        assert hasattr(rehydrate.Store, attr), attr
    assert isinstance(rehydrate.__version__, str)
    assert [f for f in rehydrate.Problem.__dataclass_fields__] == \
        ["kind", "path", "offset", "lsn", "detail", "bytes", "lsn_end", "action"]


@pytest.mark.parametrize("cls, builtin", [
    (CorruptionError, ValueError),
    (TornTailError, CorruptionError),
    (UnsupportedFormatError, ValueError),
    (NotAStoreError, FileNotFoundError),
    (LockedError, BlockingIOError),
    (StoreClosedError, RuntimeError),
    (StoreFailedError, StoreClosedError),
    (ConfigError, ValueError),
    (UnsupportedKeyError, TypeError),
    (ValueEncodingError, TypeError),
    (InvalidOperationError, TypeError),
    (BatchTooLargeError, ValueError),
    (rehydrate.StorageIOError, OSError),
    (rehydrate.BackpressureError, TimeoutError),
    (rehydrate.MigrationError, RuntimeError),
    (rehydrate.ForkedStoreError, StoreClosedError),
    (rehydrate.ReadOnlyError, PermissionError),
    (rehydrate.MovedError, StoreClosedError),
    (rehydrate.ReplicationError, ConnectionError),
    (rehydrate.HandoffError, rehydrate.ReplicationError),
    (rehydrate.ArchiveError, OSError),
], ids=lambda v: v.__name__)
def test_each_error_subclasses_rehydrate_error_and_its_builtin(cls, builtin):
    assert issubclass(cls, RehydrateError) and issubclass(cls, builtin)


def test_every_exported_exception_is_a_rehydrate_error():
    exported = [getattr(rehydrate, n) for n in rehydrate.__all__]
    errors = [e for e in exported if isinstance(e, type) and issubclass(e, BaseException)
              and not issubclass(e, Warning)]
    assert len(errors) == 28
    for e in errors:
        assert issubclass(e, RehydrateError), e
    reasons = [e.default_reason for e in errors]
    assert len(set(reasons)) == len(reasons), "reason codes must be distinct"


def test_delete_is_the_per_record_marker_and_survives_pickling():
    assert "DELETE" in rehydrate.__all__
    from rehydrate.per_record import DELETE

    assert rehydrate.DELETE is DELETE and repr(DELETE) == "rehydrate.DELETE"
    assert pickle.loads(pickle.dumps(DELETE)) is DELETE


def test_a_migration_error_names_the_record_it_failed_on():
    e = rehydrate.MigrationError("bad", migration="m", key=17, path="/x",
                                 reason="record_raised")
    back = pickle.loads(pickle.dumps(e))
    assert (back.migration, back.key, back.reason, back.path) == ("m", 17, "record_raised", "/x")


def test_the_one_exported_warning_is_a_user_warning():
    warns = [getattr(rehydrate, n) for n in rehydrate.__all__
             if isinstance(getattr(rehydrate, n), type)
             and issubclass(getattr(rehydrate, n), Warning)]
    assert warns == [rehydrate.MigrationDriftWarning]
    assert issubclass(rehydrate.MigrationDriftWarning, UserWarning)


# Real errors, raised by the library, for the data/message/pickle checks.
def _corruption(tmp_path):
    path = str(tmp_path / "s")
    with Store.open(path, sync="always") as s:
        for i in range(5):
            s.put("t", i, i)
    seg = C.segment_paths(path)[0]
    frame = C.frames_of(seg)[2]
    C.flip_bit(seg, frame.offset + 35, 0)
    try:
        Store.open(path)
    except CorruptionError as e:
        return e, {"path": seg, "offset": frame.offset, "lsn": frame.first_lsn}
    raise AssertionError("no error")


def _torn(tmp_path):
    path = str(tmp_path / "s")
    with Store.open(path, sync="always") as s:
        for i in range(5):
            s.put("t", i, i)
    C.as_crashed(path)  # a torn tail is what a crash leaves
    seg = C.segment_paths(path)[0]
    frame = C.frames_of(seg)[-1]
    C.truncate(seg, frame.end - 1)
    try:
        Store.open(path, recovery="strict")
    except TornTailError as e:
        return e, {"path": seg, "offset": frame.offset, "lsn": frame.first_lsn}
    raise AssertionError("no error")


def _locked(tmp_path):
    path = str(tmp_path / "s")
    with Store.open(path):
        try:
            Store.open(path)
        except LockedError as e:
            return e, {"path": os.path.join(path, "LOCK"), "holder_pid": os.getpid()}
    raise AssertionError("no error")


def _failed(tmp_path):
    path = str(tmp_path / "s")
    s = Store.open(path, sync="always")
    s.put("t", 1, 1)
    real = _fileio.fsync

    def broken(fd):
        raise OSError(5, "EIO")

    _fileio.fsync = broken
    try:
        s.put("t", 2, 2)
    except StoreFailedError as e:
        return e, {"lsn": 1}
    finally:
        _fileio.fsync = real
        s.close()
    raise AssertionError("no error")


def _not_a_store(tmp_path):
    try:
        Store.open(tmp_path / "missing", create=False)
    except NotAStoreError as e:
        return e, {"path": str(tmp_path / "missing")}
    raise AssertionError("no error")


def _key(tmp_path):
    with Store.open(tmp_path / "s") as s:
        try:
            s.put("t", True, 1)
        except UnsupportedKeyError as e:
            return e, {}
    raise AssertionError("no error")


SCENARIOS = [_corruption, _torn, _locked, _failed, _not_a_store, _key]


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda f: f.__name__.strip("_"))
def test_errors_carry_where_and_why_and_the_message_names_it(tmp_path, scenario):
    err, where = scenario(tmp_path)
    assert err.reason and isinstance(err.reason, str)
    for attr, value in where.items():
        assert getattr(err, attr) == value, attr
    for attr in ("path", "offset", "lsn", "reason"):
        assert hasattr(err, attr)
    msg = str(err)
    if "path" in where:
        assert where["path"] in msg
    if "offset" in where:
        assert f"offset {where['offset']}" in msg
    if "holder_pid" in where:
        assert str(where["holder_pid"]) in msg


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda f: f.__name__.strip("_"))
def test_errors_survive_a_pickle_round_trip(tmp_path, scenario):
    err, _ = scenario(tmp_path)
    back = pickle.loads(pickle.dumps(err))
    assert type(back) is type(err)
    assert str(back) == str(err)
    for attr in ("path", "offset", "lsn", "reason", "detail", "holder_pid"):
        assert getattr(back, attr, None) == getattr(err, attr, None), attr


def test_verify_of_a_missing_directory_is_not_a_store(tmp_path):
    with pytest.raises(NotAStoreError) as ei:
        verify(tmp_path / "nope")
    assert ei.value.path == str(tmp_path / "nope")
    assert isinstance(ei.value, FileNotFoundError)


def test_os_errors_at_open_and_verify_are_typed(tmp_path, core, monkeypatch):
    import errno

    import rehydrate as rh
    from rehydrate import _fileio

    path = tmp_path / "s"
    with rh.Store.open(str(path)) as s:
        s.put("t", 1, 1)
    (path / "LOCK").unlink()
    (path / "LOCK").mkdir()  # the lock file cannot be opened: an OSError
    with pytest.raises(rh.StorageIOError) as ei:
        rh.Store.open(str(path))
    assert isinstance(ei.value, OSError) and isinstance(ei.value, rh.RehydrateError)
    assert ei.value.errno == errno.EISDIR and "LOCK" in ei.value.path
    (path / "LOCK").rmdir()

    def eio(p):
        raise OSError(errno.EIO, "Input/output error", p)

    monkeypatch.setattr(_fileio, "read_file", eio)
    with pytest.raises(rh.StorageIOError) as ei:
        rh.verify(str(path))
    assert ei.value.errno == errno.EIO and ei.value.path.endswith("MANIFEST")
