"""Migrations (docs/migrations.md): checked state migrations, the ledger,
drift, rollback and its boundary, crashes at every step; every test on both
cores. Upcasters and versions stamped in the log: tests/test_upcasters.py."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import warnings

import pytest

import rehydrate as rh
from rehydrate import ConfigError, MigrationDriftWarning, MigrationError, Migrations, Store
from rehydrate.digest import format_digest


def _v1(path, n=20):
    with Store.open(path) as s:
        for i in range(n):
            s.put("users", i, {"name": f"user {i}", "age": 20 + i})
        s.put("other", "k", "untouched")
        return format_digest(s.digest())


def _split_names():
    mig = Migrations()

    @mig.invariant("users")
    def every_user_has_a_name(t):
        return all(("name" in v) or ("first" in v) for v in t.values())

    @mig.migration("split-name", table="users", to_version=2)
    def split(t):
        for v in t.values():
            v["first"], v["last"] = v.pop("name").split(" ")

    return mig


def _listing(path):
    """Every file under ``path`` with its bytes (the directory, exactly)."""
    out = {}
    for root, _dirs, files in os.walk(path):
        for f in files:
            if f in ("LOCK", "HISTORY", "HINTS"):
                continue  # an open's own bookkeeping, not state
            p = os.path.join(root, f)
            with open(p, "rb") as fh:
                out[os.path.relpath(p, path)] = fh.read()
    return out


def test_a_migration_runs_once_and_is_in_the_ledger(store_dir):
    before = _v1(store_dir)
    with Store.open(store_dir, migrations=_split_names()) as s:
        assert s.table("users")[3] == {"first": "user", "last": "3", "age": 23}
        assert s.table("other")["k"] == "untouched"
        (entry,) = s.ledger
        after = format_digest(s.digest())
        phase = next(p for p in s.warmup_report["phases"] if p["name"] == "migrate")
        assert phase["migrations"] == ["split-name"]
    assert entry["id"] == "split-name" and entry["table"] == "users"
    assert (entry["from_version"], entry["to_version"]) == (1, 2)
    assert entry["digest_before"] == before and entry["digest_after"] == after != before
    assert entry["invariants"] == ["_split_names.<locals>.every_user_has_a_name"]
    assert entry["code_hash"].startswith("sha256:") and entry["applied_at"] > 0
    assert entry["lsn"] == entry["snapshot_before"] + 1
    with Store.open(store_dir, migrations=_split_names()) as s:  # not run again
        assert len(s.ledger) == 1 and format_digest(s.digest()) == after
        phase = next(p for p in s.warmup_report["phases"] if p["name"] == "migrate")
        assert phase["migrations"] == []
    with Store.open(store_dir) as s:  # code without migrations reads the state as it is
        assert s.table("users")[3]["first"] == "user"


def test_a_migration_may_return_a_new_dict(store_dir):
    _v1(store_dir)
    mig = Migrations()

    @mig.migration("by-name", table="users", to_version=2)
    def by_name(t):
        return {v["name"]: v["age"] for v in t.values()}

    with Store.open(store_dir, migrations=mig) as s:
        assert s.table("users").to_dict() == {f"user {i}": 20 + i for i in range(20)}


@pytest.mark.parametrize("case", ["raises", "invariant_false", "invariant_raises",
                                  "invariant_before", "unencodable", "bad_return"])
def test_a_failed_migration_changes_nothing(store_dir, case):
    before = _v1(store_dir)
    listing = _listing(store_dir)
    mig = Migrations()

    @mig.invariant("users")
    def ages_positive(t):
        if case == "invariant_raises" and any("broken" in v for v in t.values()):
            raise RuntimeError("cannot tell")
        return all(v.get("age", 1) > 0 for v in t.values())

    if case == "invariant_before":
        @mig.invariant("users")
        def never_holds(t):
            return len(t) > 1000

    @mig.migration("bad", table="users", to_version=2)
    def bad(t):
        t[0]["age"] = -1 if case == "invariant_false" else 1
        t[1]["broken"] = True
        if case == "raises":
            raise KeyError("oops")
        if case == "unencodable":
            t[2] = object()
        if case == "bad_return":
            return [1, 2]

    with pytest.raises(MigrationError) as e:
        Store.open(store_dir, migrations=mig)
    assert e.value.migration == "bad"
    if case.startswith("invariant"):
        assert e.value.invariant.endswith("ages_positive" if case != "invariant_before"
                                          else "never_holds")
    assert _listing(store_dir) == listing  # the directory, byte for byte
    with Store.open(store_dir) as s:
        assert format_digest(s.digest()) == before and s.ledger == []


def test_to_version_must_be_above_the_current(store_dir):
    _v1(store_dir)
    with Store.open(store_dir, migrations=_split_names()):
        pass
    mig = _split_names()

    @mig.migration("again-to-2", table="users", to_version=2)
    def noop(t):
        pass

    with pytest.raises(MigrationError, match="not above table 'users'.s version 2"):
        Store.open(store_dir, migrations=mig)


def test_registrations_are_checked():
    mig = Migrations()

    @mig.migration("m", table="t", to_version=2)
    def m(t):
        pass

    with pytest.raises(ConfigError, match="two migrations"):
        mig.migration("m", table="t", to_version=3)(m)
    with pytest.raises(ConfigError):
        mig.migration("x", table="t", to_version=1)
    with pytest.raises(ConfigError):
        mig.upcaster("t", from_version=0)
    with pytest.raises(ConfigError):
        mig.migration("", table="t", to_version=2)
    with pytest.raises(ConfigError):
        mig.invariant("t")(42)
    with pytest.raises(ConfigError):
        Store.open("/nonexistent/never", migrations="not a registry")


def test_drift_is_warned_and_strict_refuses(store_dir):
    _v1(store_dir)
    with Store.open(store_dir, migrations=_split_names()):
        pass
    changed = Migrations()

    @changed.migration("split-name", table="users", to_version=2)
    def split(t):  # another body: another code hash
        pass

    with pytest.warns(MigrationDriftWarning, match="split-name"):
        Store.open(store_dir, migrations=changed).close()
    with pytest.raises(MigrationError, match="changed since it ran"):
        Store.open(store_dir, migrations=changed, strict_migrations=True)
    with pytest.warns(MigrationDriftWarning, match="no registered migration"):
        Store.open(store_dir, migrations=Migrations()).close()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Store.open(store_dir, migrations=_split_names()).close()  # the same code: quiet
        Store.open(store_dir).close()  # no migrations given: nothing to compare


def test_rollback_restores_the_digest_exactly(store_dir):
    before = _v1(store_dir)
    with Store.open(store_dir, migrations=_split_names()) as s:
        after = format_digest(s.digest())
    plan = rh.rollback(store_dir, dry_run=True)
    assert plan["done"] is False and plan["boundary"] == [] and plan["migrations"] == ["split-name"]
    with Store.open(store_dir) as s:  # a dry run changed nothing
        assert format_digest(s.digest()) == after
    plan = rh.rollback(store_dir)
    assert plan["done"] is True and plan["digest"] == before
    with Store.open(store_dir) as s:
        assert format_digest(s.digest()) == before and s.ledger == []
        assert s.table("users")[3] == {"name": "user 3", "age": 23}
        s.put("users", 99, {"name": "after rollback", "age": 1})
    with Store.open(store_dir) as s:
        assert s.table("users")[99]["name"] == "after rollback"
    with pytest.raises(MigrationError, match="nothing to roll back"):
        rh.rollback(store_dir)


def test_the_boundary_refuses_unless_forced(store_dir):
    before = _v1(store_dir)
    with Store.open(store_dir, migrations=_split_names()) as s:
        marker = s.ledger[0]["lsn"]
        lsns = [s.put("users", 100 + i, {"first": "new", "last": str(i), "age": 1})
                for i in range(3)]
    with pytest.raises(MigrationError, match=f"LSN {lsns[0]}..{lsns[-1]}") as e:
        rh.rollback(store_dir)
    assert e.value.reason == "rollback_boundary"
    plan = rh.rollback(store_dir, dry_run=True)
    assert plan["boundary"] == [[marker + 1, lsns[-1]]] and plan["dropped_records"] == 3
    plan = rh.rollback(store_dir, force=True)
    q = os.listdir(os.path.join(store_dir, "quarantine"))
    assert any(".rolled-back." in name and name.endswith(tuple("0123456789")) for name in q)
    with Store.open(store_dir) as s:
        assert format_digest(s.digest()) == before and 100 not in s.table("users")


def test_rollback_of_several_and_by_id(store_dir):
    before = _v1(store_dir)
    mig = _split_names()

    @mig.migration("ages-as-text", table="users", to_version=3)
    def text(t):
        for v in t.values():
            v["age"] = str(v["age"])

    with Store.open(store_dir, migrations=mig) as s:
        assert [e["id"] for e in s.ledger] == ["split-name", "ages-as-text"]
        assert s.table("users")[0]["age"] == "20"
    with pytest.raises(MigrationError, match="no migration 'nope'"):
        rh.rollback(store_dir, to="nope")
    with pytest.raises(MigrationError, match="holds 2"):
        rh.rollback(store_dir, steps=3)
    plan = rh.rollback(store_dir, to="split-name")
    assert plan["migrations"] == ["split-name", "ages-as-text"] and plan["boundary"] == []
    with Store.open(store_dir) as s:
        assert format_digest(s.digest()) == before and s.ledger == []


def test_confirmed_migrations_cannot_be_rolled_back(store_dir, core_env):
    _v1(store_dir)
    with Store.open(store_dir, migrations=_split_names(), keep_snapshots=1) as s:
        pinned = s.ledger[0]["snapshot_before"]
        s.put("users", 500, {"first": "a", "last": "b", "age": 3})
        s.checkpoint()  # the first after it: the rollback snapshot stays
        assert pinned in rh.snapshot.list_snapshots(store_dir)
        s.put("users", 501, {"first": "a", "last": "b", "age": 3})
        s.checkpoint()  # the next-but-one confirms it: now it may go
        assert s.ledger[0]["confirmed"] is True
        assert pinned not in rh.snapshot.list_snapshots(store_dir)
    with pytest.raises(MigrationError, match="confirmed"):
        rh.rollback(store_dir, force=True)


def test_cli_migrate_status_apply_rollback_confirm(store_dir, core_env, tmp_path):
    _v1(store_dir)
    mod = tmp_path / "my_migs.py"
    mod.write_text(
        "import rehydrate as rh\n"
        "migrations = rh.Migrations()\n"
        "@migrations.migration('add-flag', table='users', to_version=2)\n"
        "def add_flag(t):\n"
        "    for v in t.values():\n"
        "        v['flag'] = True\n")
    env = dict(core_env, PYTHONPATH=str(tmp_path))

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "rehydrate", "migrate", *args],
                              env=env, capture_output=True, text=True)

    r = cli("status", store_dir, "--json")
    assert r.returncode == 0, r.stderr
    st = json.loads(r.stdout)
    assert st["tables"]["users"]["version"] == 1 and st["ledger"] == []
    r = cli("apply", store_dir, "--module", "my_migs", "--json")
    assert r.returncode == 0, r.stderr
    assert [e["id"] for e in json.loads(r.stdout)["applied"]] == ["add-flag"]
    r = cli("status", store_dir)
    assert r.returncode == 0 and "table users: version 2" in r.stdout and "add-flag" in r.stdout
    r = cli("rollback", store_dir, "--dry-run", "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["done"] is False
    r = cli("apply", store_dir, "--module", "no_such_module")
    assert r.returncode == 2 and "cannot import" in r.stderr
    with Store.open(store_dir) as s:
        s.put("users", 1000, {"late": True})
    r = cli("rollback", store_dir)
    assert r.returncode == 1 and "would drop 1 record" in r.stderr
    r = cli("confirm", store_dir, "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["confirmed"] == ["add-flag"]
    r = cli("rollback", store_dir, "--force")
    assert r.returncode == 1 and "confirmed" in r.stderr


def test_verify_deep_checks_the_ledger_against_the_snapshots(store_dir):
    _v1(store_dir)
    with Store.open(store_dir, migrations=_split_names()) as s:
        s.put("users", 7, {"first": "x", "last": "y", "age": 1})
    report = rh.verify(store_dir, deep=True)
    assert report.ok, [p for p in report.problems]
    with Store.open(store_dir) as s:
        assert report.digest == format_digest(s.digest())
    man = rh.manifest.read(store_dir)
    man["ledger"][0]["digest_after"] = "0" * 16
    rh.manifest.write(store_dir, man)
    report = rh.verify(store_dir, deep=True)
    assert not report.ok and any(p.kind == "ledger_mismatch" for p in report.problems)


def test_a_damaged_migration_snapshot_is_not_replaced_by_an_older_one(store_dir):
    _v1(store_dir)
    with Store.open(store_dir, migrations=_split_names()) as s:
        lsn = s.ledger[0]["lsn"]
    spath = os.path.join(store_dir, "snapshots", rh.snapshot.snapshot_name(lsn))
    victim = next(f for f in os.listdir(spath) if f.endswith(".arrow"))
    with open(os.path.join(spath, victim), "r+b") as f:
        f.seek(100)
        f.write(b"\xff\xff\xff\xff")
    # The log before the migration is another version's state: no fallback.
    with pytest.raises(rh.CorruptionError) as e:
        Store.open(store_dir)
    assert e.value.reason == "no_base"


def test_sigkill_at_every_step_of_a_migration_leaves_old_or_new(tmp_path, core_env):
    script = os.path.join(os.path.dirname(__file__), "helpers", "migration_crash.py")
    base = str(tmp_path / "base")
    old = subprocess.run([sys.executable, script, base, "prepare"], env=core_env,
                         capture_output=True, text=True, check=True).stdout.strip()
    probe = str(tmp_path / "probe")
    shutil.copytree(base, probe)
    subprocess.run([sys.executable, script, probe, "1000000"], env=core_env, check=True)
    new = subprocess.run([sys.executable, script, probe, "digest"], env=core_env,
                         capture_output=True, text=True, check=True).stdout.split()[0]
    assert new != old
    n, outcomes = 1, set()
    while True:
        path = str(tmp_path / f"run{n}")
        shutil.copytree(base, path)
        r = subprocess.run([sys.executable, script, path, str(n)], env=core_env,
                           capture_output=True, text=True)
        got = subprocess.run([sys.executable, script, path, "digest"], env=core_env,
                             capture_output=True, text=True, check=True).stdout.split()
        assert got in ([old, "0"], [new, "1"]), (n, got, r.stderr)
        outcomes.add(got[1])
        shutil.rmtree(path)
        if r.returncode == 0:
            break
        n += 1
    assert outcomes == {"0", "1"} and n > 10


def test_a_background_open_takes_writes_only_after_pending_migrations(store_dir):
    import threading

    _v1(store_dir)
    entered, go = threading.Event(), threading.Event()
    mig = Migrations()

    @mig.migration("slow", table="users", to_version=2)
    def slow(t):
        entered.set()
        go.wait()
        for v in t.values():
            v["v"] = 2

    s = Store.open_background(store_dir, migrations=mig, admission_timeout_s=0.05)
    try:
        assert entered.wait(30)
        r = s.readiness()
        assert r["phase"] == "migrate" and r["writes"] == "waiting"
        with pytest.raises(rh.BackpressureError):
            s.put("users", 1, {"too": "early"})
        go.set()
        assert s.wait_ready(30)
        s.put("users", 1, {"v": 2, "late": True})
        assert s.table("users")[2]["v"] == 2 and s.table("users")[1]["late"] is True
    finally:
        go.set()
        s.close()
    with Store.open(store_dir, migrations=mig) as again:
        assert again.table("users")[1] == {"v": 2, "late": True}


# ------------------------------------------- an interrupted rollback's end
def _rolled_forward(path):
    """A migrated store with 3 records written after the migration:
    (digest before the migration, digest now, the migration's snapshot LSN)."""
    before = _v1(path)
    with Store.open(path, migrations=_split_names()) as s:
        for i in range(3):
            s.put("users", 100 + i, {"first": "new", "last": str(i), "age": 1})
        return before, format_digest(s.digest()), s.ledger[0]["snapshot_before"]


def test_a_rollback_cut_after_its_commit_is_finished_by_the_next_open(store_dir, monkeypatch):
    import importlib

    from rehydrate import manifest
    from rehydrate.testing import SimulatedCrash

    rb = importlib.import_module("rehydrate.migration_rollback")

    before, _, base = _rolled_forward(store_dir)
    plan = rh.rollback(store_dir, dry_run=True)
    assert plan["segments"] and plan["snapshots"]  # there is something to move aside

    def crash(path, man):
        raise SimulatedCrash("right after the MANIFEST that commits the rollback")

    monkeypatch.setattr(rb, "finish_rollback", crash)
    with pytest.raises(SimulatedCrash):
        rh.rollback(store_dir, force=True)
    monkeypatch.undo()
    # Committed, not finished: the MANIFEST names the log's new end, and
    # the segments and snapshots past it are all still in place.
    assert manifest.read(store_dir)["log_end"] == base
    wal = sorted(os.listdir(os.path.join(store_dir, "wal")))
    assert set(plan["segments"]) <= set(wal)
    assert not os.path.exists(os.path.join(store_dir, "quarantine"))

    with Store.open(store_dir) as s:  # the open finishes it
        assert format_digest(s.digest()) == before and s.ledger == []
        assert 100 not in s.table("users") and s.lsn == base
        assert "log_end" not in manifest.read(store_dir)
        # (the writer may start a new segment at base + 1, under an old name: empty)
        for name in plan["segments"]:
            seg = os.path.join(store_dir, "wal", name)
            assert not os.path.exists(seg) or os.path.getsize(seg) == 32, name
        q = os.listdir(os.path.join(store_dir, "quarantine"))
        assert sorted(n.split(".rolled-back.")[0] for n in q) == sorted(
            plan["segments"] + [f"snapshot-{rh.snapshot.snapshot_name(x)}"
                                for x in plan["snapshots"]])
        lsn = s.put("users", 7, {"name": "after", "age": 1})  # and writing goes on
    assert lsn == base + 1
    with Store.open(store_dir, recovery="strict") as s:
        assert s.table("users")[7]["name"] == "after" and s.recovery_report.problems == []


def test_a_rollback_crashed_at_each_file_operation_is_old_or_new_never_a_mix(store_dir, tmp_path):
    from rehydrate import manifest
    from rehydrate.testing import SimulatedCrash, crash_at

    before, after, base = _rolled_forward(store_dir)
    outcomes = []
    for n in range(1, 200):
        d = str(tmp_path / f"crash{n}")
        shutil.copytree(store_dir, d)
        with crash_at(n) as state:
            try:
                rh.rollback(d, force=True)
            except (SimulatedCrash, rh.RehydrateError):
                assert state["reached"]
        if not state["reached"]:
            break
        man = manifest.read(d)
        committed = not man.get("ledger")  # the commit drops the migration from the ledger
        with Store.open(d) as s:
            digest = format_digest(s.digest())
        # Past the commit, the open finishes the rollback; before it, the
        # migrated state stands untouched; never anything else.
        assert digest == (before if committed else after), (n, man)
        assert "log_end" not in manifest.read(d)
        outcomes.append(("finished by the open" if "log_end" in man else "rolled back")
                        if committed else "not rolled back")
        shutil.rmtree(d)
    assert not state["reached"], "the rollback never ran to its end"
    # Both sides of the commit were hit, and crashes between the commit and
    # its end (log_end still set) were finished by the open.
    assert {"finished by the open", "not rolled back"} <= set(outcomes), outcomes

# -- no copies but the migration's own: every kind a migration reshapes ----------
KINDS = {"kv": None, "dict": {"users": rh.DictTable}}


def _v1_of(path, kind, n=50):
    """A v1 state whose ``users`` table is of ``kind``, half of it in a
    checkpoint and half only in the log; its digest and its users."""
    with Store.open(path, tables=KINDS[kind]) as s:
        for i in range(n):
            s.put("users", i, {"name": f"user {i}", "age": 20 + i, "tags": [i, "t"]})
            if i == n // 2:
                s.checkpoint()
        s.put("other", "k", "untouched")
        return format_digest(s.digest()), s.table("users").to_dict()


@pytest.mark.parametrize("kind", sorted(KINDS))
@pytest.mark.parametrize("case", ["midway_in_place", "midway_replaced", "invariant_after",
                                  "invariant_before", "invariant_writes_its_view"])
def test_a_bad_migration_leaves_every_kind_exactly_as_before(store_dir, kind, case):
    before, users = _v1_of(store_dir, kind)
    listing = _listing(store_dir)
    mig = Migrations()
    seen = []

    @mig.invariant("users")
    def ages_positive(t):
        seen.append(len(t))
        if case == "invariant_before":
            return len(seen) > 1  # false on the state before
        if case == "invariant_writes_its_view":
            t[0] = {"name": "forced", "age": 1}  # a read-only view: TypeError
        return all(v["age"] > 0 for v in t.values())

    @mig.migration("bad", table="users", to_version=2)
    def bad(t):
        for i, (k, v) in enumerate(t.items()):
            if i == len(t) // 2 and case.startswith("midway"):
                raise RuntimeError("half way")
            # In place: the values, their nested lists, and the dict itself.
            v["age"] = -v["age"]
            v["tags"].append("new")
            v.pop("name")
            if case == "midway_replaced":
                t[k] = ["replaced"]
        t["added"] = {"age": -1}

    with pytest.raises(MigrationError) as e:
        Store.open(store_dir, tables=KINDS[kind], migrations=mig)
    assert e.value.migration == "bad"
    if case.startswith("midway"):
        assert e.value.invariant is None and "half way" in str(e.value)
        assert seen == [len(users)]  # the invariant ran on the state before it
    else:
        assert e.value.invariant.endswith("ages_positive")
    assert _listing(store_dir) == listing  # the directory, byte for byte
    with Store.open(store_dir, tables=KINDS[kind]) as s:
        assert s.ledger == [] and format_digest(s.digest()) == before
        assert s.table("users").to_dict() == users  # every value as it was
        assert s.table("users")[3] == {"name": "user 3", "age": 23, "tags": [3, "t"]}
    with Store.open(store_dir, tables=KINDS[kind], migrations=_split_names()) as s:
        assert s.ledger[0]["digest_before"] == before  # still pending, and runs now
        assert s.table("users")[3] == {"first": "user", "last": "3", "age": 23,
                                       "tags": [3, "t"]}


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_in_place_changes_are_the_migration_s_result_and_share_nothing(store_dir, kind):
    before, users = _v1_of(store_dir, kind)
    mig = Migrations()
    held = {}

    @mig.invariant("users")
    def tags_are_lists(t):
        return all(type(v["tags"]) is list for v in t.values())

    @mig.migration("in-place", table="users", to_version=2)
    def in_place(t):
        for k, v in t.items():
            v["tags"].append(k)  # nested, in place
            v["age"] += 1
        del t[0]
        t["new"] = {"age": 0, "tags": []}
        held.update(t)  # the migration keeps its objects: they must not be the state's

    with Store.open(store_dir, tables=KINDS[kind], migrations=mig) as s:
        got = s.table("users")
        assert 0 not in got and got["new"] == {"age": 0, "tags": []}
        assert got[7] == {"name": "user 7", "age": 28, "tags": [7, "t", 7]}
        assert len(got) == len(users)
        after = format_digest(s.digest())
        assert s.ledger[0]["digest_before"] == before and s.ledger[0]["digest_after"] == after
        held[7]["tags"].append("later")  # what the function still holds
        held[7]["age"] = -1
        assert got[7] == {"name": "user 7", "age": 28, "tags": [7, "t", 7]}
        assert format_digest(s.digest()) == after
    with Store.open(store_dir, tables=KINDS[kind]) as s:
        assert format_digest(s.digest()) == after
        assert s.table("users")[7]["tags"] == [7, "t", 7]
    # The rollback point was written after the function ran: from the old
    # state, which the function's changes in place never reached.
    assert rh.rollback(store_dir)["digest"] == before
    with Store.open(store_dir, tables=KINDS[kind]) as s:
        assert s.table("users").to_dict() == users


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_what_commits_is_what_the_function_left_not_what_an_invariant_did(store_dir, kind):
    _v1_of(store_dir, kind)
    mig = Migrations()

    @mig.invariant("users")
    def meddles(t):
        for v in t.values():
            if "first" in v:
                v["first"] = "changed by an invariant"  # the values are not copies
        return True

    @mig.migration("split", table="users", to_version=2)
    def split(t):
        for v in t.values():
            v["first"], v["last"] = v.pop("name").split(" ")

    with Store.open(store_dir, tables=KINDS[kind], migrations=mig) as s:
        assert s.table("users")[4]["first"] == "user"
        assert s.ledger[0]["digest_after"] == format_digest(s.digest())


def test_a_published_snapshot_at_the_lsn_is_the_rollback_point(store_dir):
    before = _v1(store_dir)
    with Store.open(store_dir) as s:
        point = s.checkpoint()["lsn"]
    snapshot_files = _listing(os.path.join(store_dir, "snapshots"))
    with Store.open(store_dir, migrations=_split_names()) as s:
        assert s.ledger[0]["snapshot_before"] == point and s.ledger[0]["lsn"] == point + 1
    now = _listing(os.path.join(store_dir, "snapshots"))
    assert {k: v for k, v in now.items() if k in snapshot_files} == snapshot_files
    assert rh.rollback(store_dir)["digest"] == before
    with Store.open(store_dir) as s:
        assert format_digest(s.digest()) == before and s.ledger == []
