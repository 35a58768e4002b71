"""``store.write``: a custom table's own ops, logged as record op 6."""

import json
import os
import subprocess
import sys

import pytest

import rehydrate as rh
from rehydrate import ConfigError, InvalidOperationError, Store, _backend, verify
from rehydrate import _format as F

from helpers import corrupt


class Log(rh.StateType):
    def __init__(self):
        self.events = []

    def apply(self, op, key, value):
        if op == "boom":
            raise ValueError("refused")
        self.events.append([op, key, value])

    def snapshot(self):
        return self.events

    @classmethod
    def restore(cls, data):
        out = cls()
        out.events = [list(e) for e in data]
        return out

    def __len__(self):
        return len(self.events)


def test_custom_ops_reach_apply_now_and_at_every_replay(store_dir):
    with Store.open(store_dir, tables={"log": Log}, sync="always") as s:
        s.write("log", "rename", "a", {"to": "b"})
        s.put("log", 1, "p")
        s.write("log", "tick")
        want = s.table("log").events
    assert want == [["rename", "a", {"to": "b"}], ["put", 1, "p"], ["tick", None, None]]
    with Store.open(store_dir, tables={"log": Log}) as s:
        assert s.table("log").events == want and s.lsn == 3
        s.checkpoint()
    with Store.open(store_dir, tables={"log": Log}) as s:  # from the snapshot
        assert s.table("log").events == want and s.recovery_report.applied == 0


def test_a_refused_custom_op_logs_nothing(store_dir):
    with Store.open(store_dir, tables={"log": Log, "d": rh.DictTable}) as s:
        s.write("log", "ok")
        with pytest.raises(InvalidOperationError):
            s.write("log", "boom", 1)
        with pytest.raises(InvalidOperationError):
            s.write("kv", "x", 1)  # a kv table takes no custom op
        with pytest.raises(InvalidOperationError):
            s.write("d", "x", 1)  # nor a dict table
        assert s.lsn == 1 and s.tables() == ["log"]
    with Store.open(store_dir, tables={"log": Log, "d": rh.DictTable}) as s:
        assert s.table("log").events == [["ok", None, None]]


@pytest.mark.parametrize("op", ["", "put", "delete", "incr", "clear", 5, None])
def test_a_custom_op_needs_its_own_name(store_dir, op):
    with Store.open(store_dir, tables={"log": Log}) as s:
        with pytest.raises(ConfigError):
            s.write("log", op)


def test_both_cores_write_the_same_custom_record(core):
    frames = {}
    for name in ("native", "pure"):
        with _backend.use(name) as c:
            t = Log()
            t._rh_bind("log", c)
            buf = c.LogBuffer(1)
            buf.custom(t, 0, "k", "rename", [1, 2])
            buf.custom(t, 0, None, "tick", None)
            first, count, recs = buf.take()
            frames[name] = c.encode_frame(first, count, [(0, F.KIND_CUSTOM, b"log")], recs)
    assert frames["native"] == frames["pure"]


def test_a_custom_record_on_a_kv_table_fails_replay_and_deep_verify(store_dir):
    with Store.open(store_dir, sync="always") as s:
        s.put("t", 1, 1)
        lsn = s.lsn
    c = _backend.core()
    rec = (bytes((F.OP_CUSTOM,)) + c.encode_varint(0) + c.encode_varint(0)
           + c.encode_varint(len(c.pack_value(["x", 1]))) + c.pack_value(["x", 1]))
    frame = c.encode_frame(lsn + 1, 1, [(0, F.KIND_KV, b"t")], rec)

    # As a writer that appended it leaves the log: without the clean-close record.
    corrupt.as_crashed(store_dir)
    seg = sorted(os.listdir(os.path.join(store_dir, "wal")))[-1]
    with open(os.path.join(store_dir, "wal", seg), "ab") as f:
        f.write(frame)
    assert verify(store_dir).ok  # structure and checksums are fine
    assert [p.kind for p in verify(store_dir, deep=True).problems] == ["apply_error"]
    with pytest.raises(rh.CorruptionError) as ei:
        Store.open(store_dir)
    assert ei.value.reason == "apply_error"


def test_dump_shows_custom_ops(store_dir, core_env):
    with Store.open(store_dir, tables={"log": Log}) as s:
        s.write("log", "rename", "a", {"to": "b"})
    out = subprocess.run([sys.executable, "-m", "rehydrate", "dump", store_dir], env=core_env,
                         capture_output=True, text=True, check=True)
    line = json.loads(out.stdout.splitlines()[0])
    assert line["op"] == "custom" and line["value"] == ["rename", {"to": "b"}] and \
        line["key"] == "a" and line["table"] == "log"


