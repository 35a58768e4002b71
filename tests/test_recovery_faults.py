"""T6: a crash or an I/O error during recovery, a checkpoint or a migration,
then recover again.

Recovery writes too (evidence into quarantine/, a torn tail cut, a torn
segment removed, segments moved aside): a SIGKILL, an EIO or a power cut
at each of its file operations in turn, then an open with no fault, must
give the state a clean recovery gives, keep every piece of evidence it
keeps, and leave a log that opens clean. An EIO at each file operation of
a checkpoint or a migration must raise a typed error (or fail-stop the
store), and a reopen gives the old state or the new one, never a mix.
"""

from __future__ import annotations

import itertools
import os
import random
import shutil
import signal
import subprocess
import sys
from collections import Counter

import pytest

from rehydrate import RehydrateError, Store
from rehydrate import manifest as _manifest
from rehydrate.digest import format_digest
from rehydrate.testing import apply_to_store, check_recovery
from rehydrate.testing.faultfs import FaultFS
from rehydrate.wal import encode_segment_header, segment_name

from helpers import checkpoint_crash, corrupt as C, crash_sequence, migration_crash
from helpers.fault_at_call import FaultAtCall, eio

pytestmark = pytest.mark.reliability

SEED = 3
SEGMENT_BYTES = 4096
CRASH_AT = os.path.join(os.path.dirname(__file__), "helpers", "crash_at_call.py")


# ------------------------------------------------------------ damaged logs
def _torn_tail(d):
    C.as_crashed(d)  # a torn tail is what a crash leaves
    seg = C.segment_paths(d)[-1]
    C.truncate(seg, C.frames_of(seg)[-1].end - 3)


def _torn_segment(d):
    # A newest segment with part of its header (its rename made, not its
    # data), and the tmp file of a segment creation that never finished.
    C.as_crashed(d)
    first = C.frames_of(C.segment_paths(d)[-1])[-1]
    next_lsn = first.first_lsn + first.count
    with open(os.path.join(d, "wal", segment_name(next_lsn)), "wb") as f:
        f.write(encode_segment_header(next_lsn)[:10])
    with open(os.path.join(d, "wal", segment_name(next_lsn + 1) + ".tmp"), "wb") as f:
        f.write(b"\0" * 7)


def _bad_frame(d):
    frame = C.frames_of(C.segment_paths(d)[1])[2]
    C.flip_bit(frame.segment, frame.offset + 40, 1)


SCENARIOS = [(_torn_tail, "tolerate-tail"), (_torn_segment, "tolerate-tail"),
             (_bad_frame, "point-in-time"), (_bad_frame, "skip-corrupted")]
IDS = ["torn-tail", "torn-segment", "point-in-time", "skip-corrupted"]


def _damaged(tmp_path, damage) -> str:
    base = str(tmp_path / "base")
    with Store.open(base, sync="always", segment_bytes=SEGMENT_BYTES) as s:  # a frame an op
        for op in itertools.islice(crash_sequence.ops(SEED), 150):
            apply_to_store(s, op)
    assert len(C.segment_paths(base)) >= 3
    damage(base)
    return base


def _copy(src, dst) -> str:
    shutil.copytree(src, str(dst))
    return str(dst)


def _quarantine(path) -> dict:
    q = os.path.join(path, "quarantine")
    return {n: open(os.path.join(q, n), "rb").read()
            for n in (os.listdir(q) if os.path.isdir(q) else []) if not n.endswith(".tmp")}


def _state(path, mode):
    """(LSN, digest, quarantine) after an open of ``path`` under ``mode``."""
    with Store.open(path, recovery=mode) as s:
        return s.lsn, s.digest(), _quarantine(path)


def _judge(path, mode, clean, what):
    """An open with no fault gives the clean recovery's state (judged by the
    oracle where the state is a prefix of the log), keeps all of its
    evidence, and the log it leaves opens clean."""
    lsn, digest, evidence = clean
    try:
        if mode != "skip-corrupted":
            check_recovery(lambda: Store.open(path, recovery=mode),
                           crash_sequence.ops_up_to(SEED, lsn), lsn)
        got = _state(path, mode)
        assert got[:2] == (lsn, digest), f"state {got[:2]}, a clean recovery's {(lsn, digest)}"
        lost = {n for n in evidence if got[2].get(n) != evidence[n]}
        assert not lost, f"evidence lost or changed: {sorted(lost)}"
        if mode != "skip-corrupted":  # (skip-corrupted leaves the bad frame in place)
            with Store.open(path, recovery="strict") as s:
                assert s.recovery_report.problems == []
    except AssertionError as e:
        raise AssertionError(f"{what}: {e}") from e


