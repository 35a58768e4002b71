"""Power loss (T2): a writer runs on the fault-injecting file layer
(rehydrate.testing.faultfs), the power is cut before a random file
operation, and an open of what the disk would then hold is judged by the
oracle: tolerate-tail must recover every acknowledged write as an exact
prefix; strict may refuse, with a TornTailError or CorruptionError only.

One exception, by design (FORMAT.md, "Torn tails and corruption"): in
torn_sectors, random bytes in the log's unsynced tail, or a later write
on disk while part of an earlier one is not, is not what the torn-tail
rule calls a crash's; tolerate-tail refuses it with a CorruptionError, and
then point-in-time must recover every acknowledged write.
"""

from __future__ import annotations

import functools
import itertools
import os
import random
import shutil
from collections import Counter

import pytest

from rehydrate import Store
from rehydrate.testing import apply_to_store, check_recovery
from rehydrate.testing.faultfs import MODES, FaultFS

from helpers import crash_sequence
from helpers.tier import scale

pytestmark = pytest.mark.reliability

RUNS = scale(500, 5000)  # per core, across the four modes
OPS = 150  # per run: segment rolls (4 KiB segments), a checkpoint that trims the log
SEGMENT_BYTES = 4096
SYNCS = ("always", "interval", "none")
# The background thread never fires: the test ticks for it, so a run is
# the same every time its seed is.
NO_TIMER_MS = 3_600_000


# ------------------------------------------------------------ the layer itself
def _files(d) -> dict:
    return {os.path.relpath(os.path.join(p, f), d): open(os.path.join(p, f), "rb").read()
            for p, _, names in os.walk(d) for f in names}


def test_the_layer_keeps_what_was_fsynced_and_rolls_back_what_was_not(tmp_path):
    from rehydrate import _fileio

    root = tmp_path / "root"
    root.mkdir()
    (root / "old").write_bytes(b"there before")
    with FaultFS(root) as fs:
        fd = _fileio.create_exclusive(str(root / "a"))
        _fileio.write_all(fd, b"synced")
        _fileio.fsync(fd)
        _fileio.write_all(fd, b"+lost" * 300)
        _fileio.close(fd)
        _fileio.fsync_dir(str(root))
        _fileio.rename(str(root / "old"), str(root / "new"))  # no directory fsync
        fd = _fileio.create_exclusive(str(root / "b"))
        _fileio.write_all(fd, b"b")
        _fileio.fsync(fd)
        _fileio.close(fd)
    rng = random.Random(1)
    assert _files(fs.power_loss("drop_unsynced", rng, tmp_path / "drop")) == \
        {"a": b"synced", "new": b"there before", "b": b"b"}
    assert _files(fs.power_loss("no_dir_sync", rng, tmp_path / "nodir")) == \
        {"a": b"synced", "old": b"there before"}
    for i in range(20):
        suffix = _files(fs.power_loss("random_suffix", rng, tmp_path / f"s{i}"))["a"]
        assert (b"synced" + b"+lost" * 300).startswith(suffix) and len(suffix) >= 6
        torn = _files(fs.power_loss("torn_sectors", rng, tmp_path / f"t{i}"))["a"]
        assert torn.startswith(b"synced")  # durable bytes are never damaged
    assert fs.damage["a"]["writes"] == 1 and fs.damage["a"]["unsynced"] == 1500


# ------------------------------------------------------------ power cuts
class _CutAt:
    """The layer's hook: the power goes before call ``n`` (into ``into``)."""

    def __init__(self, n, mode, rng, into):
        self.n, self.mode, self.rng, self.into = n, mode, rng, into
        self.fs, self.done = None, False

    def __call__(self, calls, name):
        if calls == self.n and not self.done:
            self.fs.power_loss(self.mode, self.rng, self.into)
            self.done = True


