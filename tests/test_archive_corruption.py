"""Damage to everything a restore reads (docs/archive.md, docs/FORMAT.md
"The archive"): the manifest object, byte by byte and field by field; a
segment or part object (a flipped byte, a cut, a deletion); a snapshot
file; a time index; a bucket emptied behind the store's back; a
destination that is not empty. Every case is a typed ``ArchiveError``
with its reason, naming the object (and where it applies the offset in
it and the LSN), and leaves nothing at the destination: at most
``<path>.restoring``. Never a wrong state.

Most cases run on a ``file://`` archive (its objects are plain files
under the prefix), a few on the S3 server. Also: ``crc32c_combine``
against the crc32c package, and ``objstore.redact``.
"""

from __future__ import annotations

import copy
import os
import shutil
import struct
import time

import crc32c as crc32c_pkg
import pyarrow.fs as pafs
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import rehydrate as rh
from rehydrate import ArchiveError, Store
from rehydrate import archive as A
from rehydrate._backend import core as _core
from rehydrate.archive_restore import STAGING_SUFFIX, crc32c_combine
from rehydrate.objstore import redact

from helpers.archive_util import Objects, Seq, let_the_clock_pass, listed, restored, state

WAIT_S = 30.0


# ------------------------------------------------------------- the archive
class Built:
    """An archive made once per module: a snapshot, sealed segments after
    it, and a segment still in parts (one of them spanning a time ``t_mid``
    inside it)."""

    root: str
    state: dict
    lsn: int
    t_mid: float
    lsn_at_t_mid: int


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Built:
    base = tmp_path_factory.mktemp("built")
    b = Built()
    b.root = str(base / "arch")
    seq = Seq(21)
    with Store.open(str(base / "state"), sync="always", segment_bytes=4096,
                    archive="file://" + b.root, archive_every_s=60.0) as s:
        seq.write(s, 60)
        s.checkpoint()
        seq.write(s, 150)
        assert s.wait_for_archive(timeout=WAIT_S)
        first = len(os.listdir(os.path.join(str(base / "state"), "wal")))
        # The active segment, shipped in parts: a small one, then one whose
        # writes lie on both sides of t_mid.
        for _ in range(2):
            s.put("tail", "k", "v")
            assert s.wait_for_archive(timeout=WAIT_S)
        s.put("tail", "before", 1)
        let_the_clock_pass(0.25)
        b.t_mid = time.time()
        b.lsn_at_t_mid = s.lsn
        let_the_clock_pass(0.25)
        s.put("tail", "after", 2)
        assert s.wait_for_archive(timeout=WAIT_S)
        assert len(os.listdir(os.path.join(str(base / "state"), "wal"))) == first
        b.state, b.lsn = state(s), s.lsn
    man = Objects(pafs.LocalFileSystem(), b.root).manifest()
    segs = man["segments"]
    assert man["snapshots"] and segs[0]["sealed"] and not segs[-1]["sealed"]
    assert len(segs[-1]["parts"]) >= 3
    part = segs[-1]["parts"][-1]
    assert part["t_first"] < b.t_mid * 1000 < part["t_last"]
    return b


@pytest.fixture
def arch(built, tmp_path):
    """A copy of the built archive for this test: (URI, Objects)."""
    root = str(tmp_path / "arch")
    shutil.copytree(built.root, root)
    return "file://" + root, Objects(pafs.LocalFileSystem(), root)


def fails(uri, tmp_path, reason, obj=None, **kw) -> ArchiveError:
    """Restore ``uri`` into tmp_path/dest: ArchiveError ``reason`` naming
    ``obj``, and nothing at the destination but (maybe) its staging."""
    dest = tmp_path / "dest"
    with pytest.raises(ArchiveError) as ei:
        rh.restore(uri, str(dest), **kw)
    e = ei.value
    assert e.reason == reason, e
    if obj is not None:
        assert e.object == obj, e
        assert obj in str(e)
    assert not os.path.exists(dest), os.listdir(dest)
    left = {n for n in os.listdir(tmp_path) if n.startswith("dest")}
    assert left <= {"dest" + STAGING_SUFFIX}, left
    return e