def test_readers_replay_custom_ops_without_the_class(store_dir, core_env):
    with Store.open(store_dir, tables={"log": Log}) as s:
        s.put("log", "k", 1)
        s.write("log", "rename", "k", "j")
    out = subprocess.run([sys.executable, "-m", "rehydrate", "inspect", store_dir, "--json"],
                         env=core_env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert [t["name"] for t in json.loads(out.stdout)["tables"]] == ["log"]


class Many(rh.StateType):
    """Counts per key, with its own apply_many (which replay batches)."""

    calls: list = []  # sizes of the apply_many calls replay made (class-wide, per test)

    def __init__(self):
        self.n = {}

    def apply(self, op, key, value):
        if op == "put":
            if value == "boom":
                raise ValueError("boom")
            self.n[key] = self.n.get(key, 0) + value
        elif op == "delete":
            self.n.pop(key, None)
        elif op == "clear":
            self.n.clear()
        elif op == "bump":
            self.n[key] = self.n.get(key, 0) + 100
        else:
            raise ValueError(op)

    def apply_many(self, records):
        Many.calls.append(len(records))
        for op, key, value in records:
            self.apply(op, key, value)

    def snapshot(self):
        return [[k, v] for k, v in self.n.items()]

    @classmethod
    def restore(cls, data):
        t = cls()
        t.n = {k: v for k, v in data}
        return t


def test_replay_hands_runs_of_records_to_apply_many(store_dir):
    Many.calls = []
    with Store.open(store_dir, tables={"m": Many}, sync="none") as s:
        with s.batch() as b:
            for i in range(50):
                b.put("m", i % 7, 1)
            b.put("kv", "x", 1)  # another table ends the run
            for i in range(20):
                b.put("m", i % 7, 2)
        s.write("m", "bump", 3)
        s.delete("m", 0)
        want = dict(s.table("m").n)
        assert Many.calls == []  # live writes go through apply
    Many.calls = []
    with Store.open(store_dir, tables={"m": Many}) as s:
        assert s.table("m").n == want
        assert sum(Many.calls) == 72 and max(Many.calls) >= 20 and len(Many.calls) < 72


def test_an_apply_many_that_raises_fails_the_open_naming_the_table(store_dir):
    Many.calls = []
    with Store.open(store_dir, tables={"m": Many}) as s:
        s.put("m", 1, 1)
    # A record apply() refuses, written behind the class's back (the same
    # record a different class version would have accepted).
    with Store.open(store_dir, tables={"m": Log}) as s:
        s.put("m", 2, "boom")
    with pytest.raises(rh.CorruptionError) as ei:
        Store.open(store_dir, tables={"m": Many})
    assert ei.value.reason == "apply_error" and "'m'" in str(ei.value)


class ManyChecked(Many):
    """An apply_many that checks every record before it changes anything."""

    def apply_many(self, records):
        if any(op == "put" and value == "boom" for op, _, value in records):
            raise ValueError("boom")
        super().apply_many(records)


@pytest.mark.parametrize("cls", [ManyChecked, "OneByOne"])
def test_skip_corrupted_leaves_out_records_whose_apply_raises_and_keeps_them(store_dir, cls):
    import glob

    import msgpack

    if cls == "OneByOne":
        class OneByOne(Many):  # apply only: one record at a time
            apply_many = rh.StateType.apply_many
        cls = OneByOne
    with Store.open(store_dir, tables={"m": Log}) as s:
        with s.batch() as b:
            b.put("m", 1, 1)
            b.put("m", 2, "boom")  # the class opening it later refuses this one
            b.put("m", 3, 3)
        s.sync()  # that batch is one frame; the next write another
        s.put("m", 4, 4)
    with pytest.raises(rh.CorruptionError) as ei:
        Store.open(store_dir, tables={"m": cls}, recovery="strict")
    assert ei.value.reason == "apply_error" and "'m'" in str(ei.value)
    with Store.open(store_dir, tables={"m": cls}, recovery="skip-corrupted") as s:
        got = s.table("m").n
        problems = [(p.kind, p.lsn, p.action) for p in s.recovery_report.problems]
    if cls._rh_many:  # the whole apply_many call (the frame's run) is left out
        assert got == {4: 4} and problems == [("apply_error", 1, "skipped")]
    else:  # just the record
        assert got == {1: 1, 3: 3, 4: 4} and problems == [("apply_error", 2, "skipped")]
    notes = glob.glob(os.path.join(store_dir, "quarantine", "*.apply_error.json"))
    assert len(notes) == 1
    note = json.load(open(notes[0]))
    assert "Traceback" in note["detail"] and "boom" in note["detail"]
    kept = msgpack.unpackb(open(notes[0][:-5] + ".bin", "rb").read(), raw=False)
    assert [r["lsn"] for r in kept] == ([1, 2, 3] if cls._rh_many else [2])
    assert all(r["table"] == "m" for r in kept)