def _write(fs, sync, seed, rng, cut=None):
    """On the layer ``fs``, write OPS ops of crash_sequence.ops(seed) to a
    new store: a checkpoint two-thirds in, and in buffered modes the background
    thread's ticks and some sync() calls at ``rng``'s choice. Once ``cut``
    is done no more ops are sent, and nothing returning after it counts as
    acknowledged. Returns (ops sent, acknowledged LSN)."""
    sent, acked = [], 0
    cut_done = (lambda: cut is not None and cut.done)
    with fs:
        store = Store.open(fs.root, sync=sync, segment_bytes=SEGMENT_BYTES,
                           sync_interval_ms=NO_TIMER_MS)
        try:
            for i, op in enumerate(itertools.islice(crash_sequence.ops(seed), OPS)):
                if cut_done():
                    break
                sent.append(op)
                lsn = apply_to_store(store, op)
                if sync == "always" and not cut_done():
                    acked = lsn  # returned: durable
                if i == OPS * 2 // 3:  # past the first roll, so the checkpoint trims the log
                    lsn = store.checkpoint()["lsn"]  # returned: the log up to lsn is durable
                    if not cut_done():
                        acked = max(acked, lsn)
                if sync != "always":
                    r = rng.random()
                    if r < 0.3:
                        store._journal.flush(fsync=sync == "interval")  # a background tick
                    elif r < 0.45:
                        lsn = store.sync()
                        if not cut_done():
                            acked = lsn
        finally:
            store.close()
    return sent, acked


@functools.lru_cache(maxsize=None)
def _calls_of_a_run(tmp, sync):
    root = os.path.join(tmp, f"probe-{sync}")
    os.makedirs(root)
    fs = FaultFS(root)
    _write(fs, sync, 0, random.Random(0))
    shutil.rmtree(root)
    return fs.calls


def _beyond_the_tail_rule(damage) -> bool:
    """Damage to the log that FORMAT.md's torn-tail rule does not call a
    crash's: random bytes, or a later write on disk while part of an earlier
    one is not. tolerate-tail refuses it (CorruptionError) by design."""
    return any(note.get("reordered") or note.get("trashed", (0, 0, ""))[2] == "random"
               for path, note in damage.items() if path.startswith("wal" + os.sep))


def _one_run(tmp, mode, sync, run):
    """Cut the power once and judge; returns (strict outcome, tolerate-tail outcome)."""
    rng = random.Random(f"{mode}/{sync}/{run}")
    root, copy = os.path.join(tmp, f"{run}"), os.path.join(tmp, f"{run}-cut")
    os.makedirs(root)
    # Some runs go to the end: the cut comes after the last op (before close).
    cut = _CutAt(rng.randint(1, _calls_of_a_run(tmp, sync) * 11 // 10), mode, rng, copy)
    cut.fs = fs = FaultFS(root, before=cut)
    sent, acked = _write(fs, sync, run, rng, cut)
    if not cut.done:
        fs.power_loss(mode, rng, copy)
    shutil.rmtree(root)
    spare = copy + "-spare"
    shutil.copytree(copy, spare)

    def judge(recovery, allow_error=False):
        return check_recovery(lambda: Store.open(copy, recovery=recovery, sync="none",
                                                 segment_bytes=SEGMENT_BYTES),
                              sent, acked, allow_error=allow_error)
    strict = judge("strict", allow_error=True)
    if strict["outcome"] == "error":
        assert strict["error"].split(":")[0] in ("TornTailError", "CorruptionError"), strict
    shutil.rmtree(copy)
    shutil.copytree(spare, copy)
    tolerant = judge("tolerate-tail", allow_error=_beyond_the_tail_rule(fs.damage))
    if tolerant["outcome"] == "error":
        assert tolerant["error"].startswith("CorruptionError"), tolerant
        shutil.rmtree(copy)
        os.rename(spare, copy)
        judge("point-in-time")  # nothing acknowledged is lost: it is all before the damage
        tolerant["outcome"] = "refused"
    shutil.rmtree(copy)
    shutil.rmtree(spare, ignore_errors=True)
    return strict["outcome"], tolerant["outcome"]


@pytest.mark.timeout(600)
@pytest.mark.parametrize("mode", MODES)
def test_power_loss_keeps_every_acknowledged_write(tmp_path, mode):
    tally, failures = Counter(), []
    for run in range(RUNS // len(MODES)):
        sync = SYNCS[run % len(SYNCS)]
        try:
            strict, tolerant = _one_run(str(tmp_path), mode, sync, run)
            tally["strict " + strict] += 1
            tally["tolerate-tail " + tolerant] += 1
        except AssertionError as e:
            failures.append(f"{mode} sync={sync} run={run}: {e}")
    runs = RUNS // len(MODES)
    print(f"\n{mode}: {runs} runs; tolerate-tail: {tally['tolerate-tail recovered']} recovered, "
          f"{tally['tolerate-tail refused']} refused beyond the torn-tail rule (point-in-time "
          f"recovered them); strict: {tally['strict recovered']} recovered, "
          f"{tally['strict error']} typed errors; {len(failures)} failures")
    assert not failures, "\n".join(failures[:10])
