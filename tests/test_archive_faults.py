"""Faults between a store and its archive, and between a restore and the
archive (docs/archive.md, "Failure behaviour"), injected by the FaultProxy
(tests/helpers/s3_faults.py) in front of the S3 server: the store's URI
points at the proxy.

Writes never wait for the archive: with PUTs failing (500, 503, a reset),
held slow, cut half-way, or the server gone, every write is acknowledged,
``archive_status`` says ``retrying`` and the lag grows; once the faults
stop the archive catches up, and a restore (straight from the server)
gives exactly the store. A restore retries failing GETs, and one that
cannot reach the archive fails with ``unreachable`` leaving nothing at
its path; the next try reuses what it had fetched.
"""

from __future__ import annotations

import os
import shutil
import threading

import pytest

import rehydrate as rh
from rehydrate import ArchiveError, Store
from rehydrate import archive as A
from rehydrate.archive_restore import STAGING_SUFFIX

from helpers.archive_util import Objects, Seq, listed, restored, state
from helpers.replication import wait_until

WAIT_S = 60.0


@pytest.fixture
def via(s3_server, s3_bucket, fault_proxy):
    """(the URI through the proxy, the URI straight to the server, Objects)."""
    return (s3_server.uri(s3_bucket, "arch", endpoint=fault_proxy.endpoint),
            s3_server.uri(s3_bucket, "arch"),
            Objects(s3_server.filesystem(), f"{s3_bucket}/arch"))


def open_archiving(path, uri, **kw):
    kw.setdefault("sync", "always")
    kw.setdefault("segment_bytes", 4096)
    kw.setdefault("archive_every_s", 0.05)
    return Store.open(str(path), archive=uri, **kw)


def write_until(s, seq, condition, timeout_s=WAIT_S) -> int:
    """Write one op at a time (every poll) until ``condition()``; the LSN."""
    assert wait_until(lambda: seq.write(s, 1) > 0 and condition(), timeout_s), s.archive_status
    return s.lsn


def logged(proxy, kind, contains, status="any"):
    return proxy.count(lambda k, t, s: k == kind and contains in t
                       and (status == "any" or s == status))


def catch_up_and_compare(s, proxy, direct_uri, tmp_path):
    """The faults gone: the archive holds every write, and a restore
    straight from the server gives the store's state."""
    proxy.clear()
    assert s.wait_for_archive(timeout=WAIT_S), s.archive_status
    # (wait_for_archive can return inside the pass that reached the LSN;
    # the state says how the last whole pass went.)
    assert wait_until(lambda: s.archive_status["state"] == "ok", WAIT_S), s.archive_status
    st = s.archive_status
    assert st["state"] == "ok" and st["lag_records"] == 0 and s.archived_lsn == s.lsn
    want, lsn = state(s), s.lsn
    s.close()
    result, got = restored(direct_uri, tmp_path / "restored")
    assert result["lsn"] == lsn and got == want
    return st


def restore_in_background(uri: str, dest: str) -> tuple[threading.Thread, dict]:
    """A restore on a thread of its own (started); ``result["r"]`` is its
    result or the exception it raised once the thread ends."""
    result: dict = {}

    def restore() -> None:
        try:
            result["r"] = rh.restore(uri, dest)
        except BaseException as e:  # noqa: BLE001 - reported by the caller
            result["r"] = e

    t = threading.Thread(target=restore)
    t.start()
    return t, result


# ------------------------------------------------------------ failing PUTs
@pytest.mark.parametrize("fault", ["500", "503", "reset"])
def test_failing_puts_make_the_archive_retry_while_writes_go_on(tmp_path, via, fault_proxy,
                                                               fault):
    uri, direct, _ = via
    seq = Seq(31)
    s = open_archiving(tmp_path / "state", uri)
    try:
        seq.write(s, 20)
        assert s.wait_for_archive(timeout=WAIT_S)
        if fault == "reset":
            rule = fault_proxy.drop(method="PUT", path_contains="/wal/", times=None)
        else:
            rule = fault_proxy.fail(int(fault), method="PUT", path_contains="/wal/", times=None)
        before = s.lsn
        # Writes go on (each acknowledged) until the archive says it retries.
        assert write_until(s, seq, lambda: s.archive_status["state"] == "retrying") > before
        lsn = seq.write(s, 40)
        st = s.archive_status
        assert st["pass_failures"] >= 1 and st["failures"]["PUT"] >= 1
        assert st["lag_records"] == lsn - s.archived_lsn > 0
        assert "[unreachable]" in st["error"]
        assert rule.hits >= 2  # (the SDK's own second attempt failed too)
        st = catch_up_and_compare(s, fault_proxy, direct, tmp_path)
        assert st["error"] is None
    finally:
        s.close()
    expected = {"500": 500, "503": 503, "reset": None}[fault]
    assert logged(fault_proxy, "PUT", "/wal/", expected) >= 2


