"""Plain ``verify`` checks every snapshot the MANIFEST lists, file by file,
and how the snapshots' LSNs meet the log's; ``verify`` of one snapshot
folder checks it alone (docs/recovery.md, "Verify").

The stores hold a kv table, a DictTable, a NumericTable and a custom
StateType, so every kind of snapshot file (Arrow for kv, dict and numeric
tables, msgpack, the native image) is corrupted in turn. The corruption
table runs the Python function; the exit codes and the ``--json`` shape run
the command in a subprocess.
"""

import json
import os
import shutil
import struct
import subprocess
import sys

import pytest

import rehydrate as rh
from rehydrate import Store, _backend, manifest, verify
from rehydrate.snapshot import SNAPSHOTS_DIR, read_meta, snapshot_name

from helpers import corrupt as C


class TopK(rh.StateType):
    """The largest number put under each key (a custom table)."""

    def __init__(self):
        self.top = {}

    def apply(self, op, key, value):
        if op == "put":
            self.top[key] = max(value, self.top.get(key, value))
        elif op == "delete":
            self.top.pop(key, None)
        elif op == "clear":
            self.top.clear()

    def snapshot(self):
        return [[k, v] for k, v in sorted(self.top.items())]

    @classmethod
    def restore(cls, data):
        t = cls()
        t.top = {k: v for k, v in data}
        return t


def _tables():
    return {"d": rh.DictTable, "top": TopK,
            "n": rh.NumericTable({"hits": "int64", "score": "float64"}, rows=64)}


def _fill(s, start, count):
    for i in range(start, start + count):
        s.put("kv", i, {"v": i, "pad": "x" * 12})
        s.put("d", f"k{i}", [i, str(i)])
        s.put("top", f"t{i % 7}", i)
        s.put("n", i % 64, {"hits": i, "score": i / 4})


def _build(path, writer=None):
    """A store with a snapshot of all four kinds and a log after it; the
    snapshot written by ``writer``'s core (default: the one under test).
    Returns the snapshot's folder."""
    def make():
        with Store.open(path, tables=_tables()) as s:
            _fill(s, 0, 120)
            lsn = s.checkpoint()["lsn"]
            _fill(s, 120, 10)
        return os.path.join(path, SNAPSHOTS_DIR, snapshot_name(lsn))
    if writer is None:
        return make()
    with _backend.use(writer):
        return make()


@pytest.fixture
def snap(tmp_path):
    """(store, snapshot folder), the snapshot written by the native core, so
    that it has an image whichever core checks it."""
    path = str(tmp_path / "s")
    return path, _build(path, writer="native")


def _file_of(spath, table, image=False):
    for e in read_meta(spath)["tables"]:
        if e["name"] == table:
            return os.path.join(spath, e["image"]["file"] if image else e["file"])
    raise AssertionError(f"no table {table!r} in the snapshot")


def _damage(report):
    return [p for p in report.problems if p.is_damage]


def _rehydrate(*args, env):
    return subprocess.run([sys.executable, "-m", "rehydrate", *args], env=env,
                          capture_output=True, text=True, timeout=120)


# ------------------------------------------------------------ a whole store
@pytest.mark.parametrize("writer", ["native", "pure"])
def test_an_intact_store_verifies_clean_with_its_snapshot_checked(tmp_path, writer):
    path = str(tmp_path / "s")
    spath = _build(path, writer=writer)
    names = set(os.listdir(spath))
    assert {"META", "0.arrow", "1.arrow", "2.msgpack", "3.arrow"} <= names
    assert ("0.kvimg" in names) == (writer == "native")
    report = verify(path)
    assert report.ok and report.problems == []
    assert [(s["lsn"], s["path"], s["ok"]) for s in report.snapshots] == \
        [(int(os.path.basename(spath)), spath, True)]
    assert sorted(report.snapshots[0]["tables"]) == ["d", "kv", "n", "top"]
    assert report.snapshots[0]["bytes"] == sum(
        os.path.getsize(os.path.join(spath, n)) for n in names)


