"""The archive (docs/archive.md), end to end against a ``file://`` archive
and the S3 server on 127.0.0.1: restore at the end, at an LSN and at a
time; the (filesystem, prefix) form; retention; the local log kept until
the archive holds it; status, metrics and request counts; bad targets;
one history per archive (foreign, diverged); a reopen that continues the
archive; a standby bootstrapped from the archive, and one promoted that
takes archiving over.
"""

from __future__ import annotations

import datetime as dt
import os
import time

import pyarrow.fs as pafs
import pytest

import rehydrate as rh
from rehydrate import ArchiveError, ConfigError, Store
from rehydrate import archive as A
from rehydrate.replication_client import ReplicationClient

from helpers.archive_util import (
    KINDS, Seq, let_the_clock_pass, listed, make_archive, restored, state,
)
from helpers.replication import wait_until

TOKEN = "archive-test-token"
WAIT_S = 30.0


@pytest.fixture(params=KINDS)
def kind(request):
    return request.param


def open_archiving(path, uri, **kw):
    kw.setdefault("sync", "always")
    kw.setdefault("segment_bytes", 4096)
    kw.setdefault("archive_every_s", 0.05)
    return Store.open(str(path), archive=uri, **kw)


def wal_segments(path) -> list[str]:
    return sorted(n for n in os.listdir(os.path.join(str(path), "wal")) if n.endswith(".wal"))


# --------------------------------------------------------------- restore
def test_restore_at_the_end_gives_the_store(tmp_path, request, kind):
    uri, objs = make_archive(kind, tmp_path, request)
    seq = Seq(1)
    with open_archiving(tmp_path / "state", uri) as s:
        seq.write(s, 120)
        s.checkpoint()
        lsn = seq.write(s, 120)
        assert s.wait_for_archive(timeout=WAIT_S), s.archive_status
        assert s.archived_lsn == lsn == s.lsn
        want = state(s)
    man = objs.manifest()
    assert man["archived_lsn"] == lsn and len(man["segments"]) >= 2 and man["snapshots"]
    result, got = restored(uri, tmp_path / "restored")
    assert got == want == seq.state_at(lsn)
    assert result["lsn"] == result["target_lsn"] == lsn
    assert result["snapshot_lsn"] == man["snapshots"][0]["lsn"]
    assert result["path"] == str(tmp_path / "restored") and result["bytes"] > 0
    assert result["archive_updated_ms"] == man["updated_ms"]
    assert result["requests"]["LIST"] == 0 and result["requests"]["PUT"] == 0
    assert not os.path.exists(str(tmp_path / "restored") + ".restoring")
    # The restored directory is a store that writes on.
    with Store.open(str(tmp_path / "restored")) as again:
        assert again.put("more", 1, 1) == lsn + 1


def test_restore_to_an_lsn_stops_at_the_last_frame_end_at_or_before_it(tmp_path, request,
                                                                         kind):
    uri, objs = make_archive(kind, tmp_path, request)
    seq = Seq(2)
    with open_archiving(tmp_path / "state", uri) as s:
        seq.write(s, 60)
        snap = s.checkpoint()["lsn"]
        seq.write(s, 90)
        assert s.wait_for_archive(timeout=WAIT_S)
    after = [i for i, e in enumerate(seq.ends) if e > snap]
    inside = next(seq.ends[i] - 1 for i in after if seq.ends[i] - seq.ends[i - 1] > 1)
    exact = seq.ends[after[10]]
    late = seq.ends[-5]
    for i, target in enumerate([snap, exact, inside, late]):
        result, got = restored(uri, tmp_path / f"r{i}", to_lsn=target)
        end = seq.frame_end_at_or_before(target)
        assert result["lsn"] == end and result["target_lsn"] == target, (target, result)
        assert result["snapshot_lsn"] == snap
        assert got == seq.state_at(end), target
    assert seq.frame_end_at_or_before(inside) < inside  # (the batch was not split)
    # The log before the snapshot is not kept (retention keeps the log the
    # kept snapshots need), and nothing is past the end.
    log_start = objs.manifest()["segments"][0]["first"]
    assert 1 < log_start <= snap + 1
    for target, reason in [(0, "no_base"), (log_start - 2, "no_base"),
                           (seq.ends[-1] + 1, "no_target")]:
        with pytest.raises(ArchiveError) as ei:
            rh.restore(uri, str(tmp_path / "nothing"), to_lsn=target)
        assert ei.value.reason == reason, (target, ei.value)
        assert not os.path.exists(tmp_path / "nothing")


