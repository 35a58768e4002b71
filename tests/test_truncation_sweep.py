"""T3, truncation sweep (docs/reliability.md): a file cut at every byte.

The log, as a crash leaves it (no clean close recorded): the newest segment
is cut at every offset within its last three frames (what a crash mid-write
leaves, and more: a cut on a frame boundary is a clean, shorter log). A cut
removes acknowledged frames on purpose, so the oracle's acknowledged bound
is the last frame wholly before the cut.
strict gives TornTailError or, on a boundary, that exact prefix;
tolerate-tail gives the prefix; ``repair`` then leaves a log that opens
under strict and takes 10 more records, exactly.

A cleanly closed log cut by 1..64 bytes from its end is not what a crash
leaves (a clean close leaves no torn tail): it is damage, to be detected,
never opened as a shorter log; each sync mode, its last frame compressed.

Snapshots and the MANIFEST: each file cut at every byte (a sample of
offsets at the CI tier). A cut snapshot is never used: the open falls back,
losslessly, to the older snapshot or to the whole log (strict refuses). A
cut MANIFEST is CorruptionError in every mode.
"""

from __future__ import annotations

import os
import shutil

import pytest

from rehydrate import Store, manifest
from rehydrate import _format as F
from rehydrate.repair import repair
from rehydrate.snapshot import SNAPSHOTS_DIR, snapshot_name
from rehydrate.testing import apply_to_store, check_recovery
from rehydrate.testing.oracle import prefix_ends

from helpers import corrupt as C
from helpers import sweep
from helpers.tier import FULL, scale

# The full tier's sweeps run for minutes each (every byte of every snapshot
# file: 11 minutes on 2 cores): past the suite's 300 s default.
pytestmark = [pytest.mark.reliability, pytest.mark.timeout(scale(300, 3600))]

MODES = ("strict", "tolerate-tail", "point-in-time", "skip-corrupted")


@pytest.fixture
def log_store(core, tmp_path_factory):
    # 62 ops: two segments, the newest ending in an LZ4 frame, a batch, a put.
    s = sweep.cached(core, tmp_path_factory, "log", 62)
    last3 = s.frames_in(s.segments()[-1])[-3:]
    assert len(s.segments()) == 2 and [(f.count, f.codec) for f in last3] == \
        [(1, F.CODEC_LZ4), (2, F.CODEC_NONE), (1, F.CODEC_NONE)]
    return s


# The newest snapshot is cut. "older-snapshot": two snapshots and a trimmed
# log (only the older snapshot can make the state); "full-log": one, the log whole.
SNAPSHOT_STORES = {
    "older-snapshot": dict(n_ops=200, segment_bytes=4096, checkpoint_after=(110, 180)),
    "full-log": dict(n_ops=62, segment_bytes=1 << 20, checkpoint_after=(40,)),
}


@pytest.fixture(params=sorted(SNAPSHOT_STORES))
def snapshot_store(request, core, tmp_path_factory):
    s = sweep.cached(core, tmp_path_factory, request.param, **SNAPSHOT_STORES[request.param])
    log_start = manifest.read(s.path).get("log_start", 1)
    if request.param == "older-snapshot":
        assert len(s.snapshots) == 2 and s.snapshots[0] + 1 >= log_start > 1
    else:
        assert len(s.snapshots) == 1 and log_start == 1
    return s


def _ops_through(ops, lsn: int) -> list:
    """The ops whose records are LSNs 1..lsn (``lsn`` ends an op)."""
    ends = prefix_ends(ops)
    n = sum(1 for end in ends if end <= lsn)
    assert (ends[n - 1] if n else 0) == lsn
    return ops[:n]


