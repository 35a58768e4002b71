"""Online migrations (online.py): a shadow built while the store serves,
writes mirrored, routed reads, revert, cutover, restart."""

import os
import signal
import subprocess
import sys
import threading
import time

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

import rehydrate as rh
from rehydrate import Store
from rehydrate.digest import format_digest
from rehydrate.errors import ConfigError, MigrationError
from rehydrate.per_record import DELETE

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "helpers"))



def _fn(k, v):
    """The migration: doubles ints, drops negatives, raises on 13s."""
    if v == 13:
        raise ValueError("thirteen")
    if isinstance(v, int) and v < 0:
        return DELETE
    return {"v": v, "twice": v * 2} if isinstance(v, int) else {"v": v}


def _mig(fn=_fn, mid="reshape", table="t"):
    mig = rh.Migrations()
    mig.migration(mid, table=table, to_version=2, per_record=True, online=True)(fn)
    return mig


def _expected(items, fn=_fn):
    out, failed = {}, set()
    for k, v in items:
        try:
            r = fn(k, v)
        except Exception:
            failed.add(k)
            continue
        if r is not DELETE:
            out[k] = r
    return out, failed


def _wait_state(s, mid, states, timeout=30.0):
    """Whether the run of ``mid`` reaches one of ``states`` within
    ``timeout``: the condition polled every 5 ms up to the deadline (the
    store's listeners are fixed at its open, so a wait cannot add one)."""
    deadline = time.monotonic() + timeout
    tick = threading.Event()
    while s.migration_status(mid)["state"] not in states:
        if time.monotonic() > deadline:
            return False
        tick.wait(0.005)
    return True


def _fill(path, n=500, tables=None):
    with Store.open(path, tables=tables) as s:
        for i in range(n):
            s.put("t", i, i % 50 - 5)
        s.put("other", "x", 1)


def _step_run(s, mid):
    """The run, stepped by the test (no build thread)."""
    run = s._online.by_id[mid]
    return run


@pytest.fixture
def manual(monkeypatch):
    """Runs get no build thread: the test drives ``step()``."""
    from rehydrate import online

    monkeypatch.setattr(online.OnlineRun, "start_thread", lambda self: None)


def test_life_cycle_build_route_complete_reopen(store_dir):
    _fill(store_dir)
    mig = _mig()
    with Store.open(store_dir, migrations=mig) as s:
        assert s.ledger == [] and s.table("t")[7] == 2  # left pending by the open
        before = dict(s.table("t").items())
        d0 = format_digest(s.digest())
        st0 = s.start_migration("reshape", slice_ms=5, max_duty=0.9)
        assert st0["state"] in ("building", "caught_up") and st0["run"] == 1
        assert _wait_state(s, "reshape", ("caught_up",))
        status = s.route("reshape", 1.0)
        assert status["fraction"] == 1.0 and status["total"] == 500
        want, failed = _expected(before.items())
        view = s.table("t")
        for k in want:
            assert view[k] == want[k]
        assert status["build_errors"] == len(failed)
        entry = s.complete_migration("reshape")
        assert entry["from_version"] == 1 and entry["to_version"] == 2
        assert entry["digest_before"] == d0 and entry["digest_after"] == format_digest(
            s.digest())
        assert s.migration_status("reshape")["state"] == "completed"
        assert dict(s.table("t").items()) == want
        s.put("t", 1000, {"v": 1})
        digest = format_digest(s.digest())
        assert s.migrations_status()[-1]["state"] == "completed"
    with Store.open(store_dir, migrations=mig) as s:
        assert format_digest(s.digest()) == digest
        assert s.ledger[0]["id"] == "reshape" and s.ledger[0]["digest_after"]
        runs = rh.manifest.read(store_dir)["migration_runs"]
        assert runs[-1]["outcome"] == "completed"
        with pytest.raises(ConfigError) as e:
            s.start_migration("reshape")
        assert e.value.reason == "unknown_migration"
    # Rollback works as for an offline migration.
    rh.rollback(store_dir, force=True)
    with Store.open(store_dir) as s:
        assert dict(s.table("t").items()) == before and s.ledger == []


def test_mirrored_writes_during_the_build(store_dir, manual):
    _fill(store_dir)
    with Store.open(store_dir, migrations=_mig()) as s:
        s.start_migration("reshape", slice_ms=0.001)
        run = _step_run(s, "reshape")
        assert run.step()  # a slice, not the whole build
        s.put("t", 3, 30)
        s.put("t", 499, 13)  # the fn raises: the write stands, the key failed
        s.delete("t", 4)
        s.incr("t", 5, 100)
        with s.batch() as b:
            b.put("t", 600, 6)
            b.delete("t", 7)
        while run.step():
            pass
        assert run.state == "caught_up"
        want, failed = _expected(s.table("t").items())
        assert {run.host.core.decode_key(kb) for kb in run.failed} == failed
        assert dict(run.shadow.items()) == want
        assert s.migration_status("reshape")["mirrored"] == 6
        assert s.table("t")[499] == 13  # the old table serves