def test_one_failing_put_is_retried_within_the_request(tmp_path, via, fault_proxy):
    uri, direct, _ = via
    seq = Seq(32)
    with open_archiving(tmp_path / "state", uri) as s:
        seq.write(s, 5)
        assert s.wait_for_archive(timeout=WAIT_S)
        fault_proxy.fail(500, method="PUT", path_contains="/wal/", times=1)
        seq.write(s, 30)
        assert s.wait_for_archive(timeout=WAIT_S)
        st = s.archive_status
        assert st["pass_failures"] == 0 and st["failures"]["PUT"] == 0
        want = state(s)
    assert logged(fault_proxy, "PUT", "/wal/", 500) == 1
    _, got = restored(direct, tmp_path / "r")
    assert got == want


# ------------------------------------------------------------- a slow PUT
def test_writes_are_acknowledged_while_an_upload_is_held_slow(tmp_path, via, fault_proxy):
    uri, direct, _ = via
    seq = Seq(33)
    s = open_archiving(tmp_path / "state", uri, segment_bytes=1 << 20)
    try:
        seq.write(s, 5)
        assert s.wait_for_archive(timeout=WAIT_S)
        rule = fault_proxy.slow(1.5, method="PUT", path_contains=".part", times=1)
        seq.write(s, 1)
        assert wait_until(lambda: rule.hits == 1, WAIT_S)  # the PUT is held now
        done = logged(fault_proxy, "PUT", ".part")
        first = s.lsn
        lsn = seq.write(s, 100)
        # Every write returned (durable: sync="always") while the one upload
        # was still held: it is not answered yet.
        assert lsn > first and s.durable_lsn == lsn
        assert logged(fault_proxy, "PUT", ".part") == done
        assert s.archived_lsn < lsn
        catch_up_and_compare(s, fault_proxy, direct, tmp_path)
    finally:
        s.close()
    assert logged(fault_proxy, "PUT", ".part") > done


# ----------------------------------------------------------- server gone
def test_a_refusing_server_makes_the_archive_lag_and_it_catches_up(tmp_path, via,
                                                                   fault_proxy):
    uri, direct, objs = via
    seq = Seq(34)
    s = open_archiving(tmp_path / "state", uri)
    try:
        seq.write(s, 20)
        assert s.wait_for_archive(timeout=WAIT_S)
        held = s.archived_lsn
        fault_proxy.refuse()
        write_until(s, seq, lambda: s.archive_status["state"] == "retrying"
                    and s.archive_status["lag_seconds"] > 0)
        lsn = seq.write(s, 100)  # (several segments: sealed ones wait too)
        st = s.archive_status
        assert st["lag_records"] == lsn - held and s.archived_lsn == held
        assert st["lag_seconds"] > 0 and fault_proxy.refused + fault_proxy.requests["PUT"] > 0
        assert objs.manifest()["archived_lsn"] == held
        s.checkpoint()  # (the archiver is woken: it fails again, writes still go on)
        assert seq.write(s, 5) > lsn
        fault_proxy.accept()
        catch_up_and_compare(s, fault_proxy, direct, tmp_path)
    finally:
        s.close()


def test_a_close_while_the_server_is_gone_keeps_the_log_and_the_next_open_ships_it(
        tmp_path, via, fault_proxy):
    uri, direct, objs = via
    seq = Seq(35)
    path = tmp_path / "state"
    with open_archiving(path, uri) as s:
        seq.write(s, 20)
        assert s.wait_for_archive(timeout=WAIT_S)
        held = s.archived_lsn
        fault_proxy.refuse()
        lsn = seq.write(s, 60)
    assert objs.manifest()["archived_lsn"] == held < lsn
    fault_proxy.accept()
    with open_archiving(path, uri) as s:
        assert s.wait_for_archive(timeout=WAIT_S), s.archive_status
        assert s.archived_lsn == lsn
        want = state(s)
    _, got = restored(direct, tmp_path / "r")
    assert got == want == seq.state_at(lsn)


