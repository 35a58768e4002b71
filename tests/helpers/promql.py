"""The metric names a PromQL expression reads, and the names stores export:
what the Grafana dashboard's and the alert rules' tests check against each
other (tests/test_dashboard.py, tests/test_alert_rules.py)."""

from __future__ import annotations

import re

# PromQL words that are not metric names.
_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "offset", "bool",
             "and", "or", "unless", "inf", "nan"}


def metric_names(expr: str) -> set[str]:
    """The metric names an expression reads: what is left once label
    matchers, ranges, strings, variables, grouping clauses, function names
    and numbers are taken out."""
    e = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # strings (in matchers too)
    e = re.sub(r"\{[^}]*\}", " ", e)  # label matchers
    e = re.sub(r"\[[^\]]*\]", " ", e)  # ranges, subqueries
    e = re.sub(r"\$\{?\w+\}?", " ", e)  # dashboard variables
    e = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", e)
    names = set()
    for m in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", e):
        word = m.group(0)
        follows = e[m.end():].lstrip()
        if word.lower() in _KEYWORDS or follows.startswith("("):
            continue  # a keyword or a function
        if m.start() > 0 and (e[m.start() - 1].isdigit() or e[m.start() - 1] == "."):
            continue  # part of a number (1e3, 5m)
        names.add(word)
    return names


def exported_metric_names(tmp_path) -> set[str]:
    """Every sample name the stores export: a primary with an archive (writes,
    a checkpoint, the archive caught up) and a standby following it."""
    from rehydrate import Store

    path = str(tmp_path / "state")
    names = set()
    with Store.open(path, sync="always",
                    archive=f"file://{tmp_path / 'archive'}", archive_every_s=0.05) as s:
        for i in range(20):
            s.put("t", i, i)
        s.checkpoint()
        s.put("t", "x", 1)
        with Store.open_standby(path) as standby:
            for store in (s, standby):
                for family in store.metrics().collect():
                    names |= {sample.name for sample in family.samples}
    if hasattr(Store, "start_migration"):
        names |= _online_migration_names(str(tmp_path / "online"))
    return names


def _online_migration_names(path) -> set[str]:
    """The names a store with an online migration exports: one run,
    started, caught up, routed, read and aborted (a revert)."""
    import threading

    from rehydrate import Migrations, Store, Warmup

    with Store.open(path) as s:
        for i in range(20):
            s.put("t", i, i)
    mig = Migrations()

    @mig.migration("t-v2", table="t", to_version=2, per_record=True, online=True)
    def double(key, value):
        return value * 2

    caught_up = threading.Event()

    class Listener:
        def on_migration_state(self, store, status):
            if status["state"] == "caught_up":
                caught_up.set()

    names: set[str] = set()
    with Store.open(path, migrations=mig, warmup=Warmup(listeners=[Listener()])) as s:
        s.start_migration("t-v2")
        assert caught_up.wait(60), s.migration_status("t-v2")
        s.route("t-v2", 0.5)
        view = s.table("t")
        for i in range(20):  # reads on both paths: their latency is exported
            view[i]
        s.abort_migration("t-v2", reason="alert-rule check")
        for family in s.metrics().collect():
            names |= {sample.name for sample in family.samples}
    return names