def test_restore_to_a_time_holds_exactly_the_writes_made_before_it(tmp_path, request, kind):
    uri, _ = make_archive(kind, tmp_path, request)
    seq = Seq(3)
    before = dt.datetime.now(dt.timezone.utc)
    let_the_clock_pass(0.25)
    with open_archiving(tmp_path / "state", uri) as s:
        first = seq.write(s, 40)
        let_the_clock_pass(0.25)  # (beyond the time index's 0.1 s resolution)
        t = time.time()
        let_the_clock_pass(0.25)
        seq.write(s, 40)
        assert s.wait_for_archive(timeout=WAIT_S)
    for i, when in enumerate([t, dt.datetime.fromtimestamp(t, dt.timezone.utc),
                              dt.datetime.fromtimestamp(t, dt.timezone.utc).isoformat()]):
        result, got = restored(uri, tmp_path / f"r{i}", to_time=when)
        assert result["lsn"] == first, (when, result)
        assert got == seq.state_at(first)
    with pytest.raises(ArchiveError) as ei:
        rh.restore(uri, str(tmp_path / "early"), to_time=before)
    assert ei.value.reason == "no_target"
    with pytest.raises(ConfigError):
        rh.restore(uri, str(tmp_path / "both"), to_lsn=1, to_time=t)
    with pytest.raises(ConfigError):
        rh.restore(uri, str(tmp_path / "bad"), to_time="yesterday")


def test_restore_to_a_time_before_a_reopen_in_a_segment_sealed_after_it(tmp_path, request,
                                                                        kind):
    """The segment written before and after a reopen is sealed (archived
    whole) by the second process, which never saw the first one's time
    marks: its time index must still say when the first writes were made
    (from the parts already archived), or a restore to a time between them
    misses writes made well before it."""
    uri, _ = make_archive(kind, tmp_path, request)
    seq = Seq(4)
    path = tmp_path / "state"
    with open_archiving(path, uri, segment_bytes=32768) as s:
        first = seq.write(s, 20)
        assert s.wait_for_archive(timeout=WAIT_S)
    let_the_clock_pass(0.25)
    t = time.time()
    let_the_clock_pass(0.25)
    with open_archiving(path, uri, segment_bytes=32768) as s:
        while len(wal_segments(path)) < 3:  # (the first segment is sealed)
            seq.write(s, 10)
        assert s.wait_for_archive(timeout=WAIT_S)
        assert s.archive_status["sealed_through"] > first
    result, got = restored(uri, tmp_path / "r", to_time=t)
    assert result["lsn"] == first and got == seq.state_at(first)


def test_archive_as_a_filesystem_and_prefix(tmp_path, request, kind):
    if kind == "file":
        target = (pafs.LocalFileSystem(), str(tmp_path / "fsarch"))
    else:
        server = request.getfixturevalue("s3_server")
        target = (server.filesystem(), f"{request.getfixturevalue('s3_bucket')}/some/prefix")
    seq = Seq(5)
    with open_archiving(tmp_path / "state", target) as s:
        lsn = seq.write(s, 80)
        assert s.wait_for_archive(timeout=WAIT_S)
        assert s.archive_status["uri"].endswith(target[1].strip("/"))
        want = state(s)
    result, got = restored(target, tmp_path / "r")
    assert result["lsn"] == lsn and got == want
    fs, root = target
    assert fs.get_file_info(f"{root}/MANIFEST").type == pafs.FileType.File