# ------------------------------------------------------------- a cut PUT
@pytest.mark.parametrize("what", ["part", "sealed", "manifest"])
def test_a_cut_upload_is_never_listed_and_is_uploaded_again(tmp_path, via, fault_proxy, what):
    uri, direct, objs = via
    seq = Seq(36)
    s = open_archiving(tmp_path / "state", uri)
    try:
        seq.write(s, 10)
        assert s.wait_for_archive(timeout=WAIT_S)
        contains = {"part": ".part", "sealed": ".wal", "manifest": "/MANIFEST"}[what]
        # (Both of the SDK's attempts are cut: the pass fails.)
        rule = fault_proxy.cut_upload(path_contains=contains, times=2)
        write_until(s, seq, lambda: rule.hits >= 2)
        cut = [t for k, t, st in fault_proxy.log if k == "PUT" and contains in t and st is None]
        assert len(cut) == 2 and cut[0] == cut[1]
        name = cut[0].split("/arch/", 1)[1]
        st = catch_up_and_compare(s, fault_proxy, direct, tmp_path)
        assert st["pass_failures"] >= 1
    finally:
        s.close()
    # The same object went up again, whole, in a later pass (or, for a part,
    # the segment's whole object once it was sealed meanwhile).
    answered = [st for k, t, st in fault_proxy.log if k == "PUT" and t.endswith("/" + name)]
    answered = answered[answered.index(None):]
    assert answered[:2] == [None, None], answered
    if what == "part" and 200 not in answered[2:]:
        first = int(name.split("/")[1].split(".")[0])
        assert logged(fault_proxy, "PUT", A.part_object(first, 0, True), 200), answered
    else:
        assert 200 in answered[2:], answered
    # Whatever the manifest lists is there, whole.
    man = objs.manifest()
    sizes = {n: objs.size(n) for n in listed(man)}
    for seg in man["segments"]:
        for part in seg["parts"]:
            assert sizes[A.part_name(seg, part)] == part["object_bytes"]
    for snap in man["snapshots"]:
        for f in snap["files"]:
            assert sizes[A.snapshot_object(snap["lsn"], f["name"])] == f["bytes"]


# ---------------------------------------------------------------- restore
@pytest.fixture
def quick_retries(monkeypatch):
    """A restore's retries at a twentieth of their delays (the same
    exponential bound with full jitter): the tests wait for six failed
    attempts, not for the schedule."""
    from rehydrate import objstore

    real = objstore.backoff_delays
    monkeypatch.setattr(objstore, "backoff_delays",
                        lambda base_s, cap_s: (d / 20 for d in real(base_s, cap_s)))


@pytest.fixture
def archived(tmp_path, via):
    """An archive with a snapshot and log after it, written straight to the
    server; (its state, its LSN)."""
    _, direct, _ = via
    seq = Seq(37)
    with open_archiving(tmp_path / "state", direct) as s:
        seq.write(s, 60)
        s.checkpoint()
        seq.write(s, 120)
        assert s.wait_for_archive(timeout=WAIT_S)
        return state(s), s.lsn


@pytest.mark.parametrize("status", [500, 503])
def test_a_restore_retries_failing_gets(tmp_path, via, fault_proxy, archived, status,
                                       quick_retries):
    uri, _, _ = via
    want, lsn = archived
    fault_proxy.fail(status, method="GET", path_contains="/wal/", times=3)
    fault_proxy.fail(status, method="GET", path_contains="/snapshots/", times=2)
    fault_proxy.fail(status, method="GET", path_contains="/MANIFEST", times=1)
    result, got = restored(uri, tmp_path / "r")
    assert result["lsn"] == lsn and got == want
    assert fault_proxy.count(lambda k, t, st: st == status) == 6


def test_a_restore_that_cannot_reach_the_archive_fails_and_leaves_nothing(tmp_path, via,
                                                                          fault_proxy,
                                                                          archived,
                                                                          quick_retries):
    uri, _, _ = via
    dest = tmp_path / "r"
    fault_proxy.refuse()
    with pytest.raises(ArchiveError) as ei:
        rh.restore(uri, str(dest))
    assert ei.value.reason == "unreachable" and ei.value.object == A.MANIFEST_OBJECT
    assert not dest.exists() and not os.path.exists(str(dest) + STAGING_SUFFIX)
    fault_proxy.accept()
    result, got = restored(uri, dest)
    assert (result["lsn"], got) == (archived[1], archived[0])


