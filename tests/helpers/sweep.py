"""Small stores for the reliability sweeps (truncation, bit flips), the
verdict on a damaged log, and the loop that counts a sweep's outcomes.

A store is written from crash_sequence's deterministic ops (or given
ones), by default each one acknowledged with sync="always" (so one frame
per op, a batch in one frame), then closed cleanly; its frame map is read
back by walking the headers. A sweep damages a copy at many offsets.

Every store built here is closed cleanly, so every write it holds was
acknowledged, and no crash can have torn its tail: damage anywhere, the
last frame included, must be detected (verify reports it, or a typed
error), or the open must give back every write. A *reported* torn tail
that drops acknowledged records is a loss like any other, and the oracle
counts it. ``acked_before`` (the last frame wholly before an offset) is the
bound only for a store whose tail a crash may have torn, as in T3, whose
cuts stand for one.
"""

from __future__ import annotations

import dataclasses
import itertools
import shutil
from collections import Counter

from rehydrate import Store, verify
from rehydrate import _format as F
from rehydrate.errors import RehydrateError
from rehydrate.testing import apply_to_store, check_recovery, record_count

from . import corrupt as C
from . import crash_sequence

SEED = 3


@dataclasses.dataclass
class Swept:
    path: str
    ops: list  # every op tuple written, in order; all acknowledged
    frames: list  # FrameInfo of every frame still in wal/, in log order
    snapshots: list  # LSNs of the checkpoints taken, oldest first
    sync: str = "always"  # the sync mode it was written in
    # Closed by close(): every write acknowledged, no tail a crash may have torn.
    closed_cleanly: bool = True

    @property
    def written(self) -> int:
        return sum(record_count(op) for op in self.ops)

    def segments(self) -> list:
        return C.segment_paths(self.path)

    def frames_in(self, segment) -> list:
        return [f for f in self.frames if f.segment == segment]

    def copy(self, dst) -> str:
        shutil.copytree(self.path, dst)
        return str(dst)


def build(path, n_ops: int, *, segment_bytes: int = 4096, checkpoint_after=(),
          seed: int = SEED, ops=None, sync: str = "always", sync_after=()) -> Swept:
    """Write the first ``n_ops`` ops of ``crash_sequence.ops(seed)`` (or
    ``ops``, given), checkpointing after the ops counted in
    ``checkpoint_after`` and calling ``sync()`` after those in
    ``sync_after`` (which ends a frame in the buffered modes), then close."""
    ops = list(ops) if ops is not None else \
        list(itertools.islice(crash_sequence.ops(seed), n_ops))
    snapshots = []
    # A long interval: in the buffered modes only sync() and close() end a
    # frame, so the frame map is the same on every run.
    with Store.open(path, sync=sync, segment_bytes=segment_bytes,
                    sync_interval_ms=3_600_000) as s:
        for i, op in enumerate(ops, 1):
            apply_to_store(s, op)
            if i in checkpoint_after:
                snapshots.append(s.checkpoint()["lsn"])
            if i in sync_after:
                s.sync()
    return Swept(str(path), ops, C.all_frames(path), snapshots, sync=sync)


_BUILT: dict = {}


def cached(core, tmp_path_factory, name: str, n_ops: int, **kw) -> Swept:
    """``build``, once per core and ``name`` for the session; tests only copy it."""
    key = (core.IMPLEMENTATION, name)
    if key not in _BUILT:
        _BUILT[key] = build(tmp_path_factory.mktemp(name) / "state", n_ops, **kw)
    return _BUILT[key]


def acked_before(swept: Swept, segment, offset: int) -> int:
    """The last LSN of the last frame wholly before ``offset`` of ``segment``:
    what damage there may take if it stands for a crash (a torn tail)."""
    lsn = 0
    for f in swept.frames:
        if f.segment == segment and f.end > offset:
            break
        lsn = f.lsns[-1]
    return lsn


def opener(path, recovery: str, opened=None):
    """``open_store`` for the oracle; ``opened`` (a list) keeps the store, for its report."""
    def open_store():
        store = Store.open(path, recovery=recovery, sync="none")
        if opened is not None:
            opened.append(store)
        return store
    return open_store