# ------------------------------------------------------------- retention
def test_retention_deletes_older_snapshots_and_segments(tmp_path, request, kind):
    uri, objs = make_archive(kind, tmp_path, request)
    seq = Seq(6)
    with open_archiving(tmp_path / "state", uri, archive_retention_s=0, keep_snapshots=1) as s:
        snaps = []
        for _ in range(3):
            seq.write(s, 50)
            assert s.wait_for_archive(timeout=WAIT_S)
            snaps.append(s.checkpoint()["lsn"])
        lsn = seq.write(s, 20)
        assert s.wait_for_archive(timeout=WAIT_S)

        def settled():
            man = objs.manifest()
            return ([x["lsn"] for x in man["snapshots"]] == [snaps[-1]]
                    and set(objs.names()) == listed(man))
        assert wait_until(settled, WAIT_S), (objs.manifest()["snapshots"], objs.names())
        want = state(s)
    man = objs.manifest()
    assert all(seg["last"] > snaps[-1] or not seg["sealed"] for seg in man["segments"]), \
        man["segments"]
    assert not any(n.startswith(f"snapshots/{lsn:020d}") for lsn in snaps[:-1]
                   for n in objs.names())
    assert not objs.exists(A.part_object(1, 0, True))
    result, got = restored(uri, tmp_path / "r")
    assert result["lsn"] == lsn and result["snapshot_lsn"] == snaps[-1] and got == want
    with pytest.raises(ArchiveError) as ei:  # (the log before it is gone)
        rh.restore(uri, str(tmp_path / "old"), to_lsn=snaps[0])
    assert ei.value.reason == "no_base"


def test_the_local_log_is_trimmed_only_below_what_the_archive_holds(tmp_path, s3_server,
                                                                    s3_bucket, fault_proxy):
    uri = s3_server.uri(s3_bucket, "arch", endpoint=fault_proxy.endpoint)
    path = tmp_path / "state"
    seq = Seq(7)
    with open_archiving(path, uri, keep_snapshots=1) as s:
        seq.write(s, 30)
        assert s.wait_for_archive(timeout=WAIT_S)
        fault_proxy.refuse()
        held = s.archived_lsn
        while len(wal_segments(path)) < 5:
            seq.write(s, 10)
        kept = wal_segments(path)
        s.checkpoint()
        assert wait_until(lambda: s.archive_status["state"] == "retrying", WAIT_S)
        status = s.archive_status
        assert status["lag_records"] == s.lsn - held > 0 and s.archived_lsn == held
        # Every segment with records the archive lacks is still here.
        assert wal_segments(path)[:len(kept) - 1] == kept[:-1]
        fault_proxy.accept()
        assert s.wait_for_archive(timeout=60), s.archive_status
        s.checkpoint()
        now = wal_segments(path)
        assert len(now) < len(kept) and now[0] > kept[-2], (kept, now)
        # (wait_for_archive can return inside the pass that reached the LSN.)
        assert wait_until(lambda: s.archive_status["state"] == "ok", WAIT_S)
        want = state(s)
    _, got = restored(s3_server.uri(s3_bucket, "arch"), tmp_path / "r")
    assert got == want


# ------------------------------------------------ status, metrics, requests
def test_archived_lsn_and_archive_status(tmp_path, request, kind):
    uri, _ = make_archive(kind, tmp_path, request)
    with Store.open(str(tmp_path / "plain")) as plain:
        assert plain.archived_lsn is None and plain.archive_status is None
        with pytest.raises(ConfigError):
            plain.wait_for_archive()
    with open_archiving(tmp_path / "state", uri, archive_every_s=60.0) as s:
        assert s.wait_for_archive(timeout=WAIT_S)  # (an empty store: the archive is claimed)
        # (wait_for_archive can return inside the pass that reached the LSN.)
        assert wait_until(lambda: s.archive_status["state"] == "ok", WAIT_S)
        st = s.archive_status
        assert st["archived_lsn"] == 0 == s.archived_lsn
        for i in range(10):
            s.put("t", i, i)
        st = s.archive_status  # (a pass may have shipped some meanwhile)
        assert 0 < st["lag_records"] <= 10 and st["archived_lsn"] < 10
        assert st["lag_seconds"] >= 0
        assert s.wait_for_archive(lsn=5, timeout=WAIT_S) and s.archived_lsn == 10
        assert wait_until(lambda: s.archive_status["passes"] > st["passes"]
                          and s.archive_status["state"] == "ok", WAIT_S)
        st = s.archive_status
        assert set(st) >= {"state", "uri", "archived_lsn", "sealed_through", "lag_records",
                           "lag_seconds", "passes", "pass_failures", "error", "requests",
                           "failures", "bytes_up", "bytes_down"}
        assert st["state"] == "ok" and st["error"] is None and st["pass_failures"] == 0
        assert st["lag_records"] == 0 and st["lag_seconds"] == 0.0
        assert st["requests"]["PUT"] >= 2 and st["requests"]["GET"] == 1
        assert st["requests"]["LIST"] == 0 and st["bytes_up"] > 0
        assert sum(st["failures"].values()) == 0
        assert st["uri"] == uri  # (no credential in it to hide)
    assert s.archive_status["state"] == "stopped"  # (closed)