def _flip(offset):
    return lambda p: C.flip_bit(p, offset, 0)


def _truncate_by_one(p):
    C.truncate(p, os.path.getsize(p) - 1)


def _stray_byte(p):
    C.append(p, b"\x00")


def _size(p):
    return os.path.getsize(p)


# (id, file: (table or "META", image?), edit, expected offset: a number,
#  a function of the original size, or None for "not asserted")
CORRUPTIONS = [
    ("meta-magic", ("META", False), _flip(0), 0),
    ("meta-length", ("META", False), _flip(8), 8),
    ("meta-crc", ("META", False), _flip(12), 12),
    ("meta-json", ("META", False), _flip(40), 12),
    ("meta-truncated", ("META", False), _truncate_by_one, 8),
    ("meta-stray-byte", ("META", False), _stray_byte, 8),
    ("kv-arrow-magic", ("kv", False), _flip(0), None),
    ("kv-arrow-middle", ("kv", False), lambda p: C.flip_bit(p, _size(p) // 2, 3), None),
    ("kv-arrow-truncated", ("kv", False), _truncate_by_one, lambda n: n - 1),
    ("kv-arrow-stray-byte", ("kv", False), _stray_byte, lambda n: n),
    ("dict-arrow-middle", ("d", False), lambda p: C.flip_bit(p, _size(p) // 2, 5), None),
    ("dict-arrow-truncated", ("d", False), _truncate_by_one, lambda n: n - 1),
    ("numeric-arrow-middle", ("n", False), lambda p: C.flip_bit(p, _size(p) // 2, 1), None),
    ("numeric-arrow-stray-byte", ("n", False), _stray_byte, lambda n: n),
    ("custom-msgpack-first", ("top", False), _flip(0), None),
    ("custom-msgpack-truncated", ("top", False), _truncate_by_one, lambda n: n - 1),
    ("image-magic", ("kv", True), _flip(0), 0),
    ("image-header-version", ("kv", True), _flip(8), None),
    ("image-header-count", ("kv", True), _flip(16), None),
    ("image-arena", ("kv", True), lambda p: C.flip_bit(p, _size(p) - 20, 2), None),
    ("image-first-entry", ("kv", True), _flip(4096 + 8), None),
    ("image-truncated", ("kv", True), _truncate_by_one, lambda n: n - 1),
    ("image-stray-byte", ("kv", True), _stray_byte, lambda n: n),
]


@pytest.mark.parametrize("which,edit,offset", [c[1:] for c in CORRUPTIONS],
                         ids=[c[0] for c in CORRUPTIONS])
def test_a_damaged_snapshot_file_is_one_bad_snapshot_problem_naming_it(snap, which, edit, offset):
    path, spath = snap
    table, image = which
    target = os.path.join(spath, "META") if table == "META" else _file_of(spath, table, image)
    size = os.path.getsize(target)
    assert verify(path).ok  # right before the edit
    edit(target)
    before = C.tree_hashes(path)
    report = verify(path)
    assert not report.ok
    damage = _damage(report)
    assert [(p.kind, p.path) for p in damage] == [("bad_snapshot", target)]
    assert damage[0].lsn == int(os.path.basename(spath))
    if offset is not None:
        assert damage[0].offset == (offset(size) if callable(offset) else offset)
    assert [s["ok"] for s in report.snapshots] == [False]
    assert C.tree_hashes(path) == before  # verify never changes a byte


@pytest.mark.parametrize("table,image", [("kv", False), ("kv", True), ("d", False),
                                         ("n", False), ("top", False), ("META", False)],
                         ids=["kv-arrow", "kv-image", "dict", "numeric", "custom", "meta"])
def test_a_deleted_snapshot_file_is_a_bad_snapshot_problem_naming_it(snap, table, image):
    path, spath = snap
    target = os.path.join(spath, "META") if table == "META" else _file_of(spath, table, image)
    os.unlink(target)
    report = verify(path)
    assert not report.ok
    assert [(p.kind, p.path) for p in _damage(report)] == [("bad_snapshot", target)]
    assert "missing" in _damage(report)[0].detail


def test_a_table_file_that_is_not_a_regular_file_is_never_opened(snap, core_env):
    # A FIFO would block a reader that opened it: the check refuses it first.
    path, spath = snap
    target = _file_of(spath, "top")
    os.unlink(target)
    os.mkfifo(target)
    out = _rehydrate("verify", path, "--json", env=core_env)
    assert out.returncode == 1, out.stderr
    problems = json.loads(out.stdout)["problems"]
    assert [(p["kind"], p["path"], p["detail"]) for p in problems] == \
        [("bad_snapshot", target, "not a regular file")]


def test_every_damaged_file_of_one_snapshot_is_reported(snap):
    path, spath = snap
    targets = [_file_of(spath, "kv", True), _file_of(spath, "d"), _file_of(spath, "top")]
    for t in targets:
        C.flip_bit(t, os.path.getsize(t) // 2, 0)
    report = verify(path)
    assert sorted((p.kind, p.path) for p in _damage(report)) == \
        sorted(("bad_snapshot", t) for t in targets)


def test_a_listed_snapshot_that_is_gone_is_a_bad_snapshot(snap):
    path, spath = snap
    shutil.rmtree(spath)
    report = verify(path)
    assert [(p.kind, p.path) for p in _damage(report)] == [("bad_snapshot", spath)]
    assert [(s["lsn"], s["ok"], s["tables"]) for s in report.snapshots] == \
        [(int(os.path.basename(spath)), False, [])]


def test_a_snapshot_retired_while_verify_reads_it_is_not_judged(tmp_path, monkeypatch):
    # A live store's checkpoint writes the MANIFEST without the oldest
    # snapshot, then removes its folder; verify read the MANIFEST before.
    from rehydrate import snapshot

    path = str(tmp_path / "s")
    with Store.open(path) as s:
        _fill_kv(s, 0, 50)
        old = s.checkpoint()["lsn"]
    real = snapshot.check
    retired = []

    def retire_then_check(spath, lsn=None):
        if lsn == old and not retired:
            # What a checkpoint's retirement does, in its order (the log is
            # left alone, so the walk beside this thread reads what it read).
            man = manifest.read(path)
            man["snapshots"] = [x for x in man["snapshots"] if x != old]
            manifest.write(path, man)
            shutil.rmtree(spath)
            retired.append(spath)
        return real(spath, lsn)
    monkeypatch.setattr(snapshot, "check", retire_then_check)
    report = verify(path)
    assert retired and report.ok and report.problems == [] and report.snapshots == []
    monkeypatch.setattr(snapshot, "check", real)
    # Without the retirement, a listed snapshot whose folder is gone is damage.
    man = manifest.read(path)
    man["snapshots"] = man["snapshots"] + [old]
    manifest.write(path, man)
    assert [(p.kind, p.lsn) for p in _damage(verify(path))] == [("bad_snapshot", old)]


def _fill_kv(s, start, count):
    for i in range(start, start + count):
        s.put("kv", i, [i, "x" * 20])


def _rewrite_meta(spath, change):
    """Rewrite META with ``change(meta)`` applied and a valid checksum: a
    META that passes its own checks but says something else."""
    core = _backend.core()
    meta = read_meta(spath)
    change(meta)
    payload = json.dumps(meta, sort_keys=True).encode()
    with open(os.path.join(spath, "META"), "wb") as f:
        f.write(b"RHSNAPM1" + struct.pack("<II", len(payload), core.crc32c(payload)) + payload)


def _entry(meta, name):
    return next(e for e in meta["tables"] if e["name"] == name)


# (id, change to META, words of the problem, the file it names)
META_LIES = [
    ("lsn", lambda m: m.update(lsn=m["lsn"] + 1), "named for LSN", "META"),
    ("key-count", lambda m: _entry(m, "d").update(keys=_entry(m, "d")["keys"] + 1),
     "META records", "d"),
    ("digest", lambda m: _entry(m, "n").update(digest="0" * 16), "digest", "n"),
    ("crc", lambda m: _entry(m, "top").update(crc32c=_entry(m, "top")["crc32c"] ^ 1),
     "CRC32C", "top"),
    ("file-name", lambda m: _entry(m, "d").update(file="../escape"), "malformed", "META"),
    ("file-twice", lambda m: _entry(m, "n").update(file=_entry(m, "kv")["file"]),
     "another table's", "META"),
    ("image-on-a-dict-table", lambda m: _entry(m, "d").update(image=_entry(m, "kv")["image"]),
     "has an image", "META"),
]


@pytest.mark.parametrize("change,words,names", [c[1:] for c in META_LIES],
                         ids=[c[0] for c in META_LIES])
def test_a_checksummed_meta_that_disagrees_with_its_files_is_found(snap, change, words, names):
    path, spath = snap
    target = os.path.join(spath, "META") if names == "META" else _file_of(spath, names)
    _rewrite_meta(spath, change)
    damage = _damage(verify(path))
    assert [(p.kind, p.path) for p in damage] == [("bad_snapshot", target)]
    assert words in damage[0].detail


def test_stray_files_and_unlisted_snapshots_are_warnings(snap):
    path, spath = snap
    with open(os.path.join(spath, "notes.txt"), "w") as f:
        f.write("left here by an operator")
    unlisted = os.path.join(path, SNAPSHOTS_DIR, snapshot_name(3))
    shutil.copytree(spath, unlisted)
    C.flip_bit(os.path.join(unlisted, "META"), 0, 0)  # unlisted: never loaded, never judged
    report = verify(path)
    assert report.ok
    assert sorted((p.kind, p.path, p.action) for p in report.problems) == sorted([
        ("foreign_file", os.path.join(spath, "notes.txt"), "ignored"),
        ("snapshot_unchecked", unlisted, "ignored")])


def test_deep_verify_reports_a_damaged_snapshot_once(snap):
    path, spath = snap
    target = _file_of(spath, "d")
    C.flip_bit(target, os.path.getsize(target) // 2, 0)
    report = verify(path, deep=True)
    assert [(p.kind, p.path) for p in _damage(report)] == [("bad_snapshot", target)]
    assert report.digest is None  # the custom table has no digest without its class


# --------------------------------------------------------- LSNs and the log
def test_a_snapshot_beyond_the_end_of_the_log_is_log_behind_snapshot(tmp_path):
    path, early = str(tmp_path / "s"), str(tmp_path / "early")
    with Store.open(path, tables=_tables()) as s:
        _fill(s, 0, 20)
        end = s.lsn
    shutil.copytree(path, early)
    with Store.open(path, tables=_tables()) as s:
        _fill(s, 20, 20)
        snap_lsn = s.checkpoint()["lsn"]
    assert verify(path).ok
    # The log as it was before the snapshot's records: they are gone from it.
    shutil.rmtree(os.path.join(path, "wal"))
    shutil.copytree(os.path.join(early, "wal"), os.path.join(path, "wal"))
    report = verify(path)
    # The recorded clean end names the same loss from the log's side.
    assert [(p.kind, p.lsn, p.lsn_end) for p in _damage(report)] == \
        [("clean_end_mismatch", end + 1, snap_lsn), ("log_behind_snapshot", end + 1, snap_lsn)]
    assert report.last_lsn == end


def _trimmed_with_two_snapshots(path):
    """A store whose log was trimmed past its older snapshot (kept once: a
    second snapshot folder copied back and listed, as an operator might)."""
    with Store.open(path, sync="always", segment_bytes=4096, keep_snapshots=1) as s:
        for i in range(150):
            s.put("t", i, "x" * 40)
        first = s.checkpoint()["lsn"]
        keep = os.path.join(os.path.dirname(path), "first")
        shutil.copytree(os.path.join(path, SNAPSHOTS_DIR, snapshot_name(first)), keep)
        for i in range(150):
            s.put("t", i, "y" * 40)
        second = s.checkpoint()["lsn"]
        s.put("t", "tail", 1)
    start = manifest.read(path)["log_start"]
    assert first + 1 < start <= second + 1  # the records right after ``first`` are gone
    shutil.copytree(keep, os.path.join(path, SNAPSHOTS_DIR, snapshot_name(first)))
    man = manifest.read(path)
    man["snapshots"] = [second, first]
    manifest.write(path, man)
    return first, second, start


def test_a_snapshot_whose_next_records_the_log_no_longer_holds_is_a_gap(tmp_path):
    path = str(tmp_path / "s")
    first, second, start = _trimmed_with_two_snapshots(path)
    report = verify(path)
    assert [(p.kind, p.lsn, p.lsn_end) for p in _damage(report)] == \
        [("snapshot_log_gap", first + 1, start - 1)]
    # And with the newer one damaged, no snapshot makes the state: no_base.
    spath = os.path.join(path, SNAPSHOTS_DIR, snapshot_name(second))
    C.flip_bit(os.path.join(spath, "META"), 30, 0)
    kinds = sorted((p.kind, p.path) for p in _damage(verify(path)))
    assert kinds == sorted([("bad_snapshot", os.path.join(spath, "META")),
                            ("snapshot_log_gap", os.path.join(path, SNAPSHOTS_DIR,
                                                              snapshot_name(first))),
                            ("no_base", os.path.join(path, "wal"))])
    with pytest.raises(rh.CorruptionError) as e:
        Store.open(path)
    assert e.value.reason == "no_base"  # what verify said an open would find


def test_a_trimmed_log_after_a_good_snapshot_verifies_clean(tmp_path):
    path = str(tmp_path / "s")
    with Store.open(path, sync="always", segment_bytes=4096, keep_snapshots=1) as s:
        for r in range(3):
            for i in range(150):
                s.put("t", i, [r, "x" * 40])
            s.checkpoint()
        s.put("t", "tail", 1)
    assert manifest.read(path)["log_start"] > 1
    report = verify(path)
    assert report.ok and report.problems == []
    assert len(report.snapshots) == 1


# ------------------------------------------------------ one snapshot alone
def _shipped(tmp_path, spath, name=None):
    dest = str(tmp_path / "shipped" / (name or os.path.basename(spath)))
    shutil.copytree(spath, dest)
    return dest


def test_a_snapshot_folder_verifies_on_its_own(snap, tmp_path):
    _path, spath = snap
    alone = _shipped(tmp_path, spath)
    report = verify(alone)
    assert report.ok and report.problems == [] and report.segments == []
    assert report.last_lsn == int(os.path.basename(spath))
    assert [s["path"] for s in report.snapshots] == [alone]
    # Under another name it is taken at META's word.
    renamed = _shipped(tmp_path, spath, "copy-from-prod")
    assert verify(renamed).ok
    target = _file_of(renamed, "n")
    C.flip_bit(target, os.path.getsize(target) // 2, 4)
    report = verify(renamed)
    assert [(p.kind, p.path) for p in _damage(report)] == [("bad_snapshot", target)]


def test_deep_verify_of_a_snapshot_folder_gives_its_digest(tmp_path):
    path = str(tmp_path / "s")
    with Store.open(path, tables={"d": rh.DictTable}) as s:
        for i in range(50):
            s.put("kv", i, [i])
            s.put("d", i, {"i": i})
        cp = s.checkpoint()
    alone = _shipped(tmp_path, cp["path"])
    report = verify(alone, deep=True)
    assert report.ok and report.digest == cp["digest"]
    assert set(report.table_digests) == {"kv", "d"}


def test_the_command_exits_0_1_2_for_a_clean_a_damaged_and_a_foreign_folder(snap, tmp_path,
                                                                          core_env):
    _path, spath = snap
    alone = _shipped(tmp_path, spath)
    ok = _rehydrate("verify", alone, env=core_env)
    assert ok.returncode == 0, ok.stderr
    lsn = int(os.path.basename(spath))
    assert ok.stdout.startswith(f"OK: {alone}: snapshot at LSN {lsn}, 4 tables")
    target = _file_of(alone, "kv", image=True)
    C.truncate(target, 5000)
    bad = _rehydrate("verify", alone, env=core_env)
    assert bad.returncode == 1
    assert bad.stdout.startswith("DAMAGED") and f"bad_snapshot: {target} @5000" in bad.stdout
    neither = tmp_path / "neither"
    neither.mkdir()
    (neither / "notes.txt").write_text("not a store")
    out = _rehydrate("verify", str(neither), env=core_env)
    assert out.returncode == 2 and out.stdout == ""
    assert "neither a rehydrate store nor a snapshot" in out.stderr
    assert "Traceback" not in out.stderr
    missing = _rehydrate("verify", str(tmp_path / "nothing-here"), env=core_env)
    assert missing.returncode == 2 and "Traceback" not in missing.stderr


def test_verify_json_lists_snapshots_and_bad_snapshot_problems(snap, core_env):
    path, spath = snap
    out = _rehydrate("verify", path, "--json", env=core_env)
    assert out.returncode == 0, out.stderr
    d = json.loads(out.stdout)
    assert set(d) == {"ok", "last_lsn", "records", "mode", "frames", "bytes", "segments",
                      "snapshots", "problems"}
    assert d["ok"] is True and d["problems"] == []
    assert [(s["lsn"], s["path"], s["ok"], sorted(s["tables"])) for s in d["snapshots"]] == \
        [(int(os.path.basename(spath)), spath, True, ["d", "kv", "n", "top"])]
    target = _file_of(spath, "d")
    C.append(target, b"\x01")
    out = _rehydrate("verify", path, "--json", env=core_env)
    assert out.returncode == 1
    d = json.loads(out.stdout)
    assert d["ok"] is False and d["snapshots"][0]["ok"] is False
    assert d["problems"] == [{
        "kind": "bad_snapshot", "path": target, "offset": os.path.getsize(target) - 1,
        "lsn": int(os.path.basename(spath)), "detail": d["problems"][0]["detail"],
        "bytes": 0, "lsn_end": None, "action": "error"}]
    assert "META records" in d["problems"][0]["detail"]
    # The same shape for one snapshot folder on its own.
    out = _rehydrate("verify", spath, "--json", env=core_env)
    assert out.returncode == 1
    alone = json.loads(out.stdout)
    assert set(alone) == set(d) and alone["segments"] == []
    assert [p["path"] for p in alone["problems"]] == [target]


def test_both_cores_judge_the_same_snapshots_bad(snap):
    """The file checks give the same verdicts whichever core runs them."""
    path, spath = snap
    target = _file_of(spath, "kv", image=True)
    C.flip_bit(target, 4096 + 12, 0)  # the first entry's key
    verdicts = {}
    for name in ("native", "pure"):
        with _backend.use(name):
            verdicts[name] = [(p.kind, p.path, p.offset) for p in verify(path).problems]
    assert verdicts["native"] == verdicts["pure"] != []


def test_the_snapshot_check_uses_the_cores_crc32c(snap, core, monkeypatch):
    # The same CRC32C as the log's frames: the core's (native where loaded).
    path, _spath = snap
    seen = []
    real = core.crc32c

    def counting(data, *a):
        seen.append(len(data))
        return real(data, *a)
    monkeypatch.setattr(core, "crc32c", counting)
    assert verify(path).ok
    sizes = {os.path.getsize(os.path.join(_spath, n)) for n in os.listdir(_spath)
             if n != "META"}
    assert sizes <= set(seen)  # every table file and image went through it