def _cuts(size: int) -> list:
    """Every offset in [0, size) at the full tier; at the CI tier the first
    40 bytes (every header's fields), the last 8, and 24 spread between."""
    if FULL:
        return list(range(size))
    return sorted(set(range(min(40, size))) | set(range(0, size, max(1, size // 24)))
                  | set(range(max(0, size - 8), size)))


def test_the_newest_segment_cut_at_every_byte_of_its_last_three_frames(log_store, tmp_path):
    s = log_store
    newest = s.segments()[-1]
    last3 = s.frames_in(newest)[-3:]
    boundaries = {f.offset for f in last3}

    def judge(cut):
        d = s.copy(tmp_path / f"cut{cut}")  # (left behind if the case fails)
        C.as_crashed(d)  # the cut is a crash's (a cleanly closed log: the test below)
        C.truncate(os.path.join(d, os.path.relpath(newest, s.path)), cut)
        acked = sweep.acked_before(s, newest, cut)
        before = C.tree_hashes(d)
        got = check_recovery(sweep.opener(d, "strict"), s.ops, acked, allow_error=True)
        if cut in boundaries:
            assert got == {"outcome": "recovered", "lsn": acked}, got
        else:
            assert got["outcome"] == "error" and got["error"].startswith("TornTailError"), got
            assert C.tree_hashes(d) == before, "a refused open changed bytes"
        tolerated = shutil.copytree(d, tmp_path / f"tolerated{cut}")
        got = check_recovery(sweep.opener(tolerated, "tolerate-tail"), s.ops, acked)
        assert got["lsn"] == acked, got
        # repair (the cut directory as it was), then 10 more records: exactly +10.
        report = repair(d)
        assert report.changed == (cut not in boundaries) and report.last_lsn == acked
        more = _ops_through(s.ops, acked) + [("put", "after", i, [cut, i]) for i in range(10)]
        with Store.open(d, recovery="strict", sync="none") as store:
            assert store.recovery_report.problems == []
            for op in more[-10:]:
                apply_to_store(store, op)
        got = check_recovery(sweep.opener(d, "strict"), more, acked + 10)
        assert got["lsn"] == acked + 10, got
        shutil.rmtree(d)
        shutil.rmtree(tolerated)
        return "on a frame boundary" if cut in boundaries else "torn (strict TornTailError)"

    sweep.run_cases(f"T3 newest segment cut in its last {len(last3)} frames",
                    range(last3[0].offset, last3[-1].end), judge)


CLOSED_CUTS = range(1, 65)


@pytest.mark.parametrize("shape", ["last", "only"])
@pytest.mark.parametrize("sync", sweep.SYNC_MODES)
def test_a_cleanly_closed_log_cut_by_1_to_64_bytes_is_detected_never_shorter(
        core, tmp_path_factory, tmp_path, sync, shape):
    s = sweep.compressed_tail(core, tmp_path_factory, sync, shape)
    d = s.copy(tmp_path / "work")
    seg = s.segments()[-1]
    f = sweep.InPlace(os.path.join(d, os.path.relpath(seg, s.path)))
    assert f.size - CLOSED_CUTS[-1] > F.SEGMENT_HEADER_BYTES  # every cut leaves a header

    def judge(cut):
        C.truncate(f.path, f.size - cut)
        try:
            return sweep.judge_log_damage(s, d, seg, f.size - cut)
        finally:
            f.patch(0, f.base)

    sweep.run_cases(f"T3 closed log ({shape} frame LZ4, sync={sync}) cut by 1..64 bytes",
                    CLOSED_CUTS, judge)


def test_each_file_of_the_newest_snapshot_cut_at_every_byte(snapshot_store, tmp_path):
    s = snapshot_store
    newest = s.snapshots[-1]
    snap = os.path.join(SNAPSHOTS_DIR, snapshot_name(newest))
    files = sorted(os.path.join(snap, n) for n in os.listdir(os.path.join(s.path, snap)))

    def judge(case):
        rel, cut = case
        d = s.copy(tmp_path / f"{os.path.basename(rel)}@{cut}")
        C.truncate(os.path.join(d, rel), cut)
        # strict refuses a snapshot that fails a check...
        got = check_recovery(sweep.opener(d, "strict"), s.ops, s.written, allow_error=True)
        assert got["outcome"] == "error" and got["reason"] == "bad_snapshot", got
        # ...the default open sets it aside and loses nothing.
        opened = []
        check_recovery(sweep.opener(d, "tolerate-tail", opened), s.ops, s.written)
        problems = [(p.kind, p.lsn) for p in opened[0].recovery_report.problems]
        assert problems == [("bad_snapshot", newest)], problems
        shutil.rmtree(d)
        return "refused by strict, recovered losslessly"

    cases = [(rel, cut) for rel in files
             for cut in _cuts(os.path.getsize(os.path.join(s.path, rel)))]
    fallback = "the older snapshot" if len(s.snapshots) > 1 else "the whole log"
    sweep.run_cases(f"T3 snapshot files cut ({', '.join(os.path.basename(f) for f in files)}; "
                    f"fallback: {fallback})", cases, judge)


def test_the_manifest_cut_at_every_byte_is_corruption_in_every_mode(log_store, tmp_path):
    s = log_store
    d = s.copy(tmp_path / "m")
    f = sweep.InPlace(os.path.join(d, "MANIFEST"))

    def judge(cut):
        C.truncate(f.path, cut)
        try:
            for mode in MODES:
                got = check_recovery(sweep.opener(d, mode), s.ops, s.written, allow_error=True)
                assert got["outcome"] == "error" and got["reason"] == "bad_manifest", (mode, got)
                assert got["error"].startswith("CorruptionError"), got
        finally:
            f.patch(0, f.base)
        return "CorruptionError in every mode"

    sweep.run_cases("T3 MANIFEST cut (x4 modes)", range(f.size), judge)