def _metric(text: str, name: str, **labels) -> float:
    for line in text.splitlines():
        if line.startswith("#") or not line.startswith(name):
            continue
        head, value = line.rsplit(" ", 1)
        if head.split("{")[0] != name:
            continue
        if all(f'{k}="{v}"' in head for k, v in labels.items()):
            return float(value)
    raise AssertionError(f"{name} {labels} not in the metrics")


def test_archive_metrics(tmp_path, request, kind):
    from prometheus_client import CollectorRegistry, generate_latest

    uri, _ = make_archive(kind, tmp_path, request)
    with open_archiving(tmp_path / "state", uri, archive_every_s=60.0) as s:
        reg = s.metrics(CollectorRegistry())
        assert s.wait_for_archive(timeout=WAIT_S)
        for i in range(7):
            s.put("t", i, i)
        text = generate_latest(reg).decode()  # (a pass may have shipped some meanwhile)
        assert 0 < _metric(text, "rehydrate_archive_lag_records") <= 7
        assert _metric(text, "rehydrate_archive_lsn") < 7
        assert s.wait_for_archive(timeout=WAIT_S)
        assert wait_until(lambda: s.archive_status["state"] == "ok", WAIT_S)
        st = s.archive_status
        text = generate_latest(reg).decode()
    assert _metric(text, "rehydrate_archive_lsn") == 7
    assert _metric(text, "rehydrate_archive_lag_records") == 0
    assert _metric(text, "rehydrate_archive_lag_seconds") == 0
    assert _metric(text, "rehydrate_archive_state", state="ok") == 1
    assert _metric(text, "rehydrate_archive_state", state="retrying") == 0
    assert _metric(text, "rehydrate_archive_requests_total", kind="PUT") == st["requests"]["PUT"]
    assert _metric(text, "rehydrate_archive_requests_total", kind="LIST") == 0
    assert _metric(text, "rehydrate_archive_request_failures_total", kind="PUT") == 0
    assert _metric(text, "rehydrate_archive_bytes_uploaded_total") == st["bytes_up"] > 0
    assert _metric(text, "rehydrate_archive_failed_passes_total") == 0


def test_a_running_store_makes_no_list_requests(tmp_path, s3_server, s3_bucket, fault_proxy):
    uri = s3_server.uri(s3_bucket, "arch", endpoint=fault_proxy.endpoint)
    seq = Seq(8)
    with open_archiving(tmp_path / "state", uri, archive_retention_s=0, keep_snapshots=1) as s:
        for _ in range(3):
            seq.write(s, 60)
            s.checkpoint()
            assert s.wait_for_archive(timeout=WAIT_S)
        seq.write(s, 20)
        assert s.wait_for_archive(timeout=WAIT_S)
        assert s.archive_status["requests"]["DELETE"] > 0  # (retention and sealed parts ran)
    assert fault_proxy.requests["LIST"] == 0, fault_proxy.requests
    # The manifest, once, at the start (a HEAD, as pyarrow asks first); the
    # other HEADs are pyarrow's own before each DELETE.
    assert fault_proxy.log[0][:2] == ("HEAD", f"/{s3_bucket}/arch/MANIFEST")
    assert fault_proxy.requests["GET"] == 0
    assert fault_proxy.requests["HEAD"] == 1 + fault_proxy.requests["DELETE"]
    assert fault_proxy.requests["PUT"] > 10 and fault_proxy.requests["DELETE"] > 0


