"""``verify --deep``: replay in memory, decode every key and value, digest.

Plain verify checks structure and checksums; a checksummed frame can still
hold a value msgpack refuses or an op that cannot apply (only a buggy or
hostile writer makes one). Deep verify finds both and never changes a byte.
"""

import json
import os
import shutil
import subprocess
import sys

import pytest

from rehydrate import Store, _backend, verify
from rehydrate import _format as F
from rehydrate.digest import format_digest

from helpers import corrupt as C


def _store(path):
    with Store.open(path, sync="always") as s:
        s.put("t", "a", [1, 2])
        s.put("t", "s", "text")
        s.incr("n", "c", 2)
        return s.lsn, s.digest()


def _append_frame(path, lsn, op, key, value_bytes):
    """Append one hand-made frame after LSN ``lsn``, as the (buggy) writer
    that made it leaves the log: without the clean-close record."""
    core = _backend.core()
    kb = core.encode_key(key)
    rec = (bytes((op,)) + core.encode_varint(0) + core.encode_varint(len(kb)) + kb
           + core.encode_varint(len(value_bytes)) + value_bytes)
    frame = core.encode_frame(lsn + 1, 1, [(0, F.KIND_KV, b"t")], rec)
    C.as_crashed(path)
    seg = C.segment_paths(path)[-1]
    with open(seg, "ab") as f:
        f.write(frame)


def test_deep_verify_gives_the_stores_digest(tmp_path, core_env):
    path = str(tmp_path / "s")
    _, digest = _store(path)
    report = verify(path, deep=True)
    assert report.ok and report.digest == format_digest(digest)
    assert set(report.table_digests) == {"t", "n"}
    out = subprocess.run([sys.executable, "-m", "rehydrate", "verify", path, "--deep", "--json"],
                         env=core_env, capture_output=True, text=True)
    assert out.returncode == 0 and json.loads(out.stdout)["digest"] == format_digest(digest)


def test_a_checksummed_value_msgpack_refuses_is_found_only_by_deep_verify(tmp_path):
    path = str(tmp_path / "s")
    lsn, _ = _store(path)
    _append_frame(path, lsn, F.OP_PUT, "bad", b"\xc1")  # 0xc1: never used by msgpack
    before = C.tree_hashes(path)
    assert verify(path).ok
    deep = verify(path, deep=True)
    assert not deep.ok
    assert [p.kind for p in deep.problems] == ["bad_value"]
    assert "'t'" in deep.problems[0].detail
    assert C.tree_hashes(path) == before


def test_an_op_that_cannot_apply_is_found_only_by_deep_verify(tmp_path):
    path = str(tmp_path / "s")
    lsn, _ = _store(path)
    _append_frame(path, lsn, F.OP_INCR, "s", b"\x01")  # incr on "text"
    assert verify(path).ok
    deep = verify(path, deep=True)
    assert not deep.ok and deep.digest is None
    assert [p.kind for p in deep.problems] == ["apply_error"]
    assert deep.problems[0].lsn == lsn + 1
    assert os.path.basename(deep.problems[0].path).endswith(".wal")
    # Under skip-corrupted the op is left out, and the digest is the state
    # such an open makes.
    skip = verify(path, deep=True, recovery="skip-corrupted")
    assert [p.kind for p in skip.problems] == ["apply_error"] and skip.digest is not None
    with Store.open(path, recovery="skip-corrupted") as s:
        assert format_digest(s.digest()) == skip.digest


def test_deep_verify_checks_each_snapshot_against_the_whole_log(tmp_path):
    from rehydrate.snapshot import SNAPSHOTS_DIR, snapshot_name

    path = str(tmp_path / "s")
    with Store.open(path) as s:
        for i in range(200):
            s.put("t", i, [i])
        first = s.checkpoint()["lsn"]
        for i in range(50):
            s.delete("t", i)
        second = s.checkpoint()["lsn"]
        s.put("t", "tail", 1)
    report = verify(path, deep=True)
    assert report.ok and report.problems == []
    # A snapshot that is self-consistent (checksums, digest) but holds the
    # wrong state: rebuilt from another store's snapshot at the same LSN.
    other = str(tmp_path / "other")
    with Store.open(other) as s:
        for i in range(first):
            s.put("t", i, "different")
        assert s.checkpoint()["lsn"] == first
    mine = os.path.join(path, SNAPSHOTS_DIR, snapshot_name(first))
    shutil.rmtree(mine)
    shutil.copytree(os.path.join(other, SNAPSHOTS_DIR, snapshot_name(first)), mine)
    report = verify(path, deep=True)
    assert [(p.kind, p.lsn) for p in report.problems] == [("snapshot_mismatch", first)]
    assert not report.ok
    C.flip_bit(os.path.join(path, SNAPSHOTS_DIR, snapshot_name(second), "META"), 20, 0)
    kinds = sorted((p.kind, p.lsn) for p in verify(path, deep=True).problems)
    assert kinds == sorted([("snapshot_mismatch", first), ("bad_snapshot", second)])


def test_deep_verify_checks_every_snapshot_file_by_its_checksum(store_dir, core):
    # A flipped bit near the end of the file a core loads from (the native
    # image, the twin's Arrow file) is reported as a bad snapshot.
    with Store.open(store_dir) as s:
        for i in range(50):
            s.put("t", i, "v" * 10)
        lsn = s.checkpoint()["lsn"]
    from rehydrate.snapshot import SNAPSHOTS_DIR, snapshot_name

    snap = os.path.join(store_dir, SNAPSHOTS_DIR, snapshot_name(lsn))
    target = os.path.join(snap, "0.kvimg" if core.IMPLEMENTATION == "native" else "0.arrow")
    if not os.path.exists(target):
        target = os.path.join(snap, "0.arrow")
    data = bytearray(open(target, "rb").read())
    data[-20] ^= 0x01
    with open(target, "wb") as f:
        f.write(data)
    kinds = [p.kind for p in verify(store_dir, deep=True).problems]
    assert "bad_snapshot" in kinds


def _many_segments(path) -> list:
    """A log of 10 segments of 256 KiB (verify reports progress after each);
    the segment paths."""
    with Store.open(path, sync="none", segment_bytes=1 << 18) as s:
        for start in range(0, 100_000, 10_000):
            with s.batch() as b:
                for i in range(start, start + 10_000):
                    b.put("t", i, f"value {i} " * 3)
    return C.segment_paths(path)



@pytest.mark.parametrize("deep", [False, True], ids=["plain", "deep"])
def test_verify_progress_is_called_monotone_and_ends_at_the_total(tmp_path, deep):
    path = str(tmp_path / "state")
    segments = _many_segments(path)
    assert len(segments) >= 5
    calls = []
    report = verify(path, deep=deep, progress=lambda done, total: calls.append((done, total)))
    assert report.ok and report.last_lsn == 100_000
    # One total throughout, the log's bytes; done only grows, and ends there.
    total = sum(os.path.getsize(p) for p in segments)
    assert {t for _, t in calls} == {total}, calls
    done = [d for d, _ in calls]
    assert done == sorted(done) and done[-1] == total, done
    # Called along the way, not only at the end: once a segment at least.
    assert len({d for d in done if d < total}) >= len(segments) - 1, done
