"""routing.py: the stable key point, per-path stats, compare sampling and
the automatic revert, over real tables (a KVTable of the core under test,
and a DictTable) as the old table and the shadow."""

from __future__ import annotations

import os
import subprocess
import sys
import threading

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rehydrate.errors import ConfigError, MigrationError
from rehydrate.kinds import DictTable
from rehydrate.routing import (
    LATENCY_CHECK_EVERY,
    PathStats,
    Routing,
    check_auto_revert,
    key_point,
)

# Pinned: another implementation must route these keys the same way
# (docs/FORMAT.md, "Key point").
PINNED = [
    (0, 0.7961720920500888),
    (1, 0.28408249062080226),
    ("a", 0.19476246270556652),
    (b"a", 0.3126575440902032),
    ("user:42", 0.8815873634624721),
]


def _fill(table, core, pairs):
    for k, v in pairs:
        table._put_raw(core.encode_key(k), core.pack_value(v))
    return table


@pytest.fixture(params=["kv", "dict"])
def tables(request, core):
    """(old, shadow): old holds k -> k, the shadow k -> k * 10, k in 0..999."""
    make = core.KVTable if request.param == "kv" else (lambda: DictTable(core, "t"))
    old = _fill(make(), core, ((k, k) for k in range(1000)))
    shadow = _fill(make(), core, ((k, k * 10) for k in range(1000)))
    return old, shadow


def _routing(core, old, shadow, *, failed=frozenset(), reverts=None, **kw):
    reverts = [] if reverts is None else reverts
    kw.setdefault("seed", 7)
    return Routing("m1", "t", old, shadow, encode_key=core.encode_key,
                   failed=lambda k: k in failed, on_revert=reverts.append, **kw)


# -- the key point ----------------------------------------------------------------

def test_pinned_points_on_this_core(core):
    for key, point in PINNED:
        assert key_point(core.encode_key(key)) == point


def test_points_are_the_same_in_another_process(core_env):
    code = ("from rehydrate import _backend; from rehydrate.routing import key_point; "
            "c = _backend.core(); print(repr([key_point(c.encode_key(k)) for k in "
            "(0, 1, 'a', b'a', 'user:42')]))")
    env = dict(core_env, PYTHONHASHSEED="12345")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                         text=True, timeout=60, check=True).stdout
    assert eval(out) == [p for _, p in PINNED]


def test_points_are_in_range_and_spread(core):
    points = [key_point(core.encode_key(k)) for k in range(20000)]
    assert all(0.0 <= p < 1.0 for p in points)
    # 20000 keys below 0.3: binomial mean 6000, sd ~65; 6 sd either side.
    below = sum(p < 0.3 for p in points)
    assert 6000 - 400 < below < 6000 + 400


def test_fraction_routes_about_that_share(core, tables):
    old, shadow = tables
    r = _routing(core, old, shadow)
    view = r.view()
    r.set_fraction(0.25)
    on_new = [key_point(core.encode_key(k)) < 0.25 for k in range(1000)]
    assert [view[k] for k in range(1000)] == [k * 10 if n else k for k, n in enumerate(on_new)]
    new = sum(on_new)
    # binomial(1000, 0.25): mean 250, sd ~13.7; 6 sd.
    assert 250 - 83 < new < 250 + 83
    assert r.status()["paths"]["new"]["reads"] == new
    assert r.status()["paths"]["old"]["reads"] == 1000 - new


@settings(max_examples=50, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.floats(0.0, 1.0), min_size=2, max_size=6),
       st.lists(st.one_of(st.integers(-2**63, 2**63 - 1), st.text(max_size=8),
                          st.binary(max_size=8)), min_size=1, max_size=30))
def test_a_key_never_moves_back_as_the_fraction_grows(core, fractions, keys):
    old = _fill(core.KVTable(), core, ((k, "old") for k in keys))
    shadow = _fill(core.KVTable(), core, ((k, "new") for k in keys))
    r = _routing(core, old, shadow)
    view = r.view()
    seen_new: set = set()
    for f in sorted(fractions):
        r.set_fraction(f)
        now_new = {k for k in keys if view[k] == "new"}
        assert seen_new <= now_new
        assert now_new == {k for k in keys if key_point(core.encode_key(k)) < f}
        seen_new = now_new
    r.set_fraction(1.0)
    assert all(view[k] == "new" for k in keys)


# -- the view ---------------------------------------------------------------------