# ------------------------------------------------------------ bad targets
def _bad_targets():
    fs = pafs.LocalFileSystem()
    return [("no-scheme", "just/a/path"), ("empty", ""), ("int", 5),
            ("tuple-of-str", ("a", "b")), ("one-tuple", (fs,)), ("prefix-not-str", (fs, 5)),
            ("three-tuple", (fs, "/x", "y")), ("unknown-scheme", "bogus://x/y"),
            ("s3-bad-query", "s3://bucket/p?region=us-east-1&nonsense=1"),
            ("file-with-host", "file://relative/x")]


@pytest.mark.parametrize("name, target", _bad_targets(), ids=[n for n, _ in _bad_targets()])
def test_a_bad_archive_value_is_a_config_error_before_touching_disk(tmp_path, name, target):
    path = tmp_path / "state"
    with pytest.raises(ConfigError):
        Store.open(str(path), archive=target)
    assert not path.exists()
    with pytest.raises(ConfigError):
        Store.open_background(str(path), archive=target)
    assert not path.exists()
    with Store.open(str(path)) as s:  # (nothing was left locked)
        s.put("t", 1, 1)


# -------------------------------------------------------- one history
def test_another_store_at_the_prefix_is_refused_and_writes_go_on(tmp_path, request, kind):
    uri, objs = make_archive(kind, tmp_path, request)
    with open_archiving(tmp_path / "one", uri) as one:
        one.put("t", "a", 1)
        assert one.wait_for_archive(timeout=WAIT_S)
        owner = objs.manifest()["store_id"]
        with open_archiving(tmp_path / "two", uri) as two:
            assert two.store_id != owner
            assert wait_until(lambda: two.archive_status["state"] == "failed", WAIT_S)
            assert "[foreign_store]" in two.archive_status["error"]
            for i in range(20):
                two.put("t", i, i)
            assert two.lsn == 20
            assert two.wait_for_archive(timeout=5) is False
        one.put("t", "b", 2)
        assert one.wait_for_archive(timeout=WAIT_S)
        want = state(one)
    assert objs.manifest()["store_id"] == owner
    _, got = restored(uri, tmp_path / "r")
    assert got == want


@pytest.mark.parametrize("then", ["reopened", "wrote-on"])
def test_a_store_restored_to_an_earlier_lsn_is_refused_as_diverged(tmp_path, request, kind,
                                                                   then):
    uri, objs = make_archive(kind, tmp_path, request)
    seq = Seq(9)
    with open_archiving(tmp_path / "state", uri, segment_bytes=1 << 20) as s:
        seq.write(s, 60)
        assert s.wait_for_archive(timeout=WAIT_S)
    before = objs.read(A.MANIFEST_OBJECT)
    end = objs.manifest()["archived_lsn"]
    early = seq.ends[20]
    rh.restore(uri, str(tmp_path / "old"), to_lsn=early)
    if then == "wrote-on":  # (past the archive's end: another history all the same)
        with Store.open(str(tmp_path / "old"), segment_bytes=1 << 20) as o:
            while o.lsn <= end:
                o.put("other", o.lsn, "x")
    with open_archiving(tmp_path / "old", uri, segment_bytes=1 << 20) as o:
        assert wait_until(lambda: o.archive_status["state"] == "failed", WAIT_S)
        assert "[diverged]" in o.archive_status["error"]
        lsn = o.put("t", "after", 1)
        assert o.lsn == lsn  # (writes go on)
    assert objs.read(A.MANIFEST_OBJECT) == before


