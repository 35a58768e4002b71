"""OpenTelemetry spans (docs/observability.md, "Traces"): an open's span
under the caller's, a child per phase with what the phase did, error status
on failure, a background open's phases under the caller's span too, and
spans for checkpoints, handoffs and restores. Checked with the real SDK and
its in-memory exporter; and, with the package hidden, that nothing of it is
imported.

The SDK's provider is global and can be set once per process: one fixture
sets it for the session (each xdist worker is a process of its own), and
each test starts with the exporter emptied.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading

import pytest
from helpers import corrupt
from helpers.replication import wait_until
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

import rehydrate
from rehydrate import ArchiveError, Store, Warmup, WarmupError, tracing

PHASES = ["plan", "snapshot", "replay", "migrate", "populate", "prime"]


class _Armed(SimpleSpanProcessor):
    """Exports only while a test here runs: the provider stays set for the
    rest of the worker's session, whose other tests' spans are dropped."""

    def __init__(self, exporter):
        super().__init__(exporter)
        self.exporter = exporter
        self.armed = False

    def on_end(self, span):
        if self.armed:
            super().on_end(span)


@pytest.fixture(scope="session")
def _processor():
    processor = _Armed(InMemorySpanExporter())
    provider = TracerProvider()
    provider.add_span_processor(processor)
    trace.set_tracer_provider(provider)
    # (Set once per process: a provider set before would keep the spans.)
    assert trace.get_tracer_provider() is provider
    return processor


@pytest.fixture
def spans(_processor):
    """A function returning the spans finished since its last call (or the
    test's start)."""
    exporter = _processor.exporter
    exporter.clear()

    def take():
        found = list(exporter.get_finished_spans())
        exporter.clear()
        return found
    _processor.armed = True
    yield take
    _processor.armed = False
    exporter.clear()


@pytest.fixture
def tracer(_processor):
    return trace.get_tracer("tests")


def _named(found, name):
    got = [s for s in found if s.name == name]
    assert len(got) == 1, [s.name for s in found]
    return got[0]


def _attrs(span):
    return {k.removeprefix("rehydrate."): v for k, v in span.attributes.items()}


def _store_with_snapshot_and_log(path, before=50, after=30):
    with Store.open(path) as s:
        for i in range(before):
            s.put("t", i, i)
        snap = s.checkpoint()
        for i in range(after):
            s.incr("c", i % 7, 1)
    return snap["lsn"]


def test_an_open_is_a_span_under_the_callers_with_a_child_per_phase(store_dir, spans, tracer):
    snap_lsn = _store_with_snapshot_and_log(store_dir)
    spans()  # (the writes' open and checkpoint)
    with tracer.start_as_current_span("caller") as caller:
        with Store.open(store_dir) as s:
            lsn, report = s.lsn, s.warmup_report
    found = spans()
    opened = _named(found, "rehydrate.open")
    assert opened.parent is not None
    assert opened.parent.span_id == caller.get_span_context().span_id
    assert opened.context.trace_id == caller.get_span_context().trace_id
    attrs = _attrs(opened)
    assert attrs["path"] == store_dir and attrs["mode"] == "foreground"
    assert attrs["recovery"] == "tolerate-tail"
    assert attrs["lsn"] == lsn == snap_lsn + 30
    assert attrs["duration_s"] > 0 and attrs["predicted_s"] > 0
    assert opened.status.status_code == StatusCode.UNSET
    phases = [s for s in found if s.name.startswith("rehydrate.warmup.")]
    assert [s.name for s in sorted(phases, key=lambda s: s.start_time)] == \
        [f"rehydrate.warmup.{p}" for p in PHASES]
    for p in phases:
        assert p.parent.span_id == opened.context.span_id
        assert opened.start_time <= p.start_time <= p.end_time <= opened.end_time
    entries = {e["name"]: e for e in report["phases"]}
    for name in PHASES:
        a = _attrs(_named(phases, f"rehydrate.warmup.{name}"))
        assert a["phase"] == name and a["problems"] == 0
        assert a["actual_s"] == entries[name]["duration_s"]
    replay = _attrs(_named(phases, "rehydrate.warmup.replay"))
    assert replay["records"] == entries["replay"]["records"] == 30
    assert replay["bytes"] == entries["replay"]["bytes"] > 0
    assert replay["rate"] == entries["replay"]["rate"] > 0
    snapshot = _attrs(_named(phases, "rehydrate.warmup.snapshot"))
    assert snapshot["snapshot_lsn"] == snap_lsn
    for name in ("snapshot", "replay"):  # predicted vs actual
        a = _attrs(_named(phases, f"rehydrate.warmup.{name}"))
        assert a["predicted_s"] == report["plan"]["predicted_phases_s"][name] > 0
    assert "predicted_s" not in _attrs(_named(phases, "rehydrate.warmup.populate"))


def test_an_open_with_no_current_span_is_a_root(store_dir, spans):
    Store.open(store_dir).close()
    assert _named(spans(), "rehydrate.open").parent is None


def test_problems_are_counted_on_the_phase_that_found_them(store_dir, spans):
    with Store.open(store_dir) as s:
        for i in range(10):
            s.put("t", i, i)
    corrupt.as_crashed(store_dir)
    corrupt.append(corrupt.segment_paths(store_dir)[-1], b"\0" * 40)  # a torn tail
    spans()
    with Store.open(store_dir) as s:
        problems = s.recovery_report.problems
    assert [p.kind for p in problems] == ["torn_tail"]
    found = spans()
    replay = _named(found, "rehydrate.warmup.replay")
    assert _attrs(replay)["problems"] == 1
    assert [e.name for e in replay.events] == ["rehydrate.problem"]
    assert replay.events[0].attributes["rehydrate.kind"] == "torn_tail"
    assert _attrs(_named(found, "rehydrate.warmup.snapshot"))["problems"] == 0


def test_a_failing_hook_makes_its_phase_and_the_open_errors(store_dir, spans):
    def broken(store, progress):
        raise RuntimeError("no cache server")

    with pytest.raises(WarmupError):
        Store.open(store_dir, warmup=Warmup(populate=[broken]))
    found = spans()
    populate = _named(found, "rehydrate.warmup.populate")
    opened = _named(found, "rehydrate.open")
    for s in (populate, opened):
        assert s.status.status_code == StatusCode.ERROR
        assert "no cache server" in s.status.description
        assert any(e.name == "exception" and
                   e.attributes["exception.type"].endswith("WarmupError") for e in s.events)
    for name in ("plan", "snapshot", "replay", "migrate"):
        assert _named(found, f"rehydrate.warmup.{name}").status.status_code == StatusCode.UNSET
    assert not [s for s in found if s.name == "rehydrate.warmup.prime"]  # never started


def test_a_phase_over_its_budget_says_how_long_it_ran(store_dir, spans):
    def slow(store, progress):
        assert not wait_until(lambda: False, timeout_s=0.2)

    with pytest.raises(WarmupError):
        Store.open(store_dir, warmup=Warmup(prime=[slow], budgets={"prime": 0.01}))
    prime = _named(spans(), "rehydrate.warmup.prime")
    assert prime.status.status_code == StatusCode.ERROR
    assert "budget" in prime.status.description


def test_what_a_hook_traces_nests_under_its_phase(store_dir, spans, tracer):
    def hook(store, progress):
        with tracer.start_as_current_span("fill the cache"):
            pass

    Store.open(store_dir, warmup=Warmup(populate=[hook])).close()
    found = spans()
    assert _named(found, "fill the cache").parent.span_id == \
        _named(found, "rehydrate.warmup.populate").context.span_id


def test_a_background_opens_phases_nest_under_the_callers_span(store_dir, spans, tracer):
    _store_with_snapshot_and_log(store_dir)
    spans()

    def hook(store, progress):
        with tracer.start_as_current_span("warm the index"):
            pass

    with tracer.start_as_current_span("service start") as caller:
        s = Store.open_background(store_dir, warmup=Warmup(prime=[hook]))
    try:
        assert s.wait_ready(60)
        found = spans()  # (the open's span ends before the store says ready)
    finally:
        s.close()
    opened = _named(found, "rehydrate.open")
    assert _attrs(opened)["mode"] == "background"
    assert opened.parent.span_id == caller.get_span_context().span_id
    for name in PHASES:
        assert _named(found, f"rehydrate.warmup.{name}").parent.span_id == \
            opened.context.span_id
    assert _named(found, "warm the index").parent.span_id == \
        _named(found, "rehydrate.warmup.prime").context.span_id
    assert {s.context.trace_id for s in found} == {caller.get_span_context().trace_id}


def test_a_failed_background_open_ends_its_span_with_the_error(store_dir, spans):
    def broken(store, progress):
        raise ValueError("bad index")

    s = Store.open_background(store_dir, warmup=Warmup(prime=[broken]))
    with pytest.raises(WarmupError):
        s.wait_ready(60)
    found = spans()
    assert _named(found, "rehydrate.open").status.status_code == StatusCode.ERROR
    assert _named(found, "rehydrate.warmup.prime").status.status_code == StatusCode.ERROR


def test_a_checkpoint_is_a_span(store_dir, spans, tracer):
    with Store.open(store_dir) as s:
        for i in range(10):
            s.put("t", i, i)
        spans()
        with tracer.start_as_current_span("nightly") as caller:
            result = s.checkpoint()
    checkpoint = _named(spans(), "rehydrate.checkpoint")
    assert checkpoint.parent.span_id == caller.get_span_context().span_id
    a = _attrs(checkpoint)
    assert a["lsn"] == result["lsn"] == 10
    assert a["bytes"] == result["bytes"] > 0
    assert a["pause_s"] == result["pause_s"] and a["path"] == store_dir


def test_a_promote_is_a_handoff_span(store_dir, spans, tracer):
    with Store.open(store_dir) as primary:
        for i in range(5):
            primary.put("t", i, i)
        with Store.open_standby(store_dir) as standby:
            spans()
            with tracer.start_as_current_span("deploy") as caller:
                result = standby.promote()
    handoff = _named(spans(), "rehydrate.handoff")
    assert handoff.parent.span_id == caller.get_span_context().span_id
    a = _attrs(handoff)
    assert a["from_epoch"] == 1 and a["epoch"] == result["epoch"] == 2
    assert a["lsn"] == result["lsn"] == 5
    assert a["failover"] is result["failover"] is False
    assert handoff.status.status_code == StatusCode.UNSET


def test_a_promote_that_fails_is_an_error_span(store_dir, spans):
    with Store.open(store_dir) as primary:
        with pytest.raises(rehydrate.HandoffError):
            primary.promote()
    handoff = _named(spans(), "rehydrate.handoff")
    assert handoff.status.status_code == StatusCode.ERROR
    assert "only a standby" in handoff.status.description


def test_a_restore_is_a_span(tmp_path, spans):
    uri = f"file://{tmp_path / 'archive'}"
    with Store.open(str(tmp_path / "state"), archive=uri, archive_every_s=0.05) as s:
        for i in range(20):
            s.put("t", i, i)
        assert s.wait_for_archive(timeout=30)
    spans()
    result = rehydrate.restore(uri, str(tmp_path / "copy"))
    restore = _named(spans(), "rehydrate.archive.restore")
    a = _attrs(restore)
    assert a["lsn"] == result["lsn"] == 20 and a["bytes"] == result["bytes"] > 0
    assert a["uri"] == uri and a["path"] == result["path"]
    assert restore.status.status_code == StatusCode.UNSET


def test_a_restore_from_nothing_is_an_error_span(tmp_path, spans):
    os.makedirs(tmp_path / "empty")
    with pytest.raises(ArchiveError):
        rehydrate.restore(f"file://{tmp_path / 'empty'}", str(tmp_path / "copy"))
    restore = _named(spans(), "rehydrate.archive.restore")
    assert restore.status.status_code == StatusCode.ERROR


# -- online migrations ---------------------------------------------------------
def _online(reshape=lambda k, v: {"v": v}):
    mig = rehydrate.Migrations()
    mig.migration("reshape", table="t", to_version=2, per_record=True, online=True)(reshape)
    return mig


class _States:
    """``on_migration_state`` listener: an event per state entered."""

    def __init__(self):
        self.events = {s: threading.Event() for s in ("building", "caught_up", "reverted",
                                                        "completed")}

    def on_migration_state(self, store, status):
        self.events[status["state"]].set()

    def wait(self, state):
        assert self.events[state].wait(30), state


def test_an_online_migrations_run_is_spans_under_the_callers(store_dir, spans, tracer):
    with Store.open(store_dir) as s:
        for i in range(300):
            s.put("t", i, i)
    states = _States()
    with Store.open(store_dir, migrations=_online(),
                    warmup=Warmup(listeners=[states])) as s:
        spans()
        with tracer.start_as_current_span("deploy") as caller:
            s.start_migration("reshape", slice_ms=2, max_duty=0.9)
            states.wait("caught_up")
            s.route("reshape", 0.25)
            s.route("reshape", 1.0)
            entry = s.complete_migration("reshape")
        status = s.migration_status("reshape")
        found = spans()
    me = caller.get_span_context()
    start = _named(found, "rehydrate.migration.start")
    build = _named(found, "rehydrate.migration.build")
    complete = _named(found, "rehydrate.migration.complete")
    routes = sorted((x for x in found if x.name == "rehydrate.migration.route"),
                    key=lambda x: x.start_time)
    assert [_attrs(r)["fraction"] for r in routes] == [0.25, 1.0]
    for span in (start, build, complete, *routes):
        assert span.parent is not None and span.parent.span_id == me.span_id, span.name
        assert span.context.trace_id == me.trace_id
        a = _attrs(span)
        assert a["migration"] == "reshape" and a["table"] == "t", span.name
        assert span.status.status_code == StatusCode.UNSET, span.name
    assert _attrs(start)["run"] == 1 and _attrs(start)["records"] == 300
    assert _attrs(start)["from_version"] == 1 and _attrs(start)["to_version"] == 2
    # The build: from the start to caught_up, before the first route.
    b = _attrs(build)
    assert b["records"] == status["built"] == 300 and b["build_errors"] == 0
    assert b["outcome"] == "caught_up" and b["rate"] > 0 and status["build_rate"] > 0
    assert start.start_time <= build.start_time and build.end_time <= routes[0].start_time
    c = _attrs(complete)
    assert c["ledger_lsn"] == entry["lsn"]
    assert c["digest_before"] == entry["digest_before"]
    assert c["digest_after"] == entry["digest_after"] != entry["digest_before"]
    assert not [x for x in found if x.name == "rehydrate.migration.revert"]


def test_an_automatic_revert_is_an_error_span_under_the_starters(store_dir, spans, tracer):
    def reshape(k, v):
        if v % 10 == 3:
            raise ValueError("no")
        return {"v": v}

    with Store.open(store_dir) as s:
        for i in range(100):
            s.put("t", i, i)
    states = _States()
    with Store.open(store_dir, migrations=_online(reshape),
                    warmup=Warmup(listeners=[states])) as s:
        spans()
        with tracer.start_as_current_span("deploy") as caller:
            s.start_migration("reshape", auto_revert={"max_errors": 2})
            states.wait("caught_up")
            s.route("reshape", 1.0)
        view = s.table("t")
        for i in range(3, 100, 10):  # failed keys: errors on the new path
            assert view[i] == i
            if states.events["reverted"].is_set():
                break
        states.wait("reverted")
        status = s.migration_status("reshape")
        found = spans()
    revert = _named(found, "rehydrate.migration.revert")
    # Made on the run's thread, it nests under the span that started the run.
    assert revert.parent.span_id == caller.get_span_context().span_id
    assert revert.status.status_code == StatusCode.ERROR
    a = _attrs(revert)
    assert a["migration"] == "reshape" and a["table"] == "t"
    assert a["reason"] == status["reason"] and a["reason"].startswith("max_errors")
    assert a["revert_ms"] == status["revert_ms"] >= 0
    b = _attrs(_named(found, "rehydrate.migration.build"))
    assert b["outcome"] == "caught_up" and b["build_errors"] == status["build_errors"] == 10


def test_an_abort_is_a_revert_span_under_the_aborters(store_dir, spans, tracer):
    with Store.open(store_dir) as s:
        for i in range(50):
            s.put("t", i, i)
    states = _States()
    with Store.open(store_dir, migrations=_online(),
                    warmup=Warmup(listeners=[states])) as s:
        s.start_migration("reshape")
        states.wait("caught_up")
        spans()
        with tracer.start_as_current_span("rollback") as caller:
            s.abort_migration("reshape", reason="operator")
        with tracer.start_as_current_span("late"):
            with pytest.raises(rehydrate.MigrationError):
                s.route("reshape", 0.5)
        found = spans()
    revert = _named(found, "rehydrate.migration.revert")
    assert revert.parent.span_id == caller.get_span_context().span_id
    assert revert.status.status_code == StatusCode.ERROR
    assert _attrs(revert)["reason"] == "operator"
    # A refused route is an error span too.
    assert _named(found, "rehydrate.migration.route").status.status_code == StatusCode.ERROR


def test_tracing_is_enabled_here():
    assert tracing.enabled()


# -- without OpenTelemetry -----------------------------------------------------
# A child where the package cannot be found: a sys.meta_path finder in front
# refuses it as an uninstalled package is refused (and counts the asks).
HIDDEN = r"""
import json, sys


class Hide:
    asked = 0

    def find_spec(self, name, path=None, target=None):
        if name == "opentelemetry" or name.startswith("opentelemetry."):
            Hide.asked += 1
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None


sys.meta_path.insert(0, Hide())
import rehydrate
from rehydrate import Store, Warmup, tracing

path = sys.argv[1]
s = Store.open(path, warmup=Warmup(populate=[lambda store, progress: None]))
s.put("t", 1, 1)
s.checkpoint()
s.close()
s = Store.open_background(path)
assert s.wait_ready(60)
s.close()
# An online migration's whole run: started, caught up, routed, completed.
import threading
mig = rehydrate.Migrations()
mig.migration("m", table="t", to_version=2, per_record=True, online=True)(lambda k, v: v + 1)
caught_up = threading.Event()


class Listener:
    def on_migration_state(self, store, status):
        if status["state"] == "caught_up":
            caught_up.set()


s = Store.open(path, migrations=mig, warmup=Warmup(listeners=[Listener()]))
s.start_migration("m")
assert caught_up.wait(60)
s.route("m", 1.0)
s.complete_migration("m")
assert s.table("t")[1] == 2
s.close()
print(json.dumps({"enabled": tracing.enabled(), "asked": Hide.asked,
                  "loaded": sorted(m for m in sys.modules if m.startswith("opentelemetry"))}))
"""

PRESENT = r"""
import json, sys
import rehydrate
after_import = sorted(m for m in sys.modules if m.startswith("opentelemetry"))
rehydrate.Store.open(sys.argv[1]).close()
print(json.dumps({"import": after_import,
                  "open": "opentelemetry.trace" in sys.modules}))
"""


def _child(code, path, env):
    run = subprocess.run([sys.executable, "-c", code, path], env=env, capture_output=True,
                         text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    return json.loads(run.stdout)


def test_without_opentelemetry_nothing_is_imported_or_emitted(tmp_path, core_env):
    got = _child(HIDDEN, str(tmp_path / "state"), core_env)
    assert got["asked"] >= 1  # it was looked for, and not found
    assert got == {"enabled": False, "asked": got["asked"], "loaded": []}


def test_import_rehydrate_leaves_opentelemetry_to_the_first_open(tmp_path, core_env):
    got = _child(PRESENT, str(tmp_path / "state"), core_env)
    assert got == {"import": [], "open": True}
