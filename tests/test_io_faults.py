"""I/O errors at the libc boundary, injected by libfiu (T5, docs/reliability.md).

A child (helpers/fiu_writer.py) runs with libfiu's POSIX wrappers preloaded
and fails the Nth write(), fsync() or rename() of its workload (sync="always",
segment rolls, a checkpoint that trims the log, a reopen): only that call
("once") or every call from it on ("forever"); for a short write, the Nth
write() writes fewer bytes than asked. The full tier sweeps every N, the CI
tier a sample that still fails each call site at least once. Each run must
either go on correctly or stop with a typed error, and a failed write must
fail-stop (nothing acknowledged after it); then a clean open here is judged
by the oracle.
"""

from __future__ import annotations

import collections
import concurrent.futures
import errno
import itertools
import json
import os
import subprocess
import sys

import pytest

from rehydrate import Store
from rehydrate.testing import check_recovery

from helpers import crash_sequence
from helpers.tier import FULL, missing_tool

pytestmark = pytest.mark.reliability

WRITER = os.path.join(os.path.dirname(__file__), "helpers", "fiu_writer.py")
PRELOAD = ("/usr/lib/fiu/fiu_posix_preload.so", "/usr/local/lib/fiu/fiu_posix_preload.so")
SEED = 1
CI_STRIDE = 3  # the CI tier fails every 3rd call, and the first and last at each site
SCENARIOS = {  # name: (libfiu point, errno of the failed call; 0 for a short write)
    "write-EIO": ("posix/io/rw/write", errno.EIO),
    "write-ENOSPC": ("posix/io/rw/write", errno.ENOSPC),
    "short-write": ("posix/io/rw/write/reduce", 0),
    "fsync-EIO": ("posix/io/sync/fsync", errno.EIO),
    "rename-EIO": ("posix/io/dir/rename", errno.EIO),
}
# Sites that write best effort by design (HINTS, HISTORY): losing them only
# slows an open (HISTORY also holds the crash-loop guard's count: a lost
# write there at worst runs a failing step once more, docs/warmup.md).
BEST_EFFORT = {"hints.write", "plan.record_open", "history.write"}
TYPED = {"StoreFailedError", "StorageIOError"}


def _env(core_env):
    preload = next((p for p in PRELOAD if os.path.exists(p)), None)
    if preload is None:
        missing_tool("libfiu is not installed (Debian's fiu-utils; `make fiu` installs it)")
    # No jemalloc background thread in pyarrow: its malloc (which libfiu
    # wraps) racing the dlopen of pyarrow deadlocks libfiu 1.1 (helpers/fiu_writer.py).
    return dict(core_env, LD_PRELOAD=preload, PYTHONDONTWRITEBYTECODE="1",
                JE_ARROW_MALLOC_CONF="background_thread:false")


def _sweep(base, point, err, runs, env):
    """The result of each of ``runs``, from one writer process. One that hangs
    (libfiu can deadlock, see _env) is started again once, from the run it
    hung in: a hang in the store would hang again there."""
    done, hung = [], None
    while len(done) < len(runs):
        out = subprocess.run([sys.executable, WRITER, str(base), str(SEED), point, str(err),
                              *runs[len(done):]], env=env, capture_output=True, text=True)
        done += [json.loads(line) for line in out.stdout.splitlines()]
        if out.returncode != 0:
            assert "Timeout" in out.stderr and hung is None, out.stderr
            hung = runs[len(done)]
            print(f"\nthe writer hung in run {hung}, started again:\n{out.stderr}")
    return done


def _chosen(calls):
    """The Ns to fail: every one in the full tier; in the CI tier, the first
    and the last call at each (phase, site) and every CI_STRIDE-th."""
    if FULL:
        return list(range(1, len(calls) + 1))
    first = {tuple(c): n for n, c in reversed(list(enumerate(calls, 1)))}
    last = {tuple(c): n for n, c in enumerate(calls, 1)}
    return sorted({*first.values(), *last.values(), *range(CI_STRIDE, len(calls) + 1, CI_STRIDE)})


def _judge(name, run, ops, clean):
    """Check one run; returns its outcome (for the summary)."""
    where = f"{name} {run['run']}, failed calls {run['fired'][:3]}"
    events = run["events"]
    for phase, kind, refuses in events:
        assert kind in TYPED, f"{where}: {kind} from {phase}"
        if phase == "write":
            assert kind == "StoreFailedError" and refuses, f"{where}: no fail-stop"
    if name == "short-write":  # write_all writes the rest: nothing may fail
        assert not events and (run["sent"], run["acked"]) == clean, where
    noticed = {phase for phase, _, _ in events}
    for phase, site in run["fired"]:
        assert phase in noticed or site in BEST_EFFORT or name == "short-write", \
            f"{where}: the failed call in {site} went unnoticed"
    verdict = check_recovery(lambda: Store.open(run["dir"]), ops[:run["sent"]], run["acked"])
    if not events:
        return "went on"
    if noticed == {"checkpoint"}:
        return "checkpoint failed, store went on"
    return f"{events[-1][1]} in {events[-1][0]}" + (
        "" if verdict["lsn"] == run["acked"] else " (unacked tail recovered)")


@pytest.mark.parametrize("name", SCENARIOS)
@pytest.mark.timeout(600)  # room for one writer started again
def test_the_nth_failing_call_never_loses_an_ack_or_corrupts(tmp_path, core_env, name):
    point, err = SCENARIOS[name]
    env = _env(core_env)
    count = _sweep(tmp_path / "count", point, err, ["count:0"], env)[0]
    sites = {tuple(c) for c in count["calls"]}
    if point == "posix/io/sync/fsync":  # the workload rolls the log and trims it
        assert {("write", "wal.roll"), ("checkpoint", "checkpointing.trim_log")} <= sites, sites
    ns = _chosen(count["calls"])
    with concurrent.futures.ThreadPoolExecutor(2) as pool:  # a writer on each core
        sweeps = pool.map(lambda mode: _sweep(tmp_path / mode, point, err,
                                              [f"{mode}:{n}" for n in ns], env),
                          ("once", "forever"))
        runs = [run for sweep in sweeps for run in sweep]
    ops = list(itertools.islice(crash_sequence.ops(SEED), count["sent"]))
    outcomes = collections.Counter()
    for run in runs:
        mode = run["run"].split(":")[0]
        outcomes[mode, _judge(name, run, ops, (count["sent"], count["acked"]))] += 1
    print(f"\n{name}: {len(count['calls'])} calls, N swept {len(ns)} "
          f"({'all' if FULL else 'CI sample'}):")
    for (mode, outcome), k in sorted(outcomes.items()):
        print(f"  {mode:8} {outcome}: {k}")
    # Each N is at most the workload's call count, and the workload is the
    # same every run: a run whose failure never fired tested nothing.
    unfired = [run["run"] for run in runs if not run["fired"]]
    assert not unfired, f"{name}: no call failed in runs {unfired[:10]}"
    if name != "short-write":  # a short write is retried: nothing is to fail
        assert any(outcome != "went on" for (_mode, outcome) in outcomes), outcomes