class _Model(RuleBasedStateMachine):
    """Writes of every kind racing a build stepped a slice at a time: the
    shadow always ends as fn over the table, minus failed keys."""

    path = None
    tables = None

    @initialize()
    def start(self):
        import shutil
        import tempfile

        self.dir = tempfile.mkdtemp(prefix="online-model-")
        with Store.open(self.dir, tables=self.tables) as s:
            for i in range(40):
                s.put("t", i, i - 3)
        self.s = Store.open(self.dir, tables=self.tables, migrations=_mig())
        self.s.start_migration("reshape", slice_ms=0.0001)
        self.run = self.s._online.by_id["reshape"]
        self._cleanup = lambda: (self.s.close(), shutil.rmtree(self.dir, ignore_errors=True))

    keys = st.integers(0, 60)
    values = st.integers(-5, 20)

    @rule(k=keys, v=values)
    def put(self, k, v):
        self.s.put("t", k, v)

    @rule(k=keys)
    def delete(self, k):
        self.s.delete("t", k)

    @rule(k=keys, d=st.integers(-3, 3))
    def incr(self, k, d):
        cur = self.s.table("t").get(k, 0)
        if isinstance(cur, int):
            self.s.incr("t", k, d)

    @rule()
    def clear(self):
        self.s.clear("t")

    @rule(ops=st.lists(st.tuples(st.booleans(), keys, values), max_size=5))
    def batch(self, ops):
        with self.s.batch() as b:
            for put, k, v in ops:
                b.put("t", k, v) if put else b.delete("t", k)

    @rule(n=st.integers(1, 3))
    def build(self, n):
        for _ in range(n):
            self.run.step()

    @invariant()
    def covered_keys_agree(self):
        # Any key whose write was mirrored is exactly fn of its value now.
        run = self.run
        core = run.host.core
        t = self.s.table("t")
        shadow = dict(run.shadow.items())
        for k in list(run.covered)[:20]:  # (decoded keys)
            kb = core.encode_key(k)
            want, failed = _expected([(k, t[k])] if k in t else [])
            assert shadow.get(k) == want.get(k) and (k in failed) == (kb in run.failed)

    def teardown(self):
        while self.run.step():
            pass
        want, failed = _expected(self.s.table("t").items())
        core = self.run.host.core
        assert dict(self.run.shadow.items()) == want
        assert {core.decode_key(kb) for kb in self.run.failed} == failed
        self._cleanup()


@pytest.mark.parametrize("kind", ["kv", "dict"])
def test_model_writes_racing_the_build(kind, manual):
    class M(_Model):
        tables = {"t": rh.DictTable} if kind == "dict" else None

    M.TestCase.settings = settings(max_examples=15, stateful_step_count=25, deadline=None,
                                   suppress_health_check=list(HealthCheck))
    M.TestCase().runTest()


def test_bad_inputs(store_dir, manual):
    _fill(store_dir, 50)
    mig = _mig()
    mig.migration("offline", table="other", to_version=2)(lambda t: None)
    with Store.open(store_dir, migrations=mig) as s:
        for mid in ("nope", "offline", 3):
            with pytest.raises(ConfigError) as e:
                s.start_migration(mid)
            assert e.value.reason == "unknown_migration"
        for kw in ({"sample": 2}, {"sample": "x"}, {"on_restart": "later"},
                   {"slice_ms": 0}, {"max_duty": 0}, {"max_duty": 1.5},
                   {"compare": 3}, {"auto_revert": {"max_errors": -1}},
                   {"auto_revert": {"max_latency_ratio": 1.0}}):
            with pytest.raises(ConfigError):
                s.start_migration("reshape", **kw)
        for call in (lambda: s.route("reshape", 0.5), lambda: s.migration_status("reshape"),
                     lambda: s.abort_migration("reshape"),
                     lambda: s.complete_migration("reshape")):
            with pytest.raises(MigrationError) as e:
                call()
            assert e.value.reason == "no_run"
        s.start_migration("reshape")
        with pytest.raises(MigrationError) as e:
            s.start_migration("reshape")
        assert e.value.reason == "already_running"
        for f in (-0.1, 1.1, "1"):
            with pytest.raises(ConfigError):
                s.route("reshape", f)
        with pytest.raises(MigrationError) as e:
            s.route("reshape", 0.5)
        assert e.value.reason == "not_caught_up"
        with pytest.raises(MigrationError) as e:
            s.complete_migration("reshape")
        assert e.value.reason == "not_caught_up"
        run = _step_run(s, "reshape")
        while run.step():
            pass
        s.route("reshape", 0.5)
        with pytest.raises(MigrationError) as e:
            s.complete_migration("reshape")
        assert e.value.reason == "not_full"
        st1 = s.abort_migration("reshape", reason="operator")
        assert st1["state"] == "reverted" and st1["reason"] == "operator"
        assert st1["fraction"] == 0.0
        for call in (lambda: s.route("reshape", 1.0), lambda: s.complete_migration("reshape")):
            with pytest.raises(MigrationError) as e:
                call()
            assert e.value.reason == "reverted"
        assert s.table("t")[7] == 2  # nothing else changed
        s.put("t", 7, 8)  # mirroring is gone: a plain write
        assert s.start_migration("reshape")["run"] == 2  # pending still: again
    # Closed with run 2 live: a restart, so its record stays live for the
    # next open's on_restart (the default rebuilds it).
    runs = rh.manifest.read(store_dir)["migration_runs"]
    assert [(r["run"], r["outcome"]) for r in runs] == [(1, "reverted"), (2, None)]
    with Store.open(store_dir, migrations=mig) as s:
        st = s.migration_status("reshape")
        assert st["run"] == 3 and st["restarts"] == 1 and st["state"] in ("building",
                                                                          "caught_up")
    runs = rh.manifest.read(store_dir)["migration_runs"]
    assert [(r["run"], r["outcome"]) for r in runs][:2] == [(1, "reverted"), (2, "rebuilt")]


