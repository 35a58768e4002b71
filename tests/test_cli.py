"""The `rehydrate` command in a subprocess: exit codes, JSON shapes, dump."""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys

import pytest

from rehydrate import Store

from helpers import corrupt as C
from helpers.model import Model, apply_to_store, normalize

OPS = [
    ("put", "users", "ann", {"age": 41, "tags": ("a", "b")}),
    ("put", "users", b"\x00raw", b"\xffbytes"),
    ("incr", "counts", 7, 2),
    ("put", "users", 12, None),
    ("batch", [("put", "orders", "o1", [1, 2]), ("incr", "counts", 7, 3),
               ("delete", "users", 12)]),
    ("clear", "orders"),
    ("put", "orders", "o2", 2.5),
    ("delete", "users", "nobody"),
    ("incr", "counts", "f", 0.5),
]


def _records():
    """(lsn, table, op, key, value) of every record in OPS, in LSN order."""
    out = []
    for op in OPS:
        for sub in (op[1] if op[0] == "batch" else [op]):
            kind, table = sub[0], sub[1]
            key = sub[2] if len(sub) > 2 else None
            value = sub[3] if len(sub) > 3 else None
            out.append((len(out) + 1, table, kind, key, value))
    return out


def _json_key(k):
    return {"b64": base64.b64encode(k).decode()} if isinstance(k, bytes) else k


@pytest.fixture
def store(tmp_path):
    path = str(tmp_path / "state")
    m = Model()
    with Store.open(path, sync="always", segment_bytes=4096) as s:
        for op in OPS:
            assert apply_to_store(s, op) == m.apply(op)
    return path, m


def run(args, env, **kw):
    return subprocess.run([sys.executable, "-m", "rehydrate", *args], env=env,
                          capture_output=True, text=True, timeout=120, **kw)


def _tear(path):
    # What a crash mid-write leaves: no clean close recorded, the last frame cut.
    C.as_crashed(path)
    seg = C.segment_paths(path)[-1]
    last = C.frames_of(seg)[-1]
    C.truncate(seg, last.offset + 5)
    return seg, last


def _flip_middle(path):
    # (in a middle frame: the frames are found before any other damage)
    seg = C.segment_paths(path)[-1]
    frame = C.frames_of(seg)[3]
    C.flip_bit(seg, frame.offset + 40, 1)
    return seg, frame


# ------------------------------------------------------------- version
def test_version_json_names_the_core(core_env, core):
    out = run(["version", "--json"], core_env)
    assert out.returncode == 0, out.stderr
    info = json.loads(out.stdout)
    assert info["core"] == core.IMPLEMENTATION
    import rehydrate

    assert info["version"] == rehydrate.__version__
    human = run(["version"], core_env)
    assert human.returncode == 0 and core.IMPLEMENTATION in human.stdout


# -------------------------------------------------------------- verify
def test_verify_a_clean_store_exits_0(store, core_env):
    path, m = store
    out = run(["verify", path, "--json"], core_env)
    assert out.returncode == 0, out.stderr
    d = json.loads(out.stdout)
    assert {"ok", "last_lsn", "records", "segments", "problems"} <= set(d)
    assert d["ok"] is True and d["problems"] == []
    assert d["last_lsn"] == d["records"] == m.lsn
    assert len(d["segments"]) == len(C.segment_paths(path))
    for mode in ("strict", "tolerate-tail", "point-in-time", "skip-corrupted"):
        human = run(["verify", path, "--recovery", mode], core_env)
        assert human.returncode == 0, (mode, human.stdout, human.stderr)
        assert "OK" in human.stdout


