"""T4, bit flips (docs/reliability.md): damage that no crash makes.

Every flip, zeroed sector or random corruption must be detected (verify
reports damage, or a typed error) or lose nothing; never a silent wrong
state. A log flip is judged by ``verify`` (the same walk an open does), and
by an open only when verify finds no damage: every store here was closed
cleanly, so the open must give the whole log. A torn tail reported there
is no excuse: a clean close leaves none, and dropping acknowledged records
under that name is a loss (helpers/sweep.py). The last frame of a cleanly
closed log is swept on its own, compressed (LZ4) and in each sync mode,
alone in the log or after others. A snapshot or MANIFEST flip is judged by opens: strict must
refuse it or give the exact state, and the default open must set a refused
snapshot aside and lose nothing.

Counts are the full tier's (``make reliability``); the CI tier keeps every
flip of the first 4 KiB of a segment on the native core and samples the
rest. Each test prints its counts: cases, detected, recovered whole, failures.
"""

from __future__ import annotations

import os
import random
import shutil

import pytest

from rehydrate import _format as F
from rehydrate.snapshot import SNAPSHOTS_DIR, snapshot_name
from rehydrate.testing import check_recovery

from helpers import corrupt as C
from helpers import sweep
from helpers.tier import scale

# The full tier's sweeps run for minutes each (every byte of every snapshot
# file: 11 minutes on 2 cores): past the suite's 300 s default.
pytestmark = [pytest.mark.reliability, pytest.mark.timeout(scale(300, 3600))]

MODES = ("strict", "tolerate-tail", "point-in-time", "skip-corrupted")
META_HEADER_BYTES = 16  # a snapshot META's magic, length, CRC32C (docs/FORMAT.md)
KVIMG_HEADER_BYTES = 4096
KVIMG_FIELD_BYTES = 36  # magic, version, slot_bits, count, arena_len, slots; then zeros


@pytest.fixture
def one_segment(core, tmp_path_factory):
    # 52 ops in one segment of 4,133 bytes: its first 4 KiB end inside the
    # last frame, so flips there meet the torn-tail rule too.
    s = sweep.cached(core, tmp_path_factory, "one-segment", 52, segment_bytes=1 << 20)
    assert len(s.segments()) == 1 and s.frames[-1].offset < 4096 < s.frames[-1].end
    return s


@pytest.fixture
def log_store(core, tmp_path_factory):
    # The truncation sweep's store: two segments (4,046 and 719 bytes), 59 frames.
    return sweep.cached(core, tmp_path_factory, "log", 62)


@pytest.fixture
def sector_store(core, tmp_path_factory):
    # 64 KiB segments: a full one (128 sectors), then the newest.
    s = sweep.cached(core, tmp_path_factory, "sectors", 1000, segment_bytes=1 << 16)
    assert len(s.segments()) == 2
    return s


@pytest.fixture
def snapshot_store(core, tmp_path_factory):
    # One snapshot, the log whole: a refused snapshot leaves the log to replay.
    return sweep.cached(core, tmp_path_factory, "full-log", 62, segment_bytes=1 << 20,
                        checkpoint_after=(40,))


def _count(core, native_ci: int, pure_ci: int, full: int) -> int:
    """Cases for this tier and core (a pure-twin case costs about twice as much)."""
    return scale(native_ci if core.IMPLEMENTATION == "native" else pure_ci, full)


def _sample(cases: list, n: int, seed: int) -> list:
    return cases if n >= len(cases) else sorted(random.Random(seed).sample(cases, n))


def _work_copy(s: sweep.Swept, tmp_path):
    """A copy of ``s`` to damage in place: (its path, {segment of s: InPlace})."""
    d = s.copy(tmp_path / "work")
    return d, {seg: sweep.InPlace(os.path.join(d, os.path.relpath(seg, s.path)))
               for seg in s.segments()}


def _log_judge(s: sweep.Swept, d: str, files: dict):
    """Cases (segment, offset, bytes): write them there, judge, put back."""
    def judge(case):
        seg, offset, data = case
        files[seg].patch(offset, data)
        try:
            return sweep.judge_log_damage(s, d, seg, offset)
        finally:
            files[seg].put_back(offset, len(data))
    return judge


def _flips(files: dict, seg, start: int, end: int) -> list:
    base = files[seg].base
    return [(seg, o, bytes([base[o] ^ (1 << b)])) for o in range(start, end) for b in range(8)]


# ------------------------------------------------------------------ the log
def test_every_bit_of_the_first_4_kib_of_a_segment(one_segment, core, tmp_path):
    s = one_segment
    d, files = _work_copy(s, tmp_path)
    flips = _flips(files, s.segments()[0], 0, 4096)
    counts = sweep.run_cases("T4 first 4 KiB of a segment, every bit",
                             _sample(flips, _count(core, len(flips), 8192, len(flips)), 1),
                             _log_judge(s, d, files))
    if core.IMPLEMENTATION == "native":
        assert sum(counts.values()) == 32768  # every one, at the CI tier too


def test_every_bit_of_every_header(log_store, core, tmp_path):
    s = log_store
    d, files = _work_copy(s, tmp_path)
    newest = s.segments()[-1]
    flips = [c for seg in s.segments() for c in _flips(files, seg, 0, F.SEGMENT_HEADER_BYTES)]
    flips += [c for fr in s.frames
              for c in _flips(files, fr.segment, fr.offset, fr.offset + F.FRAME_HEADER_BYTES)]
    # The CI tier keeps the segment headers and the newest segment's frame
    # headers (where a tail may be torn), and samples the rest.
    keep = [c for c in flips if c[0] == newest or c[1] < F.SEGMENT_HEADER_BYTES]
    rest = [c for c in flips if not (c[0] == newest or c[1] < F.SEGMENT_HEADER_BYTES)]
    n = _count(core, len(keep) + 2048, 2048, len(flips))
    cases = keep + _sample(rest, n - len(keep), 2) if n >= len(keep) else _sample(flips, n, 2)
    sweep.run_cases(f"T4 headers ({len(s.segments())} segment, {len(s.frames)} frame), "
                    "every bit", cases, _log_judge(s, d, files))