def test_a_restore_cut_off_half_way_is_finished_by_the_next_try(tmp_path, via, fault_proxy,
                                                               archived, quick_retries):
    uri, _, _ = via
    dest = tmp_path / "r"
    staging = str(dest) + STAGING_SUFFIX
    fault_proxy.fail(503, method="GET", path_contains="/wal/", times=None)
    with pytest.raises(ArchiveError) as ei:
        rh.restore(uri, str(dest))
    assert ei.value.reason == "unreachable" and ei.value.object.startswith("wal/")
    assert not dest.exists() and os.path.isdir(staging)
    snaps = os.listdir(os.path.join(staging, "snapshots"))
    assert len(snaps) == 1 and os.listdir(os.path.join(staging, "snapshots", snaps[0]))
    fault_proxy.clear()
    fault_proxy.reset_counts()
    result, got = restored(uri, dest)
    assert (result["lsn"], got) == (archived[1], archived[0])
    assert not os.path.exists(staging)
    # The snapshot's files came from the first try (checked again, not fetched).
    assert logged(fault_proxy, "GET", "/snapshots/") == 0
    assert logged(fault_proxy, "GET", "/wal/") > 0
    shutil.rmtree(dest)


def test_a_restore_reading_the_manifest_while_the_store_replaces_it(tmp_path, via,
                                                                   fault_proxy):
    """The manifest is replaced in place by a running store, and an S3 read
    is a HEAD (the size) then ranged GETs. A restore whose GET lands after
    a new, longer manifest replaced the one its HEAD measured gets the new
    one's first bytes: that read fails its own length check, and must be
    read again, not called a bad manifest. The GET is held by the proxy
    while the store publishes a new manifest."""
    uri, direct, objs = via
    seq = Seq(38)
    with open_archiving(tmp_path / "state", direct, segment_bytes=1 << 20,
                        archive_every_s=60.0) as s:
        seq.write(s, 10)
        assert s.wait_for_archive(timeout=WAIT_S)
        older = objs.read(A.MANIFEST_OBJECT)
        rule = fault_proxy.slow(3.0, method="GET", path_contains="/MANIFEST", times=1)
        t, result = restore_in_background(uri, str(tmp_path / "r"))
        try:
            assert wait_until(lambda: rule.hits == 1, WAIT_S)  # (its HEAD measured `older`)
            lsn = seq.write(s, 10)
            assert s.wait_for_archive(timeout=WAIT_S)
            newer = objs.read(A.MANIFEST_OBJECT)
            assert len(newer) > len(older)
            # The scenario happened: the new manifest is in place and the
            # restore's GET is still held (the proxy logs it once forwarded).
            assert logged(fault_proxy, "GET", "/MANIFEST") == 0
            want = state(s)
        finally:
            t.join(WAIT_S)
    assert isinstance(result.get("r"), dict), result
    assert result["r"]["lsn"] == lsn
    with Store.open(str(tmp_path / "r")) as again:
        assert state(again) == want
    assert logged(fault_proxy, "GET", "/MANIFEST") >= 2


def test_a_restore_while_the_store_seals_the_segment_it_is_reading(tmp_path, via,
                                                                  fault_proxy):
    """A restore of a live store's archive reads the manifest, then the
    objects it lists. The segment being written is listed as parts; once it
    is sealed, its whole object replaces them and the parts are deleted. A
    restore whose GET of a part comes after that finds it gone: the archive
    moved on, it was not emptied, and the restore must go on from the new
    manifest rather than fail with missing_object. The part's GET is held
    by the proxy while the store seals the segment."""

    uri, direct, objs = via
    seq = Seq(39)
    path = tmp_path / "state"
    with open_archiving(path, direct, segment_bytes=8192, archive_every_s=60.0) as s:
        seq.write(s, 10)
        assert s.wait_for_archive(timeout=WAIT_S)
        seg = objs.manifest()["segments"][-1]
        assert not seg["sealed"]
        part = A.part_name(seg, seg["parts"][0])
        rule = fault_proxy.slow(3.0, method="GET", path_contains=part, times=1)
        t, result = restore_in_background(uri, str(tmp_path / "r"))
        try:
            assert wait_until(lambda: rule.hits == 1, WAIT_S)
            first = len(os.listdir(path / "wal"))
            while len(os.listdir(path / "wal")) == first:  # (the segment seals)
                seq.write(s, 5)
            lsn = seq.write(s, 1)
            assert s.wait_for_archive(timeout=WAIT_S)
            assert wait_until(lambda: not objs.exists(part), WAIT_S)
            # The scenario happened: the part is gone, the restore's GET of it
            # still held (the proxy logs it once forwarded).
            assert logged(fault_proxy, "GET", part) == 0
            want = state(s)
        finally:
            t.join(WAIT_S)
    assert isinstance(result.get("r"), dict), result
    assert result["r"]["lsn"] == lsn
    with Store.open(str(tmp_path / "r")) as again:
        assert state(again) == want