# ------------------------------------------------------------ recovery
@pytest.mark.parametrize("damage,mode", SCENARIOS, ids=IDS)
def test_a_kill_at_each_file_operation_of_a_recovery_then_the_same_state(
        tmp_path, core_env, damage, mode):
    base = _damaged(tmp_path, damage)
    clean = _state(_copy(base, tmp_path / "clean"), mode)
    for n in itertools.count(1):
        path = _copy(base, tmp_path / f"kill{n}")
        r = subprocess.run([sys.executable, CRASH_AT, path, str(SEED), str(SEGMENT_BYTES),
                            str(n), "0", mode], env=core_env, capture_output=True, text=True,
                           timeout=120)
        assert r.returncode in (0, -signal.SIGKILL), r.stderr
        _judge(path, mode, clean, f"killed before file operation {n}")
        shutil.rmtree(path)
        if r.returncode == 0:  # the open (and close) needed fewer calls
            break
    assert n > 5
    print(f"\n{damage.__name__[1:]}, {mode}: {n - 1} kills, each then recovered the clean state")


def _best_effort(hit) -> bool:
    """HISTORY and HINTS are written best effort (docs/warmup.md, hints.py):
    an error there is dropped by design."""
    name, args = hit
    return name == "rename" and os.path.basename(args[1]) in ("HISTORY", "HINTS")


@pytest.mark.parametrize("damage,mode", SCENARIOS, ids=IDS)
def test_an_io_error_at_each_file_operation_of_a_recovery_then_the_same_state(
        tmp_path, damage, mode):
    base = _damaged(tmp_path, damage)
    clean = _state(_copy(base, tmp_path / "clean"), mode)
    errors, dropped = 0, 0
    for n in itertools.count(1):
        path = _copy(base, tmp_path / f"eio{n}")
        fault = FaultAtCall(n, eio)
        try:
            with fault:  # the open, and the close after it
                Store.open(path, recovery=mode).close()
        except RehydrateError:
            assert fault.hit is not None
            errors += 1
        except Exception as e:
            raise AssertionError(f"EIO at {fault.hit}: an untyped {e!r}") from e
        else:
            assert fault.hit is None or _best_effort(fault.hit), \
                f"EIO at {fault.hit}: the open and close succeeded"
            dropped += fault.hit is not None
        _judge(path, mode, clean, f"EIO at file operation {n} {fault.hit}")
        shutil.rmtree(path)
        if fault.hit is None:
            break
    assert errors > 5
    print(f"\n{damage.__name__[1:]}, {mode}: {n - 1} EIOs, {errors} typed errors, {dropped} "
          "dropped (best effort); each then recovered the clean state")


@pytest.mark.parametrize("damage,mode", SCENARIOS, ids=IDS)
def test_a_power_cut_at_each_file_operation_of_a_recovery_then_the_same_state(
        tmp_path, damage, mode):
    # What the disk holds then (rehydrate.testing.faultfs, directories
    # rolled back to their last fsync too), opened again.
    base = _damaged(tmp_path, damage)
    clean = _state(_copy(base, tmp_path / "clean"), mode)
    for n in itertools.count(1):
        path, cut = _copy(base, tmp_path / f"run{n}"), str(tmp_path / f"cut{n}")

        def before(calls, name, n=n):
            if calls == n:
                fs.power_loss("no_dir_sync", random.Random(n), cut)
        with FaultFS(path, before=before) as fs:
            Store.open(path, recovery=mode).close()
        if fs.calls < n:
            break
        _judge(cut, mode, clean, f"power cut before file operation {n}")
        shutil.rmtree(path)
        shutil.rmtree(cut)
    assert n > 5
    print(f"\n{damage.__name__[1:]}, {mode}: {n - 1} power cuts, each then recovered the "
          "clean state")