@pytest.mark.parametrize("shape", ["last", "only"])
@pytest.mark.parametrize("sync", sweep.SYNC_MODES)
def test_every_bit_of_the_header_of_a_compressed_last_frame_of_a_closed_log(
        core, tmp_path_factory, tmp_path, sync, shape):
    # The frame a torn tail would be, in a log that a clean close ended:
    # its stored_len, flipped longer, reaches past the end of the file.
    s = sweep.compressed_tail(core, tmp_path_factory, sync, shape)
    d, files = _work_copy(s, tmp_path)
    last = s.frames[-1]
    cases = _flips(files, last.segment, last.offset, last.offset + F.FRAME_HEADER_BYTES)
    assert len(cases) == 8 * F.FRAME_HEADER_BYTES
    sweep.run_cases(f"T4 header of the compressed {shape} frame of a closed log "
                    f"(sync={sync}), every bit", cases, _log_judge(s, d, files))


def test_a_zeroed_sector_at_every_sector_of_every_segment(sector_store, tmp_path):
    s = sector_store
    d, files = _work_copy(s, tmp_path)
    cases = [(seg, o, bytes(min(C.SECTOR, f.size - o)))
             for seg, f in files.items() for o in range(0, f.size, C.SECTOR)]
    sweep.run_cases("T4 zeroed 512-byte sectors", cases, _log_judge(s, d, files))


def test_random_one_and_two_byte_corruptions(log_store, core, tmp_path):
    s = log_store
    d, files = _work_copy(s, tmp_path)
    segs = list(files)
    rng = random.Random(4)
    cases = []
    for _ in range(_count(core, 2000, 1000, 10_000)):
        seg = rng.choices(segs, weights=[files[p].size for p in segs])[0]
        base = files[seg].base
        pos = rng.randrange(len(base))
        old = base[pos:pos + rng.choice((1, 2))]
        cases.append((seg, pos, bytes(b ^ rng.randrange(1, 256) for b in old)))
    sweep.run_cases("T4 random 1-2 byte corruptions (seeded)", cases, _log_judge(s, d, files))


# -------------------------------------------------- snapshots, the MANIFEST
def _snapshot_judge(s: sweep.Swept, d: str, f: sweep.InPlace, tmp_path):
    """strict refuses (bad_snapshot) or gives the exact state; a refused
    snapshot is set aside by the default open, which loses nothing."""
    def judge(case):
        offset, bit = case
        f.flip(offset, bit)
        try:
            got = check_recovery(sweep.opener(d, "strict"), s.ops, s.written, allow_error=True)
            if got["outcome"] == "recovered":
                return "exact-prefix"
            assert got["reason"] == "bad_snapshot", got
            fallback = shutil.copytree(d, tmp_path / "fallback")
            try:
                check_recovery(sweep.opener(fallback, "tolerate-tail"), s.ops, s.written)
            finally:
                shutil.rmtree(fallback)
            return "detected"
        finally:
            f.put_back(offset, 1)
    return judge


def _snapshot_file(s: sweep.Swept, d: str, name: str) -> str:
    return os.path.join(d, SNAPSHOTS_DIR, snapshot_name(s.snapshots[-1]), name)


def test_every_bit_of_the_snapshot_meta_header(snapshot_store, tmp_path):
    s = snapshot_store
    d = s.copy(tmp_path / "work")
    f = sweep.InPlace(_snapshot_file(s, d, "META"))
    cases = [(o, b) for o in range(META_HEADER_BYTES) for b in range(8)]
    sweep.run_cases("T4 snapshot META header, every bit", cases,
                    _snapshot_judge(s, d, f, tmp_path))


def test_every_bit_of_the_kvimg_header(snapshot_store, core, tmp_path):
    if core.IMPLEMENTATION == "pure":
        pytest.skip("the pure twin writes no image")
    s = snapshot_store
    d = s.copy(tmp_path / "work")
    f = sweep.InPlace(_snapshot_file(s, d, "0.kvimg"))
    flips = [(o, b) for o in range(KVIMG_HEADER_BYTES) for b in range(8)]
    # The CI tier: every bit of the fields, a sample of the zeros after them.
    fields, zeros = flips[:KVIMG_FIELD_BYTES * 8], flips[KVIMG_FIELD_BYTES * 8:]
    n = scale(512, len(flips))
    cases = flips if n >= len(flips) else fields + _sample(zeros, n - len(fields), 3)
    sweep.run_cases("T4 .kvimg header, every bit", cases, _snapshot_judge(s, d, f, tmp_path))


def test_every_bit_of_the_manifest_header(snapshot_store, tmp_path):
    s = snapshot_store
    d = s.copy(tmp_path / "work")
    f = sweep.InPlace(os.path.join(d, "MANIFEST"))

    def judge(case):
        offset, bit = case
        f.flip(offset, bit)
        try:
            for mode in MODES:
                got = check_recovery(sweep.opener(d, mode), s.ops, s.written, allow_error=True)
                assert got["outcome"] == "error" and got["reason"] == "bad_manifest", (mode, got)
            return "detected"
        finally:
            f.put_back(offset, 1)

    sweep.run_cases("T4 MANIFEST header, every bit (x4 modes)",
                    [(o, b) for o in range(F.MANIFEST_HEADER_BYTES) for b in range(8)], judge)
