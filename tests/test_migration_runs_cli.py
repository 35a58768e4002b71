"""``rehydrate migrate status DIR`` shows online-migration runs: the
MANIFEST's ``migration_runs`` records and the live runs a serving store
writes to ``migration-runs.json``, which is untrusted input."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from rehydrate import Store
from rehydrate import manifest as _manifest
from rehydrate.migration_runs import RUNS_FILE, read_live

LIVE = {
    "id": "users-v2", "table": "users", "from_version": 1, "to_version": 2, "state": "caught_up",
    "progress": 1.0, "built": 500, "total": 500, "mirrored": 12, "build_errors": 1,
    "fraction": 0.25,
    "paths": {"old": {"reads": 900, "errors": 0, "latency_mean_s": 1e-6,
                      "latency_p50_s": 1e-6, "latency_p99_s": 3e-6},
              "new": {"reads": 300, "errors": 2, "latency_mean_s": 2e-6,
                      "latency_p50_s": 2e-6, "latency_p99_s": 7.5e-6}},
    "compared": 40, "divergences": 1, "compare_errors": 0, "divergence_rate": 0.025,
    "reason": None, "revert_ms": None, "started_at": 1.0, "ended_at": None, "run": 2,
    "restarts": 1, "on_restart": "rebuild", "build_rate": 1000.0,
}


def _cli(*args, env):
    return subprocess.run([sys.executable, "-m", "rehydrate", *map(str, args)],
                          capture_output=True, text=True, env=env, timeout=120)


@pytest.fixture
def made(store_dir):
    with Store.open(store_dir) as s:
        s.put("users", 1, {"n": 1})
    man = _manifest.read(store_dir)
    man["migration_runs"] = [
        {"id": "users-v2", "table": "users", "run": 1, "state": "reverted",
         "reason": "max_errors: 5 errors > 4", "started_at": 1.0, "ended_at": 2.0,
         "on_restart": "rebuild", "outcome": "reverted"},
        "not a run",
    ]
    _manifest.write(store_dir, man)
    return store_dir


def test_status_shows_recorded_and_live_runs(made, core_env):
    with open(os.path.join(made, RUNS_FILE), "w") as f:
        json.dump([LIVE], f)
    run = _cli("migrate", "status", made, env=core_env)
    assert run.returncode == 0, run.stderr
    out = run.stdout
    assert "online runs recorded: 1" in out
    assert "users-v2 run 1: table users, reverted, outcome reverted " \
           "(max_errors: 5 errors > 4)" in out
    assert "live runs: 1" in out
    assert "users-v2 run 2: table users v1 -> v2, caught_up, progress 100.0% " \
           "(500 of 500 built), fraction 0.25" in out
    assert "new path: 300 reads, 2 errors, p99 7.5 us" in out
    assert "old path: 900 reads, 0 errors, p99 3.0 us" in out
    assert "compared 40, divergences 1, compare errors 0" in out
    js = _cli("migrate", "status", made, "--json", env=core_env)
    assert js.returncode == 0, js.stderr
    runs = json.loads(js.stdout)["runs"]
    assert runs["live"] == [LIVE] and runs["live_problem"] is None
    assert [r["run"] for r in runs["recorded"]] == [1]


def test_status_without_a_live_file_says_so(made, core_env):
    run = _cli("migrate", "status", made, env=core_env)
    assert run.returncode == 0, run.stderr
    assert f"live runs: none (no {RUNS_FILE}" in run.stdout


BAD = {
    "empty": b"",
    "truncated": json.dumps([LIVE]).encode()[:100],
    "not-utf8": b"\xff\xfe[]",
    "an object": b'{"id": "x"}',
    "no id": b'[{"state": "building"}]',
    "id not str": b'[{"id": 5}]',
    "binary": bytes(range(256)),
}


@pytest.mark.parametrize("name", sorted(BAD))
def test_a_damaged_live_file_is_reported_not_raised(made, core_env, name):
    with open(os.path.join(made, RUNS_FILE), "wb") as f:
        f.write(BAD[name])
    live, problem = read_live(made)
    assert live is None and problem.startswith(f"{RUNS_FILE} is damaged")
    run = _cli("migrate", "status", made, env=core_env)
    assert run.returncode == 0, run.stderr
    assert "Traceback" not in run.stderr
    assert f"live runs: none ({RUNS_FILE} is damaged" in run.stdout


def test_odd_field_types_in_a_live_run_show_as_unknown(made, core_env):
    odd = {"id": "m", "state": ["x"], "progress": "lots", "paths": {"new": 5}, "fraction": None,
           "reason": 7}
    with open(os.path.join(made, RUNS_FILE), "w") as f:
        json.dump([odd], f)
    run = _cli("migrate", "status", made, env=core_env)
    assert run.returncode == 0, run.stderr
    assert "m run ?: table ? v? -> v?, ?, progress ? (? of ? built), fraction ?" in run.stdout
    assert "new path: 0 reads, 0 errors, p99 -" in run.stdout


def test_the_migrate_help_texts_mention_online_runs(core_env):
    def text(*args):
        run = _cli(*args, "--help", env=core_env)
        assert run.returncode == 0, run.stderr
        return " ".join(run.stdout.split())  # (argparse wraps lines)

    top = text("migrate")
    assert "online migration runs" in top and "store.start_migration" in top
    status = text("migrate", "status")
    assert "online migration runs" in status and "live runs" in status
    assert "online runs" in text()