def must_survive(swept: Swept, segment, offset: int) -> int:
    """The LSN an open must give back at least after damage at ``offset`` of
    ``segment``: every write of a cleanly closed store (no crash tore its
    tail, so a dropped frame is lost data, reported or not), else the
    frames wholly before the damage."""
    return swept.written if swept.closed_cleanly else acked_before(swept, segment, offset)


def judge_log_damage(swept: Swept, d: str, segment, offset: int) -> str:
    """The verdict on a copy ``d`` of ``swept`` whose log is damaged from
    ``offset`` of ``segment`` on: "detected" when verify reports damage or
    raises a typed error, or the open (tolerate-tail) refuses it with one;
    else the open must give back at least ``must_survive`` (for a cleanly
    closed store: every write, "recovered whole"), an exact prefix by the
    oracle. Raises OracleFailure; anything untyped propagates.

    An open may cut a torn tail: ``d`` is then put back from ``swept``."""
    try:
        report = verify(d)
    except RehydrateError:
        return "detected"
    if not report.ok:
        return "detected"
    got = None
    try:
        got = check_recovery(opener(d, "tolerate-tail"), swept.ops,
                             must_survive(swept, segment, offset), allow_error=True)
    finally:
        if report.problems or got is None or got["outcome"] == "error":
            restore(swept, d)
    if got["outcome"] == "error":
        return "detected (by the open)"
    return "recovered whole" if got["lsn"] == swept.written else "exact-prefix"


def restore(swept: Swept, d: str) -> None:
    shutil.rmtree(d)
    swept.copy(d)


class InPlace:
    """Edits one file of a work copy in place and puts the bytes back, so a
    sweep of thousands of cases copies nothing."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.base = bytes(C.read(path))
        self.size = len(self.base)

    def patch(self, offset: int, data: bytes) -> None:
        with open(self.path, "r+b") as f:
            f.seek(offset)
            f.write(data)

    def put_back(self, offset: int, n: int) -> None:
        self.patch(offset, self.base[offset:offset + n])

    def flip(self, offset: int, bit: int) -> None:
        self.patch(offset, bytes([self.base[offset] ^ (1 << bit)]))


def run_cases(what: str, cases, judge) -> Counter:
    """``judge(case)`` for every case, counting its verdicts; a case that
    fails (OracleFailure, an untyped error) is counted and the sweep goes
    on, so the counts are whole. Prints them; fails if any case failed."""
    counts: Counter = Counter()
    failures = []
    for case in cases:
        try:
            counts[judge(case)] += 1
        except Exception as e:  # noqa: BLE001 - every failure is collected, then reported
            counts["failures"] += 1
            failures.append(f"{case}: {type(e).__name__}: {e}")
    counts.setdefault("failures", 0)
    print(f"\n{what}: {sum(counts.values())} cases: "
          + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
    assert not failures, f"{len(failures)} failed: " + "\n".join(failures[:10])
    return counts



# ------------------------------------------- a compressed frame at the end
SYNC_MODES = ("always", "interval", "none")
# The last frame of these stores: four puts of compressible values, in one
# batch (so one frame in every sync mode), stored as an LZ4 block. Its
# stored_len cannot be checked against raw_len, as an uncompressed frame's
# can (stored = raw), which is where a flipped length hides.
COMPRESSED_BATCH = ("batch", [("put", "kv", f"z{i}", "z" * 300) for i in range(4)])
PLAIN_OPS = 20  # the "last" shape: this many crash_sequence ops first


def compressed_tail(core, tmp_path_factory, sync: str, shape: str) -> Swept:
    """A cleanly closed one-segment store in ``sync`` mode whose last frame
    is LZ4: after ``PLAIN_OPS`` ops and a sync() ("last"), or alone ("only")."""
    assert shape in ("last", "only") and sync in SYNC_MODES
    ops = list(itertools.islice(crash_sequence.ops(SEED), PLAIN_OPS)) if shape == "last" else []
    s = cached(core, tmp_path_factory, f"lz4-{shape}-{sync}", 0, segment_bytes=1 << 20,
               ops=ops + [COMPRESSED_BATCH], sync=sync, sync_after=(len(ops),))
    assert len(s.segments()) == 1 and s.frames[-1].codec == F.CODEC_LZ4, s.frames[-1]
    assert s.frames[-1].count == len(COMPRESSED_BATCH[1])
    assert (len(s.frames) == 1) == (shape == "only"), s.frames
    return s
