"""Online migrations under crashes and I/O faults (docs/migrations.md,
"Online migrations: crashes and I/O errors"; docs/reliability.md T6).

- A SIGKILL at each file operation of a cutover (complete_migration, then
  close): the reopen has the old state (ledger without the entry, the
  migration pending) or the new one (the entry, its digest_after), never a
  mix, and the run's MANIFEST record agrees.
- An EIO at each file operation of a cutover: a typed error or success;
  then old or new, never a mix, in memory and on disk.
- kill -9 at random moments of a run (building, routed, reverting,
  completing) while a child writes: the oracle says no acknowledged write
  is lost, and the state is the old version's or the new one's.
"""

from __future__ import annotations

import itertools
import json
import os
import random
import shutil
import signal
import subprocess
import sys
from collections import Counter

import pytest

import rehydrate as rh
from rehydrate import RehydrateError, Store
from rehydrate.digest import format_digest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "helpers"))

from helpers import online_cutover as OC  # noqa: E402
from helpers.fault_at_call import FaultAtCall, eio  # noqa: E402
from helpers.tier import scale  # noqa: E402

HERE = os.path.join(os.path.dirname(__file__), "helpers")
CUTOVER = os.path.join(HERE, "online_cutover.py")
RANDOM_KILL = os.path.join(HERE, "online_kill.py")


def _run(env, *args, check=True):
    return subprocess.run([sys.executable, CUTOVER, *args], env=env, capture_output=True,
                          text=True, check=check)


def _new_state(tmp_path, base, env):
    """The digest a finished cutover gives (and the ledger entry's)."""
    probe = str(tmp_path / "probe")
    shutil.copytree(base, probe)
    r = _run(env, probe, "1000000000")
    assert "completed" in r.stdout, r.stdout + r.stderr
    got = json.loads(_run(env, probe, "judge").stdout)
    shutil.rmtree(probe)
    return got["digest"]


def _judge_old_or_new(got, old, new, what):
    """The reopen is exactly old or exactly new; the runs' records agree."""
    state = (got["digest"], got["ledger"])
    assert state in ((old, 0), (new, 1)), (what, got)
    is_new = state[1] == 1
    assert got["pending"] is (not is_new), (what, got)
    assert (got["digest_again"], len(got["ledger_again"])) == state, (what, got)
    mine = [r for r in got["runs"] if r["id"] == OC.MID]
    assert len(mine) == 1 and mine[0]["run"] == 1, (what, mine)
    record = mine[0]
    if is_new:
        # The record went in the committing MANIFEST write itself.
        assert record["outcome"] == "completed" and record["state"] == "completed", (what,
                                                                                    record)
    else:
        # Cut before the commit: a live record (the next open with the
        # migration rebuilds it: on_restart "rebuild"), or one the close
        # ended as reverted.
        assert record["outcome"] in (None, "reverted"), (what, record)
        after = [r for r in got["runs_after"] if r["id"] == OC.MID]
        assert after[0]["outcome"] in ("rebuilt", "reverted"), (what, after)
        if record["outcome"] is None:
            assert after[0]["outcome"] == "rebuilt" and after[0]["state"] == "reverted"
    return "new" if is_new else "old"


def test_sigkill_at_every_file_operation_of_a_cutover_leaves_old_or_new(tmp_path, core_env):
    base = str(tmp_path / "base")
    old = _run(core_env, base, "prepare").stdout.strip()
    new = _new_state(tmp_path, base, core_env)
    assert new != old
    outcomes = Counter()
    # The CI tier kills at every other operation, the cores taking turns (the
    # native core the odd ones, the pure the even), so the two cover each
    # operation once between them; the full tier kills at every operation on
    # both.
    step = scale(2, 1)
    start = 2 if step == 2 and core_env.get("REHYDRATE_NO_EXTENSIONS") else 1
    for n in itertools.count(start, step):
        path = str(tmp_path / f"kill{n}")
        shutil.copytree(base, path)
        r = _run(core_env, path, str(n), check=False)
        got = json.loads(_run(core_env, path, "judge").stdout)
        outcomes[_judge_old_or_new(got, old, new, (n, r.stdout, r.stderr[-2000:]))] += 1
        shutil.rmtree(path)
        if r.returncode == 0:
            assert "completed" in r.stdout, r.stdout
            break
        assert r.returncode == -signal.SIGKILL, (n, r.returncode, r.stderr[-2000:])
    assert outcomes["old"] and outcomes["new"] and n > 10
    print(f"\nonline cutover: {sum(outcomes.values()) - 1} kills up to operation {n}; then "
          f"{outcomes['old']} old, "
          f"{outcomes['new']} new")


