"""Smoke test of ``benchmarks/handoff.py --quick``: the baselines (a Redis
pair, a cold restart) run, the report and the JSON have their shape, and
every gap is positive and finite. No timing is asserted: the machine is
shared and noisy (docs/benchmarks.md); the figures come from full runs."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys

import pytest

import rehydrate as rh

from helpers.tier import missing_tool

BENCH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                     "benchmarks", "handoff.py")
HAVE_REDIS = shutil.which("redis-server") is not None
NO_REDIS = "redis-server is not installed (Debian's redis-server; `make redis` installs it)"


def _run(tmp_path, *args: str) -> tuple[subprocess.CompletedProcess[str], dict]:
    out = tmp_path / "handoff.json"
    r = subprocess.run([sys.executable, BENCH, "--quick", "--json", str(out), *args],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    return r, json.loads(out.read_text())


def test_quick_baselines(core_name, tmp_path):
    if core_name != "native":  # the benchmark runs the installed (native) core itself
        pytest.skip("the benchmark's workers use the default core; one run is enough")
    png = tmp_path / "handoff.png"
    r, res = _run(tmp_path, "--systems", "redis_pair,cold_restart", "--no-lag",
                  "--plot", str(png))
    assert res["benchmark"] == "handoff" and res["keys"] == 20_000 and res["handoffs"] == 5
    expected = {"cold_restart", "redis_pair"} if HAVE_REDIS else {"cold_restart"}
    assert set(res["systems"]) == expected
    if not HAVE_REDIS:
        assert res["skipped"]["redis_pair"].startswith("skipped: redis-server")
    for name, s in res["systems"].items():
        assert "error" not in s, s.get("error")
        g = s["gap"]
        assert g["n"] == 5 and len(s["gaps_ms"]) == 5 and not s["failures"]
        assert all(0 < x < math.inf for x in s["gaps_ms"]), (name, s["gaps_ms"])
        assert g["min_ms"] <= g["median_ms"] <= g["p95_ms"] <= g["p99_ms"] <= g["max_ms"]
        assert s["writes"] > 0 and s["rate_achieved"] > 0
        tl = s["timeline"]
        assert tl and len(tl["t_ms"]) == len(tl["latency_ms"]) > 0
        assert tl["gap_ms"] in s["gaps_ms"]
        assert "target" not in s  # baselines: compared to, not held to a target
        assert f"\n{name} " in "\n" + r.stdout
    # The state survived every handoff: nothing was lost or duplicated.
    assert res["systems"]["cold_restart"]["final_check"]["keys"] == 20_000
    if HAVE_REDIS:
        red = res["systems"]["redis_pair"]["final_check"]
        assert red["dbsize"] == [20_000, 20_000] and red["unsafe_handoffs"] == 0
        assert res["systems"]["redis_pair"]["handoff_info"][0]["replicas_acked"] == 1
    assert "median" in r.stdout and "p99" in r.stdout
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    if not HAVE_REDIS:  # the rest was checked; the Redis pair was not
        missing_tool(NO_REDIS)


def test_quick_rehydrate_handoffs_and_lag(core_name, tmp_path):
    if core_name != "native":
        pytest.skip("the benchmark's workers use the default core; one run is enough")
    r, res = _run(tmp_path, "--systems", "rehydrate_local,rehydrate_http",
                  "--lag-interval-ms", "5")
    assert set(res["systems"]) == {"rehydrate_local", "rehydrate_http"}, res["skipped"]
    for name, s in res["systems"].items():
        assert "error" not in s, s.get("error")
        assert len(s["gaps_ms"]) == 5 and not s["failures"], s["failures"]
        assert all(0 < x < math.inf for x in s["gaps_ms"]), (name, s["gaps_ms"])
        assert s["target"]["median_ms"] > 0  # held to a target, reported as a ratio
        assert f"\n{name} " in "\n" + r.stdout
    assert set(res["lag"]) == {"rehydrate_local@5ms", "rehydrate_http@5ms"}, res["lag"]
    for lag in res["lag"].values():
        assert isinstance(lag, dict), lag
        assert lag["sync_interval_ms"] == 5 and 0 < lag["median_ms"] <= lag["p99_ms"]
