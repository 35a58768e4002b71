"""Every CLI command on every store shape, in a real subprocess.

Shapes: each table kind (kv, DictTable, NumericTable, a custom StateType),
all four together, with the log trimmed by two checkpoints or whole, after a
migration, and with a corrupted frame; custom tables with and without their
class given to the CLI (``--tables helpers.cli_types``). Every command gives
its documented output or a one-line typed error with exit 1 or 2, never a
traceback. The stores are built once per module (their bytes are the same
whichever core writes them) and copied for the commands that write.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys

import pytest

import rehydrate as rh
from rehydrate import manifest
from rehydrate.plan import log_records
from rehydrate.snapshot import list_snapshots
from rehydrate.wal import WAL_DIR, list_segments

from helpers import corrupt as C
from helpers.cli_types import STATS, TopK, tables as USER_TABLES

TESTS_DIR = os.path.dirname(os.path.abspath(__file__))
TABLES_MODULE = "helpers.cli_types"

KINDS = {"kv": "users", "dict": "sessions", "numeric": "stats", "custom": "top"}

# name: (kinds, checkpoints, migrated, damaged)
SHAPES = {
    "kv": (("kv",), 3, False, False),
    "dict": (("dict",), 3, False, False),
    "numeric": (("numeric",), 3, False, False),
    "custom": (("custom",), 3, False, False),
    "mixed": (("kv", "dict", "numeric", "custom"), 3, False, False),
    "mixed-log": (("kv", "dict", "numeric", "custom"), 0, False, False),
    "migrated": (("kv", "dict"), 1, True, False),
    "damaged": (("kv", "dict", "numeric", "custom"), 3, False, True),
}

# (shape, whether the CLI is given the custom class): deterministic ids.
CASES = [("kv", False), ("dict", False), ("numeric", False), ("custom", False),
         ("custom", True), ("mixed", False), ("mixed", True), ("mixed-log", False),
         ("migrated", False), ("damaged", True)]
CASE_IDS = [f"{shape}{'+class' if cls else ''}" for shape, cls in CASES]

COMMANDS = {
    "verify": ["verify"],
    "verify-deep": ["verify", "--deep"],
    "inspect": ["inspect"],
    "dump": ["dump"],
    "digest": ["digest"],
    "plan": ["plan"],
    "replay": ["replay"],
    "compact": ["compact"],
    "repair-dry-run": ["repair", "--dry-run"],
    "migrate-status": ["migrate", "status"],
}
TEXT_SHAPES = {"mixed", "mixed-log", "migrated", "damaged"}
WRITES = {"replay", "compact"}  # these get a copy of the shared store
TAKES_TABLES = {"verify", "verify-deep", "inspect", "digest", "replay", "compact"}

mig = rh.Migrations()


@mig.migration("wrap-users", table="users", to_version=2)
def _wrap_users(t):
    for k in list(t):
        t[k] = {"v": t[k]}


def _noise(i: int) -> str:
    # Values LZ4 cannot shrink much, so a few writes fill a segment.
    return hashlib.sha256(str(i).encode()).hexdigest()


def _write(s, kinds, lo: int, hi: int) -> None:
    for i in range(lo, hi):
        if "kv" in kinds:
            s.put("users", f"u{i % 40}", {"i": i, "name": _noise(i)})
            if i % 25 == 24:
                s.delete("users", f"u{(i + 3) % 40}")
        if "dict" in kinds:
            s.put("sessions", i % 30, [i, _noise(-i)])
        if "numeric" in kinds:
            for row in range(i % 64, 64, 11):  # numeric records are small: several
                s.incr("stats", row, 1, column="hits")
            s.put("stats", i % 64, {"score": i / 7})
        if "custom" in kinds:
            s.put("top", f"t{i % 9}-{_noise(i)[:40]}", i)
        if i % 10 == 9:
            s.sync()  # a frame boundary, so the log has many frames


def _build(path: str, kinds, checkpoints: int, migrated: bool, damaged: bool) -> dict:
    """Write the shape; what the state holds, as the service sees it."""
    tables = {KINDS[k]: USER_TABLES[KINDS[k]] for k in kinds if k != "kv"}
    with rh.Store.open(path, tables=tables, segment_bytes=4096, sync="none") as s:
        _write(s, kinds, 0, 60)
        for c in range(checkpoints):
            s.checkpoint()
            _write(s, kinds, 60 + 60 * c, 120 + 60 * c)
    if migrated:
        with rh.Store.open(path, tables=tables, migrations=mig, segment_bytes=4096,
                           sync="none") as s:
            assert [e["id"] for e in s.ledger] == ["wrap-users"]
            _write(s, kinds, 500, 530)
    with rh.Store.open(path, tables=tables) as s:
        facts = {"lsn": s.lsn, "tables": sorted(s.tables()),
                 "lens": {n: len(s.table(n)) for n in s.tables()},
                 "digest": None if "custom" in kinds else rh.format_digest(s.digest())}
    man = manifest.read(path)
    # The shape is what its name says: a trimmed log after checkpoints.
    if checkpoints >= 3:
        assert manifest.log_start(man, path) > 1, man
    if damaged:
        start = manifest.log_start(man, path)
        frames = [f for seg in C.segment_paths(path) for f in C.frames_of(seg)
                  if f.first_lsn >= start]
        assert len(frames) >= 3, frames
        frame = frames[len(frames) // 2]  # never the last: that would be a torn tail
        C.flip_bit(frame.segment, frame.offset + 40, 1)
        facts["damage"] = (frame.segment, frame.offset)
    return facts


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    """name -> (path, facts), each shape built the first time it is asked for."""
    root = tmp_path_factory.mktemp("cli-matrix")
    built: dict = {}

    def get(name: str):
        if name not in built:
            path = str(root / name)
            built[name] = (path, _build(path, *SHAPES[name]))
        return built[name]

    return get


def run(args, env, cwd):
    return subprocess.run([sys.executable, "-m", "rehydrate", *args], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=120)


def _env(core_env, with_class: bool) -> dict:
    env = dict(core_env)
    # Importable only when asked: the tests' directory on the child's path.
    env.pop("PYTHONPATH", None)
    if with_class:
        env["PYTHONPATH"] = TESTS_DIR
    return env


def _no_traceback(out) -> None:
    both = out.stdout + out.stderr
    assert "Traceback" not in both and 'File "' not in both, both


def _one_line_error(out, command: str, *needles) -> None:
    """A one-line typed error on stderr naming what went wrong."""
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    assert lines[0].startswith(f"rehydrate {command}: "), lines
    assert lines[0].endswith("]"), lines  # the reason code of a RehydrateError
    for n in needles:
        assert n in lines[0], (n, lines[0])


def _expect(shape: str, with_class: bool, command: str) -> int:
    kinds, _cp, _mig, damaged = SHAPES[shape]
    opaque = "custom" in kinds and not with_class
    if command == "digest" and "custom" in kinds and not damaged:
        return 2  # a custom table has no digest: the others are given
    if command in WRITES and opaque:
        return 2  # needs its class
    if damaged and command not in ("plan", "migrate-status"):
        return 1
    return 0


def _check_json(shape, with_class, command, out, path, facts) -> None:
    kinds, checkpoints, migrated, damaged = SHAPES[shape]
    rc = out.returncode
    if command == "dump":
        lines = [json.loads(line) for line in out.stdout.splitlines()]
        assert lines, "the log after the last checkpoint has records"
        for line in lines:
            assert {"lsn", "table", "op", "key", "value"} <= set(line), line
            assert line["table"] in facts["tables"] or line["op"] in ("noop", "offsets")
        assert max(line["lsn"] for line in lines) == facts["lsn"]
        if damaged:
            assert facts["damage"][0] in out.stderr
        return
    if rc == 2 and command in WRITES:
        _one_line_error(out, command, "'top'", "--tables", "[needs_class]")
        assert out.stdout == ""
        return
    if rc == 1 and command in ("digest", "replay", "compact"):
        _one_line_error(out, command, os.path.basename(facts["damage"][0]), "[bad_crc]")
        return
    d = json.loads(out.stdout)
    if command in ("verify", "verify-deep"):
        assert {"ok", "last_lsn", "records", "segments", "problems"} <= set(d)
        assert d["ok"] is (not damaged)
        if damaged:
            assert any(p["path"] == facts["damage"][0] and p["offset"] == facts["damage"][1]
                       for p in d["problems"]), d["problems"]
        else:
            assert d["last_lsn"] == facts["lsn"]
            # (a migration's rollback point is reported unchecked: a warning)
            assert [p for p in d["problems"] if p["action"] != "ignored"] == [], d["problems"]
        if command == "verify-deep":
            assert {"digest", "tables", "unavailable"} <= set(d)
            if not damaged:
                assert d["digest"] == facts["digest"]
                assert sorted(d["tables"]) == facts["tables"]
                assert sorted(d["unavailable"]) == (["top"] if "custom" in kinds else [])
    elif command == "inspect":
        assert {"tables", "segments", "snapshots", "last_lsn", "ok"} <= set(d)
        assert d["ok"] is (not damaged)
        got = {t["name"]: t["keys"] for t in d["tables"]}
        assert sorted(got) == facts["tables"]
        for name, n in got.items():
            if name == "top" and not with_class and checkpoints:
                assert n is None  # restored from a snapshot without its class
            elif not damaged:
                assert n == facts["lens"][name], (name, n)
        assert [sn["lsn"] for sn in d["snapshots"]] == list_snapshots(path)
    elif command == "digest":
        assert {"digest", "tables", "unavailable", "last_lsn", "ok"} <= set(d)
        assert sorted(d["tables"]) == facts["tables"]
        if "custom" in kinds:
            assert d["digest"] is None and d["tables"]["top"] is None
            assert list(d["unavailable"]) == ["top"]
            assert all(v for n, v in d["tables"].items() if n != "top")
            _one_line_error(out, "digest", "'top'", "no state digest")
        else:
            assert d["digest"] == facts["digest"] and d["unavailable"] == {}
    elif command == "plan":
        assert {"snapshot", "segments", "wal_bytes", "log_records", "records_estimate",
                "predicted_s"} <= set(d)
        if not damaged:
            assert d["log_records"] == facts["lsn"] - d["snapshot"]["lsn"]
    elif command == "replay":
        assert {"phases", "total_s", "problems"} <= set(d)
        phases = {p["name"]: p for p in d["phases"]}
        assert set(rh.PHASES) - {"ready"} <= set(phases), phases
    elif command == "compact":
        assert {"lsn", "bytes", "path", "digest"} <= set(d)
        assert d["lsn"] == facts["lsn"]
        assert d["digest"] == facts["digest"]  # None where a custom table has none
    elif command == "repair-dry-run":
        assert {"changed", "dry_run", "last_lsn", "problems"} <= set(d)
        assert d["dry_run"] is True and d["changed"] is damaged
    elif command == "migrate-status":
        assert {"tables", "ledger", "last_lsn"} <= set(d)
        assert sorted(d["tables"]) == facts["tables"]
        assert [e["id"] for e in d["ledger"]] == (["wrap-users"] if migrated else [])


@pytest.mark.parametrize("command", list(COMMANDS))
@pytest.mark.parametrize("shape, with_class", CASES, ids=CASE_IDS)
def test_every_command_on_every_shape(shapes, tmp_path, core_env, core_name, shape,
                                      with_class, command):
    path, facts = shapes(shape)
    if command in WRITES:
        copy = str(tmp_path / "copy")
        shutil.copytree(path, copy)
        path = copy
    before = C.tree_hashes(path)
    args = [*COMMANDS[command], path]
    if with_class and command in TAKES_TABLES:
        args += ["--tables", TABLES_MODULE]
    env = _env(core_env, with_class)
    want = _expect(shape, with_class, command)
    out = run([*args, "--json"], env, str(tmp_path))
    _no_traceback(out)
    assert out.returncode == want, (out.returncode, out.stdout[-2000:], out.stderr)
    _check_json(shape, with_class, command, out, path, facts)
    if command not in WRITES:
        assert C.tree_hashes(path) == before, "a reading command changed a byte"
    # The human output: the same exit code, no traceback, something said.
    # Its formatting depends on neither the core nor more than the kinds
    # present: checked once, on the shapes that hold every kind.
    if core_name == "native" and command not in WRITES and shape in TEXT_SHAPES:
        human = run(args, env, str(tmp_path))
        _no_traceback(human)
        assert human.returncode == want, (human.stdout[-2000:], human.stderr)
        assert (human.stdout + human.stderr).strip()
        assert "None" not in human.stdout, human.stdout  # a missing value shows as "-"


def test_compact_with_the_class_keeps_the_state(shapes, tmp_path, core_env):
    path, facts = shapes("mixed")
    copy = str(tmp_path / "copy")
    shutil.copytree(path, copy)
    out = run(["compact", copy, "--tables", TABLES_MODULE, "--json"],
              _env(core_env, True), str(tmp_path))
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["lsn"] == facts["lsn"]
    with rh.Store.open(copy, tables=USER_TABLES) as s:
        assert {n: len(s.table(n)) for n in s.tables()} == facts["lens"]
        assert s.recovery_report.ok
    assert C.tree_hashes(path) != C.tree_hashes(copy)  # a new snapshot was written


def test_tables_module_that_does_not_import_is_a_one_line_error(shapes, tmp_path, core_env):
    path, _ = shapes("custom")
    for command in ("verify", "inspect", "digest", "replay", "compact"):
        out = run([command, path, "--tables", TABLES_MODULE], _env(core_env, False),
                  str(tmp_path))
        _no_traceback(out)
        assert out.returncode == 2, (command, out.stdout, out.stderr)
        _one_line_error(out, command, "cannot import", TABLES_MODULE, "[needs_class]")


def test_a_reader_without_the_class_reports_unknown_keys_not_a_crash(shapes, core):
    path, facts = shapes("mixed")
    info = rh.inspect(path)
    keys = {t["name"]: t["keys"] for t in info["tables"]}
    assert keys["top"] is None
    assert keys["users"] == facts["lens"]["users"]
    info = rh.inspect(path, classes={"top": TopK})
    assert {t["name"]: t["keys"] for t in info["tables"]}["top"] == facts["lens"]["top"]


def test_store_digest_of_a_custom_table_is_a_typed_error(tmp_path, core):
    with rh.Store.open(str(tmp_path / "s"), tables={"top": TopK, "stats": STATS}) as s:
        s.put("top", "a", 1)
        s.put("users", "u", 1)
        with pytest.raises(rh.ConfigError) as e:
            s.digest()
        assert e.value.reason == "no_digest" and "'top'" in str(e.value)


# ------------------------------------------------------- the small fixes
def test_dash_dash_version_is_the_version_command(core_env, tmp_path):
    a = run(["--version"], core_env, str(tmp_path))
    b = run(["version"], core_env, str(tmp_path))
    assert a.returncode == b.returncode == 0, (a.stderr, b.stderr)
    assert a.stdout == b.stdout and rh.__version__ in a.stdout
    bad = run(["--version", "verify", str(tmp_path)], core_env, str(tmp_path))
    assert bad.returncode == 2 and "Traceback" not in bad.stderr


def test_dump_of_an_unknown_table_is_exit_2_naming_the_tables(shapes, core_env, tmp_path):
    path, facts = shapes("mixed")
    out = run(["dump", path, "--table", "nosuch"], core_env, str(tmp_path))
    assert out.returncode == 2, (out.stdout, out.stderr)
    assert out.stdout == ""
    _one_line_error(out, "dump", "'nosuch'", "[no_table]", *facts["tables"])


def test_dump_of_a_table_only_in_the_snapshot_is_empty_not_an_error(tmp_path, core_env):
    path = str(tmp_path / "s")
    with rh.Store.open(path, segment_bytes=4096, sync="none") as s:
        for i in range(300):
            s.put("old", i, _noise(i))
        s.checkpoint()
        s.put("new", 1, 1)
        s.checkpoint()
        s.put("new", 2, 2)
    assert manifest.log_start(manifest.read(path), path) > 1
    out = run(["dump", path, "--table", "old"], core_env, str(tmp_path))
    assert out.returncode == 0, out.stderr
    assert out.stdout == ""
    new = run(["dump", path, "--table", "new"], core_env, str(tmp_path))
    assert [json.loads(line)["key"] for line in new.stdout.splitlines()][-1] == 2


def test_repair_dry_run_says_would_end_at(shapes, core_env, tmp_path):
    path, facts = shapes("damaged")
    before = C.tree_hashes(path)
    out = run(["repair", "--dry-run", path], core_env, str(tmp_path))
    assert out.returncode == 1, out.stderr
    assert "would end at LSN" in out.stdout and "now ends" not in out.stdout
    assert C.tree_hashes(path) == before
    copy = str(tmp_path / "copy")
    shutil.copytree(path, copy)
    real = run(["repair", copy], core_env, str(tmp_path))
    assert real.returncode == 0, real.stderr
    assert "now ends at LSN" in real.stdout and "would end" not in real.stdout


def _replayed(report: dict) -> int:
    return next(p for p in report["phases"] if p["name"] == "replay").get("records", 0)


@pytest.mark.parametrize("sync", ["none", "always"])
def test_plan_after_compact_counts_the_records_a_replay_applies(tmp_path, core_env, sync):
    path = str(tmp_path / "s")
    with rh.Store.open(path, sync=sync, segment_bytes=1 << 20) as s:
        for i in range(150):
            s.put("t", i % 20, {"i": i})
            if i % 10 == 9:
                s.sync()
    assert len(C.segment_paths(path)) == 1  # the snapshot falls inside the segment
    assert run(["compact", path], core_env, str(tmp_path)).returncode == 0
    with rh.Store.open(path, sync=sync) as s:
        for i in range(25):
            s.put("t", i, "after")
        s.sync()
        last = s.lsn
    plan = json.loads(run(["plan", path, "--json"], core_env, str(tmp_path)).stdout)
    assert plan["snapshot"]["lsn"] == 150
    assert plan["log_records"] == last - 150 == 25 and plan["log_records_exact"] is True
    assert plan["records_estimate"] == plan["snapshot"]["keys"] + 25
    out = run(["replay", path, "--json"], core_env, str(tmp_path))
    assert out.returncode == 0, out.stderr
    assert _replayed(json.loads(out.stdout)) == plan["log_records"]
    human = run(["plan", path], core_env, str(tmp_path))
    assert "(25 records after the snapshot)" in human.stdout, human.stdout


def test_plan_extrapolates_a_segment_with_more_frames_than_it_reads(tmp_path, core):
    path = str(tmp_path / "s")
    with rh.Store.open(path, sync="always", segment_bytes=1 << 20) as s:
        for i in range(400):
            s.put("t", i % 50, i)
        snap = s.checkpoint()["lsn"]
        for i in range(600):
            s.put("t", i % 50, -i)
        last = s.lsn
    segs = list_segments(os.path.join(path, WAL_DIR))[0]
    exact, is_exact = log_records(segs, snap, max_frames=10_000)
    assert (exact, is_exact) == (last - snap, True)
    assert len(C.frames_of(segs[-1].path)) > 256  # more than a plan reads by default
    assert log_records(segs, snap)[1] is False
    est, is_exact = log_records(segs, snap, max_frames=64)
    assert is_exact is False
    assert abs(est - (last - snap)) <= 0.1 * (last - snap), (est, last - snap)
    with rh.Store.open(path) as s:
        assert _replayed(s.warmup_report) == last - snap