def test_view_reads_route_and_iteration_is_the_old_tables(core, tables):
    old, shadow = tables
    r = _routing(core, old, shadow)
    view = r.view()
    assert view[5] == 5 and view.get(5) == 5 and 5 in view
    r.set_fraction(1.0)
    assert view[5] == 50 and view.get(5) == 50 and 5 in view
    assert view.get(5000, "no") == "no" and 5000 not in view
    with pytest.raises(KeyError):
        view[5000]
    assert len(view) == 1000 and sorted(view) == list(range(1000))
    assert view.to_dict() == {k: k for k in range(1000)}
    assert dict(view.items()) == view.to_dict()
    assert sorted(view.values()) == list(range(1000))


def test_a_key_the_function_dropped_is_absent_on_the_new_path(core, tables):
    old, shadow = tables
    shadow._delete_raw(core.encode_key(3))
    r = _routing(core, old, shadow)
    r.set_fraction(1.0)
    view = r.view()
    assert 3 not in view and view.get(3) is None
    with pytest.raises(KeyError):
        view[3]
    assert r.status()["paths"]["new"]["errors"] == 0


def test_a_bad_key_is_refused_as_the_table_refuses_it(core, tables):
    old, shadow = tables
    r = _routing(core, old, shadow)
    r.set_fraction(1.0)
    view = r.view()
    assert view.get(1.5, "d") == "d" and 1.5 not in view
    with pytest.raises((KeyError, TypeError)):
        view[1.5]


def test_failed_keys_serve_the_old_value_and_count_errors(core, tables):
    old, shadow = tables
    r = _routing(core, old, shadow, failed={1, 2, 3})
    r.set_fraction(1.0)
    view = r.view()
    assert [view[k] for k in (1, 2, 3, 4)] == [1, 2, 3, 40]
    new = r.status()["paths"]["new"]
    assert new["errors"] == 3 and new["reads"] == 4
    assert r.reverted is None  # no thresholds asked for


def test_path_stats_snapshot():
    s = PathStats()
    assert s.snapshot() == {"reads": 0, "errors": 0, "latency_mean_s": None,
                            "latency_p50_s": None, "latency_p99_s": None}
    for ns in range(1, 101):
        s.record(ns * 1000, error=ns % 10 == 0)
    snap = s.snapshot()
    assert snap["reads"] == 100 and snap["errors"] == 10
    assert snap["latency_p50_s"] == pytest.approx(50e-6)
    assert snap["latency_p99_s"] == pytest.approx(99e-6)
    assert snap["latency_mean_s"] == pytest.approx(50.5e-6)
    for _ in range(5000):  # the window keeps the recent ones only
        s.record(1000)
    assert s.snapshot()["latency_p99_s"] == pytest.approx(1e-6)


# -- compare ------------------------------------------------------------------------

def test_compare_sampling_calls_compare_on_about_that_share(core, tables):
    old, shadow = tables
    calls = []

    def compare(a, b):
        calls.append((a, b))
        return b == a * 10

    r = _routing(core, old, shadow, compare=compare, sample=0.2)
    r.set_fraction(0.5)
    view = r.view()
    for _ in range(5):
        for k in range(1000):
            view[k]
    # binomial(5000, 0.2): mean 1000, sd ~28; 6 sd.
    assert 1000 - 170 < len(calls) < 1000 + 170
    assert all(b == a * 10 for a, b in calls)
    s = r.status()
    assert s["compared"] == len(calls) and s["divergences"] == 0
    assert s["divergence_rate"] == 0.0


def test_compare_sampling_is_deterministic_with_a_seed(core, tables):
    old, shadow = tables
    runs = []
    for _ in range(2):
        seen = []
        r = _routing(core, old, shadow, compare=lambda a, b: seen.append(a) or True,
                     sample=0.1, seed=99)
        r.set_fraction(0.5)
        for k in range(1000):
            r.view()[k]
        runs.append(seen)
    assert runs[0] == runs[1] and runs[0]


def test_no_compare_without_a_function_or_with_sample_zero(core, tables):
    old, shadow = tables
    r = _routing(core, old, shadow, compare=lambda a, b: False, sample=0.0)
    r.set_fraction(1.0)
    for k in range(500):
        r.view()[k]
    assert r.status()["compared"] == 0
    r2 = _routing(core, old, shadow, sample=1.0)
    for k in range(500):
        r2.view()[k]
    assert r2.status()["compared"] == 0


def test_a_compare_that_raises_counts_and_never_breaks_the_read(core, tables):
    old, shadow = tables

    def compare(a, b):
        raise RuntimeError("broken compare")

    r = _routing(core, old, shadow, compare=compare, sample=1.0,
                 auto_revert={"max_divergence_rate": 0.0, "min_reads": 1})
    r.set_fraction(0.5)
    view = r.view()
    assert [view[k] for k in range(100)] == [k * 10 if key_point(core.encode_key(k)) < 0.5
                                           else k for k in range(100)]
    s = r.status()
    assert s["compare_errors"] == 100 and s["compared"] == 0 and s["divergences"] == 0
    assert s["reverted"] is None