def test_a_reopened_store_continues_the_same_archive(tmp_path, request, kind):
    uri, objs = make_archive(kind, tmp_path, request)
    path = tmp_path / "state"
    seq = Seq(10)
    with open_archiving(path, uri, segment_bytes=1 << 20) as s:
        seq.write(s, 30)
        assert s.wait_for_archive(timeout=WAIT_S)
        seq.write(s, 30)
    parts_before = objs.manifest()["segments"][0]["parts"]
    with open_archiving(path, uri, segment_bytes=1 << 20) as s:
        seq.write(s, 30)
        assert s.wait_for_archive(timeout=WAIT_S)
        want, lsn = state(s), s.lsn
    man = objs.manifest()
    assert len(man["segments"]) == 1 and man["segments"][0]["first"] == 1
    parts = man["segments"][0]["parts"]
    assert parts[:len(parts_before)] == parts_before and len(parts) > len(parts_before)
    assert [p["offset"] for p in parts[1:]] == [p["offset"] + p["bytes"] for p in parts[:-1]]
    assert man["epoch"] == 1
    result, got = restored(uri, tmp_path / "r")
    assert result["lsn"] == lsn and got == want == seq.state_at(lsn)


# ------------------------------------------------------------- standbys
class _Primary:
    def __init__(self, path, uri):
        self.store = open_archiving(path, uri, segment_bytes=8192, archive_every_s=1.0)
        self.server = self.store.serve_http(port=0, replication=True, token=TOKEN)
        self.url = f"http://127.0.0.1:{self.server.port}"

    def close(self):
        self.server.close()
        self.store.close()


def test_a_standby_bootstraps_from_the_archive_and_follows(tmp_path, request, kind,
                                                          monkeypatch):
    downloads = []
    real = ReplicationClient.download_snapshot
    monkeypatch.setattr(ReplicationClient, "download_snapshot",
                        lambda self, lsn, dest: downloads.append(lsn) or real(self, lsn, dest))
    uri, objs = make_archive(kind, tmp_path, request)
    seq = Seq(11)
    p = _Primary(tmp_path / "primary", uri)
    s = None
    try:
        seq.write(p.store, 80)
        p.store.checkpoint()
        seq.write(p.store, 80)
        assert p.store.wait_for_archive(timeout=WAIT_S)
        archived = p.store.archived_lsn
        seq.write(p.store, 30)  # (not in the archive yet: streamed from the primary)
        assert archived < p.store.lsn
        s = Store.open_standby(str(tmp_path / "standby"), p.url, token=TOKEN, bootstrap=uri,
                               archive=uri, archive_every_s=0.05)
        assert downloads == []  # (the snapshot came from the archive)
        assert s.wait_for_lsn(p.store.lsn, timeout=WAIT_S), s.lag
        assert state(s) == state(p.store)
        seq.write(p.store, 40)
        assert s.wait_for_lsn(p.store.lsn, timeout=WAIT_S), s.lag
        assert state(s) == state(p.store) == seq.state_at(p.store.lsn)
        assert s.role == "standby" and s.archived_lsn is None  # (archives once promoted)

        # Promoted, it takes archiving over: a new epoch in the manifest.
        assert objs.manifest()["epoch"] == 1
        out = s.promote(timeout_s=30)
        assert s.role == "primary" and out["epoch"] == 2
        lsn = seq.write(s, 40)
        assert s.wait_for_archive(timeout=WAIT_S), s.archive_status
        man = objs.manifest()
        assert man["epoch"] == 2 and man["archived_lsn"] == lsn
        assert wait_until(lambda: p.store.archive_status["state"] == "stopped", WAIT_S), \
            p.store.archive_status
        want = state(s)
    finally:
        if s is not None:
            s.close()
        p.close()
    result, got = restored(uri, tmp_path / "r")
    assert result["lsn"] == lsn and got == want == seq.state_at(lsn)


def test_a_bootstrap_from_another_stores_archive_is_refused(tmp_path, request, kind):
    uri, _ = make_archive(kind, tmp_path, request)
    with open_archiving(tmp_path / "other", uri) as other:
        other.put("t", 1, 1)
        assert other.wait_for_archive(timeout=WAIT_S)
    p = _Primary(tmp_path / "primary", make_archive("file", tmp_path, request, "own")[0])
    try:
        p.store.put("t", 1, 1)
        with pytest.raises(rh.ReplicationError) as ei:
            Store.open_standby(str(tmp_path / "standby"), p.url, token=TOKEN, bootstrap=uri)
        assert ei.value.reason == "foreign_store"
    finally:
        p.close()
    assert not os.path.exists(tmp_path / "standby" / "MANIFEST")
