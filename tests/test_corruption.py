"""Damaged logs: what each recovery mode keeps, reports and quarantines.

A store of several 4 KiB segments is built once per core from a known op
sequence with ``sync="always"`` (one frame per write, a batch per frame), and
its frame map is read back by walking headers. Each case copies it, damages
bytes, and derives from the frame map which records must survive in each
mode. After every tolerated recovery, writing resumes: 10 more writes, a
reopen, and the state is exactly the survivors plus those 10.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import shutil
import subprocess
import sys
from typing import Callable, Optional

import pytest

from rehydrate import _backend

from rehydrate import (
    CorruptionError,
    NotAStoreError,
    Store,
    TornTailError,
    UnsupportedFormatError,
    _backend,
    verify,
)
from rehydrate import _format as F
from rehydrate.wal import encode_segment_header, segment_name

from helpers import corrupt as C
from helpers.model import Model, apply_to_store, canon_state, store_state

MODES = ("strict", "tolerate-tail", "point-in-time", "skip-corrupted")
TOLERANT = ("tolerate-tail", "point-in-time", "skip-corrupted")


# ------------------------------------------------------------ the base log
@dataclasses.dataclass
class Log:
    path: str
    records: list  # records[lsn - 1] = op tuple of that one record
    frames: list  # FrameInfo with paths relative to ``path``

    @property
    def last_lsn(self) -> int:
        return len(self.records)

    def segments(self) -> list:
        return sorted({f.segment for f in self.frames})

    def frames_in(self, segment) -> list:
        return [f for f in self.frames if f.segment == segment]

    def expected(self, keep) -> dict:
        m = Model()
        for lsn in sorted(keep):
            m.apply(self.records[lsn - 1])
        return canon_state(m.tables, drop_empty=True)


def _expand(op) -> list:
    return list(op[1]) if op[0] == "batch" else [op]


def _build(path: str, big_tail: bool) -> Log:
    rng = random.Random(7)
    records = []

    def do(s, op):
        lsn = apply_to_store(s, op)
        records.extend(_expand(op))
        assert lsn == len(records)

    with Store.open(path, sync="always", segment_bytes=4096) as s:
        do(s, ("put", "t", "k0", {"i": 0}))  # "t" is table id 0
        do(s, ("incr", "c", 0, 1))
        i = 0
        while True:
            i += 1
            r = rng.random()
            if r < 0.5:
                op = ("put", "t", f"k{rng.randrange(40)}", {"i": i, "s": "v" * rng.randrange(40)})
            elif r < 0.7:
                op = ("incr", "c", rng.randrange(8), rng.randrange(1, 9))
            elif r < 0.8:
                op = ("delete", "t", f"k{rng.randrange(40)}")
            else:
                op = ("batch", [("put", "t", f"b{i}-{j}", [i, j]) for j in range(3)])
            do(s, op)
            segs = C.segment_paths(path)
            if len(segs) >= 4 and len(C.frames_of(segs[-1])) >= 8:
                break
        # A compressed frame in the middle of the newest segment, then small ones.
        do(s, ("put", "t", "compressible", "z" * 3000))
        for j in range(3):
            do(s, ("put", "t", f"tail{j}", j))
        if big_tail:
            # A last frame large enough to hold whole 512-byte sectors.
            do(s, ("put", "t", "big", random.Random(8).randbytes(2500)))
    frames = [dataclasses.replace(f, segment=os.path.relpath(f.segment, path))
              for f in C.all_frames(path)]
    assert sum(f.count for f in frames) == len(records)
    return Log(path, records, frames)


_LOGS: dict = {}


@pytest.fixture
def log(core, tmp_path_factory):
    key = (core.IMPLEMENTATION, False)
    if key not in _LOGS:
        _LOGS[key] = _build(str(tmp_path_factory.mktemp("base") / "state"), big_tail=False)
    return _LOGS[key]


@pytest.fixture
def big_tail_log(core, tmp_path_factory):
    key = (core.IMPLEMENTATION, True)
    if key not in _LOGS:
        _LOGS[key] = _build(str(tmp_path_factory.mktemp("base") / "state"), big_tail=True)
    return _LOGS[key]


def _copy(src, dst) -> str:
    shutil.copytree(src, dst)
    return str(dst)


def _middle_frame(log: Log, segment, want_batch=False):
    frames = log.frames_in(segment)[1:-4]
    frames = [f for f in frames if f.codec == F.CODEC_NONE]
    if want_batch:
        batches = [f for f in frames if f.count > 1]
        if batches:
            return batches[len(batches) // 2]
    return frames[len(frames) // 2]


# ------------------------------------------------------------ the checker
@dataclasses.dataclass
class Expect:
    """What a damaged directory must do. ``kind``/``path``/``offset``/``lsn``:
    the problem every mode must name. ``pit_keep``: LSNs that survive
    point-in-time (and tolerate-tail, for a torn tail); ``skip_keep``: those
    surviving skip-corrupted; the ``*_lsn`` are ``store.lsn`` after recovery."""

    kind: str
    path: str
    offset: Optional[int]
    torn: bool
    pit_keep: set
    skip_keep: set
    lsn: Optional[int] = None
    pit_lsn: Optional[int] = None
    skip_lsn: Optional[int] = None


def _bad_frame_expect(log: Log, frame, kind: str, skip_lost=None) -> Expect:
    lost = set(skip_lost if skip_lost is not None else frame.lsns)
    every = set(range(1, log.last_lsn + 1))
    return Expect(kind, frame.segment, frame.offset, False,
                  pit_keep=set(range(1, frame.first_lsn)), skip_keep=every - lost,
                  lsn=frame.first_lsn, pit_lsn=frame.first_lsn - 1, skip_lsn=log.last_lsn)


def _torn_expect(log: Log, frame, path=None, offset=None) -> Expect:
    keep = set(range(1, frame.first_lsn))
    return Expect("torn_tail", path or frame.segment, frame.offset if offset is None else offset,
                  True, pit_keep=keep, skip_keep=keep, lsn=frame.first_lsn,
                  pit_lsn=frame.first_lsn - 1, skip_lsn=frame.first_lsn - 1)


def _wal_sizes(d) -> dict:
    w = os.path.join(d, "wal")
    return {n: os.path.getsize(os.path.join(w, n)) for n in os.listdir(w)}


def _quarantined_bytes(d) -> int:
    q = os.path.join(d, "quarantine")
    if not os.path.isdir(q):
        return 0
    return sum(os.path.getsize(os.path.join(q, n)) for n in os.listdir(q)
               if n.endswith(".bin") or n.endswith(".not-applied"))


def _names_problem(problems, root, e: Expect) -> bool:
    return any(p.kind == e.kind and os.path.relpath(p.path, root) == e.path
               and p.offset == e.offset for p in problems)


def _check_refused(err, root, e: Expect) -> None:
    assert err.reason == e.kind, err
    assert os.path.relpath(err.path, root) == e.path
    assert err.offset == e.offset
    assert err.path in str(err)
    if e.offset is not None:
        assert f"offset {e.offset}" in str(err)


def _dropped_from(before: dict, after: dict) -> int:
    """Bytes of ``before`` files no longer there: each file's length minus the
    prefix it still shares with what is there now."""
    removed = 0
    for name, old in before.items():
        new = after.get(name, b"")
        n = 0
        limit = min(len(old), len(new))
        while n < limit and old[n] == new[n]:
            n += 1
        removed += len(old) - n
    return removed


def _wal_bytes(d) -> dict:
    w = os.path.join(d, "wal")
    return {n: bytes(C.read(os.path.join(w, n))) for n in os.listdir(w)}


def _check_resumes(log: Log, damaged: str, mode: str, keep: set, lsn: int, e: Expect,
                   tmp) -> None:
    d = _copy(damaged, tmp / f"recovered-{mode}")
    source = _wal_bytes(d)
    with Store.open(d, recovery=mode, sync="none") as s:
        report = s.recovery_report
        assert canon_state(store_state(s), drop_empty=True) == log.expected(keep), mode
        assert s.lsn == lsn, mode
        assert report.ok == e.torn, report.as_dict()
        assert _names_problem(report.problems, d, e), report.as_dict()
        # Every byte taken out of wal/ is reported, and kept in quarantine/.
        removed = _dropped_from(source, _wal_bytes(d))
        assert report.bytes_dropped >= removed, (report.as_dict(), removed)
        assert _quarantined_bytes(d) >= removed
        problems = list(report.problems)
        # Writing resumes right after the survivors.
        for i in range(10):
            assert s.put("after", i, [mode, i]) == lsn + i + 1
    with Store.open(d, recovery=mode) as s:
        want = dict(log.expected(keep))
        m = Model()
        for i in range(10):
            m.put("after", i, [mode, i])
        want.update(canon_state(m.tables))
        assert canon_state(store_state(s), drop_empty=True) == want, mode
        assert s.lsn == lsn + 10
        if mode != "skip-corrupted":
            assert s.recovery_report.problems == [], s.recovery_report.as_dict()
    # Evidence: each skipped or dropped byte range has its copy in quarantine/.
    qdir = os.path.join(d, "quarantine")
    kept = sorted(os.listdir(qdir)) if os.path.isdir(qdir) else []
    for p in problems:
        if p.action in ("skipped", "dropped") and p.bytes:
            name = f"{os.path.basename(p.path)}@{p.offset:012d}.{p.kind}.bin"
            assert name in kept, (p, kept)
            src = source[os.path.basename(p.path)]
            assert C.read(os.path.join(qdir, name)) == src[p.offset:p.offset + p.bytes], p


def check_damage(log: Log, tmp, damage: Callable[[str], Expect]) -> Expect:
    damaged = _copy(log.path, tmp / "damaged")
    e = damage(damaged)
    before = C.tree_hashes(damaged)
    # verify judges consistently and never changes a byte.
    for mode in MODES:
        report = verify(damaged, recovery=mode)
        assert report.ok == (e.torn and mode != "strict"), (mode, report.as_dict())
        assert _names_problem(report.problems, damaged, e), (mode, report.as_dict())
    assert C.tree_hashes(damaged) == before
    # strict refuses everything; tolerate-tail refuses damage.
    refusing = ["strict"] if e.torn else ["strict", "tolerate-tail"]
    for mode in refusing:
        with pytest.raises(CorruptionError) as ei:
            Store.open(damaged, recovery=mode)
        assert isinstance(ei.value, TornTailError) == e.torn
        _check_refused(ei.value, damaged, e)
        assert C.tree_hashes(damaged) == before, "a refused open must not change a byte"
    for mode in TOLERANT:
        if mode in refusing:
            continue
        keep, lsn = (e.skip_keep, e.skip_lsn) if mode == "skip-corrupted" else (e.pit_keep,
                                                                               e.pit_lsn)
        _check_resumes(log, damaged, mode, keep, lsn, e, tmp)
    return e


def _fresh(tmp_path, name):
    p = tmp_path / name
    p.mkdir()
    return p


# ------------------------------------------------------------ torn tails
def test_truncated_trailing_frames_are_dropped_and_reported_at_every_byte(log, tmp_path):
    newest = log.segments()[-1]
    last3 = log.frames_in(newest)[-3:]
    boundaries = {f.offset for f in last3}
    base = C.read(os.path.join(log.path, newest))
    for cut in range(last3[0].offset, last3[-1].end):
        d = _copy(log.path, tmp_path / f"cut{cut}")
        C.as_crashed(d)  # a crash cut the log (a cleanly closed one cut is damage)
        seg = os.path.join(d, newest)
        C.truncate(seg, cut)
        before = C.tree_hashes(d)
        frame = next(f for f in last3 if f.offset <= cut < f.end)
        keep = set(range(1, frame.first_lsn))
        torn = cut not in boundaries
        assert verify(d).ok
        assert verify(d, recovery="strict").ok == (not torn)
        if torn:
            with pytest.raises(TornTailError) as ei:
                Store.open(d, recovery="strict")
            assert (ei.value.path, ei.value.offset) == (seg, frame.offset)
            assert C.tree_hashes(d) == before
        with Store.open(d, recovery="tolerate-tail", sync="none") as s:
            assert s.lsn == frame.first_lsn - 1, cut
            assert canon_state(store_state(s), drop_empty=True) == log.expected(keep), cut
            problems = s.recovery_report.problems
            if torn:
                assert [(p.kind, p.path, p.offset, p.bytes, p.lsn, p.action) for p in problems] \
                    == [("torn_tail", seg, frame.offset, cut - frame.offset, frame.first_lsn,
                         "dropped")], cut
                ev = os.path.join(d, "quarantine",
                                  f"{os.path.basename(seg)}@{frame.offset:012d}.torn_tail.bin")
                assert C.read(ev) == base[frame.offset:cut]
            else:
                assert problems == []
            assert os.path.getsize(seg) == frame.offset
            for i in range(10):
                assert s.put("after", i, i) == frame.first_lsn + i
        with Store.open(d, recovery="strict") as s:
            assert s.recovery_report.problems == []
            want = dict(log.expected(keep))
            want.update(canon_state({"after": {i: i for i in range(10)}}))
            assert canon_state(store_state(s), drop_empty=True) == want
        shutil.rmtree(d)


def test_a_zero_filled_tail_is_a_torn_tail(log, tmp_path):
    newest = log.segments()[-1]

    def damage(d):
        C.as_crashed(d)
        C.append(os.path.join(d, newest), bytes(4096))
        end = log.frames_in(newest)[-1].end
        e = _torn_expect(log, log.frames_in(newest)[-1], offset=end)
        e.lsn = e.pit_lsn = e.skip_lsn = None
        e.pit_keep = e.skip_keep = set(range(1, log.last_lsn + 1))
        e.pit_lsn = e.skip_lsn = log.last_lsn
        return e

    check_damage(log, tmp_path, damage)


def test_a_short_scrap_after_the_last_frame_is_a_torn_tail(log, tmp_path):
    newest = log.segments()[-1]

    def damage(d):
        C.as_crashed(d)
        C.append(os.path.join(d, newest), struct_magic()[:4] + b"\x07" * 20)
        e = _torn_expect(log, log.frames_in(newest)[-1], offset=log.frames_in(newest)[-1].end)
        e.pit_keep = e.skip_keep = set(range(1, log.last_lsn + 1))
        e.pit_lsn = e.skip_lsn = log.last_lsn
        return e

    check_damage(log, tmp_path, damage)


def struct_magic() -> bytes:
    return F.FRAME_MAGIC.to_bytes(4, "little")


def test_a_last_frame_with_a_zeroed_sector_is_a_torn_tail(big_tail_log, tmp_path):
    log = big_tail_log
    newest = log.segments()[-1]
    last = log.frames_in(newest)[-1]
    sector = -(-(last.offset + 40) // C.SECTOR) * C.SECTOR
    assert sector + C.SECTOR <= last.end

    def damage(d):
        C.as_crashed(d)
        C.zero_sector(os.path.join(d, newest), sector)
        return _torn_expect(log, last)

    check_damage(log, tmp_path, damage)


def test_a_last_frame_whose_first_sector_was_not_written_is_a_torn_tail(big_tail_log, tmp_path):
    # The same torn write with the header's sector the one lost (found by
    # the power-loss harness): the header does not read, the rest is there.
    log = big_tail_log
    newest = log.segments()[-1]
    last = log.frames_in(newest)[-1]
    boundary = -(-(last.offset + 1) // C.SECTOR) * C.SECTOR
    assert boundary < last.end

    def damage(d):
        C.as_crashed(d)
        C.zero_range(os.path.join(d, newest), last.offset, boundary)
        return _torn_expect(log, last)

    check_damage(log, tmp_path, damage)


@pytest.mark.parametrize("boundary_in", ["header", "payload"])
def test_zeros_from_a_sector_inside_a_frame_to_the_end_are_a_torn_tail(tmp_path, boundary_in):
    # A write of several frames whose last sectors were not made: the frame
    # the first such sector cuts is bad (its header, or its CRC) and only
    # zeros follow it (found by the power-loss harness).
    d = str(tmp_path / "s")
    with Store.open(d, sync="none") as s:
        for i in range(60):
            s.put("t", i, "x" * (20 + i % 7))
            s.sync()  # a frame each
    C.as_crashed(d)  # the crash that left the write half made
    seg = C.segment_paths(d)[-1]
    frame, boundary = next(
        (f, b) for f in C.frames_of(seg)[:-1]
        for b in [-(-(f.offset + 1) // C.SECTOR) * C.SECTOR]
        if b < f.end and (b < f.offset + F.FRAME_HEADER_BYTES) == (boundary_in == "header"))
    C.zero_range(seg, boundary, os.path.getsize(seg))
    shutil.copytree(d, str(tmp_path / "strict"))
    with pytest.raises(TornTailError):
        Store.open(str(tmp_path / "strict"), recovery="strict")
    with Store.open(d) as s:
        assert s.lsn == frame.first_lsn - 1
        assert [(p.kind, p.offset) for p in s.recovery_report.problems] == \
            [("torn_tail", frame.offset)]


def test_a_last_frame_zeroed_from_its_middle_to_the_end_is_a_torn_tail(big_tail_log, tmp_path):
    log = big_tail_log
    newest = log.segments()[-1]
    last = log.frames_in(newest)[-1]

    def damage(d):
        C.as_crashed(d)
        C.zero_range(os.path.join(d, newest), last.offset + last.size // 3, last.end)
        return _torn_expect(log, last)

    check_damage(log, tmp_path, damage)


def test_a_bit_flip_in_the_last_frame_is_corruption_not_a_torn_tail(big_tail_log, tmp_path):
    log = big_tail_log
    newest = log.segments()[-1]
    last = log.frames_in(newest)[-1]

    def damage(d):
        C.as_crashed(d)  # (after a clean close nothing at the end is torn anyway)
        C.flip_bit(os.path.join(d, newest), last.offset + last.size // 2, 3)
        e = _bad_frame_expect(log, last, "bad_crc")
        e.skip_lsn = last.first_lsn - 1  # nothing follows it: writing resumes at its LSN
        return e

    check_damage(log, tmp_path, damage)


def test_a_newest_segment_cut_inside_its_header_is_a_torn_tail(log, tmp_path):
    newest = log.segments()[-1]
    first = log.frames_in(newest)[0]

    def damage(d):
        C.as_crashed(d)
        C.truncate(os.path.join(d, newest), 10)
        return _torn_expect(log, first, offset=0)

    check_damage(log, tmp_path, damage)


# ------------------------------------------------------- bit flips, garbage
@pytest.mark.parametrize("where", ["middle-segment", "newest-segment"])
def test_a_bit_flip_anywhere_in_a_middle_frame_is_corruption(log, tmp_path, where):
    segment = log.segments()[1] if where == "middle-segment" else log.segments()[-1]
    frame = _middle_frame(log, segment, want_batch=where == "middle-segment")
    # every byte of the header and of the payload
    for rel in range(frame.size):
        case_dir = tmp_path / f"byte{rel}"
        case_dir.mkdir()

        def damage(d, rel=rel):
            C.flip_bit(os.path.join(d, segment), frame.offset + rel, (rel * 5) % 8)
            return _bad_frame_expect(log, frame, kind=_any_kind)

        check_damage_any_kind(log, case_dir, damage, f"byte {rel} of {frame}")
        shutil.rmtree(case_dir)


_any_kind = "*"  # bit flips land in different checks: magic, header, CRC


def check_damage_any_kind(log, tmp, damage, what):
    """check_damage, where the problem kind is whatever check the flip trips."""
    damaged = _copy(log.path, tmp / "probe")
    e = damage(damaged)
    report = verify(damaged)
    hits = [p for p in report.problems
            if os.path.relpath(p.path, damaged) == e.path and p.offset == e.offset]
    assert hits, (what, report.as_dict())
    assert hits[0].kind in ("bad_magic", "bad_header", "bad_crc"), (what, hits[0])
    shutil.rmtree(damaged)
    kind = hits[0].kind

    def with_kind(d):
        e2 = damage(d)
        e2.kind = kind
        return e2

    check_damage(log, tmp, with_kind)


@pytest.mark.parametrize("header", ["flipped", "rechecksummed"])
def test_a_bit_flip_in_the_length_of_a_compressed_middle_frame_is_corruption(log, tmp_path,
                                                                             header):
    # LZ4 frames have stored_len != raw_len, so a flipped stored_len passes the
    # header's field checks and claims to run past the end of the file. The
    # header's own checksum catches the flip (bad_header); a header that
    # checks anyway (its checksum recomputed) claims to run past the end, but
    # good frames follow it: damage (bad_length), not a torn tail. After a
    # crash, so the torn-tail rule is the one judging.
    newest = log.segments()[-1]
    frame = next(f for f in log.frames_in(newest) if f.codec == F.CODEC_LZ4)
    assert frame.end < log.frames_in(newest)[-1].end

    def damage(d):
        C.as_crashed(d)
        p = os.path.join(d, newest)
        C.flip_bit(p, frame.offset + 21, 4)  # stored_len += 4096
        if header == "rechecksummed":
            C.fix_frame_crc(p, frame.offset)
        return _bad_frame_expect(log, frame,
                                 kind="bad_header" if header == "flipped" else "bad_length")

    e = damage(_copy(log.path, tmp_path / "probe"))
    report = verify(str(tmp_path / "probe"))
    assert not report.ok, report.as_dict()
    found = [p for p in report.problems if p.offset == e.offset]
    assert found and found[0].kind == e.kind, report.as_dict()
    with pytest.raises(CorruptionError) as ei:
        Store.open(tmp_path / "probe", recovery="tolerate-tail")
    assert not isinstance(ei.value, TornTailError)
    (tmp_path / "full").mkdir()
    check_damage(log, tmp_path / "full", damage)


def test_garbage_over_a_middle_frame_is_corruption(log, tmp_path):
    segment = log.segments()[2]
    frame = _middle_frame(log, segment)

    def damage(d):
        junk = bytes(random.Random(3).randrange(1, 256) for _ in range(frame.size))
        C.overwrite(os.path.join(d, segment), frame.offset, junk)
        return _bad_frame_expect(log, frame, kind="bad_magic")

    check_damage(log, tmp_path, damage)


def test_garbage_after_the_last_frame_is_corruption_not_a_torn_tail(log, tmp_path):
    newest = log.segments()[-1]
    end = log.frames_in(newest)[-1].end
    every = set(range(1, log.last_lsn + 1))

    def damage(d):
        C.as_crashed(d)  # (after a clean close nothing at the end is torn anyway)
        C.append(os.path.join(d, newest), bytes(random.Random(4).randrange(1, 256)
                                                for _ in range(100)))
        return Expect("bad_magic", newest, end, False, pit_keep=every, skip_keep=every,
                      lsn=log.last_lsn + 1, pit_lsn=log.last_lsn, skip_lsn=log.last_lsn)

    check_damage(log, tmp_path, damage)


def test_a_zeroed_sector_in_the_middle_is_corruption(log, tmp_path):
    segment = log.segments()[1]
    sector = 1024
    hit = [f for f in log.frames_in(segment) if f.offset < sector + C.SECTOR and f.end > sector]
    assert hit and hit[-1].end < log.frames_in(segment)[-1].end

    def damage(d):
        C.zero_sector(os.path.join(d, segment), sector)
        first = hit[0]
        kind = "bad_crc" if first.offset + F.FRAME_HEADER_BYTES <= sector else "bad_magic"
        return _bad_frame_expect(log, first, kind,
                                 skip_lost={lsn for f in hit for lsn in f.lsns})

    check_damage(log, tmp_path, damage)


def test_a_checksummed_frame_with_an_unknown_op_is_corruption(log, tmp_path):
    # Edit a record's op byte and fix the CRC: the damage is found by decoding.
    segment = log.segments()[1]
    frame = _middle_frame(log, segment)

    def damage(d):
        p = os.path.join(d, segment)
        buf = C.read(p)
        body = frame.offset + F.FRAME_HEADER_BYTES
        assert frame.codec == F.CODEC_NONE
        # Skip the frame's table declarations to reach the first record's op.
        dec = _backend.core().decode_varint
        n, i = dec(buf, body, len(buf))
        for _ in range(n):
            _, i = dec(buf, i, len(buf))
            name_len, i = dec(buf, i + 1, len(buf))
            i += name_len
        assert buf[i] in (F.OP_PUT, F.OP_DELETE, F.OP_INCR, F.OP_CLEAR)
        C.overwrite(p, i, b"\x09")
        C.fix_frame_crc(p, frame.offset)
        return _bad_frame_expect(log, frame, "bad_payload")

    check_damage(log, tmp_path, damage)


def test_a_huge_length_in_a_middle_frame_is_corruption(log, tmp_path):
    segment = log.segments()[1]
    frame = _middle_frame(log, segment)

    def damage(d):
        p = os.path.join(d, segment)
        C.set_frame_field(p, frame.offset, "stored_len", 0xFFFFFFFF)
        C.set_frame_field(p, frame.offset, "raw_len", 0xFFFFFFFF)
        C.fix_frame_crc(p, frame.offset)
        return _bad_frame_expect(log, frame, "bad_header")

    check_damage(log, tmp_path, damage)


_HUGE_CHILD = """
import json, resource, sys
resource.setrlimit(resource.RLIMIT_AS, (1536 << 20, 1536 << 20))
from rehydrate import Store, verify, RehydrateError
out = {"verify_ok": verify(sys.argv[1]).ok}
for mode in ("tolerate-tail", "skip-corrupted"):
    try:
        with Store.open(sys.argv[1], recovery=mode) as s:
            out[mode] = s.lsn
    except RehydrateError as e:
        out[mode] = e.reason