def test_auto_revert_routes_back_and_drops_the_shadow(store_dir):
    _fill(store_dir, 200)
    events = []

    class L:
        def on_migration_state(self, store, status):
            events.append(status["state"])

    mig = _mig(lambda k, v: 1 // 0 if v == 0 else {"v": v})
    with Store.open(store_dir, migrations=mig, warmup=rh.Warmup(listeners=[L()])) as s:
        s.start_migration("reshape", auto_revert={"max_errors": 0}, sample=0.0)
        assert _wait_state(s, "reshape", ("caught_up",))
        s.route("reshape", 1.0)
        view = s.table("t")
        for k in range(200):
            view.get(k)
        assert _wait_state(s, "reshape", ("reverted",))
        status = s.migration_status("reshape")
        assert status["reason"].startswith("max_errors")
        assert s.table("t")[5] == 0  # the old table, routed back
        assert events[-1] == "reverted"
        assert os.path.exists(os.path.join(store_dir, "migration-runs.json"))


def test_status_file_and_migrate_status_fields(store_dir, manual):
    from rehydrate import online

    _fill(store_dir, 20)
    with Store.open(store_dir, migrations=_mig()) as s:
        s.start_migration("reshape")
        files = online.read_status_file(store_dir)
        assert files[0]["id"] == "reshape" and files[0]["state"] == "building"
        for key in ("progress", "built", "total", "mirrored", "build_errors", "fraction",
                    "paths", "compared", "divergences", "compare_errors", "divergence_rate",
                    "reason", "revert_ms", "started_at", "ended_at", "run", "restarts",
                    "on_restart", "build_rate", "from_version", "to_version", "table"):
            assert key in files[0], key
    assert online.read_status_file(store_dir)[0]["state"] == "reverted"
    r = subprocess.run([sys.executable, "-m", "rehydrate", "verify", store_dir],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.parametrize("on_restart", ["abandon", "rebuild"])
def test_kill_during_a_run(tmp_path, core_env, on_restart):
    """A child writes (sync=always) while a run builds; SIGKILL; the reopen
    keeps every acknowledged write and records the run per on_restart."""
    path = str(tmp_path / "s")
    script = os.path.join(os.path.dirname(__file__), "helpers", "online_crash.py")
    p = subprocess.Popen([sys.executable, script, path, on_restart], env=core_env,
                         stdout=subprocess.PIPE, text=True)
    acked = {}
    for line in p.stdout:
        if line.startswith("ack"):
            _, k, v = line.split()
            acked[int(k)] = int(v)
            if len(acked) >= 300:
                break
    p.send_signal(signal.SIGKILL)
    p.wait()
    p.stdout.close()
    mig = _mig()
    with Store.open(path, migrations=mig) as s:
        t = s.table("t")
        for k, v in acked.items():
            assert t[k] == v, k
        runs = s.migrations_status()
        recorded = [r for r in runs if r.get("outcome") in ("abandoned", "rebuilt")]
        assert recorded and recorded[0]["outcome"] == (
            "abandoned" if on_restart == "abandon" else "rebuilt")
        if on_restart == "rebuild":
            status = s.migration_status("reshape")
            assert status["restarts"] == 1 and status["fraction"] == 0.0
            # compare is code: a start adopts the rebuilt run.
            again = s.start_migration("reshape", compare=lambda a, b: a == b)
            assert again["run"] == status["run"]
        else:
            with pytest.raises(MigrationError):
                s.migration_status("reshape")
