"""Snapshots: open = newest valid snapshot + the log after it, losslessly.

A checkpoint publishes a snapshot only once it and the log up to its LSN are
durable; a snapshot that fails any check is set aside and an older one (or
the whole log, which is kept) is used instead; strict refuses.
"""

import os
import random
import shutil
import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rehydrate import ConfigError, CorruptionError, DictTable, StateType, Store, _fileio, verify
from rehydrate.snapshot import SNAPSHOTS_DIR, list_snapshots, snapshot_name

from helpers import corrupt as C


class Counter(StateType):
    """Counts puts per key (a custom type that snapshots itself)."""

    def __init__(self):
        self.n = {}

    def apply(self, op, key, value):
        if op == "put":
            self.n[key] = self.n.get(key, 0) + 1
        elif op == "delete":
            self.n.pop(key, None)
        elif op == "clear":
            self.n.clear()

    def snapshot(self):
        return [[k, v] for k, v in self.n.items()]

    @classmethod
    def restore(cls, data):
        out = cls()
        out.n = {k: v for k, v in data}
        return out

    def __len__(self):
        return len(self.n)


KINDS = {"d": DictTable, "c": Counter}


def _fill(s, start, n, rng):
    for i in range(start, start + n):
        k = rng.randrange(50)
        s.put("kv", k, {"i": i, "pad": rng.randbytes(20)})
        s.put("d", k % 7, [i])
        s.put("c", k % 5, None)
        if i % 9 == 0:
            s.delete("kv", rng.randrange(50))
        if i % 4 == 0:
            s.incr("n", "x", 1)


def _state(s):
    return ({n: s.table(n).to_dict() for n in s.tables() if n != "c"},
            dict(s.table("c").n) if "c" in s.tables() else {}, s.lsn, s.offsets)


def test_open_uses_the_newest_snapshot_and_replays_only_the_tail(store_dir):
    rng = random.Random(1)
    with Store.open(store_dir, tables=KINDS) as s:
        _fill(s, 0, 300, rng)
        with s.batch(offsets={"src": 4}) as b:
            b.put("kv", "o", 1)
        cp = s.checkpoint()
        # The writers' pause is a part of the checkpoint, and the stats say the same.
        assert s.checkpoint_stats == {"count": 1, "last_duration_s": cp["duration_s"],
                                      "last_pause_s": cp["pause_s"], "last_lsn": cp["lsn"]}
        _fill(s, 300, 20, rng)
        want = _state(s)
    assert cp["lsn"] > 0 and 0 < cp["pause_s"] <= cp["duration_s"]
    with Store.open(store_dir, tables=KINDS) as s:
        assert _state(s) == want
        assert s.recovery_report.applied == s.lsn - cp["lsn"]  # only the tail
        phases = s.open_stats["phases"]
        assert [p["name"] for p in phases] == ["plan", "snapshot", "replay", "resume"]
        snapshot = dict(phases[1])
        assert snapshot.pop("duration_s") > 0 and snapshot == {"name": "snapshot",
                                                                "lsn": cp["lsn"]}
        assert phases[2]["records"] == s.lsn - cp["lsn"]
        # The phases are consecutive spans of the open: they add up to it.
        assert sum(p["duration_s"] for p in phases) == pytest.approx(s.open_stats["total_s"])


def test_retention_keeps_the_newest_snapshots(store_dir):
    with Store.open(store_dir, keep_snapshots=2) as s:
        lsns = []
        for i in range(4):
            s.put("t", i, i)
            lsns.append(s.checkpoint()["lsn"])
    assert list_snapshots(store_dir) == sorted(lsns, reverse=True)[:2]
    with Store.open(store_dir) as s:
        assert s.table("t").to_dict() == {i: i for i in range(4)}


def _two_snapshots(store_dir):
    rng = random.Random(2)
    with Store.open(store_dir, tables=KINDS) as s:
        _fill(s, 0, 100, rng)
        older = s.checkpoint()["lsn"]
        _fill(s, 100, 100, rng)
        newer = s.checkpoint()["lsn"]
        _fill(s, 200, 10, rng)
        return older, newer, _state(s)