def test_old_path_reads_of_keys_the_shadow_has_are_compared(core, tables):
    old, shadow = tables
    shadow._delete_raw(core.encode_key(7))
    seen = []
    r = _routing(core, old, shadow, compare=lambda a, b: seen.append((a, b)) or True, sample=1.0)
    view = r.view()  # fraction 0: every read on the old path
    view[6], view[7]
    assert seen == [(6, 60)]


# -- thresholds -----------------------------------------------------------------------

def test_max_errors_trips_once_with_its_reason(core, tables):
    old, shadow = tables
    reverts: list = []
    failed = set(range(10))
    r = _routing(core, old, shadow, failed=failed, reverts=reverts,
                 auto_revert={"max_errors": 4})
    r.set_fraction(1.0)
    view = r.view()
    for k in range(4):
        view[k]
    assert reverts == [] and r.fraction == 1.0
    assert view[4] == 4  # the 5th error: old value, and the revert
    assert reverts == ["max_errors: 5 errors > 4"]
    assert r.fraction == 0.0 and r.reverted == reverts[0]
    s = r.status()
    assert s["reverted"] == reverts[0] and s["revert_ms"] is not None and s["revert_ms"] >= 0
    for k in range(10):  # all on the old path now; no second revert
        assert view[k] == k
    assert reverts == ["max_errors: 5 errors > 4"]
    with pytest.raises(MigrationError) as e:
        r.set_fraction(0.5)
    assert e.value.reason == "reverted" and e.value.migration == "m1"
    assert r.fraction == 0.0


def test_max_errors_zero_trips_on_the_first_error(core, tables):
    old, shadow = tables
    reverts: list = []
    r = _routing(core, old, shadow, failed={5}, reverts=reverts, auto_revert={"max_errors": 0})
    r.set_fraction(1.0)
    r.view()[4]
    assert reverts == []
    r.view()[5]
    assert reverts == ["max_errors: 1 errors > 0"]


def test_max_divergence_rate_waits_for_min_reads_then_trips(core, tables):
    old, shadow = tables
    reverts: list = []
    # Keys below 20 diverge, the rest agree.
    r = _routing(core, old, shadow, reverts=reverts, sample=1.0,
                 compare=lambda a, b: a >= 20 and b == a * 10,
                 auto_revert={"max_divergence_rate": 0.1, "min_reads": 50})
    r.set_fraction(1.0)
    view = r.view()
    for k in range(49):  # rate 20/49 > 0.1, but fewer than min_reads compared
        view[k]
    assert reverts == []
    view[49]
    assert len(reverts) == 1 and reverts[0].startswith("max_divergence_rate: 0.4 divergence rate > 0.1")
    assert r.status()["divergences"] == 20 and r.status()["compared"] == 50


def test_divergence_under_the_rate_does_not_trip(core, tables):
    old, shadow = tables
    reverts: list = []
    r = _routing(core, old, shadow, reverts=reverts, sample=1.0,
                 compare=lambda a, b: a != 999,
                 auto_revert={"max_divergence_rate": 0.01, "min_reads": 10})
    r.set_fraction(1.0)
    for k in range(1000):
        r.view()[k]
    assert reverts == [] and r.status()["divergences"] == 1


class SlowShadow(dict):
    """A shadow whose reads take longer than the old table's (a busy loop,
    not a sleep: the latency is work, as a slow decode would be)."""

    def get(self, key, default=None):
        x = 0
        for i in range(3000):
            x += i
        return super().get(key, default)


def test_max_latency_ratio_trips_after_both_paths_have_min_reads(core, tables):
    old, _ = tables
    shadow = SlowShadow({k: k * 10 for k in range(1000)})
    reverts: list = []
    r = _routing(core, old, shadow, reverts=reverts,
                 auto_revert={"max_latency_ratio": 2.0, "min_reads": 300})
    view = r.view()
    r.set_fraction(1.0)
    for k in range(LATENCY_CHECK_EVERY * 3):  # new reads only: the old path has none
        view[k % 1000]
    assert reverts == []
    r2 = _routing(core, old, shadow, reverts=reverts,
                  auto_revert={"max_latency_ratio": 2.0, "min_reads": 300})
    for k in range(400):  # old path first
        r2.view()[k]
    r2.set_fraction(1.0)
    for k in range(LATENCY_CHECK_EVERY * 3):
        r2.view()[k % 1000]
    assert len(reverts) == 1 and reverts[0].startswith("max_latency_ratio: p99 ")
    assert "> 2" in reverts[0]


