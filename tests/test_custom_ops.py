"""``store.write``: a custom table's own ops, logged as record op 6."""

import json
import subprocess
import sys

import pytest

import rehydrate as rh
from rehydrate import ConfigError, InvalidOperationError, Store, _backend, verify
from rehydrate import _format as F


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
    import os

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