@pytest.mark.parametrize("mode", ["strict", "tolerate-tail", "point-in-time", "skip-corrupted"])
def test_verify_a_bit_flip_mid_log_exits_1_and_names_the_problem(store, core_env, mode):
    path, _ = store
    seg, frame = _flip_middle(path)
    before = C.tree_hashes(path)
    out = run(["verify", path, "--recovery", mode, "--json"], core_env)
    assert out.returncode == 1, (out.stdout, out.stderr)
    d = json.loads(out.stdout)
    assert d["ok"] is False
    for p in d["problems"]:
        assert {"kind", "path", "offset", "lsn", "detail"} <= set(p)
    assert any(p["path"] == seg and p["offset"] == frame.offset and p["lsn"] == frame.first_lsn
               and p["kind"] == "bad_crc" for p in d["problems"]), d["problems"]
    human = run(["verify", path, "--recovery", mode], core_env)
    assert human.returncode == 1 and seg in human.stdout
    assert C.tree_hashes(path) == before, "verify must not change a byte"


def test_verify_a_torn_tail_warns_and_exits_0_but_1_under_strict(store, core_env):
    path, _ = store
    seg, last = _tear(path)
    before = C.tree_hashes(path)
    out = run(["verify", path, "--json"], core_env)
    assert out.returncode == 0, (out.stdout, out.stderr)
    d = json.loads(out.stdout)
    assert d["ok"] is True
    assert [(p["kind"], p["path"], p["offset"]) for p in d["problems"]] == \
        [("torn_tail", seg, last.offset)]
    human = run(["verify", path], core_env)
    assert human.returncode == 0 and "torn_tail" in human.stdout  # the warning
    strict = run(["verify", path, "--recovery", "strict", "--json"], core_env)
    assert strict.returncode == 1
    assert json.loads(strict.stdout)["ok"] is False
    assert C.tree_hashes(path) == before


@pytest.mark.parametrize("command", ["verify", "inspect", "dump"])
def test_a_missing_directory_exits_2(tmp_path, core_env, command):
    out = run([command, str(tmp_path / "nope")], core_env)
    assert out.returncode == 2, (out.stdout, out.stderr)
    assert str(tmp_path / "nope") in out.stderr


@pytest.mark.parametrize("command", ["verify", "inspect", "dump"])
def test_a_directory_that_is_not_a_store_exits_2(tmp_path, core_env, command):
    d = tmp_path / "foreign"
    d.mkdir()
    (d / "file.txt").write_text("hello")
    out = run([command, str(d)], core_env)
    assert out.returncode == 2, (out.stdout, out.stderr)
    assert sorted(os.listdir(d)) == ["file.txt"]


@pytest.mark.parametrize("args", [
    [], ["frobnicate"], ["verify"], ["verify", "{dir}", "--recovery", "lenient"],
    ["dump", "{dir}", "--from-lsn", "abc"], ["inspect", "{dir}", "--bogus"],
    ["verify", "{dir}", "extra"],
], ids=repr)
def test_bad_arguments_exit_2(store, core_env, args):
    path, _ = store
    out = run([a.replace("{dir}", path) for a in args], core_env)
    assert out.returncode == 2, (args, out.stdout, out.stderr)
    assert out.stderr.strip()


# ------------------------------------------------------------- inspect
def test_inspect_json_lists_segments_tables_and_lsns(store, core_env):
    path, m = store
    out = run(["inspect", path, "--json"], core_env)
    assert out.returncode == 0, out.stderr
    d = json.loads(out.stdout)
    assert d["ok"] is True and d["last_lsn"] == d["records"] == m.lsn and d["first_lsn"] == 1
    assert [os.path.basename(s["path"]) for s in d["segments"]] == \
        [os.path.basename(p) for p in C.segment_paths(path)]
    assert {t["name"]: t["keys"] for t in d["tables"]} == \
        {name: len(rows) for name, rows in m.tables.items()}
    human = run(["inspect", path], core_env)
    assert human.returncode == 0
    for name in m.tables:
        assert name in human.stdout


def test_inspect_a_damaged_store_exits_1(store, core_env):
    path, _ = store
    _flip_middle(path)
    out = run(["inspect", path, "--json"], core_env)
    assert out.returncode == 1
    assert json.loads(out.stdout)["ok"] is False


