"""Small stores for the reliability sweeps (truncation, bit flips), the
verdict on a damaged log, and the loop that counts a sweep's outcomes.

A store is written from crash_sequence's deterministic ops, each one
acknowledged with sync="always" (so one frame per op, a batch in one frame),
and its frame map is read back by walking the headers. A sweep damages a
copy at many offsets; ``acked_before`` says which LSNs damage at an offset
may take (those of the frame it hits and after), so the oracle's bound is
the last frame wholly before it.
"""

from __future__ import annotations

import dataclasses
import itertools
import shutil
from collections import Counter

from rehydrate import Store, verify
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
          seed: int = SEED) -> Swept:
    """Write the first ``n_ops`` ops of ``crash_sequence.ops(seed)``,
    checkpointing after the ops counted in ``checkpoint_after``."""
    ops = list(itertools.islice(crash_sequence.ops(seed), n_ops))
    snapshots = []
    with Store.open(path, sync="always", segment_bytes=segment_bytes) as s:
        for i, op in enumerate(ops, 1):
            apply_to_store(s, op)
            if i in checkpoint_after:
                snapshots.append(s.checkpoint()["lsn"])
    return Swept(str(path), ops, C.all_frames(path), snapshots)


_BUILT: dict = {}


def cached(core, tmp_path_factory, name: str, n_ops: int, **kw) -> Swept:
    """``build``, once per core and ``name`` for the session; tests only copy it."""
    key = (core.IMPLEMENTATION, name)
    if key not in _BUILT:
        _BUILT[key] = build(tmp_path_factory.mktemp(name) / "state", n_ops, **kw)
    return _BUILT[key]


def acked_before(swept: Swept, segment, offset: int) -> int:
    """The last LSN of the last frame wholly before ``offset`` of ``segment``."""
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


def judge_log_damage(swept: Swept, d: str, segment, offset: int) -> str:
    """The verdict on a copy ``d`` of ``swept`` whose log is damaged from
    ``offset`` of ``segment`` on: "detected" when verify reports damage or
    raises a typed error; else an open (tolerate-tail) must give the whole
    log, or, past a reported torn tail, the exact prefix before the damage
    ("exact-prefix"). Raises OracleFailure; anything untyped propagates.

    An open may cut a torn tail: ``d`` is then put back from ``swept``."""
    try:
        report = verify(d)
    except RehydrateError:
        return "detected"
    if not report.ok:
        return "detected"
    acked = acked_before(swept, segment, offset) if report.problems else swept.written
    try:
        check_recovery(opener(d, "tolerate-tail"), swept.ops, acked)
    finally:
        if report.problems:
            restore(swept, d)
    return "exact-prefix"


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

