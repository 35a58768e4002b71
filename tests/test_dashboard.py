"""examples/grafana-dashboard.json: an importable Grafana dashboard whose
every PromQL expression names only metrics a store exports
(docs/observability.md, "Grafana dashboard")."""

from __future__ import annotations

import json
import os
import re

import pytest
from helpers.promql import exported_metric_names, metric_names

from rehydrate import observe

DASHBOARD = os.path.join(os.path.dirname(__file__), "..", "examples", "grafana-dashboard.json")


def _dashboard():
    with open(DASHBOARD) as f:
        return json.load(f)


def _panels(dash):
    for p in dash["panels"]:
        yield p
        yield from p.get("panels", [])  # a collapsed row's


def _exprs(dash):
    """(where, expr) for every panel target and every query variable."""
    for p in _panels(dash):
        for t in p.get("targets", []):
            yield f"panel {p['title']!r} {t['refId']}", t["expr"]
    for v in dash["templating"]["list"]:
        if v["type"] == "query":
            yield f"variable {v['name']!r}", v["definition"]


def test_the_extraction_finds_names_and_only_names():
    assert metric_names('sum by (store, kind) (rate(a_total{store=~"$store",x="b c"}[5m]))') \
        == {"a_total"}
    assert metric_names("a - b{s=\"1\"} offset 5m > bool 1e3") == {"a", "b"}
    assert metric_names('increase(c{store=~"$store"}[$__rate_interval]) * 60') == {"c"}
    assert metric_names("label_values(rehydrate_ready, store)") == {"rehydrate_ready", "store"}


@pytest.fixture
def exported(tmp_path):
    return exported_metric_names(tmp_path)


def test_every_panel_reads_metrics_a_store_exports(exported):
    dash = _dashboard()
    exprs = list(_exprs(dash))
    assert len(exprs) >= 15
    missing = {}
    for where, expr in exprs:
        names = metric_names(expr) - {"store"}  # label_values(METRIC, store)
        assert names, f"{where}: no metric in {expr!r}"
        if names - exported:
            missing[where] = sorted(names - exported)
    assert missing == {}
    # And a name no store exports is caught.
    assert metric_names("rate(rehydrate_no_such_metric[5m])") - exported


def test_every_family_a_panel_names_is_one_the_collector_describes():
    described = set()
    for family in observe.StoresCollector().describe():
        described.add(family.name)
        if family.type == "counter":
            described.add(family.name + "_total")
    for where, expr in _exprs(_dashboard()):
        assert metric_names(expr) - {"store"} <= described, where


def test_the_dashboard_is_importable_and_covers_what_it_should():
    dash = _dashboard()
    assert isinstance(dash["schemaVersion"], int) and dash["schemaVersion"] >= 39
    assert dash["uid"] and dash["title"]
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    store = variables["store"]
    assert store["type"] == "query" and store["datasource"]["uid"] == "${datasource}"
    assert store["multi"] and store["includeAll"]
    ids = [p["id"] for p in _panels(dash)]
    assert len(ids) == len(set(ids))
    for p in _panels(dash):
        assert {"h", "w", "x", "y"} <= set(p["gridPos"])
        assert p["gridPos"]["x"] + p["gridPos"]["w"] <= 24
        if p["type"] != "row":
            assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
            for t in p["targets"]:
                assert '{store=~"$store"}' in t["expr"], (p["title"], t["expr"])
    used = {n for _, expr in _exprs(dash) for n in metric_names(expr)}
    for name in ("rehydrate_warmup_phase_seconds", "rehydrate_warmup_progress",
                 "rehydrate_ready", "rehydrate_replay_records_per_second",
                 "rehydrate_standby_lag_seconds", "rehydrate_archive_lag_seconds",
                 "rehydrate_intake_pending_records", "rehydrate_intake_pending_bytes",
                 "rehydrate_last_lsn", "rehydrate_durable_lsn", "rehydrate_checkpoints_total"):
        assert name in used, name
    assert any(re.search(r"rate\(rehydrate_last_lsn\b", e) for _, e in _exprs(dash))


def test_the_online_migrations_row_covers_paths_latency_divergences_fraction_progress():
    dash = _dashboard()
    rows = [p for p in dash["panels"] if p["type"] == "row"]
    assert "Online migrations" in [r["title"] for r in rows]
    # The row's panels: those below it, up to the next row.
    start = dash["panels"].index(next(r for r in rows if r["title"] == "Online migrations"))
    below = []
    for p in dash["panels"][start + 1:]:
        if p["type"] == "row":
            break
        below.append(p)
    used = {n for p in below for t in p["targets"] for n in metric_names(t["expr"])}
    for name in ("rehydrate_migration_reads_total", "rehydrate_migration_read_latency_seconds",
                 "rehydrate_migration_divergences_total", "rehydrate_migration_fraction",
                 "rehydrate_migration_progress"):
        assert name in used, name
    # Reads per path: the expression keeps the path label apart.
    assert any("rehydrate_migration_reads_total" in t["expr"] and "path" in t["expr"]
               for p in below for t in p["targets"])
