"""The online-migration surface of observe.py: metrics from the status dicts
of a store's runs, and ``GET /migrations`` / ``/migrations/<id>``.

The store side is ``store.migrations_status()``; here a store whose runs
are given (a small object, or a real open store whose migrations_status
returns the given dicts), so the surface is tested on the documented shape."""

from __future__ import annotations

import json

import pytest
from helpers.http_probe import get, metric

from rehydrate import Store
from rehydrate.observe import MIGRATION_STATES, latest_runs, migration_samples, respond


def _status(mid="m1", run=1, state="caught_up", **kw):
    st = {
        "id": mid, "table": "users", "from_version": 1, "to_version": 2, "state": state,
        "progress": 1.0, "built": 10, "total": 10, "mirrored": 3, "build_errors": 0,
        "fraction": 0.25,
        "paths": {"old": {"reads": 90, "errors": 0, "latency_mean_s": 1e-6,
                          "latency_p50_s": 1e-6, "latency_p99_s": 2e-6},
                  "new": {"reads": 30, "errors": 2, "latency_mean_s": 2e-6,
                          "latency_p50_s": 2e-6, "latency_p99_s": 5e-6}},
        "compared": 12, "divergences": 1, "compare_errors": 3, "divergence_rate": 1 / 12,
        "reason": None, "revert_ms": None, "started_at": 1.0, "ended_at": None, "run": run,
        "restarts": 0, "on_restart": "rebuild", "build_rate": 100.0,
    }
    st.update(kw)
    return st


class FakeStore:
    def __init__(self, runs, path="/fake"):
        self.runs, self.path = runs, path

    def migrations_status(self):
        return [dict(r) for r in self.runs]


def _by_name(samples):
    return {(name, extra): value for name, extra, value in samples}


def test_samples_of_a_live_run():
    s = _by_name(migration_samples([_status()]))
    assert s[("rehydrate_migration_reads", ("m1", "old"))] == 90
    assert s[("rehydrate_migration_reads", ("m1", "new"))] == 30
    assert s[("rehydrate_migration_errors", ("m1", "new"))] == 2
    assert s[("rehydrate_migration_read_latency_seconds", ("m1", "new", "0.99"))] == 5e-6
    assert s[("rehydrate_migration_read_latency_seconds", ("m1", "old", "0.5"))] == 1e-6
    assert s[("rehydrate_migration_divergences", ("m1",))] == 1
    assert s[("rehydrate_migration_compare_errors", ("m1",))] == 3
    assert s[("rehydrate_migration_fraction", ("m1",))] == 0.25
    assert s[("rehydrate_migration_progress", ("m1",))] == 1.0
    assert [s[("rehydrate_migration_state", ("m1", st))] for st in MIGRATION_STATES] == \
        [0, 1, 0, 0]
    assert s[("rehydrate_migration_reverts", ("m1",))] == 0


def test_a_reverted_run_counts_one_revert_and_no_reads_leave_no_latency():
    st = _status(state="reverted", reason="max_errors: 5 errors > 4", fraction=0.0)
    st["paths"]["new"] = {"reads": 0, "errors": 0, "latency_mean_s": None,
                          "latency_p50_s": None, "latency_p99_s": None}
    s = _by_name(migration_samples([st]))
    assert s[("rehydrate_migration_reverts", ("m1",))] == 1
    assert s[("rehydrate_migration_state", ("m1", "reverted"))] == 1
    assert ("rehydrate_migration_read_latency_seconds", ("m1", "new", "0.99")) not in s


def test_one_series_set_per_migration_the_latest_run():
    runs = [_status(run=1, state="reverted"), _status(run=2, state="building"),
            _status("m0", run=1, state="completed", paths=None)]
    assert [(r["id"], r["run"]) for r in latest_runs(runs)] == [("m0", 1), ("m1", 2)]
    s = _by_name(migration_samples(runs))
    assert s[("rehydrate_migration_state", ("m1", "building"))] == 1
    assert s[("rehydrate_migration_reverts", ("m1",))] == 0
    assert s[("rehydrate_migration_reads", ("m0", "old"))] == 0  # a recorded run: no counters
    assert len([k for k in s if k[0] == "rehydrate_migration_fraction"]) == 2


def test_a_store_without_online_migrations_has_no_migration_samples(store_dir):
    with Store.open(store_dir) as s:
        names = {m.name for f in s.metrics().collect() for m in f.samples}
    assert not any(n.startswith("rehydrate_migration_") for n in names)


@pytest.fixture
def store_with_runs(store_dir):
    runs = [_status(), _status("m/2", state="reverted", reason="max_errors: 5 errors > 4")]
    with Store.open(store_dir) as s:
        s.migrations_status = lambda: [dict(r) for r in runs]
        yield s


def test_a_stores_metrics_page_has_its_runs(store_with_runs):
    with store_with_runs.serve_http(port=0) as server:
        status, text = get(server.port, "/metrics")
    assert status == 200
    assert metric(text, "rehydrate_migration_fraction") in (0.25, 0.0)
    lines = [ln for ln in text.splitlines() if ln.startswith("rehydrate_migration_")]
    assert any(ln.startswith('rehydrate_migration_reads_total{') and 'migration="m1"' in ln
               and 'path="new"' in ln and ln.endswith(" 30.0") for ln in lines)
    assert any(ln.startswith('rehydrate_migration_reverts_total{') and 'migration="m/2"' in ln
               and ln.endswith(" 1.0") for ln in lines)
    assert any(ln.startswith('rehydrate_migration_read_latency_seconds{') and
               'quantile="0.99"' in ln for ln in lines)


def test_http_migrations_list_and_one(store_with_runs):
    with store_with_runs.serve_http(port=0) as server:
        status, body = get(server.port, "/migrations")
        assert status == 200
        runs = json.loads(body)
        assert [r["id"] for r in runs] == ["m1", "m/2"]
        status, body = get(server.port, "/migrations/m1")
        assert status == 200 and json.loads(body)["fraction"] == 0.25
        status, body = get(server.port, "/migrations/m%2F2")
        assert status == 200 and json.loads(body)["reason"] == "max_errors: 5 errors > 4"
        status, body = get(server.port, "/migrations/nope")
        assert status == 404 and "nope" in json.loads(body)["error"]


def test_respond_with_small_stores():
    one = FakeStore([_status()])
    r = respond((one,), None, "GET", "/migrations")
    assert r.status == 200 and json.loads(r.body)[0]["id"] == "m1"
    assert dict(r.headers)["Content-Type"] == "application/json"
    r = respond((one,), None, "HEAD", "/migrations/m1")
    assert r.status == 200 and r.body == b""
    assert respond((one,), None, "POST", "/migrations/m1").status == 405
    assert respond((one,), None, "GET", "/migrations/").status == 404
    empty = FakeStore([])
    assert json.loads(respond((empty,), None, "GET", "/migrations").body) == []
    two = FakeStore([_status("m2")], path="/other")
    both = json.loads(respond((one, two), None, "GET", "/migrations").body)
    assert [(r["store"], r["id"]) for r in both] == [("/fake", "m1"), ("/other", "m2")]
    r = respond((one, two), None, "GET", "/migrations/m2")
    assert r.status == 200 and json.loads(r.body)["store"] == "/other"