# ------------------------------------------------------------ checkpoint
def test_an_io_error_at_each_file_operation_of_a_checkpoint_leaves_old_or_new(tmp_path):
    base = str(tmp_path / "base")
    checkpoint_crash.prepare(base)
    with Store.open(base, sync="always", segment_bytes=SEGMENT_BYTES) as s:
        checkpoint_crash.more_log(s)
        want = s.digest()
    old = _manifest.read(base)["snapshots"]
    probe = _copy(base, tmp_path / "probe")
    with Store.open(probe, sync="always", segment_bytes=SEGMENT_BYTES) as s:
        s.checkpoint()
    new = _manifest.read(probe)["snapshots"]
    assert new != old
    outcomes = Counter()
    for n in itertools.count(1):
        path = _copy(base, tmp_path / f"eio{n}")
        s = Store.open(path, sync="always", segment_bytes=SEGMENT_BYTES)
        fault = FaultAtCall(n, eio)
        try:
            with fault:
                s.checkpoint()
        except RehydrateError:
            assert fault.hit is not None
        except Exception as e:
            s.close()
            raise AssertionError(f"EIO at {fault.hit}: the checkpoint raised an untyped "
                                 f"{e!r}") from e
        else:
            assert fault.hit is None, f"EIO at {fault.hit}: the checkpoint succeeded"
        if not s.failed:  # (else fail-stop: the log may be at risk, no more writes)
            s.put("t", "after", n)  # the store goes on
        live = s.digest()
        s.close()
        with Store.open(path) as r:
            assert r.recovery_report.problems == [], (n, fault.hit, r.recovery_report.as_dict())
            assert r.digest() == live and (s.failed or live != want), (n, fault.hit)
            if s.failed:
                assert live == want, (n, fault.hit)
        snapshots = _manifest.read(path)["snapshots"]
        assert snapshots in (old, new), (n, fault.hit, snapshots)
        outcomes["new" if snapshots == new else "old"] += fault.hit is not None
        shutil.rmtree(path)
        if fault.hit is None:
            break
    assert outcomes["old"] and outcomes["new"] and n > 10
    print(f"\ncheckpoint: {n - 1} EIOs, each a typed error; then {outcomes['old']} old, "
          f"{outcomes['new']} new")


# ------------------------------------------------------------ migration
def test_an_io_error_at_each_file_operation_of_a_migration_leaves_old_or_new(tmp_path):
    base = str(tmp_path / "base")
    old = migration_crash.prepare(base)
    probe = _copy(base, tmp_path / "probe")
    with Store.open(probe, migrations=migration_crash.migrations()) as s:
        new = format_digest(s.digest())
    assert new != old
    outcomes, errors = Counter(), 0
    for n in itertools.count(1):
        path = _copy(base, tmp_path / f"eio{n}")
        fault = FaultAtCall(n, eio)
        try:
            with fault:
                s = Store.open(path, sync="always", segment_bytes=SEGMENT_BYTES,
                               migrations=migration_crash.migrations())
        except RehydrateError:
            assert fault.hit is not None
            errors += 1
        except Exception as e:
            raise AssertionError(f"EIO at {fault.hit}: the open raised an untyped {e!r}") from e
        else:
            s.close()
            assert fault.hit is None or _best_effort(fault.hit), \
                f"EIO at {fault.hit}: the open succeeded"
        with Store.open(path) as r:  # no migrations: nothing runs
            got = (format_digest(r.digest()), len(r.ledger))
        assert got in ((old, 0), (new, 1)), (n, fault.hit, got)
        outcomes["new" if got[1] else "old"] += fault.hit is not None
        with Store.open(path, migrations=migration_crash.migrations()) as r:
            assert (format_digest(r.digest()), len(r.ledger)) == (new, 1), (n, fault.hit)
        shutil.rmtree(path)
        if fault.hit is None:
            break
    assert outcomes["old"] and outcomes["new"] and n > 10
    print(f"\nmigration: {n - 1} EIOs, {errors} typed errors, the rest dropped (best "
          f"effort); then {outcomes['old']} old, {outcomes['new']} new")