print(json.dumps(out))
"""


@pytest.mark.timeout(60)
def test_a_4_gib_length_at_the_tail_neither_allocates_nor_hangs(log, tmp_path, core_env):
    newest = log.segments()[-1]
    last = log.frames_in(newest)[-1]
    d = _copy(log.path, tmp_path / "huge")
    C.as_crashed(d)  # (after a clean close nothing at the end is torn anyway)
    p = os.path.join(d, newest)
    for field in ("stored_len", "raw_len"):
        C.set_frame_field(p, last.offset, field, 0xFFFFFFFF)
    out = subprocess.run([sys.executable, "-c", _HUGE_CHILD, d], env=core_env,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    res = json.loads(out.stdout)
    # A header that cannot be right is damage (a crash writes whole headers).
    assert res == {"verify_ok": False, "tolerate-tail": "bad_header",
                   "skip-corrupted": last.first_lsn - 1}


# ------------------------------------------------------------ segments
def test_a_wrong_segment_magic_in_the_middle_is_corruption(log, tmp_path):
    segment = log.segments()[1]
    first = log.frames_in(segment)[0]
    every = set(range(1, log.last_lsn + 1))

    def damage(d):
        C.overwrite(os.path.join(d, segment), 0, b"NOTASEG!")
        # The header is bad; every frame in the segment is whole and checksummed.
        return Expect("bad_segment_header", segment, 0, False,
                      pit_keep=set(range(1, first.first_lsn)), skip_keep=every,
                      lsn=first.first_lsn, pit_lsn=first.first_lsn - 1, skip_lsn=log.last_lsn)

    check_damage(log, tmp_path, damage)


@pytest.mark.parametrize("which", [1, -1], ids=["middle", "newest"])
def test_a_segment_from_a_newer_format_is_unsupported_in_every_mode(log, tmp_path, which):
    segment = log.segments()[which]
    d = _copy(log.path, tmp_path / "newer")
    C.set_segment_version(os.path.join(d, segment), F.FORMAT_VERSION + 1)
    before = C.tree_hashes(d)
    for mode in MODES:
        with pytest.raises(UnsupportedFormatError) as ei:
            Store.open(d, recovery=mode)
        assert ei.value.path == os.path.join(d, segment)
        with pytest.raises(UnsupportedFormatError):
            verify(d, recovery=mode)
    assert C.tree_hashes(d) == before


def test_a_missing_middle_segment_is_an_lsn_gap(log, tmp_path):
    segs = log.segments()
    missing, after = segs[1], segs[2]
    lost = {lsn for f in log.frames_in(missing) for lsn in f.lsns}
    first_lost = min(lost)

    def damage(d):
        os.unlink(os.path.join(d, missing))
        every = set(range(1, log.last_lsn + 1))
        return Expect("missing_segment", after, 0, False,
                      pit_keep=set(range(1, first_lost)), skip_keep=every - lost,
                      lsn=first_lost, pit_lsn=first_lost - 1, skip_lsn=log.last_lsn)

    check_damage(log, tmp_path, damage)


def test_an_overlapping_segment_is_corruption(log, tmp_path):
    core = _backend.core()
    seg = log.segments()[1]
    last_lsn = log.frames_in(seg)[-1].lsns[-1]
    every = set(range(1, log.last_lsn + 1))
    name = os.path.join("wal", segment_name(last_lsn))

    def damage(d):
        # A whole, checksummed segment that starts at an LSN already logged:
        # what a botched copy or restore leaves.
        buf = core.LogBuffer(last_lsn)
        buf.put(core.KVTable(), 0, "dup", "from the overlap")
        first, count, recs = buf.take()
        frame = core.encode_frame(first, count, [(0, F.KIND_KV, b"t")], recs)
        with open(os.path.join(d, name), "wb") as f:
            f.write(encode_segment_header(last_lsn) + frame)
        return Expect("segment_overlap", name, 0, False, pit_keep=set(range(1, last_lsn + 1)),
                      skip_keep=every, lsn=last_lsn + 1, pit_lsn=last_lsn,
                      skip_lsn=log.last_lsn)

    check_damage(log, tmp_path, damage)


def test_skip_corrupted_loses_only_the_bad_frame_even_when_it_declared_the_tables(log,
                                                                                  tmp_path):
    # The first frame of every segment declares the tables; the frames after
    # it are whole and checksummed and must still be replayed.
    segment = log.segments()[1]
    first = log.frames_in(segment)[0]

    def damage(d):
        C.flip_bit(os.path.join(d, segment), first.offset + F.FRAME_HEADER_BYTES + 2, 0)
        return _bad_frame_expect(log, first, "bad_crc")

    check_damage(log, tmp_path, damage)


def test_a_foreign_file_in_the_wal_directory_is_reported_and_left_alone(log, tmp_path):
    d = _copy(log.path, tmp_path / "foreign")
    with open(os.path.join(d, "wal", "notes.txt"), "wb") as f:
        f.write(b"\x00garbage" * 100)
    before = C.tree_hashes(d)
    for mode in MODES:
        assert verify(d, recovery=mode).ok
    assert C.tree_hashes(d) == before
    for mode in MODES:
        with Store.open(d, recovery=mode) as s:
            assert s.lsn == log.last_lsn
            assert canon_state(store_state(s), drop_empty=True) == \
                log.expected(range(1, log.last_lsn + 1))
            assert [(p.kind, p.action) for p in s.recovery_report.problems] == \
                [("foreign_file", "ignored")]
    assert C.read(os.path.join(d, "wal", "notes.txt")) == b"\x00garbage" * 100


# ------------------------------------------------ directories, manifest
def test_verify_refuses_an_empty_or_foreign_directory(tmp_path):
    empty = _fresh(tmp_path, "empty")
    foreign = _fresh(tmp_path, "foreign")
    (foreign / "data.bin").write_bytes(b"\x01" * 100)
    for d in (empty, foreign, tmp_path / "missing"):
        before = C.tree_hashes(d) if d.exists() else None
        for mode in MODES:
            with pytest.raises(NotAStoreError):
                verify(d, recovery=mode)
        assert (C.tree_hashes(d) if d.exists() else None) == before
    with pytest.raises(NotAStoreError):
        Store.open(foreign)


@pytest.mark.parametrize("edit", ["flip-payload", "flip-magic", "truncate", "empty"])
def test_a_corrupt_manifest_is_corruption_in_every_mode(log, tmp_path, edit):
    d = _copy(log.path, tmp_path / "badmanifest")
    m = os.path.join(d, "MANIFEST")
    if edit == "flip-payload":
        C.flip_bit(m, F.MANIFEST_HEADER_BYTES + 2, 1)
    elif edit == "flip-magic":
        C.flip_bit(m, 0, 1)
    elif edit == "truncate":
        C.truncate(m, os.path.getsize(m) - 3)
    else:
        C.truncate(m, 0)
    before = C.tree_hashes(d)
    for mode in MODES:
        with pytest.raises(CorruptionError) as ei:
            Store.open(d, recovery=mode)
        assert ei.value.reason == "bad_manifest" and ei.value.path == m
        # verify may raise it, or report it; it must never call it ok.
        try:
            report = verify(d, recovery=mode)
        except CorruptionError as e:
            assert e.reason == "bad_manifest"
        else:
            assert not report.ok
    assert C.tree_hashes(d) == before


def test_a_manifest_from_a_newer_format_is_unsupported(log, tmp_path):
    from rehydrate import manifest

    d = _copy(log.path, tmp_path / "newer")
    data = manifest.read(d)
    data["format"] = F.FORMAT_VERSION + 1
    # (by hand: manifest.write stamps this code's own format)
    C.write(os.path.join(d, "MANIFEST"), manifest.encode(data))
    before = C.tree_hashes(d)
    for mode in MODES:
        with pytest.raises(UnsupportedFormatError):
            Store.open(d, recovery=mode)
        with pytest.raises(UnsupportedFormatError):
            verify(d, recovery=mode)
    assert C.tree_hashes(d) == before


def test_a_store_whose_wal_directory_is_gone_is_corruption_in_every_mode(log, tmp_path):
    d = _copy(log.path, tmp_path / "nowal")
    shutil.rmtree(os.path.join(d, "wal"))
    before = C.tree_hashes(d)
    for mode in MODES:
        with pytest.raises(CorruptionError) as ei:
            Store.open(d, recovery=mode)
        assert ei.value.reason == "missing_wal"
        with pytest.raises(CorruptionError):
            verify(d, recovery=mode)
    assert C.tree_hashes(d) == before and not os.path.exists(os.path.join(d, "wal"))


def test_a_clean_base_log_verifies_and_reopens_to_the_model(log, tmp_path):
    # The premise of every case above: the undamaged log is the model.
    d = _copy(log.path, tmp_path / "clean")
    for mode in MODES:
        r = verify(d, recovery=mode)
        assert r.ok and r.problems == [] and r.last_lsn == log.last_lsn
    with Store.open(d, recovery="strict") as s:
        assert canon_state(store_state(s), drop_empty=True) == \
            log.expected(range(1, log.last_lsn + 1))
    assert len(log.segments()) >= 4
    assert any(f.codec == F.CODEC_LZ4 for f in log.frames)
    assert any(f.count > 1 for f in log.frames)


@pytest.mark.parametrize("mode", ["tolerate-tail", "point-in-time"])
def test_bytes_dropped_counts_every_dropped_byte_once(log, tmp_path, mode):
    # report.bytes_dropped is what recovery took out of the log: no more, no less.
    segment = log.segments()[1] if mode == "point-in-time" else log.segments()[-1]
    frame = _middle_frame(log, segment)
    d = _copy(log.path, tmp_path / "damaged")
    p = os.path.join(d, segment)
    if mode == "point-in-time":
        C.flip_bit(p, frame.offset + F.FRAME_HEADER_BYTES + 1, 2)
    else:
        C.as_crashed(d)  # a torn tail: what a crash leaves
        C.truncate(p, frame.offset + 7)
    before = sum(_wal_sizes(d).values())
    with Store.open(d, recovery=mode) as s:
        removed = before - sum(_wal_sizes(d).values())
        assert removed > 0
        assert s.recovery_report.bytes_dropped == removed, s.recovery_report.as_dict()
        assert _quarantined_bytes(d) == removed


def test_a_checksummed_frame_whose_incr_cannot_apply_is_fatal_but_in_skip_corrupted(log,
                                                                                   tmp_path):
    # Only a buggy or hostile writer makes one (the store refuses the incr):
    # a frame that passes every check, then an incr on a string.
    core = _backend.core()
    newest = log.segments()[-1]
    d = _copy(log.path, tmp_path / "apply")
    assert log.records[-1][:3] == ("put", "t", "tail2")
    buf = core.LogBuffer(log.last_lsn + 1)
    buf.put(core.KVTable(), 0, "k0", "a string")
    buf.incr(core.KVTable(), 0, "k0", 1)
    first, count, recs = buf.take()
    frame_offset = os.path.getsize(os.path.join(d, newest))
    C.append(os.path.join(d, newest), core.encode_frame(first, count, [], recs))
    before = C.tree_hashes(d)
    for mode in MODES:
        if mode == "skip-corrupted":
            continue
        with pytest.raises(CorruptionError) as ei:
            Store.open(d, recovery=mode)
        assert ei.value.reason == "apply_error" and ei.value.offset == frame_offset
    assert C.tree_hashes(d) == before
    # skip-corrupted leaves that one record out, reports it and keeps a copy.
    # The frame is past where the last clean close left the log: that too.
    seg_size = os.path.getsize(os.path.join(d, newest))
    with Store.open(d, recovery="skip-corrupted") as s:
        assert s.table("t")["k0"] == "a string"
        problems = s.recovery_report.problems
        assert [(p.kind, p.lsn, p.action) for p in problems] == \
            [("apply_error", first + 1, "skipped"),
             ("clean_end_mismatch", first + count, "skipped")]
        assert (problems[1].path, problems[1].offset) == (os.path.join(d, newest), seg_size)
        assert s.lsn == first + 1
    assert len([n for n in os.listdir(os.path.join(d, "quarantine"))
                if n.endswith(".apply_error.json")]) == 1


def test_a_frame_with_an_lsn_gap_inside_a_segment_is_corruption(log, tmp_path):
    segment = log.segments()[1]
    frame = _middle_frame(log, segment)
    d = _copy(log.path, tmp_path / "gap")
    p = os.path.join(d, segment)
    C.set_frame_field(p, frame.offset, "first_lsn", frame.first_lsn + 5)
    C.fix_frame_crc(p, frame.offset)
    before = C.tree_hashes(d)
    assert not verify(d).ok
    for mode in ("strict", "tolerate-tail"):
        with pytest.raises(CorruptionError) as ei:
            Store.open(d, recovery=mode)
        assert (ei.value.reason, ei.value.offset, ei.value.lsn) == \
            ("lsn_gap", frame.offset, frame.first_lsn)
    assert C.tree_hashes(d) == before
    with Store.open(d, recovery="point-in-time") as s:
        assert s.lsn == frame.first_lsn - 1
        assert canon_state(store_state(s), drop_empty=True) == \
            log.expected(range(1, frame.first_lsn))


def test_skip_corrupted_moves_aside_an_empty_newest_segment_with_a_bad_header(tmp_path):
    # The writer's next segment takes that file's name: it must never be
    # overwritten, and nothing of it may be lost.
    from rehydrate.wal import WalWriter

    path = str(tmp_path / "s")
    with Store.open(path, sync="always") as s:
        for i in range(5):
            s.put("t", i, i)
        lsn = s.lsn
    # A new, empty newest segment (as a roll leaves), then a damaged header.
    w = WalWriter(os.path.join(path, "wal"), 4096)
    w.create(lsn + 1)
    w.close()
    empty = os.path.join(path, "wal", sorted(os.listdir(os.path.join(path, "wal")))[-1])
    assert os.path.getsize(empty) == F.SEGMENT_HEADER_BYTES
    with open(empty, "r+b") as f:
        f.write(b"XX")  # bad magic
    with pytest.raises(CorruptionError):
        Store.open(path)
    with Store.open(path, recovery="skip-corrupted") as s:
        assert s.lsn == lsn and s.table("t").to_dict() == {i: i for i in range(5)}
        s.put("t", "after", 1)
    assert any(n.endswith(".bad_segment_header") for n in os.listdir(os.path.join(path,
                                                                                  "quarantine")))
    with Store.open(path, recovery="strict") as s:
        assert s.table("t")["after"] == 1 and s.lsn == lsn + 1