def _best_effort(hit) -> bool:
    """HISTORY, HINTS and migration-runs.json are written best effort: an
    error there is dropped by design."""
    name, args = hit
    return name in ("rename", "replace", "open", "write") and any(
        os.path.basename(str(a)).startswith(("HISTORY", "HINTS", "migration-runs.json"))
        for a in args)


def test_an_io_error_at_each_file_operation_of_a_cutover_leaves_old_or_new(tmp_path):
    base = str(tmp_path / "base")
    old = OC.prepare(base)
    probe = shutil.copytree(base, str(tmp_path / "probe"))
    with OC.open_caught_up(probe) as s:
        s.complete_migration(OC.MID)
        new = format_digest(s.digest())
    assert new != old
    outcomes, errors, failstops = Counter(), 0, 0
    for n in itertools.count(1):
        path = shutil.copytree(base, str(tmp_path / f"eio{n}"))
        s = OC.open_caught_up(path)
        before = format_digest(s.digest())
        fault = FaultAtCall(n, eio)
        try:
            with fault:
                try:
                    s.complete_migration(OC.MID)
                except RehydrateError:
                    assert fault.hit is not None
                    errors += 1
                    # Not committed: the store serves the old version (the
                    # run still live), or it failed stop.
                    if s.failed:
                        failstops += 1
                    else:
                        assert format_digest(s.digest()) == before, (n, fault.hit)
                        state = s.migration_status(OC.MID)["state"]
                        assert state in ("caught_up", "reverted"), (n, fault.hit, state)
                        assert not any(e["id"] == OC.MID for e in s.ledger)
                        # Writes go on into the old version (mirrored while
                        # the run lives: reads routed to 1.0 see fn's value).
                        s.put("t", 10_000, 5)
                        assert s.table("t")[10_000] == (
                            {"v": 5, "twice": 10} if state == "caught_up" else 5)
                        s.delete("t", 10_000)
                except Exception as e:
                    raise AssertionError(f"EIO at {fault.hit}: untyped {e!r}") from e
                else:
                    assert fault.hit is None or _best_effort(fault.hit), \
                        f"EIO at {fault.hit}: complete_migration succeeded"
                    assert format_digest(s.digest()) == new
        finally:
            try:
                s.close()
            except RehydrateError:
                pass
        with Store.open(path) as r:  # no migrations: nothing runs
            got = (format_digest(r.digest()), len(r.ledger))
        assert got in ((old, 0), (new, 1)), (n, fault.hit, got)
        outcomes["new" if got[1] else "old"] += fault.hit is not None
        with OC.open_caught_up(path) if got[1] == 0 else Store.open(
                path, migrations=OC.migrations()) as r:
            if got[1] == 0:
                r.complete_migration(OC.MID)  # still pending: it can run again
            assert (format_digest(r.digest()), len(r.ledger)) == (new, 1), (n, fault.hit)
        shutil.rmtree(path)
        if fault.hit is None:
            break
    assert outcomes["old"] and outcomes["new"] and n > 10
    print(f"\nonline cutover: {n - 1} EIOs, {errors} typed errors ({failstops} fail-stops); "
          f"then {outcomes['old']} old, {outcomes['new']} new")


# ------------------------------------------------ kill -9 at random moments
# Where a kill lands: after a number of lines (acks) at random, or a few
# lines after one of the run's steps (the last one while it still runs).
_MOMENTS = (None, "started", "routed", "routed_all", "completed", "reverted")
RUNS = scale(16, 200)  # per core