@pytest.mark.parametrize("damage", ["flip_table_file", "flip_meta", "truncate_table_file",
                                    "zero_sector_table_file", "zero_sector_meta",
                                    "delete_table_file", "delete_folder", "flip_image",
                                    "truncate_image", "delete_image"])
def test_a_damaged_newest_snapshot_falls_back_losslessly(store_dir, damage, core_name):
    older, newer, want = _two_snapshots(store_dir)
    snap = os.path.join(store_dir, SNAPSHOTS_DIR, snapshot_name(newer))
    table_file = os.path.join(snap, "0.arrow")
    if damage.endswith("_image"):
        if core_name == "pure":
            pytest.skip("the pure twin writes no image")
        damage, table_file = damage.replace("image", "table_file"), os.path.join(snap, "0.kvimg")
    if damage == "flip_table_file":
        C.flip_bit(table_file, os.path.getsize(table_file) // 2, 3)
    elif damage == "flip_meta":
        C.flip_bit(os.path.join(snap, "META"), 20, 1)
    elif damage in ("zero_sector_table_file", "zero_sector_meta"):
        target = table_file if damage == "zero_sector_table_file" else os.path.join(snap, "META")
        size = os.path.getsize(target)
        start = min(512, (size // 2) // 512 * 512)
        C.overwrite(target, start, bytes(min(512, size - start)))
    elif damage == "truncate_table_file":
        C.truncate(table_file, os.path.getsize(table_file) - 10)
    elif damage == "delete_table_file":
        os.unlink(table_file)
    else:
        shutil.rmtree(snap)
    with pytest.raises(CorruptionError):
        Store.open(store_dir, tables=KINDS, recovery="strict")
    with Store.open(store_dir, tables=KINDS) as s:
        assert _state(s) == want
        kinds = [(p.kind, p.lsn) for p in s.recovery_report.problems]
        assert kinds == [("bad_snapshot", newer)]
        assert s.recovery_report.applied == s.lsn - older
    assert list_snapshots(store_dir) == [older]
    if damage != "delete_folder":
        assert os.path.isdir(snap + ".broken")  # kept as evidence
    with Store.open(store_dir, tables=KINDS, recovery="strict") as s:
        assert _state(s) == want  # the MANIFEST no longer names it


def test_with_every_snapshot_damaged_the_whole_log_is_replayed(store_dir):
    older, newer, want = _two_snapshots(store_dir)
    for lsn in (older, newer):
        meta = os.path.join(store_dir, SNAPSHOTS_DIR, snapshot_name(lsn), "META")
        C.flip_bit(meta, 30, 0)
    with Store.open(store_dir, tables=KINDS) as s:
        assert _state(s) == want and s.recovery_report.applied == s.lsn
        assert [p.kind for p in s.recovery_report.problems] == ["bad_snapshot", "bad_snapshot"]


def test_a_snapshot_ahead_of_the_log_is_kept_and_reported(store_dir):
    with Store.open(store_dir, sync="always", segment_bytes=4096) as s:
        for i in range(100):
            s.put("t", i, "v" * 40)
        lsn = s.checkpoint()["lsn"]
        want = s.table("t").to_dict()
    seg = C.segment_paths(store_dir)[-1]
    last = C.frames_of(seg)[-3]
    C.truncate(seg, last.offset)  # the log loses its last frames; a torn-tail-free cut
    # Behind a recorded clean close a shorter log is damage, whatever the
    # snapshot holds; as a crash leaves it, the snapshot carries the open.
    for mode in ("strict", "tolerate-tail"):
        with pytest.raises(CorruptionError) as ei:
            Store.open(store_dir, recovery=mode)
        assert ei.value.reason == "clean_end_mismatch"
    C.as_crashed(store_dir)
    with pytest.raises(CorruptionError) as ei:
        Store.open(store_dir, recovery="strict")
    assert ei.value.reason == "log_behind_snapshot"
    with Store.open(store_dir) as s:
        assert s.table("t").to_dict() == want and s.lsn == lsn
        assert "log_behind_snapshot" in [p.kind for p in s.recovery_report.problems]
        s.put("t", "after", 1)
        assert s.lsn == lsn + 1
    with Store.open(store_dir) as s:
        assert s.table("t")["after"] == 1


def test_a_failed_checkpoint_changes_nothing_and_the_next_one_works(store_dir, monkeypatch):
    with Store.open(store_dir) as s:
        for i in range(50):
            s.put("t", i, i)
        real = _fileio.rename

        def refuse(src, dst):
            if SNAPSHOTS_DIR in src:
                raise OSError(28, "No space left on device", dst)
            return real(src, dst)

        monkeypatch.setattr(_fileio, "rename", refuse)
        with pytest.raises(OSError):
            s.checkpoint()
        monkeypatch.setattr(_fileio, "rename", real)
        s.put("t", "more", 1)  # the store is not failed: the log never was at risk
        assert list_snapshots(store_dir) == []
        lsn = s.checkpoint()["lsn"]
    with Store.open(store_dir) as s:
        assert len(s.table("t")) == 51 and list_snapshots(store_dir) == [lsn]


def test_a_snapshot_kind_that_tables_does_not_match_is_refused(store_dir):
    with Store.open(store_dir, tables={"d": DictTable}) as s:
        s.put("d", 1, 1)
        s.checkpoint()
    with pytest.raises(ConfigError):
        Store.open(store_dir)  # "d" would be kv


def test_sigkill_at_every_file_operation_of_a_checkpoint_loses_nothing(tmp_path, core_env):
    script = os.path.join(os.path.dirname(__file__), "helpers", "checkpoint_crash.py")
    base = str(tmp_path / "base")
    subprocess.run([sys.executable, script, base, "prepare"], env=core_env,
                   capture_output=True, text=True, check=True)
    probe = str(tmp_path / "probe")
    shutil.copytree(base, probe)
    want = subprocess.run([sys.executable, script, probe, "after"], env=core_env,
                          capture_output=True, text=True, check=True).stdout.strip()
    n = 1
    while True:
        path = str(tmp_path / f"run{n}")
        shutil.copytree(base, path)
        r = subprocess.run([sys.executable, script, path, str(n)], env=core_env,
                           capture_output=True, text=True)
        check = subprocess.run([sys.executable, script, path, "digest"], env=core_env,
                               capture_output=True, text=True, check=True)
        assert check.stdout.strip() == want, (n, r.stderr)
        if r.returncode == 0:  # the checkpoint finished before call n
            break
        n += 1
    assert n > 5  # it really was killed inside the checkpoint several times


# ------------------------------------------------------------ the model
OPS = st.lists(st.one_of(
    st.tuples(st.just("put"), st.integers(0, 20), st.integers(-(1 << 63), (1 << 64) - 1)),
    st.tuples(st.just("delete"), st.integers(0, 20)),
    st.tuples(st.just("checkpoint")),
    st.tuples(st.just("reopen")),
), max_size=40)


@settings(max_examples=30, deadline=None)
@given(ops=OPS)
def test_snapshots_plus_tail_equal_the_model(tmp_path_factory, ops):
    path = str(tmp_path_factory.mktemp("m") / "s")
    model = {}
    s = Store.open(path, keep_snapshots=1)
    try:
        for op in ops:
            if op[0] == "put":
                s.put("t", op[1], op[2])
                model[op[1]] = op[2]
            elif op[0] == "delete":
                s.delete("t", op[1])
                model.pop(op[1], None)
            elif op[0] == "checkpoint":
                s.checkpoint()
            else:
                s.close()
                s = Store.open(path, keep_snapshots=1)
            got = s.table("t").to_dict() if "t" in s.tables() else {}
            assert got == model
    finally:
        s.close()
    with Store.open(path, recovery="strict") as s:
        assert (s.table("t").to_dict() if "t" in s.tables() else {}) == model


def test_cli_compact_then_inspect_lists_the_snapshot(store_dir, core_env):
    import json

    with Store.open(store_dir) as s:
        for i in range(100):
            s.put("t", i, i)
        digest = s.digest()

    def run(*args):
        return subprocess.run([sys.executable, "-m", "rehydrate", *args], env=core_env,
                              capture_output=True, text=True)

    out = run("compact", store_dir, "--json")
    assert out.returncode == 0, out.stderr
    info = json.loads(out.stdout)
    assert info["lsn"] == 100 and info["digest"] == f"{digest:016x}"
    again = json.loads(run("compact", store_dir, "--json").stdout)
    assert again["existing"] and again["digest"] == info["digest"]
    ins = json.loads(run("inspect", store_dir, "--json").stdout)
    assert [(sn["lsn"], sn["listed"], sn["ok"]) for sn in ins["snapshots"]] == [(100, True, True)]
    with Store.open(store_dir) as s:
        assert s.recovery_report.applied == 0 and len(s.table("t")) == 100
        assert run("compact", store_dir).returncode == 2  # a live store holds the LOCK


@pytest.fixture
def checkpoints(monkeypatch):
    """An Event set after every completed checkpoint (synchronization, not sleep)."""
    import threading

    done = threading.Event()
    real = Store.checkpoint

    def spy(self):
        out = real(self)
        done.set()
        return out

    monkeypatch.setattr(Store, "checkpoint", spy)
    return done


def test_automatic_checkpoints_after_enough_log(store_dir, checkpoints):
    with Store.open(store_dir, sync="always", checkpoint_every_bytes=2000) as s:
        for i in range(100):
            s.put("t", i, "x" * 30)
        assert checkpoints.wait(timeout=30)
        assert list_snapshots(store_dir) and s.auto_checkpoint_error is None
    with Store.open(store_dir) as s:
        assert len(s.table("t")) == 100 and s.recovery_report.applied < 100


def test_automatic_checkpoints_on_a_timer(store_dir, checkpoints):
    with Store.open(store_dir, checkpoint_every_s=0.05) as s:
        s.put("t", 1, 1)
        assert checkpoints.wait(timeout=30)
    assert list_snapshots(store_dir)


@pytest.mark.parametrize("bad", [{"checkpoint_every_bytes": 0}, {"checkpoint_every_s": -1},
                                 {"checkpoint_every_s": "1"}, {"keep_snapshots": 0}])
def test_bad_checkpoint_settings_are_refused(store_dir, bad):
    with pytest.raises(ConfigError):
        Store.open(store_dir, **bad)
    assert not os.path.exists(store_dir)


def test_garbage_inside_a_checksummed_snapshot_file_never_loads_a_wrong_state(tmp_path, core):
    # Corrupt the Arrow file and forge META's size and CRC so that the bytes
    # reach the Arrow reader and the column loader: the load must fail typed
    # (CorruptionError), or load exactly the original content (digest check).
    path = str(tmp_path / "s")
    with Store.open(path) as s:
        for i in range(500):
            s.put("t", i, {"v": i})
        lsn = s.checkpoint()["lsn"]
        want = s.table("t").to_dict()
    snap = os.path.join(path, SNAPSHOTS_DIR, snapshot_name(lsn))
    original = C.read(os.path.join(snap, "0.arrow"))
    rng = random.Random(4)
    outcomes = {"refused": 0, "same": 0}
    for trial in range(int(os.environ.get("SNAPSHOT_GARBAGE_TRIALS", "120"))):
        data = bytearray(original)
        for _ in range(rng.randrange(1, 4)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        if trial % 10 == 0:
            data = data[:rng.randrange(len(data))]
        _forge_table_file(snap, bytes(data), core, image=None)  # the Arrow path
        loaded = _load_forged(snap, core)
        if loaded is None:
            outcomes["refused"] += 1
            continue
        assert loaded == want
        outcomes["same"] += 1
    assert outcomes["refused"] > 50


def test_garbage_inside_a_checksummed_image_never_loads_a_wrong_state(tmp_path, core):
    # The same for the native table image: forged size and CRC, so the bytes
    # reach the image loader.
    import json
    import struct

    from rehydrate import snapshot as S

    if core.IMPLEMENTATION != "native":
        pytest.skip("images are the native core's: the pure twin writes and reads Arrow only")
    path = str(tmp_path / "s")
    with Store.open(path) as s:
        for i in range(700):
            s.put("t", i if i % 3 else f"k{i}", {"v": i, "pad": "x" * (i % 40)})
        lsn = s.checkpoint()["lsn"]
        want = s.table("t").to_dict()
    snap = os.path.join(path, SNAPSHOTS_DIR, snapshot_name(lsn))
    image_path = os.path.join(snap, "0.kvimg")
    original = C.read(image_path)
    meta0 = bytes(C.read(os.path.join(snap, "META")))
    rng = random.Random(5)
    outcomes = {"refused": 0, "same": 0}
    for trial in range(int(os.environ.get("SNAPSHOT_GARBAGE_TRIALS", "120"))):
        data = bytearray(original)
        for _ in range(rng.randrange(1, 4)):
            at = rng.randrange(len(data)) if trial % 2 else rng.randrange(min(len(data), 4200))
            data[at] = rng.randrange(256)
        if trial % 10 == 0:
            data = data[:rng.randrange(len(data))]
        meta = json.loads(meta0[16:])
        meta["tables"][0]["image"].update(bytes=len(data), crc32c=core.crc32c(bytes(data)))
        payload = json.dumps(meta, sort_keys=True).encode()
        with open(image_path, "wb") as f:
            f.write(data)
        with open(os.path.join(snap, "META"), "wb") as f:
            f.write(struct.pack("<8sII", S.META_MAGIC, len(payload), core.crc32c(payload))
                    + payload)
        loaded = _load_forged(snap, core)
        if loaded is None:
            outcomes["refused"] += 1
            continue
        assert loaded == want
        outcomes["same"] += 1
    assert outcomes["refused"] > 50


def _forge_table_file(snap, data, core, **meta_changes):
    """Replace table 0's file with ``data`` and make META's size and CRC
    (and any ``meta_changes``) agree, so the bytes reach the loaders."""
    import json
    import struct

    from rehydrate import snapshot as S

    meta = json.loads(bytes(C.read(os.path.join(snap, "META"))[16:]))
    meta["tables"][0].update(bytes=len(data), crc32c=core.crc32c(data), **meta_changes)
    if meta["tables"][0].get("image") is None:
        meta["tables"][0].pop("image", None)
    payload = json.dumps(meta, sort_keys=True).encode()
    with open(os.path.join(snap, meta["tables"][0]["file"]), "wb") as f:
        f.write(data)
    with open(os.path.join(snap, "META"), "wb") as f:
        f.write(struct.pack("<8sII", S.META_MAGIC, len(payload), core.crc32c(payload)) + payload)


def _load_forged(snap, core):
    """The dict a snapshot's table 0 loads to, or None when it is refused."""
    from rehydrate import snapshot as S

    made = []
    try:
        S.load(snap, lambda name, tid, kind: made.append(core.KVTable()) or made[-1])
    except CorruptionError as e:
        assert e.reason == "bad_snapshot"
        return None
    return made[0].to_dict()


def _arrow_of(pairs):
    import pyarrow as pa

    sink = pa.BufferOutputStream()
    table = pa.table({"key": pa.array([k for k, _ in pairs], pa.binary()),
                      "value": pa.array([v for _, v in pairs], pa.binary())})
    with pa.ipc.new_file(sink, table.schema) as w:
        w.write_table(table)
    return sink.getvalue().to_pybytes()


def test_a_snapshot_with_a_key_twice_or_a_wrong_key_count_is_refused(tmp_path, core):
    path = str(tmp_path / "s")
    with Store.open(path) as s:
        s.put("t", "a", 1)
        cp = s.checkpoint()
    snap = os.path.join(path, SNAPSHOTS_DIR, snapshot_name(cp["lsn"]))
    a, b = (core.encode_key(k) for k in ("a", "b"))
    one, two = core.pack_value(1), core.pack_value(2)
    _forge_table_file(snap, _arrow_of([(a, one), (b, two)]), core, digest=None, keys=2,
                      image=None)  # the Arrow path
    assert _load_forged(snap, core) == {"a": 1, "b": 2}  # the forging itself works
    _forge_table_file(snap, _arrow_of([(a, one), (a, two)]), core, digest=None, keys=2)
    assert _load_forged(snap, core) is None  # the same key twice
    _forge_table_file(snap, _arrow_of([(a, one), (b, two)]), core, digest=None, keys=3)
    assert _load_forged(snap, core) is None  # not the count META recorded
    _forge_table_file(snap, _arrow_of([(a, one), (b, two)]), core, keys=2, digest=cp["digest"])
    assert _load_forged(snap, core) is None  # not the digest META recorded


# ------------------------------------------------------------ log retention
def _trimmed(store_dir, rounds=4):
    with Store.open(store_dir, sync="always", segment_bytes=4096, keep_snapshots=2) as s:
        for r in range(rounds):
            for i in range(150):
                s.put("t", i, [r, i, "x" * 20])
            s.checkpoint()
        s.put("t", "last", 1)
        with s.batch(offsets={"q": 3}) as b:
            b.put("t", "o", 2)
        return s.digest(), s.lsn


def _log_start(store_dir):
    from rehydrate import manifest

    return manifest.read(store_dir).get("log_start", 1)


def test_checkpoints_trim_the_log_to_what_the_oldest_snapshot_needs(store_dir, core_env):
    import json

    digest, lsn = _trimmed(store_dir)
    start = _log_start(store_dir)
    oldest = min(list_snapshots(store_dir))
    segs = C.segment_paths(store_dir)
    assert start > 1 and os.path.basename(segs[0]).lstrip("0").startswith(str(start))
    assert int(os.path.basename(segs[0])[:20]) == start <= oldest + 1
    with Store.open(store_dir, recovery="strict") as s:
        assert s.digest() == digest and s.lsn == lsn and s.offsets == {"q": 3}
        assert s.recovery_report.problems == []
    assert verify(store_dir, recovery="strict").ok
    deep = verify(store_dir, deep=True)
    assert deep.ok and deep.digest == f"{digest:016x}"
    out = subprocess.run([sys.executable, "-m", "rehydrate", "digest", store_dir, "--json"],
                         env=core_env, capture_output=True, text=True, check=True)
    assert json.loads(out.stdout)["digest"] == f"{digest:016x}"
    out = subprocess.run([sys.executable, "-m", "rehydrate", "repair", store_dir, "--dry-run"],
                         env=core_env, capture_output=True, text=True)
    assert out.returncode == 0 and "nothing to repair" in out.stdout


def test_a_trim_interrupted_before_its_unlinks_is_finished_at_open(store_dir, monkeypatch):
    with Store.open(store_dir, sync="always", segment_bytes=4096) as s:
        for i in range(300):
            s.put("t", i, "y" * 30)
        lsn = s.checkpoint()["lsn"]
        # A frame larger than a segment (an incompressible value) starts one
        # of its own, so the segment the checkpoint's LSN is in ends there:
        # the next checkpoint trims it.
        s.put("t", "x", random.Random(5).randbytes(4096))
        assert C.frames_of(C.segment_paths(store_dir)[-1])[0].first_lsn == lsn + 1
        digest = s.digest()
        real = _fileio.unlink
        calls = []

        def flaky(path):
            calls.append(path)
            if path.endswith(".wal"):
                raise OSError(5, "Input/output error", path)
            return real(path)

        monkeypatch.setattr(_fileio, "unlink", flaky)
        for i in range(300):
            s.put("t", i, "z" * 30)
        with pytest.raises(OSError):
            s.checkpoint()  # the MANIFEST moved log_start; no segment went
        monkeypatch.setattr(_fileio, "unlink", real)
        digest = s.digest()
    below = [p for p in C.segment_paths(store_dir)
             if int(os.path.basename(p)[:20]) < _log_start(store_dir)]
    assert below  # leftovers below log_start
    with Store.open(store_dir, recovery="strict") as s:
        assert s.digest() == digest
    assert all(int(os.path.basename(p)[:20]) >= _log_start(store_dir)
               for p in C.segment_paths(store_dir))


def test_with_a_trimmed_log_and_no_snapshot_that_loads_open_refuses(store_dir):
    _trimmed(store_dir)
    for lsn in list_snapshots(store_dir):
        C.flip_bit(os.path.join(store_dir, SNAPSHOTS_DIR, snapshot_name(lsn), "META"), 25, 2)
    for mode in ("strict", "tolerate-tail", "point-in-time", "skip-corrupted"):
        with pytest.raises(CorruptionError) as ei:
            Store.open(store_dir, recovery=mode)
        assert ei.value.reason in ("no_base", "bad_snapshot")


def test_an_io_error_reading_a_snapshot_fails_the_open_and_drops_nothing(store_dir,
                                                                         monkeypatch):
    # Found by tests/test_recovery_faults.py: an EIO while loading was taken
    # for damage, the snapshot dropped, and a trimmed log left with no base.
    import errno

    from rehydrate import StorageIOError, manifest

    digest, lsn = _trimmed(store_dir)
    before = manifest.read(store_dir)

    def failing(*args, **kw):
        raise OSError(errno.EIO, "injected I/O error")

    monkeypatch.setattr(_fileio, "map_file", failing)
    with pytest.raises(StorageIOError):
        Store.open(store_dir)
    monkeypatch.undo()
    assert manifest.read(store_dir) == before
    assert not [n for n in os.listdir(os.path.join(store_dir, SNAPSHOTS_DIR)) if "broken" in n]
    with Store.open(store_dir, recovery="strict") as s:
        assert (s.digest(), s.lsn) == (digest, lsn)


def test_open_steps_over_frames_the_snapshot_holds_but_checks_the_rest(store_dir):
    with Store.open(store_dir, sync="always") as s:  # one segment, many frames
        for i in range(100):
            s.put("t", i, i)
        lsn = s.checkpoint()["lsn"]
        for i in range(100, 110):
            s.put("t", i, i)
        want = s.table("t").to_dict()
    seg = C.segment_paths(store_dir)[-1]
    frames = C.frames_of(seg)
    covered = [f for f in frames if f.first_lsn + f.count - 1 <= lsn]
    # Damage inside a covered frame: the open never reads it (verify does).
    C.flip_bit(seg, covered[len(covered) // 2].offset + 40, 1)
    # And a torn tail after the snapshot (as a crash leaves one): still found and cut.
    C.as_crashed(store_dir)
    C.truncate(seg, frames[-1].end - 2)
    assert not verify(store_dir).ok
    with Store.open(store_dir) as s:
        assert s.table("t").to_dict() == {k: v for k, v in want.items() if k != 109}
        assert [p.kind for p in s.recovery_report.problems] == ["torn_tail"]
        assert s.recovery_report.applied == 9


def test_a_table_mapped_from_its_image_takes_writes_grows_and_never_writes_the_file(store_dir,
                                                                                    core_name):
    rng = random.Random(12)
    model = {}
    with Store.open(store_dir) as s:
        for i in range(20_000):
            model[i] = rng.randbytes(rng.randrange(1, 60))
            s.put("t", i, model[i])
        lsn = s.checkpoint()["lsn"]
    snap = os.path.join(store_dir, SNAPSHOTS_DIR, snapshot_name(lsn))
    files = {n: C.read(os.path.join(snap, n)) for n in os.listdir(snap)}
    assert ("0.kvimg" in files) == (core_name == "native")
    with Store.open(store_dir) as s:
        assert s.recovery_report.applied == 0 and s.table("t").to_dict() == model
        # Overwrite, delete, grow the arena past twice the image (the mapped
        # reservation), enough garbage for a compaction, then a clear.
        for i in range(0, 20_000, 3):
            model[i] = rng.randbytes(rng.randrange(60, 200))
            s.put("t", i, model[i])
        for i in range(1, 20_000, 7):
            del model[i]
            s.delete("t", i)
        for i in range(20_000, 60_000):
            model[i] = b"n" * 40
            s.put("t", i, model[i])
        assert s.table("t").to_dict() == model
        s.incr("t", "c", 5)
        model["c"] = 5
        digest = s.digest()
    assert {n: C.read(os.path.join(snap, n)) for n in os.listdir(snap)} == files  # untouched
    with Store.open(store_dir) as s:
        assert s.digest() == digest and s.table("t").to_dict() == model
        s.clear("t")
        assert len(s.table("t")) == 0


def test_snapshots_written_by_either_core_open_with_the_other(tmp_path):
    from rehydrate import _backend

    for writer, reader in (("native", "pure"), ("pure", "native")):
        d = str(tmp_path / writer)
        with _backend.use(writer):
            with Store.open(d) as s:
                for i in range(500):
                    s.put("t", i, [i, "v"])
                s.checkpoint()
                s.put("t", "after", 1)
                digest = s.digest()
        with _backend.use(reader):
            with Store.open(d) as s:
                assert s.digest() == digest and s.recovery_report.applied == 1