# ---------------------------------------------------------------- dump
def _dump(path, env, *extra):
    out = run(["dump", path, *extra], env)
    assert out.returncode == 0, out.stderr
    return [json.loads(line) for line in out.stdout.splitlines()]


def _check_line(line, rec):
    lsn, table, op, key, value = rec
    assert {"lsn", "table", "op", "key", "value"} <= set(line)
    assert (line["lsn"], line["table"], line["op"]) == (lsn, table, op)
    assert line["key"] == _json_key(key)
    if op == "put":
        v = normalize(value)
        if isinstance(v, bytes):
            v = _json_key(v)
        assert line["value"] == v
    elif op == "incr":
        assert line["value"] == value


def test_dump_prints_every_record_as_a_json_line(store, core_env):
    path, _ = store
    lines = _dump(path, core_env)
    recs = _records()
    assert len(lines) == len(recs)
    for line, rec in zip(lines, recs):
        _check_line(line, rec)


def test_dump_shows_bytes_as_base64(store, core_env):
    path, _ = store
    line = _dump(path, core_env)[1]
    assert line["key"] == {"b64": base64.b64encode(b"\x00raw").decode()}
    assert line["value"] == {"b64": base64.b64encode(b"\xffbytes").decode()}


@pytest.mark.parametrize("extra, keep", [
    (["--table", "users"], lambda r: r[1] == "users"),
    (["--from-lsn", "4"], lambda r: r[0] >= 4),
    (["--to-lsn", "5"], lambda r: r[0] <= 5),
    (["--from-lsn", "3", "--to-lsn", "6"], lambda r: 3 <= r[0] <= 6),
    (["--table", "counts", "--from-lsn", "6"], lambda r: r[1] == "counts" and r[0] >= 6),
    (["--from-lsn", "5", "--to-lsn", "5"], lambda r: r[0] == 5),
], ids=lambda v: " ".join(v) if isinstance(v, list) else "")
def test_dump_filters_by_table_and_lsn_range(store, core_env, extra, keep):
    path, _ = store
    lines = _dump(path, core_env, *extra)
    want = [r for r in _records() if keep(r)]
    assert [line["lsn"] for line in lines] == [r[0] for r in want]
    for line, rec in zip(lines, want):
        _check_line(line, rec)


def test_dump_of_a_damaged_store_skips_the_bad_frame_and_exits_1(store, core_env):
    path, _ = store
    seg, frame = _flip_middle(path)
    out = run(["dump", path], core_env)
    assert out.returncode == 1
    lsns = [json.loads(line)["lsn"] for line in out.stdout.splitlines()]
    assert lsns == [r[0] for r in _records() if r[0] not in frame.lsns]
    assert seg in out.stderr


def test_no_command_changes_a_byte_of_a_damaged_store(store, core_env, tmp_path):
    path, _ = store
    _flip_middle(path)
    _tear(path)
    before = C.tree_hashes(path)
    codes = {}
    for args in (["verify", path], ["verify", path, "--json", "--recovery", "skip-corrupted"],
                 ["inspect", path], ["inspect", path, "--json"], ["dump", path]):
        out = run(args, core_env)
        assert "Traceback" not in out.stderr, (args, out.stderr)
        codes[" ".join(args[:1] + args[2:])] = out.returncode
    # Every one of them found the damage (exit 1), and none repaired it.
    assert codes == {"verify": 1, "verify --json --recovery skip-corrupted": 1, "inspect": 1,
                     "inspect --json": 1, "dump": 1}, codes
    assert C.tree_hashes(path) == before
    shutil.rmtree(path)


def test_dump_of_a_torn_tail_exits_0_but_1_under_strict(store, core_env):
    path, _ = store
    _tear(path)
    out = run(["dump", path], core_env)
    assert out.returncode == 0, out.stderr
    assert [json.loads(line)["lsn"] for line in out.stdout.splitlines()] == \
        [r[0] for r in _records()][:-1]
    assert "torn_tail" in out.stderr
    assert run(["dump", path, "--recovery", "strict"], core_env).returncode == 1