def _kill_at(path, seed, scenario, on_restart, moment, offset, env):
    """Run the writer, SIGKILL it ``offset`` lines after ``moment`` (or
    after ``offset`` lines); returns (highest acknowledged LSN, events
    seen, whether it was killed)."""
    p = subprocess.Popen([sys.executable, RANDOM_KILL, path, str(seed), scenario, on_restart],
                         env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    acked, events, countdown, killed = 0, [], None if moment else offset, False
    try:
        for line in p.stdout:
            words = line.split()
            if words[0] == "ack":
                acked = max(acked, int(words[1]))
            elif words[0] == "event":
                events.append(words[1])
                if words[1] == moment:
                    countdown = offset
            if countdown is not None:
                if countdown <= 0:
                    p.send_signal(signal.SIGKILL)
                    killed = True
                    break
                countdown -= 1
        # Acks printed before the kill count too.
        for line in p.stdout.read().splitlines():
            words = line.split()
            if words and words[0] == "ack":
                acked = max(acked, int(words[1]))
            elif words and words[0] == "event":
                events.append(words[1])
        rc = p.wait(timeout=120)
        assert rc in (0, -signal.SIGKILL), (rc, p.stderr.read()[-3000:])
        killed = rc != 0
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
        p.stdout.close()
        p.stderr.close()
    return acked, events, killed


def _judge_kill(path, seed, acked, events, on_restart):
    """The oracle, with the migration where the ledger puts it; the run's
    record per on_restart. Returns "old" or "new"."""
    from rehydrate.testing import check_recovery
    from rehydrate.testing.oracle import OracleFailure, prefix_ends

    from helpers import online_kill as OK

    man = rh.manifest.read(path)
    entry = next((e for e in man.get("ledger") or [] if e["id"] == OK.MID), None)
    ops = OK.ops(seed)
    ends = prefix_ends(ops)
    if entry is not None:
        at = ends.index(entry["lsn"] - 1) + 1  # writers were held off: between two ops
        ops = ops[:at] + [("migrate", "t", OK.migrate_rows)] + ops[at:]
        ends = prefix_ends(ops)
    sent = next((i for i, e in enumerate(ends) if e >= acked), len(ops)) + 1 + 2
    candidates = [ops[:sent]]
    if entry is None and "routed_all" in events:
        # Cut inside the cutover after its marker record (a no-op at the
        # next LSN) but before the MANIFEST commit: the old state, one LSN on.
        marker = next((i for i, e in enumerate(ends) if e >= acked), len(ops)) + 1
        candidates.append(ops[:marker] + [("migrate", "t", lambda rows: None)])
    failures = []
    for marker, candidate in enumerate(candidates):
        try:
            check_recovery(lambda: Store.open(path, migrations=OK.migrations()), candidate,
                           acked)
            break
        except OracleFailure as e:
            failures.append(str(e))
    else:
        raise AssertionError(f"seed {seed} events {events}: {failures}")
    old = "old, the marker logged" if marker else "old"
    records = [r for r in rh.manifest.read(path).get("migration_runs") or []
               if r["id"] == OK.MID]
    if "started" in events:
        assert records, (seed, events)
    # The open ended every run the kill left live. A run it rebuilt is live
    # again until the check's close, which leaves it so (a restart is one):
    # only the last record may be live, and only when it is a rebuild's.
    for r in records[:-1] if records and records[-1].get("restarts") else records:
        assert r["outcome"] is not None, (seed, r)
    if records and records[-1]["outcome"] is None:
        assert on_restart == "rebuild" and len(records) >= 2 \
            and records[-2]["outcome"] == "rebuilt", (seed, records)
        records = records[:-1]
    if entry is not None:
        assert records[-1]["outcome"] == "completed", (seed, records)
        return "new"
    if records:
        last = records[-1]
        if "reverted" in events:
            assert last["outcome"] == "reverted" and last["reason"] == "operator", (seed, last)
        elif on_restart == "abandon":
            assert last["outcome"] == "abandoned", (seed, last)
        else:
            assert last["outcome"] in ("rebuilt", "reverted"), (seed, last)
    return old


@pytest.mark.reliability
@pytest.mark.timeout(scale(300, 3600))
def test_kill_9_at_random_moments_of_a_run_loses_no_acknowledged_write(tmp_path, core_env):
    rng = random.Random(20240617)
    outcomes, moments, kills = Counter(), Counter(), 0
    for i in range(RUNS):
        seed = 500 + i
        scenario = rng.choice(["complete", "complete", "revert"])
        on_restart = rng.choice(["rebuild", "abandon"])
        moment = rng.choice(_MOMENTS)
        offset = rng.randrange(0, 4) if moment else rng.randrange(0, 460)
        path = str(tmp_path / f"run{i}")
        acked, events, killed = _kill_at(path, seed, scenario, on_restart, moment, offset,
                                         core_env)
        kills += killed
        moments[events[-1] if events else "prefill"] += 1
        outcomes[_judge_kill(path, seed, acked, events, on_restart)] += 1
        shutil.rmtree(path)
    assert kills >= RUNS // 2
    print(f"\nonline runs: {RUNS} runs, {kills} killed (last step seen: {dict(moments)}); "
          f"outcomes {dict(outcomes)}; no acknowledged write lost")


def test_kill_9_right_after_each_step_of_a_run(tmp_path, core_env):
    """One kill a line after each step, both restart policies (the CI tier
    of the sweep above, deterministic)."""
    outcomes = Counter()
    for i, (moment, scenario, on_restart) in enumerate([
            ("started", "complete", "abandon"), ("routed", "complete", "rebuild"),
            ("routed_all", "complete", "rebuild"), ("completed", "complete", "abandon"),
            ("reverted", "revert", "rebuild")]):
        path = str(tmp_path / f"run{i}")
        acked, events, killed = _kill_at(path, 900 + i, scenario, on_restart, moment, 0,
                                         core_env)
        assert killed and moment in events, (moment, events)
        outcomes[_judge_kill(path, 900 + i, acked, events, on_restart)] += 1
    assert outcomes["new"] >= 1 and outcomes["old"] + outcomes["old, the marker logged"] >= 3