def flip(data: bytes, at: int) -> bytes:
    return data[:at] + bytes([data[at] ^ 0x40]) + data[at + 1:]


def test_the_built_archive_restores_whole(built, arch, tmp_path):
    uri, _ = arch
    result, got = restored(uri, tmp_path / "ok")
    assert result["lsn"] == built.lsn and got == built.state
    result, _ = restored(uri, tmp_path / "t", to_time=built.t_mid)
    assert result["lsn"] == built.lsn_at_t_mid


# ------------------------------------------------------ the manifest, raw
def _raw_cases():
    def payload_of(data):
        (n,) = struct.unpack_from("<I", data, 8)
        return data[16:16 + n]

    def framed(payload, crc=None):
        c = _core().crc32c(payload) if crc is None else crc
        return A.MANIFEST_MAGIC + struct.pack("<II", len(payload), c) + payload

    return [
        ("magic", lambda d: b"RHARCHV0" + d[8:]),
        ("not-rehydrate", lambda d: b"PK\x03\x04" + d[4:]),
        ("length-short", lambda d: d[:8] + struct.pack("<I", len(d) - 17) + d[12:]),
        ("length-long", lambda d: d[:8] + struct.pack("<I", len(d)) + d[12:]),
        ("truncated", lambda d: d[:len(d) // 2]),
        ("header-only", lambda d: d[:12]),
        ("empty", lambda d: b""),
        ("crc", lambda d: d[:12] + struct.pack("<I", struct.unpack_from("<I", d, 12)[0] ^ 1)
         + d[16:]),
        ("payload-flip", lambda d: flip(d, 40)),
        ("not-json", lambda d: framed(b"{not json")),
        ("json-list", lambda d: framed(b"[1, 2]")),
        ("not-utf8", lambda d: framed(b'{"format": 1, "x": "\xff"}')),
        ("trailing-bytes", lambda d: framed(payload_of(d) + b"  x")),
    ]


@pytest.mark.parametrize("name, damage", _raw_cases(), ids=[n for n, _ in _raw_cases()])
def test_a_damaged_manifest_object_is_bad_manifest(arch, tmp_path, name, damage):
    uri, objs = arch
    objs.write(A.MANIFEST_OBJECT, damage(objs.read(A.MANIFEST_OBJECT)))
    fails(uri, tmp_path, "bad_manifest", A.MANIFEST_OBJECT)
    assert not os.path.exists(str(tmp_path / "dest") + STAGING_SUFFIX)


# --------------------------------------------------- the manifest, fields
def _set(path, value):
    def change(man):
        *head, last = path
        at = man
        for k in head:
            at = at[k]
        if value is _DELETE:
            del at[last]
        else:
            at[last] = value(at[last]) if callable(value) else value
    return change


_DELETE = object()
SEG = ("segments", 0)
TAIL = ("segments", -1)
SNAP = ("snapshots", 0)


def _gap(man):
    del man["segments"][1]


def _unsealed_in_the_middle(man):
    man["segments"][0]["sealed"] = False
    man["segments"][0]["parts"][0]["whole"] = False


def _parts_overlap(man):
    man["segments"][-1]["parts"][1]["offset"] -= 1


def _parts_gap(man):
    man["segments"][-1]["parts"][1]["offset"] += 1


def _parts_do_not_add_up(man):
    man["segments"][-1]["bytes"] += 1


def _part_lsns_go_down(man):
    parts = man["segments"][-1]["parts"]
    parts[1]["last"] = parts[0]["last"] - 1


def _two_whole_parts(man):
    seg = man["segments"][-1]
    seg["sealed"] = True
    seg["parts"][0]["whole"] = True


def _snapshot_twice(man):
    man["snapshots"].append(copy.deepcopy(man["snapshots"][0]))


def _file_twice(man):
    files = man["snapshots"][0]["files"]
    files.append(dict(files[0]))


def _no_meta(man):
    files = man["snapshots"][0]["files"]
    man["snapshots"][0]["files"] = [f for f in files if f["name"] != "META"]


def _file_name(name):
    return _set(SNAP + ("files", 0, "name"), name)


FIELD_CASES = [
    ("format-missing", _set(("format",), _DELETE), "bad_manifest"),
    ("format-str", _set(("format",), "1"), "bad_manifest"),
    ("format-zero", _set(("format",), 0), "bad_manifest"),
    ("format-bool", _set(("format",), True), "bad_manifest"),
    ("format-newer", _set(("format",), 2), "unsupported_format"),
    ("store-id-short", _set(("store_id",), "abc"), "bad_manifest"),
    ("store-id-upper", _set(("store_id",), lambda v: v.upper()), "bad_manifest"),
    ("store-id-int", _set(("store_id",), 7), "bad_manifest"),
    ("epoch-zero", _set(("epoch",), 0), "bad_manifest"),
    ("epoch-float", _set(("epoch",), 1.5), "bad_manifest"),
    ("epoch-str", _set(("epoch",), "1"), "bad_manifest"),
    ("archived-lsn-negative", _set(("archived_lsn",), -1), "bad_manifest"),
    ("archived-lsn-str", _set(("archived_lsn",), "9"), "bad_manifest"),
    ("archived-lsn-not-the-end", _set(("archived_lsn",), lambda v: v + 1), "bad_manifest"),
    ("archived-lsn-huge", _set(("archived_lsn",), 1 << 64), "bad_manifest"),
    ("updated-ms-missing", _set(("updated_ms",), _DELETE), "bad_manifest"),
    ("updated-ms-negative", _set(("updated_ms",), -5), "bad_manifest"),
    ("segments-dict", _set(("segments",), {}), "bad_manifest"),
    ("segment-not-object", _set(SEG, [1, 2]), "bad_manifest"),
    ("segment-first-zero", _set(SEG + ("first",), 0), "bad_manifest"),
    ("segment-last-str", _set(SEG + ("last",), "5"), "bad_manifest"),
    ("segment-last-before-first", _set(SEG + ("last",), lambda v: 0), "bad_manifest"),
    ("segment-sealed-int", _set(SEG + ("sealed",), 1), "bad_manifest"),
    ("segment-version-unknown", _set(SEG + ("version",), 99), "bad_manifest"),
    ("segment-gap", _gap, "bad_manifest"),
    ("segment-unsealed-not-newest", _unsealed_in_the_middle, "bad_manifest"),
    ("segment-no-parts", _set(SEG + ("parts",), []), "bad_manifest"),
    ("segment-bytes-not-parts", _parts_do_not_add_up, "bad_manifest"),
    ("part-not-object", _set(TAIL + ("parts", 0), "x"), "bad_manifest"),
    ("part-offset-overlaps", _parts_overlap, "bad_manifest"),
    ("part-offset-gap", _parts_gap, "bad_manifest"),
    ("part-first-not-at-zero", _set(TAIL + ("parts", 0, "offset"), 32), "bad_manifest"),
    ("part-bytes-zero", _set(TAIL + ("parts", 1, "bytes"), 0), "bad_manifest"),
    ("part-first-below-header", _set(TAIL + ("parts", 0, "bytes"), 16), "bad_manifest"),
    ("part-crc-too-big", _set(TAIL + ("parts", 0, "crc32c"), 1 << 32), "bad_manifest"),
    ("part-crc-negative", _set(TAIL + ("parts", 0, "crc32c"), -1), "bad_manifest"),
    ("part-object-bytes-small", _set(TAIL + ("parts", 0, "object_bytes"), lambda v: v - 21),
     "bad_manifest"),
    ("part-lsn-goes-down", _part_lsns_go_down, "bad_manifest"),
    ("part-t-first-str", _set(TAIL + ("parts", 0, "t_first"), "now"), "bad_manifest"),
    ("part-whole-in-unsealed", _set(TAIL + ("parts", 0, "whole"), True), "bad_manifest"),
    ("part-whole-not-only", _two_whole_parts, "bad_manifest"),
    ("part-whole-missing", _set(SEG + ("parts", 0, "whole"), _DELETE), "bad_manifest"),
    ("snapshots-not-list", _set(("snapshots",), None), "bad_manifest"),
    ("snapshot-lsn-zero", _set(SNAP + ("lsn",), 0), "bad_manifest"),
    ("snapshot-past-the-log", _set(SNAP + ("lsn",), lambda v: 1 << 40), "bad_manifest"),
    ("snapshot-twice", _snapshot_twice, "bad_manifest"),
    ("snapshot-no-time", _set(SNAP + ("time_ms",), _DELETE), "bad_manifest"),
    ("snapshot-no-files", _set(SNAP + ("files",), []), "bad_manifest"),
    ("snapshot-file-twice", _file_twice, "bad_manifest"),
    ("snapshot-no-meta", _no_meta, "bad_manifest"),
    ("snapshot-file-dotdot", _file_name("../../../etc/passwd"), "bad_manifest"),
    ("snapshot-file-dotdot-inside", _file_name("a..b"), "bad_manifest"),
    ("snapshot-file-parent", _file_name(".."), "bad_manifest"),
    ("snapshot-file-absolute", _file_name("/etc/passwd"), "bad_manifest"),
    ("snapshot-file-subdir", _file_name("x/META"), "bad_manifest"),
    ("snapshot-file-tmp", _file_name("0.arrow.tmp"), "bad_manifest"),
    ("snapshot-file-empty-name", _file_name(""), "bad_manifest"),
    ("snapshot-file-bytes-negative", _set(SNAP + ("files", 0, "bytes"), -1), "bad_manifest"),
    ("snapshot-file-crc-str", _set(SNAP + ("files", 0, "crc32c"), "0"), "bad_manifest"),
    ("versions-not-int", _set(("versions",), {"t": "2"}), "bad_manifest"),
    ("versions-list", _set(("versions",), [1]), "bad_manifest"),
    ("ledger-dict", _set(("ledger",), {}), "bad_manifest"),
]


@pytest.mark.parametrize("name, change, reason", FIELD_CASES, ids=[c[0] for c in FIELD_CASES])
def test_a_wrong_manifest_field_is_refused(arch, tmp_path, name, change, reason):
    uri, objs = arch
    man = objs.raw_manifest()
    change(man)
    objs.write_manifest(man)
    fails(uri, tmp_path, reason, A.MANIFEST_OBJECT)
    assert not os.path.exists(str(tmp_path / "dest") + STAGING_SUFFIX)
    # Nothing outside the destination was written either.
    assert sorted(os.listdir(tmp_path)) == ["arch"]


# ------------------------------------------------------------ segments
def _first_frame(seg_bytes: bytes, version: int) -> int:
    """The offset of the second frame of a segment (past its first)."""
    c = _core()
    from rehydrate import _format as F

    h = c.parse_frame_header(seg_bytes, F.SEGMENT_HEADER_BYTES, version)
    return F.SEGMENT_HEADER_BYTES + F.frame_header_bytes(version) + h.stored_len


def _segment_after_snapshot(man):
    """A sealed segment whose records go past the snapshot (a restore reads it)."""
    snap = man["snapshots"][0]["lsn"]
    return next(s for s in man["segments"] if s["sealed"] and s["first"] > snap)


def test_a_flipped_byte_in_a_segment_object_is_bad_object(arch, tmp_path):
    uri, objs = arch
    seg = _segment_after_snapshot(objs.manifest())
    name = A.part_name(seg, seg["parts"][0])
    data = objs.read(name)
    objs.write(name, flip(data, _first_frame(data, seg["version"]) + 40))
    e = fails(uri, tmp_path, "bad_object", name)
    assert e.offset == 0  # (the checksum is the whole object's)


@pytest.mark.parametrize("where", ["sealed", "part"])
def test_a_frame_that_fails_its_checks_is_corrupt_with_object_offset_and_lsn(arch, tmp_path,
                                                                           where):
    """The bytes changed and the manifest's CRC32C changed with them (as a
    writer with a bug would have listed them): the frame's own checks
    catch it, naming the object that holds the frame, the offset in that
    object, and the frame's first LSN."""
    uri, objs = arch
    man = objs.raw_manifest()
    if where == "sealed":
        seg = _segment_after_snapshot(man)
        part = seg["parts"][0]
        start_lsn = seg["first"]
        seg_bytes = objs.read(A.part_name(seg, part))[:part["bytes"]]
        at = _first_frame(seg_bytes, seg["version"])
    else:
        seg = man["segments"][-1]
        part = seg["parts"][1]  # (a part after the first: offsets start at part["offset"])
        start_lsn = seg["parts"][0]["last"] + 1
        at = 0
    name = A.part_name(seg, part)
    data = objs.read(name)
    lsn = start_lsn if where == "part" else None
    if where == "sealed":
        from rehydrate import _format as F

        h = _core().parse_frame_header(data, F.SEGMENT_HEADER_BYTES, seg["version"])
        lsn = h.first_lsn + h.count
    bad = flip(data, at + 40)
    part["crc32c"] = _core().crc32c(bad[:part["bytes"]])
    objs.write(name, bad)
    objs.write_manifest(man)
    e = fails(uri, tmp_path, "corrupt", name)
    assert e.offset == at, e
    assert e.lsn == lsn, e


def test_a_cut_segment_object_is_bad_object(arch, tmp_path):
    uri, objs = arch
    seg = _segment_after_snapshot(objs.manifest())
    name = A.part_name(seg, seg["parts"][0])
    objs.write(name, objs.read(name)[:seg["bytes"] // 2])
    fails(uri, tmp_path, "bad_object", name)


@pytest.mark.parametrize("which", ["sealed", "part"])
def test_a_deleted_segment_object_is_missing_object(arch, tmp_path, which):
    uri, objs = arch
    man = objs.manifest()
    seg = _segment_after_snapshot(man) if which == "sealed" else man["segments"][-1]
    name = A.part_name(seg, seg["parts"][-1])
    objs.delete(name)
    fails(uri, tmp_path, "missing_object", name)


# ------------------------------------------------------------ snapshots
SNAPSHOT_FILES = ["META", "0.arrow", "0.kvimg"]


@pytest.mark.parametrize("file", SNAPSHOT_FILES)
def test_a_flipped_snapshot_file_is_bad_object(arch, tmp_path, file):
    uri, objs = arch
    snap = objs.manifest()["snapshots"][0]
    assert file in [f["name"] for f in snap["files"]]
    name = A.snapshot_object(snap["lsn"], file)
    data = objs.read(name)
    objs.write(name, flip(data, len(data) // 2))
    fails(uri, tmp_path, "bad_object", name)


@pytest.mark.parametrize("file", SNAPSHOT_FILES)
def test_a_snapshot_file_that_fails_its_checks_is_corrupt(arch, tmp_path, file):
    uri, objs = arch
    man = objs.raw_manifest()
    snap = man["snapshots"][0]
    entry = next(f for f in snap["files"] if f["name"] == file)
    name = A.snapshot_object(snap["lsn"], file)
    bad = flip(objs.read(name), entry["bytes"] // 2)
    entry["crc32c"] = _core().crc32c(bad)
    objs.write(name, bad)
    objs.write_manifest(man)
    e = fails(uri, tmp_path, "corrupt")
    assert e.object is not None and e.object.startswith(f"snapshots/{snap['lsn']:020d}/"), e
    assert e.lsn == snap["lsn"]


def test_a_deleted_snapshot_file_is_missing_object(arch, tmp_path):
    uri, objs = arch
    snap = objs.manifest()["snapshots"][0]
    name = A.snapshot_object(snap["lsn"], "0.arrow")
    objs.delete(name)
    fails(uri, tmp_path, "missing_object", name)


# ------------------------------------------------------------ time index
@pytest.mark.parametrize("at", ["mark", "count", "crc", "magic"])
def test_a_damaged_time_index_is_bad_object_for_a_restore_that_reads_it(built, arch, tmp_path,
                                                                       at):
    uri, objs = arch
    seg = objs.manifest()["segments"][-1]
    part = seg["parts"][-1]
    name = A.part_name(seg, part)
    data = objs.read(name)
    footer = len(data) - A.TRAILER_FOOTER.size
    pos = {"mark": part["bytes"] + 3, "count": footer, "crc": footer + 12,
           "magic": len(data) - 1}[at]
    objs.write(name, flip(data, pos))
    e = fails(uri, tmp_path, "bad_object", name, to_time=built.t_mid)
    assert e.offset == part["bytes"]
    # A restore that does not read the time index is not affected by it.
    result, got = restored(uri, tmp_path / "whole")
    assert result["lsn"] == built.lsn and got == built.state


# ------------------------------------------------------ gone, not empty
@pytest.mark.parametrize("target", [{}, {"to_lsn": "snapshot"}, {"to_time": "t_mid"}],
                         ids=["end", "to-lsn", "to-time"])
def test_a_bucket_emptied_behind_the_store_is_missing_object(built, arch, tmp_path, target):
    uri, objs = arch
    man = objs.manifest()
    for name in objs.names():
        if name != A.MANIFEST_OBJECT:
            objs.delete(name)
    kw = {k: man["snapshots"][0]["lsn"] if v == "snapshot" else built.t_mid
          for k, v in target.items()}
    e = fails(uri, tmp_path, "missing_object", **kw)
    assert e.object in listed(man), e
    assert "missing" in str(e)


def test_restore_into_a_non_empty_directory_is_not_empty(arch, tmp_path):
    uri, _ = arch
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "mine").write_text("keep me")
    with pytest.raises(ArchiveError) as ei:
        rh.restore(uri, str(dest))
    assert ei.value.reason == "not_empty"
    assert os.listdir(dest) == ["mine"] and (dest / "mine").read_text() == "keep me"
    assert not os.path.exists(str(dest) + STAGING_SUFFIX)
    # A file in the way, and another store's staging, are refused too.
    (tmp_path / "afile").write_text("x")
    with pytest.raises(ArchiveError) as ei:
        rh.restore(uri, str(tmp_path / "afile"))
    assert ei.value.reason == "not_empty"
    other = tmp_path / ("other" + STAGING_SUFFIX)
    other.mkdir()
    (other / "RESTORING").write_text('{"store_id": "' + "0" * 32 + '"}')
    with pytest.raises(ArchiveError) as ei:
        rh.restore(uri, str(tmp_path / "other"))
    assert ei.value.reason == "not_empty"
    assert not os.path.exists(tmp_path / "other")
    # An empty directory is fine.
    (tmp_path / "empty").mkdir()
    result, _ = restored(uri, tmp_path / "empty")
    assert result["path"] == str(tmp_path / "empty")


def test_no_archive_at_the_prefix(tmp_path):
    e = fails("file://" + str(tmp_path / "nothing-here"), tmp_path, "no_archive",
              A.MANIFEST_OBJECT)
    assert e.uri.endswith("nothing-here")


# ------------------------------------------------------------------ S3
@pytest.fixture
def s3_arch(built, s3_server, s3_bucket):
    """The built archive copied to a new bucket: (URI, Objects)."""
    fs = s3_server.filesystem()
    local = Objects(pafs.LocalFileSystem(), built.root)
    objs = Objects(fs, f"{s3_bucket}/arch")
    for name in local.names():
        objs.write(name, local.read(name))
    return s3_server.uri(s3_bucket, "arch"), objs


def test_s3_damage_is_detected(built, s3_arch, tmp_path):
    uri, objs = s3_arch
    result, got = restored(uri, tmp_path / "ok")
    assert result["lsn"] == built.lsn and got == built.state
    staging = str(tmp_path / "dest") + STAGING_SUFFIX

    def fails_afresh(reason, obj=None):
        fails(uri, tmp_path, reason, obj)
        shutil.rmtree(staging, ignore_errors=True)  # (a next try would reuse its files)

    man = objs.manifest()
    seg = _segment_after_snapshot(man)
    name = A.part_name(seg, seg["parts"][0])
    good = objs.read(name)
    objs.write(name, flip(good, len(good) // 3))
    fails_afresh("bad_object", name)
    objs.delete(name)
    fails_afresh("missing_object", name)
    objs.write(name, good)
    snap = A.snapshot_object(man["snapshots"][0]["lsn"], "META")
    meta = objs.read(snap)
    objs.write(snap, meta[:-1])
    fails_afresh("bad_object", snap)
    objs.write(snap, meta)
    raw = objs.read(A.MANIFEST_OBJECT)
    objs.write(A.MANIFEST_OBJECT, flip(raw, 20))
    fails_afresh("bad_manifest", A.MANIFEST_OBJECT)
    objs.write(A.MANIFEST_OBJECT, raw)
    for name in objs.names():
        if name != A.MANIFEST_OBJECT:
            objs.delete(name)
    fails_afresh("missing_object")
    objs.delete(A.MANIFEST_OBJECT)
    fails_afresh("no_archive", A.MANIFEST_OBJECT)


def test_a_retry_reuses_only_the_snapshot_files_that_still_check(built, arch, tmp_path):
    """A failed restore leaves ``<path>.restoring``; the next try takes the
    snapshot files there that match the manifest's CRC32C, and fetches
    (and checks) the rest again."""
    uri, objs = arch
    seg = _segment_after_snapshot(objs.manifest())
    name = A.part_name(seg, seg["parts"][0])
    good = objs.read(name)
    objs.delete(name)
    fails(uri, tmp_path, "missing_object", name)
    staging = tmp_path / ("dest" + STAGING_SUFFIX)
    snap_dir = next((staging / "snapshots").iterdir())
    (snap_dir / "0.arrow").write_bytes(b"damaged in staging")
    objs.write(name, good)
    result, got = restored(uri, tmp_path / "dest")
    assert result["lsn"] == built.lsn and got == built.state
    assert not staging.exists()


# ----------------------------------------------------------------- units
@settings(max_examples=100, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(a=st.binary(max_size=300), b=st.binary(max_size=300), c=st.binary(max_size=40))
def test_crc32c_combine_agrees_with_the_crc32c_package(a, b, c):
    ca, cb, cc = crc32c_pkg.crc32c(a), crc32c_pkg.crc32c(b), crc32c_pkg.crc32c(c)
    assert crc32c_combine(ca, cb, len(b)) == crc32c_pkg.crc32c(a + b)
    assert crc32c_combine(crc32c_combine(ca, cb, len(b)), cc, len(c)) == \
        crc32c_pkg.crc32c(a + b + c)
    assert crc32c_combine(ca, 0, 0) == ca


def test_crc32c_combine_of_large_lengths():
    a, b = b"x" * 1000, bytes(range(256)) * 40_000  # (past 8 MiB chunks' bit lengths)
    assert crc32c_combine(crc32c_pkg.crc32c(a), crc32c_pkg.crc32c(b), len(b)) == \
        crc32c_pkg.crc32c(a + b)


SECRET = st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789/+",
                 min_size=12, max_size=40)


@settings(max_examples=100, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(secret=SECRET, user=st.sampled_from(["AKIAEXAMPLE", "user", "u"]),
       param=st.sampled_from(["secret_key", "access_key", "session_token", "password",
                              "X-Amz-Signature", "credential", "Token", "SECRET"]))
def test_redact_never_prints_a_secret(secret, user, param):
    uri = (f"s3://{user}:{secret}@bucket/some/prefix?region=eu-west-1&{param}={secret}"
           f"&endpoint_override=127.0.0.1:9000")
    shown = redact(uri)
    assert secret not in shown
    assert shown.startswith("s3://***@bucket/some/prefix?")
    assert "region=eu-west-1" in shown and "endpoint_override=127.0.0.1:9000" in shown
    assert f"{param}=***" in shown
    plain = f"gs://bucket/p?{param}={secret}"
    assert secret not in redact(plain) and redact(plain).startswith("gs://bucket/p?")


def test_redact_keeps_a_uri_without_secrets_and_handles_bad_ones():
    uri = "s3://bucket/p?region=us-east-1&scheme=http&endpoint_override=127.0.0.1:9000"
    assert redact(uri) == uri
    assert redact("file:///var/archive") == "file:///var/archive"
    assert redact("http://[::1") == "<bad uri>"


def test_a_secret_in_the_uri_is_not_in_errors(tmp_path):
    secret = "s3cr3t-VALUE-never-shown"
    uri = f"s3://key:{secret}@bucket/p?region=us-east-1&secret_key={secret}"
    with pytest.raises(rh.ConfigError) as ei:
        Store.open(str(tmp_path / "state"), archive=uri)
    assert secret not in str(ei.value)
    with pytest.raises(rh.RehydrateError) as ei:
        rh.restore(uri, str(tmp_path / "dest"))
    assert secret not in str(ei.value)