def test_revert_is_once_and_manual_revert_has_no_revert_ms(core, tables):
    old, shadow = tables
    reverts: list = []
    r = _routing(core, old, shadow, reverts=reverts)
    r.set_fraction(0.7)
    r.revert("operator")
    r.revert("again")
    assert reverts == ["operator"] and r.fraction == 0.0
    assert r.status()["reverted"] == "operator" and r.status()["revert_ms"] is None


def test_reads_from_threads_while_the_fraction_changes_and_a_revert(core, tables):
    old, shadow = tables
    reverts: list = []
    r = _routing(core, old, shadow, reverts=reverts, compare=lambda a, b: True, sample=0.5)
    view = r.view()
    stop = threading.Event()
    problems: list = []

    def reader():
        try:
            while not stop.is_set():
                for k in range(0, 1000, 7):
                    if view[k] not in (k, k * 10):
                        problems.append(k)
        except Exception as e:  # noqa: BLE001
            problems.append(e)

    threads = [threading.Thread(target=reader) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        for i in range(200):
            r.set_fraction((i % 11) / 10)
        r.revert("done")
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=60)
    assert problems == [] and reverts == ["done"]
    assert all(view[k] == k for k in range(1000))


# -- bad arguments --------------------------------------------------------------------

@pytest.mark.parametrize("spec", [
    "x", 5, [("max_errors", 1)],
    {"max_errors": -1}, {"max_errors": 1.5}, {"max_errors": True}, {"max_errors": "3"},
    {"max_divergence_rate": -0.1}, {"max_divergence_rate": 1.5},
    {"max_divergence_rate": float("nan")}, {"max_divergence_rate": True},
    {"max_latency_ratio": 1.0}, {"max_latency_ratio": 0.5}, {"max_latency_ratio": float("inf")},
    {"min_reads": 0}, {"min_reads": 2.0}, {"max_error": 1},
])
def test_bad_thresholds_are_config_errors(spec):
    with pytest.raises(ConfigError):
        check_auto_revert(spec)


def test_good_thresholds():
    assert check_auto_revert(None) == {"min_reads": 100}
    assert check_auto_revert({"max_errors": 0, "max_divergence_rate": 1,
                              "max_latency_ratio": 1.5, "min_reads": 1}) == {
        "max_errors": 0, "max_divergence_rate": 1.0, "max_latency_ratio": 1.5, "min_reads": 1}


@pytest.mark.parametrize("f", [-0.01, 1.01, float("nan"), "0.5", None, True])
def test_bad_fractions_are_config_errors(core, tables, f):
    old, shadow = tables
    r = _routing(core, old, shadow)
    r.set_fraction(0.3)
    with pytest.raises(ConfigError):
        r.set_fraction(f)
    assert r.fraction == 0.3


@pytest.mark.parametrize("sample", [-0.5, 2, "x"])
def test_bad_sample_is_a_config_error(core, tables, sample):
    old, shadow = tables
    with pytest.raises(ConfigError):
        _routing(core, old, shadow, sample=sample)


def test_the_routing_module_knows_no_store():
    path = os.path.join(os.path.dirname(__file__), "..", "src", "rehydrate", "routing.py")
    with open(path) as f:
        text = f.read()
    assert "store" not in [w.strip(".,()") for w in text.split() if w.startswith("import")]
    assert "from .store" not in text and "from . import store" not in text


# -- gates: migration_at(id, f < 1) and a live run's fraction ------------------------

def test_migration_at_below_one_opens_at_the_routed_fraction_and_closes_on_revert():
    from rehydrate import gates as G

    fraction: dict = {}
    told: list = []
    host = G.GateHost(None, "/x", lambda t: "ready", lambda p: True,
                      lambda m: "pending", lambda: 0.0, lambda: None, lambda: None,
                      lambda event, *a: told.append((event, *a)),
                      migration_fraction=lambda m: fraction.get(m))
    gates = G.Gates(host)
    half = gates.add("half", [G.migration_at("m1", 0.5)])
    whole = gates.add("whole", [G.migration_at("m1", 1.0)])
    assert not half and half.why() == ["migration 'm1' not at 0.5 (not applied)"]
    fraction["m1"] = 0.25
    gates.migration_routed("m1")
    assert not half and half.why() == ["migration 'm1' not at 0.5 (routed 0.25)"]
    fraction["m1"] = 0.5
    gates.migration_routed("m1")
    assert half and told == [("on_gate_open", "half")]
    fraction["m1"] = 1.0
    gates.migration_routed("m1")
    assert not whole  # all of it: only once completed (in the ledger)
    fraction["m1"] = 0.0  # reverted
    gates.migration_routed("m1")
    assert not half and told[-1][:2] == ("on_gate_close", "half")
